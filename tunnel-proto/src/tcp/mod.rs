//! The fallback transport: TCP + TLS 1.3 + HTTP/2 framing, ALPN
//! `routehub/1`, on the gateway's HTTPS port, for networks that block UDP.
//!
//! HTTP/2 (the `h2` crate) is only the stream multiplexer here: each tunnel
//! stream is one h2 stream carrying raw bytes in DATA frames, with h2's
//! flow control. It gives the TCP fallback what QUIC has: a small window
//! per stream under one shared connection window, so thousands of streams
//! (requests, WebSockets) fit in the memory of one QUIC connection. (yamux
//! gives every stream at least 256 KiB of window, which held the fallback
//! to a few dozen concurrent streams for the same memory.)
//!
//! Roles follow HTTP/2's: the gateway is the h2 client and opens every
//! stream; the relay is the h2 server and accepts them. The relay's control
//! stream is therefore opened by the gateway as soon as the connection is
//! up: the gateway's first [`Tunnel::accept_stream`] returns it, and so
//! does the relay's only [`Tunnel::open_stream`]. Above this module nobody
//! knows the difference.
//!
//! The unauthenticated side of a new connection (the would-be relay) can
//! thus open nothing: an h2 server cannot start streams, and push is off.

pub(crate) mod conn;
mod connect;
pub(crate) mod stream;

pub use conn::OPEN_PERMITS;
pub use connect::{accept, connect, connect_over};
