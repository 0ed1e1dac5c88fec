//! One authenticated relay connection as the gateway holds it: its tunnel,
//! its pool of idle connections, the routes it serves and the streams in
//! flight on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunnel_proto::{HostPattern, PublicKey, RouteSpec, Tunnel};

use crate::pool::{ConnPool, TunnelConn};

/// One authenticated relay connection.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub key: PublicKey,
    /// The relay process (see `Hello::instance`).
    pub instance: u64,
    pub tunnel: Tunnel,
    /// How often the relay pings.
    heartbeat: Duration,
    /// When the session began, and when the relay was last heard from
    /// (milliseconds after that).
    born: Instant,
    heard_ms: AtomicU64,
    /// Idle HTTP connections over this tunnel's streams.
    pub pool: ConnPool,
    pub(crate) draining: AtomicBool,
    /// Cancelled when a newer session of the relay replaces this quiet
    /// one: requests still waiting for their response head here give up
    /// (safe ones are sent again on the new session at once), while
    /// responses already under way go on, on a lossy path as on a good one.
    pub(crate) replaced: tokio_util::sync::CancellationToken,
    /// The routes served (authorized), and the relay's version they come
    /// from; both change only under the registry's sessions lock.
    pub(crate) routes: Mutex<Vec<RouteSpec>>,
    pub(crate) routes_version: AtomicU64,
    /// The routes in the table now, by host pattern (none while draining).
    published: Mutex<HashMap<HostPattern, Vec<RouteSpec>>>,
    /// The relay's route set as received (before authorization): version,
    /// checksum and routes, what an access change authorizes again.
    received: Mutex<(u64, [u8; 32], Arc<Vec<RouteSpec>>)>,
    /// Asks the control session to make its copy of the routes drift
    /// (tests of drift repair).
    pub(crate) drift: tokio::sync::Notify,
    /// Route ids failing their health check on the relay.
    pub(crate) unhealthy: Mutex<std::collections::BTreeSet<u64>>,
    /// Streams in flight; a draining session closes when this reaches 0.
    active: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// How long a finished connection may take to become ready for the next
/// request before it is closed instead of pooled.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counts one stream of a session (and the global gauge) until dropped.
pub struct StreamGuard {
    session: Arc<Session>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.session.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.session.idle.notify_waiters();
        }
    }
}

impl Session {
    /// A session whose relay heartbeats every `heartbeat`.
    pub fn new(id: u64, key: PublicKey, instance: u64, tunnel: Tunnel, heartbeat: Duration) -> Self {
        Session {
            id,
            key,
            instance,
            tunnel,
            heartbeat,
            born: Instant::now(),
            heard_ms: AtomicU64::new(0),
            pool: ConnPool::default(),
            draining: AtomicBool::new(false),
            replaced: Default::default(),
            routes: Mutex::new(Vec::new()),
            routes_version: AtomicU64::new(0),
            published: Mutex::new(HashMap::new()),
            received: Mutex::new((0, tunnel_proto::routes::checksum([]), Arc::default())),
            drift: tokio::sync::Notify::new(),
            unhealthy: Mutex::new(Default::default()),
            active: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// The route set as received from the relay: version, checksum, routes.
    pub fn received(&self) -> (u64, [u8; 32], Arc<Vec<RouteSpec>>) {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_received(&self, version: u64, specs: Arc<Vec<RouteSpec>>) {
        let checksum = tunnel_proto::routes::checksum(specs.iter());
        *self.received.lock().unwrap_or_else(|e| e.into_inner()) = (version, checksum, specs);
    }

    /// A control frame arrived from the relay just now.
    pub(crate) fn heard(&self) {
        let ms = self.born.elapsed().as_millis().min(u64::MAX as u128) as u64;
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether nothing came from the relay for more than a heartbeat and a
    /// quarter: a healthy relay pings every heartbeat, so its path is
    /// probably gone (its relay sees the same and starts a new session).
    pub(crate) fn is_quiet(&self) -> bool {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(heard) > self.heartbeat * 5 / 4
    }

    /// Streams in flight now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Marks a stream in flight until the guard drops.
    pub fn stream_guard(self: &Arc<Self>, gauge: &prometheus_client::metrics::gauge::Gauge) -> StreamGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        StreamGuard {
            session: self.clone(),
            gauge: gauge.clone(),
        }
    }

    /// Resolves once no stream is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Gives a connection whose response is done back to the pool, once
    /// it is ready for the next request (at once, nearly always).
    pub fn release(self: &Arc<Self>, route_id: u64, conn: TunnelConn) {
        // Idle, it would hold a stream that an open is waiting for.
        if !self.is_usable() || conn.sender.is_closed() || self.tunnel.streams_wanted() {
            return;
        }
        if conn.sender.is_ready() {
            return self.pool.put(route_id, conn);
        }
        // Still finishing the request body, or the connection task has not
        // seen the end of the response yet.
        let session = self.clone();
        tokio::spawn(async move {
            let mut conn = conn;
            let ready = std::future::poll_fn(|cx| conn.sender.poll_ready(cx));
            if let Ok(Ok(())) = tokio::time::timeout(RELEASE_WAIT, ready).await
                && !session.tunnel.streams_wanted()
            {
                session.pool.put(route_id, conn);
            }
        });
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn is_usable(&self) -> bool {
        !self.is_draining() && !self.tunnel.is_closed()
    }

    /// The routes served (authorized).
    pub(crate) fn routes(&self) -> std::sync::MutexGuard<'_, Vec<RouteSpec>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The routes in the table now, by host pattern.
    pub(crate) fn published(&self) -> std::sync::MutexGuard<'_, HashMap<HostPattern, Vec<RouteSpec>>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what the table holds of this session now; returns what it held.
    pub(crate) fn publish(&self, now: HashMap<HostPattern, Vec<RouteSpec>>) -> HashMap<HostPattern, Vec<RouteSpec>> {
        std::mem::replace(&mut *self.published(), now)
    }

    pub(crate) fn unhealthy_routes(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.unhealthy.lock().unwrap_or_else(|e| e.into_inner())
    }
}
