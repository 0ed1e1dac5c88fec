//! Sessions with gateways: keep one per gateway, authenticated, with routes
//! announced and a heartbeat; serve the streams gateways open; reconnect with
//! backoff when anything breaks; fall back to TCP when QUIC goes silent and
//! move back to QUIC when it works again.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tunnel_proto::io::{spawn_frame_reader, write_frame_within};
use tunnel_proto::limits::{MAX_HEARTBEAT, MIN_HEARTBEAT, dead_after};
use tunnel_proto::{Frame, RelayKey, Transport, Tunnel};

use crate::backoff::Reconnect;
pub use crate::backoff::STABLE_AFTER;
use crate::connect::{Dialer, Established, TransportMode};
use crate::error::{Error, Result};
use crate::gateways::GatewayBook;
use crate::proxy::{Proxy, serve_stream};
use crate::routes::Snapshot;
use crate::sync::RouteSync;

/// A gateway to keep a session with.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    pub host: String,
    pub port: u16,
    pub server_name: String,
}

impl GatewayAddr {
    /// `host[:port]` (port 443 by default; `[v6]:port` for IPv6). The TLS
    /// name is `server_name` if given, else the host, which must then be a
    /// DNS name.
    pub fn parse(s: &str, server_name: Option<&str>) -> Result<Self> {
        let bad = |reason: &str| Error::GatewayAddr {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => 443,
                None => return Err(bad("expected ':' after ']'")),
            };
            (h.to_owned(), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                _ => (s.to_owned(), 443),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        // A name or an address, nothing else: peers listed in a gateway's
        // `Welcome` land here too, and the address must print back as one.
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if !is_ip && tunnel_proto::names::normalize_hostname(&host).is_err() {
            return Err(bad("the host is neither a DNS name nor an IP address"));
        }
        let server_name = match server_name {
            Some(n) => n.to_owned(),
            None if is_ip => {
                return Err(bad(
                    "an IP address needs --server-name (the gateway certificate's name)",
                ));
            }
            None => host.clone(),
        };
        Ok(GatewayAddr {
            host,
            port,
            server_name,
        })
    }

    pub(crate) async fn resolve(&self) -> Result<SocketAddr> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await?;
        addrs.next().ok_or_else(|| Error::GatewayAddr {
            addr: self.to_string(),
            reason: "no address found".into(),
        })
    }
}

impl std::fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a relay reports about one gateway session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: u64,
    pub transport: Transport,
    /// The gateway acknowledged the current route set.
    pub routes_version_acked: Option<u64>,
    /// Routes the gateway won't serve, and why.
    pub refused: BTreeMap<u64, String>,
}

/// One gateway as the relay sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStatus {
    pub session: Option<SessionInfo>,
    /// Why the last attempt or session failed, for people and tests.
    pub last_error: Option<String>,
}

/// Gateway → status, published on every change.
pub type Status = BTreeMap<String, GatewayStatus>;

pub(crate) struct Shared {
    pub key: RelayKey,
    /// Random per process: lets gateways replace this relay's older sessions.
    pub instance: u64,
    pub proxy: Arc<Proxy>,
    pub dialer: Dialer,
    pub server_name: Option<String>,
    pub quic_retry: Duration,
    pub shutdown: CancellationToken,
    pub drain_timeout: Duration,
    pub status: watch::Sender<Status>,
    /// Ids of routes failing their health check.
    pub unhealthy: watch::Receiver<std::collections::BTreeSet<u64>>,
    /// One `maintain` task per gateway, peers included (and TCP sessions
    /// serving on while a QUIC one takes over).
    pub maintainers: TaskTracker,
    pub gateways: Mutex<GatewayBook>,
}

impl Shared {
    fn set_status(&self, gateway: &str, f: impl FnOnce(&mut GatewayStatus)) {
        self.status.send_modify(|s| f(s.entry(gateway.to_owned()).or_default()));
    }

