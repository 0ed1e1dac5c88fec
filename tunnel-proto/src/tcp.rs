//! The fallback transport: TCP + TLS 1.3 + yamux, ALPN `routehub/1`, on the
//! gateway's HTTPS port, for networks that block UDP.
//!
//! yamux is poll-based: one task owns the `Connection` and must keep polling
//! it for *any* I/O to happen (outbound data and window updates included).
//! [`spawn_driver`] is that task; the [`YamuxTunnel`] handle talks to it
//! over channels.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::handshake::{EXPORTER_LABEL, Exporter};
use crate::limits::{TCP_CONNECTION_RECEIVE_WINDOW, TCP_KEEPALIVE, TCP_MAX_STREAMS};
use crate::tunnel::Tunnel;

/// Inbound streams waiting to be accepted; more are refused (reset). A
/// gateway accepts only the control stream; a relay one per request, at
/// most the gateway's open permits, so a peer within limits never sees a reset.
const SERVER_ACCEPT_BACKLOG: usize = 4;
const CLIENT_ACCEPT_BACKLOG: usize = TCP_MAX_STREAMS;
/// Open requests taken from the queue at once (the rest wait in it).
const OPEN_QUEUE: usize = 64;
/// Streams this side may have open. yamux kills the whole connection when
/// a peer exceeds its limit, and the peer may still count streams we have
/// already closed, so openers keep half of it; further opens wait.
pub const OPEN_PERMITS: usize = TCP_MAX_STREAMS / 2;

/// A yamux stream, holding its open-stream permit while it lives.
pub(crate) struct YamuxStream {
    pub(crate) io: Compat<yamux::Stream>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

type OpenRequest = oneshot::Sender<Result<yamux::Stream>>;

/// Handle to a yamux connection driven by its own task.
pub(crate) struct YamuxTunnel {
    open: mpsc::Sender<OpenRequest>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    close: CancellationToken,
    /// `Some(reason)` once the driver has stopped.
    closed: watch::Receiver<Option<String>>,
    remote: SocketAddr,
    exporter: Exporter,
    permits: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl YamuxTunnel {
    /// Waits for a permit (at most [`OPEN_PERMITS`] streams open), then opens.
    pub(crate) async fn open_stream(&self) -> Result<YamuxStream> {
        let permit = {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let _waited = scopeguard(|| {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            });
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| self.closed_error())?
        };
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).await.map_err(|_| self.closed_error())?;
        let stream = rx.await.map_err(|_| self.closed_error())??;
        Ok(YamuxStream {
            io: stream.compat(),
            _permit: Some(permit),
        })
    }

    pub(crate) async fn accept_stream(&self) -> Option<YamuxStream> {
        self.inbound.lock().await.recv().await.map(|s| YamuxStream {
            io: s.compat(),
            _permit: None,
        })
    }

    pub(crate) fn at_limit(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Opens waiting for a permit right now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.close.cancel();
    }

    pub(crate) async fn closed(&self) -> Error {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(Option::is_some).await;
        self.closed_error()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.closed
                .borrow()
                .clone()
                .unwrap_or_else(|| "yamux connection closed".into()),
        )
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    pub(crate) fn exporter(&self) -> Exporter {
        self.exporter
    }
}

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // Order matters: yamux asserts window >= 256 KiB × streams on each
    // call, so the (lower) window goes after the (lower) stream limit.
    // Windows equal to streams × 256 KiB leave no room for yamux to grow
    // any stream's window: the total stays bounded.
    cfg.set_max_num_streams(TCP_MAX_STREAMS);
    cfg.set_max_connection_receive_window(Some(TCP_CONNECTION_RECEIVE_WINDOW));
    cfg
}

