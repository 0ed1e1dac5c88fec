//! Live relay sessions and the route table built from them (see
//! [`crate::table`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tunnel_proto::limits::MAX_ROUTES_PER_SESSION;
use tunnel_proto::path::RequestPath;
use tunnel_proto::{HostPattern, PublicKey, RoutePolicy, RouteSpec};

use crate::access::Authority;
use crate::session::Session;
use crate::table::{Candidate, Pick, RouteTable, TableIndex};
use tunnel_proto::Refused;

/// Where a request goes: a session and the route it serves there.
#[derive(Debug, Clone)]
pub struct Routed {
    pub session: Arc<Session>,
    pub route_id: u64,
    /// The route's access policy (`None`: public).
    pub policy: Option<Arc<RoutePolicy>>,
    /// The route's path prefix, as its relay spells it: the request's
    /// matched segments are forwarded in this spelling.
    pub prefix: Arc<str>,
}

/// Result of routing a request.
#[derive(Debug)]
pub enum Lookup {
    Found(Routed),
    /// The host has routes, none for this path.
    NoRoute,
    /// The route's target fails its health check.
    Unhealthy,
    /// The host is registered but no relay serves it now.
    NoRelay,
    UnknownHost,
}

/// Why routes from a relay were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRoute {
    pub id: u64,
    pub host: String,
    pub path_prefix: String,
    pub reason: String,
}

/// A relay process: its key and the instance id of its `Hello`.
type RelayProcess = (PublicKey, u64);

pub struct Registry {
    keys: ArcSwap<Authority>,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// Which sessions serve each host pattern; locked after `sessions`.
    index: Mutex<TableIndex>,
    table: ArcSwap<RouteTable>,
    /// Bumped on every change, for requests waiting for a relay to return.
    generation: tokio::sync::watch::Sender<u64>,
    /// Route hosts of recently removed sessions, by relay process (key and
    /// instance), and when they went.
    gone: Mutex<HashMap<RelayProcess, (Vec<String>, Instant)>>,
    /// Hosts whose relay is switching sessions: a new session of the same
    /// relay process passed its handshake and its routes are due, by then.
    switching: Mutex<HashMap<String, Instant>>,
}

/// Refused routes one ack reports.
const MAX_REFUSED_IN_ACK: usize = 256;

/// How long a lost session's hosts are remembered, for the relay
/// process's next session.
const GONE_MEMORY: Duration = Duration::from_secs(60);
/// How long requests for a host wait for the routes of a relay's new
/// session (its handshake is done; the routes follow within milliseconds
/// unless the relay has stopped meanwhile).
pub const SWITCH_WAIT: Duration = Duration::from_secs(2);

/// Authorizes and installs `routes` (the relay's set at `version`) as what
/// `session` serves. Called with the sessions lock held (`all`), so
/// publications are ordered; an older set than the one served is ignored,
/// so a late publication can never bring back stale routes. Sessions it
/// drains (older ones of the same relay) are added to `touched`.
fn install(
    all: &HashMap<u64, Arc<Session>>,
    session: &Arc<Session>,
    keys: &Authority,
    version: u64,
    routes: Vec<RouteSpec>,
    touched: &mut Vec<Arc<Session>>,
) -> Vec<RejectedRoute> {
    let served = session.routes_version.load(Ordering::Acquire);
    if version < served {
        tracing::debug!(version, served, "older route set not published");
        return Vec::new();
    }
    let mut rejected = Vec::new();
    let mut accepted: Vec<RouteSpec> = Vec::with_capacity(routes.len().min(MAX_ROUTES_PER_SESSION));
    let mut seen = std::collections::HashSet::with_capacity(routes.len());
    for route in routes {
        let (route_id, host, path_prefix) = (route.id, route.host.clone(), route.path_prefix.clone());
        let verdict = route.validated().map_err(|e| e.to_string()).and_then(|r| {
            let pattern = HostPattern::parse(&r.host).map_err(|e| e.to_string())?;
            keys.authorize(&session.key, &pattern).map_err(|d| d.message)?;
            if !seen.insert((r.host.clone(), r.path_prefix.to_ascii_lowercase())) {
                return Err("duplicate host and path prefix".to_owned());
            }
            // Specs come sorted by id: past the limit, the newest routes are
            // the ones refused, the same ones at every resync.
            if accepted.len() >= MAX_ROUTES_PER_SESSION {
                return Err(format!(
                    "over the limit of {MAX_ROUTES_PER_SESSION} routes served per relay session"
                ));
            }
            Ok(r)
        });
        match verdict {
            Ok(r) => accepted.push(r),
            Err(reason) => rejected.push(RejectedRoute {
                id: route_id,
                host,
                path_prefix,
                reason,
            }),
        }
    }
    session.routes_version.store(version, Ordering::Release);
    let first = std::mem::replace(&mut *session.routes.lock().unwrap_or_else(|e| e.into_inner()), accepted).is_empty();
    if first {
        // The relay process reconnected (another transport, a new
        // network): its older sessions are likely dead paths, so they get
        // no new requests from now on. On one that has gone quiet, the
        // requests still waiting for a response head give up now: a safe
        // one is sent again on the new session at once rather than after
        // the old one's death is declared. Responses already under way go
        // on: a path that is only lossy still delivers them, and a dead
        // one is closed at its declared death.
        for old in all
            .values()
            .filter(|o| o.id != session.id && o.key == session.key && o.instance == session.instance)
        {
            old.draining.store(true, Ordering::Relaxed);
            if old.is_quiet() {
                tracing::info!(
                    session = old.id,
                    "a quiet session is replaced by a newer one of its relay: its waiting requests move"
                );
                old.replaced.cancel();
            }
            touched.push(old.clone());
        }
    }
    touched.push(session.clone());
    rejected
}

