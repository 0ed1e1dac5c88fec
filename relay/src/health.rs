//! Health checks of routes' targets. One task per checked route, started,
//! restarted or stopped whenever the routes change. A route flips to
//! unhealthy after `unhealthy_after` failures in a row and back after
//! `healthy_after` successes; flips go to the store (and its event feed)
//! and to every gateway, which answers 503 for unhealthy routes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::HealthCheck;
use crate::routes::{LocalRoute, RouteSet};
use crate::store::Store;

type Unhealthy = watch::Sender<BTreeSet<u64>>;
type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Unchanged results are still written this often (flips at once).
const RECORD_EVERY: Duration = Duration::from_secs(60);
/// Longest failure detail stored (and carried by health events).
pub const MAX_HEALTH_DETAIL: usize = 512;

/// Starts checking; the receiver holds the ids of unhealthy routes. It
/// starts with the routes the store last saw unhealthy, so a restart does
/// not send traffic to a target that was down until checks prove it again.
pub async fn spawn(store: Store, routes: Arc<RouteSet>, shutdown: CancellationToken) -> watch::Receiver<BTreeSet<u64>> {
    let checked: BTreeSet<u64> = routes.snapshot().checked().map(|r| r.route.id).collect();
    let stored = store.health().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "can't read the stored health checks; every route starts healthy");
        Vec::new()
    });
    let down: BTreeSet<u64> = stored
        .into_iter()
        .filter(|h| !h.healthy && checked.contains(&h.route_id))
        .map(|h| h.route_id)
        .collect();
    let (tx, rx) = watch::channel(down);
    tokio::spawn(supervise(store, routes, tx, shutdown));
    rx
}

async fn supervise(store: Store, routes: Arc<RouteSet>, unhealthy: Unhealthy, shutdown: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: ProbeClient = Client::builder(TokioExecutor::new()).build(connector);
    let mut versions = routes.subscribe();
    // Route id → (what the check depends on, its task).
    let mut checks: HashMap<u64, ((String, HealthCheck), tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let snapshot = routes.snapshot();
        let wanted: HashMap<u64, &Arc<LocalRoute>> = snapshot.checked().map(|r| (r.route.id, r)).collect();
        checks.retain(|id, (key, task)| {
            let keep = wanted
                .get(id)
                .is_some_and(|r| r.route.health.as_ref() == Some(&key.1) && r.route.target == key.0);
            if !keep {
                task.abort();
                unhealthy.send_if_modified(|s| s.remove(id));
            }
            keep
        });
        for (id, route) in wanted {
            if checks.contains_key(&id) {
                continue;
            }
            let Some(cfg) = route.route.health.clone() else {
                continue;
            };
            let key = (route.route.target.clone(), cfg.clone());
            let task = tokio::spawn(check(
                route.clone(),
                cfg,
                store.clone(),
                client.clone(),
                unhealthy.clone(),
            ));
            checks.insert(id, (key, task));
        }
        tokio::select! {
            r = versions.changed() => if r.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    for (_, (_, task)) in checks {
        task.abort();
    }
}

async fn probe(client: &ProbeClient, route: &LocalRoute, cfg: &HealthCheck) -> Result<(), String> {
    let uri = format!("{}{}", route.target.url, cfg.path);
    let req = http::Request::get(uri)
        .header(http::header::USER_AGENT, "routehub-health/1")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!(
            "{e}: {}",
            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
        )),
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
    }
}

/// A route's health as its checks left it: whether it is served, and the
/// run of equal outcomes that moves it to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    healthy: bool,
    last_ok: bool,
    run: u32,
}

impl Default for Tracker {
    /// Never checked: served until checks say otherwise.
    fn default() -> Self {
        Tracker {
            healthy: true,
            last_ok: true,
            run: 0,
        }
    }
}

impl Tracker {
    /// Resumes from a stored status (see [`crate::model::HealthStatus`]).
    pub fn resume(status: &str, streak: u32) -> Self {
        let (healthy, last_ok) = match status {
            "healthy" => (true, true),
            "failing" => (true, false),
            "recovering" => (false, true),
            _ => (false, false),
        };
        Tracker {
            healthy,
            last_ok,
            run: streak,
        }
    }

    /// Takes one check's outcome; returns whether the route flipped.
    pub fn observe(&mut self, ok: bool, cfg: &HealthCheck) -> bool {
        self.run = if ok == self.last_ok {
            self.run.saturating_add(1)
        } else {
            1
        };
        self.last_ok = ok;
        let flipped = (self.healthy && !ok && self.run >= cfg.unhealthy_after)
            || (!self.healthy && ok && self.run >= cfg.healthy_after);
        if flipped {
            self.healthy = ok;
        }
        flipped
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    pub fn streak(&self) -> u32 {
        self.run
    }

    /// What is stored: the state and, when the last outcome disagrees
    /// with it, that the route is on its way to the other side.
    pub fn status(&self) -> &'static str {
        match (self.healthy, self.last_ok) {
            (true, true) => "healthy",
            (true, false) => "failing",
            (false, true) => "recovering",
            (false, false) => "unhealthy",
        }
    }
}

