//! Every limit of the tunnel protocol, in one place. Each has a test.

use std::time::Duration;

/// ALPN protocol id of a Routehub tunnel, on QUIC and on TCP+TLS.
pub const ALPN: &[u8] = b"routehub/1";
/// Version byte at the start of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Protocol version announced in `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Frame header: version (1) + type (1) + payload length (4, big endian).
pub const FRAME_HEADER_LEN: usize = 6;
/// Largest frame payload either side accepts.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Largest hostname (RFC 1035).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Most hostnames one relay session may request.
pub const MAX_HOSTNAMES: usize = 1024;
/// Longest free-text field (reasons, messages).
pub const MAX_TEXT_LEN: usize = 1024;
/// Time allowed from connection to `Welcome`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default heartbeat: the relay pings this often.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Bounds on the heartbeat a gateway may ask for.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
/// A session with no control frame for this many heartbeats is dead.
/// 2.5 keeps detection under 3 s at the default, and tolerates one lost ping.
pub fn dead_after(heartbeat: Duration) -> Duration {
    heartbeat * 5 / 2
}
/// Concurrent data streams per session (one per in-flight request), on
/// QUIC and on the TCP fallback alike.
pub const MAX_STREAMS_PER_SESSION: u32 = 2048;
/// Flow control, on QUIC and on the TCP fallback: each stream may have
/// this much unread data in flight toward a reader.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// The whole connection's receive window: enough for every stream's window
/// at once, so streams whose readers stall (clients that stop reading a
/// download) can never use up the window the others, and the control
/// stream's heartbeats, need. Memory stays bounded per stream (1 MiB) and
/// by the stream limit. HTTP/2 windows stop at 2^31 - 1 bytes.
pub const CONNECTION_RECEIVE_WINDOW: u32 = {
    let all = STREAM_RECEIVE_WINDOW as u64 * MAX_STREAMS_PER_SESSION as u64;
    if all > H2_MAX_WINDOW as u64 {
        H2_MAX_WINDOW
    } else {
        all as u32
    }
};
/// Largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
pub const H2_MAX_WINDOW: u32 = (1 << 31) - 1;
/// QUIC: bytes written and not yet acknowledged, over all streams. At
/// least every stream's window and then some: writes are then bounded by
/// each stream's flow control alone, and bulk data on many streams (or a
/// slow uplink holding it unsent) never leaves the control stream, whose
/// frames go out first, waiting to be admitted. The bound on memory is
/// the same as the receiver's: a window per stream.
pub const SEND_WINDOW: u64 = CONNECTION_RECEIVE_WINDOW as u64 + 4 * STREAM_RECEIVE_WINDOW as u64;
/// QUIC keep-alive, well below the idle timeout so NAT bindings stay open.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// QUIC idle timeout: a backstop; the heartbeat detects death sooner.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest DATA frame on the TCP fallback (h2's default is 16 KiB):
/// fewer frames per byte of bulk transfer.
pub const TCP_MAX_FRAME: u32 = 64 * 1024;
/// TCP keep-alive probes on the fallback transport, so dead peers and
/// forgotten NAT mappings surface even without traffic.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// Time for one transport (QUIC, or TCP+TLS) to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the relay gives QUIC before also trying TCP (Happy Eyeballs).
pub const RACE_DELAY: Duration = Duration::from_millis(300);
/// Sessions one relay key may hold on one gateway (a relay keeps one per
/// gateway; a few relays may share a key).
pub const MAX_SESSIONS_PER_KEY: usize = 32;
/// Most routes one relay session may announce.
pub const MAX_ROUTES_PER_SESSION: usize = 10_000;
/// Time to open a data stream (waits while the stream limit is reached).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the stream header to arrive on a new data stream.
pub const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP request or response head carried over a stream.
pub const MAX_HTTP_HEAD: usize = 64 * 1024;

// Checked at compile time: windows nest, and keep-alive beats the idle timeout.
const _: () = assert!(STREAM_RECEIVE_WINDOW <= CONNECTION_RECEIVE_WINDOW);
// Every stream but one (at most) can hold its whole window unread.
const _: () =
    assert!(CONNECTION_RECEIVE_WINDOW as u64 >= (MAX_STREAMS_PER_SESSION as u64 - 1) * STREAM_RECEIVE_WINDOW as u64);
// Streams whose windows are full leave room for the control stream.
const _: () = assert!(SEND_WINDOW > CONNECTION_RECEIVE_WINDOW as u64);
const _: () = assert!(KEEP_ALIVE_INTERVAL.as_millis() * 3 <= IDLE_TIMEOUT.as_millis());
// h2 accepts frames of 16 KiB to 16 MiB.
const _: () = assert!(TCP_MAX_FRAME >= 16 * 1024 && TCP_MAX_FRAME < 16 * 1024 * 1024);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_tolerates_one_lost_ping_and_stays_under_three_seconds() {
        assert!(dead_after(DEFAULT_HEARTBEAT) > DEFAULT_HEARTBEAT * 2);
        assert!(dead_after(DEFAULT_HEARTBEAT) < Duration::from_secs(3));
    }

    #[test]
    fn heartbeat_detects_death_before_the_quic_idle_timeout() {
        assert!(dead_after(DEFAULT_HEARTBEAT) < IDLE_TIMEOUT);
    }
}
