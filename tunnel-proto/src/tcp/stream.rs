//! One tunnel stream: an h2 stream carrying raw bytes, read and written
//! as a byte pipe, ended on drop as a QUIC stream would be.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// How long a stream dropped right after a write is held so that what was
/// written still goes out (see [`H2Stream`]'s `Drop`).
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// One tunnel stream: an h2 stream carrying raw bytes.
pub(crate) struct H2Stream {
    /// `None` once handed on by [`H2Stream::into_halves`].
    pub(super) send: Option<SendStream<Bytes>>,
    recv: Recv,
    /// The rest of the last DATA frame, not yet read.
    unread: Bytes,
    /// Whether the last thing done was a write (decides what a drop does).
    wrote_last: bool,
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

enum Recv {
    /// Opened by the gateway: the relay's answering headers are not in yet.
    Waiting(h2::client::ResponseFuture),
    Open(RecvStream),
    /// Handed on by [`H2Stream::into_halves`].
    Taken,
}

impl H2Stream {
    pub(super) fn accepted(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send: Some(send),
            recv: Recv::Open(recv),
            unread: Bytes::new(),
            wrote_last: false,
            permit: None,
        }
    }

    /// The receiving half, once the peer's headers are in.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut RecvStream>> {
        if let Recv::Waiting(response) = &mut self.recv {
            let response = ready!(Pin::new(response).poll(cx)).map_err(to_io)?;
            self.recv = Recv::Open(response.into_body());
        }
        match &mut self.recv {
            Recv::Open(r) => Poll::Ready(Ok(r)),
            Recv::Waiting(_) | Recv::Taken => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn send(&mut self) -> io::Result<&mut SendStream<Bytes>> {
        self.send.as_mut().ok_or_else(|| io::ErrorKind::BrokenPipe.into())
    }

    /// Splits the stream for the relay's splice: the sending half and the
    /// receiving half (with any bytes already taken from it).
    pub(crate) async fn into_halves(mut self) -> io::Result<(SendStream<Bytes>, RecvStream, Bytes)> {
        poll_fn(|cx| self.poll_recv(cx).map_ok(|_| ())).await?;
        let send = self.send.take().ok_or(io::ErrorKind::BrokenPipe)?;
        match std::mem::replace(&mut self.recv, Recv::Taken) {
            Recv::Open(r) => Ok((send, r, std::mem::take(&mut self.unread))),
            Recv::Waiting(_) | Recv::Taken => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// Dropping a stream ends it as on QUIC. h2 resets a stream dropped while
/// the peer's side is open, which stops the peer at once (QUIC's
/// `STOP_SENDING`): right for a stream given up on while reading (an
/// abandoned response, an idle pooled connection). But a reset also
/// discards what is still queued, so a stream dropped right after a write
/// (a `Reject` on the control stream) first ends its side and is held for
/// [`LINGER`], or until the peer resets it, so the write still arrives.
impl Drop for H2Stream {
    fn drop(&mut self) {
        let Some(mut send) = self.send.take() else { return };
        if !self.wrote_last {
            return;
        }
        let _ = send.send_data(Bytes::new(), true);
        // The permit goes with the stream: h2 counts it until it is done.
        let permit = self.permit.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, poll_fn(|cx| send.poll_reset(cx))).await;
                drop(permit);
            });
        }
    }
}

/// An h2 error as an I/O error; a stream the peer reset reads as a reset
/// connection, as it would on QUIC.
pub(crate) fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    match e.reason() {
        Some(_) if e.is_reset() || e.is_remote() => io::Error::new(io::ErrorKind::ConnectionReset, e),
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            let recv = ready!(this.poll_recv(cx))?;
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => {
                    this.wrote_last = false;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        this.wrote_last = false;
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // Window back to the peer only for what was read: unread bytes
        // stay bounded by the stream's window.
        if let Recv::Open(r) = &mut this.recv {
            let _ = r.flow_control().release_capacity(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        this.wrote_last = true;
        let send = this.send()?;
        // Capacity is asked for only with bytes in hand, so an idle stream
        // holds none of the connection's window.
        send.reserve_capacity(buf.len());
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(n)) => {
                let n = n.min(buf.len());
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(to_io)?;
                Poll::Ready(Ok(n))
            }
            Some(Err(e)) => Poll::Ready(Err(to_io(e))),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes out what h2 holds.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.wrote_last = true;
        let send = this.send()?;
        // Ending twice (or after a reset) is not an error for a shutdown.
        let _ = send.send_data(Bytes::new(), true);
        send.reserve_capacity(0);
        Poll::Ready(Ok(()))
    }
}

/// The request that opens a stream: h2 wants a method and a path.
fn stream_request() -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("https://routehub/stream");
    request
}

/// Opens one stream on the gateway side.
pub(super) async fn open(opener: h2::client::SendRequest<Bytes>) -> Result<H2Stream, h2::Error> {
    let mut opener = opener.ready().await?;
    let (response, send) = opener.send_request(stream_request(), false)?;
    Ok(H2Stream {
        send: Some(send),
        recv: Recv::Waiting(response),
        unread: Bytes::new(),
        wrote_last: false,
        permit: None,
    })
}
