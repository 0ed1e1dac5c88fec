//! HTTP details both ends of a tunnel stream share: hop-by-hop headers and
//! splicing an upgraded connection (WebSocket) end to end.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (those above and any the `Connection` header
/// names) and returns the `Upgrade` value if this message asks to upgrade,
/// after putting `Connection: upgrade` + `Upgrade` back for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut upgrade_requested = false;
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(32)
        .filter_map(|token| {
            let token = token.trim();
            if token.eq_ignore_ascii_case("upgrade") {
                upgrade_requested = true;
            }
            HeaderName::from_bytes(token.as_bytes()).ok()
        })
        .collect();
    let upgrade = headers.remove(header::UPGRADE);
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    match upgrade {
        Some(protocol) if upgrade_requested => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
            Some(protocol)
        }
        _ => None,
    }
}

/// Waits for both sides of an upgrade, then copies bytes both ways until
/// either side closes. Returns bytes copied (a → b, b → a).
pub async fn splice(a: OnUpgrade, b: OnUpgrade) -> std::io::Result<(u64, u64)> {
    let (a, b) = tokio::try_join!(a, b).map_err(std::io::Error::other)?;
    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrade_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(strip_hop_by_hop(&mut h).unwrap(), "websocket");
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn upgrade_header_without_connection_token_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert!(h.get(header::UPGRADE).is_none());
    }
}
