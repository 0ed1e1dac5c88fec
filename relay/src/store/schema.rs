//! The store's schema: migrations applied in order, `PRAGMA user_version`
//! counting how many ran.

use std::path::Path;

use rusqlite::Connection;

use super::sql::db;
use crate::error::{Error, Result};

/// Schema migrations, applied in order; `PRAGMA user_version` says how
/// many ran. Never edit one that shipped: append.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE routes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    target TEXT NOT NULL,
    policy TEXT NOT NULL DEFAULT 'null',
    middlewares TEXT NOT NULL DEFAULT '[]',
    health TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (host, path)
);
CREATE TABLE changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    route_id INTEGER,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    checksum TEXT NOT NULL
);
CREATE TABLE composes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL DEFAULT 1,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    yaml TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    compose_id INTEGER REFERENCES composes (id),
    compose_json TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE deployment_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    log TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE health_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route_id INTEGER UNIQUE,
    deployment_id INTEGER REFERENCES deployments (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    streak INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    // Seeds (`--route` flags, `[[route]]` in the config) applied once
    // each, so a route the user removed through the API stays removed.
    r#"
CREATE TABLE seeds (
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    target TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (host, path, target)
);
INSERT OR IGNORE INTO seeds (host, path, target, applied_at)
    SELECT json_extract(after, '$.host'), json_extract(after, '$.path'), json_extract(after, '$.target'), at
    FROM changes
    WHERE actor = 'config' AND action = 'add' AND json_valid(after)
      AND json_extract(after, '$.host') IS NOT NULL
      AND json_extract(after, '$.path') IS NOT NULL
      AND json_extract(after, '$.target') IS NOT NULL;
"#,
    // Routes made from container labels name their container; the others
    // (API, CLI, config) have none and are never touched by label sync.
    r#"
ALTER TABLE routes ADD COLUMN owner TEXT;
"#,
    // Compose deployments. The first migration's tables for them were
    // never written to; they are replaced by ones shaped for immutable
    // versions and deployment records (`deployments` keeps an integer
    // `id`, which `health_checks.deployment_id` refers to).
    r#"
DROP TABLE IF EXISTS deployment_logs;
DROP TABLE IF EXISTS deployments;
DROP TABLE IF EXISTS composes;
CREATE TABLE composes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
DROP TABLE IF EXISTS compose_versions;
CREATE TABLE compose_versions (
    compose_id INTEGER NOT NULL REFERENCES composes (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    yaml TEXT NOT NULL,
    resolved TEXT NOT NULL,
    secret_names TEXT NOT NULL DEFAULT '[]',
    sealed_secrets BLOB,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (compose_id, version)
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    compose_id INTEGER NOT NULL REFERENCES composes (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    images TEXT NOT NULL DEFAULT '{}',
    output TEXT NOT NULL DEFAULT '',
    health TEXT NOT NULL DEFAULT '[]',
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_by_compose ON deployments (compose_id, id);
"#,
];

/// Brings the schema of `conn` (the file at `path`) up to date. A store
/// written by a newer build is refused rather than read half-understood.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    // The write lock first, then the check: two processes opening a new
    // store at once must not both run a migration.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    if applied as usize > MIGRATIONS.len() {
        return Err(Error::Store(format!(
            "{} was written by a newer Routehub (schema {applied}, this build knows {})",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for sql in MIGRATIONS.iter().skip(applied.max(0) as usize) {
        tx.execute_batch(sql).map_err(db)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len()))
        .map_err(db)?;
    tx.commit().map_err(db)
}
