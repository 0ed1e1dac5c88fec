//! Where ACME state lives: the account credentials and every issued
//! certificate with its key, per ACME directory, so a restarted gateway
//! serves what it has without new orders.
//!
//! [`CertStore`] is object-safe and async so a shared store (PostgreSQL,
//! for gateway replicas) can implement it later; [`CertStore::lock`] is the
//! per-hostname lock such a store maps to an advisory lock, so one replica
//! orders a given certificate. [`DirStore`] is the default: files under the
//! data dir.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pem::CertBundle;
use ops::fs::{Access, ensure_private_dir, write_atomic};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Held while one hostname's certificate is being obtained; released on
/// drop.
pub struct StoreLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl StoreLock {
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        StoreLock(Box::new(guard))
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreLock")
    }
}

/// Persistent ACME state. `issuer` names the ACME directory (see
/// [`issuer_key`]): accounts and certificates of staging and production
/// never mix. Writes are atomic: a reader sees the old value or the new
/// one, never a torn certificate or a key without its certificate.
pub trait CertStore: Send + Sync + fmt::Debug + 'static {
    /// The serialized account credentials (they include the account key).
    fn load_account<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    fn save_account<'a>(&'a self, issuer: &'a str, credentials: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    fn load_cert<'a>(&'a self, issuer: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<CertBundle>>>;
    fn save_cert<'a>(&'a self, issuer: &'a str, name: &'a str, cert: CertBundle) -> BoxFuture<'a, Result<()>>;
    /// The issuer's rate-limit state (order budget, failed validations,
    /// backoff), so a restart does not forget it; opaque bytes.
    fn load_state<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Replaces the state atomically. Callers serialize their saves.
    fn save_state<'a>(&'a self, issuer: &'a str, state: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    /// Every hostname with a stored certificate.
    fn list_certs<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
    /// Exclusive right to order a certificate for `name`, across every
    /// gateway sharing this store. Waits for a holder to release it, up to
    /// an implementation-defined deadline.
    fn lock<'a>(&'a self, issuer: &'a str, name: &'a str) -> BoxFuture<'a, Result<StoreLock>>;
}

/// A filesystem-safe key for an ACME directory URL:
/// `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org-directory`.
pub fn issuer_key(directory_url: &str) -> String {
    let rest = directory_url.split_once("://").map(|(_, r)| r).unwrap_or(directory_url);
    let mut key: String = rest
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    while key.ends_with('-') {
        key.pop();
    }
    key.trim_start_matches('.').to_owned()
}

/// Longest wait for another process holding a hostname's lock: longer
/// than any order takes.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(300);
const LOCK_POLL: Duration = Duration::from_millis(25);
/// The issuer's rate-limit state, next to its account.
const STATE_FILE: &str = "state.json";

/// Files under `<data dir>/acme/<issuer>/`: `account.json`, `state.json`
/// (rate-limit state) and `certs/<hostname>.pem` (key + chain in one
/// file), all mode 0600 and written atomically; `locks/<hostname>.lock` are advisory locks.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store under `data_dir/acme`. Nothing is created until written.
    pub fn new(data_dir: &Path) -> Self {
        DirStore {
            root: data_dir.join("acme"),
        }
    }

    fn issuer_dir(&self, issuer: &str) -> Result<PathBuf> {
        Ok(self.root.join(safe_component(issuer)?))
    }

    fn cert_path(&self, issuer: &str, name: &str) -> Result<PathBuf> {
        Ok(self
            .issuer_dir(issuer)?
            .join("certs")
            .join(format!("{}.pem", safe_component(name)?)))
    }
}

/// Refuses anything that could leave the directory.
fn safe_component(s: &str) -> Result<&str> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(s)
    } else {
        Err(Error::Store(format!("{s:?} is not a valid store key")))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Store(format!("store task failed: {e}")))?
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file(path)(e)),
    }
}

