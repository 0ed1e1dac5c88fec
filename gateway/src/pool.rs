//! HTTP/1.1 connections over tunnel streams, kept per route on each relay
//! session. A request takes an idle connection when there is one, so the
//! common case opens no stream, runs no handshake and spawns no task; the
//! relay holds one connection to the route's target per stream, so reuse
//! reaches all the way to the local service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;
use tracing::Instrument;
use tunnel_proto::limits::MAX_HTTP_HEAD;
use tunnel_proto::{Frame, StreamKind, TunnelStream};

use crate::body::TunnelBody;

/// Idle connections one session keeps, over all its routes. Each holds a
/// stream and, on the relay, a connection to the target.
pub const MAX_IDLE_PER_SESSION: usize = 256;
// Idle connections alone can never hold every stream a tunnel allows, so
// a request for another route always finds one (the pool still lets idle
// ones go first when opens wait).
const _: () = assert!(MAX_IDLE_PER_SESSION < tunnel_proto::tcp::OPEN_PERMITS);
/// An idle connection older than this is closed rather than reused: local
/// services close idle keep-alive connections after as little as 5 s
/// (Node, uvicorn, Apache; gunicorn 2 s), and a request sent on one the
/// target has just closed fails.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Requests that can't be replayed (a body, or an unsafe method) take only
/// connections idle for less than this.
pub const UNREPLAYABLE_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// One HTTP/1.1 connection over a tunnel stream. Dropping it closes the
/// stream (its connection task is aborted), unless it was
/// [`detached`](TunnelConn::detach) for an upgrade.
pub struct TunnelConn {
    pub sender: SendRequest<TunnelBody>,
    task: AbortHandle,
    detached: bool,
    /// Whether it served a request before (a stale connection may fail
    /// where a fresh one would not).
    pub reused: bool,
    /// The pool generation it was opened in (see [`ConnPool::clear`]).
    generation: u64,
}

impl TunnelConn {
    /// Opens a stream for `route_id` and starts HTTP/1.1 on it; it may go
    /// back to `pool` when done.
    pub async fn open(
        tunnel: &tunnel_proto::Tunnel,
        pool: &ConnPool,
        route_id: u64,
    ) -> tunnel_proto::Result<TunnelConn> {
        let generation = pool.generation();
        let mut stream = tunnel.open_stream().await?;
        tunnel_proto::io::write_frame(
            &mut stream,
            &Frame::StreamOpen {
                kind: StreamKind::Http,
                route_id,
            },
        )
        .await?;
        Self::handshake(stream, generation).await
    }

    async fn handshake(stream: TunnelStream, generation: u64) -> tunnel_proto::Result<TunnelConn> {
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HTTP_HEAD.max(8192))
            .handshake::<_, TunnelBody>(TokioIo::new(stream))
            .await
            .map_err(|e| tunnel_proto::Error::Closed(e.to_string()))?;
        let task = tokio::spawn(
            async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "tunnel connection ended with an error");
                }
            }
            .in_current_span(),
        );
        Ok(TunnelConn {
            sender,
            task: task.abort_handle(),
            detached: false,
            reused: false,
            generation,
        })
    }

    /// Lets the connection task run on after this handle is dropped: an
    /// upgrade hands the stream over from that task.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for TunnelConn {
    fn drop(&mut self) {
        if !self.detached {
            self.task.abort();
        }
    }
}

struct Idle {
    conn: TunnelConn,
    since: Instant,
}

/// Idle connections of one session by route id, most recently used last.
#[derive(Default)]
pub struct ConnPool {
    inner: Mutex<PoolInner>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("idle", &self.idle()).finish()
    }
}

#[derive(Default)]
struct PoolInner {
    by_route: HashMap<u64, Vec<Idle>>,
    idle: usize,
    generation: u64,
}

impl ConnPool {
    /// An idle connection for `route_id` that is still open and ready and
    /// was idle for less than `max_idle` (those idle longer stay for
    /// requests that allow more).
    pub fn take(&self, route_id: u64, max_idle: Duration) -> Option<TunnelConn> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let PoolInner { by_route, idle, .. } = &mut *inner;
        let list = by_route.get_mut(&route_id)?;
        let (now, limit) = (Instant::now(), max_idle.min(IDLE_TIMEOUT));
        let mut found = None;
        // Most recently used last, so the first usable one that is too old
        // means all are.
        while let Some(entry) = list.last() {
            let age = now.duration_since(entry.since);
            let usable = entry.conn.sender.is_ready() && age < IDLE_TIMEOUT;
            if usable && age >= limit {
                break;
            }
            let Some(entry) = list.pop() else { break };
            *idle -= 1;
            if usable {
                found = Some(entry.conn);
                break;
            }
            // Closed by the relay, or expired: dropped here.
        }
        if list.is_empty() {
            by_route.remove(&route_id);
        }
        found.map(|mut conn| {
            conn.reused = true;
            conn
        })
    }

    /// Keeps `conn` for the next request to `route_id` if it is ready and
    /// there is room; otherwise it is closed.
    pub fn put(&self, route_id: u64, conn: TunnelConn) {
        if !conn.sender.is_ready() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.idle >= MAX_IDLE_PER_SESSION || conn.generation != inner.generation {
            return;
        }
        inner.idle += 1;
        inner.by_route.entry(route_id).or_default().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes the connection idle the longest, to free its stream for
    /// another route. Returns whether there was one.
    pub fn evict_oldest(&self) -> bool {
        let evicted = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let PoolInner { by_route, idle, .. } = &mut *inner;
            // Each list is oldest first.
            let oldest = by_route
                .iter()
                .filter_map(|(route, list)| list.first().map(|e| (e.since, *route)))
                .min();
            let Some((_, route)) = oldest else { return false };
            let list = by_route.entry(route).or_default();
            let evicted = list.remove(0);
            if list.is_empty() {
                by_route.remove(&route);
            }
            *idle -= 1;
            evicted
        };
        drop(evicted);
        true
    }

    /// Closes connections idle past [`IDLE_TIMEOUT`] or closed by the relay.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let PoolInner { by_route, idle, .. } = &mut *inner;
        by_route.retain(|_, list| {
            list.retain(|e| !e.conn.sender.is_closed() && now.duration_since(e.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
        *idle = by_route.values().map(Vec::len).sum();
    }

    /// Closes every idle connection, and keeps none of those in use now
    /// when they are done: the relay's routes changed (a stream stays
    /// connected to the target it started with), or the session is ending.
    pub fn clear(&self) {
        let drained: Vec<_> = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.idle = 0;
            inner.generation += 1;
            inner.by_route.drain().collect()
        };
        drop(drained);
    }

    fn generation(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).generation
    }

    pub fn idle(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).idle
    }
}
