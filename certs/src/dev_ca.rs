//! A local certificate authority for development and tests: its root is
//! written to the data dir as `ca.pem` (so `curl --cacert` works) and it
//! signs short-lived leaf certificates on demand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use ops::fs::{Access, ensure_private_dir, write_atomic};

/// Root file name in the data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// Root key file name (0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Leaves live a year: well under the 825 days Apple allows for private roots.
const LEAF_LIFETIME: Duration = Duration::days(365);
const CA_LIFETIME: Duration = Duration::days(3650);

pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_path: PathBuf,
}

impl DevCa {
    /// Loads the CA from `dir`, or creates it (and `dir`) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            let read = |p: &Path| std::fs::read_to_string(p).map_err(Error::file(p));
            let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
            let bad = |p: &Path, e: rcgen::Error| Error::BadFile {
                path: p.to_owned(),
                reason: e.to_string(),
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, e))?;
            return Ok(DevCa { issuer, cert_path });
        }
        ensure_private_dir(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Routehub");
        dn.push(DnType::CommonName, format!("Routehub dev CA {}", short_id(&key)));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        // Key first: a crash in between leaves no cert without its key.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), Access::Private)?;
        // Public: users hand it to curl and to relays.
        write_atomic(&cert_path, cert.pem().as_bytes(), Access::Public)?;
        tracing::info!(path = %cert_path.display(), "created a dev CA");
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            cert_path,
        })
    }

    /// Where the root certificate is, for `curl --cacert` and relays' `--ca`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Signs a fresh leaf for `names` (hostnames, already validated).
    pub fn issue(&self, names: &[String]) -> Result<Arc<CertifiedKey>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(chain, key_der, &rustls::crypto::ring::default_provider())?;
        Ok(Arc::new(certified))
    }
}

fn short_id(key: &KeyPair) -> String {
    key.public_key_raw()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_the_root_and_issues_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path()).unwrap();
        let first_root = std::fs::read(ca.cert_path()).unwrap();
        let leaf = ca.issue(&["app.test".into()]).unwrap();
        assert_eq!(leaf.cert.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(ca.cert_path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "curl and relays read the root");
        }
        let again = DevCa::load_or_create(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(again.cert_path()).unwrap(),
            first_root,
            "root is reused, not recreated"
        );
        again.issue(&["other.test".into()]).unwrap();
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        DevCa::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), "garbage").unwrap();
        let err = DevCa::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains(CA_KEY_FILE), "{err}");
    }
}
