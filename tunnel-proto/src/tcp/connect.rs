//! Setting up a TCP tunnel: TCP, TLS 1.3 with ALPN `routehub/1`, then h2
//! with the same windows and limits as QUIC, on either side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::conn::{Ending, H2Tunnel, OPEN_PERMITS, Role, spawn_connection};
use super::stream::{H2Stream, open, to_io};
use crate::error::{Error, Result};
use crate::handshake::{EXPORTER_LABEL, Exporter};
use crate::limits::{
    CONNECTION_RECEIVE_WINDOW, MAX_STREAMS_PER_SESSION, STREAM_RECEIVE_WINDOW, TCP_KEEPALIVE, TCP_MAX_FRAME,
};
use crate::tunnel::Tunnel;

/// Streams the relay holds accepted but not yet taken: as many as may be
/// open, so a gateway within the limit is never refused (more are).
const ACCEPT_BACKLOG: usize = MAX_STREAMS_PER_SESSION as usize;
/// Recently reset streams remembered (so late DATA for them is ignored, not
/// answered with a reset of its own), and for how long: a stream the
/// gateway gives up on may still have a window's worth of DATA on the way.
const REMEMBERED_RESETS: usize = 2 * MAX_STREAMS_PER_SESSION as usize;
const RESET_MEMORY: Duration = Duration::from_secs(30);
/// Streams the peer may reset before we accept them (h2's rapid-reset
/// guard; the relay accepts at once, so few ever wait).
const MAX_PENDING_ACCEPT_RESETS: usize = 1024;
/// Bytes h2 holds queued per stream beyond what the peer's window lets
/// out; writers wait for window first, so this is only a backstop against
/// a peer that grants huge windows and then stops reading.
const MAX_SEND_BUFFER: usize = 64 * 1024;
/// h2's allowance for the overhead of small DATA frames held unread (each
/// frame under 256 bytes costs 256 minus its length, about the memory h2
/// keeps per frame); past it h2 closes the connection. 32 MiB: one stalled
/// stream can use it up only with frames under 8 bytes, 16 stalled
/// streams with frames under 85. (The relay takes frames as they come, so
/// uploads never pile up there.)
const DATA_FRAME_BUDGET: usize = 32 * 1024 * 1024;
/// Largest header block accepted: stream headers here are a few bytes.
const MAX_HEADER_LIST: u32 = 4 * 1024;

/// Windows and limits, the same on both sides and the same as QUIC's.
macro_rules! configure {
    ($builder:expr) => {
        $builder
            .initial_window_size(STREAM_RECEIVE_WINDOW)
            .initial_connection_window_size(CONNECTION_RECEIVE_WINDOW)
            .max_frame_size(TCP_MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .data_frame_budget(DATA_FRAME_BUDGET)
            .max_concurrent_reset_streams(REMEMBERED_RESETS)
            .reset_stream_duration(RESET_MEMORY)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            // Resets h2 sends itself (late DATA for a forgotten stream)
            // are not a peer's abuse here: the peer is authenticated (or,
            // before that, can touch only the control stream), and a slow
            // link makes them ordinary. Capped per connection's lifetime,
            // they would close a long-lived tunnel.
            .max_local_error_reset_streams(None)
    };
}

fn tunnel(role: Role, remote: SocketAddr, exporter: Exporter) -> (Tunnel, Ending) {
    let (closed_tx, closed_rx) = watch::channel(None);
    let close = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(OPEN_PERMITS));
    let t = Tunnel::from_tcp(Arc::new(H2Tunnel {
        role,
        close: close.clone(),
        closed: closed_rx,
        remote,
        exporter,
        permits: permits.clone(),
        waiting: AtomicUsize::new(0),
    }));
    let ending = Ending {
        stop: close,
        closed: closed_tx,
        permits,
    };
    (t, ending)
}

fn exporter_of<C>(conn: &rustls::ConnectionCommon<C>) -> Result<Exporter> {
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, None)?;
    Ok(exporter)
}

fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Gateway side: starts h2 on an accepted TLS connection whose ALPN is
/// `routehub/1`, and opens the relay's control stream. Callers bound the
/// wait (h2's preface is written here).
pub async fn accept(tls: tokio_rustls::server::TlsStream<TcpStream>, remote: SocketAddr) -> Result<Tunnel> {
    tune(tls.get_ref().0);
    let exporter = exporter_of(tls.get_ref().1)?;
    gateway_side(tls, remote, exporter).await
}

async fn gateway_side<S>(io: S, remote: SocketAddr, exporter: Exporter) -> Result<Tunnel>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (opener, conn) = configure!(h2::client::Builder::new())
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| Error::Io(to_io(e)))?;
    // Opening needs no I/O yet: the control stream goes out with the
    // connection's first writes.
    let control = open(opener.clone()).await.map_err(|e| Error::Io(to_io(e)))?;
    let role = Role::Gateway {
        opener,
        control: std::sync::Mutex::new(Some(control)),
    };
    let (t, ending) = tunnel(role, remote, exporter);
    spawn_connection(conn, ending);
    Ok(t)
}

/// Relay side: TCP connect, TLS 1.3 with ALPN `routehub/1`, h2, all
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
/// it to decide when TLS starts): TLS and h2 within `timeout`.
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
    let exporter = exporter_of(tls.get_ref().1)?;
    tokio::time::timeout_at(deadline, relay_side(tls, remote, exporter))
        .await
        .map_err(|_| Error::HandshakeTimeout(timeout))?
}

