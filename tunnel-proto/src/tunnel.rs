//! One `Tunnel` whatever carries it: the rest of Routehub opens and accepts
//! streams and never asks which transport is underneath.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};
use crate::handshake::{EXPORTER_LABEL, Exporter};

/// Which transport carries a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Quic,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A multiplexed, authenticated connection between a relay and a gateway.
/// Cheap to clone; all clones are the same connection.
#[derive(Clone)]
pub struct Tunnel {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Quic(quinn::Connection),
    Tcp(std::sync::Arc<crate::tcp::conn::H2Tunnel>),
}

impl Tunnel {
    pub fn from_quic(conn: quinn::Connection) -> Self {
        Tunnel {
            inner: Inner::Quic(conn),
        }
    }

    pub(crate) fn from_tcp(t: std::sync::Arc<crate::tcp::conn::H2Tunnel>) -> Self {
        Tunnel { inner: Inner::Tcp(t) }
    }

    pub fn transport(&self) -> Transport {
        match &self.inner {
            Inner::Quic(_) => Transport::Quic,
            Inner::Tcp(_) => Transport::Tcp,
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(c) => c.remote_address(),
            Inner::Tcp(t) => t.remote_address(),
        }
    }

    /// Keying material that binds the handshake proof to this connection.
    pub fn exporter(&self) -> Result<Exporter> {
        match &self.inner {
            Inner::Quic(c) => {
                let mut out = [0u8; 32];
                c.export_keying_material(&mut out, EXPORTER_LABEL, b"")
                    .map_err(|_| Error::Quic("TLS exporter unavailable".into()))?;
                Ok(out)
            }
            Inner::Tcp(t) => Ok(t.exporter()),
        }
    }

    /// Opens a new bidirectional stream. Waits while the peer's stream limit
    /// is reached; callers bound the wait.
    pub async fn open_stream(&self) -> Result<TunnelStream> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.open_bi().await?;
                Ok(TunnelStream {
                    inner: StreamInner::Quic { send, recv },
                })
            }
            Inner::Tcp(t) => Ok(TunnelStream {
                inner: StreamInner::Tcp(t.open_stream().await?),
            }),
        }
    }

    /// Accepts the next stream the peer opened; `Ok(None)` once the tunnel
    /// was closed by us or gracefully by the peer.
    pub async fn accept_stream(&self) -> Result<Option<TunnelStream>> {
        match &self.inner {
            Inner::Quic(c) => match c.accept_bi().await {
                Ok((send, recv)) => Ok(Some(TunnelStream {
                    inner: StreamInner::Quic { send, recv },
                })),
                Err(quinn::ConnectionError::LocallyClosed | quinn::ConnectionError::ApplicationClosed(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Inner::Tcp(t) => Ok(t.accept_stream().await.map(|s| TunnelStream {
                inner: StreamInner::Tcp(s),
            })),
        }
    }

    /// Whether opens are waiting for a stream right now (the transport's
    /// stream limit is reached): a stream kept idle should be let go.
    /// QUIC's limit is far above what is kept idle, so it never says so.
    pub fn streams_wanted(&self) -> bool {
        match &self.inner {
            Inner::Quic(_) => false,
            Inner::Tcp(t) => t.waiting() > 0,
        }
    }

    /// Whether opening a stream would wait for one to close first.
    pub fn at_stream_limit(&self) -> bool {
        match &self.inner {
            Inner::Quic(_) => false,
            Inner::Tcp(t) => t.at_limit(),
        }
    }

    /// Closes the tunnel at once; open streams fail.
    pub fn close(&self, reason: &str) {
        match &self.inner {
            Inner::Quic(c) => c.close(0u32.into(), reason.as_bytes()),
            Inner::Tcp(t) => t.close(),
        }
    }

    /// Resolves when the tunnel is closed, by either side or by timeout.
    pub async fn closed(&self) -> Error {
        match &self.inner {
            Inner::Quic(c) => c.closed().await.into(),
            Inner::Tcp(t) => t.closed().await,
        }
    }

    /// Whether the tunnel is already closed.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Quic(c) => c.close_reason().is_some(),
            Inner::Tcp(t) => t.is_closed(),
        }
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("transport", &self.transport())
            .field("remote", &self.remote_address())
            .finish()
    }
}

/// One bidirectional stream of a [`Tunnel`]: a byte pipe with tokio's
/// `AsyncRead`/`AsyncWrite`. Shutting down the write half ends the peer's
/// reads; dropping the stream finishes it.
pub struct TunnelStream {
    inner: StreamInner,
}

enum StreamInner {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    Tcp(crate::tcp::stream::H2Stream),
}

/// A stream split into its two directions, each transport's halves as
/// they are: the relay's splice copies from and to them without a buffer
/// of its own.
pub(crate) enum Halves {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    /// `unread`: bytes already taken from `recv` but not yet read.
    H2 {
        send: h2::SendStream<bytes::Bytes>,
        recv: h2::RecvStream,
        unread: bytes::Bytes,
    },
}

impl TunnelStream {
    /// Splits the stream (on h2, once the peer's headers are in).
    pub(crate) async fn into_halves(self) -> io::Result<Halves> {
        match self.inner {
            StreamInner::Quic { send, recv } => Ok(Halves::Quic { send, recv }),
            StreamInner::Tcp(stream) => {
                let (send, recv, unread) = stream.into_halves().await?;
                Ok(Halves::H2 { send, recv, unread })
            }
        }
    }

    /// Sends this stream's data ahead of every other stream's: for the
    /// control stream, whose heartbeats must never wait behind bulk data.
    /// On the TCP fallback h2 sends one frame of each stream in turn
    /// already, so there it changes nothing.
    pub fn prioritize(&self) {
        if let StreamInner::Quic { send, .. } = &self.inner {
            // Only fails on a stream already closed, which then carries nothing.
            let _ = send.set_priority(1);
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
            StreamInner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => Pin::new(send).poll_write(cx, buf).map_err(io::Error::from),
            StreamInner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => Pin::new(send).poll_flush(cx),
            StreamInner::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => Pin::new(send).poll_shutdown(cx),
            StreamInner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
