//! Gateway configuration: a TOML file and/or flags, same fields (the flags
//! are laid over the file by `ops::overlay`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tunnel_proto::limits::{DEFAULT_HEARTBEAT, MAX_HEARTBEAT, MIN_HEARTBEAT};
use tunnel_proto::names::normalize_hostname;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// State: the dev CA, certificates.
    pub data_dir: PathBuf,
    /// HTTPS (TCP) and QUIC tunnels (UDP), same port.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` and the admin API. Loopback only
    /// unless `dangerous_admin_public`.
    pub admin_listen: SocketAddr,
    /// Allows a non-loopback admin address (the token is then all that
    /// protects your orgs, keys and users; put TLS in front).
    pub dangerous_admin_public: bool,
    /// Relay keys and their hostnames.
    pub authorized_keys: Option<PathBuf>,
    /// The gateway's own hostnames (relays connect to these).
    pub names: Vec<String>,
    /// Other gateway replicas (`host[:port]`) relays should also connect to;
    /// sent to every relay in `Welcome`.
    pub peers: Vec<String>,
    /// Heartbeat relays must keep.
    pub heartbeat_ms: u64,
    /// Longest wait for a relay's response head.
    pub response_timeout_secs: u64,
    /// On shutdown, how long in-flight requests may take.
    pub drain_timeout_secs: u64,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most relay tunnels (QUIC or TCP, authenticated or not yet) at once.
    pub max_relay_tunnels: usize,
    /// Largest request head forwarded, in bytes as HTTP/1.1 (names, values
    /// and framing, after HPACK decoding for h2); larger ones get 431.
    pub max_request_header_bytes: usize,
    /// Most request header fields forwarded; more get 431.
    pub max_request_header_fields: usize,
    /// Plain HTTP: ACME HTTP-01 answers, everything else redirected to
    /// https. `"auto"` (the default), `"off"` or an address; see
    /// [`GatewayConfig::http_addr`].
    #[serde(deserialize_with = "http_listen")]
    pub http_listen: HttpListen,
    /// Certificates from an ACME CA. Without it, the dev CA signs them.
    pub acme: Option<AcmeSection>,
    /// The clock certificate renewal reads; tests move it forward.
    #[serde(skip)]
    pub clock: certs::Clock,
}

/// `[acme]` in the config file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// ACME directory URL, e.g. Let's Encrypt's. Required; checked by
    /// [`GatewayConfig::validate`], so flags can supply it over a file.
    #[serde(default)]
    pub directory: String,
    /// Contact for the ACME account.
    #[serde(default)]
    pub email: Option<String>,
    /// Extra root to trust for the ACME server's own HTTPS (private CA).
    #[serde(default)]
    pub ca_root: Option<PathBuf>,
    /// `tls-alpn-01`, `http-01` or `auto` (TLS-ALPN-01, then HTTP-01).
    #[serde(default = "default_challenge")]
    pub challenge: String,
    /// External Account Binding key id, for CAs that need one.
    #[serde(default)]
    pub eab_kid: Option<String>,
    /// External Account Binding HMAC key (base64url). Never logged.
    #[serde(default)]
    pub eab_hmac_key: Option<String>,
    /// Most ACME orders started per hour.
    #[serde(default = "default_orders_per_hour")]
    pub orders_per_hour: u32,
}

fn default_challenge() -> String {
    "auto".into()
}

fn default_orders_per_hour() -> u32 {
    certs::acme::DEFAULT_ORDERS_PER_HOUR
}

impl AcmeSection {
    /// An ACME section for `directory` with defaults elsewhere.
    pub fn new(directory: impl Into<String>) -> Self {
        AcmeSection {
            directory: directory.into(),
            email: None,
            ca_root: None,
            challenge: default_challenge(),
            eab_kid: None,
            eab_hmac_key: None,
            orders_per_hour: default_orders_per_hour(),
        }
    }

    /// The issuer's config; `http01_available` says whether the plain-HTTP
    /// listener runs.
    pub fn to_certs(&self, http01_available: bool) -> Result<certs::AcmeConfig> {
        let bad = |message: String| Error::Config {
            path: "<config>".into(),
            message,
        };
        let mut cfg = certs::AcmeConfig::new(self.directory.clone());
        cfg.contact_email = self.email.clone();
        cfg.ca_root = self.ca_root.clone();
        cfg.challenge = self
            .challenge
            .parse()
            .map_err(|e| bad(format!("acme.challenge: {e}")))?;
        cfg.http01_available = http01_available;
        cfg.orders_per_hour = self.orders_per_hour;
        cfg.eab = match (&self.eab_kid, &self.eab_hmac_key) {
            (Some(key_id), Some(hmac_key)) => Some(certs::ExternalAccountBinding {
                key_id: key_id.clone(),
                hmac_key: hmac_key.clone(),
            }),
            (None, None) => None,
            _ => return Err(bad("acme: eab_kid and eab_hmac_key go together".into())),
        };
        Ok(cfg)
    }
}

