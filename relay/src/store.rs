//! The relay's embedded store: SQLite (WAL, fsync on every commit) in the
//! data dir, the source of truth for routes, with an audit log that can
//! rebuild the route set of any version.
//!
//! Every write runs in one transaction that also appends to `changes`; the
//! new state is published (route snapshot + event) before the lock is
//! released, so subscribers see versions strictly in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::model::{Change, HealthCheck, HealthStatus, NewRoute, Route, RoutePatch, status_is_served, validate};
use crate::routes::RouteSet;

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
];

/// Most changes one history call returns.
pub const MAX_HISTORY: usize = 1000;

/// Most enabled routes the store holds: what one gateway session accepts.
/// A write that would go over it is refused here, with a clear error,
/// rather than pushed and refused by every gateway.
pub const MAX_ENABLED_ROUTES: usize = tunnel_proto::limits::MAX_ROUTES_PER_SESSION;

/// Events a subscriber may fall behind by before it is told to resync.
/// Events are small (see [`ChangeEvent`]), so a stalled subscriber pins at
/// most this many of them.
pub const EVENT_BUFFER: usize = 1024;

/// Something that happened to the configuration, in commit order.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Change(ChangeEvent),
    /// A route's health check flipped.
    Health(HealthStatus),
}

/// A committed change as the event feed carries it: which version, what
/// kind, which route. The before/after JSON stays in the store (it can be
/// the whole route set, for a rollback); subscribers read what they need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeEvent {
    pub version: u64,
    pub at: String,
    pub actor: String,
    /// `add`, `update`, `remove` or `rollback`.
    pub action: &'static str,
    pub route_id: Option<u64>,
    /// SHA-256 (hex) of the whole route set after the change.
    pub checksum: String,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    routes: Arc<RouteSet>,
    events: broadcast::Sender<Event>,
    /// [`MAX_ENABLED_ROUTES`], lowered by tests.
    route_limit: usize,
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn db(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

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
    "id, host, path, priority, target, policy, middlewares, health, enabled, created_at, updated_at";

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
    })
}

fn load_routes(conn: &Connection) -> Result<Vec<Route>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY id"))
        .map_err(db)?;
    let rows = stmt.query_map([], row_to_route).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

fn load_route(conn: &Connection, id: u64) -> Result<Route> {
    conn.query_row(
        &format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?1"),
        [id as i64],
        row_to_route,
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| Error::NotFound(format!("route {id}")))
}

fn count_enabled(conn: &Connection) -> Result<usize> {
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM routes WHERE enabled", [], |r| r.get(0))
        .map_err(db)?;
    Ok(n as usize)
}

fn current_version(conn: &Connection) -> Result<u64> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM changes", [], |r| r.get(0))
        .map_err(db)?;
    Ok(v.unwrap_or(0) as u64)
}

