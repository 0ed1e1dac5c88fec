//! What the gateway forwards of a client's request head: reserved and
//! spoofable headers removed, upgrades only to protocols the route allows,
//! and a bound on the decoded size of every request and connection.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use tunnel_proto::RoutePolicy;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Who the gateway authenticated, for the local service.
pub const X_ROUTEHUB_USER: HeaderName = HeaderName::from_static("x-routehub-user");
pub const X_ROUTEHUB_ROLES: HeaderName = HeaderName::from_static("x-routehub-roles");
/// Which tunnel transport carried the request, for the local service.
pub const X_ROUTEHUB_TRANSPORT: HeaderName = HeaderName::from_static("x-routehub-transport");

/// Headers a backend may trust because only the gateway sets them (the
/// identity headers, and the client address and forwarding headers), or
/// that claim a client address: never taken from a client.
const RESERVED: [&str; 17] = [
    "x-routehub-user",
    "x-routehub-roles",
    "x-routehub-transport",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-original-forwarded-for",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// Default bound on a request's headers as forwarded (names, values and
/// four bytes of framing per field).
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;
/// Default bound on the number of request header fields forwarded.
pub const DEFAULT_MAX_REQUEST_HEADER_FIELDS: usize = 128;
/// What one h2 request may decode to beyond the bytes it took on the wire:
/// HPACK's dynamic table (4 096 bytes unless the gateway advertises more,
/// and it does not) plus static-table names and values. A client that
/// references table entries again and again to make small frames decode to
/// large heads goes past this and loses its connection.
pub const HPACK_ALLOWANCE_PER_REQUEST: u64 = 4096 + 1024;

/// Whether `name` is reserved, also when spelled with `_` for `-` (some
/// servers and frameworks read `X_Routehub_User` as `X-Routehub-User`).
fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| {
        r.len() == name.len()
            && r.bytes()
                .zip(name.bytes())
                .all(|(r, n)| r == n.to_ascii_lowercase() || (r == b'-' && n == b'_'))
    })
}

/// Removes every reserved header (see [`RESERVED`]) in any spelling.
pub(crate) fn strip_reserved(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_reserved(n.as_str())).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Keeps only the `Upgrade` protocols the route allows (`Upgrade` and
/// `Connection: upgrade` were put back by `strip_hop_by_hop` when the
/// client asked to upgrade). Returns the protocols kept, if any: without
/// them the request goes on as a plain request.
pub(crate) fn allowed_upgrade(headers: &mut HeaderMap, policy: Option<&RoutePolicy>) -> Option<HeaderValue> {
    let asked = headers.get(header::UPGRADE)?.to_str().unwrap_or("");
    let kept: Vec<&str> = asked
        .split(',')
        .map(str::trim)
        .filter(|p| tunnel_proto::routes::upgrade_allowed(policy, p))
        .collect();
    let kept = (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join(", ")).ok())
        .flatten();
    match kept {
        Some(v) => {
            headers.insert(header::UPGRADE, v.clone());
            Some(v)
        }
        None => {
            headers.remove(header::UPGRADE);
            headers.remove(header::CONNECTION);
            None
        }
    }
}

/// Whether a relay's `101` switched to a protocol the request asked for.
pub(crate) fn upgrade_matches(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let (Ok(asked), Some(Ok(answered))) = (asked.to_str(), answered.map(|v| v.to_str())) else {
        return false;
    };
    let name = |p: &str| p.trim().split('/').next().unwrap_or("").to_ascii_lowercase();
    let answered = name(answered);
    !answered.is_empty() && asked.split(',').any(|p| name(p) == answered)
}

/// Bytes and fields a request head takes when forwarded as HTTP/1.1.
pub(crate) fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> (usize, usize) {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 12;
    let fields = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    (line + fields, headers.len())
}

/// The bytes one client connection sent and what its requests decoded to,
/// to catch HPACK amplification (see [`HPACK_ALLOWANCE_PER_REQUEST`]).
#[derive(Debug, Default)]
pub(crate) struct HeadBudget {
    /// Plaintext bytes read from the client (TLS records decrypted).
    pub wire: AtomicU64,
    decoded: AtomicU64,
    requests: AtomicU64,
    /// Cancelled when the connection decoded far more than it sent: its
    /// connection task closes it, and no later request of it is admitted.
    pub exceeded: CancellationToken,
}

impl HeadBudget {
    /// Accounts one request head of `size` bytes; false (and the
    /// connection marked for closing) if the connection's heads decoded to
    /// more than its bytes on the wire could hold.
    pub fn admit(&self, size: usize) -> bool {
        if self.exceeded.is_cancelled() {
            return false;
        }
        let decoded = self.decoded.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        let requests = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let allowed = self
            .wire
            .load(Ordering::Relaxed)
            .saturating_add(requests.saturating_mul(HPACK_ALLOWANCE_PER_REQUEST));
        if decoded > allowed {
            self.exceeded.cancel();
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_go_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-routehub-user",
            "X_Routehub_User",
            "x_routehub-roles",
            "x_forwarded_for",
            "X-Real-IP",
            "true_client_ip",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x-routehub-userx", HeaderValue::from_static("kept"));
        h.insert("x_custom", HeaderValue::from_static("kept"));
        strip_reserved(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key("x-routehub-userx") && h.contains_key("x_custom"));
    }

    #[test]
    fn only_allowed_upgrades_stay() {
        let upgrade = |value: &'static str, policy: Option<&RoutePolicy>| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static(value));
            let kept = allowed_upgrade(&mut h, policy);
            (kept, h)
        };
        let (kept, h) = upgrade("websocket", None);
        assert_eq!(kept.unwrap(), "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        let (kept, h) = upgrade("h2c", None);
        assert!(kept.is_none());
        assert!(h.get(header::UPGRADE).is_none() && h.get(header::CONNECTION).is_none());
        let (kept, _) = upgrade("h2c, websocket", None);
        assert_eq!(kept.unwrap(), "websocket");
        let none = RoutePolicy {
            upgrades: Some(vec![]),
            ..Default::default()
        };
        assert!(upgrade("websocket", Some(&none)).0.is_none());
    }

    #[test]
    fn a_switch_must_be_to_a_protocol_asked_for() {
        let asked = HeaderValue::from_static("websocket");
        assert!(upgrade_matches(&asked, Some(&HeaderValue::from_static("WebSocket"))));
        assert!(!upgrade_matches(&asked, Some(&HeaderValue::from_static("h2c"))));
        assert!(!upgrade_matches(&asked, None));
    }

    #[test]
    fn heads_that_decode_to_far_more_than_their_wire_bytes_close_the_connection() {
        let budget = HeadBudget::default();
        // A browser: the first request carries its 4 KB cookie literally,
        // later ones reference it from the dynamic table (~50 bytes each).
        budget.wire.store(4500, Ordering::Relaxed);
        for _ in 0..1000 {
            assert!(budget.admit(4500));
            budget.wire.fetch_add(50, Ordering::Relaxed);
        }
        assert!(!budget.exceeded.is_cancelled());
        // An attacker: one 3 900-byte entry referenced four times per
        // 20-byte HEADERS frame.
        let attack = HeadBudget::default();
        attack.wire.store(4000, Ordering::Relaxed);
        let mut admitted = 0;
        for _ in 0..10 {
            if !attack.admit(4 * 3900) {
                break;
            }
            admitted += 1;
            attack.wire.fetch_add(20, Ordering::Relaxed);
        }
        assert!(admitted <= 1, "{admitted}");
        assert!(attack.exceeded.is_cancelled());
    }
}
