//! Compose deployments through the relay's admin API, against the
//! machine's Docker Engine and compose CLI, reached through the gateway
//! by their labels: versions, rollback pinned to image IDs, automatic
//! rollback, a blue-green redeploy under load, the engine going away
//! mid-deploy.

use std::time::Duration;

use harness::browser::Browser;
use harness::docker::{self, IMAGE};
use harness::{TestNet, wait_until};
use http::StatusCode;
use relay::client::AdminClient;
use relay::deployer::Apply;
use relay::records::DeployStatus;
use relay::{Relay, RelayConfig};

/// Removes every generation of a compose (containers, networks) however
/// the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = format!("routehub_{}_", self.0);
        let listed = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let ids: Vec<String> = listed(&[
            "ps",
            "-a",
            "--format",
            "{{.ID}} {{.Label \"com.docker.compose.project\"}}",
        ])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, p)| p.starts_with(&prefix))
        .map(|(id, _)| id.to_owned())
        .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        for net in listed(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .filter(|n| n.starts_with(&prefix))
        {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", net])
                .output();
        }
    }
}

/// A test's compose name (unique per run) and its cleanup.
fn compose_name(test: &str) -> (String, Cleanup) {
    let name = format!("t{}-{test}", std::process::id());
    (name.clone(), Cleanup(name))
}

/// A gateway, and a relay that follows the engine at `socket` and deploys.
async fn net_and_relay(socket: &std::path::Path) -> (TestNet, Relay, AdminClient) {
    let (net, relay, api, _) = net_relay_and_dir(socket).await;
    (net, relay, api)
}

/// [`net_and_relay`], and the relay's data dir.
async fn net_relay_and_dir(socket: &std::path::Path) -> (TestNet, Relay, AdminClient, std::path::PathBuf) {
    harness::init();
    let net = TestNet::builder().key("a", &["*.label.test"]).start().await.unwrap();
    let config = RelayConfig {
        label_routes: true,
        deployments: true,
        docker_socket: socket.to_owned(),
        ..net.relay_config("a", Vec::new())
    };
    let relay = Relay::start(config.clone()).await.unwrap();
    relay.wait_ready(1, Duration::from_secs(10)).await.unwrap();
    let token = ops::AdminToken::load_or_create(&config.data_dir).unwrap();
    let api = AdminClient::new(&format!("http://{}", relay.admin_addr().unwrap()), token);
    (net, relay, api, config.data_dir)
}

/// A web service of `image` at `host` with a healthcheck, and a one-shot
/// `init` that logs and exits 0. `extra` goes under the web service.
fn web_yaml(image: &str, host: &str, extra: &str) -> String {
    format!(
        r#"version: "2.4"
services:
  web:
    image: {image}
    command: ["sh", "-c", "exec /bin/busybox httpd -f -p 8080 -h /www"]
    labels:
      routehub.host: {host}
      routehub.port: "8080"
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
{extra}  init:
    image: {IMAGE}
    command: ["sh", "-c", "echo init-done"]
"#
    )
}

async fn body_of(net: &TestNet, host: &str) -> Option<String> {
    let reply = net.client().get(host, "/").await.ok()?;
    (reply.status == StatusCode::OK).then(|| String::from_utf8_lossy(&reply.body).trim().to_owned())
}

/// Waits until `host` answers `want` through the gateway.
async fn serves(net: &TestNet, host: &str, want: &str) -> bool {
    wait_until(Duration::from_secs(15), || async {
        (body_of(net, host).await.as_deref() == Some(want)).then_some(())
    })
    .await
    .is_some()
}