/// Inserts `r`; an `id` of 0 lets SQLite pick the next one. Returns the id.
fn insert_route(tx: &Transaction<'_>, r: &Route) -> Result<u64> {
    let id = (r.id != 0).then_some(r.id as i64);
    let result = tx.execute(
        &format!("INSERT INTO routes ({ROUTE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
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
            r.updated_at
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

/// What a write did, for the change log.
struct Written {
    action: &'static str,
    route_id: Option<u64>,
    before: Value,
    after: Value,
}

impl Store {
    /// Opens (creating if needed) `path`, migrates it, publishes its routes.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        // FULL: a commit is on disk before the API answers, so a kill -9 or a
        // power cut never loses an acknowledged write.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db)?;
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
        tx.commit().map_err(db)?;
        let routes = Arc::new(RouteSet::default());
        routes.publish(current_version(&conn)?, &load_routes(&conn)?);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            routes,
            events,
            route_limit: MAX_ENABLED_ROUTES,
        })
    }

    /// The same store with another route limit (tests of the limit).
    #[cfg(test)]
    fn with_route_limit(mut self, limit: usize) -> Store {
        self.route_limit = limit;
        self
    }

    /// The published routes (what the proxy and the sessions use).
    pub fn routes(&self) -> Arc<RouteSet> {
        self.routes.clone()
    }

    /// Every later event, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| Error::Store(format!("store task failed: {e}")))?
    }

    /// One transaction: the write, then the change log entry; then publish.
    async fn write(
        &self,
        actor: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<Written> + Send + 'static,
    ) -> Result<Change> {
        let (actor, routes, events) = (actor.to_owned(), self.routes.clone(), self.events.clone());
        let limit = self.route_limit;
        self.with(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let enabled_before = count_enabled(&tx)?;
            let w = f(&tx)?;
            let all = load_routes(&tx)?;
            let enabled = all.iter().filter(|r| r.enabled).count();
            // Only writes that add enabled routes are refused: removing or
            // disabling must work even in a store already over the limit.
            if enabled > limit && enabled > enabled_before {
                return Err(Error::Limit(format!(
                    "at most {limit} enabled routes (what a gateway accepts from one relay); \
                     this change would make {enabled}: remove or disable routes first"
                )));
            }
            let checksum = set_checksum(&all);
            let at = now();
            tx.execute(
                "INSERT INTO changes (at, actor, action, route_id, before, after, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![at, actor, w.action, w.route_id.map(|i| i as i64), json(&w.before), json(&w.after), checksum],
            )
            .map_err(db)?;
            let version = tx.last_insert_rowid() as u64;
            tx.commit().map_err(db)?;
            routes.publish(version, &all);
            let _ = events.send(Event::Change(ChangeEvent {
                version,
                at: at.clone(),
                actor: actor.clone(),
                action: w.action,
                route_id: w.route_id,
                checksum: checksum.clone(),
            }));
            let change = Change {
                version,
                at,
                actor,
                action: w.action.into(),
                route_id: w.route_id,
                before: w.before,
                after: w.after,
                checksum,
            };
            Ok(change)
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<Route>> {
        self.with(|c| load_routes(c)).await
    }

    pub async fn get(&self, id: u64) -> Result<Route> {
        self.with(move |c| load_route(c, id)).await
    }

    /// Current version and the checksum of the current set.
    pub async fn version(&self) -> Result<(u64, String)> {
        self.with(|c| Ok((current_version(c)?, set_checksum(&load_routes(c)?))))
            .await
    }

    pub async fn add(&self, mut new: NewRoute, actor: &str) -> Result<Change> {
        validate(&mut new).map_err(Error::Invalid)?;
        self.write(actor, move |tx| insert_new(tx, new)).await
    }

    pub async fn update(&self, id: u64, patch: RoutePatch, actor: &str) -> Result<Change> {
        self.write(actor, move |tx| {
            let before = load_route(tx, id)?;
            let mut new = patch.apply(&before);
            validate(&mut new).map_err(Error::Invalid)?;
            tx.execute(
                "UPDATE routes SET host = ?2, path = ?3, priority = ?4, target = ?5, policy = ?6, middlewares = ?7,
                 health = ?8, enabled = ?9, updated_at = ?10 WHERE id = ?1",
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
                    now()
                ],
            )
            .map_err(|e| conflict_or(e, &new.host, &new.path))?;
            forget_stale_health(tx, std::slice::from_ref(&before))?;
            let after = load_route(tx, id)?;
            Ok(Written {
                action: "update",
                route_id: Some(id),
                before: json_value(&before),
                after: json_value(&after),
            })
        })
        .await
    }

    pub async fn remove(&self, id: u64, actor: &str) -> Result<Change> {
        self.write(actor, move |tx| {
            let before = load_route(tx, id)?;
            tx.execute("DELETE FROM routes WHERE id = ?1", [id as i64])
                .map_err(db)?;
            tx.execute("DELETE FROM health_checks WHERE route_id = ?1", [id as i64])
                .map_err(db)?;
            Ok(Written {
                action: "remove",
                route_id: Some(id),
                before: json_value(&before),
                after: Value::Null,
            })
        })
        .await
    }

    /// Makes the route set what it was at `version` (0: empty), as a new
    /// change on top of the log.
    pub async fn rollback(&self, version: u64, actor: &str) -> Result<Change> {
        self.write(actor, move |tx| {
            let current = current_version(tx)?;
            if version > current {
                return Err(Error::NotFound(format!("version {version} (the latest is {current})")));
            }
            let target = routes_at(tx, version)?;
            let before = load_routes(tx)?;
            tx.execute("DELETE FROM routes", []).map_err(db)?;
            let at = now();
            for r in &target {
                insert_route(
                    tx,
                    &Route {
                        updated_at: at.clone(),
                        ..r.clone()
                    },
                )?;
            }
            forget_stale_health(tx, &before)?;
            Ok(Written {
                action: "rollback",
                route_id: None,
                before: json_value(&before),
                after: json_value(&load_routes(tx)?),
            })
        })
        .await
    }

    /// The route set at `version`, rebuilt from the change log; a version
    /// past the latest is not found.
    pub async fn routes_at(&self, version: u64) -> Result<Vec<Route>> {
        self.with(move |c| {
            let current = current_version(c)?;
            if version > current {
                return Err(Error::NotFound(format!("version {version} (the latest is {current})")));
            }
            routes_at(c, version)
        })
        .await
    }

    /// Newest first, at most `limit` (≤ [`MAX_HISTORY`]), older than `before`.
    pub async fn history(&self, limit: usize, before: Option<u64>) -> Result<Vec<Change>> {
        let limit = limit.clamp(1, MAX_HISTORY) as i64;
        let before = before.map(|b| b as i64).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT version, at, actor, action, route_id, before, after, checksum FROM changes
                     WHERE version < ?1 ORDER BY version DESC LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![before, limit], row_to_change).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    /// Records a health-check result of `route_id`, as checked against
    /// `target` with `check`. Nothing is written (`None`) when the route is
    /// gone or no longer has that target and check: a result that lands
    /// after the route was removed or edited would describe something that
    /// is not there. With `flipped`, the result is also published as an
    /// event.
    pub async fn record_health(
        &self,
        route_id: u64,
        (target, check): (String, HealthCheck),
        status: &'static str,
        detail: String,
        streak: u32,
        flipped: bool,
    ) -> Result<Option<HealthStatus>> {
        let events = self.events.clone();
        self.with(move |c| {
            let at = now();
            let written = c
                .execute(
                    "INSERT INTO health_checks (route_id, status, detail, streak, created_at, updated_at)
                     SELECT id, ?2, ?3, ?4, ?5, ?5 FROM routes WHERE id = ?1 AND target = ?6 AND health = ?7
                     ON CONFLICT (route_id) DO UPDATE SET status = excluded.status, detail = excluded.detail,
                         streak = excluded.streak, updated_at = excluded.updated_at",
                    params![route_id as i64, status, detail, streak, at, target, json(&check)],
                )
                .map_err(db)?;
            if written == 0 {
                return Ok(None);
            }
            let h = HealthStatus {
                route_id,
                healthy: status_is_served(status),
                status: status.into(),
                detail,
                streak,
                updated_at: at,
            };
            if flipped {
                let _ = events.send(Event::Health(h.clone()));
            }
            Ok(Some(h))
        })
        .await
    }

    /// The stored health of one route, if it was checked.
    pub async fn health_of(&self, route_id: u64) -> Result<Option<HealthStatus>> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {HEALTH_COLUMNS} FROM health_checks WHERE route_id = ?1"),
                [route_id as i64],
                row_to_health,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    /// Latest health of every checked route.
    pub async fn health(&self) -> Result<Vec<HealthStatus>> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {HEALTH_COLUMNS} FROM health_checks WHERE route_id IS NOT NULL ORDER BY route_id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], row_to_health).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    /// Applies the seed routes (`--route` flags, `[[route]]` in the
    /// config) that were never applied before; returns how many it added.
    ///
    /// The store is the source of truth and seeds only start it: each
    /// distinct seed (host, path, target) is applied once, ever. A seeded
    /// route the user removed stays removed after a restart; a seed added to
    /// the command line later is added once; a seed whose host and path the
    /// store already has is recorded without touching the stored route.
    pub async fn seed(&self, seeds: Vec<NewRoute>) -> Result<usize> {
        let mut added = 0;
        for mut seed in seeds {
            validate(&mut seed).map_err(|e| Error::Route {
                route: format!("{}{}", seed.host, seed.path),
                reason: e,
            })?;
            let key = (seed.host.clone(), seed.path.clone(), seed.target.clone());
            let state = self
                .with(move |c| {
                    let applied = c
                        .query_row(
                            "SELECT 1 FROM seeds WHERE host = ?1 AND path = ?2 AND target = ?3",
                            params![key.0, key.1, key.2],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(db)?
                        .is_some();
                    let stored: Option<String> = c
                        .query_row(
                            "SELECT target FROM routes WHERE host = ?1 AND path = ?2",
                            params![key.0, key.1],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(db)?;
                    Ok((applied, stored))
                })
                .await?;
            match state {
                (true, _) => {}
                (false, Some(stored)) => {
                    if stored != seed.target {
                        tracing::warn!(
                            route = %format!("{}{}", seed.host, seed.path),
                            %stored,
                            flag = %seed.target,
                            "the store keeps its target for this route; change it with `routehub routes edit`"
                        );
                    }
                    let (host, path, target) = (seed.host, seed.path, seed.target);
                    self.with(move |c| record_seed(c, &host, &path, &target)).await?;
                }
                (false, None) => match self.add_seed(seed).await {
                    Ok(_) => added += 1,
                    // Not recorded: tried again at the next start.
                    Err(Error::Limit(e)) => tracing::warn!(error = %e, "a route from the config was not added"),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(added)
    }

    /// Adds a seed route and records the seed, in one transaction.
    async fn add_seed(&self, new: NewRoute) -> Result<Change> {
        self.write("config", move |tx| {
            record_seed(tx, &new.host, &new.path, &new.target)?;
            insert_new(tx, new)
        })
        .await
    }
}

fn record_seed(c: &Connection, host: &str, path: &str, target: &str) -> Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO seeds (host, path, target, applied_at) VALUES (?1, ?2, ?3, ?4)",
        params![host, path, target, now()],
    )
    .map_err(db)?;
    Ok(())
}

/// Inserts a validated new route; the change log entry says `add`.
fn insert_new(tx: &Transaction<'_>, new: NewRoute) -> Result<Written> {
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
    };
    let id = insert_route(tx, &fresh)?;
    let route = load_route(tx, id)?;
    Ok(Written {
        action: "add",
        route_id: Some(route.id),
        before: Value::Null,
        after: json_value(&route),
    })
}

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

/// Drops the stored health of routes whose check no longer applies: gone,
/// no health check any more, or another target or check (a restarted check
/// resumes from what is stored, which must be about what it checks).
fn forget_stale_health(tx: &Transaction<'_>, before: &[Route]) -> Result<()> {
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
            tx.execute("DELETE FROM health_checks WHERE route_id = ?1", [old.id as i64])
                .map_err(db)?;
        }
    }
    Ok(())
}

