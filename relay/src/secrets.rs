//! Compose secrets sealed at rest: ChaCha20-Poly1305 with a key kept in
//! the data dir (`secrets.key`, 0600), never in the store, so a copy of
//! `relay.db` or its backup alone gives nothing away. Each sealed value
//! is bound to its compose's name: one compose's secrets can't be passed
//! off as another's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// The key's file in the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// Most secrets one compose version carries.
pub const MAX_SECRETS: usize = 64;
/// Longest secret value.
pub const MAX_SECRET_VALUE: usize = 8 * 1024;

/// The sealing key.
pub struct SecretKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn bad_key(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        path: path.to_owned(),
        message: format!("{reason}; it seals the deployments' secrets, so it is never replaced on its own"),
    }
}

impl SecretKey {
    /// Reads `secrets.key` in `dir`, making a new random one if there is
    /// none. A file that is there but not a key is an error: replacing
    /// it would lose every sealed secret.
    pub fn load_or_create(dir: &Path) -> Result<SecretKey> {
        let path = dir.join(KEY_FILE);
        let bytes = match ops::fs::read_bounded(&path, 1024) {
            Ok(text) => STANDARD
                .decode(text.trim())
                .map_err(|e| bad_key(&path, format!("not base64 ({e})")))?,
            Err(ops::Error::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| bad_key(&path, "the OS random source failed"))?;
                ops::fs::write_atomic(
                    &path,
                    format!("{}\n", STANDARD.encode(&bytes)).as_bytes(),
                    ops::fs::Access::Private,
                )?;
                bytes
            }
            Err(e) => return Err(e.into()),
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| bad_key(&path, "not a 32-byte key"))?;
        Ok(SecretKey {
            key: LessSafeKey::new(key),
            path,
        })
    }

    /// Seals `secrets` of compose `name`: a random nonce, then the
    /// ciphertext of their JSON with its tag.
    pub fn seal(&self, name: &str, secrets: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Store("the OS random source failed".into()))?;
        let mut data = serde_json::to_vec(secrets).map_err(|e| Error::Store(e.to_string()))?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name), &mut data)
            .map_err(|_| Error::Store("sealing the secrets failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(sealed)
    }

    /// The secrets `sealed` holds for compose `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<BTreeMap<String, String>> {
        let refused = || {
            Error::Store(format!(
                "the secrets of {name:?} do not open with {} (another relay's key, or damaged)",
                self.path.display()
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name), &mut data)
            .map_err(|_| refused())?;
        serde_json::from_slice(plain).map_err(|_| refused())
    }
}

/// Checks secrets a user gives: names as compose interpolates them
/// (`[A-Za-z_][A-Za-z0-9_]*`), values of one line (an env file holds one
/// per line), within the limits.
pub fn check(secrets: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if secrets.len() > MAX_SECRETS {
        return Err(format!("{} secrets; at most {MAX_SECRETS}", secrets.len()));
    }
    for (name, value) in secrets {
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.len() > 128 {
            return Err(format!(
                "secret name {:?}: letters, digits and '_', not starting with a digit",
                name.chars().take(130).collect::<String>()
            ));
        }
        if value.len() > MAX_SECRET_VALUE {
            return Err(format!("secret {name}: longer than {MAX_SECRET_VALUE} bytes"));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(format!("secret {name}: one line, without NUL"));
        }
    }
    Ok(())
}

/// `text` with every secret value (of 4 bytes or more: shorter ones would
/// mask ordinary words) replaced by [`crate::records::MASK`], also as
/// compose's output escapes it (`$` as `$$`, `'` as `''`).
pub fn mask(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let escaped: Vec<String> = secrets
        .values()
        .flat_map(|v| {
            [
                v.replace('$', "$$"),
                v.replace('\'', "''"),
                v.replace('$', "$$").replace('\'', "''"),
            ]
        })
        .collect();
    let mut values: Vec<&str> = secrets
        .values()
        .map(String::as_str)
        .chain(escaped.iter().map(String::as_str))
        .filter(|v| v.len() >= 4)
        .collect();
    // Longest first: a value inside another is masked with it.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
        .into_iter()
        .fold(text.to_owned(), |t, v| t.replace(v, crate::records::MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_seal_open_and_stay_bound_to_their_compose() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let secrets = BTreeMap::from([("DB_PASSWORD".to_owned(), "hunter2-long".to_owned())]);
        let sealed = key.seal("web", &secrets).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"hunter"), "sealed, not encoded");
        assert_eq!(key.open("web", &sealed).unwrap(), secrets);
        assert!(key.open("other", &sealed).is_err(), "bound to its compose");
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(key.open("web", &damaged).is_err());
        assert!(key.open("web", &sealed[..5]).is_err());

        // The same key at the next start; another dir's key opens nothing.
        let again = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("web", &sealed).unwrap(), secrets);
        let other = SecretKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.open("web", &sealed).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A file that is not a key is refused, never replaced.
        std::fs::write(dir.path().join(KEY_FILE), "not a key!").unwrap();
        assert!(SecretKey::load_or_create(dir.path()).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(),
            "not a key!"
        );
    }

    #[test]
    fn bad_secrets_are_refused_and_values_masked() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(check(&one("DB_PASSWORD", "x")).is_ok());
        for bad in [one("1X", "v"), one("A-B", "v"), one("", "v"), one("A", "two\nlines")] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
        let s = BTreeMap::from([
            ("A".to_owned(), "s3cr3t-value".to_owned()),
            ("B".to_owned(), "no".to_owned()),
        ]);
        assert_eq!(mask("pw=s3cr3t-value; no", &s), "pw=********; no");
        let s = BTreeMap::from([("A".to_owned(), "a$b'c-d".to_owned())]);
        assert_eq!(mask("x: 'a$$b''c-d'", &s), "x: '********'");
    }
}
