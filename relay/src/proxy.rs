//! Tunnel streams to local services. The gateway has already done all the
//! HTTP work (routing, access policy, forwarding and identity headers) and
//! speaks HTTP/1.1 over each stream, keeping it for further requests; the
//! relay connects the stream to its route's target and splices bytes both
//! ways. One stream is one keep-alive connection to the target, upgrades
//! (WebSocket) included, and the relay parses nothing.
//!
//! The relay trusts what arrives on a stream because only the gateway can
//! open one: the tunnel is TLS with the gateway's certificate verified and
//! the session authenticated, and the gateway strips identity headers from
//! every client request before setting its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tunnel_proto::http::Refusal;
use tunnel_proto::limits::STREAM_HEADER_TIMEOUT;
use tunnel_proto::{Frame, StreamKind, TunnelStream};

use crate::routes::{LocalRoute, RouteSet};

/// Time to connect to a local target; past it the stream gets a 502.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a 502 from the relay itself, how much of the request is read (and
/// dropped) so the gateway gets the answer rather than a reset.
const REFUSED_DRAIN_LIMIT: u64 = 1024 * 1024;
const REFUSED_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a stream needs, shared across streams.
pub struct Proxy {
    pub routes: Arc<RouteSet>,
    /// Streams being served now.
    pub open: AtomicUsize,
}

impl Proxy {
    pub fn new(routes: Arc<RouteSet>) -> Self {
        Proxy {
            routes,
            open: AtomicUsize::new(0),
        }
    }
}

/// Counts one stream in [`Proxy::open`] while it lives.
struct Open<'a>(&'a AtomicUsize);

impl<'a> Open<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one stream the gateway opened: reads its header, connects the
/// route's target, then splices until both sides are done.
pub async fn serve_stream(proxy: Arc<Proxy>, mut stream: TunnelStream) {
    let _open = Open::new(&proxy.open);
    let route_id = match timeout(STREAM_HEADER_TIMEOUT, tunnel_proto::io::read_frame(&mut stream)).await {
        Ok(Ok(Some(Frame::StreamOpen {
            kind: StreamKind::Http,
            route_id,
        }))) => route_id,
        Ok(Ok(other)) => return tracing::debug!(frame = ?other.map(|f| f.name()), "stream without a valid header"),
        Ok(Err(e)) => return tracing::debug!(error = %e, "bad stream header"),
        Err(_) => return tracing::debug!("stream header timed out"),
    };
    let Some(route) = proxy.routes.get(route_id) else {
        let msg = format!("route {route_id} is no longer configured on this relay");
        return refuse(stream, Refusal::RouteGone, &msg).await;
    };
    // The target's address is for the relay's log only: the answer reaches
    // the public client.
    let failed = match timeout(TARGET_CONNECT_TIMEOUT, connect(&route)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {TARGET_CONNECT_TIMEOUT:?}")),
    };
    let tcp = match failed {
        Ok(tcp) => tcp,
        Err(why) => {
            tracing::warn!(route = %route.name(), target = %route.target.url, "target unreachable: {why}");
            let msg = format!(
                "route {} is unreachable: its local service did not take the connection",
                route.name()
            );
            return refuse(stream, Refusal::TargetUnreachable, &msg).await;
        }
    };
    if let Err(e) = tunnel_proto::splice::splice_tcp(stream, tcp).await {
        tracing::debug!(error = %e, route = %route.name(), "stream ended with an error");
    }
}

async fn connect(route: &LocalRoute) -> std::io::Result<TcpStream> {
    let authority = &route.target.authority;
    let port = authority.port_u16().unwrap_or(80);
    // IPv6 literals come bracketed in an authority; the resolver wants them bare.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, port)).await?;
    // Requests and replies are small writes that must not wait for an ACK.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Answers the stream with a 502 of the relay's own, naming the route.
async fn refuse(mut stream: TunnelStream, refusal: Refusal, message: &str) {
    let reply = refusal.response(message);
    let written = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    if let Err(e) = timeout(STREAM_HEADER_TIMEOUT, written)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "gateway not reading")))
    {
        return tracing::debug!(error = %e, "could not send the refusal");
    }
    let _ = timeout(
        REFUSED_DRAIN_TIMEOUT,
        tunnel_proto::splice::discard(&mut stream, REFUSED_DRAIN_LIMIT),
    )
    .await;
}
