//! The `routes` table: reading, inserting, changing and removing routes,
//! and the checksum of a whole route set.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use super::changes::Written;
use super::sql::{db, json, json_value, now};
use crate::error::{Error, Result};
use crate::model::{ChangeAction, NewRoute, Route};

/// SHA-256 (hex) of a route set, timestamps excluded, order independent.
pub fn set_checksum(routes: &[Route]) -> String {
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in sorted {
        ctx.update(json(&r.content()).as_bytes());
        ctx.update(b"\n");
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

const ROUTE_COLUMNS: &str =
    "id, host, path, priority, target, policy, middlewares, health, enabled, created_at, updated_at, owner";

fn row_to_route(row: &rusqlite::Row<'_>) -> rusqlite::Result<Route> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    fn parse<T: serde::de::DeserializeOwned>(i: usize, s: String) -> rusqlite::Result<T> {
        serde_json::from_str(&s)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
    }
    let health: Option<String> = row.get(7)?;
    Ok(Route {
        id: row.get::<_, i64>(0)? as u64,
        host: text(1)?,
        path: text(2)?,
        priority: row.get(3)?,
        target: text(4)?,
        policy: parse(5, text(5)?)?,
        middlewares: parse(6, text(6)?)?,
        health: match health {
            Some(h) => Some(parse(7, h)?),
            None => None,
        },
        enabled: row.get(8)?,
        created_at: text(9)?,
        updated_at: text(10)?,
        owner: row.get(11)?,
    })
}

/// Every route, by id.
pub(super) fn load_routes(conn: &Connection) -> Result<Vec<Route>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY id"))
        .map_err(db)?;
    let rows = stmt.query_map([], row_to_route).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

pub(super) fn load_route(conn: &Connection, id: u64) -> Result<Route> {
    conn.query_row(
        &format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?1"),
        [id as i64],
        row_to_route,
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| Error::NotFound(format!("route {id}")))
}

pub(super) fn count_enabled(conn: &Connection) -> Result<usize> {
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM routes WHERE enabled", [], |r| r.get(0))
        .map_err(db)?;
    Ok(n as usize)
}

/// Inserts `r`; an `id` of 0 lets SQLite pick the next one. Returns the id.
pub(super) fn insert_route(tx: &Transaction<'_>, r: &Route) -> Result<u64> {
    let id = (r.id != 0).then_some(r.id as i64);
    let result = tx.execute(
        &format!("INSERT INTO routes ({ROUTE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            id,
            r.host,
            r.path,
            r.priority,
            r.target,
            json(&r.policy),
            json(&r.middlewares),
            r.health.as_ref().map(json),
            r.enabled,
            r.created_at,
            r.updated_at,
            r.owner
        ],
    );
    result.map_err(|e| conflict_or(e, &r.host, &r.path))?;
    Ok(tx.last_insert_rowid() as u64)
}

fn conflict_or(e: rusqlite::Error, host: &str, path: &str) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::Conflict(format!(
                "a route for {host}{} already exists",
                if path == "/" { "" } else { path }
            ))
        }
        _ => db(e),
    }
}

/// Inserts a validated new route; the change log entry says `add`.
pub(super) fn insert_new(tx: &Transaction<'_>, new: NewRoute) -> Result<Written> {
    let at = now();
    let fresh = Route {
        id: 0,
        host: new.host,
        path: new.path,
        priority: new.priority,
        target: new.target,
        policy: new.policy,
        middlewares: new.middlewares,
        health: new.health,
        enabled: new.enabled,
        created_at: at.clone(),
        updated_at: at,
        owner: new.owner,
    };
    let id = insert_route(tx, &fresh)?;
    let route = load_route(tx, id)?;
    Ok(Written {
        action: ChangeAction::Add,
        route_id: Some(route.id),
        before: Value::Null,
        after: json_value(&route),
    })
}

/// Gives route `id` the (validated) fields of `new`; returns the route
/// after the change.
pub(super) fn update_route(tx: &Transaction<'_>, id: u64, new: &NewRoute) -> Result<Route> {
    tx.execute(
        "UPDATE routes SET host = ?2, path = ?3, priority = ?4, target = ?5, policy = ?6, middlewares = ?7,
         health = ?8, enabled = ?9, updated_at = ?10, owner = ?11 WHERE id = ?1",
        params![
            id as i64,
            new.host,
            new.path,
            new.priority,
            new.target,
            json(&new.policy),
            json(&new.middlewares),
            new.health.as_ref().map(json),
            new.enabled,
            now(),
            new.owner
        ],
    )
    .map_err(|e| conflict_or(e, &new.host, &new.path))?;
    load_route(tx, id)
}

pub(super) fn delete_route(tx: &Transaction<'_>, id: u64) -> Result<()> {
    tx.execute("DELETE FROM routes WHERE id = ?1", [id as i64])
        .map_err(db)?;
    Ok(())
}

/// Makes the route set exactly `target` (ids kept); returns the set after.
pub(super) fn replace_all(tx: &Transaction<'_>, target: &[Route]) -> Result<Vec<Route>> {
    tx.execute("DELETE FROM routes", []).map_err(db)?;
    let at = now();
    for r in target {
        insert_route(
            tx,
            &Route {
                updated_at: at.clone(),
                ..r.clone()
            },
        )?;
    }
    load_routes(tx)
}
