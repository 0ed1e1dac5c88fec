//! The rolling online backup: a whole copy of the store, taken with
//! SQLite's backup API while the relay runs, at start and whenever the
//! journal has grown enough, after which the journal starts empty again.
//! Backup + journal hold every acknowledged change: what a recovery
//! rebuilds from.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::changes::current_version;
use super::files::{StoreFiles, sync_dir};
use super::sql::db;
use crate::error::{Error, Result};

/// Copies the store behind `conn` to its backup file; returns the version
/// the backup holds. The copy is written beside it, checked and fsynced,
/// then renamed over the previous backup, so a crash at any point leaves
/// the old backup or the new one, never half of one.
pub(super) fn take(conn: &Connection, files: &StoreFiles) -> Result<u64> {
    let tmp = files.sibling(&format!(
        ".{}.tmp",
        files.backup.file_name().and_then(|n| n.to_str()).unwrap_or("backup")
    ));
    let failed = |what: String| Error::Store(format!("backup to {}: {what}", files.backup.display()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut dst = Connection::open(&tmp).map_err(db)?;
        {
            let backup = Backup::new(conn, &mut dst).map_err(db)?;
            // All pages in one step: the caller holds the store's lock, so
            // nothing writes meanwhile.
            match backup.step(-1).map_err(db)? {
                StepResult::Done => {}
                other => return Err(failed(format!("the copy did not finish ({other:?})"))),
            }
        }
        // A plain file (no -wal beside it) that opens read-only anywhere.
        dst.execute_batch("PRAGMA journal_mode = DELETE").map_err(db)?;
        let version = current_version(&dst)?;
        let check: String = dst.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(db)?;
        if check != "ok" {
            return Err(failed(format!("the copy fails its check: {check}")));
        }
        drop(dst);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| failed(e.to_string()))?;
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| failed(e.to_string()))?;
        std::fs::rename(&tmp, &files.backup).map_err(|e| failed(e.to_string()))?;
        sync_dir(&files.dir);
        Ok(version)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The version a backup file holds (`None`: there is none), after checking
/// it is a whole SQLite file. The error says what is wrong with it.
pub(super) fn version_of(path: &Path) -> std::result::Result<Option<u64>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("it fails SQLite's integrity check ({check})"));
    }
    current_version(&conn).map(Some).map_err(|e| e.to_string())
}
