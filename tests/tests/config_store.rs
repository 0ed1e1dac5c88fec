//! The relay's store as the source of truth: admin API, live push to the
//! gateway, resync, rollback, health checks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::net::routes;
use harness::{Backend, TestNet, wait_until};
use http::{Method, StatusCode};
use relay::client::AdminClient;
use relay::model::{HealthCheck, NewRoute, RoutePatch};

const SOON: Duration = Duration::from_secs(5);

fn admin(relay: &relay::Relay, net_dir: &std::path::Path, n: usize) -> AdminClient {
    let addr = relay.admin_addr().expect("admin listener");
    let token = ops::AdminToken::load_or_create(&net_dir.join(format!("relay-{n}"))).unwrap();
    AdminClient::new(&format!("http://{addr}"), token)
}

fn new_route(host: &str, path: &str, target: &str) -> NewRoute {
    serde_json::from_value(serde_json::json!({ "host": host, "path": path, "target": target })).unwrap()
}

async fn status_of(net: &TestNet, host: &str, path: &str) -> StatusCode {
    net.client()
        .get(host, path)
        .await
        .map(|r| r.status)
        .unwrap_or(StatusCode::IM_A_TEAPOT)
}

async fn eventually(net: &TestNet, host: &str, path: &str, want: StatusCode) -> bool {
    wait_until(SOON, || async {
        (status_of(net, host, path).await == want).then_some(())
    })
    .await
    .is_some()
}

