//! Answers to ACME challenges while an order is pending: HTTP-01 key
//! authorizations (served by the gateway's plain-HTTP listener) and
//! TLS-ALPN-01 certificates (served by the TLS listener on ALPN
//! `acme-tls/1`). An answer exists only while its order is being validated.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Path prefix of HTTP-01 (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending challenge answers, shared by the issuer and the listeners.
#[derive(Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The key authorization for an HTTP-01 `token`, if one is pending.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The TLS-ALPN-01 certificate for `name` (lowercase), if pending.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Publishes an HTTP-01 answer until the guard drops.
    pub fn add_http01(self: &Arc<Self>, token: &str, key_authorization: &str) -> ChallengeGuard {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
        ChallengeGuard {
            challenges: self.clone(),
            entry: Entry::Http01(token.to_owned()),
        }
    }

    /// Publishes a TLS-ALPN-01 certificate for `name` until the guard
    /// drops. `digest` is SHA-256 of the key authorization.
    pub fn add_tls_alpn01(self: &Arc<Self>, name: &str, digest: &[u8]) -> Result<ChallengeGuard> {
        let cert = tls_alpn01_cert(name, digest)?;
        self.tls_alpn01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), cert);
        Ok(ChallengeGuard {
            challenges: self.clone(),
            entry: Entry::TlsAlpn01(name.to_owned()),
        })
    }
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("http01", &self.http01.read().map(|m| m.len()).unwrap_or(0))
            .field("tls_alpn01", &self.tls_alpn01.read().map(|m| m.len()).unwrap_or(0))
            .finish()
    }
}

enum Entry {
    Http01(String),
    TlsAlpn01(String),
}

/// Removes its challenge answer when dropped (order done, failed or
/// cancelled).
pub struct ChallengeGuard {
    challenges: Arc<Challenges>,
    entry: Entry,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        match &self.entry {
            Entry::Http01(token) => {
                self.challenges
                    .http01
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(token);
            }
            Entry::TlsAlpn01(name) => {
                self.challenges
                    .tls_alpn01
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name);
            }
        }
    }
}

/// The self-signed certificate RFC 8737 asks for: the name as its only
/// SAN and the critical `acmeIdentifier` extension holding `digest`.
fn tls_alpn01_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    if digest.len() != 32 {
        return Err(Error::AcmeConfig(format!(
            "TLS-ALPN-01 digest must be 32 bytes, got {}",
            digest.len()
        )));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its consistency check parses the
    // certificate with webpki, which refuses the critical acmeIdentifier
    // extension. The validator only needs it served.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Serves exactly one certificate, whatever the SNI.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A TLS config that completes a TLS-ALPN-01 handshake with `cert` and
/// negotiates only `acme-tls/1`.
pub fn tls_alpn01_server_config(cert: Arc<CertifiedKey>) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(cert)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exist_only_while_guarded() {
        let c = Challenges::new();
        let g = c.add_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.http01("other"), None);
        drop(g);
        assert_eq!(c.http01("tok"), None);

        let g = c.add_tls_alpn01("a.test", &[7u8; 32]).unwrap();
        let cert = c.tls_alpn01("a.test").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // OCTET STRING (0x04), length 32, the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        drop(g);
        assert!(c.tls_alpn01("a.test").is_none());
        assert!(c.add_tls_alpn01("a.test", &[1, 2, 3]).is_err());
    }
}
