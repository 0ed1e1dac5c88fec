//! Copies bytes both ways between a tunnel stream and a local TCP
//! connection: the relay's whole data path.
//!
//! No buffer is held while a direction waits: received chunks are quinn's
//! or h2's own (no copy), and bytes from TCP are read into a buffer on the
//! stack of one poll, then handed on in one exact-size chunk. An idle
//! spliced stream costs no heap buffer of its own, on either transport.
//!
//! How a splice ends: the target's reply direction decides. When the target
//! closes, the stream is finished; when the target fails mid-reply, the
//! stream is reset, so the gateway never takes a cut reply for a whole one.
//! When the gateway stops reading (QUIC `STOP_SENDING`, an h2 reset) the
//! splice ends at once. When the gateway's side ends (it let go of the connection; HTTP/1.1
//! never half-closes a live one), the target gets a half-close and
//! [`TUNNEL_EOF_GRACE`] to finish, no more. A failed write to the target (it
//! answered early and closed) stops the request direction only, so its
//! early answer still reaches the gateway.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::tcp::stream::to_io;
use crate::tunnel::{Halves, TunnelStream};

/// Largest read from the local side at once. On the stack, never held
/// across an await.
const READ_CHUNK: usize = 32 * 1024;
/// After the gateway's side of a stream ended, how long the target may
/// still take to finish its reply.
pub const TUNNEL_EOF_GRACE: Duration = Duration::from_secs(5);
/// QUIC error code of a stream whose target failed mid-reply (on the TCP
/// fallback, h2's `INTERNAL_ERROR`).
const TARGET_FAILED: u32 = 1;

/// Splices `stream` and `tcp` until the target's reply direction is done
/// (see the module docs). Returns bytes copied (tunnel → tcp, tcp → tunnel).
pub async fn splice_tcp(stream: TunnelStream, tcp: TcpStream) -> io::Result<(u64, u64)> {
    let (tcp_read, tcp_write) = tcp.into_split();
    match stream.into_halves().await? {
        Halves::Quic { send, recv } => drive(quic_to_tcp(recv, tcp_write), tcp_to_quic(tcp_read, send)).await,
        Halves::H2 { send, recv, unread } => drive(h2_to_tcp(recv, unread, tcp_write), tcp_to_h2(tcp_read, send)).await,
    }
}

/// Runs both directions; ends with `down` (the reply), or
/// [`TUNNEL_EOF_GRACE`] after `up` ended.
async fn drive(
    up: impl Future<Output = io::Result<u64>>,
    down: impl Future<Output = io::Result<u64>>,
) -> io::Result<(u64, u64)> {
    tokio::pin!(up, down);
    let mut sent = None;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            r = &mut up, if sent.is_none() => {
                // Ended or failed: either way nothing more goes to the target.
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "request direction ended with an error");
                }
                sent = Some(r.unwrap_or(0));
                grace.as_mut().reset(tokio::time::Instant::now() + TUNNEL_EOF_GRACE);
            }
            r = &mut down => return Ok((sent.unwrap_or(0), r?)),
            _ = &mut grace => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "target did not finish after the gateway let go"));
            }
        }
    }
}

async fn quic_to_tcp(mut recv: quinn::RecvStream, mut tcp: OwnedWriteHalf) -> io::Result<u64> {
    let mut copied = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.map_err(io::Error::from)? {
        if let Err(e) = tcp.write_all(&chunk.bytes).await {
            // The gateway need not send the rest.
            let _ = recv.stop(TARGET_FAILED.into());
            return Err(e);
        }
        copied += chunk.bytes.len() as u64;
    }
    tcp.shutdown().await?;
    Ok(copied)
}

async fn tcp_to_quic(mut tcp: OwnedReadHalf, mut send: quinn::SendStream) -> io::Result<u64> {
    let mut copied = 0u64;
    loop {
        let read = tokio::select! {
            r = std::future::poll_fn(|cx| read_chunk(&mut tcp, cx)) => r,
            // The gateway stopped reading: nobody wants the rest.
            _ = send.stopped() => return Ok(copied),
        };
        let chunk = match read {
            Ok(chunk) => chunk,
            Err(e) => {
                // Not a clean end: a reset tells the gateway the reply is cut.
                let _ = send.reset(TARGET_FAILED.into());
                return Err(e);
            }
        };
        if chunk.is_empty() {
            break;
        }
        copied += chunk.len() as u64;
        send.write_chunk(chunk).await.map_err(io::Error::from)?;
    }
    // Nothing left to send: FIN. Errors mean the peer is gone already.
    let _ = send.finish();
    Ok(copied)
}

