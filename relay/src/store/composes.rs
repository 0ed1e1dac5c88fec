//! The `composes`, `compose_versions` and `deployments` tables: compose
//! apps, their immutable versions, and the record of each deployment.
//!
//! Every write is also journaled as an [`Entry`](super::journal::Entry)
//! holding the rows as they are after it, so replaying the journal is a
//! plain upsert in order.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::sql::{db, json, now};
use crate::error::{Error, Result};
use crate::records::{Compose, ComposeVersion, DeployStatus, Deployment};

/// A version as written, with its sealed secrets (base64 in the journal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub compose: Compose,
    pub version: ComposeVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

const COMPOSE_COLUMNS: &str = "id, name, description, version, created_at, updated_at";

fn row_to_compose(r: &rusqlite::Row<'_>) -> rusqlite::Result<Compose> {
    Ok(Compose {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        description: r.get(2)?,
        version: r.get::<_, i64>(3)? as u64,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

/// A JSON column read back; a value this build can't read is an error
/// naming the column, never a panic.
fn parse<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into()))
}

const VERSION_COLUMNS: &str = "compose_id, version, yaml, resolved, secret_names, actor, created_at";

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<ComposeVersion> {
    Ok(ComposeVersion {
        compose_id: r.get::<_, i64>(0)? as u64,
        version: r.get::<_, i64>(1)? as u64,
        yaml: r.get(2)?,
        resolved: r.get(3)?,
        secret_names: parse(r, 4)?,
        actor: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const DEPLOYMENT_COLUMNS: &str = "d.id, c.name, d.version, d.generation, d.status, d.reason, d.detail, d.images, \
                                  d.output, d.health, d.actor, d.created_at, d.updated_at";

fn row_to_deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    let status: String = r.get(4)?;
    Ok(Deployment {
        id: r.get::<_, i64>(0)? as u64,
        compose: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        generation: r.get::<_, i64>(3)? as u64,
        status: status
            .parse()
            .map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into()))?,
        reason: r.get(5)?,
        detail: r.get(6)?,
        images: parse(r, 7)?,
        output: r.get(8)?,
        health: parse(r, 9)?,
        actor: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

pub(super) fn compose(conn: &Connection, name: &str) -> Result<Compose> {
    conn.query_row(
        &format!("SELECT {COMPOSE_COLUMNS} FROM composes WHERE name = ?1"),
        [name],
        row_to_compose,
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| Error::NotFound(format!("compose {name:?}")))
}

pub(super) fn composes(conn: &Connection) -> Result<Vec<Compose>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COMPOSE_COLUMNS} FROM composes ORDER BY name"))
        .map_err(db)?;
    let rows = stmt.query_map([], row_to_compose).map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

/// Version `version` of `compose`, with its sealed secrets.
pub(super) fn version(conn: &Connection, compose: &Compose, version: u64) -> Result<(ComposeVersion, Option<Vec<u8>>)> {
    conn.query_row(
        &format!(
            "SELECT {VERSION_COLUMNS}, sealed_secrets FROM compose_versions WHERE compose_id = ?1 AND version = ?2"
        ),
        params![compose.id as i64, version as i64],
        |r| Ok((row_to_version(r)?, r.get::<_, Option<Vec<u8>>>(7)?)),
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| {
        Error::NotFound(format!(
            "version {version} of {:?} (the latest is {})",
            compose.name, compose.version
        ))
    })
}

/// Every version of `compose`, newest first.
pub(super) fn versions(conn: &Connection, compose: &Compose) -> Result<Vec<ComposeVersion>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM compose_versions WHERE compose_id = ?1 ORDER BY version DESC"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([compose.id as i64], row_to_version).map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

/// Writes a new version of `name` (the compose is made on its first),
/// returning what the journal records.
pub(super) fn add_version(
    tx: &Transaction<'_>,
    name: &str,
    description: Option<&str>,
    (yaml, resolved): (&str, &str),
    secret_names: &[String],
    sealed: Option<&[u8]>,
    actor: &str,
) -> Result<VersionRecord> {
    let at = now();
    tx.execute(
        "INSERT INTO composes (name, description, version, created_at, updated_at) VALUES (?1, '', 0, ?2, ?2)
         ON CONFLICT (name) DO NOTHING",
        params![name, at],
    )
    .map_err(db)?;
    let mut compose = compose(tx, name)?;
    compose.version += 1;
    compose.updated_at = at.clone();
    if let Some(d) = description {
        compose.description = d.to_owned();
    }
    tx.execute(
        "UPDATE composes SET version = ?2, description = ?3, updated_at = ?4 WHERE id = ?1",
        params![compose.id as i64, compose.version as i64, compose.description, at],
    )
    .map_err(db)?;
    let version = ComposeVersion {
        compose_id: compose.id,
        version: compose.version,
        yaml: yaml.to_owned(),
        resolved: resolved.to_owned(),
        secret_names: secret_names.to_vec(),
        actor: actor.to_owned(),
        created_at: at,
    };
    let record = VersionRecord {
        compose,
        version,
        sealed: sealed.map(|s| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)),
    };
    put_version(tx, &record)?;
    Ok(record)
}

/// Writes `record` as it is (also what a journal replay does).
pub(super) fn put_version(conn: &Connection, record: &VersionRecord) -> Result<()> {
    let c = &record.compose;
    conn.execute(
        "INSERT INTO composes (id, name, description, version, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET name = ?2, description = ?3, version = ?4, updated_at = ?6",
        params![
            c.id as i64,
            c.name,
            c.description,
            c.version as i64,
            c.created_at,
            c.updated_at
        ],
    )
    .map_err(db)?;
    let v = &record.version;
    let sealed = match &record.sealed {
        Some(s) => Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s)
                .map_err(|e| Error::Store(format!("sealed secrets of {} version {}: {e}", c.name, v.version)))?,
        ),
        None => None,
    };
    conn.execute(
        "INSERT INTO compose_versions (compose_id, version, yaml, resolved, secret_names, sealed_secrets, actor, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (compose_id, version) DO NOTHING",
        params![
            v.compose_id as i64,
            v.version as i64,
            v.yaml,
            v.resolved,
            json(&v.secret_names),
            sealed,
            v.actor,
            v.created_at
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// A new deployment of `version` of `compose`, deploying, in the next
/// generation.
pub(super) fn add_deployment(
    tx: &Transaction<'_>,
    compose: &Compose,
    version: u64,
    reason: &str,
    actor: &str,
) -> Result<Deployment> {
    let generation: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(generation), 0) + 1 FROM deployments WHERE compose_id = ?1",
            [compose.id as i64],
            |r| r.get(0),
        )
        .map_err(db)?;
    let at = now();
    tx.execute(
        "INSERT INTO deployments (compose_id, version, generation, status, reason, actor, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            compose.id as i64,
            version as i64,
            generation,
            DeployStatus::Deploying.as_str(),
            reason,
            actor,
            at
        ],
    )
    .map_err(db)?;
    deployment(tx, tx.last_insert_rowid() as u64)
}

