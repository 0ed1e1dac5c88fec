//! Ed25519 identities of relays: the private key a relay keeps in a file and
//! the public key a gateway stores.
//!
//! ed25519-dalek rather than ring: it offers `verify_strict` (rejects
//! small-order keys and non-canonical signatures, so one key can't yield
//! two valid signatures for a proof) and PKCS#8 PEM both ways; ring can only
//! generate PKCS#8, not export a loaded key.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

const PUBLIC_PREFIX: &str = "ed25519:";

/// A relay's private key. `Debug` never prints the secret.
pub struct RelayKey(SigningKey);

impl RelayKey {
    /// A new key from the OS random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| Error::InvalidKey("the OS random source failed".into()))?;
        Ok(RelayKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), readable by OpenSSL too.
    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_pkcs8_pem(Default::default())
            .map(|pem| pem.to_string())
            .map_err(|e| Error::InvalidKey(e.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<Self> {
        SigningKey::from_pkcs8_pem(pem)
            .map(RelayKey)
            .map_err(|e| Error::InvalidKey(format!("not an Ed25519 PKCS#8 PEM private key ({e})")))
    }

    /// Reads a key file; warns if others may read it.
    pub fn load(path: &Path) -> Result<Self> {
        let file_err = |source| Error::File {
            path: path.display().to_string(),
            source,
        };
        let pem = std::fs::read_to_string(path).map_err(file_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), "private key file is readable by others; run chmod 600");
            }
        }
        Self::from_pem(&pem).map_err(|e| Error::InvalidKey(format!("{}: {e}", path.display())))
    }

    /// Writes the key with mode 0600, refusing to overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let file_err = |source| Error::File {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(file_err)?;
        f.write_all(self.to_pem()?.as_bytes()).map_err(file_err)?;
        f.sync_all().map_err(file_err)
    }
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RelayKey")
            .field(&self.public_key())
            .finish_non_exhaustive()
    }
}

/// A relay's public key, written `ed25519:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::InvalidKey("not an Ed25519 point".into()))?;
        if key.is_weak() {
            return Err(Error::InvalidKey("small-order Ed25519 key".into()));
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Strict verification (RFC 8032 with canonical `S` and no small-order
    /// components).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<()> {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| Error::BadProof)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let b64 = s
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| Error::InvalidKey(format!("a public key starts with '{PUBLIC_PREFIX}'")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| Error::InvalidKey("public key is not base64url".into()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidKey("an Ed25519 public key is 32 bytes".into()))?;
        PublicKey::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_text_form() {
        let key = RelayKey::generate().unwrap();
        let again = RelayKey::from_pem(&key.to_pem().unwrap()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let text = key.public_key().to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().unwrap(), key.public_key());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_public_keys_are_rejected() {
        for bad in ["", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?}");
        }
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(&identity).is_err());
    }

    #[test]
    fn save_is_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.key");
        let key = RelayKey::generate().unwrap();
        key.save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(key.save_new(&path).is_err());
        assert_eq!(RelayKey::load(&path).unwrap().public_key(), key.public_key());
    }

    #[test]
    fn signatures_verify_only_for_their_message() {
        let key = RelayKey::generate().unwrap();
        let sig = key.sign(b"a");
        key.public_key().verify(b"a", &sig).unwrap();
        assert!(key.public_key().verify(b"b", &sig).is_err());
    }
}
