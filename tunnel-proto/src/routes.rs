//! The route set a relay announces to its gateways.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::names::HostPattern;
use crate::path::normalize_path_prefix;

/// One route as the gateway sees it: which requests it matches. Where they
/// go (the target URL) stays on the relay; the gateway names the route by
/// `id` when it opens a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub id: u64,
    /// Exact hostname or `*.suffix`.
    pub host: String,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api`
    /// and `/api/x`, not `/apix`).
    #[serde(default = "root")]
    pub path_prefix: String,
    /// Among equal prefixes, higher wins.
    #[serde(default)]
    pub priority: i32,
    /// Who may use the route; absent means public. Left out of the JSON
    /// when absent, so routes without one keep their checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RoutePolicy>,
}

/// How the gateway authenticates requests to a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone (subject to `ip_allow`).
    #[default]
    Public,
    /// A JWS signed by a stored user key (`Authorization: Bearer` or cookie).
    Jwt,
    /// A client certificate issued by the owning org's CA.
    Mtls,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Public => "public",
            AuthMode::Jwt => "jwt",
            AuthMode::Mtls => "mtls",
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "public" => Ok(AuthMode::Public),
            "jwt" => Ok(AuthMode::Jwt),
            "mtls" => Ok(AuthMode::Mtls),
            other => Err(format!("unknown policy {other:?} (public, jwt or mtls)")),
        }
    }
}

/// A route's access policy, declared by the relay with the route and
/// enforced by the gateway (bounded by what the owning org allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    #[serde(default)]
    pub auth: AuthMode,
    /// `org/project` the route belongs to: roles and permissions are
    /// checked in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The user needs this role on `project` (JWT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The user needs a role on `project` granting this permission (JWT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// When not empty, only clients whose address is in one of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    /// Protocols a client may switch to with `Upgrade` (names compared
    /// without case or version). Absent: `websocket` only. An upgraded
    /// connection is spliced unread, so a protocol that carries further
    /// requests (`h2c`) would take them around routing and policy: it is
    /// never allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

/// Upgrades allowed when a route names none.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];
/// Protocols no route may allow: they carry further HTTP requests.
const FORBIDDEN_UPGRADES: [&str; 2] = ["h2c", "h2"];
/// Most protocols one route may allow.
pub const MAX_UPGRADES: usize = 8;

/// The protocol name of an `Upgrade` token (`websocket/13` → `websocket`).
fn protocol_name(token: &str) -> &str {
    token.trim().split_once('/').map_or(token.trim(), |(name, _)| name)
}

/// Whether a route with `policy` lets a client upgrade to `protocol` (one
/// token of an `Upgrade` header).
pub fn upgrade_allowed(policy: Option<&RoutePolicy>, protocol: &str) -> bool {
    let name = protocol_name(protocol);
    if name.is_empty() || FORBIDDEN_UPGRADES.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        return false;
    }
    match policy.and_then(|p| p.upgrades.as_ref()) {
        Some(allowed) => allowed.iter().any(|a| a.eq_ignore_ascii_case(name)),
        None => DEFAULT_UPGRADES.iter().any(|a| a.eq_ignore_ascii_case(name)),
    }
}

/// Most CIDRs in one `ip_allow` list.
pub const MAX_IP_ALLOW: usize = 256;
/// Longest role, permission or project name.
pub const MAX_NAME_LEN: usize = 128;

/// A name segment: letters, digits, `-`, `_`, `.`; 1..=64 bytes.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `org/project`, each part a [`valid_name`].
pub fn parse_project(s: &str) -> Result<(&str, &str)> {
    match s.split_once('/') {
        Some((org, project)) if valid_name(org) && valid_name(project) => Ok((org, project)),
        _ => Err(crate::Error::InvalidPolicy(format!(
            "project {s:?} must be org/project (letters, digits, '-', '_', '.')"
        ))),
    }
}

impl RoutePolicy {
    /// Parses the JSON a relay's store holds: `null` (public), a mode
    /// name (`"jwt"`), or an object.
    pub fn from_json(v: &serde_json::Value) -> Result<Option<RoutePolicy>> {
        let policy = match v {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(s) => RoutePolicy {
                auth: s.parse().map_err(crate::Error::InvalidPolicy)?,
                ..Default::default()
            },
            other => serde_json::from_value(other.clone()).map_err(|e| crate::Error::InvalidPolicy(e.to_string()))?,
        };
        policy.validated().map(Some)
    }

    /// Checks every field; CIDRs are normalised.
    pub fn validated(mut self) -> Result<Self> {
        let bad = |m: String| crate::Error::InvalidPolicy(m);
        if let Some(p) = &self.project {
            parse_project(p)?;
        }
        for (what, v) in [("role", &self.role), ("permission", &self.permission)] {
            if let Some(v) = v
                && !valid_name(v)
            {
                return Err(bad(format!("{what} {v:?}: letters, digits, '-', '_', '.'")));
            }
        }
        if (self.role.is_some() || self.permission.is_some()) && self.project.is_none() {
            return Err(bad("a role or permission needs a project (org/project)".into()));
        }
        if (self.role.is_some() || self.permission.is_some()) && self.auth != AuthMode::Jwt {
            return Err(bad("roles and permissions apply to jwt policies only".into()));
        }
        if self.ip_allow.len() > MAX_IP_ALLOW {
            return Err(bad(format!("more than {MAX_IP_ALLOW} CIDRs in ip_allow")));
        }
        self.ip_allow = self
            .ip_allow
            .iter()
            .map(|c| c.parse::<Cidr>().map(|c| c.to_string()).map_err(bad))
            .collect::<Result<_>>()?;
        if let Some(upgrades) = &mut self.upgrades {
            if upgrades.len() > MAX_UPGRADES {
                return Err(bad(format!("more than {MAX_UPGRADES} protocols in upgrades")));
            }
            for u in upgrades.iter_mut() {
                if !valid_name(u) {
                    return Err(bad(format!("upgrade {u:?}: letters, digits, '-', '_', '.'")));
                }
                if FORBIDDEN_UPGRADES.iter().any(|f| f.eq_ignore_ascii_case(u)) {
                    return Err(bad(format!(
                        "upgrade {u:?} is never allowed: it would carry requests around routing and policy"
                    )));
                }
                u.make_ascii_lowercase();
            }
        }
        Ok(self)
    }
}

/// An IPv4 or IPv6 network, `addr/len` (a bare address is a host route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 client seen through a dual-stack socket is still IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            // An IPv4-mapped network (`::ffff:a.b.c.d/96+n`) is written for
            // IPv4 clients: it is the IPv4 network a.b.c.d/n. A wider IPv6
            // network (`::/0`) still means IPv6 clients only.
            (IpAddr::V6(net), IpAddr::V4(ip)) => match net.to_ipv4_mapped() {
                Some(net) if self.len >= 96 => {
                    let mask = u32::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                    u32::from(net) & mask == u32::from(ip) & mask
                }
                _ => false,
            },
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)");
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn root() -> String {
    "/".to_owned()
}

impl RouteSpec {
    /// Checks and normalises host and prefix, so a hostile or sloppy peer
    /// can't put garbage in the gateway's table.
    pub fn validated(mut self) -> Result<Self> {
        self.host = HostPattern::parse(&self.host)?.to_string();
        self.path_prefix = normalize_path_prefix(&self.path_prefix)?;
        self.policy = self.policy.map(RoutePolicy::validated).transpose()?;
        Ok(self)
    }
}

/// SHA-256 of a route set as gateways see it, independent of order: what a
/// gateway and its relay compare to know they hold the same routes.
pub fn checksum<'a>(routes: impl IntoIterator<Item = &'a RouteSpec>) -> [u8; 32] {
    let mut sorted: Vec<&RouteSpec> = routes.into_iter().collect();
    sorted.sort_by_key(|r| r.id);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in sorted {
        // Field order is fixed by the struct, so this encoding is canonical.
        ctx.update(&serde_json::to_vec(r).unwrap_or_default());
        ctx.update(b"\n");
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64, host: &str) -> RouteSpec {
        RouteSpec {
            id,
            host: host.into(),
            path_prefix: "/".into(),
            priority: 0,
            policy: None,
        }
    }

    #[test]
    fn policies_parse_strictly() {
        assert_eq!(RoutePolicy::from_json(&serde_json::Value::Null).unwrap(), None);
        let jwt = RoutePolicy::from_json(&serde_json::json!("jwt")).unwrap().unwrap();
        assert_eq!(jwt.auth, AuthMode::Jwt);
        let full = serde_json::json!({"auth": "jwt", "project": "acme/web", "role": "viewer", "ip_allow": ["10.1.2.3/8", "::1"]});
        let p = RoutePolicy::from_json(&full).unwrap().unwrap();
        assert_eq!(p.ip_allow, ["10.1.2.3/8", "::1/128"]);
        for bad in [
            serde_json::json!("open"),
            serde_json::json!({"auth": "jwt", "typo": 1}),
            serde_json::json!({"auth": "jwt", "role": "viewer"}),
            serde_json::json!({"auth": "mtls", "project": "a/b", "role": "viewer"}),
            serde_json::json!({"auth": "jwt", "project": "nope"}),
            serde_json::json!({"ip_allow": ["10.0.0.0/33"]}),
            serde_json::json!({"ip_allow": ["10.0.0.0/+8"]}),
            serde_json::json!({"upgrades": ["h2c"]}),
            serde_json::json!({"upgrades": ["H2C"]}),
            serde_json::json!({"upgrades": ["web socket"]}),
            serde_json::json!(5),
        ] {
            assert!(RoutePolicy::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upgrades_are_websocket_unless_a_route_says_otherwise_and_never_h2c() {
        assert!(upgrade_allowed(None, "websocket"));
        assert!(upgrade_allowed(None, "WebSocket"));
        for other in ["h2c", "H2C", "h2", "tls/1.2", "", "foo"] {
            assert!(!upgrade_allowed(None, other), "{other}");
        }
        let p = RoutePolicy::from_json(&serde_json::json!({"upgrades": ["Foo"]}))
            .unwrap()
            .unwrap();
        assert_eq!(p.upgrades.as_deref(), Some(&["foo".to_owned()][..]));
        assert!(upgrade_allowed(Some(&p), "foo/2"));
        assert!(
            !upgrade_allowed(Some(&p), "websocket"),
            "the route's list replaces the default"
        );
        let none = RoutePolicy::from_json(&serde_json::json!({"upgrades": []}))
            .unwrap()
            .unwrap();
        assert!(!upgrade_allowed(Some(&none), "websocket"));
        let default = RoutePolicy::default();
        assert!(upgrade_allowed(Some(&default), "websocket"));
    }

    #[test]
    fn cidrs_match_their_networks() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
    }

    /// An IPv4-mapped IPv6 network is written for IPv4 clients: it must
    /// match them, however the socket showed their address.
    #[test]
    fn an_ipv4_mapped_network_contains_ipv4_clients() {
        let c: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let all_v6: Cidr = "::/0".parse().unwrap();
        assert!(!all_v6.contains("10.1.2.3".parse().unwrap()), "IPv6 networks stay IPv6");
        let host: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn a_route_without_policy_keeps_its_checksum_encoding() {
        let json = serde_json::to_string(&spec(1, "a.test")).unwrap();
        assert!(!json.contains("policy"), "{json}");
    }

    #[test]
    fn checksum_ignores_order_and_sees_every_field() {
        let (a, b) = (spec(1, "a.test"), spec(2, "b.test"));
        assert_eq!(checksum([&a, &b]), checksum([&b, &a]));
        let mut changed = b.clone();
        changed.priority = 1;
        assert_ne!(checksum([&a, &b]), checksum([&a, &changed]));
        assert_ne!(checksum([&a]), checksum([&a, &b]));
    }
}
