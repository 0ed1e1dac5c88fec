//! The address of a gateway to keep a session with.

use std::net::SocketAddr;

use crate::error::{Error, Result};

/// A gateway to keep a session with.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    pub host: String,
    pub port: u16,
    pub server_name: String,
}

impl GatewayAddr {
    /// `host[:port]` (port 443 by default; `[v6]:port` for IPv6). The TLS
    /// name is `server_name` if given, else the host, which must then be a
    /// DNS name.
    pub fn parse(s: &str, server_name: Option<&str>) -> Result<Self> {
        let bad = |reason: &str| Error::GatewayAddr {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => 443,
                None => return Err(bad("expected ':' after ']'")),
            };
            (h.to_owned(), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                _ => (s.to_owned(), 443),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        // A name or an address, nothing else: peers listed in a gateway's
        // `Welcome` land here too, and the address must print back as one.
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if !is_ip && tunnel_proto::names::normalize_hostname(&host).is_err() {
            return Err(bad("the host is neither a DNS name nor an IP address"));
        }
        let server_name = match server_name {
            Some(n) => n.to_owned(),
            None if is_ip => {
                return Err(bad(
                    "an IP address needs --server-name (the gateway certificate's name)",
                ));
            }
            None => host.clone(),
        };
        Ok(GatewayAddr {
            host,
            port,
            server_name,
        })
    }

    pub(crate) async fn resolve(&self) -> Result<SocketAddr> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await?;
        addrs.next().ok_or_else(|| Error::GatewayAddr {
            addr: self.to_string(),
            reason: "no address found".into(),
        })
    }
}

impl std::fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        let a = GatewayAddr::parse("gw.example.com", None).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.server_name.as_str()),
            ("gw.example.com", 443, "gw.example.com")
        );
        let a = GatewayAddr::parse("127.0.0.1:8443", Some("localhost")).unwrap();
        assert_eq!((a.port, a.server_name.as_str()), (8443, "localhost"));
        let a = GatewayAddr::parse("[::1]:8443", Some("localhost")).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 8443));
        assert_eq!(a.to_string(), "[::1]:8443");
        assert!(
            GatewayAddr::parse("127.0.0.1:8443", None)
                .unwrap_err()
                .to_string()
                .contains("--server-name")
        );
        assert!(GatewayAddr::parse("gw:notaport", None).is_err());
        assert!(GatewayAddr::parse("", None).is_err());
    }

    /// Peers come from a gateway's `Welcome`: a host that is neither a DNS
    /// name nor an IP address is refused, and what is accepted prints as
    /// an address that parses back to itself.
    #[test]
    fn a_gateway_host_is_a_name_or_an_ip_address() {
        for bad in [
            "83m44:[::1]:443",
            "a:b:c",
            "gw example.com",
            "gw/x:443",
            "[gw x]:443",
            "-gw.test",
        ] {
            assert!(GatewayAddr::parse(bad, Some("gw.test")).is_err(), "{bad:?} accepted");
        }
        for good in [
            "gw.example.com",
            "gw.example.com:8443",
            "10.0.0.1:443",
            "[::1]:8443",
            "::1",
            "[gw.test]:1",
        ] {
            let a = GatewayAddr::parse(good, Some("gw.test")).unwrap();
            let again = GatewayAddr::parse(&a.to_string(), Some("gw.test")).unwrap();
            assert_eq!((again.host, again.port), (a.host, a.port), "{good:?}");
        }
    }
}