async fn check(route: Arc<LocalRoute>, cfg: HealthCheck, store: Store, client: ProbeClient, unhealthy: Unhealthy) {
    let id = route.route.id;
    let mut tracker = match store.health_of(id).await {
        Ok(Some(stored)) => Tracker::resume(&stored.status, stored.streak),
        Ok(None) => Tracker::default(),
        Err(e) => {
            tracing::warn!(route = %route.name(), error = %e, "can't read the stored health; starting healthy");
            Tracker::default()
        }
    };
    let set_unhealthy = |healthy: bool| {
        unhealthy.send_if_modified(|s| if healthy { s.remove(&id) } else { s.insert(id) });
    };
    set_unhealthy(tracker.healthy());
    let mut interval = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_record: Option<(tokio::time::Instant, &'static str)> = None;
    loop {
        interval.tick().await;
        let result = probe(&client, &route, &cfg).await;
        let flipped = tracker.observe(result.is_ok(), &cfg);
        if flipped {
            set_unhealthy(tracker.healthy());
            tracing::info!(route = %route.name(), healthy = tracker.healthy(), detail = ?result.as_ref().err(), "health changed");
        }
        let status = tracker.status();
        let due = last_record.is_none_or(|(t, s)| s != status || t.elapsed() >= RECORD_EVERY);
        if flipped || due {
            last_record = Some((tokio::time::Instant::now(), status));
            let detail: String = match result {
                Ok(()) => "ok".into(),
                Err(e) => e.chars().take(MAX_HEALTH_DETAIL).collect(),
            };
            let checked = (route.route.target.clone(), cfg.clone());
            match store
                .record_health(id, checked, status, detail, tracker.streak(), flipped)
                .await
            {
                Ok(Some(_)) => {}
                // The route was removed or changed meanwhile; the
                // supervisor stops this task.
                Ok(None) => tracing::debug!(route = %route.name(), "health result for a route that changed: dropped"),
                Err(e) => tracing::warn!(error = %e, "can't record a health check"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(unhealthy_after: u32, healthy_after: u32) -> HealthCheck {
        HealthCheck {
            path: "/".into(),
            interval_secs: 1,
            timeout_ms: 100,
            unhealthy_after,
            healthy_after,
        }
    }

    #[test]
    fn a_failing_check_is_reported_as_failing_before_it_makes_the_route_unhealthy() {
        let cfg = cfg(3, 2);
        let mut t = Tracker::default();
        assert!(!t.observe(false, &cfg));
        assert_eq!(
            (t.status(), t.healthy(), t.streak()),
            ("failing", true, 1),
            "not \"healthy\""
        );
        assert!(!t.observe(false, &cfg));
        assert!(t.observe(false, &cfg), "flips at the third failure");
        assert_eq!((t.status(), t.healthy()), ("unhealthy", false));
        assert!(!t.observe(true, &cfg));
        assert_eq!((t.status(), t.healthy()), ("recovering", false));
        assert!(t.observe(true, &cfg));
        assert_eq!((t.status(), t.healthy(), t.streak()), ("healthy", true, 2));
    }

    #[test]
    fn a_restart_resumes_from_the_stored_status() {
        let cfg = cfg(3, 2);
        for status in ["healthy", "failing", "unhealthy", "recovering"] {
            let t = Tracker::resume(status, 4);
            assert_eq!((t.status(), t.streak()), (status, 4));
            assert_eq!(t.healthy(), crate::model::status_is_served(status), "{status}");
        }
        // One success is not enough to serve a route stored unhealthy.
        let mut t = Tracker::resume("unhealthy", 5);
        assert!(!t.observe(true, &cfg));
        assert!(!t.healthy());
        // A route stored failing twice flips at its next failure.
        let mut t = Tracker::resume("failing", 2);
        assert!(t.observe(false, &cfg));
    }

    #[tokio::test]
    async fn routes_stored_unhealthy_start_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let check = cfg(3, 2);
        let new = |host: &str| crate::model::NewRoute {
            health: Some(check.clone()),
            ..serde_json::from_value(serde_json::json!({ "host": host, "target": "1" })).unwrap()
        };
        let down = store.add(new("down.test"), "t").await.unwrap().route_id.unwrap();
        let up = store.add(new("up.test"), "t").await.unwrap().route_id.unwrap();
        let target = "http://127.0.0.1:1".to_owned();
        let recorded = store
            .record_health(
                down,
                (target.clone(), check.clone()),
                "unhealthy",
                "refused".into(),
                3,
                true,
            )
            .await
            .unwrap();
        assert!(recorded.is_some());
        store
            .record_health(up, (target, check), "healthy", "ok".into(), 9, false)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let unhealthy = spawn(store.clone(), store.routes(), shutdown.clone()).await;
        assert_eq!(
            *unhealthy.borrow(),
            BTreeSet::from([down]),
            "known before any check runs"
        );
        shutdown.cancel();
    }
}
