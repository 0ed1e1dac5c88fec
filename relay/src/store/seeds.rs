//! The `seeds` table: which seed routes (`--route` flags, `[[route]]` in
//! the config) were applied, so each is applied once, ever.

use rusqlite::{Connection, OptionalExtension, params};

use super::sql::{db, now};
use crate::error::Result;

/// Whether the seed (host, path, target) was applied, and the target the
/// store holds for its host and path, if any.
pub(super) fn state(conn: &Connection, host: &str, path: &str, target: &str) -> Result<(bool, Option<String>)> {
    let applied = conn
        .query_row(
            "SELECT 1 FROM seeds WHERE host = ?1 AND path = ?2 AND target = ?3",
            params![host, path, target],
            |_| Ok(()),
        )
        .optional()
        .map_err(db)?
        .is_some();
    let stored: Option<String> = conn
        .query_row(
            "SELECT target FROM routes WHERE host = ?1 AND path = ?2",
            params![host, path],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    Ok((applied, stored))
}

/// Records the seed as applied (again is a no-op).
pub(super) fn record(conn: &Connection, host: &str, path: &str, target: &str) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO seeds (host, path, target, applied_at) VALUES (?1, ?2, ?3, ?4)",
        params![host, path, target, now()],
    )
    .map_err(db)?;
    Ok(())
}