impl std::fmt::Debug for AcmeSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeSection")
            .field("directory", &self.directory)
            .field("email", &self.email)
            .field("ca_root", &self.ca_root)
            .field("challenge", &self.challenge)
            .field("eab_kid", &self.eab_kid)
            .field("eab_hmac_key", &self.eab_hmac_key.as_ref().map(|_| "<redacted>"))
            .field("orders_per_hour", &self.orders_per_hour)
            .finish()
    }
}

/// Parses a listen address, or `off`/`none` for no listener.
pub fn parse_listen_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|e| format!("{other:?}: {e} (an address like 0.0.0.0:80, or off)")),
    }
}

/// Where the plain-HTTP listener binds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpListen {
    /// [`DEFAULT_HTTP_LISTEN`] when certificates come from ACME (HTTP-01
    /// needs port 80), off otherwise: the dev CA and certificate files
    /// need no port 80, and binding it takes privileges a normal user
    /// lacks.
    #[default]
    Auto,
    Off,
    At(SocketAddr),
}

/// The plain-HTTP address `auto` picks when ACME is configured.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 80));

impl std::str::FromStr for HttpListen {
    type Err = String;
    /// `auto`, `off` (or `none`, or empty), or an address.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(HttpListen::Auto),
            other => parse_listen_or_off(other)
                .map(HttpListen::from)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

/// The form [`HttpListen::from_str`] reads back.
impl std::fmt::Display for HttpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpListen::Auto => f.write_str("auto"),
            HttpListen::Off => f.write_str("off"),
            HttpListen::At(addr) => addr.fmt(f),
        }
    }
}

impl serde::Serialize for HttpListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<Option<SocketAddr>> for HttpListen {
    fn from(addr: Option<SocketAddr>) -> Self {
        addr.map_or(HttpListen::Off, HttpListen::At)
    }
}

fn http_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HttpListen, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: ops::fs::default_data_dir("gateway"),
            listen: ([0, 0, 0, 0], 443).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            dangerous_admin_public: false,
            authorized_keys: None,
            names: vec!["localhost".into()],
            peers: Vec::new(),
            heartbeat_ms: DEFAULT_HEARTBEAT.as_millis() as u64,
            response_timeout_secs: 100,
            drain_timeout_secs: 10,
            max_connections: 50_000,
            max_relay_tunnels: 20_000,
            max_request_header_bytes: crate::headers::DEFAULT_MAX_REQUEST_HEADER_BYTES,
            max_request_header_fields: crate::headers::DEFAULT_MAX_REQUEST_HEADER_FIELDS,
            http_listen: HttpListen::Auto,
            acme: None,
            clock: certs::Clock::system(),
        }
    }
}

