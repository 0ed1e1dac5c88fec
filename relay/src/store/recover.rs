//! Rebuilding a damaged store from its last backup and its journal, which
//! together hold every change the relay acknowledged. The damaged files
//! are moved aside, never deleted; the report says exactly what was
//! restored from where.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::backup;
use super::changes::current_version;
use super::composes;
use super::files::{self, StoreFiles, sync_dir};
use super::integrity;
use super::journal::{self, Entry, Journal, Scan, Tail};
use super::routes::{delete_route, insert_route, load_routes, set_checksum};
use super::schema;
use super::seeds;
use super::sql::{db, json};
use crate::error::{Error, Result};
use crate::model::{Change, ChangeAction, Route};

/// What a recovery found and did.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The store's database file.
    pub db: PathBuf,
    /// What was wrong; `None`: the store was whole and nothing was done.
    pub problem: Option<String>,
    /// What the rebuilt store started from.
    pub base: Base,
    /// Journaled changes applied on top of the base, oldest first.
    pub replayed: Vec<Replayed>,
    /// Seed records taken from the journal.
    pub seeds: usize,
    /// The journal's damaged or cut-short end, which was left out.
    pub journal_tail: Option<Tail>,
    /// Why the journal could not be read at all, if so.
    pub journal_unreadable: Option<String>,
    /// Where the damaged files were moved, and which they were.
    pub kept: Option<(PathBuf, Vec<String>)>,
    /// The store now.
    pub version: u64,
    pub routes: usize,
    pub checksum: String,
}

/// Where a rebuilt store started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// Nothing: an empty store at version 0.
    Empty,
    /// The backup file, at this version with this many routes.
    Backup { version: u64, routes: usize },
    /// `relay.db` itself: readable, and holding everything backup and
    /// journal hold (only their files were damaged).
    Store { version: u64, routes: usize },
}

/// One journaled change applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub version: u64,
    pub action: ChangeAction,
    /// `host/path` of the route (a rollback: how many routes it left).
    pub route: String,
    pub actor: String,
    pub at: String,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(problem) = &self.problem else {
            if self.version == 0 && self.routes == 0 {
                return writeln!(f, "{}: no change stored yet; nothing to recover", self.db.display());
            }
            return writeln!(
                f,
                "{} is whole (version {}, {} routes, and every journaled change in it): nothing to recover",
                self.db.display(),
                self.version,
                self.routes
            );
        };
        writeln!(f, "{} {problem}", self.db.display())?;
        match &self.base {
            Base::Empty => writeln!(f, "rebuilt from an empty store (no backup)")?,
            Base::Backup { version, routes } => writeln!(
                f,
                "rebuilt from the backup {} at version {version} ({routes} routes)",
                StoreFiles::new(&self.db).backup.display()
            )?,
            Base::Store { version, routes } => writeln!(
                f,
                "rebuilt from {} itself, which is readable and holds every acknowledged change (version {version}, {routes} routes)",
                self.db.display()
            )?,
        }
        if let Some(why) = &self.journal_unreadable {
            writeln!(f, "the journal could not be read: {why}")?;
        }
        writeln!(f, "restored {} journaled change(s):", self.replayed.len())?;
        for r in &self.replayed {
            writeln!(
                f,
                "  version {:<6} {:<8} {}  (by {} at {})",
                r.version, r.action, r.route, r.actor, r.at
            )?;
        }
        if self.seeds > 0 {
            writeln!(f, "restored {} seed record(s)", self.seeds)?;
        }
        if let Some(tail) = &self.journal_tail {
            writeln!(
                f,
                "journal: {tail}; left out (a record cut short by a crash was never acknowledged)"
            )?;
        }
        writeln!(f, "health-check results start afresh")?;
        if let Some((dir, names)) = &self.kept {
            writeln!(
                f,
                "the damaged files are kept in {}: {}",
                dir.display(),
                names.join(", ")
            )?;
        }
        writeln!(
            f,
            "{} is now at version {} with {} route(s) (checksum {}); start the relay",
            self.db.display(),
            self.version,
            self.routes,
            self.checksum
        )
    }
}