/// Starts the driver for an established TLS stream and returns the tunnel.
fn spawn_driver<S>(io: S, mode: yamux::Mode, remote: SocketAddr, exporter: Exporter) -> Tunnel
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let backlog = match mode {
        yamux::Mode::Server => SERVER_ACCEPT_BACKLOG,
        yamux::Mode::Client => CLIENT_ACCEPT_BACKLOG,
    };
    let mut conn = yamux::Connection::new(io.compat(), yamux_config(), mode);
    let (open_tx, mut open_rx) = mpsc::channel::<OpenRequest>(256);
    let (inbound_tx, inbound_rx) = mpsc::channel(backlog);
    let (closed_tx, closed_rx) = watch::channel(None);
    let close = CancellationToken::new();
    let stop = close.clone();
    tokio::spawn(async move {
        let mut waiting: std::collections::VecDeque<OpenRequest> = Default::default();
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut closing = false;
        let reason = poll_fn(|cx| {
            loop {
                if !closing && stopped.as_mut().poll(cx).is_ready() {
                    closing = true;
                }
                if closing {
                    return match conn.poll_close(cx) {
                        Poll::Ready(_) => Poll::Ready("closed locally".to_owned()),
                        Poll::Pending => Poll::Pending,
                    };
                }
                while waiting.len() < OPEN_QUEUE {
                    match open_rx.poll_recv(cx) {
                        Poll::Ready(Some(req)) => waiting.push_back(req),
                        // Every handle is gone: nobody can use the tunnel.
                        Poll::Ready(None) if !closing => {
                            closing = true;
                            break;
                        }
                        _ => break,
                    }
                }
                if closing {
                    continue;
                }
                // Callers that gave up (timed out) get nothing opened.
                waiting.retain(|req| !req.is_closed());
                while !waiting.is_empty() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(stream)) => {
                            if let Some(req) = waiting.pop_front() {
                                let _ = req.send(Ok(stream));
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(format!("yamux: {e}")),
                        Poll::Pending => break,
                    }
                }
                match conn.poll_next_inbound(cx) {
                    // A full backlog drops the stream: yamux resets it.
                    Poll::Ready(Some(Ok(stream))) => drop(inbound_tx.try_send(stream)),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(format!("yamux: {e}")),
                    Poll::Ready(None) => return Poll::Ready("peer closed the connection".to_owned()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        for req in waiting {
            let _ = req.send(Err(Error::Closed(reason.clone())));
        }
        let _ = closed_tx.send(Some(reason));
    });
    Tunnel::from_yamux(Arc::new(YamuxTunnel {
        open: open_tx,
        inbound: Mutex::new(inbound_rx),
        close,
        closed: closed_rx,
        remote,
        exporter,
        permits: Arc::new(tokio::sync::Semaphore::new(OPEN_PERMITS)),
        waiting: AtomicUsize::new(0),
    }))
}

fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Gateway side: wraps an accepted TLS connection whose ALPN is `routehub/1`.
pub fn accept(tls: tokio_rustls::server::TlsStream<TcpStream>, remote: SocketAddr) -> Result<Tunnel> {
    tune(tls.get_ref().0);
    let mut exporter = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)?;
    Ok(spawn_driver(tls, yamux::Mode::Server, remote, exporter))
}

/// Relay side: TCP connect, TLS 1.3 with ALPN `routehub/1`, yamux, all
/// within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Tunnel> {
    let deadline = tokio::time::Instant::now() + timeout;
    let name = tls_name(server_name)?;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::HandshakeTimeout(timeout))??;
    tls_over(tcp, name, tls, deadline, timeout).await
}

/// Like [`connect`] over a TCP connection made by the caller (tests use
/// it to decide when TLS starts): TLS and yamux within `timeout`.
pub async fn connect_over(
    tcp: TcpStream,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Tunnel> {
    let deadline = tokio::time::Instant::now() + timeout;
    tls_over(tcp, tls_name(server_name)?, tls, deadline, timeout).await
}

fn tls_name(server_name: &str) -> Result<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(server_name.to_owned()).map_err(|_| Error::InvalidHostname {
        name: server_name.to_owned(),
        reason: "not a valid TLS server name",
    })
}

async fn tls_over(
    tcp: TcpStream,
    name: rustls_pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Tunnel> {
    tune(&tcp);
    let remote = tcp.peer_addr()?;
    let tls = tokio::time::timeout_at(deadline, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| Error::HandshakeTimeout(timeout))??;
    let mut exporter = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)?;
    Ok(spawn_driver(tls, yamux::Mode::Client, remote, exporter))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::limits::{CONNECTION_RECEIVE_WINDOW, TCP_STREAM_RECEIVE_WINDOW};

    #[test]
    fn yamux_takes_the_limits() {
        assert_eq!(TCP_STREAM_RECEIVE_WINDOW, yamux::DEFAULT_CREDIT as usize);
        // yamux panics on a window below streams × its default credit.
        let _ = yamux_config();
        const { assert!(OPEN_PERMITS * 2 <= TCP_MAX_STREAMS) };
    }

    /// A gateway opens every stream it may (one per request) and the relay
    /// answers on all of them while nobody reads the answers (slow
    /// clients): what piles up unread stays within a QUIC connection's
    /// window. Virtual time: it only moves once every task is blocked.
    #[tokio::test(start_paused = true)]
    async fn answers_nobody_reads_buffer_at_most_a_quic_connection_window() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        let gateway = spawn_driver(a, yamux::Mode::Server, addr, [0; 32]);
        let relay = spawn_driver(b, yamux::Mode::Client, addr, [0; 32]);
        let mut opened = Vec::new();
        for _ in 0..OPEN_PERMITS {
            let mut s = gateway.open_stream().await.expect("open");
            s.write_all(b"?").await.expect("request");
            opened.push(s);
        }
        // One more waits for a permit: never more streams open than that.
        let more = tokio::time::timeout(Duration::from_secs(1), gateway.open_stream()).await;
        assert!(more.is_err(), "opened more than {OPEN_PERMITS} streams");
        let written = Arc::new(AtomicUsize::new(0));
        let mut answers = tokio::task::JoinSet::new();
        for _ in 0..OPEN_PERMITS {
            let mut s = relay.accept_stream().await.expect("accept").expect("a stream");
            let written = written.clone();
            answers.spawn(async move {
                let mut request = [0u8; 1];
                s.read_exact(&mut request).await.expect("request");
                let chunk = vec![0u8; 16 * 1024];
                while let Ok(n) = s.write(&chunk).await {
                    written.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        // Returns once every writer is stuck for want of window.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let total = written.load(Ordering::Relaxed);
        assert!(
            total <= CONNECTION_RECEIVE_WINDOW as usize,
            "{total} bytes buffered unread, more than QUIC's {CONNECTION_RECEIVE_WINDOW}"
        );
        assert!(
            total >= OPEN_PERMITS * TCP_STREAM_RECEIVE_WINDOW / 2,
            "only {total} bytes went out"
        );
        answers.abort_all();
        drop(opened);
    }
}
