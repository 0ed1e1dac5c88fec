//! HTTP details both ends of a tunnel stream share: hop-by-hop headers,
//! the relay's own refusals, and splicing an upgraded connection
//! (WebSocket) end to end.

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

/// Header naming why a response came from Routehub itself, not a target.
pub const X_ROUTEHUB_ERROR: HeaderName = HeaderName::from_static("x-routehub-error");

/// Why a relay answered a stream itself, with a 502: the request provably
/// never reached a target, so the gateway may hand a safe one to another
/// relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The stream named a route the relay no longer has.
    RouteGone,
    /// The route's target refused or did not take the connection.
    TargetUnreachable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::RouteGone => "route_gone",
            Refusal::TargetUnreachable => "target_unreachable",
        }
    }

    /// The refusal a relay's response carries, if it is one. (A target
    /// could send the same; only safe requests are retried on it, so that
    /// at worst asks one again.)
    pub fn of(status: http::StatusCode, headers: &HeaderMap) -> Option<Refusal> {
        if status != http::StatusCode::BAD_GATEWAY {
            return None;
        }
        match headers.get(X_ROUTEHUB_ERROR)?.as_bytes() {
            b"route_gone" => Some(Refusal::RouteGone),
            b"target_unreachable" => Some(Refusal::TargetUnreachable),
            _ => None,
        }
    }

    /// A complete HTTP/1.1 502 response that closes the connection. Its
    /// `message` reaches the public client: it must not name internal
    /// addresses (the relay's log has those).
    pub fn response(self, message: &str) -> Vec<u8> {
        let body = format!("{message}\n");
        format!(
            "HTTP/1.1 502 Bad Gateway\r\n\
             content-type: text/plain; charset=utf-8\r\n\
             {X_ROUTEHUB_ERROR}: {}\r\n\
             connection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            self.as_str(),
            body.len()
        )
        .into_bytes()
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
    fn a_refusal_is_one_well_formed_response_that_reads_back() {
        for refusal in [Refusal::RouteGone, Refusal::TargetUnreachable] {
            let bytes = refusal.response("route app.test is unreachable");
            let text = String::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some("HTTP/1.1 502 Bad Gateway"));
            let mut map = HeaderMap::new();
            for line in lines {
                let (name, value) = line.split_once(": ").unwrap();
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            assert_eq!(map[header::CONNECTION], "close");
            let len: usize = map[header::CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
            assert_eq!(len, body.len());
            assert_eq!(Refusal::of(http::StatusCode::BAD_GATEWAY, &map), Some(refusal));
            assert_eq!(Refusal::of(http::StatusCode::OK, &map), None);
        }
    }

    #[test]
    fn upgrade_header_without_connection_token_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert!(h.get(header::UPGRADE).is_none());
    }
}
