//! Compose projects through the machine's compose CLI (`docker-compose`
//! v1 here, `docker compose` where the plugin is) and Docker Engine, with
//! images built here.

use std::path::Path;
use std::time::Duration;

use deploy::Error;
use deploy::compose::{ComposeCli, Spec, project};
use deploy::{Engine, Readiness, ServiceHealth};
use harness::docker::{self, IMAGE};
use harness::{TestNet, wait_until};

/// Removes a project's containers and network however the test ends.
struct Project(String);

impl Drop for Project {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.0),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &format!("{}_default", self.0)])
            .output();
    }
}

/// The compose CLI and the engine, or `None` where there is no engine
/// (outside CI). Under CI a missing compose CLI fails.
async fn tools() -> Option<(ComposeCli, Engine)> {
    docker::engine().await.unwrap()?;
    let cli = ComposeCli::detect(Path::new(docker::SOCKET))
        .await
        .expect("a compose CLI");
    let engine = Engine::connect(Path::new(docker::SOCKET)).await.unwrap();
    Some((cli, engine))
}

fn unique(test: &str) -> Project {
    Project(project(&format!("{test}-{}", std::process::id()), 1).unwrap())
}

const WEB: &str = r#"["sh", "-c", "/bin/busybox mkdir -p /www && echo hello-compose > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_service_and_a_one_shot_come_up_ready_and_reachable_by_label() {
    let Some((cli, engine)) = tools().await else { return };
    harness::init();
    let p = unique("two");
    let yaml = format!(
        r#"version: "2.4"
services:
  web:
    image: {IMAGE}
    command: {WEB}
    labels:
      routehub.host: compose.label.test
      routehub.port: "8080"
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
  init:
    image: {IMAGE}
    command: ["true"]
"#
    );
    let resolved = cli
        .config(
            &p.0,
            &Spec {
                yaml: &yaml,
                ..Spec::default()
            },
        )
        .await
        .unwrap();
    assert!(resolved.contains("compose.label.test"), "{resolved}");
    let up = cli
        .up(
            &p.0,
            &Spec {
                yaml: &yaml,
                ..Spec::default()
            },
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert!(up.ok, "{}", up.text);

    let states = match engine.wait_ready(&p.0, Duration::from_secs(30), |_| {}).await.unwrap() {
        Readiness::Ready(states) => states,
        other => panic!("not ready: {other:?}"),
    };
    let health: Vec<(&str, ServiceHealth)> = states.iter().map(|s| (s.service.as_str(), s.health)).collect();
    assert_eq!(
        health,
        [("init", ServiceHealth::Completed), ("web", ServiceHealth::Healthy)],
        "a one-shot that exited 0 is completed, not failed"
    );

    // Its label makes the route; the gateway reaches it.
    let net = TestNet::builder().key("a", &["*.label.test"]).start().await.unwrap();
    let _relay = net.start_label_relay("a", docker::SOCKET.as_ref()).await.unwrap();
    let body = wait_until(Duration::from_secs(10), || async {
        let reply = net.client().get("compose.label.test", "/").await.ok()?;
        (reply.status == http::StatusCode::OK).then(|| String::from_utf8_lossy(&reply.body).trim().to_owned())
    })
    .await;
    assert_eq!(body.as_deref(), Some("hello-compose"));

    let down = cli
        .down(
            &p.0,
            &Spec {
                yaml: &yaml,
                ..Spec::default()
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(down.ok, "{}", down.text);
    assert!(engine.project(&p.0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_healthcheck_and_a_crash_loop_are_told_apart_from_starting() {
    let Some((cli, engine)) = tools().await else { return };
    let p = unique("bad");
    let yaml = format!(
        r#"version: "2.4"
services:
  sick:
    image: {IMAGE}
    command: {WEB}
    healthcheck:
      test: ["CMD", "/bin/busybox", "false"]
      interval: 1s
      retries: 2
  looping:
    image: {IMAGE}
    command: ["sh", "-c", "exit 3"]
    restart: always
"#
    );
    let up = cli
        .up(
            &p.0,
            &Spec {
                yaml: &yaml,
                ..Spec::default()
            },
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert!(up.ok, "{}", up.text);
    match engine.wait_ready(&p.0, Duration::from_secs(30), |_| {}).await.unwrap() {
        Readiness::Failed(_) => {}
        other => panic!("a failing project is not ready: {other:?}"),
    }
    let seen = wait_until(Duration::from_secs(20), || async {
        let states = engine.project(&p.0).await.ok()?;
        let of = |service: &str| states.iter().find(|s| s.service == service).map(|s| s.health);
        (of("sick") == Some(ServiceHealth::Unhealthy) && of("looping") == Some(ServiceHealth::CrashLoop))
            .then_some(states)
    })
    .await;
    assert!(seen.is_some(), "{:?}", engine.project(&p.0).await);
}

#[tokio::test]
async fn bad_compose_files_get_clear_errors_and_run_nothing() {
    let Some((cli, engine)) = tools().await else { return };
    let p = unique("yaml");
    let broken = "services:\n  web:\n    image: [unclosed\n";
    match cli
        .config(
            &p.0,
            &Spec {
                yaml: broken,
                ..Spec::default()
            },
        )
        .await
    {
        Err(Error::Failed { output, .. }) => assert!(output.contains("line"), "{output}"),
        other => panic!("{other:?}"),
    }
    let big = format!("# {}\nservices: {{}}\n", "x".repeat(deploy::compose::MAX_COMPOSE_FILE));
    assert!(matches!(
        cli.config(
            &p.0,
            &Spec {
                yaml: &big,
                ..Spec::default()
            }
        )
        .await,
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(project("Bad Name", 1), Err(Error::InvalidName { .. })));
    assert!(engine.project(&p.0).await.unwrap().is_empty());
}