impl CertStore for DirStore {
    fn load_account<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = self.issuer_dir(issuer)?.join("account.json");
            blocking(move || read_optional(&path)).await
        })
    }

    fn save_account<'a>(&'a self, issuer: &'a str, credentials: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let dir = self.issuer_dir(issuer)?;
            blocking(move || {
                ensure_private_dir(&dir)?;
                write_atomic(&dir.join("account.json"), &credentials, Access::Private).map_err(Error::from)
            })
            .await
        })
    }

    fn load_state<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = self.issuer_dir(issuer)?.join(STATE_FILE);
            blocking(move || read_optional(&path)).await
        })
    }

    fn save_state<'a>(&'a self, issuer: &'a str, state: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let dir = self.issuer_dir(issuer)?;
            blocking(move || {
                ensure_private_dir(&dir)?;
                write_atomic(&dir.join(STATE_FILE), &state, Access::Private).map_err(Error::from)
            })
            .await
        })
    }

    fn load_cert<'a>(&'a self, issuer: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<CertBundle>>> {
        Box::pin(async move {
            let path = self.cert_path(issuer, name)?;
            blocking(move || {
                let Some(bytes) = read_optional(&path)? else {
                    return Ok(None);
                };
                let text = String::from_utf8(bytes).map_err(|_| Error::BadFile {
                    path: path.clone(),
                    reason: "not UTF-8 PEM".into(),
                })?;
                CertBundle::from_pem(&text)
                    .map(Some)
                    .map_err(|reason| Error::BadFile { path, reason })
            })
            .await
        })
    }

    fn save_cert<'a>(&'a self, issuer: &'a str, name: &'a str, cert: CertBundle) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.cert_path(issuer, name)?;
            blocking(move || {
                if let Some(dir) = path.parent() {
                    ensure_private_dir(dir)?;
                }
                write_atomic(&path, cert.to_pem().as_bytes(), Access::Private).map_err(Error::from)
            })
            .await
        })
    }

    fn list_certs<'a>(&'a self, issuer: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let dir = self.issuer_dir(issuer)?.join("certs");
            blocking(move || {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(Error::file(&dir)(e)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(Error::file(&dir))?;
                    let file = entry.file_name();
                    let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pem")) else {
                        continue; // temp files of interrupted writes, strays
                    };
                    if safe_component(name).is_ok() {
                        names.push(name.to_owned());
                    }
                }
                names.sort();
                Ok(names)
            })
            .await
        })
    }

    fn lock<'a>(&'a self, issuer: &'a str, name: &'a str) -> BoxFuture<'a, Result<StoreLock>> {
        Box::pin(async move {
            let dir = self.issuer_dir(issuer)?.join("locks");
            let path = dir.join(format!("{}.lock", safe_component(name)?));
            let file = blocking({
                let path = path.clone();
                move || {
                    ensure_private_dir(&dir)?;
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(Error::file(&path))
                }
            })
            .await?;
            // An advisory lock (flock): exclusive between processes, and
            // between two opens in one process too.
            let deadline = tokio::time::Instant::now() + LOCK_TIMEOUT;
            loop {
                match file.try_lock() {
                    Ok(()) => return Ok(StoreLock::new(file)),
                    Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(LOCK_POLL).await;
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(Error::Store(format!(
                            "{} held by another process for over {LOCK_TIMEOUT:?}",
                            path.display()
                        )));
                    }
                    Err(std::fs::TryLockError::Error(e)) => return Err(Error::file(&path)(e)),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(name: &str) -> CertBundle {
        crate::pem::test_bundle(name)
    }

    #[test]
    fn issuer_keys_are_path_safe() {
        assert_eq!(
            issuer_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org-directory"
        );
        assert_eq!(issuer_key("https://127.0.0.1:14000/dir"), "127.0.0.1-14000-dir");
        assert!(safe_component(&issuer_key("https://../../etc/")).is_ok());
        assert!(safe_component("../x").is_err());
        assert!(safe_component("a/b").is_err());
    }

    #[tokio::test]
    async fn stores_privately_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        assert!(store.load_account("ca").await.unwrap().is_none());
        assert!(store.load_cert("ca", "a.test").await.unwrap().is_none());
        assert!(store.list_certs("ca").await.unwrap().is_empty());
        store.save_account("ca", b"{}".to_vec()).await.unwrap();
        assert!(store.load_state("ca").await.unwrap().is_none());
        store.save_state("ca", b"[1]".to_vec()).await.unwrap();
        assert_eq!(store.load_state("ca").await.unwrap().as_deref(), Some(&b"[1]"[..]));
        let b = bundle("a.test");
        store.save_cert("ca", "a.test", b.clone()).await.unwrap();
        assert_eq!(store.load_cert("ca", "a.test").await.unwrap(), Some(b));
        assert_eq!(store.list_certs("ca").await.unwrap(), ["a.test"]);
        assert!(store.list_certs("other-ca").await.unwrap().is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in ["acme/ca/account.json", "acme/ca/state.json", "acme/ca/certs/a.test.pem"] {
                let mode = std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{p}");
            }
        }
        assert!(store.save_cert("ca", "../evil", bundle("x.test")).await.is_err());
    }

    #[tokio::test]
    async fn a_torn_file_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let b = bundle("a.test");
        store.save_cert("ca", "a.test", b.clone()).await.unwrap();
        let path = dir.path().join("acme/ca/certs/a.test.pem");
        let pem = b.to_pem();
        std::fs::write(&path, &pem[..pem.len() / 3]).unwrap();
        let err = store.load_cert("ca", "a.test").await.unwrap_err().to_string();
        assert!(err.contains("a.test.pem"), "{err}");
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let first = store.lock("ca", "a.test").await.unwrap();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.lock("ca", "a.test").await.map(|_| ()) })
        };
        // Another name is independent.
        let _other = store.lock("ca", "b.test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "second holder got the lock while the first held it"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("lock released on drop")
            .unwrap()
            .unwrap();
    }
}
