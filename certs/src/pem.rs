//! A certificate chain and its private key as one PEM bundle, and what the
//! gateway needs to know about it (validity, ARI identifier).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// A chain (leaf first) and its private key, both PEM. Stored as one file
/// so the pair is replaced together or not at all.
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub chain_pem: String,
    pub key_pem: String,
}

impl CertBundle {
    /// The on-disk form: key first, then the chain.
    pub fn to_pem(&self) -> String {
        let mut out = String::with_capacity(self.key_pem.len() + self.chain_pem.len() + 1);
        out.push_str(self.key_pem.trim_end());
        out.push('\n');
        out.push_str(self.chain_pem.trim_end());
        out.push('\n');
        out
    }

    /// Splits a bundle written by [`CertBundle::to_pem`] (any order of
    /// sections is accepted).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let mut key = String::new();
        let mut chain = String::new();
        // (is a key, text so far) of the block being read.
        let mut block: Option<(bool, String)> = None;
        for line in text.lines() {
            if let Some(label) = line.strip_prefix("-----BEGIN ") {
                block = Some((label.contains("PRIVATE KEY"), String::new()));
            }
            if let Some((_, body)) = block.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
            if line.starts_with("-----END ")
                && let Some((is_key, body)) = block.take()
            {
                if is_key { &mut key } else { &mut chain }.push_str(&body);
            }
        }
        if block.is_some() {
            return Err("truncated PEM block".into());
        }
        if key.is_empty() || chain.is_empty() {
            return Err("a bundle needs a private key and at least one certificate".into());
        }
        Ok(CertBundle {
            chain_pem: chain,
            key_pem: key,
        })
    }

    /// The rustls form, checking that the key matches the leaf.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate in the chain".into());
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| format!("private key: {e}"))?;
        let ck = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("certificate and key: {e}"))?;
        Ok(Arc::new(ck))
    }
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears in logs.
        f.debug_struct("CertBundle")
            .field("chain_pem_len", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

/// What the renewal logic reads from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Reads the validity of `der`.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
        let to_system = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(CertInfo {
            not_before: to_system(cert.validity().not_before),
            not_after: to_system(cert.validity().not_after),
        })
    }

    /// Reads the leaf of a rustls certificate.
    pub fn of(ck: &CertifiedKey) -> Result<Self> {
        let leaf = ck
            .cert
            .first()
            .ok_or_else(|| Error::BadCertificate("empty chain".into()))?;
        Self::parse(leaf.as_ref())
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO)
    }
}

/// A self-signed bundle for `name`, for tests.
#[cfg(test)]
pub(crate) fn test_bundle(name: &str) -> CertBundle {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let cert = rcgen::CertificateParams::new(vec![name.into()])
        .expect("name")
        .self_signed(&key)
        .expect("self-sign");
    CertBundle {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> CertBundle {
        test_bundle("a.test")
    }

    #[test]
    fn round_trips_and_reads_validity() {
        let b = bundle();
        let back = CertBundle::from_pem(&b.to_pem()).unwrap();
        assert_eq!(back.certified_key().unwrap().cert.len(), 1);
        let info = CertInfo::of(&back.certified_key().unwrap()).unwrap();
        assert!(info.not_after > info.not_before, "{info:?}");
        assert!(!format!("{b:?}").contains("PRIVATE"), "the key never shows in Debug");
    }

    #[test]
    fn rejects_half_bundles_and_mismatched_keys() {
        let b = bundle();
        assert!(CertBundle::from_pem(&b.chain_pem).is_err());
        assert!(CertBundle::from_pem(&b.key_pem).is_err());
        let other = bundle();
        let mixed = CertBundle {
            chain_pem: b.chain_pem,
            key_pem: other.key_pem,
        };
        assert!(
            mixed.certified_key().is_err(),
            "a key that does not match its leaf is refused"
        );
    }
}
