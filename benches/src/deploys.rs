//! Deployments through a running relay, with the machine's Docker Engine:
//!
//! - **ready → routed:** a labelled container with a healthcheck is
//!   started; the clock runs from the engine's `health_status: healthy`
//!   event (its own timestamp) to the first 200 the gateway answers for
//!   the container's host, polled over one kept-alive connection.
//! - **blue-green under load:** a compose app is deployed, a closed loop
//!   of requests runs through the gateway, and a new version is deployed
//!   under it; every failed request is counted, and latency is compared
//!   before and during the switch.
//!
//! Images are built here from the host's static busybox (nothing pulled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use http::{Method, StatusCode};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::admin::Admin;
use crate::load::{Endpoint, Percentiles, percentiles};
use crate::targets::BENCH_HOST;

/// The image every bench container runs.
const IMAGE: &str = "routehub-bench-busybox:1";
/// Longest one round may take.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Connections of the load during the blue-green redeploy.
pub const LOAD_CONNECTIONS: usize = 8;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployBench {
    pub rounds: usize,
    /// Healthy event → first request routed, over `rounds` containers.
    pub ready_to_routed: Percentiles,
    /// Requests during the blue-green redeploy (from its apply until it
    /// ended, plus 1 s).
    pub switch_requests: u64,
    /// Failed requests of the whole load: before, during and after.
    pub failed: u64,
    pub switch_latency: Percentiles,
    /// The same load in the 2 s before the redeploy.
    pub before_latency: Percentiles,
    /// Apply → the deployment healthy and the old generation stopped.
    pub redeploy_secs: f64,
}

async fn docker(args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(120), Command::new("docker").args(args).output())
        .await
        .with_context(|| format!("docker {args:?} timed out"))??;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// [`IMAGE`] from the host's static busybox, with `/www/index.html` of
/// `body` when given (tagged `tag`).
async fn build_image(tag: &str, body: Option<&str>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dockerfile = match body {
        None => {
            let busybox = ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .context("busybox is not installed (Debian: busybox-static)")?;
            std::fs::copy(busybox, dir.path().join("busybox"))?;
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENTRYPOINT [\"/bin/busybox\"]\n".to_owned()
        }
        Some(body) => {
            std::fs::write(dir.path().join("index.html"), format!("{body}\n"))?;
            format!("FROM {IMAGE}\nCOPY index.html /www/index.html\n")
        }
    };
    std::fs::write(dir.path().join("Dockerfile"), dockerfile)?;
    docker(&["build", "-q", "-t", tag, &dir.path().to_string_lossy()]).await?;
    Ok(())
}

/// Runs both measurements against the Routehub at `gateway` (relay admin
/// API at `admin_addr`).
pub async fn run(gateway: &Endpoint, admin_addr: SocketAddr, token: &str, rounds: usize) -> Result<DeployBench> {
    docker(&["version"]).await.context("no Docker Engine")?;
    build_image(IMAGE, None).await?;
    let mut ready = Vec::with_capacity(rounds);
    for round in 0..rounds {
        ready.push(ready_to_routed(gateway, round).await?);
    }
    let mut admin = Admin::connect(admin_addr, token.to_owned()).await?;
    let (switch_requests, switch_failed, switch_latency, before_latency, redeploy_secs) =
        blue_green(gateway, &mut admin).await?;
    Ok(DeployBench {
        rounds,
        ready_to_routed: percentiles(ready),
        switch_requests,
        failed: switch_failed,
        switch_latency,
        before_latency,
        redeploy_secs,
    })
}

/// One round: microseconds from the container's healthy event to the
/// first request the gateway routes to it.
async fn ready_to_routed(gateway: &Endpoint, round: usize) -> Result<u64> {
    let name = format!("routehub-bench-ready-{}-{round}", std::process::id());
    let host = format!("ready{round}.{BENCH_HOST}");
    let _ = docker(&["rm", "-f", &name]).await;
    let mut events = Command::new("docker")
        .args([
            "events",
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=health_status",
            "--format",
            "{{.TimeNano}} {{.Status}}",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("docker events")?;
    let mut lines = tokio::io::BufReader::new(events.stdout.take().context("events stdout")?).lines();
    // The events stream is subscribed before the container starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let script =
        "/bin/busybox mkdir -p /www && echo ready > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www";
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("routehub.host={host}"),
        "--label",
        "routehub.port=8080",
        "--health-cmd",
        "/bin/busybox wget -q -O- http://127.0.0.1:8080/",
        "--health-interval",
        "1s",
        IMAGE,
        "sh",
        "-c",
        script,
    ])
    .await?;
    let result = async {
        let ep = gateway.with_host(&host)?;
        let mut send = ep.connect().await?;
        let healthy_ns = tokio::time::timeout(ROUND_LIMIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some((ns, status)) = line.split_once(' ')
                    && status.ends_with("healthy")
                    && !status.ends_with("unhealthy")
                {
                    return ns.parse::<u128>().context("event time");
                }
            }
            bail!("the events stream ended")
        });
        // Polled from before the event arrives: the route may well be
        // there first.
        let poll = async {
            let start = Instant::now();
            loop {
                let status = match ep.fetch(&mut send, "/").await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        send = ep.connect().await?;
                        0
                    }
                };
                if status == 200 {
                    return anyhow::Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos());
                }
                if start.elapsed() > ROUND_LIMIT {
                    bail!("{host} not routed within {ROUND_LIMIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let (healthy, routed) = tokio::join!(healthy_ns, poll);
        let (healthy, routed) = (healthy.context("no healthy event")??, routed?);
        // Routed before the event (the relay's own read of the engine can
        // win): counted as 0.
        Ok(routed.saturating_sub(healthy) as u64 / 1000)
    }
    .await;
    let _ = docker(&["rm", "-f", &name]).await;
    result
}