    fn book(&self) -> std::sync::MutexGuard<'_, GatewayBook> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts keeping a session with a configured `gateway` unless one is
/// kept already.
pub(crate) fn join(shared: &Arc<Shared>, gateway: GatewayAddr) {
    if shared.book().add_configured(&gateway.to_string()) {
        spawn_maintainer(shared, gateway, false);
    }
}

/// `from`'s `Welcome` listed `peers`: keeps sessions with the new ones
/// (bounded: see [`GatewayBook::listed`]).
fn join_peers(shared: &Arc<Shared>, from: &str, peers: &[String]) {
    let mut addrs = BTreeMap::new();
    for peer in peers {
        match GatewayAddr::parse(peer, shared.server_name.as_deref()) {
            Ok(addr) => {
                addrs.insert(addr.to_string(), addr);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "ignoring a peer gateway"),
        }
    }
    let names: Vec<String> = addrs.keys().cloned().collect();
    let join = shared.book().listed(from, &names);
    for name in join {
        if let Some(addr) = addrs.remove(&name) {
            spawn_maintainer(shared, addr, true);
        }
    }
}

fn spawn_maintainer(shared: &Arc<Shared>, gateway: GatewayAddr, peer: bool) {
    let span = tracing::info_span!("gateway", name = %gateway, peer);
    shared
        .maintainers
        .spawn(maintain(shared.clone(), gateway, peer).instrument(span));
}

/// How a session ended.
enum Ended {
    /// Reconnect (after backoff). `quic_silent`: a QUIC session stopped
    /// hearing from the gateway, so UDP is probably blocked now.
    Lost {
        quic_silent: bool,
    },
    /// A QUIC session took over from this TCP one (its routes are in place
    /// at the gateway); this one said `GoAway` and drains.
    Replaced,
    Shutdown,
}

/// A QUIC session the background probe of a TCP session established.
/// `routes_in_place` fires once the gateway acknowledged the new
/// session's routes: only then may the TCP session stop taking requests,
/// or the gateway would have no route for them in between.
struct Upgrade {
    est: Established,
    routes_in_place: oneshot::Sender<()>,
}

/// Keeps a session with one gateway until shutdown (or, for a `peer`,
/// until it is forgotten: see [`GatewayBook::forget_if_gone`]).
async fn maintain(shared: Arc<Shared>, gateway: GatewayAddr, peer: bool) {
    let name = gateway.to_string();
    let mut reconnect = Reconnect::default();
    // Since when no attempt has got through.
    let mut unreachable_since: Option<Instant> = None;
    let mut quic_suspect = false;
    let mut ready: Option<Upgrade> = None;
    loop {
        let (attempt, routes_in_place) = match ready.take() {
            Some(up) => (Ok(up.est), Some(up.routes_in_place)),
            None => {
                let hostnames = shared.proxy.routes.hostnames();
                let establish =
                    shared
                        .dialer
                        .establish(&shared.key, shared.instance, hostnames, &gateway, quic_suspect);
                let attempt = tokio::select! {
                    r = establish => r,
                    // An unreachable gateway must not hold up a shutdown
                    // for a connect and a handshake timeout.
                    _ = shared.shutdown.cancelled() => break,
                };
                (attempt, None)
            }
        };
        match attempt {
            Ok(est) => {
                unreachable_since = None;
                let started = Instant::now();
                // TCP won (or QUIC was suspect): keep probing QUIC from the session.
                quic_suspect = est.tunnel.transport() == Transport::Tcp;
                let span =
                    tracing::info_span!("session", id = est.welcome.session_id, transport = %est.tunnel.transport());
                let (upgrade_tx, mut upgrade_rx) = oneshot::channel();
                let mut session =
                    Box::pin(run(shared.clone(), gateway.clone(), est, routes_in_place, upgrade_tx).instrument(span));
                let ended = tokio::select! {
                    ended = &mut session => ended,
                    Ok(up) = &mut upgrade_rx => {
                        // The TCP session goes on serving in the background
                        // until the QUIC one has its routes at the gateway.
                        shared.maintainers.spawn(session);
                        quic_suspect = false;
                        ready = Some(up);
                        continue;
                    }
                };
                // The probe may have finished just as the session ended.
                if let Ok(up) = upgrade_rx.try_recv() {
                    quic_suspect = false;
                    ready = Some(up);
                    continue;
                }
                match ended {
                    Ended::Shutdown => break,
                    Ended::Lost { quic_silent } => quic_suspect |= quic_silent,
                    Ended::Replaced => {}
                }
                reconnect.session_ended(started.elapsed());
            }
            Err(e) => {
                reconnect.attempt_failed(e.is_retryable());
                tracing::warn!(error = %e, "can't connect to the gateway");
                shared.set_status(&name, |g| g.last_error = Some(e.to_string()));
                let away = unreachable_since.get_or_insert_with(Instant::now).elapsed();
                if peer && shared.book().forget_if_gone(&name, away) {
                    tracing::info!(?away, "peer gateway unreachable and no longer listed: forgotten");
                    shared.status.send_modify(|s| {
                        s.remove(&name);
                    });
                    break;
                }
            }
        }
        if shared.shutdown.is_cancelled() || !reconnect.wait(&shared.shutdown).await {
            break;
        }
    }
}

/// Runs an established session until it ends. `routes_in_place` (a
/// session replacing a TCP one) fires at the gateway's first in-sync
/// `RoutesAck`; a QUIC session this one's probe establishes goes out
/// through `upgrade`, and this one keeps serving until that session's
/// routes are in place.
async fn run(
    shared: Arc<Shared>,
    gateway: GatewayAddr,
    est: Established,
    mut routes_in_place: Option<oneshot::Sender<()>>,
    upgrade: oneshot::Sender<Upgrade>,
) -> Ended {
    let shared = &shared;
    let gateway = &gateway;
    let Established { tunnel, ctrl, welcome } = est;
    let name = gateway.to_string();
    let id = welcome.session_id;
    // Another session of this gateway (one that replaced this one) may own
    // the status entry now: only touch it while it describes this session.
    let mine = |g: &GatewayStatus| g.session.as_ref().is_some_and(|i| i.session_id == id);
    let heartbeat = Duration::from_millis(welcome.heartbeat_ms.into()).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
    let dead_after = dead_after(heartbeat);
    tracing::info!(granted = ?welcome.granted, "connected");
    let asked = shared.proxy.routes.hostnames();
    let refused: Vec<&String> = asked.iter().filter(|h| !welcome.granted.contains(h)).collect();
    if !refused.is_empty() {
        tracing::warn!(?refused, "the gateway will not serve these hostnames for this key");
    }
    let info = SessionInfo {
        session_id: welcome.session_id,
        transport: tunnel.transport(),
        routes_version_acked: None,
        refused: BTreeMap::new(),
    };
    shared.set_status(&name, |g| g.session = Some(info));
    join_peers(shared, &name, &welcome.peers);

    let accept = tokio::spawn(accept_streams(shared.proxy.clone(), tunnel.clone()).in_current_span());
    let (rd, mut wr) = tokio::io::split(ctrl);
    let mut frames = spawn_frame_reader(rd);
    let routes = shared.proxy.routes.clone();
    let mut versions = routes.subscribe();
    let mut unhealthy = shared.unhealthy.clone();
    let mut sync = RouteSync::new(Arc::new(Snapshot::default()));
    // A new session starts with the whole set and the current health.
    let mut outgoing = sync.full(routes.snapshot());
    outgoing.push(health_frame(&unhealthy.borrow_and_update()));

    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut rtt = Duration::ZERO;
    let mut deadline = Instant::now() + dead_after;
    let mut quic_silent = false;
    let mut lost: Option<String> = None;
    let mut ended = None;
    let mut upgrade = Some(upgrade);
    // Set once a QUIC session took over: fires when its routes are in place.
    let mut replaced: Option<oneshot::Receiver<()>> = None;

    // On TCP, keep trying QUIC in the background to move back to it.
    let mut probing = tunnel.transport() == Transport::Tcp && shared.dialer.mode == TransportMode::Auto;
    let probe = async {
        loop {
            sleep(shared.quic_retry).await;
            let hostnames = shared.proxy.routes.hostnames();
            match shared
                .dialer
                .establish_quic(&shared.key, shared.instance, hostnames, gateway)
                .await
            {
                Ok(est) => return est,
                Err(e) => tracing::debug!(error = %e, "QUIC still unavailable"),
            }
        }
    };
    tokio::pin!(probe);

    while lost.is_none() && ended.is_none() {
        for frame in outgoing.drain(..) {
            if let Err(e) = write_frame_within(&mut wr, &frame, dead_after).await {
                lost = Some(format!("control stream error: {e}"));
                break;
            }
        }
        if lost.is_some() {
            break;
        }
        tokio::select! {
            _ = ping.tick() => {
                seq += 1;
                in_flight.push_back((seq, Instant::now()));
                if in_flight.len() > 8 {
                    in_flight.pop_front();
                }
                let rtt_micros = rtt.as_micros().min(u32::MAX as u128) as u32;
                let (routes_version, routes_checksum) = sync.announced();
                outgoing.push(Frame::Ping { seq, rtt_micros, routes_version, routes_checksum });
            }
            _ = versions.changed() => outgoing.extend(sync.update(routes.snapshot())),
            _ = unhealthy.changed() => {
                outgoing.push(health_frame(&unhealthy.borrow_and_update()));
            }
            frame = frames.recv() => {
                deadline = Instant::now() + dead_after;
                match frame {
                    Some(Ok(Frame::Pong { seq })) => {
                        if let Some(pos) = in_flight.iter().position(|(s, _)| *s == seq) {
                            rtt = in_flight[pos].1.elapsed();
                            in_flight.drain(..=pos);
                        }
                    }
                    Some(Ok(Frame::RoutesAck { version, in_sync, refused })) => {
                        if in_sync {
                            for r in &refused {
                                tracing::warn!(route = r.route_id, reason = %r.reason, "gateway refused a route");
                            }
                            shared.set_status(&name, |g| {
                                if let Some(info) = g.session.as_mut().filter(|i| i.session_id == id) {
                                    info.routes_version_acked = Some(version);
                                    info.refused = refused.into_iter().map(|r| (r.route_id, r.reason)).collect();
                                }
                            });
                            if let Some(tx) = routes_in_place.take() {
                                let _ = tx.send(());
                            }
                        }
                        if sync.on_ack(version, in_sync) {
                            tracing::info!(gateway_version = version, "gateway out of sync; sending every route");
                            outgoing.extend(sync.full(routes.snapshot()));
                            outgoing.push(health_frame(&unhealthy.borrow()));
                        }
                    }
                    Some(Ok(Frame::GoAway { reason })) => {
                        tracing::info!(%reason, "gateway is draining; reconnecting");
                        lost = Some(format!("gateway going away: {reason}"));
                    }
                    Some(Ok(other)) => lost = Some(format!("unexpected {} frame", other.name())),
                    Some(Err(e)) => lost = Some(format!("control stream error: {e}")),
                    None => lost = Some("gateway closed the control stream".into()),
                }
            }
            _ = sleep_until(deadline) => {
                quic_silent = tunnel.transport() == Transport::Quic;
                lost = Some(format!("gateway silent for {dead_after:?}"));
            }
            e = tunnel.closed() => lost = Some(format!("tunnel closed: {e}")),
            est = &mut probe, if probing => {
                probing = false;
                tracing::info!("QUIC works again; moving the session back from TCP once its routes are in place");
                let (tx, rx) = oneshot::channel();
                if let Some(up) = upgrade.take()
                    && up.send(Upgrade { est, routes_in_place: tx }).is_ok()
                {
                    replaced = Some(rx);
                }
            }
            done = async {
                match replaced.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            }, if replaced.is_some() => {
                replaced = None;
                match done {
                    Ok(()) => {
                        // The gateway routes to the QUIC session already
                        // (its routes retire this one there too): say so.
                        let _ = write_frame_within(&mut wr, &Frame::GoAway { reason: "moving to QUIC".into() }, dead_after).await;
                        ended = Some(Ended::Replaced);
                    }
                    // The QUIC session died before its routes were in
                    // place: this one keeps serving until the gateway
                    // retires it for a newer session of this relay.
                    Err(_) => tracing::info!("the QUIC session ended before taking over; staying on TCP"),
                }
            }
            _ = shared.shutdown.cancelled() => {
                // The gateway closes the tunnel once the last response has
                // reached it; closing here could drop unacknowledged bytes.
                let _ = write_frame_within(&mut wr, &Frame::GoAway { reason: "relay shutting down".into() }, dead_after).await;
                if timeout(shared.drain_timeout, tunnel.closed()).await.is_err() {
                    tracing::warn!("drain deadline reached with streams still open");
                }
                ended = Some(Ended::Shutdown);
            }
        }
    }
    let reason = lost.clone().unwrap_or_else(|| "session replaced".into());
    tracing::info!(%reason, "session ended");
    shared.set_status(&name, |g| {
        if mine(g) {
            g.session = None;
            g.last_error = lost.clone();
        }
    });
    let silent = quic_silent;
    if silent || tunnel.is_closed() || matches!(ended, Some(Ended::Shutdown)) {
        tunnel.close(&reason);
        accept.abort();
    } else {
        // The gateway (or we) said GoAway: streams in flight finish on the
        // old tunnel while the next session takes new ones; the gateway
        // closes it when they are done.
        let drain = shared.drain_timeout;
        tokio::spawn(
            async move {
                let _ = timeout(drain, tunnel.closed()).await;
                tunnel.close("drained");
                accept.abort();
            }
            .in_current_span(),
        );
    }
    ended.unwrap_or(Ended::Lost { quic_silent: silent })
}

/// Most unhealthy route ids one `Health` frame reports (it must fit a frame).
const MAX_HEALTH_IDS: usize = 4096;

fn health_frame(unhealthy: &std::collections::BTreeSet<u64>) -> Frame {
    if unhealthy.len() > MAX_HEALTH_IDS {
        tracing::warn!(
            count = unhealthy.len(),
            "more unhealthy routes than one frame reports; gateways see the first {MAX_HEALTH_IDS}"
        );
    }
    Frame::Health {
        unhealthy: unhealthy.iter().take(MAX_HEALTH_IDS).copied().collect(),
    }
}

async fn accept_streams(proxy: Arc<Proxy>, tunnel: Tunnel) {
    loop {
        match tunnel.accept_stream().await {
            Ok(Some(stream)) => {
                tokio::spawn(serve_stream(proxy.clone(), stream).in_current_span());
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "stream accept ended");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        let a = GatewayAddr::parse("gw.example.com", None).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.server_name.as_str()),
            ("gw.example.com", 443, "gw.example.com")
        );
        let a = GatewayAddr::parse("127.0.0.1:8443", Some("localhost")).unwrap();
        assert_eq!((a.port, a.server_name.as_str()), (8443, "localhost"));
        let a = GatewayAddr::parse("[::1]:8443", Some("localhost")).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 8443));
        assert_eq!(a.to_string(), "[::1]:8443");
        assert!(
            GatewayAddr::parse("127.0.0.1:8443", None)
                .unwrap_err()
                .to_string()
                .contains("--server-name")
        );
        assert!(GatewayAddr::parse("gw:notaport", None).is_err());
        assert!(GatewayAddr::parse("", None).is_err());
    }

    /// Peers come from a gateway's `Welcome`: a host that is neither a DNS
    /// name nor an IP address is refused, and what is accepted prints as
    /// an address that parses back to itself.
    #[test]
    fn a_gateway_host_is_a_name_or_an_ip_address() {
        for bad in [
            "83m44:[::1]:443",
            "a:b:c",
            "gw example.com",
            "gw/x:443",
            "[gw x]:443",
            "-gw.test",
        ] {
            assert!(GatewayAddr::parse(bad, Some("gw.test")).is_err(), "{bad:?} accepted");
        }
        for good in [
            "gw.example.com",
            "gw.example.com:8443",
            "10.0.0.1:443",
            "[::1]:8443",
            "::1",
            "[gw.test]:1",
        ] {
            let a = GatewayAddr::parse(good, Some("gw.test")).unwrap();
            let again = GatewayAddr::parse(&a.to_string(), Some("gw.test")).unwrap();
            assert_eq!((again.host, again.port), (a.host, a.port), "{good:?}");
        }
    }
}
