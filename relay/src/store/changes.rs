//! The `changes` table: the audit log every write appends to, read back
//! as history and replayed to rebuild the route set of any version.

use std::collections::BTreeMap;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction, params};
use serde_json::Value;

use super::sql::{db, json};
use crate::error::{Error, Result};
use crate::model::{Change, ChangeAction, Route};

/// What a write did, for the change log.
pub(super) struct Written {
    pub action: ChangeAction,
    pub route_id: Option<u64>,
    pub before: Value,
    pub after: Value,
}

/// Stored as the same words the log always held (`add`, ...), so stores
/// written before the enum read back unchanged.
impl ToSql for ChangeAction {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

/// A word this build does not know is an error naming it, never a panic.
impl FromSql for ChangeAction {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        text.parse().map_err(|e: String| FromSqlError::Other(e.into()))
    }
}

/// The latest version (0: nothing written yet).
pub(super) fn current_version(conn: &Connection) -> Result<u64> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM changes", [], |r| r.get(0))
        .map_err(db)?;
    Ok(v.unwrap_or(0) as u64)
}

/// Appends `w` to the log with the checksum of the set after it; returns
/// the new version.
pub(super) fn append(tx: &Transaction<'_>, at: &str, actor: &str, w: &Written, checksum: &str) -> Result<u64> {
    tx.execute(
        "INSERT INTO changes (at, actor, action, route_id, before, after, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            at,
            actor,
            w.action,
            w.route_id.map(|i| i as i64),
            json(&w.before),
            json(&w.after),
            checksum
        ],
    )
    .map_err(db)?;
    Ok(tx.last_insert_rowid() as u64)
}

const CHANGE_COLUMNS: &str = "version, at, actor, action, route_id, before, after, checksum";

fn row_to_change(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    let parse = |i: usize| -> rusqlite::Result<Value> {
        let s: String = r.get(i)?;
        Ok(serde_json::from_str(&s).unwrap_or(Value::Null))
    };
    Ok(Change {
        version: r.get::<_, i64>(0)? as u64,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        route_id: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
        before: parse(5)?,
        after: parse(6)?,
        checksum: r.get(7)?,
    })
}

/// Newest first, at most `limit`, older than `before`.
pub(super) fn history(conn: &Connection, limit: i64, before: i64) -> Result<Vec<Change>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CHANGE_COLUMNS} FROM changes WHERE version < ?1 ORDER BY version DESC LIMIT ?2"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(params![before, limit], row_to_change).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

/// Replays the change log up to `version`.
pub(super) fn routes_at(conn: &Connection, version: u64) -> Result<Vec<Route>> {
    let mut stmt = conn
        .prepare_cached("SELECT action, route_id, after FROM changes WHERE version <= ?1 ORDER BY version")
        .map_err(db)?;
    let rows = stmt
        .query_map([version as i64], |r| {
            Ok((
                r.get::<_, ChangeAction>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db)?;
    let mut set: BTreeMap<u64, Route> = BTreeMap::new();
    let corrupt = |v: &str| Error::Store(format!("change log entry is not a route: {v}"));
    for row in rows {
        let (action, route_id, after) = row.map_err(db)?;
        match action {
            ChangeAction::Add | ChangeAction::Update => {
                let r: Route = serde_json::from_str(&after).map_err(|_| corrupt(&after))?;
                set.insert(r.id, r);
            }
            ChangeAction::Remove => {
                if let Some(id) = route_id {
                    set.remove(&(id as u64));
                }
            }
            ChangeAction::Rollback => {
                let all: Vec<Route> = serde_json::from_str(&after).map_err(|_| corrupt(&after))?;
                set = all.into_iter().map(|r| (r.id, r)).collect();
            }
        }
    }
    Ok(set.into_values().collect())
}
