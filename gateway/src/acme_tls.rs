//! TLS-ALPN-01 (RFC 8737): a ClientHello offering ALPN `acme-tls/1` gets
//! the challenge certificate of a pending order for its SNI, and the
//! connection closes after the handshake. Without a pending challenge for
//! that name the handshake is refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::State;

/// Completes the handshake within `handshake_timeout`, then closes.
pub(crate) async fn answer(
    start: tokio_rustls::StartHandshake<TcpStream>,
    sni: Option<&str>,
    state: &State,
    handshake_timeout: Duration,
) -> std::io::Result<()> {
    let cert = sni.and_then(|name| state.certs.challenges()?.tls_alpn01(name));
    let Some(cert) = cert else {
        return Err(std::io::Error::other(format!(
            "acme-tls/1 handshake for {sni:?} with no pending challenge"
        )));
    };
    let config = certs::challenge::tls_alpn01_server_config(cert).map_err(std::io::Error::other)?;
    let mut tls = timeout(handshake_timeout, start.into_stream(Arc::new(config)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "acme-tls/1 handshake timed out"))??;
    tracing::debug!(name = ?sni, "answered a TLS-ALPN-01 challenge");
    // The validator only needs the handshake; close cleanly.
    let _ = tls.shutdown().await;
    Ok(())
}
