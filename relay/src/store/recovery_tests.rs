//! Damaged stores, the journal, the rolling backup and recovery, against
//! real SQLite files and real damage.

use super::*;

fn route(host: &str) -> NewRoute {
    serde_json::from_value(serde_json::json!({ "host": host, "target": "8080" })).unwrap()
}

/// The recovery command the refusal of `path` names.
fn recover_command(path: &std::path::Path) -> String {
    format!("routehub relay recover --data-dir {}", path.parent().unwrap().display())
}

fn refusal(path: &std::path::Path) -> String {
    let err = Store::open(path).err().expect("a damaged store is refused");
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains(&recover_command(path)),
        "names the recovery: {message}"
    );
    message
}

#[tokio::test]
async fn an_empty_or_foreign_file_is_damage_and_only_a_missing_one_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    std::fs::write(&path, b"").unwrap();
    let message = refusal(&path);
    assert!(message.contains("is empty (0 bytes)"), "{message}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");
    std::fs::write(&path, "routes = []\n".repeat(20)).unwrap();
    let message = refusal(&path);
    assert!(message.contains("is not a SQLite database"), "{message}");
    std::fs::remove_file(&path).unwrap();
    let store = Store::open(&path).expect("a missing file is a fresh store");
    assert_eq!(store.version().await.unwrap().0, 0);
}

#[tokio::test]
async fn a_store_with_a_corrupted_page_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let store = Store::open(&path).unwrap();
        let mut inner = store.lock();
        let tx = inner.conn.transaction().unwrap();
        for i in 0..300 {
            tx.execute(
                "INSERT INTO routes (host, path, target, created_at, updated_at) VALUES (?1, '/', 'http://127.0.0.1:1', '', '')",
                [format!("r{i}.test")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let pages: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert!(pages > 4, "{pages} pages");
    // Random bytes over the third page, as a failing disk or a hostile
    // hand would leave them.
    let mut junk = vec![0u8; 4096];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut junk).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192..8192 + 4096].copy_from_slice(&junk);
    std::fs::write(&path, &bytes).unwrap();
    let check: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    assert_ne!(check, "ok", "the damage is real");
    let message = refusal(&path);
    assert!(
        message.contains("fails SQLite's integrity check") || message.contains("can't be read as a database"),
        "{message}"
    );
}

fn journal_versions(path: &std::path::Path) -> (Option<u64>, Vec<u64>) {
    let scan = journal::scan(&path.with_extension("journal")).unwrap().unwrap();
    (scan.base, scan.changes().map(|c| c.version).collect())
}

fn backup_version(path: &std::path::Path) -> u64 {
    backup::version_of(&path.with_extension("backup")).unwrap().unwrap()
}