async fn relay_side<S>(io: S, remote: SocketAddr, exporter: Exporter) -> Result<Tunnel>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = configure!(h2::server::Builder::new())
        // The gateway's opens, plus the control stream it opens unpermitted.
        .max_concurrent_streams(MAX_STREAMS_PER_SESSION + 1)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| Error::Io(to_io(e)))?;
    let (inbound_tx, inbound_rx) = mpsc::channel(ACCEPT_BACKLOG);
    let role = Role::Relay {
        inbound: Mutex::new(inbound_rx),
        control_taken: AtomicBool::new(false),
    };
    let (t, ending) = tunnel(role, remote, exporter);
    // The server's I/O happens while it is polled for new streams.
    let accepting = async move {
        while let Some(next) = conn.accept().await {
            let (request, mut respond) = next?;
            // Headers back at once: the gateway's reads start there.
            let Ok(send) = respond.send_response(http::Response::new(()), false) else {
                continue;
            };
            let stream = H2Stream::accepted(send, request.into_body());
            if let Err(mpsc::error::TrySendError::Full(mut refused)) = inbound_tx.try_send(stream)
                && let Some(mut send) = refused.send.take()
            {
                send.send_reset(Reason::REFUSED_STREAM);
            }
        }
        Ok(())
    };
    spawn_connection(accepting, ending);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tcp::stream::LINGER;
    use crate::tunnel::TunnelStream;

    async fn pair() -> (Tunnel, Tunnel) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        let (gateway, relay) = tokio::join!(gateway_side(a, addr, [0; 32]), relay_side(b, addr, [0; 32]));
        (gateway.expect("gateway side"), relay.expect("relay side"))
    }

    /// A data stream with a one-byte request through it: the gateway's end
    /// and the relay's (the relay's control stream taken first).
    async fn requested(gateway: &Tunnel, relay: &Tunnel) -> (TunnelStream, TunnelStream, TunnelStream) {
        let ctrl = relay.open_stream().await.expect("control");
        let mut s = gateway.open_stream().await.expect("open");
        s.write_all(b"?").await.unwrap();
        let mut r = relay.accept_stream().await.expect("accept").expect("a stream");
        let mut request = [0u8; 1];
        r.read_exact(&mut request).await.unwrap();
        (ctrl, s, r)
    }

    #[tokio::test]
    async fn the_relay_control_stream_is_the_one_the_gateway_accepts() {
        let (gateway, relay) = pair().await;
        let mut relay_ctrl = relay.open_stream().await.expect("control");
        let mut gateway_ctrl = gateway.accept_stream().await.expect("accept").expect("control");
        relay_ctrl.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        gateway_ctrl.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        gateway_ctrl.write_all(b"welcome").await.unwrap();
        gateway_ctrl.shutdown().await.unwrap();
        let mut got = Vec::new();
        relay_ctrl.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"welcome");
        // Nothing else from the relay: it opens no second stream.
        assert!(relay.open_stream().await.is_err());
        gateway.close("done");
        let more = tokio::time::timeout(Duration::from_secs(5), gateway.accept_stream()).await;
        assert!(matches!(more, Ok(Ok(None))), "accept ends with the tunnel");
    }

    /// The gateway opens a thousand streams at once (the yamux fallback
    /// stopped at 64) and each carries its own bytes both ways.
    #[tokio::test]
    async fn a_thousand_streams_at_once() {
        let (gateway, relay) = pair().await;
        let _ctrl = relay.open_stream().await.expect("control");
        let echo = tokio::spawn(async move {
            while let Ok(Some(mut s)) = relay.accept_stream().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
        let mut opened = Vec::new();
        for i in 0..1000u32 {
            let mut s = gateway.open_stream().await.expect("open");
            s.write_all(&i.to_be_bytes()).await.unwrap();
            opened.push(s);
        }
        for (i, mut s) in opened.into_iter().enumerate() {
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, (i as u32).to_be_bytes());
        }
        echo.abort();
    }

    /// The relay answers on many streams while nobody reads the answers
    /// (slow clients): what piles up unread stays within each stream's
    /// window, and every stream gets its whole window (none is starved by
    /// the others). Virtual time: it only moves once every task is blocked.
    #[tokio::test(start_paused = true)]
    async fn answers_nobody_reads_buffer_at_most_a_stream_window_each() {
        let (gateway, relay) = pair().await;
        let _ctrl = relay.open_stream().await.expect("control");
        const STREAMS: usize = 64;
        let mut opened = Vec::new();
        for _ in 0..STREAMS {
            let mut s = gateway.open_stream().await.expect("open");
            s.write_all(b"?").await.expect("request");
            opened.push(s);
        }
        let written = Arc::new(AtomicUsize::new(0));
        let mut answers = tokio::task::JoinSet::new();
        for _ in 0..STREAMS {
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
        let windows = STREAMS * STREAM_RECEIVE_WINDOW as usize;
        // Each writer may also have one chunk queued with h2 past its window.
        assert!(
            total <= windows + STREAMS * (MAX_SEND_BUFFER + 16 * 1024),
            "{total} bytes buffered unread, more than {STREAMS} stream windows"
        );
        assert!(total >= windows, "only {total} bytes went out: a stream was starved");
        answers.abort_all();
        drop(opened);
    }

    /// A stream the gateway gives up on while reading (a client gone
    /// mid-answer) is reset at once: the relay's writes fail promptly, as
    /// on QUIC with `STOP_SENDING`.
    #[tokio::test]
    async fn a_stream_dropped_while_reading_stops_the_other_end_at_once() {
        let (gateway, relay) = pair().await;
        let (_ctrl, mut s, mut r) = requested(&gateway, &relay).await;
        r.write_all(b"part of an answer").await.unwrap();
        let mut part = [0u8; 4];
        s.read_exact(&mut part).await.unwrap();
        drop(s);
        let started = tokio::time::Instant::now();
        let chunk = vec![0u8; 64 * 1024];
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if r.write(&chunk).await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(failed.is_ok(), "writes to a dropped stream must fail");
        assert!(
            started.elapsed() < LINGER / 2,
            "the relay went on for {:?}",
            started.elapsed()
        );
    }

    /// What is written just before a drop still arrives, then the end of
    /// the stream: a gateway's `Reject` reaches the relay.
    #[tokio::test]
    async fn a_write_right_before_a_drop_still_arrives() {
        let (gateway, relay) = pair().await;
        let mut relay_ctrl = relay.open_stream().await.expect("control");
        let mut gateway_ctrl = gateway.accept_stream().await.expect("accept").expect("control");
        relay_ctrl.write_all(b"hello").await.unwrap();
        let mut hello = [0u8; 5];
        gateway_ctrl.read_exact(&mut hello).await.unwrap();
        gateway_ctrl.write_all(b"rejected").await.unwrap();
        drop(gateway_ctrl);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), relay_ctrl.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("a clean end");
        assert_eq!(got, b"rejected");
    }

    /// A client trickles an upload one byte at a time to a target that does
    /// not read: every byte is its own DATA frame. The relay takes frames
    /// from h2 as they come (h2 closes a connection that leaves too many
    /// small frames unread), so the tunnel stays up.
    #[tokio::test]
    async fn a_trickled_upload_to_a_target_that_does_not_read_keeps_the_tunnel() {
        let (gateway, relay) = pair().await;
        let _ctrl = relay.open_stream().await.expect("control");
        // A target that accepts and never reads, behind small socket buffers.
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(8).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener.into()).unwrap();
        let target = listener.local_addr().unwrap();
        let held = tokio::spawn(async move { listener.accept().await.map(|(tcp, _)| tcp) });
        let relay_side = relay.clone();
        let splice = tokio::spawn(async move {
            let stream = relay_side.accept_stream().await.expect("accept").expect("a stream");
            let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
            socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap();
            crate::splice::splice_tcp(stream, tcp).await
        });
        let mut s = gateway.open_stream().await.expect("open");
        // Well past h2's allowance for unread small frames (about 130 000
        // one-byte frames, see `DATA_FRAME_BUDGET`), within the stream's
        // window; each byte arrives on its own, as from a client over the
        // network.
        for i in 0..200_000 {
            if let Err(e) = s.write_all(b"x").await {
                panic!("write {i}: {e}; tunnel: {}", relay.closed().await);
            }
            tokio::task::yield_now().await;
        }
        // Another stream still works: the relay took it after every frame
        // before it, in order.
        let mut other = gateway.open_stream().await.expect("open");
        other.write_all(b"?").await.unwrap();
        let mut r = relay.accept_stream().await.expect("accept").expect("a stream");
        let mut got = [0u8; 1];
        r.read_exact(&mut got).await.unwrap();
        assert!(!gateway.is_closed() && !relay.is_closed(), "the tunnel was closed");
        splice.abort();
        held.abort();
    }

    /// A client stops reading a stream whose target keeps sending small
    /// messages: the unread frames stay with h2 up to the stream's window,
    /// and the tunnel stays up (with h2's default allowance it closed).
    #[tokio::test]
    async fn small_answers_nobody_reads_keep_the_tunnel() {
        let (gateway, relay) = pair().await;
        let (mut relay_ctrl, mut s, mut r) = requested(&gateway, &relay).await;
        let mut gateway_ctrl = gateway.accept_stream().await.expect("accept").expect("control");
        // 60 000 messages of 16 bytes: 940 KiB, within the stream window.
        for i in 0..60_000 {
            if let Err(e) = r.write_all(&[b'm'; 16]).await {
                panic!("message {i}: {e}; tunnel: {}", gateway.closed().await);
            }
            tokio::task::yield_now().await;
        }
        // A control frame after them all: the gateway has taken every
        // message frame before it, in order.
        relay_ctrl.write_all(b"!").await.unwrap();
        let mut mark = [0u8; 1];
        gateway_ctrl.read_exact(&mut mark).await.unwrap();
        assert!(!gateway.is_closed() && !relay.is_closed(), "the tunnel was closed");
        let mut got = vec![0u8; 16];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [b'm'; 16]);
    }
}
