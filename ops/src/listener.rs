//! The admin listener both the gateway and the relay run: loopback only
//! unless explicitly overridden, a cap on open connections, a deadline for
//! each request's headers, HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};

/// Connections an admin listener serves at once (long-lived event feeds
/// included); past it new connections are closed at once, so a client that
/// opens and holds many can't exhaust memory or file descriptors.
pub const MAX_ADMIN_CONNECTIONS: usize = 128;
/// Time a client has to send a request's headers; a slow or silent client
/// gives its connection back after this.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Refuses a non-loopback admin address unless `dangerous_public`: the
/// admin API changes the `role`'s configuration, and its token is then all
/// that protects it. Checked by [`AdminListener::bind`]; also call it when
/// validating a config, to fail before anything starts.
pub fn check_admin_addr(addr: SocketAddr, dangerous_public: bool, role: &'static str) -> Result<()> {
    if addr.ip().is_loopback() || dangerous_public {
        Ok(())
    } else {
        Err(Error::PublicAdmin { addr, role })
    }
}

/// A bound admin listener, ready to [`serve`](AdminListener::serve).
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    role: &'static str,
    max_connections: usize,
}

impl AdminListener {
    /// Binds `addr` after [`check_admin_addr`]; a public address allowed
    /// by `dangerous_public` is logged as a warning. `role` (`gateway`,
    /// `relay`) names the owner in errors and logs.
    pub async fn bind(addr: SocketAddr, dangerous_public: bool, role: &'static str) -> Result<Self> {
        check_admin_addr(addr, dangerous_public, role)?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, role, "admin API exposed beyond loopback (dangerous_admin_public)");
        }
        let bind_err = |source| Error::Bind { role, addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(AdminListener {
            listener,
            local_addr,
            role,
            max_connections: MAX_ADMIN_CONNECTIONS,
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves at most `max` connections at once instead of
    /// [`MAX_ADMIN_CONNECTIONS`] (tests of the cap).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Accepts connections until `stop` is cancelled, each answered by
    /// `handler` over HTTP/1.1. Past the cap a new connection is closed
    /// without an answer; a client gets [`ADMIN_HEADER_TIMEOUT`] to send
    /// each request's headers. Connections open when `stop` fires finish
    /// on their own (an event feed ends with its owner's shutdown).
    pub async fn serve<F, Fut, B>(self, stop: CancellationToken, handler: F)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let role = self.role;
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(role, error = %e, "admin accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(role, %peer, "admin connection refused: {} already open", self.max_connections);
                drop(tcp);
                continue;
            };
            let handler = handler.clone();
            let span = tracing::debug_span!("admin", role, %peer);
            tokio::spawn(
                async move {
                    let _permit = permit;
                    let service = service_fn(move |req| {
                        let answer = handler(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                }
                .instrument(span),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{StatusCode, header};
    use http_body_util::{Empty, Full};

    async fn ok(_req: Request<Incoming>) -> Response<Full<Bytes>> {
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    }

    /// A listener on loopback with `max` connections, stopped on drop of
    /// the returned token's guard.
    async fn start(max: usize) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), false, "test")
            .await
            .unwrap()
            .with_max_connections(max);
        let addr = listener.local_addr();
        let stop = CancellationToken::new();
        tokio::spawn(listener.serve(stop.clone(), ok));
        (addr, stop.drop_guard())
    }

    type Conn = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

    /// A kept-alive connection that got an answer (so it holds a permit).
    async fn open(addr: SocketAddr) -> Option<(Conn, tokio::task::JoinHandle<()>)> {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get("/")
            .header(header::HOST, "admin")
            .body(Empty::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        (resp.status() == StatusCode::OK).then_some((send, task))
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_until_one_ends() {
        let (addr, _stop) = start(2).await;
        let first = open(addr).await.expect("first");
        let _second = open(addr).await.expect("second");
        // The third is closed without an answer.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut third, &mut buf),
        )
        .await
        .expect("closed at once, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Once one ends, a new connection is served again.
        drop(first.0);
        first.1.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let served = loop {
            if open(addr).await.is_some() {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::task::yield_now().await;
        };
        assert!(served, "the permit came back");
    }

    #[tokio::test]
    async fn a_public_address_needs_the_explicit_override() {
        let err = AdminListener::bind("0.0.0.0:0".parse().unwrap(), false, "gateway")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config admin_listen: 0.0.0.0:0 is not a loopback address; the gateway's admin API")
                && err.contains("dangerous_admin_public = true"),
            "{err}"
        );
        let listener = AdminListener::bind("0.0.0.0:0".parse().unwrap(), true, "gateway")
            .await
            .expect("allowed when forced");
        assert!(listener.local_addr().ip().is_unspecified());
        check_admin_addr("[::1]:9090".parse().unwrap(), false, "relay").unwrap();
        assert!(check_admin_addr("192.0.2.1:9090".parse().unwrap(), false, "relay").is_err());
    }

    #[tokio::test]
    async fn stop_ends_the_accept_loop() {
        let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), false, "test")
            .await
            .unwrap();
        let addr = listener.local_addr();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(listener.serve(stop.clone(), ok));
        assert!(open(addr).await.is_some());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the loop ends at once")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }
}