/// Waits for deployment `id` to end; its final record.
async fn wait_deployment(admin: &mut Admin, id: u64) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, d) = admin.call(Method::GET, &format!("/api/deployments/{id}"), None).await?;
        if status != StatusCode::OK {
            bail!("deployment {id}: {status} {d}");
        }
        if !matches!(d["status"].as_str(), Some("deploying" | "pending")) {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("deployment {id} still {} after 180 s", d["status"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn compose(image: &str, host: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "exec /bin/busybox httpd -f -p 8080 -h /www"]
    labels:
      routehub.host: {host}
      routehub.port: "8080"
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
"#
    )
}

async fn apply(admin: &mut Admin, name: &str, yaml: &str) -> Result<u64> {
    let body = serde_json::json!({ "name": name, "yaml": yaml });
    let (status, d) = admin.call(Method::POST, "/api/composes", Some(body)).await?;
    if status != StatusCode::ACCEPTED {
        bail!("apply {name}: {status} {d}");
    }
    d["id"].as_u64().context("a deployment id")
}

/// A sample of the load: when it ended, how long it took, whether it
/// succeeded.
type Sample = (Instant, u64, bool);

async fn blue_green(gateway: &Endpoint, admin: &mut Admin) -> Result<(u64, u64, Percentiles, Percentiles, f64)> {
    let pid = std::process::id();
    let name = format!("bench-bg-{pid}");
    let host = format!("bg.{BENCH_HOST}");
    let (blue, green) = (
        format!("routehub-bench-blue:{pid}"),
        format!("routehub-bench-green:{pid}"),
    );
    build_image(&blue, Some("blue")).await?;
    build_image(&green, Some("green")).await?;
    let first = apply(admin, &name, &compose(&blue, &host)).await?;
    let d = wait_deployment(admin, first).await?;
    if d["status"] != "healthy" {
        bail!("the first deployment: {d}");
    }
    let ep = gateway.with_host(&host)?;
    ep.wait_ready(Duration::from_secs(20)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..LOAD_CONNECTIONS {
        let (ep, stop) = (ep.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            let mut send = ep.connect().await.ok();
            // Bounded: at most this many requests per connection.
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let ok = match send.as_mut() {
                    Some(s) => matches!(ep.fetch(s, "/").await, Ok((200, _))),
                    None => false,
                };
                samples.push((Instant::now(), t0.elapsed().as_micros() as u64, ok));
                if !ok || send.as_ref().is_none_or(|s| s.is_closed()) {
                    send = ep.connect().await.ok();
                }
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let switch_start = Instant::now();
    let second = apply(admin, &name, &compose(&green, &host)).await?;
    let d = wait_deployment(admin, second).await?;
    let redeploy_secs = switch_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let switch_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    let _ = admin.call(Method::DELETE, &format!("/api/composes/{name}"), None).await;
    let _ = docker(&["rmi", &blue, &green]).await;
    if d["status"] != "healthy" {
        bail!("the redeploy: {d}");
    }
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|(at, _, _)| *at >= switch_start && *at <= switch_end)
        .collect();
    let before: Vec<u64> = samples
        .iter()
        .filter(|(at, _, _)| *at < switch_start)
        .map(|s| s.1)
        .collect();
    let failed = samples.iter().filter(|s| !s.2).count() as u64;
    Ok((
        during.len() as u64,
        failed,
        percentiles(during.iter().map(|s| s.1).collect()),
        percentiles(before),
        redeploy_secs,
    ))
}
