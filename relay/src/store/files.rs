//! The files of one store, all named after its database file, and the lock
//! that keeps a recovery and a running relay apart.
//!
//! For `relay.db`: `relay.journal` (every acknowledged change since the
//! backup, see `journal`), `relay.backup` (an online backup, see `backup`),
//! `relay.lock` (held shared by every open store, exclusively by a
//! recovery), and SQLite's own `relay.db-wal` and `relay.db-shm`.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a store's files live.
#[derive(Debug, Clone)]
pub struct StoreFiles {
    pub db: PathBuf,
    pub journal: PathBuf,
    pub backup: PathBuf,
    pub lock: PathBuf,
    /// The directory holding them all.
    pub dir: PathBuf,
}

impl StoreFiles {
    pub fn new(db: &Path) -> StoreFiles {
        let dir = db
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        StoreFiles {
            db: db.to_owned(),
            journal: db.with_extension("journal"),
            backup: db.with_extension("backup"),
            lock: db.with_extension("lock"),
            dir,
        }
    }

    /// SQLite's write-ahead log and its index, next to the database.
    pub fn sqlite_companions(&self) -> [PathBuf; 2] {
        let name = |suffix: &str| {
            let mut s = self.db.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        [name("-wal"), name("-shm")]
    }

    /// A file name in the store's directory.
    pub fn sibling(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Opens (creating, mode 0600) the lock file.
fn lock_file(files: &StoreFiles) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&files.lock)
        .map_err(|e| Error::Store(format!("{}: {e}", files.lock.display())))
}

/// Held by every open store (shared, so handles in one process coexist);
/// released when the store's last handle is dropped.
pub(super) fn lock_shared(files: &StoreFiles) -> Result<File> {
    let file = lock_file(files)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Store(format!(
            "{} is being recovered ({} is held); start the relay once `routehub relay recover` is done",
            files.db.display(),
            files.lock.display()
        ))),
        Err(TryLockError::Error(e)) => Err(Error::Store(format!("{}: {e}", files.lock.display()))),
    }
}

/// Held by a recovery: no store is open while it replaces the files.
pub(super) fn lock_exclusive(files: &StoreFiles) -> Result<File> {
    let file = lock_file(files)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Store(format!(
            "a relay is using {} ({} is held): stop it before recovering the store",
            files.db.display(),
            files.lock.display()
        ))),
        Err(TryLockError::Error(e)) => Err(Error::Store(format!("{}: {e}", files.lock.display()))),
    }
}

/// Makes a rename or a new file in `dir` survive a crash.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
