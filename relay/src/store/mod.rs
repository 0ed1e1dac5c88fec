//! The relay's embedded store: SQLite (WAL, fsync on every commit) in the
//! data dir, the source of truth for routes, with an audit log that can
//! rebuild the route set of any version.
//!
//! Every write runs in one transaction that also appends to `changes`; the
//! new state is published (route snapshot + event) before the lock is
//! released, so subscribers see versions strictly in order.
//!
//!
//! Nothing acknowledged is lost without a word: after the commit, and
//! before the answer, each change is also appended to a journal file and
//! fsynced; a rolling online backup bounds the journal. At open the store
//! is checked (a SQLite file, every page sound, every journaled change
//! present) before anything is written to it, and a damaged store is
//! refused with the command that rebuilds it from backup + journal
//! ([`recover`]).
//!
//! One file per concern, none importing another in a circle: `sql`
//! (helpers), `schema` (migrations), `routes`, `changes` (the log and its
//! replay), `health`, `seeds`, `files` (names and the lock), `journal`,
//! `backup`, `integrity` (the checks at open), `recover`. This file holds
//! the [`Store`] handle and wires them into transactions.

mod backup;
mod changes;
mod composes;
pub mod files;
mod health;
mod integrity;
pub mod journal;
mod recover;
#[cfg(test)]
mod recovery_tests;
mod routes;
mod schema;
mod seeds;
mod sql;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::model::{Change, ChangeAction, HealthCheck, HealthStatus, NewRoute, Route, RoutePatch, validate};
use crate::records::{Compose, ComposeVersion, DeployEvent, Deployment};
use crate::routes::RouteSet;
use changes::Written;
use files::StoreFiles;
use journal::{Entry, Journal, Seed};
use sql::{db, json_value};

pub use composes::VersionRecord;
pub use recover::{Recovery, recover};
pub use routes::set_checksum;
pub(crate) use sql::now;

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

/// Journal records after which the store takes a new backup and empties
/// the journal (see `journal` and `backup`): what bounds the journal.
pub const ROTATE_RECORDS: u64 = 1000;
/// Journal bytes after which the same happens (a rollback record holds the
/// whole route set twice).
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
const _: () = assert!(ROTATE_BYTES < journal::MAX_JOURNAL / 4);

/// Something that happened to the configuration, in commit order.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Change(ChangeEvent),
    /// A route's health check flipped.
    Health(HealthStatus),
    /// A compose or one of its deployments changed.
    Deploy(DeployEvent),
}

/// A committed change as the event feed carries it: which version, what
/// kind, which route. The before/after JSON stays in the store (it can be
/// the whole route set, for a rollback); subscribers read what they need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeEvent {
    pub version: u64,
    pub at: String,
    pub actor: String,
    pub action: ChangeAction,
    pub route_id: Option<u64>,
    /// SHA-256 (hex) of the whole route set after the change.
    pub checksum: String,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    routes: Arc<RouteSet>,
    events: broadcast::Sender<Event>,
    /// [`MAX_ENABLED_ROUTES`], lowered by tests.
    route_limit: usize,
}

/// What the store's lock guards: the database, its journal and when to
/// back up next.
struct Inner {
    conn: Connection,
    journal: Journal,
    files: StoreFiles,
    /// Journal records that trigger a backup ([`ROTATE_RECORDS`]; lowered
    /// by tests).
    rotate_records: u64,
    /// The journal's record count at which the next backup is due: after
    /// a failed one, `rotate_records` later again.
    rotate_at: u64,
    /// The journal missed a change (its append failed) and no backup
    /// covered it yet: the next write takes a backup first.
    needs_backup: bool,
    /// Held shared while the store is open: keeps a recovery out.
    _lock: std::fs::File,
}

