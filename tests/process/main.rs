//! Routehub as real processes: kill -9, SIGTERM drains, SIGSTOP (a laptop
//! asleep), the command line.

mod gateway_setup;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::net::routes;
use harness::{Backend, TestClient, TestNet, free_port, wait_until};
use http::StatusCode;
use tokio::process::{Child, Command};
use tunnel_proto::RelayKey;

const BIN: &str = env!("CARGO_BIN_EXE_routehub");

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child is running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// `routehub relay …` against the test net's gateway, as a child process
/// that dies with the test.
fn spawn_relay(net: &TestNet, key: &str, routes: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("relay")
        .arg("--gateway")
        .arg(net.gateway.addr().to_string())
        .arg("--server-name")
        .arg("gateway.test")
        .arg("--ca")
        .arg(&net.ca)
        .arg("--key")
        .arg(net.key_path(key))
        .args(["--drain-timeout", "5", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(net.dir.path().join(format!("relay-proc-{}", free_port().unwrap_or(0))));
    for r in routes {
        cmd.arg("--route").arg(r);
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn routehub relay")
}

/// A gateway process on a fixed port, so it can be restarted in place.
struct GatewayProc {
    child: Child,
    port: u16,
    admin: u16,
    dir: PathBuf,
}

impl GatewayProc {
    async fn start(dir: &Path, port: u16, extra: &[&str]) -> GatewayProc {
        Self::start_named(dir, "gateway", port, extra).await
    }

    /// A gateway whose data dir is `dir/name` (copy a CA there first to
    /// share it between replicas).
    async fn start_named(dir: &Path, name: &str, port: u16, extra: &[&str]) -> GatewayProc {
        let admin = free_port().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("gateway")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--data-dir")
            .arg(dir.join(name))
            .arg("--authorized-keys")
            .arg(dir.join("authorized_keys"))
            .args(["--name", "gateway.test", "--http-listen", "off"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn routehub gateway");
        let up = wait_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", admin))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(up.is_some(), "gateway process did not come up");
        GatewayProc {
            child,
            port,
            admin,
            dir: dir.join(name),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn client(&self) -> TestClient {
        TestClient::new(self.addr().parse().unwrap(), &self.ca()).unwrap()
    }
}

/// A temp dir with one relay key `relay.key` authorized for `app.test`.
fn keys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate().unwrap();
    key.save_new(&dir.path().join("relay.key")).unwrap();
    std::fs::write(
        dir.path().join("authorized_keys"),
        format!("{} app.test\n", key.public_key()),
    )
    .unwrap();
    dir
}

fn relay_config(dir: &Path, gw: &GatewayProc, backend: &Backend) -> relay::RelayConfig {
    relay::RelayConfig {
        gateways: vec![gw.addr()],
        key: dir.join("relay.key"),
        ca: Some(gw.ca()),
        server_name: Some("gateway.test".into()),
        routes: routes(&[("app.test", &backend.url())]),
        data_dir: dir.join("relay"),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    }
}

async fn serving(client: &TestClient, within: Duration) -> Option<Instant> {
    wait_until(within, || async {
        match client.get("app.test", "/").await {
            Ok(r) if r.status == StatusCode::OK => Some(Instant::now()),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn relay_killed_gives_502_within_the_heartbeat_bound() {
    let backend = Backend::start().await;
    let heartbeat = Duration::from_millis(200);
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .heartbeat(heartbeat)
        .start()
        .await
        .unwrap();
    let mut relay = spawn_relay(&net, "a", &[&format!("app.test={}", backend.url())]);
    let client = net.client();
    assert!(
        serving(&client, Duration::from_secs(10)).await.is_some(),
        "relay process never served"
    );

    // A request in flight when the relay dies, and one sent after.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get("app.test", "/slow/30000").await }
    });
    assert!(
        wait_until(Duration::from_secs(5), || async { (backend.hits() >= 2).then_some(()) })
            .await
            .is_some()
    );
    relay.start_kill().unwrap();
    let killed = Instant::now();
    relay.wait().await.unwrap();

    // Dead after 2.5 heartbeats; the relay process is gone, so nothing
    // waits for it to come back.
    let bound = tunnel_proto::limits::dead_after(heartbeat) + Duration::from_millis(500);
    let reply = tokio::time::timeout(bound * 2, in_flight)
        .await
        .expect("in-flight request hung")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        killed.elapsed() < bound,
        "in-flight request failed only after {:?}",
        killed.elapsed()
    );
    assert_eq!(net.gateway.session_count(), 0);
    // Every request after that gets its 502 at once.
    for _ in 0..10 {
        let asked = Instant::now();
        let reply = client.get("app.test", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.headers["x-routehub-error"], "no_relay");
        let waited = asked.elapsed();
        assert!(waited < Duration::from_millis(200), "a request took {waited:?}");
    }
}

#[tokio::test]
async fn gateway_killed_and_restarted_relay_serves_again() {
    let backend = Backend::start().await;
    let dir = keys_dir();
    let port = free_port().unwrap();
    let mut gw = GatewayProc::start(dir.path(), port, &[]).await;
    let relay = relay::Relay::start(relay_config(dir.path(), &gw, &backend))
        .await
        .unwrap();
    relay.wait_ready(1, Duration::from_secs(10)).await.unwrap();
    assert!(serving(&gw.client(), Duration::from_secs(5)).await.is_some());

    gw.child.start_kill().unwrap();
    gw.child.wait().await.unwrap();
    let restarted = Instant::now();
    let gw = GatewayProc::start(dir.path(), port, &[]).await;
    // Dead-session detection (2.5 s) + one connect attempt + first backoff step.
    let bound = tunnel_proto::limits::dead_after(tunnel_proto::limits::DEFAULT_HEARTBEAT)
        + tunnel_proto::limits::CONNECT_TIMEOUT
        + Duration::from_millis(500);
    let back = serving(&gw.client(), bound + Duration::from_secs(5))
        .await
        .expect("relay never came back");
    let took = back - restarted;
    eprintln!("serving again {took:?} after the gateway restarted");
    assert!(took < bound, "took {took:?}, bound {bound:?}");
}

#[tokio::test]
async fn two_gateways_one_killed_no_request_to_the_survivor_fails() {
    let backend = Backend::start().await;
    let dir = keys_dir();
    let a = GatewayProc::start_named(dir.path(), "a", free_port().unwrap(), &[]).await;
    // B shares A's CA, so the relay trusts both with one --ca.
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.path().join("a").join(f), dir.path().join("b").join(f)).unwrap();
    }
    let mut b = GatewayProc::start_named(dir.path(), "b", free_port().unwrap(), &[]).await;
    let mut config = relay_config(dir.path(), &a, &backend);
    config.gateways = vec![a.addr(), b.addr()];
    let relay = relay::Relay::start(config).await.unwrap();
    relay
        .wait_ready(2, Duration::from_secs(10))
        .await
        .expect("sessions with both gateways");

    let client = a.client();
    let load = tokio::spawn(async move {
        let mut failures = Vec::new();
        for i in 0..300 {
            match client.get("app.test", "/").await {
                Ok(r) if r.status == StatusCode::OK => {}
                other => failures.push(format!("request {i}: {:?}", other.map(|r| r.status))),
            }
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn gateway_sigterm_finishes_in_flight_requests_and_exits_0() {
    let backend = Backend::start().await;
    let dir = keys_dir();
    let mut gw = GatewayProc::start(dir.path(), free_port().unwrap(), &["--drain-timeout", "5"]).await;
    let relay = relay::Relay::start(relay_config(dir.path(), &gw, &backend))
        .await
        .unwrap();
    relay.wait_ready(1, Duration::from_secs(10)).await.unwrap();
    let client = gw.client();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("app.test", "/slow/1000").await })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            (backend.hits() >= 20).then_some(())
        })
        .await
        .is_some()
    );
    signal(&gw.child, "-TERM");
    let term = Instant::now();
    for r in requests {
        let reply = r.await.unwrap().expect("in-flight request completes");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let status = tokio::time::timeout(Duration::from_secs(8), gw.child.wait())
        .await
        .expect("gateway exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let took = term.elapsed();
    eprintln!("gateway drained and exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "exceeded the drain deadline: {took:?}");
    assert!(
        client.get("app.test", "/").await.is_err(),
        "a stopped gateway still accepts"
    );
}

#[tokio::test]
async fn relay_sigterm_finishes_in_flight_streams_and_exits_0() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let mut relay = spawn_relay(&net, "a", &[&format!("app.test={}", backend.url())]);
    let client = net.client();
    assert!(serving(&client, Duration::from_secs(10)).await.is_some());
    let hits = backend.hits();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("app.test", "/slow/1000").await })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            (backend.hits() >= hits + 5).then_some(())
        })
        .await
        .is_some()
    );
    signal(&relay, "-TERM");
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status, StatusCode::OK);
    }
    let status = tokio::time::timeout(Duration::from_secs(8), relay.wait())
        .await
        .expect("relay exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn relay_asleep_for_30s_serves_again_within_5s_of_waking() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let relay = spawn_relay(&net, "a", &[&format!("app.test={}", backend.url())]);
    let client = net.client();
    assert!(serving(&client, Duration::from_secs(10)).await.is_some());
    signal(&relay, "-STOP");
    // While it sleeps, the gateway drops the session and answers 502.
    let dropped = wait_until(Duration::from_secs(10), || async {
        (net.gateway.session_count() == 0).then_some(())
    })
    .await;
    assert!(dropped.is_some());
    tokio::time::sleep(Duration::from_secs(30)).await;
    signal(&relay, "-CONT");
    let woke = Instant::now();
    let back = serving(&client, Duration::from_secs(10))
        .await
        .expect("relay never served again");
    let took = back - woke;
    eprintln!("serving again {took:?} after SIGCONT");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn keygen_writes_a_private_key_and_prints_the_public_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("relay.key");
    let run = std::process::Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    let public = String::from_utf8(run.stdout).unwrap();
    let key = RelayKey::load(&out).unwrap();
    assert_eq!(public.trim(), key.public_key().to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = std::process::Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success(), "must not overwrite a key");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

/// A loopback port free on TCP and UDP right now (the gateway binds both).
fn free_tcp_udp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test]
async fn the_gateway_command_with_acme_flags_serves_a_pebble_certificate() {
    let Some(pebble) = harness::pebble::require().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = tunnel_proto::RelayKey::generate().unwrap();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, format!("{} app.test\n", key.public_key())).unwrap();
    let (https, http, admin) = (free_tcp_udp_port(), free_tcp_udp_port(), free_tcp_udp_port());
    let _gateway = Command::new(BIN)
        .arg("gateway")
        .args(["--listen", &format!("127.0.0.1:{https}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path().join("gw"))
        .arg("--authorized-keys")
        .arg(&keys)
        .args(["--name", "gateway.test", "--acme-challenge", "http-01"])
        .args(["--acme-directory", &pebble.directory_url()])
        .arg("--acme-ca-root")
        .arg(pebble.tls_root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn routehub gateway");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let listening = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
    assert!(listening.is_some(), "the gateway process never listened");
    pebble.launch(http, https).await.unwrap();

    let client = harness::TestClient::new(addr, pebble.issuing_root()).unwrap();
    let started = Instant::now();
    let served = wait_until(Duration::from_secs(20), || {
        let client = client.clone();
        async move { client.get("app.test", "/").await.ok() }
    })
    .await
    .expect("a Pebble-issued certificate for app.test");
    println!(
        "gateway process: app.test served with a Pebble certificate after {:?}",
        started.elapsed()
    );
    // No relay is connected: the gateway itself answers, over a TLS session
    // whose certificate chains to Pebble's root.
    assert_eq!(served.status, StatusCode::BAD_GATEWAY, "{}", served.text());
    assert!(
        client.get("evil.test", "/").await.is_err(),
        "no certificate for an unregistered name"
    );
}

/// A relay process with its store in `data_dir` and its admin API on `admin`.
fn spawn_relay_with_store(net: &TestNet, data_dir: &Path, admin: u16) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("relay")
        .arg("--gateway")
        .arg(net.gateway.addr().to_string())
        .args(["--server-name", "gateway.test"])
        .arg("--ca")
        .arg(&net.ca)
        .arg("--key")
        .arg(net.key_path("a"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn routehub relay")
}

async fn admin_client(data_dir: &Path, port: u16) -> relay::client::AdminClient {
    let up = wait_until(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "admin API never came up");
    let token = ops::AdminToken::read(&data_dir.join(ops::TOKEN_FILE)).unwrap();
    relay::client::AdminClient::new(&format!("http://127.0.0.1:{port}"), token)
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let data_dir = net.dir.path().join("relay-store");
    let port = free_port().unwrap();
    let mut relay = spawn_relay_with_store(&net, &data_dir, port);
    let api = admin_client(&data_dir, port).await;

    // A burst of 500 writes; the relay dies in the middle of it.
    let writer = tokio::spawn({
        let (api, target) = (api.clone(), backend.url());
        async move {
            let mut acked = Vec::new();
            for i in 0..500 {
                let route =
                    serde_json::from_value(serde_json::json!({ "host": format!("r{i}.site.test"), "target": target }))
                        .unwrap();
                match api.add(&route, false).await {
                    Ok(_) => acked.push(format!("r{i}.site.test")),
                    Err(_) => break,
                }
            }
            acked
        }
    });
    let store = data_dir.join(relay::STORE_FILE);
    let halfway = wait_until(Duration::from_secs(60), || async {
        let n = api.routes().await.map(|r| r.len()).unwrap_or(0);
        (n >= 200).then_some(n)
    })
    .await;
    assert!(halfway.is_some(), "writes too slow");
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() >= 200 && acked.len() < 500,
        "killed after {} writes",
        acked.len()
    );

    let _relay = spawn_relay_with_store(&net, &data_dir, port);
    let api = admin_client(&data_dir, port).await;
    let stored: std::collections::HashSet<String> = api.routes().await.unwrap().into_iter().map(|r| r.host).collect();
    let lost: Vec<&String> = acked.iter().filter(|h| !stored.contains(*h)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        stored.len() <= acked.len() + 1,
        "at most the write in flight is there unacknowledged"
    );
    eprintln!(
        "{} writes acknowledged before kill -9, all {} present after restart ({} in the store)",
        acked.len(),
        acked.len(),
        stored.len()
    );
    assert!(store.exists());
}

#[tokio::test]
async fn routes_add_on_a_running_demo_is_reachable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin, relay_admin) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let mut demo = Command::new(BIN)
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--relay-admin-listen")
        .arg(format!("127.0.0.1:{relay_admin}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let curl = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim_start().starts_with("curl ") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the demo prints its curl line");
    assert!(curl.contains("https://demo.localhost"), "{curl}");

    let app = Backend::start().await;
    let out = Command::new(BIN)
        .args(["routes", "add", "--host", "app.localhost", "--target", &app.url()])
        .arg("--admin")
        .arg(format!("http://127.0.0.1:{relay_admin}"))
        .arg("--data-dir")
        .arg(dir.path().join("relay"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("live on 1/1 gateway"));
    // No retry: the route is live when the command returns.
    let client = TestClient::new(
        format!("127.0.0.1:{listen}").parse().unwrap(),
        &dir.path().join("gateway").join("ca.pem"),
    )
    .unwrap();
    let reply = client.get("app.localhost", "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(app.hits(), 1);
    let demo_page = client.get("demo.localhost", "/").await.unwrap();
    assert!(
        demo_page.text().contains("through the quic tunnel"),
        "{}",
        demo_page.text()
    );
    signal(&demo, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(10), demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// Runs `routehub ARGS...` to the end; fails the test with its stderr
/// unless it succeeds. Returns stdout.
async fn routehub(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run routehub");
    assert!(
        out.status.success(),
        "routehub {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn the_command_line_sets_up_a_jwt_route_end_to_end() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No static relay keys: everything comes from the admin commands.
    std::fs::write(dir.path().join("authorized_keys"), "").unwrap();
    let gw = GatewayProc::start(dir.path(), free_port().unwrap(), &[]).await;
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    let relay_key = routehub(&["keygen", "--out", &path("relay.key")]).await;
    let alice_jwk = routehub(&["keygen", "--user", "--out", &path("alice.key")]).await;
    let admin = format!("http://127.0.0.1:{}", gw.admin);
    let data_dir = gw.dir.to_str().unwrap().to_owned();
    let gateway = |cmd: &[&str]| {
        let mut args = vec!["gateway", "--admin", &admin, "--data-dir", &data_dir];
        args.extend_from_slice(cmd);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for cmd in [
        gateway(&["org", "add", "acme"]),
        gateway(&["host", "add", "app.acme.test", "--org", "acme"]),
        gateway(&["relay-key", "add", relay_key.trim(), "--org", "acme"]),
        gateway(&["role", "add", "acme", "viewer", "--permission", "read"]),
        gateway(&[
            "user",
            "add",
            "alice",
            "--org",
            "acme",
            "--key",
            alice_jwk.trim(),
            "--role",
            "acme/web=viewer",
        ]),
    ] {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        routehub(&args).await;
    }
    let users = routehub(
        &gateway(&["user", "list"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(users.contains("alice"), "{users}");

    let mut route: relay::RouteConfig = format!("app.acme.test={}", backend.url()).parse().unwrap();
    route.policy = serde_json::json!({"auth": "jwt", "project": "acme/web", "role": "viewer"});
    let relay = relay::Relay::start(relay::RelayConfig {
        gateways: vec![gw.addr()],
        key: dir.path().join("relay.key"),
        ca: Some(gw.ca()),
        server_name: Some("gateway.test".into()),
        routes: vec![route],
        data_dir: dir.path().join("relay"),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    relay
        .wait_ready(1, Duration::from_secs(10))
        .await
        .expect("relay connects");

    let token = routehub(&[
        "token",
        "--key",
        &path("alice.key"),
        "--aud",
        "app.acme.test",
        "--ttl",
        "10m",
    ])
    .await;
    let client = gw.client();
    let get = |auth: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get("/headers").header("host", "app.acme.test");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            client
                .request(
                    "app.acme.test",
                    harness::client::Proto::H1,
                    req.body(harness::client::empty()).unwrap(),
                )
                .await
                .unwrap()
        }
    };
    let ok = get(Some(format!("Bearer {}", token.trim()))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert!(ok.text().contains("x-routehub-user: alice\n"), "{}", ok.text());
    let hits = backend.hits();
    let refused = get(None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    assert_eq!(backend.hits(), hits, "nothing forwarded without a token");

    // A token for longer than 30 days is refused with the reason.
    let long = Command::new(BIN)
        .args([
            "token",
            "--key",
            &path("alice.key"),
            "--aud",
            "app.acme.test",
            "--ttl",
            "60d",
        ])
        .output()
        .await
        .unwrap();
    assert!(!long.status.success());
    let err = String::from_utf8_lossy(&long.stderr);
    assert!(err.contains("30d"), "{err}");
    relay.shutdown();
}

/// `routehub routes <args>` against a relay's admin API; (success, stdout, stderr).
async fn routes_cmd(admin: std::net::SocketAddr, data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("routes")
        .args(args)
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("ROUTEHUB_ADMIN_TOKEN")
        .output()
        .await
        .expect("run routehub routes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_routes_cli_lists_edits_removes_shows_history_and_rolls_back() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let net = TestNet::builder()
        .key("a", &["*.site.test"])
        .relay("a", &[("app.site.test", &a.url())])
        .start()
        .await
        .unwrap();
    let admin = net.relays[0].admin_addr().unwrap();
    let data_dir = net.dir.path().join("relay-0");
    // `routehub routes …` with these words.
    macro_rules! routes {
        ($($arg:expr),* $(,)?) => { routes_cmd(admin, &data_dir, &[$($arg.to_string().as_str()),*]) };
    }
    let json = |out: &str| -> serde_json::Value { serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}")) };

    // list: a table, and JSON with --json.
    let (ok, out, err) = routes!("list").await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["ID", "ROUTE", "TARGET", "STATE", "OWNER"]
    );
    assert!(out.contains("app.site.test") && out.contains(&a.url()), "{out}");
    let (ok, out, _) = routes!("list", "--json").await;
    assert!(ok);
    assert_eq!(json(&out)[0]["host"], "app.site.test");

    // add (with a health check), then edit only the target: the check stays.
    let (ok, out, err) = routes!(
        "add",
        "--host",
        "two.site.test",
        "--target",
        a.url(),
        "--health-path",
        "/",
        "--json"
    )
    .await;
    assert!(ok, "{err}");
    let added = json(&out);
    assert_eq!(added["gateways"]["acknowledged"], 1, "{added}");
    let version_with_two = added["version"].as_u64().unwrap();
    let (ok, out, err) = routes!("edit", "two.site.test", "--target", b.url()).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("changed ") && out.contains("live on 1/1 gateway"),
        "{out}"
    );
    let (_, out, _) = routes!("list", "--json").await;
    let two = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "two.site.test")
        .cloned()
        .unwrap();
    assert_eq!(two["target"], b.url().as_str());
    assert_eq!(
        two["health"]["path"], "/",
        "edit --target keeps the health check: {two}"
    );
    let client = net.client();
    assert_eq!(client.get("two.site.test", "/").await.unwrap().status, StatusCode::OK);

    // history: newest first, as a table and as JSON.
    let (ok, out, _) = routes!("history").await;
    assert!(ok);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert!(rows[0].contains("update two.site.test"), "{out}");
    assert!(rows[1].contains(&format!("add two.site.test → {}", a.url())), "{out}");
    let (_, out, _) = routes!("history", "--json", "--limit", "2").await;
    let history = json(&out);
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "add"]);

    // rm by host, then rollback to the version right after the add.
    let (ok, out, err) = routes!("rm", "two.site.test").await;
    assert!(ok && out.starts_with("removed"), "{out}{err}");
    assert_eq!(
        client.get("two.site.test", "/").await.unwrap().status,
        StatusCode::BAD_GATEWAY
    );
    let (ok, out, err) = routes!("rollback", version_with_two, "--json").await;
    assert!(ok, "{err}");
    let rolled = json(&out);
    assert_eq!(rolled["change"]["action"], "rollback");
    assert_eq!(
        rolled["checksum"], added["checksum"],
        "the set of version {version_with_two}"
    );
    let (_, out, _) = routes!("list", "--json").await;
    let two = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "two.site.test")
        .cloned()
        .expect("back after the rollback");
    assert_eq!(two["target"], a.url().as_str());
    assert_eq!(client.get("two.site.test", "/").await.unwrap().status, StatusCode::OK);

    // A route that isn't there: a clear error and a failing exit status.
    let (ok, _, err) = routes!("rm", "nope.site.test").await;
    assert!(!ok);
    assert!(err.contains("no route nope.site.test"), "{err}");
}

/// `routehub relay …` on `data_dir` run to its end (or killed after 20 s,
/// which fails the test: it started); returns its stderr.
async fn relay_refused_to_start(net: &TestNet, data_dir: &Path) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("relay")
        .arg("--gateway")
        .arg(net.gateway.addr().to_string())
        .args(["--server-name", "gateway.test", "--admin-listen", "127.0.0.1:0"])
        .arg("--ca")
        .arg(&net.ca)
        .arg("--key")
        .arg(net.key_path("a"))
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the relay started on a damaged store")
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the recovery command a refusal printed (between backticks), as a
/// person would paste it; returns its stdout.
async fn run_printed_recovery(refusal: &str) -> String {
    let command = refusal
        .split('`')
        .find(|part| part.starts_with("routehub relay recover"))
        .unwrap_or_else(|| panic!("no recovery command in: {refusal}"));
    let words: Vec<&str> = command.split_whitespace().collect();
    let out = Command::new(BIN).args(&words[1..]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{command}` failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Damages the store's write-ahead log the way a crash on a disk that
/// lied about its writes leaves it: the frames of its last `commits`
/// transactions are no longer what was written. Returns the log's bytes.
fn damage_wal_tail(wal: &Path, commits: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(wal).expect("a write-ahead log after kill -9");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    assert!(bytes.len() > 32 && be(&bytes[0..4]) & !1 == 0x377f0682, "a WAL file");
    let page = be(&bytes[8..12]);
    let salt = bytes[16..24].to_vec();
    // Frames of the current log carry its salt; a commit frame records the
    // database size after it.
    let mut commit_frames = Vec::new();
    let mut at = 32;
    while at + 24 + page <= bytes.len() && bytes[at + 8..at + 16] == salt[..] {
        if be(&bytes[at + 4..at + 8]) != 0 {
            commit_frames.push(at);
        }
        at += 24 + page;
    }
    assert!(
        commit_frames.len() > commits,
        "{} commits in the log",
        commit_frames.len()
    );
    let from = commit_frames[commit_frames.len() - commits];
    for b in &mut bytes[from + 24..from + 24 + page] {
        *b ^= 0x5a;
    }
    std::fs::write(wal, &bytes).unwrap();
    bytes
}

#[tokio::test]
async fn a_damaged_wal_tail_after_kill_9_is_refused_and_recovery_restores_every_acknowledged_route() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let data_dir = net.dir.path().join("relay-wal");
    let port = free_port().unwrap();
    let mut relay = spawn_relay_with_store(&net, &data_dir, port);
    let api = admin_client(&data_dir, port).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let host = format!("w{i}.site.test");
        let route = serde_json::from_value(serde_json::json!({ "host": host, "target": backend.url() })).unwrap();
        api.add(&route, false).await.expect("acknowledged");
        acked.push(host);
    }
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();
    // The last three acknowledged commits are damaged in the log.
    let wal = data_dir.join("relay.db-wal");
    let damaged = damage_wal_tail(&wal, 3);

    let refusal = relay_refused_to_start(&net, &data_dir).await;
    assert!(
        refusal.contains(&data_dir.join("relay.db").display().to_string()) && refusal.contains("missing"),
        "{refusal}"
    );
    assert!(
        refusal.contains(&format!("routehub relay recover --data-dir {}", data_dir.display())),
        "{refusal}"
    );
    assert_eq!(std::fs::read(&wal).unwrap(), damaged, "the refused start wrote nothing");

    let report = run_printed_recovery(&refusal).await;
    eprintln!("{refusal}\n{report}");
    for host in &acked[17..] {
        assert!(report.contains(host.as_str()), "{host} restored: {report}");
    }
    let kept: Vec<PathBuf> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "{report}");
    assert_eq!(
        std::fs::read(kept[0].join("relay.db-wal")).unwrap(),
        damaged,
        "kept as it was"
    );

    let _relay = spawn_relay_with_store(&net, &data_dir, port);
    let api = admin_client(&data_dir, port).await;
    let stored: std::collections::HashSet<String> = api.routes().await.unwrap().into_iter().map(|r| r.host).collect();
    let lost: Vec<&String> = acked.iter().filter(|h| !stored.contains(*h)).collect();
    assert!(lost.is_empty(), "acknowledged routes lost: {lost:?}");
    let served = wait_until(Duration::from_secs(10), || async {
        let reply = net.client().get("w19.site.test", "/").await.ok()?;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(served.is_some(), "the last acknowledged route is served again");
}

#[tokio::test]
async fn an_empty_store_file_is_refused_and_the_printed_recovery_command_works() {
    let net = TestNet::builder().key("a", &["*.site.test"]).start().await.unwrap();
    let data_dir = net.dir.path().join("relay-empty");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("relay.db"), b"").unwrap();

    let refusal = relay_refused_to_start(&net, &data_dir).await;
    assert!(refusal.contains("relay.db is empty (0 bytes)"), "{refusal}");
    assert_eq!(std::fs::metadata(data_dir.join("relay.db")).unwrap().len(), 0);
    let report = run_printed_recovery(&refusal).await;
    assert!(report.contains("damaged files are kept in"), "{report}");

    let port = free_port().unwrap();
    let _relay = spawn_relay_with_store(&net, &data_dir, port);
    let api = admin_client(&data_dir, port).await;
    assert!(api.routes().await.unwrap().is_empty());
    let route = serde_json::from_value(serde_json::json!({ "host": "e.site.test", "target": "8080" })).unwrap();
    api.add(&route, false).await.expect("the rebuilt store takes writes");
}

#[tokio::test]
async fn routes_add_of_a_route_the_gateway_refuses_fails_and_list_shows_it_refused() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["*.site.test"])
        .relay("a", &[("app.site.test", &backend.url())])
        .start()
        .await
        .unwrap();
    let admin = net.relays[0].admin_addr().unwrap();
    let data_dir = net.dir.path().join("relay-0");
    let (ok, out, err) = routes_cmd(
        admin,
        &data_dir,
        &["add", "--host", "elsewhere.test", "--target", &backend.url()],
    )
    .await;
    assert!(!ok, "a refused route is a failure: {out}");
    assert!(out.contains("live on 0/1 gateway"), "{out}");
    assert!(
        err.contains("refused by 1 gateway") && err.contains("may not serve elsewhere.test"),
        "{err}"
    );
    let (ok, out, _) = routes_cmd(admin, &data_dir, &["list"]).await;
    assert!(ok);
    let row = out.lines().find(|l| l.contains("elsewhere.test")).unwrap_or_default();
    assert!(
        row.contains("refused (") && row.contains("may not serve elsewhere.test"),
        "{out}"
    );
    let app = out.lines().find(|l| l.contains("app.site.test")).unwrap_or_default();
    // Enabled, and made through the API (no owning container).
    assert!(
        app.split_whitespace().collect::<Vec<_>>().ends_with(&["enabled", "-"]),
        "{out}"
    );
    // The JSON answer carries the refusal too, and the exit status says so.
    let (ok, out, _) = routes_cmd(
        admin,
        &data_dir,
        &["add", "--host", "other.test", "--target", &backend.url(), "--json"],
    )
    .await;
    assert!(!ok);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["gateways"]["live"], 0, "{reply}");
    assert_eq!(reply["refused"].as_array().unwrap().len(), 1, "{reply}");
    // A route the gateway serves still succeeds.
    let (ok, out, err) = routes_cmd(
        admin,
        &data_dir,
        &["add", "--host", "fine.site.test", "--target", &backend.url()],
    )
    .await;
    assert!(ok && out.contains("live on 1/1 gateway"), "{out}{err}");
}