#[tokio::test]
async fn the_backup_rolls_and_bounds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = Store::open(&path).unwrap().with_rotation_every(4);
    assert_eq!(backup_version(&path), 0, "a backup at start");
    assert_eq!(journal_versions(&path), (Some(0), vec![]));
    for i in 1..=3 {
        store.add(route(&format!("h{i}.test")), "t").await.unwrap();
    }
    assert_eq!(journal_versions(&path), (Some(0), vec![1, 2, 3]));
    assert_eq!(backup_version(&path), 0);
    // The fourth record fills the journal: the backup takes it all.
    store.add(route("h4.test"), "t").await.unwrap();
    assert_eq!(backup_version(&path), 4);
    assert_eq!(journal_versions(&path), (Some(4), vec![]));
    for i in 5..=10 {
        store.add(route(&format!("h{i}.test")), "t").await.unwrap();
    }
    assert_eq!(backup_version(&path), 8);
    assert_eq!(journal_versions(&path), (Some(8), vec![9, 10]));
    // The backup is a whole SQLite file holding version 8.
    let backup = Connection::open_with_flags(
        path.with_extension("backup"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let routes: i64 = backup
        .query_row("SELECT COUNT(*) FROM routes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(routes, 8);
}

/// A store at version 12 whose backup is at 8 and whose journal holds
/// 9..=12; returns its routes and checksum.
async fn written_store(path: &std::path::Path) -> (Vec<Route>, String) {
    let store = Store::open(path).unwrap().with_rotation_every(8);
    for i in 1..=10 {
        store.add(route(&format!("h{i}.test")), "api").await.unwrap();
    }
    let patch = RoutePatch {
        priority: Some(5),
        ..Default::default()
    };
    store.update(9, patch, "api").await.unwrap();
    store.remove(3, "api").await.unwrap();
    assert_eq!(journal_versions(path), (Some(8), vec![9, 10, 11, 12]));
    let (version, checksum) = store.version().await.unwrap();
    assert_eq!(version, 12);
    (store.list().await.unwrap(), checksum)
}

#[tokio::test]
async fn recovery_rebuilds_every_acknowledged_change_from_backup_and_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (routes, checksum) = written_store(&path).await;
    // relay.db is destroyed; a crash also cut the journal's last append.
    std::fs::write(&path, b"").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path.with_extension("journal"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[0, 0, 1, 0, 1, 2, 3]).unwrap();
    refusal(&path);

    let report = recover(&path).unwrap();
    let text = report.to_string();
    eprintln!("{text}");
    assert_eq!(report.base, recover::Base::Backup { version: 8, routes: 8 }, "{text}");
    let replayed: Vec<(u64, ChangeAction)> = report.replayed.iter().map(|r| (r.version, r.action)).collect();
    assert_eq!(
        replayed,
        [
            (9, ChangeAction::Add),
            (10, ChangeAction::Add),
            (11, ChangeAction::Update),
            (12, ChangeAction::Remove)
        ],
        "{text}"
    );
    assert_eq!((report.version, report.routes), (12, 9), "{text}");
    assert_eq!(report.checksum, checksum, "{text}");
    let tail = report.journal_tail.clone().expect("the torn tail is reported");
    assert_eq!(tail.bytes, 7, "{text}");
    assert!(
        text.contains("version 12") && text.contains("remove") && text.contains("h3.test"),
        "{text}"
    );
    assert!(text.contains("not a whole record"), "{text}");
    // The damaged file is kept, not deleted.
    let (kept, names) = report.kept.clone().unwrap();
    assert!(names.contains(&"relay.db".to_owned()), "{names:?}");
    assert_eq!(std::fs::metadata(kept.join("relay.db")).unwrap().len(), 0);
    assert!(kept.join("relay.journal").exists());
    assert!(text.contains(&kept.display().to_string()), "{text}");

    let store = Store::open(&path).expect("the rebuilt store opens");
    assert_eq!(store.list().await.unwrap(), routes);
    assert_eq!(store.version().await.unwrap(), (12, checksum));
    assert_eq!(store.history(1, None).await.unwrap()[0].action, ChangeAction::Remove);
    // And goes on from there.
    assert_eq!(store.add(route("h11.test"), "api").await.unwrap().version, 13);
}

#[tokio::test]
async fn a_store_that_lost_acknowledged_changes_is_refused_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let older = dir.path().join("older.db");
    {
        let store = Store::open(&path).unwrap();
        store.add(route("a.test"), "api").await.unwrap();
        store.add(route("b.test"), "api").await.unwrap();
    }
    // What relay.db held then (closed: no write-ahead log beside it).
    std::fs::copy(&path, &older).unwrap();
    let (routes, checksum) = {
        let store = Store::open(&path).unwrap();
        store.add(route("c.test"), "api").await.unwrap();
        store.add(route("d.test"), "api").await.unwrap();
        (store.list().await.unwrap(), store.version().await.unwrap().1)
    };
    // relay.db goes back to its older state: whole by SQLite's measure,
    // but the two newest acknowledged changes are gone.
    std::fs::copy(&older, &path).unwrap();
    let message = refusal(&path);
    assert!(
        message.contains("is at version 2") && message.contains("up to version 4") && message.contains("2 of them"),
        "{message}"
    );
    let report = recover(&path).unwrap();
    assert_eq!(report.replayed.len(), 2, "{report}");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list().await.unwrap(), routes);
    assert_eq!(store.version().await.unwrap(), (4, checksum));
}

#[tokio::test]
async fn a_torn_journal_tail_at_start_is_reported_kept_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let store = Store::open(&path).unwrap();
        store.add(route("a.test"), "api").await.unwrap();
    }
    let journal = path.with_extension("journal");
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut f, &[0, 0, 0, 50, 9, 9]).unwrap();
    let store = Store::open(&path).expect("relay.db holds every change");
    assert_eq!(store.list().await.unwrap().len(), 1);
    let kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("relay.journal.torn-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged journal is kept aside");
    assert_eq!(journal_versions(&path), (Some(1), vec![]));
    store.add(route("b.test"), "api").await.unwrap();
    assert_eq!(journal_versions(&path), (Some(1), vec![2]));
}