async fn net_with_relay(backend: &Backend) -> TestNet {
    TestNet::builder()
        .key("a", &["*.site.test"])
        .relay("a", &[("app.site.test", &backend.url())])
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn add_edit_remove_are_live_at_the_gateway() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let net = net_with_relay(&a).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);

    // Add: with ?wait=1 the answer comes once the gateway has it.
    let reply = api.add(&new_route("new.site.test", "/", &b.url()), true).await.unwrap();
    assert_eq!(reply["gateways"]["acknowledged"], 1, "{reply}");
    assert_eq!(status_of(&net, "new.site.test", "/").await, StatusCode::OK);
    assert_eq!(b.hits(), 1);

    // Edit: point it elsewhere.
    let id = reply["route"]["id"].as_u64().unwrap();
    let patch = RoutePatch {
        target: Some(a.url()),
        ..Default::default()
    };
    api.update(id, &patch, true).await.unwrap();
    let before = a.hits();
    assert_eq!(status_of(&net, "new.site.test", "/").await, StatusCode::OK);
    assert_eq!(a.hits(), before + 1);

    // Disable, then remove: 502 (registered host, no route served).
    api.update(
        id,
        &RoutePatch {
            enabled: Some(false),
            ..Default::default()
        },
        true,
    )
    .await
    .unwrap();
    assert_eq!(status_of(&net, "new.site.test", "/").await, StatusCode::BAD_GATEWAY);
    api.remove(id, true).await.unwrap();
    assert_eq!(status_of(&net, "new.site.test", "/").await, StatusCode::BAD_GATEWAY);
    assert_eq!(
        status_of(&net, "app.site.test", "/").await,
        StatusCode::OK,
        "the other route is untouched"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    let post = |body: &'static str| api.raw(Method::POST, "/api/routes", Some(Bytes::from(body)), true);

    let (s, j) = post("{not json").await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    assert!(j["error"].as_str().unwrap().contains("invalid JSON"));
    let (s, j) = post(r#"{"host":"x.site.test","target":"8080","tagret":"typo"}"#)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"].as_str().unwrap().contains("unknown field `tagret`"), "{j}");
    let (s, j) = post(r#"{"host":"bad host","target":"8080"}"#).await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    let big = format!(
        r#"{{"host":"x.site.test","target":"8080","middlewares":["{}"]}}"#,
        "x".repeat(70_000)
    );
    let (s, j) = api
        .raw(Method::POST, "/api/routes", Some(Bytes::from(big)), true)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{j}");
    assert_eq!(
        j["error"],
        format!("the body is over {} bytes", relay::admin::MAX_BODY),
        "{j}"
    );
    let (s, j) = post(r#"{"host":"app.site.test","target":"9999"}"#).await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{j}");
    assert!(j["error"].as_str().unwrap().contains("app.site.test"), "{j}");
    let (s, _) = api.raw(Method::GET, "/api/routes/999", None, true).await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // PATCH: an unknown field is 400, taking another route's host and path 409.
    let (s, j) = post(r#"{"host":"other.site.test","target":"8080"}"#).await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let other = j["route"]["id"].as_u64().unwrap();
    let other_path = format!("/api/routes/{other}");
    let patch = |body: &'static str| api.raw(Method::PATCH, &other_path, Some(Bytes::from(body)), true);
    let (s, j) = patch(r#"{"tagret":"9090"}"#).await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    assert!(j["error"].as_str().unwrap().contains("unknown field `tagret`"), "{j}");
    let (s, j) = patch(r#"{"host":"app.site.test"}"#).await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("a route for app.site.test already exists"),
        "{j}"
    );
    let (s, j) = patch(r#"{"priority":"high"}"#).await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    let unchanged = api.routes().await.unwrap().into_iter().find(|r| r.id == other).unwrap();
    assert_eq!((unchanged.host.as_str(), unchanged.priority), ("other.site.test", 0));
    let (s, j) = api.raw(Method::GET, "/api/routes", None, false).await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
    let (s, _) = api.raw(Method::GET, "/openapi.json", None, false).await.unwrap();
    assert_eq!(s, StatusCode::OK, "the API description is public");
}

#[tokio::test]
async fn admin_listener_stays_on_loopback_unless_forced() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let mut config = net.relay_config("a", routes(&[("app.test", &backend.url())]));
    config.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = relay::Relay::start(config.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("not a loopback address") && err.contains("dangerous_admin_public"),
        "{err}"
    );
    config.dangerous_admin_public = true;
    let relay = relay::Relay::start(config).await.expect("allowed when forced");
    assert!(!relay.admin_addr().unwrap().ip().is_loopback());
}

#[tokio::test]
async fn relay_restart_keeps_the_store_and_resyncs() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let config = net.relay_config("a", routes(&[("app.site.test", &backend.url())]));
    let relay = relay::Relay::start(config.clone()).await.unwrap();
    relay.wait_ready(1, SOON).await.unwrap();
    let token = ops::AdminToken::load_or_create(&config.data_dir).unwrap();
    let api = AdminClient::new(&format!("http://{}", relay.admin_addr().unwrap()), token);
    api.add(&new_route("two.site.test", "/", &backend.url()), true)
        .await
        .unwrap();
    let version = api.status().await.unwrap()["version"].as_u64().unwrap();
    relay.shutdown();
    relay.wait().await;
    assert!(eventually(&net, "two.site.test", "/", StatusCode::BAD_GATEWAY).await);

    // Same data dir, no --route flags: the store alone brings both back.
    let mut again = config.clone();
    again.routes.clear();
    let relay = relay::Relay::start(again).await.unwrap();
    let ready = relay.wait_ready(1, SOON).await.unwrap();
    let acked = ready.values().find_map(|g| g.session.as_ref()?.routes_version_acked);
    assert_eq!(acked, Some(version));
    assert_eq!(status_of(&net, "app.site.test", "/").await, StatusCode::OK);
    assert_eq!(status_of(&net, "two.site.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn gateway_restart_gets_the_full_set_on_handshake() {
    let backend = Backend::start().await;
    let mut net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    for i in 0..20 {
        api.add(&new_route(&format!("r{i}.site.test"), "/", &backend.url()), false)
            .await
            .unwrap();
    }
    let want = net.relays[0].store().routes().snapshot();
    assert_eq!(want.specs.len(), 21);
    net.restart_gateway().await.unwrap();

    // The new gateway holds the relay's whole set: same version, same
    // checksum over all 21 routes, acknowledged as in sync.
    let held = wait_until(SOON, || async {
        let sets = net.gateway.route_sets();
        (sets == [(want.version, want.checksum)]).then_some(())
    })
    .await;
    assert!(held.is_some(), "{:?}", net.gateway.route_sets());
    let mut status = net.relays[0].status();
    let acked = tokio::time::timeout(
        SOON,
        status.wait_for(|s| {
            s.values()
                .any(|g| g.session.as_ref().and_then(|i| i.routes_version_acked) == Some(want.version))
        }),
    )
    .await;
    assert!(
        acked.is_ok(),
        "the relay never saw version {} acknowledged",
        want.version
    );
    for spec in &want.specs {
        assert_eq!(status_of(&net, &spec.host, "/").await, StatusCode::OK, "{}", spec.host);
    }
}

#[tokio::test]
async fn drift_at_the_gateway_is_found_and_repaired() {
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    assert_eq!(status_of(&net, "app.site.test", "/").await, StatusCode::OK);
    net.gateway.dangerous_forget_a_route();
    assert_ne!(
        status_of(&net, "app.site.test", "/").await,
        StatusCode::OK,
        "the route was dropped"
    );
    let repaired = Instant::now();
    assert!(
        eventually(&net, "app.site.test", "/", StatusCode::OK).await,
        "no resync"
    );
    // A heartbeat (1 s) carries the checksum that exposes the drift.
    assert!(
        repaired.elapsed() < Duration::from_secs(3),
        "took {:?}",
        repaired.elapsed()
    );
}

#[tokio::test]
async fn rollback_restores_a_version_exactly() {
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    api.add(&new_route("one.site.test", "/", &backend.url()), false)
        .await
        .unwrap();
    let at_n = api.status().await.unwrap();
    let (n, checksum_n) = (at_n["version"].as_u64().unwrap(), at_n["checksum"].clone());
    // Later changes: one removed, one added, one edited.
    let routes = api.routes().await.unwrap();
    let one = routes.iter().find(|r| r.host == "one.site.test").unwrap().id;
    let app = routes.iter().find(|r| r.host == "app.site.test").unwrap().id;
    api.remove(one, false).await.unwrap();
    api.add(&new_route("later.site.test", "/", &backend.url()), false)
        .await
        .unwrap();
    api.update(
        app,
        &RoutePatch {
            priority: Some(5),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap();
    assert_ne!(api.status().await.unwrap()["checksum"], checksum_n);

    let reply = api.rollback(n, true).await.unwrap();
    assert_eq!(reply["checksum"], checksum_n, "route set equals version {n}'s");
    assert_eq!(api.status().await.unwrap()["checksum"], checksum_n);
    assert_eq!(status_of(&net, "one.site.test", "/").await, StatusCode::OK);
    assert_eq!(status_of(&net, "later.site.test", "/").await, StatusCode::BAD_GATEWAY);
    let history = api.history(10).await.unwrap();
    assert_eq!(history[0].action, "rollback");
    assert_eq!(history[0].version, n + 4);
    let (s, _) = api
        .raw(
            Method::POST,
            "/api/rollback",
            Some(Bytes::from(r#"{"version":999}"#)),
            true,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unhealthy_target_is_503_at_the_gateway_until_it_recovers() {
    // A target that comes and goes: a listener on a fixed port.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backend = Backend::start_on(addr).await;
    let net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    let route = new_route("checked.site.test", "/", &backend.url());
    let route = NewRoute {
        health: Some(HealthCheck {
            path: "/".into(),
            interval_secs: 1,
            timeout_ms: 500,
            unhealthy_after: 2,
            healthy_after: 1,
        }),
        ..route
    };
    api.add(&route, true).await.unwrap();
    assert_eq!(status_of(&net, "checked.site.test", "/").await, StatusCode::OK);

    drop(backend);
    let down = wait_until(Duration::from_secs(8), || async {
        (status_of(&net, "checked.site.test", "/").await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(down.is_some(), "never 503");
    let reply = net.client().get("checked.site.test", "/").await.unwrap();
    assert_eq!(reply.headers["x-routehub-error"], "unhealthy");
    let health = api.health().await.unwrap();
    assert!(health.iter().any(|h| !h.healthy), "{health:?}");

    let _back = Backend::start_on(addr).await;
    assert!(
        wait_until(Duration::from_secs(8), || async {
            (status_of(&net, "checked.site.test", "/").await == StatusCode::OK).then_some(())
        })
        .await
        .is_some(),
        "never recovered"
    );
}

#[tokio::test]
async fn the_event_feed_streams_changes() {
    use http_body_util::BodyExt;
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    let relay = &net.relays[0];
    let token = ops::AdminToken::load_or_create(&net.dir.path().join("relay-0")).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.admin_addr().unwrap())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/events")
        .header("host", "admin")
        .header("authorization", format!("Bearer {}", token.secret()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let api = admin(relay, net.dir.path(), 0);
    let reply = api
        .add(&new_route("feed.site.test", "/", &backend.url()), false)
        .await
        .unwrap();
    // Events are compact: the version, the kind and the route, not the data.
    let want = serde_json::json!({
        "version": reply["version"], "action": "add", "route_id": reply["route"]["id"],
        "actor": "api", "checksum": reply["checksum"],
    });
    let is_it = |event: &str| {
        let Some(data) = event.strip_prefix("event: change\ndata: ") else {
            return false;
        };
        let mut got: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
        got.as_object_mut().unwrap().remove("at");
        got == want
    };
    let mut seen = String::new();
    let found = tokio::time::timeout(SOON, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen.push_str(&String::from_utf8_lossy(data));
                if seen.split("\n\n").any(is_it) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    assert!(seen.starts_with("event: status\n"), "{seen}");
    assert!(!seen.contains("feed.site.test"), "no route data in the feed: {seen}");
}

#[tokio::test]
async fn a_route_the_gateway_refuses_comes_back_with_the_reason() {
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    let reply = api
        .add(&new_route("elsewhere.test", "/", &backend.url()), true)
        .await
        .unwrap();
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{reply}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("may not serve elsewhere.test"),
        "{reply}"
    );
    let status = api.status().await.unwrap();
    let gw = status["gateways"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(gw["refused"][0]["route_id"], reply["route"]["id"], "{status}");
    // The allowed routes are unaffected.
    assert_eq!(status_of(&net, "app.site.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn editing_the_target_keeps_the_health_check_and_null_removes_the_policy() {
    let backend = Backend::start().await;
    let net = net_with_relay(&backend).await;
    let api = admin(&net.relays[0], net.dir.path(), 0);
    let route = NewRoute {
        health: Some(HealthCheck {
            path: "/".into(),
            interval_secs: 60,
            timeout_ms: 500,
            unhealthy_after: 3,
            healthy_after: 1,
        }),
        policy: serde_json::json!({ "auth": "public", "ip_allow": ["127.0.0.0/8"] }),
        ..new_route("kept.site.test", "/", &backend.url())
    };
    let reply = api.add(&route, true).await.unwrap();
    let id = reply["route"]["id"].as_u64().unwrap();

    // What `routehub routes edit --target` sends: only the target.
    let other = Backend::start().await;
    let patch = RoutePatch {
        target: Some(other.url()),
        ..Default::default()
    };
    let reply = api.update(id, &patch, true).await.unwrap();
    assert_eq!(reply["route"]["target"], other.url().as_str(), "{reply}");
    let stored = api.routes().await.unwrap().into_iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        stored.health, route.health,
        "the health check survives an edit of the target"
    );
    assert_eq!(stored.policy["ip_allow"][0], "127.0.0.0/8", "so does the policy");

    // `"policy": null` removes the policy (public), like `"health": null`.
    let (s, j) = api
        .raw(
            Method::PATCH,
            &format!("/api/routes/{id}"),
            Some(Bytes::from(r#"{"policy":null,"health":null}"#)),
            true,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["route"]["policy"], serde_json::Value::Null, "{j}");
    assert_eq!(j["route"]["health"], serde_json::Value::Null, "{j}");
}

/// Starts a relay with `config`, waits for its gateway to have its routes,
/// and returns it with its admin client.
async fn start_ready(config: relay::RelayConfig) -> (relay::Relay, AdminClient) {
    let relay = relay::Relay::start(config.clone()).await.unwrap();
    relay.wait_ready(1, SOON).await.unwrap();
    let token = ops::AdminToken::load_or_create(&config.data_dir).unwrap();
    let api = AdminClient::new(&format!("http://{}", relay.admin_addr().unwrap()), token);
    (relay, api)
}

async fn stop(relay: relay::Relay) {
    relay.shutdown();
    relay.wait().await;
}

#[tokio::test]
async fn route_flags_seed_the_store_once_and_never_bring_back_a_removed_route() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let config = net.relay_config("a", routes(&[("app.site.test", &backend.url())]));
    let (relay, api) = start_ready(config.clone()).await;
    let app = api.routes().await.unwrap()[0].id;
    api.remove(app, true).await.unwrap();
    stop(relay).await;

    // Same flags plus a new one: the removed route stays removed, the new
    // flag is added.
    let mut more = config.clone();
    more.routes = routes(&[("app.site.test", &backend.url()), ("new.site.test", &backend.url())]);
    let (relay, api) = start_ready(more.clone()).await;
    let hosts: Vec<String> = api.routes().await.unwrap().into_iter().map(|r| r.host).collect();
    assert_eq!(hosts, ["new.site.test"]);
    assert_eq!(status_of(&net, "new.site.test", "/").await, StatusCode::OK);
    assert_eq!(status_of(&net, "app.site.test", "/").await, StatusCode::BAD_GATEWAY);
    let new = api.routes().await.unwrap()[0].id;
    api.remove(new, true).await.unwrap();
    stop(relay).await;

    // And once removed, the new one stays removed too.
    let (_relay, api) = start_ready(more).await;
    assert!(api.routes().await.unwrap().is_empty());
    assert_eq!(api.history(1).await.unwrap()[0].action, "remove", "no change at start");
}

#[tokio::test]
async fn a_route_stored_unhealthy_stays_503_after_a_relay_restart() {
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let config = net.relay_config("a", Vec::new());
    // What a relay stopped while its target was down left in the store. The
    // interval is long: only the first check runs during the test, so the
    // route is never proven unhealthy again, only remembered.
    let check = HealthCheck {
        path: "/".into(),
        interval_secs: 3600,
        timeout_ms: 500,
        unhealthy_after: 3,
        healthy_after: 1,
    };
    {
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let store = relay::store::Store::open(&config.data_dir.join(relay::STORE_FILE)).unwrap();
        let route = NewRoute {
            health: Some(check.clone()),
            ..new_route("down.site.test", "/", &dead)
        };
        let id = store.add(route, "t").await.unwrap().route_id.unwrap();
        store
            .record_health(id, (dead.clone(), check), "unhealthy", "refused".into(), 3, true)
            .await
            .unwrap()
            .expect("recorded");
    }
    let (_relay, api) = start_ready(config).await;
    assert!(
        eventually(&net, "down.site.test", "/", StatusCode::SERVICE_UNAVAILABLE).await,
        "the stored state was forgotten: {:?}",
        status_of(&net, "down.site.test", "/").await
    );
    let health = api.health().await.unwrap();
    assert_eq!(health[0].status, "unhealthy", "{health:?}");
}

#[tokio::test]
async fn a_start_that_fails_writes_no_seed_routes() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let mut config = net.relay_config("a", routes(&[("app.site.test", &backend.url())]));
    let store_file = config.data_dir.join(relay::STORE_FILE);
    let stored = |path: &std::path::Path| {
        let path = path.to_owned();
        async move {
            let store = relay::store::Store::open(&path).unwrap();
            store
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.host)
                .collect::<Vec<_>>()
        }
    };

    // The admin address is taken: the start fails after the store opened.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.admin_listen = Some(taken.local_addr().unwrap());
    let err = relay::Relay::start(config.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("admin listener"), "{err}");
    assert!(stored(&store_file).await.is_empty(), "a failed start wrote its seeds");

    // A bad seed after a good one: nothing of either is written.
    let mut bad = config.clone();
    bad.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    bad.routes = routes(&[("ok.site.test", &backend.url()), ("bad host", &backend.url())]);
    let err = relay::Relay::start(bad).await.err().expect("refused").to_string();
    assert!(err.contains("bad host"), "{err}");
    assert!(stored(&store_file).await.is_empty(), "a failed start wrote its seeds");

    // The seed was never recorded as applied: the start that succeeds adds it.
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let (_relay, api) = start_ready(config).await;
    let hosts: Vec<String> = api.routes().await.unwrap().into_iter().map(|r| r.host).collect();
    assert_eq!(hosts, ["app.site.test"]);
    assert_eq!(status_of(&net, "app.site.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn two_seed_routes_for_one_host_and_path_are_an_error_naming_both() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    // The same host and path twice, from relay.toml (`[[route]]`, written
    // differently) and a flag: the second would be dropped.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("relay.toml");
    let toml_text = format!(
        "[[route]]\nhost = \"app.site.test\"\npath = \"/api\"\ntarget = \"{}\"\n\n\
         [[route]]\nhost = \"App.site.test\"\npath = \"/api/\"\ntarget = \"{}\"\n",
        a.url(),
        b.url()
    );
    std::fs::write(&toml, toml_text).unwrap();
    let from_file: relay::RelayConfig = ops::fs::read_toml(&toml).unwrap();
    let mut config = net.relay_config("a", from_file.routes);
    let data_dir = config.data_dir.clone();
    let err = relay::Relay::start(config.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("app.site.test/api"), "{err}");
    assert!(
        err.contains(&format!("app.site.test/api={}", a.url()))
            && err.contains(&format!("App.site.test/api/={}", b.url())),
        "names both: {err}"
    );
    let mut flagged = config.clone();
    flagged.routes = routes(&[("app.site.test", &a.url()), ("app.site.test", &b.url())]);
    let err = relay::Relay::start(flagged).await.err().expect("refused").to_string();
    assert!(
        err.contains(&format!("app.site.test={}", a.url())) && err.contains(&format!("app.site.test={}", b.url())),
        "{err}"
    );
    assert!(
        !data_dir.join(relay::STORE_FILE).exists(),
        "refused before the store is even opened"
    );

    // One host with different paths is fine, as the README shows.
    config.routes = routes(&[("app.site.test", &a.url()), ("app.site.test/api", &b.url())]);
    let (_relay, api) = start_ready(config).await;
    assert_eq!(api.routes().await.unwrap().len(), 2);
    let before = b.hits();
    assert_eq!(status_of(&net, "app.site.test", "/api/x").await, StatusCode::OK);
    assert_eq!(b.hits(), before + 1);
}