/// Rebuilds the store at `store` (its `relay.db`; the relay stopped) from its backup and
/// journal, if it is damaged; a whole store is left as it is. On any error
/// nothing was changed.
pub fn recover(store: &Path) -> Result<Recovery> {
    let files = StoreFiles::new(store);
    if !files.dir.is_dir() {
        return Err(Error::Store(format!(
            "there is no directory {}: give the relay's --data-dir",
            files.dir.display()
        )));
    }
    let _lock = files::lock_exclusive(&files)?;
    let problem = match integrity::inspect(&files, false) {
        Ok(whole) => {
            let routes = load_routes(&whole.conn).map(|r| r.len()).unwrap_or(0);
            let checksum = load_routes(&whole.conn).map(|r| set_checksum(&r)).unwrap_or_default();
            return Ok(Recovery {
                db: store.to_owned(),
                problem: None,
                base: Base::Empty,
                replayed: Vec::new(),
                seeds: 0,
                journal_tail: None,
                journal_unreadable: None,
                kept: None,
                version: whole.version,
                routes,
                checksum,
            });
        }
        Err(Error::Damaged { path, problem }) if path == files.db => problem,
        Err(Error::Damaged { path, problem }) => format!("is not opened: {} {problem}", path.display()),
        Err(e) => return Err(e),
    };
    let (scan, journal_unreadable) = match journal::scan(&files.journal) {
        Ok(scan) => (scan, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let tmp = files.sibling(&format!(".{}.recovering", file_name(&files.db)));
    remove_with_companions(&tmp);
    let rebuilt = rebuild(&tmp, &files, scan.as_ref());
    let mut rebuilt = match rebuilt {
        Ok(r) => r,
        Err(e) => {
            remove_with_companions(&tmp);
            return Err(e);
        }
    };
    rebuilt.problem = Some(problem);
    rebuilt.journal_unreadable = journal_unreadable;
    rebuilt.journal_tail = scan.and_then(|s| s.tail);

    // The damaged files go aside; the rebuilt store takes their place.
    let kept = damaged_dir(&files)?;
    let mut moved = Vec::new();
    let [wal, shm] = files.sqlite_companions();
    for path in [&files.db, &wal, &shm, &files.journal, &files.backup] {
        if path.exists() {
            let name = file_name(path);
            std::fs::rename(path, kept.join(&name))
                .map_err(|e| Error::Store(format!("moving {} aside: {e}", path.display())))?;
            moved.push(name);
        }
    }
    sync_dir(&kept);
    std::fs::rename(&tmp, &files.db).map_err(|e| {
        Error::Store(format!(
            "{} could not take the place of {} ({e}); the damaged files are in {}",
            tmp.display(),
            files.db.display(),
            kept.display()
        ))
    })?;
    sync_dir(&files.dir);
    // A fresh base for what comes next: backup of the rebuilt store, empty journal.
    let conn = Connection::open(&files.db).map_err(db)?;
    let version = backup::take(&conn, &files)?;
    Journal::create(&files.journal, version).map_err(|e| Error::Store(format!("{}: {e}", files.journal.display())))?;
    rebuilt.kept = Some((kept, moved));
    Ok(rebuilt)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_with_companions(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A new `damaged-<UTC time>` directory beside the store.
fn damaged_dir(files: &StoreFiles) -> Result<PathBuf> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    for n in 0..100 {
        let name = if n == 0 {
            format!("damaged-{stamp}")
        } else {
            format!("damaged-{stamp}-{n}")
        };
        let dir = files.sibling(&name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Store(format!("{}: {e}", dir.display()))),
        }
    }
    Err(Error::Store(format!(
        "too many damaged-{stamp}* directories in {}",
        files.dir.display()
    )))
}

/// Copies the whole database behind `src` into `dst`.
fn copy_into(src: &Connection, dst: &mut Connection) -> Result<()> {
    let backup = Backup::new(src, dst).map_err(db)?;
    match backup.step(-1).map_err(db)? {
        StepResult::Done => Ok(()),
        other => Err(Error::Store(format!("copying the store did not finish ({other:?})"))),
    }
}

/// `relay.db` as a base, if it is readable and holds everything `rebuilt`
/// (backup + journal) holds: then only the journal or backup was damaged,
/// and the store may hold even more (changes whose journaling failed).
fn store_if_superset(files: &StoreFiles, version: u64, checksum: &str) -> Option<Connection> {
    if !files.db.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(&files.db, OpenFlags::SQLITE_OPEN_READ_WRITE).ok()?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .ok()?;
    let check: String = conn.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0)).ok()?;
    let stored = current_version(&conn).ok()?;
    if check != "ok" || stored < version {
        return None;
    }
    if version > 0 {
        let at: Option<String> = conn
            .query_row(
                "SELECT checksum FROM changes WHERE version = ?1",
                [version as i64],
                |r| r.get(0),
            )
            .optional()
            .ok()?;
        if at.as_deref() != Some(checksum) {
            return None;
        }
    }
    Some(conn)
}