/// One read from `tcp` as an exact-size chunk (empty at end of stream).
/// The buffer is on this poll's stack, so a waiting read holds no memory,
/// and tokio's read marks the socket drained after a short read (no extra
/// `recv` just to see `EWOULDBLOCK`).
fn read_chunk(tcp: &mut OwnedReadHalf, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut buf);
    std::task::ready!(Pin::new(tcp).poll_read(cx, &mut read))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
}

/// Frames are taken from h2 as they come, also while a write to the target
/// waits: h2 keeps a record per frame it holds, and enough small frames
/// left with it close the whole tunnel (its guard against floods of tiny
/// DATA frames: a client trickling an upload to a target that does not
/// read would do it). Frames that arrive while a write waits are joined in
/// one buffer; the window is released only as bytes reach the target, so
/// that buffer stays within the stream's window.
async fn h2_to_tcp(mut recv: RecvStream, unread: Bytes, mut tcp: OwnedWriteHalf) -> io::Result<u64> {
    let mut copied = 0u64;
    // Being written to the target (a frame as h2 gave it, no copy)...
    let mut current = unread;
    // ...and what came meanwhile.
    let mut backlog = BytesMut::new();
    let mut ended = false;
    loop {
        if current.is_empty() {
            if !backlog.is_empty() {
                current = backlog.split().freeze();
            } else if ended {
                break;
            } else {
                match recv.data().await {
                    Some(data) => current = data.map_err(to_io)?,
                    None => ended = true,
                }
                continue;
            }
        }
        tokio::select! {
            written = tcp.write(&current) => {
                let n = match written {
                    Ok(n) if n > 0 => n,
                    failed => {
                        // Nothing more goes to the target: its window is
                        // the connection's again.
                        let _ = recv.flow_control().release_capacity(current.len() + backlog.len());
                        return Err(failed.err().unwrap_or_else(|| io::ErrorKind::WriteZero.into()));
                    }
                };
                let _ = recv.flow_control().release_capacity(n);
                current.advance(n);
                copied += n as u64;
            }
            data = recv.data(), if !ended => match data {
                Some(data) => backlog.extend_from_slice(&data.map_err(to_io)?),
                None => ended = true,
            },
        }
    }
    tcp.shutdown().await?;
    Ok(copied)
}

async fn tcp_to_h2(mut tcp: OwnedReadHalf, mut send: SendStream<Bytes>) -> io::Result<u64> {
    let mut copied = 0u64;
    loop {
        let read = tokio::select! {
            r = std::future::poll_fn(|cx| read_chunk(&mut tcp, cx)) => r,
            // The gateway reset the stream: nobody wants the rest.
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return Ok(copied),
        };
        let mut chunk = match read {
            Ok(chunk) => chunk,
            Err(e) => {
                // Not a clean end: a reset tells the gateway the reply is cut.
                send.send_reset(Reason::INTERNAL_ERROR);
                return Err(e);
            }
        };
        if chunk.is_empty() {
            break;
        }
        copied += chunk.len() as u64;
        // Window is asked for only with bytes in hand (an idle stream holds
        // none of the connection's), and the chunk goes out as it comes.
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or(io::ErrorKind::BrokenPipe)?
                .map_err(to_io)?;
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(to_io)?;
        }
    }
    // Nothing left to send: end of stream. Errors mean the peer is gone.
    let _ = send.send_data(Bytes::new(), true);
    Ok(copied)
}

/// Reads the rest of a direction and drops it (used when a stream is
/// answered without a local connection).
pub async fn discard<R: AsyncRead + Unpin>(r: &mut R, limit: u64) -> io::Result<u64> {
    let mut sink = tokio::io::sink();
    tokio::io::copy(&mut r.take(limit), &mut sink).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_target_gets_the_grace_after_the_gateway_lets_go_and_no_more() {
        let started = tokio::time::Instant::now();
        let r = drive(async { Ok(10) }, std::future::pending()).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TUNNEL_EOF_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_answer_still_arrives_after_the_request_could_not_be_written() {
        let up = async { Err(io::Error::new(io::ErrorKind::BrokenPipe, "target closed")) };
        let down = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(413)
        };
        assert_eq!(drive(up, down).await.unwrap(), (0, 413));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reply_ending_ends_the_splice_at_once() {
        let r = drive(std::future::pending(), async { Ok(7) }).await;
        assert_eq!(r.unwrap(), (0, 7));
    }
}
