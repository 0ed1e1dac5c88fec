//! Routes from container labels, kept in step with the Docker Engine:
//! every running container whose labels ask for a route (`routehub.*` or
//! Traefik's) and that is ready (no healthcheck, or a passing one) has it,
//! targeting the container's address; a container that stops, dies or
//! turns unhealthy loses it. Driven by the engine's events; after the
//! engine goes away and comes back, everything is read anew.
//!
//! Label routes are the store's like any other (versioned, pushed to the
//! gateways) but owned by their container: sync touches only those, and a
//! route made through the API, CLI or config always wins a clash.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use deploy::{Container, Engine, News};
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{NewRoute, Route, RoutePatch, validate};
use crate::store::Store;

/// What the change log names as the author of label routes.
pub const ACTOR: &str = "docker";
/// Waits between attempts to reach an engine that is not there.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What label sync is doing, for the admin API, CLI and dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelStatus {
    /// `following (API 1.41)`, `no engine: …`, or `off`.
    pub engine: String,
    /// Routes containers asked for that are not in the store, and why.
    pub left_out: Vec<LeftOut>,
}

/// A route a container's labels asked for that it did not get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub container: String,
    /// `host/path`, or empty where the labels did not say one.
    pub route: String,
    pub reason: String,
}

impl LabelStatus {
    /// Label routes turned off in the config.
    pub fn off() -> Self {
        LabelStatus {
            engine: "off".into(),
            left_out: Vec::new(),
        }
    }
}

