//! Routes from container labels, against the machine's real Docker Engine:
//! containers started, killed and labelled the way users do it.

use std::time::{Duration, Instant};

use harness::browser::Browser;
use harness::docker::{self, Container};
use harness::{TestNet, wait_until};
use http::StatusCode;
use relay::Relay;
use relay::model::Route;

/// What "within 1 s" is measured against: the container event to the
/// route in the store.
const WITHIN: Duration = Duration::from_secs(1);

async fn net_and_relay() -> (TestNet, Relay) {
    harness::init();
    let net = TestNet::builder().key("a", &["*.label.test"]).start().await.unwrap();
    let relay = net.start_label_relay("a", docker::SOCKET.as_ref()).await.unwrap();
    (net, relay)
}

/// The routes of container `name`. (Every relay here follows the one
/// engine, so each test looks at its own containers only.)
async fn label_routes(relay: &Relay, name: &str) -> Vec<Route> {
    let owner = format!("container:{name}");
    let mut routes = relay.store().list().await.unwrap();
    routes.retain(|r| r.owner.as_ref() == Some(&owner));
    routes
}

/// Waits until the routes of container `name` satisfy `check`; how long
/// it took.
async fn until(relay: &Relay, name: &str, within: Duration, check: impl Fn(&[Route]) -> bool) -> Option<Duration> {
    let started = Instant::now();
    wait_until(within, || async {
        let routes = label_routes(relay, name).await;
        check(&routes).then_some(())
    })
    .await
    .map(|()| started.elapsed())
}

async fn body_of(net: &TestNet, host: &str, path: &str) -> Option<String> {
    let reply = net.client().get(host, path).await.ok()?;
    (reply.status == StatusCode::OK).then(|| String::from_utf8_lossy(&reply.body).trim().to_owned())
}

/// `docker run` arguments of a web container routed by `host_label`,
/// with a healthcheck that passes once it serves.
fn healthy_at(host_label: &'static str) -> [&'static str; 8] {
    [
        "--label",
        host_label,
        "--label",
        "routehub.port=8080",
        "--health-cmd",
        "/bin/busybox wget -q -O- http://127.0.0.1:8080/",
        "--health-interval",
        "1s",
    ]
}

