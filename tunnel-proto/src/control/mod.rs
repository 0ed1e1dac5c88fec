//! The control session that follows the handshake, as two sans-IO state
//! machines: [`RelayControl`] on the relay, [`GatewayControl`] on the
//! gateway.
//!
//! ```text
//! relay                                          gateway
//!   Routes {full set | delta, version, checksum} ─▶
//!                                                ◀─ RoutesAck {version, in sync?, refused}
//!   Health {unhealthy route ids}                 ─▶
//!   Ping {seq, rtt, version, checksum}  (every heartbeat)
//!                                                ◀─ Pong {seq}  (+ RoutesAck {in sync: no} on drift)
//!   GoAway {reason}                              ◀▶ GoAway {reason}
//! ```
//!
//! Like quinn-proto's `Connection`, a machine never touches a socket or
//! reads a clock: the driver feeds it frames with
//! `handle_frame(frame, now)` and wakes it at `poll_timeout()` with
//! `handle_timeout(now)`, then writes what `poll_transmit()` gives and acts
//! on what `poll_event()` gives. So a test drives both machines against
//! each other in virtual time, drops or delays frames at will, and runs a
//! 10-minute session in microseconds.
//!
//! Liveness: each side declares the session dead after
//! [`dead_after`](crate::limits::dead_after) (2.5 heartbeats) without a
//! frame from the other. A GoAway does not end a session: both sides go on
//! heartbeating until the gateway has no stream in flight on it (then it
//! closes the tunnel) or a drain deadline passes, so a long request
//! finishes whoever is draining.

mod gateway;
mod relay;
#[cfg(test)]
mod tests;

pub use gateway::{GatewayControl, GatewayEvent};
pub use relay::{MAX_HEALTH_IDS, RelayControl, RelayEvent, suspect_after};
