//! Routehub's tunnel protocol.
//!
//! The sans-IO core — [`frame`] (encoding) and [`handshake`] (state
//! machines) — never touches a socket or a clock. [`io`] moves frames over
//! async streams, [`tunnel`] gives one `Tunnel` over QUIC ([`quic`]) or
//! TCP+TLS with HTTP/2 framing ([`tcp`]), and [`limits`] names every bound.

pub mod control;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod identity;
pub mod io;
pub mod limits;
pub mod names;
pub mod path;
pub mod quic;
pub mod reject;
pub mod routes;
pub mod splice;
pub mod sync;
pub mod tcp;
pub mod tls;
pub mod tunnel;
mod wire;

pub use error::{Error, Result};
pub use frame::{Frame, Hello, Refused, RoutesUpdate, StreamKind, UpdateKind, Welcome};
pub use identity::{PublicKey, RelayKey};
pub use names::HostPattern;
pub use reject::RejectCode;
pub use routes::{AuthMode, Cidr, RoutePolicy, RouteSpec};
pub use tunnel::{Transport, Tunnel, TunnelStream};