fn name(test: &str) -> String {
    format!("routehub-labels-{test}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routehub_labels_follow_a_container_from_healthy_to_killed() {
    let Some(engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (net, relay) = net_and_relay().await;

    // With a healthcheck: no route until it passes.
    let web: Container = engine
        .web(&name("web"), "hello-web", &healthy_at("routehub.host=web.label.test"))
        .await
        .unwrap();
    assert!(
        label_routes(&relay, &web.name).await.is_empty(),
        "no route before the container is healthy"
    );
    until(&relay, &web.name, Duration::from_secs(15), |r| r.len() == 1)
        .await
        .expect("a route once healthy");
    let route = &label_routes(&relay, &web.name).await[0];
    assert_eq!((route.host.as_str(), route.path.as_str()), ("web.label.test", "/"));
    assert_eq!(route.owner.as_deref(), Some(format!("container:{}", web.name).as_str()));
    assert!(route.target.ends_with(":8080"), "{}", route.target);
    let served = wait_until(Duration::from_secs(5), || body_of(&net, "web.label.test", "/")).await;
    assert_eq!(served.as_deref(), Some("hello-web"), "served through the gateway");

    // Killed behind the relay's back: the route goes within 1 s, and the
    // gateway stops routing to it.
    web.kill().await.unwrap();
    let gone = until(&relay, &web.name, Duration::from_secs(5), |r| r.is_empty()).await;
    let gone = gone.expect("the route of a killed container goes");
    assert!(gone < WITHIN, "removed {gone:?} after the kill");
    // The host stays one the relay's key may serve: no relay serves it now.
    let answer = wait_until(Duration::from_secs(5), || async {
        let status = net.client().get("web.label.test", "/").await.ok()?.status;
        (status != StatusCode::OK).then_some(status)
    })
    .await;
    assert_eq!(answer, Some(StatusCode::BAD_GATEWAY));
    eprintln!("route removed {gone:?} after docker kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_labels_make_routes_and_api_routes_win_a_clash() {
    let Some(engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (net, relay) = net_and_relay().await;
    // A route made through the API for a host and path a container asks for.
    let manual: relay::model::NewRoute = serde_json::from_value(serde_json::json!({
        "host": "taken.label.test", "target": "http://127.0.0.1:9"
    }))
    .unwrap();
    relay.store().add(manual, "test").await.unwrap();

    let started = Instant::now();
    let app = engine
        .web(
            &name("traefik"),
            "hello-traefik",
            &[
                "--label",
                "traefik.http.routers.app.rule=Host(`tr.label.test`) && PathPrefix(`/api`)",
                "--label",
                "traefik.http.services.app.loadbalancer.server.port=8080",
                "--label",
                "routehub.host=taken.label.test",
                "--label",
                "routehub.port=8080",
                // Not even a path the API route does not cover.
                "--label",
                "traefik.http.routers.sneak.rule=Host(`taken.label.test`) && PathPrefix(`/api`)",
            ],
        )
        .await
        .unwrap();
    let run_took = started.elapsed();
    let added = until(&relay, &app.name, Duration::from_secs(10), |r| !r.is_empty())
        .await
        .expect("a route from the Traefik labels");
    assert!(added < WITHIN, "added {added:?} after `docker run` returned");
    eprintln!("route added {added:?} after docker run returned (which took {run_took:?})");
    let routes = label_routes(&relay, &app.name).await;
    assert_eq!(routes.len(), 1, "the clashing label route is not added: {routes:?}");
    assert_eq!(routes[0].host, "tr.label.test");
    assert_eq!(routes[0].path, "/api");
    let all = relay.store().list().await.unwrap();
    let taken: Vec<&Route> = all.iter().filter(|r| r.host == "taken.label.test").collect();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].owner.as_ref(), taken[0].target.as_str()),
        (None, "http://127.0.0.1:9")
    );

    // The clashes are told, not only logged.
    let status = relay.labels();
    let told = wait_until(Duration::from_secs(5), || {
        let labels = status.borrow().clone();
        let told = ["taken.label.test", "taken.label.test/api"].iter().all(|route| {
            labels
                .left_out
                .iter()
                .any(|l| l.container == app.name && &l.route == route && l.reason.contains("made through the API"))
        });
        async move { told.then_some(()) }
    })
    .await;
    let labels = relay.labels().borrow().clone();
    assert!(told.is_some(), "{labels:?}");
    assert!(labels.engine.starts_with("following"), "{}", labels.engine);
    let served = wait_until(Duration::from_secs(5), || body_of(&net, "tr.label.test", "/api/")).await;
    assert_eq!(served.as_deref(), Some("hello-traefik"));
    let outside = net.client().get("tr.label.test", "/").await.unwrap();
    assert_eq!(
        outside.status,
        StatusCode::NOT_FOUND,
        "only under the rule's path prefix"
    );

    // The dashboard shows whose route it is and what was left out.
    let Some(browser) = Browser::launch().await.unwrap() else {
        return;
    };
    let mut page = browser
        .dashboard(&relay, &net.dir.path().join("relay-0"))
        .await
        .unwrap();
    let row = page
        .wait_for(
            "[...document.querySelectorAll('#routes tbody tr')].map(r => r.innerText).find(t => t.includes('tr.label.test'))",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        row.as_str().unwrap().contains(&format!("container:{}", app.name)),
        "{row}"
    );
    let left_out = page
        .wait_for(
            "document.querySelector('#left-out').innerText || null",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let left_out = left_out.as_str().unwrap();
    assert!(
        left_out.contains("taken.label.test") && left_out.contains(&app.name),
        "{left_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_goes_away_and_comes_back_is_read_anew() {
    let Some(engine) = docker::engine().await.unwrap() else {
        return;
    };
    harness::init();
    let mut proxy = docker::SocketProxy::start().unwrap();
    let net = TestNet::builder().key("a", &["*.label.test"]).start().await.unwrap();
    let relay = net.start_label_relay("a", &proxy.path).await.unwrap();
    let labelled = |host: &'static str| ["--label", host, "--label", "routehub.port=8080"];
    let old = engine
        .web(&name("old"), "old", &labelled("routehub.host=old.label.test"))
        .await
        .unwrap();
    until(&relay, &old.name, Duration::from_secs(10), |r| r.len() == 1)
        .await
        .expect("a route while the engine is there");

    // The engine goes away; meanwhile one container dies and another starts.
    proxy.cut();
    let labels = relay.labels();
    let lost = wait_until(Duration::from_secs(5), || {
        let engine = labels.borrow().engine.clone();
        async move { (!engine.starts_with("following")).then_some(engine) }
    })
    .await;
    assert!(lost.is_some(), "the relay noticed the engine is gone");
    old.kill().await.unwrap();
    let new = engine
        .web(&name("new"), "new", &labelled("routehub.host=new.label.test"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        label_routes(&relay, &old.name).await.len(),
        1,
        "routes are kept while the engine is away"
    );

    // Back: what happened meanwhile is read anew.
    proxy.restore().unwrap();
    until(&relay, &old.name, Duration::from_secs(15), |r| r.is_empty())
        .await
        .expect("the route of the container that died meanwhile goes");
    until(&relay, &new.name, Duration::from_secs(5), |r| r.len() == 1)
        .await
        .expect("the container that started meanwhile gets its route");
    assert!(relay.labels().borrow().engine.starts_with("following"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_container_takes_a_route_over_once_ready_and_no_request_fails() {
    let Some(engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (net, relay) = net_and_relay().await;
    let labels = healthy_at("routehub.host=bg.label.test");
    let blue = engine.web(&name("blue"), "blue", &labels).await.unwrap();
    until(&relay, &blue.name, Duration::from_secs(15), |r| r.len() == 1)
        .await
        .expect("blue gets the route");
    let route_id = label_routes(&relay, &blue.name).await[0].id;
    let served = wait_until(Duration::from_secs(5), || body_of(&net, "bg.label.test", "/")).await;
    assert_eq!(served.as_deref(), Some("blue"));

    // A bounded load through the gateway for the whole switch.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (net.client(), stop.clone());
        tokio::spawn(async move {
            let (mut bodies, mut failures) = (Vec::new(), Vec::new());
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client.get("bg.label.test", "/").await {
                    Ok(r) if r.status == StatusCode::OK => {
                        bodies.push(String::from_utf8_lossy(&r.body).trim().to_owned())
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (bodies, failures)
        })
    };

    // Green starts beside blue; blue keeps the route until green is healthy.
    let green = engine.web(&name("green"), "green", &labels).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        label_routes(&relay, &blue.name).await.len(),
        1,
        "blue serves while green starts"
    );
    until(&relay, &green.name, Duration::from_secs(15), |r| r.len() == 1)
        .await
        .expect("green takes the route over once healthy");
    let route = &label_routes(&relay, &green.name).await[0];
    assert_eq!(route.id, route_id, "one route, its target switched in one change");
    let labels = relay.labels();
    let told = wait_until(Duration::from_secs(5), || {
        let told = labels
            .borrow()
            .left_out
            .iter()
            .any(|l| l.container == blue.name && l.reason.contains(&green.name));
        async move { told.then_some(()) }
    })
    .await;
    assert!(told.is_some(), "{:?}", relay.labels().borrow().left_out);

    // Then blue goes; the load goes on a little, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    docker::docker(&["stop", "-t", "1", &blue.name]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (bodies, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:?}",
        failures.len(),
        bodies.len() + failures.len()
    );
    assert_eq!(bodies.first().map(String::as_str), Some("blue"));
    assert_eq!(bodies.last().map(String::as_str), Some("green"));
    eprintln!("{} requests through the switch, none failed", bodies.len());
}
