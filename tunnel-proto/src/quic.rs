//! The QUIC transport: quinn with bounded windows and stream counts (quinn's
//! connection receive window is unbounded by default) and keep-alive on.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};

use crate::error::{Error, Result};
use crate::limits::*;
use crate::tunnel::Tunnel;

/// Incoming connection attempts a gateway holds before accepting them.
pub const MAX_INCOMING: usize = 4096;

fn transport(max_incoming_bidi: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .datagram_receive_buffer_size(None);
    // IDLE_TIMEOUT is a constant well inside QUIC's varint range.
    if let Ok(idle) = IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// quinn server config for a gateway. The relay opens only the control
/// stream, so few incoming streams are allowed.
pub fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(2)));
    cfg.max_incoming(MAX_INCOMING)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(32 * 1024 * 1024);
    Ok(cfg)
}

/// quinn client config for a relay: the gateway opens one stream per request.
pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(MAX_STREAMS_PER_SESSION)));
    Ok(cfg)
}

/// A gateway's QUIC endpoint on an already bound UDP socket.
pub fn server_endpoint(socket: std::net::UdpSocket, cfg: quinn::ServerConfig) -> Result<Endpoint> {
    Ok(Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Connects to a gateway and returns the tunnel (TLS done, Routehub
/// handshake not yet). A fresh endpoint per attempt: after a network change
/// the OS picks the new source address.
pub async fn connect(addr: SocketAddr, server_name: &str, cfg: quinn::ClientConfig) -> Result<Tunnel> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = Endpoint::client(bind)?;
    endpoint.set_default_client_config(cfg);
    let conn = endpoint
        .connect(addr, server_name)
        .map_err(|e| Error::Quic(e.to_string()))?
        .await?;
    Ok(Tunnel::from_quic(conn))
}
