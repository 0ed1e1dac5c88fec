//! Is the store whole? Checked before anything is written to it, at every
//! start and by a recovery: the file is a SQLite database (a 0-byte or
//! foreign file where `relay.db` should be is damage; only a missing file is
//! a fresh store), its pages pass `PRAGMA integrity_check`, and it holds
//! every change its journal and its backup say were acknowledged (a
//! damaged write-ahead log loses the newest commits without a word from
//! SQLite: the journal is how that is noticed).

use std::io::Read;
use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::backup;
use super::files::StoreFiles;
use super::journal::{self, Scan};
use super::sql::db;
use crate::error::{Error, Result};

/// What every SQLite database file starts with.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The first page's header is this long; a shorter file is cut short.
const SQLITE_HEADER_LEN: u64 = 100;
/// Problems `integrity_check` lists at most (the message stays readable).
const MAX_PROBLEMS: usize = 5;

/// A store that passed every check, open and not yet written to.
pub(super) struct Inspected {
    pub conn: Connection,
    /// The journal, if there is one.
    pub journal: Option<Scan>,
    /// The latest version in `relay.db`.
    pub version: u64,
}

fn damaged(path: &Path, problem: impl Into<String>) -> Error {
    Error::Damaged {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Whether `path` exists; a file that does but can't be a store is damage.
fn check_file(path: &Path) -> Result<bool> {
    let io = |e: std::io::Error| Error::Store(format!("{}: {e}", path.display()));
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(damaged(path, "is empty (0 bytes); a store is never written empty"));
    }
    let mut magic = [0u8; 16];
    let read = file.read(&mut magic).map_err(io)?;
    if read < magic.len() || &magic != SQLITE_MAGIC {
        return Err(damaged(path, "is not a SQLite database (its first bytes are wrong)"));
    }
    if len < SQLITE_HEADER_LEN {
        return Err(damaged(path, format!("is cut short ({len} bytes)")));
    }
    Ok(true)
}

/// SQLite's own verdict on every page.
fn check_pages(conn: &Connection, path: &Path) -> Result<()> {
    let problems = (|| {
        let mut stmt = conn.prepare(&format!("PRAGMA integrity_check({MAX_PROBLEMS})"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
    })();
    match problems {
        Ok(p) if p == ["ok"] => Ok(()),
        Ok(p) => Err(damaged(
            path,
            format!("fails SQLite's integrity check: {}", p.join("; ")),
        )),
        Err(e) => match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Err(damaged(path, format!("can't be read as a database: {e}")))
            }
            _ => Err(Error::Store(format!("{}: {e}", path.display()))),
        },
    }
}

/// The latest version, read without writing (a store from before the
/// first migration has none).
fn stored_version(conn: &Connection) -> Result<u64> {
    let has_log = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(db)?
        .is_some();
    if !has_log {
        return Ok(0);
    }
    super::changes::current_version(conn)
}

/// Every change the journal and the backup vouch for is in `relay.db`,
/// with the same checksum.
fn check_history(conn: &Connection, files: &StoreFiles, journal: Option<&Scan>, version: u64) -> Result<()> {
    let db_name = file_name(&files.db);
    match backup::version_of(&files.backup) {
        Ok(Some(b)) if b > version => {
            return Err(damaged(
                &files.db,
                format!(
                    "is at version {version}, but its backup {} is at version {b}: changes the relay \
                     acknowledged are missing from {db_name}",
                    file_name(&files.backup)
                ),
            ));
        }
        Ok(_) => {}
        // The store may still be whole; a new backup replaces this one.
        Err(e) => tracing::warn!(backup = %files.backup.display(), error = %e, "the store's backup is unusable"),
    }
    let Some(journal) = journal else {
        return Ok(());
    };
    if let Some(last) = journal.last_version()
        && last > version
    {
        return Err(damaged(
            &files.db,
            format!(
                "is at version {version}, but its journal {} holds changes the relay acknowledged up to \
                 version {last}: {} of them are missing from {db_name} (a damaged or lost write-ahead log?)",
                file_name(&files.journal),
                last - version
            ),
        ));
    }
    for change in journal.changes() {
        let stored: Option<String> = conn
            .query_row(
                "SELECT checksum FROM changes WHERE version = ?1",
                [change.version as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if stored.as_deref() != Some(change.checksum.as_str()) {
            return Err(damaged(
                &files.db,
                format!(
                    "differs from its journal {} at version {}: {}",
                    file_name(&files.journal),
                    change.version,
                    match stored {
                        None => "the version is missing".to_owned(),
                        Some(_) => "another route set was recorded".to_owned(),
                    }
                ),
            ));
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Opens the store at `files` and checks it, writing nothing. A missing
/// file is created only with `create` (a fresh store); otherwise it is
/// checked as if empty. Until the caller turns it back on, closing the
/// connection does not checkpoint, so a damaged write-ahead log stays on
/// disk as it was, for the recovery.
pub(super) fn inspect(files: &StoreFiles, create: bool) -> Result<Inspected> {
    let path = &files.db;
    let existed = check_file(path)?;
    let journal = journal::scan(&files.journal)?;
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if !existed && !create {
        // Nothing to open: judge the journal and backup against an empty store.
        let conn = Connection::open_in_memory().map_err(db)?;
        check_history(&conn, files, journal.as_ref(), 0)?;
        return Ok(Inspected {
            conn,
            journal,
            version: 0,
        });
    }
    if !existed {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
    if existed {
        check_pages(&conn, path)?;
    }
    let version = stored_version(&conn).map_err(|e| match e {
        Error::Store(m) => damaged(path, format!("can't be read: {m}")),
        other => other,
    })?;
    check_history(&conn, files, journal.as_ref(), version)?;
    Ok(Inspected { conn, journal, version })
}