impl Registry {
    pub fn new(keys: Authority) -> Self {
        Registry {
            keys: ArcSwap::from_pointee(keys),
            sessions: Mutex::new(HashMap::new()),
            index: Mutex::new(TableIndex::default()),
            table: ArcSwap::from_pointee(RouteTable::default()),
            generation: tokio::sync::watch::channel(0).0,
            gone: Mutex::new(HashMap::new()),
            switching: Mutex::new(HashMap::new()),
        }
    }

    /// Who may serve and use what, now.
    pub fn keys(&self) -> Arc<Authority> {
        self.keys.load_full()
    }

    /// Applies a new authority at once: sessions of relay keys no longer
    /// known are closed, every other session's routes are authorized again
    /// (a host given to or taken from an org takes effect now).
    pub fn set_authority(&self, authority: Authority) {
        self.keys.store(Arc::new(authority));
        let keys = self.keys();
        let removed = self.change(|all| {
            let sessions: Vec<Arc<Session>> = all.values().cloned().collect();
            let mut removed = Vec::new();
            let mut touched = Vec::new();
            for session in sessions {
                if !keys.contains_key(&session.key) {
                    removed.push(session);
                    continue;
                }
                // Read under the sessions lock: a route update applied at the
                // same time publishes after this, never before it with this
                // older set published last.
                let (version, _, specs) = session.received();
                for r in install(all, &session, &keys, version, specs.to_vec(), &mut touched) {
                    tracing::debug!(host = %r.host, reason = %r.reason, "route not served after an access change");
                }
            }
            (removed, touched)
        });
        for session in removed {
            tracing::info!(session = session.id, key = %session.key, "relay key removed: closing its session");
            session.tunnel.close("relay key removed");
            self.remove(session.id);
        }
    }

    /// Whether any route of `host` asks for a client certificate.
    pub fn wants_client_cert(&self, host: &str) -> bool {
        self.table.load().find(host).is_some_and(|hr| {
            hr.candidates.iter().any(|c| {
                c.policy
                    .as_ref()
                    .is_some_and(|p| p.auth == tunnel_proto::AuthMode::Mtls)
            })
        })
    }

    /// Changes sessions under the lock; `f` returns the sessions whose part
    /// of the table may have changed, and only their host patterns are
    /// rebuilt (under the lock, so concurrent changes can't publish stale
    /// tables).
    fn change<T>(&self, f: impl FnOnce(&mut HashMap<u64, Arc<Session>>) -> (T, Vec<Arc<Session>>)) -> T {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (out, touched) = f(&mut sessions);
        if !touched.is_empty() {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let table = index.update(&self.table.load(), &sessions, &touched);
            self.table.store(Arc::new(table));
        }
        self.generation.send_modify(|g| *g += 1);
        out
    }

    /// Adds a session; it serves nothing until its routes arrive. If the
    /// same relay process has (or just had) another session, that relay is
    /// switching sessions (a transport fallback, a new network): requests
    /// for its hosts may wait for the new session's routes ([`SWITCH_WAIT`]).
    /// Hosts of a relay that is really gone wait for nothing.
    pub fn add(&self, session: Arc<Session>) {
        let id = (session.key, session.instance);
        let mut hosts: Vec<String> = self
            .gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .map(|(hosts, _)| hosts)
            .unwrap_or_default();
        self.change(|all| {
            for other in all.values().filter(|o| (o.key, o.instance) == id) {
                hosts.extend(other.routes().iter().map(|r| r.host.clone()));
            }
            (all.insert(session.id, session.clone()), vec![session])
        });
        if !hosts.is_empty() {
            let until = Instant::now() + SWITCH_WAIT;
            let mut switching = self.switching.lock().unwrap_or_else(|e| e.into_inner());
            switching.retain(|_, at| *at > Instant::now());
            for host in hosts {
                switching.insert(host, until);
            }
        }
    }