#[tokio::test]
async fn recovery_leaves_a_whole_or_running_store_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = Store::open(&path).unwrap();
    store.add(route("a.test"), "api").await.unwrap();
    let err = recover(&path).unwrap_err().to_string();
    assert!(err.contains("a relay is using"), "{err}");
    // A damaged store is not opened while a recovery holds the lock.
    let held = files::lock_exclusive(&files::StoreFiles::new(&path));
    assert!(held.is_err(), "the open store holds its lock");
    drop(store);
    let report = recover(&path).unwrap();
    assert_eq!(report.problem, None);
    assert!(report.to_string().contains("nothing to recover"), "{report}");
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("damaged-")),
        "nothing moved"
    );
    let recovering = files::lock_exclusive(&files::StoreFiles::new(&path)).unwrap();
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(err.contains("is being recovered"), "{err}");
    drop(recovering);
    assert_eq!(Store::open(&path).unwrap().list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_failing_backup_fails_no_write_and_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = Store::open(&path).unwrap().with_rotation_every(2);
    // The backup can't be renamed into place while a directory is there.
    let backup = path.with_extension("backup");
    std::fs::remove_file(&backup).unwrap();
    std::fs::create_dir(&backup).unwrap();
    for i in 1..=3 {
        store.add(route(&format!("h{i}.test")), "t").await.expect("journaled");
    }
    assert_eq!(
        journal_versions(&path),
        (Some(0), vec![1, 2, 3]),
        "the journal keeps them all"
    );
    std::fs::remove_dir(&backup).unwrap();
    // Tried again two records after the failed attempt (at 2): at 4.
    store.add(route("h4.test"), "t").await.unwrap();
    assert_eq!(journal_versions(&path), (Some(4), vec![]));
    assert_eq!(backup_version(&path), 4);
    // Then after the usual count again.
    store.add(route("h5.test"), "t").await.unwrap();
    assert_eq!(journal_versions(&path), (Some(4), vec![5]));
    store.add(route("h6.test"), "t").await.unwrap();
    assert_eq!(journal_versions(&path), (Some(6), vec![]));
}

#[tokio::test]
async fn a_foreign_journal_is_refused_and_recovery_keeps_the_store_that_holds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (routes, checksum) = {
        let store = Store::open(&path).unwrap();
        store.add(route("a.test"), "api").await.unwrap();
        store.add(route("b.test"), "api").await.unwrap();
        (store.list().await.unwrap(), store.version().await.unwrap().1)
    };
    let journal = path.with_extension("journal");
    std::fs::write(&journal, b"not a journal at all").unwrap();
    let err = Store::open(&path).err().expect("refused").to_string();
    assert!(
        err.contains("relay.journal is not a Routehub change journal") && err.contains(&recover_command(&path)),
        "{err}"
    );
    let report = recover(&path).unwrap();
    let text = report.to_string();
    assert_eq!(report.base, recover::Base::Store { version: 2, routes: 2 }, "{text}");
    assert!(report.journal_unreadable.is_some(), "{text}");
    let (kept, _) = report.kept.clone().unwrap();
    assert_eq!(
        std::fs::read(kept.join("relay.journal")).unwrap(),
        b"not a journal at all"
    );
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list().await.unwrap(), routes);
    assert_eq!(store.version().await.unwrap(), (2, checksum));
}

#[tokio::test]
async fn compose_versions_and_deployments_are_journaled_and_recovered() {
    use crate::records::DeployStatus;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (deployment, removed_after) = {
        let store = Store::open(&path).unwrap();
        store.add(route("a.test"), "api").await.unwrap();
        let version = |name: &str, yaml: &str| NewVersion {
            name: name.into(),
            yaml: yaml.into(),
            resolved: yaml.into(),
            secret_names: vec!["TOKEN".into()],
            sealed: Some(vec![1, 2, 3]),
            actor: "api".into(),
            ..Default::default()
        };
        store.add_compose_version(version("web", "v1")).await.unwrap();
        let (c, v2) = store.add_compose_version(version("web", "v2")).await.unwrap();
        assert_eq!((c.version, v2.version), (2, 2));
        let mut d = store.add_deployment("web", 2, "apply", "api").await.unwrap();
        assert_eq!((d.status, d.generation), (DeployStatus::Deploying, 1));
        d.status = DeployStatus::Healthy;
        d.output = "Creating web ... done".into();
        let d = store.save_deployment(d).await.unwrap();
        store.add_compose_version(version("gone", "x")).await.unwrap();
        store.remove_compose("gone").await.unwrap();
        (d, store.compose("gone").await.is_err())
    };
    assert!(removed_after);
    // relay.db is destroyed: backup (taken at open, before any of it) and
    // journal bring every record back.
    std::fs::write(&path, b"").unwrap();
    recover(&path).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.compose("web").await.unwrap().version, 2);
    let (v1, sealed) = store.compose_version("web", 1).await.unwrap();
    assert_eq!((v1.yaml.as_str(), sealed), ("v1", Some(vec![1, 2, 3])));
    assert_eq!(store.deployment(deployment.id).await.unwrap(), deployment);
    assert!(store.compose("gone").await.is_err(), "a removal is replayed too");
    // And goes on: the next deployment is the next generation.
    let next = store
        .add_deployment("web", 1, "rollback to version 1", "api")
        .await
        .unwrap();
    assert_eq!(next.generation, 2);
}
