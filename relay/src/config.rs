//! Relay configuration: a TOML file and/or flags, same fields (the flags
//! are laid over the file by `ops::overlay`).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Gateway addresses, `host[:port]` (port 443 by default).
    pub gateways: Vec<String>,
    /// The relay's Ed25519 private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Trust this CA for gateways instead of the public Web PKI.
    pub ca: Option<PathBuf>,
    /// TLS name of the gateways (default: the host part of each address).
    pub server_name: Option<String>,
    /// Routes that seed the store: each distinct one is added once, ever;
    /// after that the store (admin API, CLI) is the only source of truth.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// On shutdown, how long in-flight streams may take.
    pub drain_timeout_secs: u64,
    /// `auto` (QUIC, falling back to TCP), `quic` or `tcp`.
    pub transport: crate::connect::TransportMode,
    /// While on TCP, how often to try QUIC again.
    pub quic_retry_secs: u64,
    /// The store (`relay.db`) and the admin token live here.
    pub data_dir: PathBuf,
    /// Admin API, dashboard and event feed. Loopback only unless
    /// `dangerous_admin_public`.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Allows a non-loopback admin address (the token is then all that
    /// protects your routes; put TLS in front).
    pub dangerous_admin_public: bool,
    /// Routes from container labels (`routehub.*`, Traefik's), kept in
    /// step with the Docker Engine at `docker_socket`.
    pub label_routes: bool,
    /// The Docker Engine's unix socket.
    pub docker_socket: PathBuf,
    /// Compose deployments (`routehub deploy`) through the compose CLI.
    pub deployments: bool,
}

/// Where the admin API listens by default.
pub const DEFAULT_ADMIN_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 7070);

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            gateways: Vec::new(),
            key: ops::fs::default_data_dir("relay").join("relay.key"),
            ca: None,
            server_name: None,
            routes: Vec::new(),
            drain_timeout_secs: 10,
            transport: Default::default(),
            quic_retry_secs: 30,
            data_dir: ops::fs::default_data_dir("relay"),
            admin_listen: Some(DEFAULT_ADMIN_LISTEN.into()),
            dangerous_admin_public: false,
            label_routes: true,
            docker_socket: deploy::engine::DEFAULT_SOCKET.into(),
            deployments: true,
        }
    }
}

/// One route: requests for `host` under `path` go to `target`. Serialises
/// to the `[[route]]` entry it reads from, so `--route` flags can be laid
/// over a config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub host: String,
    #[serde(default = "root")]
    pub path: String,
    pub target: String,
    #[serde(default)]
    pub priority: i32,
    /// Access policy the gateway enforces (`null`/absent: public), e.g.
    /// `{"auth": "jwt", "project": "acme/web", "role": "viewer"}`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub policy: serde_json::Value,
}

fn root() -> String {
    "/".into()
}

/// `HOST[/PATH]=URL`, e.g. `app.example.com/api=http://127.0.0.1:3000`.
/// A bare port means `http://127.0.0.1:PORT`.
impl FromStr for RouteConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Route {
            route: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (lhs, target) = s.split_once('=').ok_or_else(|| bad("expected HOST[/PATH]=URL"))?;
        let (host, path) = match lhs.find('/') {
            Some(i) => (&lhs[..i], &lhs[i..]),
            None => (lhs, "/"),
        };
        Ok(RouteConfig {
            host: host.to_owned(),
            path: path.to_owned(),
            target: target.to_owned(),
            priority: 0,
            policy: serde_json::Value::Null,
        })
    }
}

impl RouteConfig {
    /// The store entry this config seeds.
    pub fn to_new_route(&self) -> crate::model::NewRoute {
        crate::model::NewRoute {
            host: self.host.clone(),
            path: self.path.clone(),
            priority: self.priority,
            target: self.target.clone(),
            policy: self.policy.clone(),
            middlewares: Vec::new(),
            health: None,
            enabled: true,
            owner: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(flag: &str) -> Result<crate::model::NewRoute> {
        let mut new = flag.parse::<RouteConfig>()?.to_new_route();
        crate::model::validate(&mut new).map_err(|reason| Error::Route {
            route: flag.into(),
            reason,
        })?;
        Ok(new)
    }

    #[test]
    fn route_flags() {
        let r: RouteConfig = "app.test/api=http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(
            (r.host.as_str(), r.path.as_str(), r.target.as_str()),
            ("app.test", "/api", "http://127.0.0.1:3000")
        );
        assert_eq!(validated("app.test=8080").unwrap().target, "http://127.0.0.1:8080");
        assert!("app.test".parse::<RouteConfig>().is_err());
    }

    #[test]
    fn bad_routes_are_clear_errors() {
        let cases = [
            ("bad host=http://x:1", "invalid hostname"),
            ("a.test=https://x:1", "not supported"),
            ("a.test=x:1", "scheme"),
            ("a.test=http://x:1/base", "origin"),
            ("a.test/../x=http://x:1", "'..'"),
        ];
        for (flag, needle) in cases {
            let err = validated(flag).unwrap_err().to_string();
            assert!(err.contains(needle), "{flag}: {err}");
        }
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let ok = "gateways = [\"gw.example.com\"]\nkey = \"/k\"\n[[route]]\nhost = \"a.test\"\ntarget = \"http://127.0.0.1:1\"\n";
        let cfg: RelayConfig = toml::from_str(ok).unwrap();
        assert_eq!(cfg.routes[0].path, "/");
        assert!(toml::from_str::<RelayConfig>("gateway = \"x\"").is_err());
        assert!(toml::from_str::<RelayConfig>("[[route]]\nhost = \"a\"\ntarget = \"b\"\ntypo = 1").is_err());
    }
}
