//! The `health_checks` table: the latest result of each route's health
//! check, kept only while it describes the route as it is.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::routes::load_routes;
use super::sql::{db, json, now};
use crate::error::Result;
use crate::model::{HealthCheck, HealthStatus, Route, status_is_served};

const HEALTH_COLUMNS: &str = "route_id, status, detail, streak, updated_at";

fn row_to_health(r: &rusqlite::Row<'_>) -> rusqlite::Result<HealthStatus> {
    let status: String = r.get(1)?;
    Ok(HealthStatus {
        route_id: r.get::<_, i64>(0)? as u64,
        healthy: status_is_served(&status),
        status,
        detail: r.get(2)?,
        streak: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

/// Stores a result of `route_id` checked against `target` with `check`;
/// `None` (nothing written) when the route is gone or no longer has that
/// target and check.
pub(super) fn record(
    conn: &Connection,
    route_id: u64,
    (target, check): &(String, HealthCheck),
    status: &'static str,
    detail: String,
    streak: u32,
) -> Result<Option<HealthStatus>> {
    let at = now();
    let written = conn
        .execute(
            "INSERT INTO health_checks (route_id, status, detail, streak, created_at, updated_at)
             SELECT id, ?2, ?3, ?4, ?5, ?5 FROM routes WHERE id = ?1 AND target = ?6 AND health = ?7
             ON CONFLICT (route_id) DO UPDATE SET status = excluded.status, detail = excluded.detail,
                 streak = excluded.streak, updated_at = excluded.updated_at",
            params![route_id as i64, status, detail, streak, at, target, json(check)],
        )
        .map_err(db)?;
    if written == 0 {
        return Ok(None);
    }
    Ok(Some(HealthStatus {
        route_id,
        healthy: status_is_served(status),
        status: status.into(),
        detail,
        streak,
        updated_at: at,
    }))
}

/// The stored health of one route, if it was checked.
pub(super) fn of(conn: &Connection, route_id: u64) -> Result<Option<HealthStatus>> {
    conn.query_row(
        &format!("SELECT {HEALTH_COLUMNS} FROM health_checks WHERE route_id = ?1"),
        [route_id as i64],
        row_to_health,
    )
    .optional()
    .map_err(db)
}

/// Latest health of every checked route.
pub(super) fn all(conn: &Connection) -> Result<Vec<HealthStatus>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {HEALTH_COLUMNS} FROM health_checks WHERE route_id IS NOT NULL ORDER BY route_id"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], row_to_health).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

/// Drops the stored health of a removed route.
pub(super) fn forget(tx: &Transaction<'_>, route_id: u64) -> Result<()> {
    tx.execute("DELETE FROM health_checks WHERE route_id = ?1", [route_id as i64])
        .map_err(db)?;
    Ok(())
}

/// Drops the stored health of routes whose check no longer applies: gone,
/// no health check any more, or another target or check (a restarted check
/// resumes from what is stored, which must be about what it checks).
pub(super) fn forget_stale(tx: &Transaction<'_>, before: &[Route]) -> Result<()> {
    tx.execute(
        "DELETE FROM health_checks WHERE route_id IS NOT NULL AND route_id NOT IN (SELECT id FROM routes)",
        [],
    )
    .map_err(db)?;
    let after: BTreeMap<u64, Route> = load_routes(tx)?.into_iter().map(|r| (r.id, r)).collect();
    for old in before {
        let same = after
            .get(&old.id)
            .is_some_and(|new| new.health.is_some() && new.health == old.health && new.target == old.target);
        if !same {
            forget(tx, old.id)?;
        }
    }
    Ok(())
}