/// Writes `d` as it is (an update, or a journal replay).
pub(super) fn put_deployment(conn: &Connection, d: &Deployment) -> Result<()> {
    let compose = compose(conn, &d.compose)?;
    conn.execute(
        "INSERT INTO deployments (id, compose_id, version, generation, status, reason, detail, images, output, health,
                                  actor, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET status = ?5, detail = ?7, images = ?8, output = ?9, health = ?10, updated_at = ?13",
        params![
            d.id as i64,
            compose.id as i64,
            d.version as i64,
            d.generation as i64,
            d.status.as_str(),
            d.reason,
            d.detail,
            json(&d.images),
            d.output,
            json(&d.health),
            d.actor,
            d.created_at,
            d.updated_at
        ],
    )
    .map_err(db)?;
    Ok(())
}

pub(super) fn deployment(conn: &Connection, id: u64) -> Result<Deployment> {
    conn.query_row(
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN composes c ON c.id = d.compose_id WHERE d.id = ?1"
        ),
        [id as i64],
        row_to_deployment,
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| Error::NotFound(format!("deployment {id}")))
}

/// Deployments of `compose`, newest first, at most `limit`.
pub(super) fn deployments(conn: &Connection, compose: &Compose, limit: usize) -> Result<Vec<Deployment>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN composes c ON c.id = d.compose_id
             WHERE d.compose_id = ?1 ORDER BY d.id DESC LIMIT ?2"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![compose.id as i64, limit as i64], row_to_deployment)
        .map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

/// Deployments left pending or deploying (the relay stopped during them).
pub(super) fn unfinished(conn: &Connection) -> Result<Vec<Deployment>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN composes c ON c.id = d.compose_id
             WHERE d.status IN ('pending', 'deploying') ORDER BY d.id"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], row_to_deployment).map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

/// Removes `name` with its versions and deployments.
pub(super) fn remove(conn: &Connection, name: &str) -> Result<()> {
    // The children first: a connection without foreign keys (a recovery)
    // would leave them behind.
    for table in ["deployments", "compose_versions"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE compose_id IN (SELECT id FROM composes WHERE name = ?1)"),
            [name],
        )
        .map_err(db)?;
    }
    let gone = conn
        .execute("DELETE FROM composes WHERE name = ?1", [name])
        .map_err(db)?;
    if gone == 0 {
        return Err(Error::NotFound(format!("compose {name:?}")));
    }
    Ok(())
}