    /// A receiver that sees every later change to sessions or routes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Removes a session, remembering its hosts for its relay process's
    /// next session.
    pub fn remove(&self, id: u64) {
        let removed = self.change(|s| {
            let removed = s.remove(&id);
            (removed.clone(), removed.into_iter().collect())
        });
        if let Some(session) = removed {
            let now = Instant::now();
            let hosts = session.routes().iter().map(|r| r.host.clone()).collect();
            let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
            gone.retain(|_, (_, at)| now.duration_since(*at) < GONE_MEMORY);
            gone.insert((session.key, session.instance), (hosts, now));
        }
    }

    /// Until when requests for `host` may wait for a relay that is
    /// switching sessions, if one is (see [`Registry::add`]).
    pub fn switching(&self, host: &str) -> Option<Instant> {
        let switching = self.switching.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let until = |key: &str| switching.get(key).copied().filter(|at| *at > now);
        if let Some(at) = until(host) {
            return Some(at);
        }
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(at) = until(&format!("*.{suffix}")) {
                return Some(at);
            }
            rest = suffix;
        }
        None
    }

    /// Stops routing new requests to the session (after its `GoAway`).
    pub fn set_draining(&self, id: u64) {
        self.change(|s| match s.get(&id) {
            Some(session) => {
                session.draining.store(true, Ordering::Relaxed);
                ((), vec![session.clone()])
            }
            None => ((), Vec::new()),
        });
    }

    /// Replaces a session's routes with the relay's set at `version`.
    /// Routes for hostnames its key may not serve, malformed ones, and those
    /// past [`MAX_ROUTES_PER_SESSION`] are dropped and returned (the session
    /// stays up). A set older than the one served is ignored.
    pub fn set_routes(&self, id: u64, version: u64, routes: Vec<RouteSpec>) -> Vec<RejectedRoute> {
        let keys = self.keys();
        self.change(|all| match all.get(&id).cloned() {
            Some(session) => {
                if version >= session.received().0 {
                    session.set_received(version, Arc::new(routes.clone()));
                }
                let mut touched = Vec::new();
                let rejected = install(all, &session, &keys, version, routes, &mut touched);
                (rejected, touched)
            }
            None => (Vec::new(), Vec::new()),
        })
    }

    /// Routes a request; `exclude` skips a session that just failed.
    pub fn lookup(&self, host: &str, path: &RequestPath, exclude: Option<u64>) -> Lookup {
        let keys = self.keys.load();
        let Some(owner) = keys.owner(host) else {
            return Lookup::UnknownHost;
        };
        let owned = |c: &Candidate| keys.admits(&owner, &c.session.key);
        let table = self.table.load();
        match table.find(host) {
            Some(hr) => match hr.pick(path, exclude, owned) {
                Pick::Found(c) => Lookup::Found(Routed {
                    session: c.session.clone(),
                    route_id: c.route_id,
                    policy: c.policy.clone(),
                    prefix: c.prefix.clone(),
                }),
                Pick::Unhealthy => Lookup::Unhealthy,
                Pick::NoSession => Lookup::NoRelay,
                // The owner's relay has no route here (yet): its host, away.
                Pick::NoRoute if !hr.candidates.iter().any(owned) => Lookup::NoRelay,
                Pick::NoRoute => Lookup::NoRoute,
            },
            None => Lookup::NoRelay,
        }
    }

    /// Installs the route set a session's relay sent (at `version`);
    /// returns the routes refused, for the relay's ack (capped so the ack
    /// fits one frame; the log has them all).
    pub fn install_routes(&self, session: &Session, version: u64, specs: Vec<RouteSpec>) -> Vec<Refused> {
        let count = specs.len();
        let refused = self
            .set_routes(session.id, version, specs)
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| (i < MAX_REFUSED_IN_ACK).then_some(r))
            .map(|mut r| {
                r.reason = r.reason.chars().take(200).collect();
                tracing::warn!(host = %r.host, path = %r.path_prefix, reason = %r.reason, "route refused");
                Refused {
                    route_id: r.id,
                    reason: r.reason,
                }
            })
            .collect();
        tracing::debug!(version, count, "routes installed");
        refused
    }

    /// Replaces the set of a session's unhealthy routes.
    pub fn set_unhealthy(&self, id: u64, unhealthy: std::collections::BTreeSet<u64>) {
        let Some(session) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
        else {
            return;
        };
        if *session.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) == unhealthy {
            return; // nothing changed: no table rebuild
        }
        self.change(|_| {
            *session.unhealthy_routes() = unhealthy;
            ((), vec![session])
        });
    }

    /// Live sessions of one key (to cap them).
    pub fn sessions_of(&self, key: &PublicKey) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| &s.key == key)
            .count()
    }

    /// Makes every session's copy of its routes drift from its relay's
    /// (drops one route now, and from the control session's copy), to
    /// test that drift is found and repaired.
    pub fn dangerous_forget_a_route(&self) {
        for session in self.sessions() {
            let (version, _, specs) = session.received();
            if let Some((_, rest)) = specs.split_first() {
                self.set_routes(session.id, version, rest.to_vec());
                session.drift.notify_one();
            }
        }
    }

    /// Whether `host` may have a certificate: it has an owner and some
    /// relay key may serve it (a host of an org without relay keys can
    /// never be served, so it gets no certificate). With `live_only`, a
    /// name matched only by a wildcard grant also needs a route of its
    /// owner's connected relay, so handshakes for endless random names
    /// under a wildcard order nothing.
    pub fn is_registered(&self, host: &str, live_only: bool) -> bool {
        let keys = self.keys.load();
        let Some(owner) = keys.owner(host) else {
            return false;
        };
        if !keys.has_relay_key(&owner) {
            return false;
        }
        !live_only
            || keys.is_exact(host)
            || self
                .table
                .load()
                .find(host)
                .is_some_and(|hr| hr.candidates.iter().any(|c| keys.admits(&owner, &c.session.key)))
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// All sessions, for draining.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::IdentityDoc;
    use crate::authorized_keys::AuthorizedKeys;
    use tunnel_proto::{RelayKey, Tunnel};

    /// A real tunnel over loopback TCP+TLS (a `Session` needs one): the
    /// gateway's end, the relay's end and the dir holding their CA.
    async fn tunnel() -> (Tunnel, Tunnel, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::dev_ca::DevCa::load_or_create(dir.path()).unwrap();
        let resolver = Arc::new(certs::resolver::CertResolver::new());
        resolver.insert("gateway.test", ca.issue(&["gateway.test".into()]).unwrap());
        let server = Arc::new(tunnel_proto::tls::server_config(resolver).unwrap());
        let client = tunnel_proto::tls::client_config(tunnel_proto::tls::load_roots(Some(ca.cert_path())).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, remote) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.unwrap();
            tunnel_proto::tcp::accept(tls, remote).await.unwrap()
        });
        let relay_side = tunnel_proto::tcp::connect(
            addr,
            "gateway.test",
            Arc::new(client.unwrap()),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        (accept.await.unwrap(), relay_side, dir)
    }

    struct Fixture {
        registry: Registry,
        session: Arc<Session>,
        key: PublicKey,
        /// Kept so the tunnel stays open for the whole test.
        _relay_side: Tunnel,
        _dir: tempfile::TempDir,
    }

    /// A registry where one relay key may serve `*.site.test`, and a session of it.
    async fn fixture() -> Fixture {
        let key = RelayKey::generate().unwrap().public_key();
        let file = AuthorizedKeys::parse(&format!("{key} *.site.test\n"), "keys").unwrap();
        let registry = Registry::new(Authority::new(file, Default::default()));
        let (tunnel, relay_side, dir) = tunnel().await;
        let session = Arc::new(Session::new(1, key, 1, tunnel, Duration::from_secs(1)));
        registry.add(session.clone());
        Fixture {
            registry,
            session,
            key,
            _relay_side: relay_side,
            _dir: dir,
        }
    }

    fn spec(id: u64) -> RouteSpec {
        RouteSpec {
            id,
            host: format!("h{id}.site.test"),
            path_prefix: "/".into(),
            priority: 0,
            policy: None,
        }
    }

    fn served(registry: &Registry, id: u64) -> bool {
        matches!(
            registry.lookup(&format!("h{id}.site.test"), &RequestPath::parse("/").unwrap(), None),
            Lookup::Found(_)
        )
    }

    #[tokio::test]
    async fn a_change_to_one_session_rebuilds_only_its_hosts() {
        let Fixture {
            registry, session, key, ..
        } = fixture().await;
        let other = Arc::new(Session::new(2, key, 2, session.tunnel.clone(), Duration::from_secs(1)));
        registry.add(other.clone());
        registry.set_routes(session.id, 1, vec![spec(1)]);
        registry.set_routes(other.id, 1, vec![spec(2)]);
        let host_routes = |id: u64| {
            let table = registry.table.load_full();
            let hr = table.find(&format!("h{id}.site.test")).map(|hr| hr as *const _);
            (table, hr)
        };
        let (_before, h2_before) = host_routes(2);
        registry.set_routes(session.id, 2, vec![spec(1), spec(3)]);
        let (_after, h2_after) = host_routes(2);
        assert!(h2_before.is_some());
        assert_eq!(h2_before, h2_after, "the other session's host was not rebuilt");
        assert!(served(&registry, 1) && served(&registry, 2) && served(&registry, 3));
        // Gone with its session, and only its hosts.
        registry.remove(session.id);
        assert!(!served(&registry, 1) && !served(&registry, 3));
        assert_eq!(host_routes(2).1, h2_before);
        // Draining takes a session's routes out of the table.
        registry.set_draining(other.id);
        assert!(host_routes(2).1.is_none());
    }

    #[tokio::test]
    async fn routes_past_the_session_limit_are_refused_not_the_session() {
        let Fixture { registry, session, .. } = fixture().await;
        let specs: Vec<RouteSpec> = (1..=MAX_ROUTES_PER_SESSION as u64 + 3).map(spec).collect();
        let refused = registry.install_routes(&session, 1, specs);
        let ids: Vec<u64> = refused.iter().map(|r| r.route_id).collect();
        let newest = MAX_ROUTES_PER_SESSION as u64;
        assert_eq!(
            ids,
            [newest + 1, newest + 2, newest + 3],
            "the newest routes are refused"
        );
        assert!(refused[0].reason.contains("limit"), "{:?}", refused[0]);
        assert!(served(&registry, 1) && served(&registry, newest));
        assert!(!served(&registry, newest + 1));
        assert!(!session.tunnel.is_closed());
    }

    #[tokio::test]
    async fn an_older_route_set_published_late_never_replaces_a_newer_one() {
        let Fixture {
            registry, session, key, ..
        } = fixture().await;
        registry.install_routes(&session, 1, vec![spec(1)]);
        // What an access change read just before a route update landed...
        let (version, _, stale) = session.received();
        registry.install_routes(&session, 2, vec![spec(2)]);
        assert!(served(&registry, 2) && !served(&registry, 1));
        // ...and published after it: ignored.
        registry.set_routes(session.id, version, stale.to_vec());
        assert!(served(&registry, 2), "the newer set stays");
        assert!(!served(&registry, 1), "the removed route does not come back");
        // An access change authorizes the newest set again.
        let file = AuthorizedKeys::parse(&format!("{key} *.site.test\n"), "keys").unwrap();
        registry.set_authority(Authority::new(file, Default::default()));
        assert!(served(&registry, 2) && !served(&registry, 1));
        // And a key removed from the authority closes its session.
        registry.set_authority(Authority::new(AuthorizedKeys::default(), Default::default()));
        assert_eq!(registry.session_count(), 0);
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), session.tunnel.closed()).await;
        assert!(closed.is_ok(), "the tunnel is closed");
    }

    #[test]
    fn a_host_is_registered_only_once_some_relay_key_may_serve_it() {
        let mut doc = IdentityDoc::default();
        doc.add_org("acme", None, None).unwrap();
        doc.add_host("app.acme.test", "acme").unwrap();
        doc.add_host("*.acme.test", "acme").unwrap();
        let registry = Registry::new(Authority::new(AuthorizedKeys::default(), doc.clone()));
        for live_only in [false, true] {
            assert!(!registry.is_registered("app.acme.test", live_only), "no relay key");
            assert!(!registry.is_registered("x.acme.test", live_only), "no relay key");
        }
        let relay = tunnel_proto::RelayKey::generate().unwrap().public_key();
        doc.add_relay_key(&relay.to_string(), "acme").unwrap();
        registry.set_authority(Authority::new(AuthorizedKeys::default(), doc));
        assert!(
            registry.is_registered("app.acme.test", true),
            "exact: no live relay needed"
        );
        assert!(
            registry.is_registered("x.acme.test", false),
            "owned through the wildcard"
        );
        assert!(
            !registry.is_registered("x.acme.test", true),
            "a wildcard name needs a live route"
        );
        assert!(!registry.is_registered("app.other.test", false));
        // A key of the authorized-keys file serves what it lists.
        let file = AuthorizedKeys::parse(&format!("{relay} f.test\n"), "keys").unwrap();
        let registry = Registry::new(Authority::new(file, IdentityDoc::default()));
        assert!(registry.is_registered("f.test", true));
    }
}
