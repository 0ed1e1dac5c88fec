//! The store against real SQLite files.

use super::sql::json;
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
        let mut inner = store.lock();
        let tx = inner.conn.transaction().unwrap();
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
    conn.execute_batch("DROP TABLE seeds; ALTER TABLE routes DROP COLUMN owner; PRAGMA user_version = 1")
        .unwrap();
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
    assert_eq!((e.version, e.action, e.route_id), (51, ChangeAction::Rollback, None));
    assert!(json(&Event::Change(e)).len() < 300);
    assert!(matches!(store.routes_at(52).await, Err(Error::NotFound(_))));
    assert_eq!(store.routes_at(51).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unknown_change_action_in_the_log_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = Store::open(&path).unwrap();
    store.add(route("a.test"), "t").await.unwrap();
    // What a newer build (or a hand edit) could leave in the log.
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE changes SET action = 'frobnicate' WHERE version = 1", [])
        .unwrap();
    let err = store.history(10, None).await.unwrap_err().to_string();
    assert!(err.contains("unknown change action \"frobnicate\""), "{err}");
    let err = store.routes_at(1).await.unwrap_err().to_string();
    assert!(err.contains("unknown change action \"frobnicate\""), "{err}");
    // The stored words are the ones stores always held.
    store.add(route("b.test"), "t").await.unwrap();
    let word: String = Connection::open(&path)
        .unwrap()
        .query_row("SELECT action FROM changes WHERE version = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(word, "add");
}