/// Keeps label routes in step with the engine at `socket` until
/// `shutdown`. Never fails: an engine that is missing or goes away is
/// retried, and the relay serves its other routes meanwhile.
pub fn spawn(store: Store, socket: PathBuf, shutdown: CancellationToken) -> watch::Receiver<LabelStatus> {
    let (status, rx) = watch::channel(LabelStatus {
        engine: "connecting".into(),
        left_out: Vec::new(),
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = run(&store, socket, &status) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    rx
}

async fn run(store: &Store, socket: PathBuf, status: &watch::Sender<LabelStatus>) {
    let mut wait = RETRY.0;
    let mut said_missing = false;
    loop {
        match Engine::connect(&socket).await {
            Ok(engine) => {
                tracing::info!(socket = %socket.display(), api = %engine.api_version(), "following containers for label routes");
                said_missing = false;
                wait = RETRY.0;
                let following = format!("following {} (API {})", socket.display(), engine.api_version());
                status.send_modify(|s| s.engine = following.clone());
                follow(store, &engine, status).await;
                tracing::warn!(socket = %socket.display(), "lost the Docker Engine; label routes stay until it is back");
                status.send_modify(|s| {
                    s.engine = format!("lost {}; label routes kept until it is back", socket.display())
                });
            }
            Err(e) => {
                if !said_missing {
                    tracing::info!(error = %e, "label routes wait for a Docker Engine");
                    said_missing = true;
                }
                status.send_modify(|s| s.engine = format!("waiting: {e}"));
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY.1);
    }
}

/// Syncs once, then again after every burst of container events, until
/// the event stream ends.
async fn follow(store: &Store, engine: &Engine, status: &watch::Sender<LabelStatus>) {
    // Subscribed before the first read, so nothing between them is missed.
    let mut events = Box::pin(engine.container_events());
    // What events said that a list read just after may not show yet.
    let mut news: HashMap<String, News> = HashMap::new();
    loop {
        match engine.running().await {
            Ok(mut containers) => {
                news.retain(|id, _| containers.iter().any(|c| &c.id == id));
                containers.retain_mut(|c| match news.get(&c.id) {
                    Some(News::Ended) => false,
                    Some(News::Health(h)) => {
                        c.health = *h;
                        true
                    }
                    _ => true,
                });
                match sync(store, &containers).await {
                    Ok(left_out) => status.send_if_modified(|s| {
                        // Said once each, not at every sync.
                        for l in left_out.iter().filter(|l| !s.left_out.contains(l)) {
                            tracing::warn!(container = %l.container, route = %l.route, reason = %l.reason, "label route left out");
                        }
                        let changed = s.left_out != left_out;
                        s.left_out = left_out;
                        changed
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "label routes not synced");
                        false
                    }
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return;
            }
        }
        // The next event, and whatever else has already come, before
        // reading the engine again: a burst that goes on while the store
        // is written is read as one at the next turn, so nothing waits
        // for a burst to end.
        let Some(Ok(first)) = events.next().await else { return };
        note(&mut news, &first);
        while let Some(next) = events.next().now_or_never() {
            match next {
                Some(Ok(e)) => note(&mut news, &e),
                _ => return,
            }
        }
    }
}

fn note(news: &mut HashMap<String, News>, e: &deploy::Event) {
    tracing::debug!(action = %e.action, container = %e.id, "container event");
    match e.news() {
        // A start clears an earlier end, and the list says the rest.
        Some(News::Running) => {
            news.remove(&e.id);
        }
        Some(n) => {
            news.insert(e.id.clone(), n);
        }
        None => {}
    }
}

/// The owner name of a container's routes.
fn owner(c: &Container) -> String {
    format!("container:{}", c.name)
}

fn route_name(host: &str, path: &str) -> String {
    if path == "/" {
        host.to_owned()
    } else {
        format!("{host}{path}")
    }
}

/// The routes ready containers ask for, by host and path, and those left
/// out. Of two ready containers asking for one host and path, the newer
/// gets it (then the first by name): a new container with the same labels
/// takes the route over in one store change once it is ready, while the
/// old one still serves — make-before-break, whatever started them.
pub fn desired(containers: &[Container]) -> (BTreeMap<(String, String), NewRoute>, Vec<LeftOut>) {
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
    let mut out: BTreeMap<(String, String), NewRoute> = BTreeMap::new();
    let mut left_out = Vec::new();
    for c in sorted {
        let mut leave = |route: String, reason: String| {
            left_out.push(LeftOut {
                container: c.name.clone(),
                route,
                reason,
            })
        };
        let (routes, problems) = deploy::routes_of(&c.labels, &c.exposed);
        for p in problems {
            leave(String::new(), p);
        }
        if routes.is_empty() || !c.is_ready() {
            continue;
        }
        let Some(address) = c.address else {
            leave(String::new(), "no network address".into());
            continue;
        };
        for r in routes {
            let policy = match r.policy.as_deref().map(serde_json::from_str::<Value>) {
                None => Value::Null,
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    leave(
                        route_name(&r.host, &r.path),
                        format!("routehub.policy is not JSON: {e}"),
                    );
                    continue;
                }
            };
            let mut new = NewRoute {
                host: r.host,
                path: r.path,
                priority: 0,
                target: format!("http://{}", std::net::SocketAddr::new(address, r.port)),
                policy,
                middlewares: Vec::new(),
                health: None,
                enabled: true,
                owner: Some(owner(c)),
            };
            if let Err(reason) = validate(&mut new) {
                leave(route_name(&new.host, &new.path), format!("{}: {reason}", r.source));
                continue;
            }
            let key = (new.host.clone(), new.path.clone());
            if let Some(first) = out.get(&key) {
                let by = first
                    .owner
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches("container:");
                leave(route_name(&key.0, &key.1), format!("taken by container {by}"));
                continue;
            }
            out.insert(key, new);
        }
    }
    (out, left_out)
}

/// Makes the store's label routes what `containers` ask for: adds,
/// updates and removes owned routes only. Returns what was left out.
///
/// A host with any route made through the API, CLI or config is off
/// limits to labels, every path of it: labels can come from an image's
/// author, and a label route under `/api` would otherwise take that part
/// of a host its admin routed elsewhere.
pub async fn sync(store: &Store, containers: &[Container]) -> crate::Result<Vec<LeftOut>> {
    let (mut wanted, mut left_out) = desired(containers);
    let mut owned: BTreeMap<(String, String), Route> = BTreeMap::new();
    let mut admin_hosts: BTreeMap<String, u64> = BTreeMap::new();
    for r in store.list().await? {
        if r.owner.as_deref().is_some_and(|o| o.starts_with("container:")) {
            owned.insert((r.host.clone(), r.path.clone()), r);
        } else {
            admin_hosts.entry(r.host.clone()).or_insert(r.id);
        }
    }
    wanted.retain(|(host, path), new| {
        let Some(id) = admin_hosts.get(host) else { return true };
        left_out.push(LeftOut {
            container: new
                .owner
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches("container:")
                .to_owned(),
            route: route_name(host, path),
            reason: format!(
                "{host} has routes made through the API or config (route {id}); labels never take any of its paths"
            ),
        });
        false
    });
    for (key, new) in wanted {
        match owned.remove(&key) {
            Some(have) if have.target == new.target && have.policy == new.policy && have.owner == new.owner => {}
            Some(have) => {
                let patch = RoutePatch {
                    target: Some(new.target),
                    policy: Some(new.policy),
                    owner: new.owner,
                    ..Default::default()
                };
                store.update(have.id, patch, ACTOR).await?;
            }
            None => {
                store.add(new, ACTOR).await?;
            }
        }
    }
    for gone in owned.into_values() {
        store.remove(gone.id, ACTOR).await?;
    }
    Ok(left_out)
}