async fn deployed(api: &AdminClient, apply: &Apply) -> relay::records::Deployment {
    let d = api.apply(apply).await.unwrap();
    assert_eq!(d.status, DeployStatus::Deploying);
    api.wait_deployment(d.id, Duration::from_secs(120)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_is_deployed_updated_and_rolled_back_to_the_image_it_ran() {
    let Some(_engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (name, _cleanup) = compose_name("cycle");
    let (net, _relay, api, data_dir) = net_relay_and_dir(docker::SOCKET.as_ref()).await;
    let tag = format!("routehub-test-deploy:{}", std::process::id());
    let host = format!("{name}.label.test");
    docker::build_web_image(&tag, "one").await.unwrap();

    // Version 1: both services come up; the one-shot is completed. A
    // secret reaches the container and nothing else.
    // `#` and `$` as well: an env file would cut and expand them.
    let secret = format!("s3cret#{}$x-value", std::process::id());
    // Required (`:?`): compose needs it even to take the version down.
    let with_secret = "    environment:\n      APP_TOKEN: \"${APP_TOKEN:?a token is required}\"\n";
    let mut apply = Apply::new(&name, &web_yaml(&tag, &host, with_secret));
    apply.description = Some("the cycle test".into());
    apply.secrets.insert("APP_TOKEN".into(), secret.clone());
    let d1 = deployed(&api, &apply).await;
    assert_eq!(d1.status, DeployStatus::Healthy, "{}: {}", d1.detail, d1.output);
    let states: Vec<(&str, &str)> = d1
        .health
        .iter()
        .map(|e| (e.service.as_str(), e.state.as_str()))
        .collect();
    assert!(states.contains(&("web", "healthy")), "{states:?}");
    assert!(
        states.contains(&("init", "completed")),
        "a clean exit is completed: {states:?}"
    );
    assert!(!states.iter().any(|(_, s)| s.starts_with("failed")), "{states:?}");
    assert!(d1.images["web"].id.starts_with("sha256:"), "{:?}", d1.images);
    assert!(!d1.output.is_empty());
    assert!(serves(&net, &host, "one").await, "version 1 through the gateway");
    let container_env = |generation: u64| {
        let container = format!("routehub_{name}_{generation}_web_1");
        async move { docker::docker(&["inspect", "-f", "{{json .Config.Env}}", &container]).await }
    };
    assert!(
        container_env(1).await.unwrap().contains(&secret),
        "the secret reaches the container"
    );
    let v1 = api.compose_version(&name, 1).await.unwrap();
    assert_eq!(v1.secret_names, ["APP_TOKEN"]);
    assert!(
        !v1.resolved.contains(&secret)
            && !v1.resolved.contains(&secret.replace('$', "$$"))
            && v1.resolved.contains(relay::records::MASK),
        "masked in the resolved config: {}",
        v1.resolved
    );
    for file in ["relay.db", "relay.db-wal", "relay.journal", "relay.backup"] {
        let bytes = std::fs::read(data_dir.join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in {file}"
        );
    }

    // Version 2: the tag now names another build; a second apply while it
    // deploys is refused, not interleaved.
    docker::build_web_image(&tag, "two").await.unwrap();
    let v2 = Apply::new(
        &name,
        &web_yaml(&tag, &host, "    environment:\n      RELEASE: \"2\"\n"),
    );
    let d2 = api.apply(&v2).await.unwrap();
    let second = api.apply(&v2).await.unwrap_err().to_string();
    assert!(second.contains("under way"), "{second}");
    let d2 = api.wait_deployment(d2.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(d2.status, DeployStatus::Healthy, "{}: {}", d2.detail, d2.output);
    assert_eq!((d2.version, d2.generation), (2, 2));
    assert!(serves(&net, &host, "two").await, "version 2 through the gateway");
    assert_ne!(d1.images["web"].id, d2.images["web"].id);
    let engine = deploy::Engine::connect(docker::SOCKET.as_ref()).await.unwrap();
    let gone = wait_until(Duration::from_secs(20), || async {
        engine
            .project(&format!("routehub_{name}_1"))
            .await
            .ok()
            .filter(Vec::is_empty)
    })
    .await;
    assert!(gone.is_some(), "the old generation stops once the new one serves");

    let diff = api.diff(&name, 1, 2).await.unwrap();
    assert!(diff.contains("+      RELEASE: \"2\""), "{diff}");
    assert!(diff.contains("--- ") && diff.contains("+++ "), "{diff}");

    // Rollback: version 1 again, on the image it ran, whatever the tag
    // says now.
    let d3 = api.rollback_compose(&name, None).await.unwrap();
    let d3 = api.wait_deployment(d3.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(d3.status, DeployStatus::Healthy, "{}: {}", d3.detail, d3.output);
    assert_eq!(d3.version, 1);
    assert_eq!(d3.reason, "rollback to version 1");
    assert_eq!(d3.images["web"].id, d1.images["web"].id, "pinned to version 1's image");
    assert!(serves(&net, &host, "one").await, "the rolled-back build serves");
    assert!(
        container_env(3).await.unwrap().contains(&secret),
        "a rollback brings its version's secrets"
    );

    // The records: three deployments, two versions, each as it was.
    let history = api.deployments(&name, 10).await.unwrap();
    let ids: Vec<u64> = history.iter().map(|d| d["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [d3.id, d2.id, d1.id]);
    let v1 = api.compose_version(&name, 1).await.unwrap();
    assert_eq!(v1.yaml, apply.yaml);
    assert!(!format!("{history:?}").contains(&secret));
    assert!(v1.resolved.contains(&host), "{}", v1.resolved);
    let listed = api.composes().await.unwrap();
    let me = listed.iter().find(|c| c["name"] == name.as_str()).unwrap();
    assert_eq!(me["live"]["id"], d3.id);
    assert_eq!(me["description"], "the cycle test");

    // Logs of one service; an unknown one is a clear error.
    let lines = api.logs(&name, Some("init"), 50).await.unwrap();
    assert!(lines.iter().any(|l| l.contains("init | init-done")), "{lines:?}");
    let unknown = api.logs(&name, Some("nope"), 50).await.unwrap_err().to_string();
    assert!(
        unknown.contains("\"nope\"") && unknown.contains("its services: init, web"),
        "{unknown}"
    );

    // A container killed behind the relay's back: the serving
    // deployment's health history records it, and status shows it.
    docker::docker(&["kill", &format!("routehub_{name}_3_web_1")])
        .await
        .unwrap();
    let recorded = wait_until(Duration::from_secs(10), || async {
        let d = api.deployment(d3.id).await.ok()?;
        d.health
            .iter()
            .any(|e| e.service == "web" && e.state.starts_with("failed"))
            .then_some(())
    })
    .await;
    assert!(recorded.is_some(), "{:?}", api.deployment(d3.id).await.unwrap().health);
    let status = api.compose_status(&name).await.unwrap();
    let web = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "web")
        .unwrap();
    assert!(web["state"].as_str().unwrap().starts_with("failed"), "{status}");

    // Removed: every generation goes, and so does the route.
    api.remove_compose(&name).await.unwrap();
    assert!(engine.project(&format!("routehub_{name}_3")).await.unwrap().is_empty());
    let route_gone = wait_until(Duration::from_secs(10), || async {
        let r = net.client().get(&host, "/").await.ok()?;
        (r.status != StatusCode::OK).then_some(())
    })
    .await;
    assert!(route_gone.is_some());
    let _ = docker::docker(&["rmi", &tag]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_gets_healthy_is_rolled_back_and_the_old_one_keeps_serving() {
    let Some(_engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (name, _cleanup) = compose_name("sick");
    let (net, _relay, api) = net_and_relay(docker::SOCKET.as_ref()).await;
    let tag = format!("routehub-test-deploy-sick:{}", std::process::id());
    let host = format!("{name}.label.test");
    docker::build_web_image(&tag, "good").await.unwrap();
    let d1 = deployed(&api, &Apply::new(&name, &web_yaml(&tag, &host, ""))).await;
    assert_eq!(d1.status, DeployStatus::Healthy, "{}", d1.detail);
    assert!(serves(&net, &host, "good").await);

    // Same labels, a healthcheck that never passes.
    let sick = web_yaml(&tag, &host, "").replace(
        r#"["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]"#,
        r#"["CMD", "/bin/busybox", "false"]
      retries: 2"#,
    );
    let mut apply = Apply::new(&name, &sick);
    apply.ready_timeout_secs = Some(30);
    let d2 = api.apply(&apply).await.unwrap();
    // The old version serves throughout.
    let mut during = 0;
    loop {
        assert_eq!(
            body_of(&net, &host).await.as_deref(),
            Some("good"),
            "the old version serves"
        );
        during += 1;
        let d = api.deployment(d2.id).await.unwrap();
        if d.status.is_final() {
            break;
        }
        assert!(during < 2_000, "bounded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d2 = api.wait_deployment(d2.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(d2.status, DeployStatus::RolledBack, "{}: {}", d2.detail, d2.output);
    assert!(d2.detail.contains("unhealthy"), "{}", d2.detail);
    assert!(
        d2.detail.contains(&format!("deployment {} (version 1) serves", d1.id)),
        "{}",
        d2.detail
    );
    assert!(d2.health.iter().any(|e| e.service == "web" && e.state == "unhealthy"));
    assert!(serves(&net, &host, "good").await);
    let engine = deploy::Engine::connect(docker::SOCKET.as_ref()).await.unwrap();
    assert!(
        engine.project(&format!("routehub_{name}_2")).await.unwrap().is_empty(),
        "the failed generation is taken down"
    );
    let status = api.compose_status(&name).await.unwrap();
    assert_eq!(status["live"]["id"], d1.id, "{status}");
    let _ = docker::docker(&["rmi", &tag]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_redeploy_under_load_fails_no_request() {
    let Some(_engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (name, _cleanup) = compose_name("bg");
    let (net, _relay, api) = net_and_relay(docker::SOCKET.as_ref()).await;
    let (blue, green) = (
        format!("routehub-test-deploy-blue:{}", std::process::id()),
        format!("routehub-test-deploy-green:{}", std::process::id()),
    );
    let host = format!("{name}.label.test");
    docker::build_web_image(&blue, "blue").await.unwrap();
    docker::build_web_image(&green, "green").await.unwrap();
    let d1 = deployed(&api, &Apply::new(&name, &web_yaml(&blue, &host, ""))).await;
    assert_eq!(d1.status, DeployStatus::Healthy, "{}", d1.detail);
    assert!(serves(&net, &host, "blue").await);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop, host) = (net.client(), stop.clone(), host.clone());
        tokio::spawn(async move {
            let (mut bodies, mut failures) = (Vec::new(), Vec::new());
            for _ in 0..50_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client.get(&host, "/").await {
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
    let d2 = deployed(&api, &Apply::new(&name, &web_yaml(&green, &host, ""))).await;
    assert_eq!(d2.status, DeployStatus::Healthy, "{}", d2.detail);
    // The old generation is down when the deployment ends; load goes on a
    // little after.
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
    let engine = deploy::Engine::connect(docker::SOCKET.as_ref()).await.unwrap();
    assert!(engine.project(&format!("routehub_{name}_1")).await.unwrap().is_empty());
    eprintln!("{} requests through the blue-green redeploy, none failed", bodies.len());
    let _ = docker::docker(&["rmi", &blue, &green]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_going_away_mid_deploy_fails_the_deployment_rather_than_leaving_it_deploying() {
    let Some(_engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (name, _cleanup) = compose_name("cut");
    let mut proxy = docker::SocketProxy::start().unwrap();
    let (_net, _relay, api) = net_and_relay(&proxy.path).await;
    let host = format!("{name}.label.test");
    // A healthcheck that takes a while: the cut comes while it waits. The
    // file asks for one of the relay process's variables, which compose
    // never sees.
    let leak = "    environment:\n      LEAK: \"${CARGO_MANIFEST_DIR}\"\n";
    let slow = web_yaml(IMAGE, &host, leak).replace(
        r#"["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]"#,
        r#"["CMD", "/bin/busybox", "sh", "-c", "sleep 30"]"#,
    );
    let d = api.apply(&Apply::new(&name, &slow)).await.unwrap();
    let deploying = wait_until(Duration::from_secs(60), || async {
        let d = api.deployment(d.id).await.ok()?;
        d.output.contains("Creat").then_some(())
    })
    .await;
    assert!(deploying.is_some(), "compose up ran");
    proxy.cut();
    let d = api.wait_deployment(d.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{}", d.detail);
    assert!(!d.detail.is_empty());
    proxy.restore().unwrap();
    // Bad input: clear errors, nothing recorded.
    let bad = api
        .apply(&Apply::new(&name, "services:\n  web:\n    image: [unclosed\n"))
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("line"), "{bad}");
    let bad_name = api
        .apply(&Apply::new("Bad Name", "services: {}\n"))
        .await
        .unwrap_err()
        .to_string();
    assert!(bad_name.contains("invalid name"), "{bad_name}");
    let big = format!("# {}\nservices: {{}}\n", "x".repeat(relay::deployer::MAX_COMPOSE_FILE));
    let too_big = api.apply(&Apply::new(&name, &big)).await.unwrap_err().to_string();
    assert!(too_big.contains("limit is 1048576"), "{too_big}");
    // With the engine gone, an apply is refused before anything is written.
    proxy.cut();
    let no_engine = api.apply(&Apply::new(&name, &slow)).await.unwrap_err().to_string();
    assert!(
        no_engine.contains("503") && no_engine.contains("Docker Engine"),
        "{no_engine}"
    );
    proxy.restore().unwrap();
    assert_eq!(api.deployments(&name, 10).await.unwrap().len(), 1);
    assert_eq!(api.compose_status(&name).await.unwrap()["compose"]["version"], 1);
    let resolved = api.compose_version(&name, 1).await.unwrap().resolved;
    assert!(resolved.contains("LEAK"), "{resolved}");
    assert!(!resolved.contains(env!("CARGO_MANIFEST_DIR")), "{resolved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_composes_their_history_diff_and_live_logs_and_rolls_back() {
    let Some(_engine) = docker::engine().await.unwrap() else {
        return;
    };
    let (name, _cleanup) = compose_name("ui");
    let (_net, relay, api, data_dir) = net_relay_and_dir(docker::SOCKET.as_ref()).await;
    let tag = format!("routehub-test-deploy-ui:{}", std::process::id());
    let host = format!("{name}.label.test");
    docker::build_web_image(&tag, "ui").await.unwrap();
    let d1 = deployed(&api, &Apply::new(&name, &web_yaml(&tag, &host, ""))).await;
    assert_eq!(d1.status, DeployStatus::Healthy, "{}", d1.detail);
    let v2 = web_yaml(&tag, &host, "    environment:\n      RELEASE: \"2\"\n");
    let d2 = deployed(&api, &Apply::new(&name, &v2)).await;
    assert_eq!(d2.status, DeployStatus::Healthy, "{}", d2.detail);

    let Some(browser) = Browser::launch().await.unwrap() else {
        return;
    };
    let mut page = browser.dashboard(&relay, &data_dir).await.unwrap();
    let row = format!("document.querySelector('#composes [data-compose=\"{name}\"]')");
    let listed = page
        .wait_for(&format!("{row} && {row}.innerText"), Duration::from_secs(15))
        .await
        .unwrap();
    let listed = listed.as_str().unwrap_or_default().to_owned();
    assert!(listed.contains("version 2") && listed.contains("healthy"), "{listed}");

    // Open it: services, history, live logs.
    page.eval(&format!("{row}.querySelector('button').click()"))
        .await
        .unwrap();
    page.wait_for(
        "document.querySelectorAll('#deployments tbody tr').length === 2",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let services = page
        .wait_for(
            "(t => t.includes('completed') && t)(document.querySelector('#services').innerText)",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(services.as_str().unwrap().contains("healthy"), "{services}");
    page.wait_for(
        "document.querySelector('#logs').textContent.includes('init | init-done')",
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // Diff of the two versions.
    page.eval(
        "(() => { const f = document.querySelector('#diff-form'); f.from.value = 1; f.to.value = 2; f.requestSubmit(); })()",
    )
    .await
    .unwrap();
    let diff = page
        .wait_for(
            "(t => t.includes('RELEASE') && t)(document.querySelector('#diff').innerText)",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(diff.as_str().unwrap().contains("+      RELEASE: \"2\""), "{diff}");

    // Roll back from the history; the page follows it to healthy.
    page.eval(
        "(() => { window.confirm = () => true; [...document.querySelectorAll('#deployments button')].find(b => b.textContent === 'Roll back to version 1').click(); })()",
    )
    .await
    .unwrap();
    page.wait_for(
        "[...document.querySelectorAll('#deployments tbody tr')].some(r => r.innerText.includes('rollback to version 1') && r.innerText.includes('healthy'))",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let history = api.deployments(&name, 5).await.unwrap();
    assert_eq!(history[0]["reason"], "rollback to version 1");
    assert_eq!(history[0]["status"], "healthy");
    let _ = docker::docker(&["rmi", &tag]).await;
}
