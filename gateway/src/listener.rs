//! The public TLS listener. It reads the ClientHello first, then decides:
//! ALPN `routehub/1` is a relay tunnel over TCP (the fallback transport);
//! anything else is end-user HTTPS (h2 or HTTP/1.1), for which a
//! certificate is obtained first if the name is registered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tunnel_proto::Tunnel;
use tunnel_proto::limits::HANDSHAKE_TIMEOUT;
use tunnel_proto::limits::{ALPN, MAX_HTTP_HEAD};

use crate::headers::HeadBudget;
use crate::proxy::{self, ConnInfo};
use crate::{State, handshake};

/// Time for a client to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent h2 streams per client connection.
pub const MAX_H2_STREAMS: u32 = 256;

/// HTTPS config: h2 and HTTP/1.1, TLS 1.2 and 1.3, certificates from the
/// shared resolver, resumption on. With `client_auth`, a client
/// certificate is asked for (not required); requests check it against
/// their host's org CA. Each config has its own ticketer and cache, so a
/// session resumed on one is never taken for the other.
pub(crate) fn https_tls(
    resolver: Arc<certs::CertResolver>,
    client_auth: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(tunnel_proto::tls::provider())
        .with_safe_default_protocol_versions()?;
    let builder = if client_auth {
        builder.with_client_cert_verifier(crate::access::mtls::OfferClientCert::new())
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(cfg)
}

/// The end-user HTTP server. Request heads are bounded by the config's
/// limits already while they are read (h1: buffer and field count; h2: the
/// decoded header list, as HPACK counts it, with 32 bytes per field);
/// [`crate::proxy`] checks the exact forwarded size.
pub(crate) fn http_builder(config: &crate::GatewayConfig) -> auto::Builder<TokioExecutor> {
    let (max_bytes, max_fields) = (config.max_request_header_bytes, config.max_request_header_fields);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_bytes.max(MAX_HTTP_HEAD))
        .max_headers(max_fields);
    let h2_list = max_bytes.saturating_add(32 * max_fields);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Accepts TCP connections until shutdown; each holds a permit of the
/// connection limit.
pub(crate) async fn accept_tcp(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(state.config.max_connections));
    while let Some((tcp, peer, permit)) = next_connection(&listener, &permits, &state.shutdown, "HTTPS").await {
        let _ = tcp.set_nodelay(true);
        // A relay has this long from its TCP connection to `Welcome`
        // (TLS included), as over QUIC.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let state = state.clone();
        let tasks = state.tasks.clone();
        tasks.spawn(
            async move {
                match handle_tcp(tcp, peer, state.clone(), deadline).await {
                    // A relay session lives outside the tracker: the drain
                    // waits for user requests, not for tunnels.
                    Ok(Some(tunnel)) => {
                        let Ok(tunnel_permit) = state.tunnel_permits.clone().try_acquire_owned() else {
                            tunnel.close("too many relay tunnels");
                            return;
                        };
                        let span = tracing::info_span!("relay", remote = %peer, transport = "tcp");
                        tokio::spawn(
                            async move {
                                let _permits = (permit, tunnel_permit);
                                handshake::serve(tunnel, state, deadline).await
                            }
                            .instrument(span),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "connection ended"),
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// The next connection on `listener`, with a permit of `permits` (waits
/// while every permit is taken); `None` at shutdown.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.ok()?,
            _ = shutdown.cancelled() => return None,
        };
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => return Some((tcp, peer, permit)),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Serves one TCP connection: user HTTPS to the end, or, for a relay tunnel
/// (ALPN `routehub/1`), returns the established tunnel, whose TLS handshake
/// had to be done by `tunnel_deadline`.
async fn handle_tcp(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<State>,
    tunnel_deadline: Instant,
) -> std::io::Result<Option<Tunnel>> {
    let start = timeout(
        TLS_HANDSHAKE_TIMEOUT,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS ClientHello timed out"))??;
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let wants_tunnel = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ALPN));
    if wants_tunnel {
        let tls = timeout_at(tunnel_deadline, start.into_stream(state.tunnel_tls.clone()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        return timeout_at(tunnel_deadline, tunnel_proto::tcp::accept(tls, peer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tunnel setup timed out"))?
            .map(Some)
            .map_err(std::io::Error::other);
    }
    let wants_acme = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == certs::challenge::ACME_TLS_ALPN));
    if wants_acme {
        return crate::acme_tls::answer(start, sni.as_deref(), &state, TLS_HANDSHAKE_TIMEOUT)
            .await
            .map(|()| None);
    }
    if let Some(name) = &sni {
        // Bounded: a handshake waiting for an order gives up with the
        // handshake deadline; the order itself goes on.
        match timeout(TLS_HANDSHAKE_TIMEOUT, state.certs.ensure(name)).await {
            Ok(Ok(())) => {}
            Ok(Err(certs::Error::NotRegistered(_))) => {
                state.metrics.unknown_sni.inc();
                tracing::debug!(%name, "no certificate for an unregistered name");
            }
            // Per handshake, so clients control how often: debug only. The
            // order's own failures are logged once where they happen.
            Ok(Err(e)) => tracing::debug!(%name, error = %e, "no certificate for this name"),
            Err(_) => tracing::debug!(%name, "certificate not ready within the handshake deadline"),
        }
    }
    // Only hosts with mTLS routes ask for a client certificate.
    let wants_cert = sni
        .as_deref()
        .is_some_and(|name| state.registry.wants_client_cert(name));
    let config = if wants_cert {
        state.https_mtls.clone()
    } else {
        state.https_tls.clone()
    };
    let tls = timeout(TLS_HANDSHAKE_TIMEOUT, start.into_stream(config))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let client_chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
    let budget = Arc::new(HeadBudget::default());
    let info = Arc::new(ConnInfo {
        peer,
        sni,
        client_chain,
        budget: budget.clone(),
    });
    let shutdown = state.shutdown.clone();
    let builder = http_builder(&state.config);
    let service = service_fn(move |req| proxy::handle(state.clone(), info.clone(), req));
    let io = CountingIo {
        inner: tls,
        budget: budget.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // At shutdown, or when its heads decode to far more than it sent
    // (HPACK amplification; every later request of it is refused):
    // finish the requests in flight, take no new ones.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = budget.exceeded.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map(|()| None).map_err(std::io::Error::other)
}

/// A client connection's stream that counts the bytes read from it (for
/// [`HeadBudget`]).
struct CountingIo<S> {
    inner: S,
    budget: Arc<HeadBudget>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.budget.wire.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