impl Inner {
    /// Backs the store up and empties the journal, which the backup now
    /// covers. On an error the journal keeps growing and this is tried
    /// again after as many records again.
    fn rotate(&mut self) -> Result<u64> {
        let version = backup::take(&self.conn, &self.files)?;
        self.journal.reset(version).map_err(|e| {
            self.needs_backup = true;
            Error::Store(format!("{}: {e}", self.journal.path().display()))
        })?;
        self.needs_backup = false;
        self.rotate_at = self.rotate_records;
        tracing::debug!(version, "store backed up; journal emptied");
        Ok(version)
    }

    /// Puts committed `entries` in the second place an acknowledgement
    /// needs: the journal, or if it can't be written, a new backup.
    fn journal(&mut self, entries: &[Entry]) -> Result<()> {
        let appended = self.journal.append(entries);
        match appended {
            Ok(()) => {
                let due = self.journal.records() >= self.rotate_at || self.journal.bytes() >= ROTATE_BYTES;
                if due && let Err(e) = self.rotate() {
                    tracing::warn!(error = %e, "the store's rolling backup failed; the journal keeps every change meanwhile");
                    self.rotate_at = self.journal.records() + self.rotate_records;
                }
                Ok(())
            }
            Err(journal_error) => {
                self.needs_backup = true;
                self.rotate().map(|_| ()).map_err(|backup_error| {
                    Error::Store(format!(
                        "the change is in {} but neither in its journal ({journal_error}) nor in a backup \
                         ({backup_error}); check the disk",
                        self.files.db.display()
                    ))
                })
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) `path`, checks it, migrates it, backs it
    /// up, publishes its routes.
    ///
    /// A missing file is a fresh store. A file that is empty, not SQLite,
    /// fails `PRAGMA integrity_check`, or lacks changes its journal or
    /// backup hold (acknowledged, then lost) is refused with
    /// [`Error::Damaged`], which names the recovery command; nothing is
    /// written to it first.
    pub fn open(path: &Path) -> Result<Store> {
        let files = StoreFiles::new(path);
        let lock = files::lock_shared(&files)?;
        let inspected = integrity::inspect(&files, true)?;
        let mut conn = inspected.conn;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        if let Some(tail) = inspected.journal.as_ref().and_then(|j| j.tail.clone()) {
            // A crash while appending (the change it carried was committed
            // here, never acknowledged) or later damage; relay.db was found
            // whole, and the backup taken below covers it all.
            tracing::warn!(journal = %files.journal.display(), %tail, "the store's journal ends in a damaged record; relay.db holds every change, so it is started afresh");
            keep_aside(&files.journal, "torn");
        }
        // FULL: a commit is on disk before the API answers, so a kill -9 or a
        // power cut never loses an acknowledged write.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(db)?;
        schema::migrate(&mut conn, path)?;
        // Whole: closing may checkpoint again.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
            .map_err(db)?;
        let version = backup::take(&conn, &files)?;
        let journal = Journal::create(&files.journal, version)
            .map_err(|e| Error::Store(format!("{}: {e}", files.journal.display())))?;
        let routes = Arc::new(RouteSet::default());
        routes.publish(changes::current_version(&conn)?, &routes::load_routes(&conn)?);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Store {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                journal,
                files,
                rotate_records: ROTATE_RECORDS,
                rotate_at: ROTATE_RECORDS,
                needs_backup: false,
                _lock: lock,
            })),
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

    /// The same store taking a backup every `records` journal records
    /// (tests of the rolling backup).
    #[cfg(test)]
    fn with_rotation_every(self, records: u64) -> Store {
        let mut inner = self.lock();
        (inner.rotate_records, inner.rotate_at) = (records, records);
        drop(inner);
        self
    }

    #[cfg(test)]
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn with_inner<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| Error::Store(format!("store task failed: {e}")))?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.with_inner(move |inner| f(&mut inner.conn)).await
    }

    /// One transaction: the write, then the change log entry; then the
    /// journal; then publish. `seed` is recorded in the journal with it.
    async fn write(
        &self,
        actor: &str,
        seed: Option<Seed>,
        f: impl FnOnce(&Transaction<'_>) -> Result<Written> + Send + 'static,
    ) -> Result<Change> {
        let (actor, routes, events) = (actor.to_owned(), self.routes.clone(), self.events.clone());
        let limit = self.route_limit;
        self.with_inner(move |inner| {
            if inner.needs_backup {
                // The journal missed a change: no new one is acknowledged
                // until a backup covers it.
                inner.rotate()?;
            }
            let tx = inner.conn.transaction().map_err(db)?;
            let enabled_before = routes::count_enabled(&tx)?;
            let w = f(&tx)?;
            let all = routes::load_routes(&tx)?;
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
            let version = changes::append(&tx, &at, &actor, &w, &checksum)?;
            tx.commit().map_err(db)?;
            let change = Change {
                version,
                at,
                actor,
                action: w.action,
                route_id: w.route_id,
                before: w.before,
                after: w.after,
                checksum,
            };
            let mut entries = vec![Entry::Change(change.clone())];
            entries.extend(seed.map(Entry::Seed));
            let journaled = inner.journal(&entries);
            // Committed either way: what is served follows relay.db. Only
            // the answer depends on the second copy.
            routes.publish(version, &all);
            let _ = events.send(Event::Change(ChangeEvent {
                version,
                at: change.at.clone(),
                actor: change.actor.clone(),
                action: change.action,
                route_id: change.route_id,
                checksum: change.checksum.clone(),
            }));
            journaled.map(|()| change)
        })
        .await
    }

    /// One transaction of compose records: the write, then the journal
    /// (what it returns to record), then the event.
    async fn write_records<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<(T, Entry, DeployEvent)> + Send + 'static,
    ) -> Result<T> {
        let events = self.events.clone();
        self.with_inner(move |inner| {
            if inner.needs_backup {
                inner.rotate()?;
            }
            let tx = inner.conn.transaction().map_err(db)?;
            let (value, entry, event) = f(&tx)?;
            tx.commit().map_err(db)?;
            let journaled = inner.journal(&[entry]);
            let _ = events.send(Event::Deploy(event));
            journaled.map(|()| value)
        })
        .await
    }

    /// Writes a new version of compose `name` (made on its first version).
    pub async fn add_compose_version(&self, new: NewVersion) -> Result<(Compose, ComposeVersion)> {
        self.write_records(move |tx| {
            let record = composes::add_version(
                tx,
                &new.name,
                new.description.as_deref(),
                (&new.yaml, &new.resolved),
                &new.secret_names,
                new.sealed.as_deref(),
                &new.actor,
            )?;
            let event = DeployEvent {
                compose: new.name,
                deployment: None,
                status: None,
            };
            let value = (record.compose.clone(), record.version.clone());
            Ok((value, Entry::ComposeVersion(Box::new(record)), event))
        })
        .await
    }

    /// Records a new deployment of `version` of `name`, deploying.
    pub async fn add_deployment(&self, name: &str, version: u64, reason: &str, actor: &str) -> Result<Deployment> {
        let (name, reason, actor) = (name.to_owned(), reason.to_owned(), actor.to_owned());
        self.write_records(move |tx| {
            let compose = composes::compose(tx, &name)?;
            composes::version(tx, &compose, version)?;
            let d = composes::add_deployment(tx, &compose, version, &reason, &actor)?;
            Ok((d.clone(), Entry::Deployment(Box::new(d.clone())), deploy_event(&d)))
        })
        .await
    }

    /// Writes what changed of a deployment (status, detail, images,
    /// output, health); its identity and origin stay as recorded.
    pub async fn save_deployment(&self, mut d: Deployment) -> Result<Deployment> {
        self.write_records(move |tx| {
            composes::deployment(tx, d.id)?;
            d.updated_at = now();
            composes::put_deployment(tx, &d)?;
            let d = composes::deployment(tx, d.id)?;
            Ok((d.clone(), Entry::Deployment(Box::new(d.clone())), deploy_event(&d)))
        })
        .await
    }

    /// Removes compose `name` with its versions and deployments.
    pub async fn remove_compose(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.write_records(move |tx| {
            composes::remove(tx, &name)?;
            let event = DeployEvent {
                compose: name.clone(),
                deployment: None,
                status: None,
            };
            Ok(((), Entry::ComposeRemoved(name), event))
        })
        .await
    }

    pub async fn composes(&self) -> Result<Vec<Compose>> {
        self.with(|c| composes::composes(c)).await
    }

    pub async fn compose(&self, name: &str) -> Result<Compose> {
        let name = name.to_owned();
        self.with(move |c| composes::compose(c, &name)).await
    }

    /// Every version of compose `name`, newest first.
    pub async fn compose_versions(&self, name: &str) -> Result<Vec<ComposeVersion>> {
        let name = name.to_owned();
        self.with(move |c| composes::versions(c, &composes::compose(c, &name)?))
            .await
    }

    /// Version `version` of compose `name`, with its sealed secrets.
    pub async fn compose_version(&self, name: &str, version: u64) -> Result<(ComposeVersion, Option<Vec<u8>>)> {
        let name = name.to_owned();
        self.with(move |c| composes::version(c, &composes::compose(c, &name)?, version))
            .await
    }

    /// Deployments of compose `name`, newest first, at most `limit`.
    pub async fn deployments(&self, name: &str, limit: usize) -> Result<Vec<Deployment>> {
        let name = name.to_owned();
        let limit = limit.clamp(1, MAX_HISTORY);
        self.with(move |c| composes::deployments(c, &composes::compose(c, &name)?, limit))
            .await
    }

    pub async fn deployment(&self, id: u64) -> Result<Deployment> {
        self.with(move |c| composes::deployment(c, id)).await
    }

    /// Deployments a stopped relay left pending or deploying.
    pub async fn unfinished_deployments(&self) -> Result<Vec<Deployment>> {
        self.with(|c| composes::unfinished(c)).await
    }

    pub async fn list(&self) -> Result<Vec<Route>> {
        self.with(|c| routes::load_routes(c)).await
    }

    pub async fn get(&self, id: u64) -> Result<Route> {
        self.with(move |c| routes::load_route(c, id)).await
    }

    /// Current version and the checksum of the current set.
    pub async fn version(&self) -> Result<(u64, String)> {
        self.with(|c| Ok((changes::current_version(c)?, set_checksum(&routes::load_routes(c)?))))
            .await
    }

    pub async fn add(&self, mut new: NewRoute, actor: &str) -> Result<Change> {
        validate(&mut new).map_err(Error::Invalid)?;
        self.write(actor, None, move |tx| routes::insert_new(tx, new)).await
    }

    pub async fn update(&self, id: u64, patch: RoutePatch, actor: &str) -> Result<Change> {
        self.write(actor, None, move |tx| {
            let before = routes::load_route(tx, id)?;
            let mut new = patch.apply(&before);
            validate(&mut new).map_err(Error::Invalid)?;
            let after = routes::update_route(tx, id, &new)?;
            health::forget_stale(tx, std::slice::from_ref(&before))?;
            Ok(Written {
                action: ChangeAction::Update,
                route_id: Some(id),
                before: json_value(&before),
                after: json_value(&after),
            })
        })
        .await
    }

    pub async fn remove(&self, id: u64, actor: &str) -> Result<Change> {
        self.write(actor, None, move |tx| {
            let before = routes::load_route(tx, id)?;
            routes::delete_route(tx, id)?;
            health::forget(tx, id)?;
            Ok(Written {
                action: ChangeAction::Remove,
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
        self.write(actor, None, move |tx| {
            let current = changes::current_version(tx)?;
            if version > current {
                return Err(Error::NotFound(format!("version {version} (the latest is {current})")));
            }
            let target = changes::routes_at(tx, version)?;
            let before = routes::load_routes(tx)?;
            let after = routes::replace_all(tx, &target)?;
            health::forget_stale(tx, &before)?;
            Ok(Written {
                action: ChangeAction::Rollback,
                route_id: None,
                before: json_value(&before),
                after: json_value(&after),
            })
        })
        .await
    }

    /// The route set at `version`, rebuilt from the change log; a version
    /// past the latest is not found.
    pub async fn routes_at(&self, version: u64) -> Result<Vec<Route>> {
        self.with(move |c| {
            let current = changes::current_version(c)?;
            if version > current {
                return Err(Error::NotFound(format!("version {version} (the latest is {current})")));
            }
            changes::routes_at(c, version)
        })
        .await
    }

    /// Newest first, at most `limit` (≤ [`MAX_HISTORY`]), older than `before`.
    pub async fn history(&self, limit: usize, before: Option<u64>) -> Result<Vec<Change>> {
        let limit = limit.clamp(1, MAX_HISTORY) as i64;
        let before = before.map(|b| b as i64).unwrap_or(i64::MAX);
        self.with(move |c| changes::history(c, limit, before)).await
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
        probed: (String, HealthCheck),
        status: &'static str,
        detail: String,
        streak: u32,
        flipped: bool,
    ) -> Result<Option<HealthStatus>> {
        let events = self.events.clone();
        self.with(move |c| {
            let h = health::record(c, route_id, &probed, status, detail, streak)?;
            if let Some(h) = &h
                && flipped
            {
                let _ = events.send(Event::Health(h.clone()));
            }
            Ok(h)
        })
        .await
    }

    /// The stored health of one route, if it was checked.
    pub async fn health_of(&self, route_id: u64) -> Result<Option<HealthStatus>> {
        self.with(move |c| health::of(c, route_id)).await
    }

    /// Latest health of every checked route.
    pub async fn health(&self) -> Result<Vec<HealthStatus>> {
        self.with(|c| health::all(c)).await
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
            let state = self.with(move |c| seeds::state(c, &key.0, &key.1, &key.2)).await?;
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
                    let seed = Seed {
                        host: seed.host,
                        path: seed.path,
                        target: seed.target,
                    };
                    self.with_inner(move |inner| {
                        seeds::record(&inner.conn, &seed.host, &seed.path, &seed.target)?;
                        // Not an acknowledged change: a journal that can't
                        // take it only loses the record, which the next
                        // backup holds anyway.
                        if let Err(e) = inner.journal.append(&[Entry::Seed(seed)]) {
                            tracing::warn!(error = %e, "a seed was not journaled");
                        }
                        Ok(())
                    })
                    .await?;
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
        let seed = Seed {
            host: new.host.clone(),
            path: new.path.clone(),
            target: new.target.clone(),
        };
        self.write("config", Some(seed), move |tx| {
            seeds::record(tx, &new.host, &new.path, &new.target)?;
            routes::insert_new(tx, new)
        })
        .await
    }
}

/// A compose version to write.
#[derive(Debug, Clone, Default)]
pub struct NewVersion {
    pub name: String,
    /// `None` keeps the compose's description.
    pub description: Option<String>,
    pub yaml: String,
    pub resolved: String,
    pub secret_names: Vec<String>,
    /// The secrets' values, sealed.
    pub sealed: Option<Vec<u8>>,
    pub actor: String,
}

fn deploy_event(d: &Deployment) -> DeployEvent {
    DeployEvent {
        compose: d.compose.clone(),
        deployment: Some(d.id),
        status: Some(d.status),
    }
}

/// Moves `path` aside (to `<name>.<what>-<unix time>`), keeping it for a
/// person to look at; the store goes on without it.
fn keep_aside(path: &Path, what: &str) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{what}-{secs}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::warn!(kept = %Path::new(&aside).display(), "kept aside"),
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "could not keep the file aside"),
    }
}