impl GatewayConfig {
    /// Checks values and normalises names.
    pub fn validate(mut self) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: "<config>".into(),
            message,
        };
        self.names = self
            .names
            .iter()
            .map(|n| normalize_hostname(n).map_err(|e| bad(format!("names: {e}"))))
            .collect::<Result<_>>()?;
        if self.names.is_empty() {
            return Err(bad("names: the gateway needs at least one hostname".into()));
        }
        let hb = self.heartbeat();
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&hb) {
            return Err(bad(format!(
                "heartbeat_ms must be within {MIN_HEARTBEAT:?}..={MAX_HEARTBEAT:?}"
            )));
        }
        if self.max_connections == 0 {
            return Err(bad("max_connections must be positive".into()));
        }
        // hyper's HTTP/1 reader needs 8 KiB of buffer at least; a head
        // over 1 MiB is no request.
        if !(8192..=1024 * 1024).contains(&self.max_request_header_bytes) {
            return Err(bad("max_request_header_bytes must be within 8192..=1048576".into()));
        }
        if !(16..=10_000).contains(&self.max_request_header_fields) {
            return Err(bad("max_request_header_fields must be within 16..=10000".into()));
        }
        if self.response_timeout_secs == 0 {
            return Err(bad("response_timeout_secs must be positive".into()));
        }
        ops::listener::check_admin_addr(self.admin_listen, self.dangerous_admin_public, "gateway")?;
        if let Some(acme) = &self.acme {
            if acme.directory.trim().is_empty() {
                return Err(bad(
                    "acme: no directory URL; --acme-* flags and [acme] need --acme-directory (or `directory` in [acme])"
                        .into(),
                ));
            }
            acme.to_certs(self.http_addr().is_some())?
                .challenges()
                .map_err(|e| bad(format!("acme: {e}")))?;
        }
        Ok(self)
    }

    /// The plain-HTTP listener's address, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        match self.http_listen {
            HttpListen::Auto => self.acme.is_some().then_some(DEFAULT_HTTP_LISTEN),
            HttpListen::Off => None,
            HttpListen::At(addr) => Some(addr),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<GatewayConfig>("listen = \"127.0.0.1:8443\"\nlisten_typo = 1").is_err());
        let ok: GatewayConfig = toml::from_str("listen = \"127.0.0.1:8443\"\nnames = [\"GW.example.com\"]").unwrap();
        assert_eq!(ok.validate().unwrap().names, ["gw.example.com"]);
        let bad: GatewayConfig = toml::from_str("heartbeat_ms = 1").unwrap();
        assert!(bad.validate().is_err());
        let bad: GatewayConfig = toml::from_str("names = []").unwrap();
        assert!(bad.validate().is_err());
        let bad: GatewayConfig = toml::from_str("response_timeout_secs = 0").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("response_timeout_secs")
        );
    }

    #[test]
    fn a_public_admin_address_needs_the_explicit_override() {
        let cfg: GatewayConfig = toml::from_str("admin_listen = \"0.0.0.0:9090\"").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:9090 is not a loopback address") && err.contains("dangerous_admin_public = true"),
            "{err}"
        );
        let cfg: GatewayConfig =
            toml::from_str("admin_listen = \"0.0.0.0:9090\"\ndangerous_admin_public = true").unwrap();
        assert!(cfg.validate().is_ok());
        let cfg: GatewayConfig = toml::from_str("admin_listen = \"[::1]:9090\"").unwrap();
        assert!(cfg.validate().is_ok());
    }

    /// A gateway started as a normal user with the dev CA must not try to
    /// bind port 80; with ACME it listens there unless told otherwise.
    #[test]
    fn the_http_listener_is_on_by_default_only_with_acme() {
        assert_eq!(GatewayConfig::default().http_addr(), None);
        let acme = "[acme]\ndirectory = \"https://ca.test/dir\"";
        let cfg: GatewayConfig = toml::from_str(acme).unwrap();
        assert_eq!(cfg.http_addr(), Some(DEFAULT_HTTP_LISTEN));
        assert_eq!(DEFAULT_HTTP_LISTEN, SocketAddr::from(([0, 0, 0, 0], 80)));
        // HTTP-01 works with the default.
        let cfg: GatewayConfig = toml::from_str(&format!("{acme}\nchallenge = \"http-01\"")).unwrap();
        cfg.validate().unwrap();
        for (text, want) in [
            ("http_listen = \"auto\"", None),
            ("http_listen = \"off\"", None),
            (
                "http_listen = \"127.0.0.1:8080\"",
                Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            ),
        ] {
            let cfg: GatewayConfig = toml::from_str(text).unwrap();
            assert_eq!(cfg.http_addr(), want, "{text}");
        }
        let cfg: GatewayConfig = toml::from_str(&format!("http_listen = \"off\"\n{acme}")).unwrap();
        assert_eq!(cfg.http_addr(), None);
        assert_eq!("auto".parse::<HttpListen>(), Ok(HttpListen::Auto));
        for v in [HttpListen::Auto, HttpListen::Off, HttpListen::At(DEFAULT_HTTP_LISTEN)] {
            assert_eq!(v.to_string().parse::<HttpListen>(), Ok(v), "{v}");
        }
        assert!("nonsense".parse::<HttpListen>().is_err());
    }

    #[test]
    fn acme_section_and_http_listener() {
        let cfg: GatewayConfig = toml::from_str(
            "http_listen = \"off\"\n[acme]\ndirectory = \"https://ca.test/dir\"\nchallenge = \"tls-alpn-01\"\neab_kid = \"k\"\neab_hmac_key = \"c2VjcmV0\"",
        )
        .unwrap();
        assert_eq!(cfg.http_addr(), None);
        let acme = cfg.acme.clone().unwrap();
        assert_eq!(acme.orders_per_hour, certs::acme::DEFAULT_ORDERS_PER_HOUR);
        assert!(
            !format!("{cfg:?}").contains("c2VjcmV0"),
            "the EAB key never shows in Debug"
        );
        cfg.validate().unwrap();

        // HTTP-01 without the HTTP listener, an unknown challenge, a typo'd key.
        for bad in [
            "http_listen = \"off\"\n[acme]\ndirectory = \"https://ca.test/dir\"\nchallenge = \"http-01\"",
            "[acme]\ndirectory = \"https://ca.test/dir\"\nchallenge = \"dns-01\"",
            "[acme]\ndirectory = \"https://ca.test/dir\"\neab_kid = \"k\"",
        ] {
            let cfg: GatewayConfig = toml::from_str(bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<GatewayConfig>("[acme]\ndirectory = \"https://x\"\ndirectry = 1").is_err());
        let cfg: GatewayConfig = toml::from_str("[acme]\nemail = \"a@b.test\"").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--acme-directory"), "{err}");
        assert!(toml::from_str::<GatewayConfig>("http_listen = \"nonsense\"").is_err());
    }
}