/// Builds the store at `tmp`: the backup, then the journal's changes after
/// it (each checked against the checksum it recorded); or `relay.db`
/// itself when it holds all that.
fn rebuild(tmp: &Path, files: &StoreFiles, scan: Option<&Scan>) -> Result<Recovery> {
    let unusable = |e: String| {
        Error::Store(format!(
            "the backup {} is unusable ({e}); nothing was changed",
            files.backup.display()
        ))
    };
    let backup_version = backup::version_of(&files.backup).map_err(unusable)?;
    let mut conn = Connection::open(tmp).map_err(db)?;
    if backup_version.is_some() {
        let src = Connection::open_with_flags(&files.backup, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db)?;
        copy_into(&src, &mut conn)?;
    }
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;")
        .map_err(db)?;
    schema::migrate(&mut conn, tmp)?;
    let base_version = current_version(&conn)?;
    let base_routes = load_routes(&conn)?.len();
    let base = match backup_version {
        Some(_) => Base::Backup {
            version: base_version,
            routes: base_routes,
        },
        None => Base::Empty,
    };

    // The journal's changes after the base, once each, in order, with no gap.
    let mut after: BTreeMap<u64, &Change> = BTreeMap::new();
    for c in scan.into_iter().flat_map(Scan::changes) {
        if c.version <= base_version {
            continue;
        }
        if let Some(seen) = after.insert(c.version, c)
            && seen.checksum != c.checksum
        {
            return Err(Error::Store(format!(
                "the journal holds two different changes numbered {}; nothing was changed",
                c.version
            )));
        }
    }
    let continues_from = scan.and_then(|s| s.base).unwrap_or(0);
    let first = after.keys().next().copied();
    if continues_from > base_version || first.is_some_and(|v| v != base_version + 1) {
        let from = first.map_or(continues_from, |v| v - 1).max(continues_from);
        let backup = match backup_version {
            Some(_) => format!("the backup holds version {base_version}"),
            None => format!("there is no backup ({} is missing)", files.backup.display()),
        };
        return Err(Error::Store(format!(
            "{backup} but the journal continues from version {from}: versions {}..={from} are in \
             neither; nothing was changed",
            base_version + 1
        )));
    }
    let tx = conn.transaction().map_err(db)?;
    let mut replayed = Vec::new();
    for (expected, (version, change)) in (base_version + 1..).zip(after) {
        if version != expected {
            return Err(Error::Store(format!(
                "the journal has no version {expected} (it goes on at {version}); nothing was changed"
            )));
        }
        let route = apply(&tx, change)?;
        let routes = load_routes(&tx)?;
        if set_checksum(&routes) != change.checksum {
            return Err(Error::Store(format!(
                "replaying version {version} gives another route set than the one it recorded; nothing was changed"
            )));
        }
        replayed.push(Replayed {
            version,
            action: change.action,
            route,
            actor: change.actor.clone(),
            at: change.at.clone(),
        });
    }
    let mut seed_count = 0;
    for entry in scan.into_iter().flat_map(|s| &s.entries) {
        if let Entry::Seed(s) = entry {
            seeds::record(&tx, &s.host, &s.path, &s.target)?;
            seed_count += 1;
        }
        replay_records(&tx, entry)?;
    }
    // Results about targets that may have changed since: checks run again.
    tx.execute("DELETE FROM health_checks", []).map_err(db)?;
    tx.commit().map_err(db)?;
    let mut version = current_version(&conn)?;
    let mut routes = load_routes(&conn)?;
    let mut base = base;
    if let Some(store) = store_if_superset(files, version, &set_checksum(&routes)) {
        // Only the journal or backup was damaged; the store holds it all
        // (and maybe more: changes whose journaling failed).
        drop(conn);
        remove_with_companions(tmp);
        conn = Connection::open(tmp).map_err(db)?;
        copy_into(&store, &mut conn)?;
        conn.execute_batch("PRAGMA journal_mode = DELETE; DELETE FROM health_checks;")
            .map_err(db)?;
        for entry in scan.into_iter().flat_map(|s| &s.entries) {
            if let Entry::Seed(s) = entry {
                seeds::record(&conn, &s.host, &s.path, &s.target)?;
            }
            replay_records(&conn, entry)?;
        }
        version = current_version(&conn)?;
        routes = load_routes(&conn)?;
        base = Base::Store {
            version,
            routes: routes.len(),
        };
        replayed.clear();
    }
    let check: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(db)?;
    if check != "ok" {
        return Err(Error::Store(format!(
            "the rebuilt store fails its check ({check}); nothing was changed"
        )));
    }
    drop(conn);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Store(format!("{}: {e}", tmp.display())))?;
    }
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Store(format!("{}: {e}", tmp.display())))?;
    Ok(Recovery {
        db: files.db.clone(),
        problem: None,
        base,
        replayed,
        seeds: seed_count,
        journal_tail: None,
        journal_unreadable: None,
        kept: None,
        version,
        checksum: set_checksum(&routes),
        routes: routes.len(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(change: &Change, v: &serde_json::Value) -> Result<T> {
    T::deserialize(v).map_err(|e| {
        Error::Store(format!(
            "journaled version {} does not hold a route ({e}); nothing was changed",
            change.version
        ))
    })
}

/// Applies one journaled change as the store first did; returns what it
/// was about, for the report.
fn apply(tx: &rusqlite::Transaction<'_>, change: &Change) -> Result<String> {
    tx.execute(
        "INSERT INTO changes (version, at, actor, action, route_id, before, after, checksum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            change.version as i64,
            change.at,
            change.actor,
            change.action,
            change.route_id.map(|i| i as i64),
            json(&change.before),
            json(&change.after),
            change.checksum
        ],
    )
    .map_err(db)?;
    match change.action {
        ChangeAction::Add | ChangeAction::Update => {
            let route: Route = parse(change, &change.after)?;
            delete_route(tx, route.id)?;
            insert_route(tx, &route)?;
            Ok(route.name())
        }
        ChangeAction::Remove => {
            let route: Route = parse(change, &change.before)?;
            delete_route(tx, change.route_id.unwrap_or(route.id))?;
            Ok(route.name())
        }
        ChangeAction::Rollback => {
            let all: Vec<Route> = parse(change, &change.after)?;
            tx.execute("DELETE FROM routes", []).map_err(db)?;
            for r in &all {
                insert_route(tx, r)?;
            }
            Ok(format!("{} route(s)", all.len()))
        }
    }
}

/// Applies a journaled compose or deployment entry (an upsert of the rows
/// as they were after the write); other entries are replayed elsewhere.
fn replay_records(conn: &Connection, entry: &Entry) -> Result<()> {
    match entry {
        Entry::ComposeVersion(record) => composes::put_version(conn, record)?,
        Entry::Deployment(d) => composes::put_deployment(conn, d)?,
        Entry::ComposeRemoved(name) => match composes::remove(conn, name) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        },
        Entry::Change(_) | Entry::Seed(_) => {}
    }
    Ok(())
}