fn json_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

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

/// Replays the change log up to `version`.
fn routes_at(conn: &Connection, version: u64) -> Result<Vec<Route>> {
    let mut stmt = conn
        .prepare_cached("SELECT action, route_id, after FROM changes WHERE version <= ?1 ORDER BY version")
        .map_err(db)?;
    let rows = stmt
        .query_map([version as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db)?;
    let mut set: BTreeMap<u64, Route> = BTreeMap::new();
    let corrupt = |v: &str| Error::Store(format!("change log entry is not a route: {v}"));
    for row in rows {
        let (action, route_id, after) = row.map_err(db)?;
        match action.as_str() {
            "add" | "update" => {
                let r: Route = serde_json::from_str(&after).map_err(|_| corrupt(&after))?;
                set.insert(r.id, r);
            }
            "remove" => {
                if let Some(id) = route_id {
                    set.remove(&(id as u64));
                }
            }
            "rollback" => {
                let all: Vec<Route> = serde_json::from_str(&after).map_err(|_| corrupt(&after))?;
                set = all.into_iter().map(|r| (r.id, r)).collect();
            }
            other => return Err(Error::Store(format!("unknown change action {other:?}"))),
        }
    }
    Ok(set.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str) -> NewRoute {
        serde_json::from_value(serde_json::json!({ "host": host, "target": "8080" })).unwrap()
    }

    #[tokio::test]
    async fn versions_replay_and_rollback_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        assert_eq!(store.version().await.unwrap().0, 0);
        let a = store.add(route("a.test"), "t").await.unwrap();
        let b = store.add(route("b.test"), "t").await.unwrap();
        let id_a = a.route_id.unwrap();
        store
            .update(
                id_a,
                RoutePatch {
                    priority: Some(7),
                    ..Default::default()
                },
                "t",
            )
            .await
            .unwrap();
        store.remove(b.route_id.unwrap(), "t").await.unwrap();
        assert_eq!(store.version().await.unwrap().0, 4);
        assert_eq!(store.routes_at(0).await.unwrap(), vec![]);
        let at2 = store.routes_at(2).await.unwrap();
        assert_eq!(set_checksum(&at2), b.checksum, "replay equals what version 2 recorded");
        let back = store.rollback(2, "t").await.unwrap();
        assert_eq!(back.checksum, b.checksum);
        assert_eq!(back.version, 5);
        assert_eq!(store.routes().snapshot().version, 5, "published");
        // Ids keep their meaning after a rollback.
        let now: Vec<u64> = store.list().await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(now, [id_a, b.route_id.unwrap()]);
        assert!(matches!(store.rollback(99, "t").await, Err(Error::NotFound(_))));
        assert!(matches!(store.add(route("a.test"), "t").await, Err(Error::Conflict(_))));
    }

    fn disabled(host: &str) -> NewRoute {
        NewRoute {
            enabled: false,
            ..route(host)
        }
    }

    fn enable(on: bool) -> RoutePatch {
        RoutePatch {
            enabled: Some(on),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn enabled_routes_are_bounded_on_add_enable_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = Store::open(&path).unwrap().with_route_limit(3);
        let a = store.add(route("a.test"), "t").await.unwrap().route_id.unwrap();
        store.add(route("b.test"), "t").await.unwrap();
        let c = store.add(route("c.test"), "t").await.unwrap();
        let err = store.add(route("d.test"), "t").await.unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
        assert!(err.to_string().contains("at most 3 enabled routes"), "{err}");
        assert_eq!(store.version().await.unwrap().0, 3, "nothing was written");
        // Disabled routes don't count; enabling one does.
        let d = store.add(disabled("d.test"), "t").await.unwrap().route_id.unwrap();
        assert!(matches!(store.update(d, enable(true), "t").await, Err(Error::Limit(_))));
        store.update(a, enable(false), "t").await.unwrap();
        store.update(d, enable(true), "t").await.unwrap();

        // A store written with a higher limit (3 enabled, the limit now 2):
        // removing still works, getting back over it by a rollback doesn't.
        let store = Store::open(&path).unwrap().with_route_limit(2);
        store.remove(d, "t").await.unwrap();
        assert_eq!(store.routes().snapshot().specs.len(), 2);
        let err = store.rollback(c.version, "t").await.unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
        assert_eq!(store.routes().snapshot().specs.len(), 2);
    }

    #[tokio::test]
    async fn the_route_limit_is_what_a_gateway_session_accepts() {
        assert_eq!(MAX_ENABLED_ROUTES, tunnel_proto::limits::MAX_ROUTES_PER_SESSION);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        {
            // Fill up to one below the limit in one transaction (adding them
            // one by one would fsync 10 000 times).
            let mut conn = store.conn.lock().unwrap();
            let tx = conn.transaction().unwrap();
            for i in 1..MAX_ENABLED_ROUTES {
                tx.execute(
                    "INSERT INTO routes (host, path, target, created_at, updated_at) VALUES (?1, '/', 'http://127.0.0.1:1', '', '')",
                    [format!("r{i}.test")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        store.add(route("last.test"), "t").await.unwrap();
        assert_eq!(store.routes().snapshot().specs.len(), MAX_ENABLED_ROUTES);
        let err = store.add(route("over.test"), "t").await.unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
        store.add(disabled("over.test"), "t").await.unwrap();
    }

    fn seed_route(host: &str, port: u16) -> NewRoute {
        serde_json::from_value(serde_json::json!({ "host": host, "target": port.to_string() })).unwrap()
    }

    async fn hosts(store: &Store) -> Vec<String> {
        store.list().await.unwrap().into_iter().map(|r| r.host).collect()
    }

    #[tokio::test]
    async fn each_seed_applies_once_ever() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.seed(vec![seed_route("a.test", 1)]).await.unwrap(), 1);
        // Restarts with the same flags add nothing, and a removed seeded
        // route stays removed.
        assert_eq!(store.seed(vec![seed_route("a.test", 1)]).await.unwrap(), 0);
        let a = store.list().await.unwrap()[0].id;
        store.remove(a, "api").await.unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.seed(vec![seed_route("a.test", 1)]).await.unwrap(), 0);
        assert!(hosts(&store).await.is_empty());
        // A flag added later is added once.
        let flags = vec![seed_route("a.test", 1), seed_route("b.test", 2)];
        assert_eq!(store.seed(flags.clone()).await.unwrap(), 1);
        assert_eq!(store.seed(flags).await.unwrap(), 0);
        assert_eq!(hosts(&store).await, ["b.test"]);
        // A seed for a route the store already has (added through the API)
        // leaves the stored route alone and is not applied later either.
        store.add(seed_route("c.test", 3), "api").await.unwrap();
        assert_eq!(store.seed(vec![seed_route("c.test", 4)]).await.unwrap(), 0);
        let c = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.host == "c.test")
            .unwrap();
        assert_eq!(c.target, "http://127.0.0.1:3");
        store.remove(c.id, "api").await.unwrap();
        assert_eq!(store.seed(vec![seed_route("c.test", 4)]).await.unwrap(), 0);
        assert_eq!(hosts(&store).await, ["b.test"]);
    }

    #[tokio::test]
    async fn stores_from_before_the_seeds_table_count_config_routes_as_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = Store::open(&path).unwrap();
        store.seed(vec![seed_route("a.test", 1)]).await.unwrap();
        let a = store.list().await.unwrap()[0].id;
        store.remove(a, "api").await.unwrap();
        drop(store);
        // What a store written before the seeds table looks like.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE seeds; PRAGMA user_version = 1").unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.seed(vec![seed_route("a.test", 1)]).await.unwrap(), 0);
        assert!(
            hosts(&store).await.is_empty(),
            "the route the user removed stays removed"
        );
    }

    fn check() -> HealthCheck {
        serde_json::from_str("{}").unwrap()
    }

    fn checked(host: &str) -> NewRoute {
        NewRoute {
            health: Some(check()),
            ..route(host)
        }
    }

    /// What a check of `checked(..)` probed.
    fn probed() -> (String, HealthCheck) {
        ("http://127.0.0.1:8080".into(), check())
    }

    #[tokio::test]
    async fn health_results_are_kept_only_for_the_route_and_check_they_are_about() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let mut events = store.subscribe();
        let a = store.add(checked("a.test"), "t").await.unwrap().route_id.unwrap();
        let b = store.add(checked("b.test"), "t").await.unwrap().route_id.unwrap();
        let h = store
            .record_health(a, probed(), "failing", "refused".into(), 1, false)
            .await
            .unwrap()
            .expect("recorded");
        assert!(h.healthy, "failing is still served");
        assert_eq!(store.health_of(a).await.unwrap(), Some(h));

        // A result that lands after its route was removed is dropped, and
        // so is one checked against the target the route had before an edit.
        store.remove(b, "t").await.unwrap();
        let late = store.record_health(b, probed(), "unhealthy", "refused".into(), 3, true);
        assert_eq!(late.await.unwrap(), None);
        let edit = RoutePatch {
            target: Some("9090".into()),
            ..Default::default()
        };
        store.update(a, edit, "t").await.unwrap();
        assert_eq!(
            store.health_of(a).await.unwrap(),
            None,
            "an edited target starts afresh"
        );
        let stale = store.record_health(a, probed(), "unhealthy", "refused".into(), 3, true);
        assert_eq!(stale.await.unwrap(), None);
        assert!(store.health().await.unwrap().is_empty());
        let fresh = ("http://127.0.0.1:9090".to_owned(), check());
        assert!(
            store
                .record_health(a, fresh, "unhealthy", "x".into(), 3, true)
                .await
                .unwrap()
                .is_some()
        );
        // Only the recorded flip reached the feed.
        let mut health_events = 0;
        while let Ok(e) = events.try_recv() {
            health_events += matches!(e, Event::Health(_)) as usize;
        }
        assert_eq!(health_events, 1);
        // A rollback to before the edit forgets the result about 9090.
        store.rollback(2, "t").await.unwrap();
        assert!(store.health().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let store = Store::open(&path).unwrap();
            store.add(checked("a.test"), "t").await.unwrap();
            store
                .record_health(1, probed(), "unhealthy", "down".into(), 3, true)
                .await
                .unwrap()
                .expect("recorded");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert_eq!(store.routes().snapshot().version, 1);
        let health = store.health().await.unwrap();
        assert!(!health[0].healthy);
        assert_eq!((health[0].status.as_str(), health[0].streak), ("unhealthy", 3));
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("newer Routehub"), "{err}");
    }

    #[tokio::test]
    async fn subscribers_see_changes_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let mut events = store.subscribe();
        let writers: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.add(route(&format!("h{i}.test")), "t").await.unwrap() })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let mut last = 0;
        for _ in 0..20 {
            let Event::Change(c) = events.recv().await.unwrap() else {
                panic!("not a change")
            };
            assert_eq!(c.version, last + 1);
            last = c.version;
        }
    }

    #[tokio::test]
    async fn events_stay_small_whatever_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        for i in 0..50 {
            store.add(route(&format!("h{i}.test")), "t").await.unwrap();
        }
        let mut events = store.subscribe();
        // A rollback's change holds every route before and after; its event
        // names the version.
        let change = store.rollback(1, "t").await.unwrap();
        assert!(json(&change).len() > 10_000);
        let Event::Change(e) = events.recv().await.unwrap() else {
            panic!("not a change")
        };
        assert_eq!((e.version, e.action, e.route_id), (51, "rollback", None));
        assert!(json(&Event::Change(e)).len() < 300);
        assert!(matches!(store.routes_at(52).await, Err(Error::NotFound(_))));
        assert_eq!(store.routes_at(51).await.unwrap().len(), 1);
    }
}
