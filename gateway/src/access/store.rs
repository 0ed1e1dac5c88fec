//! Where the identity document lives. [`IdentityStore`] is the seam for a
//! shared database later; [`FileIdentityStore`] keeps one JSON file in the
//! gateway's data dir, replaced atomically (write a temp file, fsync,
//! rename, fsync the directory), so a crash leaves the old or the new
//! document, never half of one.

use std::path::{Path, PathBuf};

use super::model::IdentityDoc;
use crate::error::{Error, Result};

/// File name of the identity document in the data dir.
pub const IDENTITY_FILE: &str = "identity.json";
/// Largest identity file read.
pub const MAX_IDENTITY_FILE: u64 = 64 * 1024 * 1024;

/// Loads and saves the whole identity document.
pub trait IdentityStore: Send + Sync {
    /// The stored document (empty if none yet).
    fn load(&self) -> Result<IdentityDoc>;
    /// Replaces the stored document; on error the old one stays.
    fn save(&self, doc: &IdentityDoc) -> Result<()>;
}

pub struct FileIdentityStore {
    path: PathBuf,
}

impl FileIdentityStore {
    pub fn new(data_dir: &Path) -> Self {
        FileIdentityStore {
            path: data_dir.join(IDENTITY_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::Identity(format!("{}: {message}", self.path.display()))
    }
}

impl IdentityStore for FileIdentityStore {
    fn load(&self) -> Result<IdentityDoc> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IdentityDoc::default()),
            Err(e) => return Err(self.err(e)),
        };
        if file.metadata().map_err(|e| self.err(e))?.len() > MAX_IDENTITY_FILE {
            return Err(self.err("file is too large"));
        }
        let doc: IdentityDoc = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| self.err(e))?;
        doc.validate().map_err(|e| self.err(e))?;
        Ok(doc)
    }

    fn save(&self, doc: &IdentityDoc) -> Result<()> {
        let dir = self.path.parent().ok_or_else(|| self.err("no parent directory"))?;
        // ops errors name the path already.
        let failed = |e: ops::Error| Error::Identity(e.to_string());
        ops::fs::ensure_private_dir(dir).map_err(failed)?;
        let mut json = serde_json::to_vec_pretty(doc).map_err(|e| self.err(e))?;
        json.push(b'\n');
        ops::fs::write_atomic(&self.path, &json, ops::fs::Access::Private).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileIdentityStore::new(dir.path());
        assert_eq!(store.load().unwrap(), IdentityDoc::default());
        let mut doc = IdentityDoc::default();
        doc.add_org("acme", None, None).unwrap();
        store.save(&doc).unwrap();
        assert_eq!(store.load().unwrap(), doc);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
        std::fs::write(store.path(), r#"{"orgs":{},"typo":1}"#).unwrap();
        assert!(store.load().is_err(), "unknown keys are errors");
        std::fs::write(store.path(), r#"{"hosts":{"a.test":"ghost"}}"#).unwrap();
        assert!(store.load().unwrap_err().to_string().contains("ghost"));
    }
}
