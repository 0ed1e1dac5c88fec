//! Requests an attacker would send to get around routing and policy:
//! spellings of a protected path, protocol upgrades that would carry more
//! requests, HPACK-amplified heads, reserved headers in disguise; and what
//! a public client may learn from an error.

use std::time::Duration;

use harness::client::{Proto, Reply, empty};
use harness::{Backend, TestNet};
use http::Request;
use relay::RouteConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILES: &str = "files.test";
const WITHIN: Duration = Duration::from_secs(10);

fn route(lhs: &str, target: &str, policy: Value) -> RouteConfig {
    let mut r: RouteConfig = format!("{lhs}={target}").parse().unwrap();
    r.policy = policy;
    r
}

/// A gateway and a relay serving `routes` for `files.test`, connected.
async fn serving(routes: Vec<RouteConfig>) -> TestNet {
    let mut net = TestNet::builder().key("files", &[FILES]).start().await.unwrap();
    let relay = relay::Relay::start(net.relay_config("files", routes)).await.unwrap();
    relay.wait_ready(1, WITHIN).await.expect("relay connects");
    net.relays.push(relay);
    net
}

/// `files.test` is public, `files.test/secure` allows only 10.0.0.0/8
/// (so every test client, on loopback, is refused there).
async fn files(backend: &Backend) -> TestNet {
    let url = backend.url();
    serving(vec![
        route(FILES, &url, Value::Null),
        route(&format!("{FILES}/secure"), &url, json!({"ip_allow": ["10.0.0.0/8"]})),
    ])
    .await
}

/// `files.test` routed to a port nothing listens on; and that port.
async fn refusing() -> (TestNet, std::net::SocketAddr) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let net = serving(vec![route(FILES, &format!("http://{closed}"), Value::Null)]).await;
    (net, closed)
}

async fn get(net: &TestNet, proto: Proto, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(path).header("host", FILES);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    net.client()
        .request(FILES, proto, req.body(empty()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_gets_around_its_policy() {
    let backend = Backend::start().await;
    let net = files(&backend).await;
    let plain = get(&net, Proto::H1, "/secure/secret.txt", &[]).await;
    assert_eq!(plain.status, 403, "{}", plain.text());
    for proto in [Proto::H1, Proto::H2] {
        for path in [
            "/x/../secure/secret.txt",
            "/./secure/secret.txt",
            "/%73ecure/secret.txt",
            "//secure/secret.txt",
            "/SECURE/secret.txt",
            "/secure;x=1/secret.txt",
            "/x/..;/secure/secret.txt",
            "/x/%2e%2e/secure/secret.txt",
        ] {
            let before = backend.hits();
            let r = get(&net, proto, path, &[]).await;
            assert_eq!(r.status, 403, "{proto:?} {path}: {}", r.text());
            assert_eq!(backend.hits(), before, "{proto:?} {path} reached the backend");
        }
        // Separators in disguise mean different things to different
        // backends: refused outright.
        for path in [
            "/secure%2fsecret.txt",
            "/secure%2Fsecret.txt",
            "/secure%5csecret.txt",
            "/a%zz",
        ] {
            let before = backend.hits();
            let r = get(&net, proto, path, &[]).await;
            assert_eq!(r.status, 400, "{proto:?} {path}: {}", r.text());
            assert_eq!(r.headers["x-routehub-error"], "bad_path");
            assert_eq!(backend.hits(), before, "{proto:?} {path} reached the backend");
        }
    }
    // What the backend gets is the path that was routed and policed.
    let r = get(&net, Proto::H1, "/x/..//%68eaders?q=%2F", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("GET /headers?q=%2F HTTP/1.1\n"), "{}", r.text());
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from a
/// raw stream.
async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WITHIN, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.unwrap();
    format!("{}{}", String::from_utf8_lossy(&buf), String::from_utf8_lossy(&body))
}

/// A backend that switches to whatever protocol a request asks for with
/// `Upgrade`, then answers every later request on the connection with the
/// path it got (as a server speaking h2c there would serve it); it records
/// every request line it sees.
async fn switching_backend() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or("").to_owned();
                    let _ = seen.send(line.clone());
                    let upgrade = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("upgrade: ").map(str::to_owned));
                    let reply = match upgrade {
                        Some(protocol) => {
                            format!(
                                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
                            )
                        }
                        None => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}", line.len()),
                    };
                    if tcp.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

/// A gateway and relay for `files.test` on the switching backend, with
/// `routes` given as `(path, policy)`.
async fn switching(routes: &[(&str, Value)]) -> (TestNet, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (addr, seen) = switching_backend().await;
    let url = format!("http://{addr}");
    let routes = routes
        .iter()
        .map(|(path, policy)| route(&format!("{FILES}{path}"), &url, policy.clone()))
        .collect();
    (serving(routes).await, seen)
}

/// Sends `head` (a raw HTTP/1.1 request head, `{FILES}` for the host) on
/// a new TLS connection; the connection and the response.
async fn raw(net: &TestNet, head: &str) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String) {
    let mut tls = net.client().tls_connect(FILES, &[b"http/1.1"]).await.unwrap();
    tls.write_all(head.replace("{FILES}", FILES).as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    (tls, resp)
}

#[tokio::test]
async fn an_h2c_upgrade_cannot_carry_requests_around_the_policy() {
    let (net, mut seen) = switching(&[("", Value::Null), ("/admin", json!({"ip_allow": ["10.0.0.0/8"]}))]).await;
    let (mut tls, first) = raw(
        &net,
        "GET / HTTP/1.1\r\nhost: {FILES}\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 200"), "h2c is not passed on: {first}");
    assert_eq!(seen.recv().await.as_deref(), Some("GET / HTTP/1.1"));
    // The same connection is still the gateway's: the next request is
    // routed and policed like any other.
    let admin = format!("GET /admin HTTP/1.1\r\nhost: {FILES}\r\n\r\n");
    tls.write_all(admin.as_bytes()).await.unwrap();
    let second = read_response(&mut tls).await;
    assert!(second.starts_with("HTTP/1.1 403"), "{second}");
    assert!(seen.try_recv().is_err(), "the backend saw /admin");
}

#[tokio::test]
async fn a_route_allows_only_the_upgrades_it_names() {
    let (net, mut seen) = switching(&[("", Value::Null), ("/custom", json!({"upgrades": ["custom"]}))]).await;
    let upgrade = |path: &str, protocol: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: {{FILES}}\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n")
    };
    let (_, switched) = raw(&net, &upgrade("/custom", "custom")).await;
    assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
    assert_eq!(seen.recv().await.as_deref(), Some("GET /custom HTTP/1.1"));
    // `websocket` is not on that route's list; it is on the default one.
    let (_, plain) = raw(&net, &upgrade("/custom", "websocket")).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let (_, switched) = raw(&net, &upgrade("/", "websocket")).await;
    assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
    // Nor is `custom` on the default list: a plain request.
    let (_, plain) = raw(&net, &upgrade("/", "custom")).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
}

#[tokio::test]
async fn hpack_amplified_heads_are_not_forwarded_and_close_the_connection() {
    let backend = Backend::start().await;
    let net = files(&backend).await;
    let big = "a".repeat(3900);
    // One 3 900-byte header, indexed once, referenced 15 times: a small
    // HEADERS frame that decodes to 58 KB.
    let amplified = |n: usize| {
        let mut req = Request::get(format!("https://{FILES}/headers"));
        for _ in 0..n {
            req = req.header("x-big", big.as_str());
        }
        req.body(empty()).unwrap()
    };
    let mut conn = net.client().connect(FILES, Proto::H2).await.unwrap();
    let before = backend.hits();
    let r = harness::client::read(conn.send(amplified(15)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(backend.hits(), before, "nothing forwarded");
    // Under the size limit, but decoding to far more than it sent: the
    // request is refused and the connection closed.
    let mut conn = net.client().connect(FILES, Proto::H2).await.unwrap();
    let r = harness::client::read(conn.send(amplified(4)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(backend.hits(), before, "nothing forwarded");
    let next = tokio::time::timeout(WITHIN, conn.send(amplified(1))).await.unwrap();
    assert!(next.is_err(), "the connection is closed: {next:?}");

    // A browser's big cookie, sent once and referenced from the table by
    // many requests on one connection, is fine.
    let cookie = format!("session={}", "c".repeat(4000));
    let mut conn = net.client().connect(FILES, Proto::H2).await.unwrap();
    for _ in 0..50 {
        let req = Request::get(format!("https://{FILES}/headers"))
            .header("cookie", cookie.as_str())
            .body(empty())
            .unwrap();
        let r = harness::client::read(conn.send(req).await.unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // And too many fields, or too many bytes, are 431 over h1 as well.
    let mut req = Request::get("/headers").header("host", FILES);
    for i in 0..200 {
        req = req.header(format!("x-f{i}"), "1");
    }
    let r = net
        .client()
        .request(FILES, Proto::H1, req.body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    let r = get(&net, Proto::H1, "/headers", &[("x-big", &"b".repeat(20_000))]).await;
    assert_eq!(r.status, 431);
}

#[tokio::test]
async fn reserved_headers_in_disguise_never_reach_the_backend() {
    let backend = Backend::start().await;
    let net = files(&backend).await;
    let r = get(
        &net,
        Proto::H1,
        "/headers",
        &[
            ("X_Routehub_User", "admin"),
            ("x_routehub_roles", "admin"),
            ("X_Forwarded_For", "10.0.0.1"),
            ("x_custom", "kept"),
        ],
    )
    .await;
    let seen = r.text().to_ascii_lowercase();
    assert_eq!(r.status, 200, "{seen}");
    assert!(!seen.contains("x_routehub"), "{seen}");
    assert!(!seen.contains("x_forwarded_for"), "{seen}");
    assert!(!seen.contains("10.0.0.1"), "{seen}");
    assert!(seen.contains("x_custom: kept"), "{seen}");
}

#[tokio::test]
async fn a_relay_502_does_not_show_the_internal_target_to_the_client() {
    let (net, closed) = refusing().await;
    let r = get(&net, Proto::H1, "/", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["x-routehub-error"], "target_unreachable");
    let body = r.text();
    assert!(body.contains(FILES), "names the route: {body}");
    assert!(
        !body.contains(&closed.to_string()) && !body.contains("127.0.0.1"),
        "{body}"
    );
}

/// Whether curl is here; under `CI=true` (where `scripts/test.sh`
/// installs it) its absence fails the test.
fn have_curl() -> bool {
    let found = std::process::Command::new("curl").arg("--version").output().is_ok();
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("curl is not installed (scripts/test.sh installs it)");
    }
    found
}

#[tokio::test]
async fn an_h2_upload_to_a_target_that_refuses_gets_a_whole_502() {
    if !have_curl() {
        return eprintln!("skipped: curl is not installed");
    }
    let (net, _) = refusing().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = net.gateway.addr();
    // curl is a client that takes a reset stream for an error even after
    // a whole response: every upload must end cleanly with the 502.
    for (size, times) in [(300_000usize, 20), (5_000_000, 10)] {
        let file = dir.path().join(format!("{size}"));
        std::fs::write(&file, vec![b'x'; size]).unwrap();
        for i in 0..times {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2", "--cacert"])
                .arg(&net.ca)
                .arg("--resolve")
                .arg(format!("{FILES}:{}:127.0.0.1", addr.port()))
                .args(["-X", "POST", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("https://{FILES}:{}/upload", addr.port()))
                .output()
                .await
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && code == "502",
                "{size} bytes, upload {i}: curl exit {:?}, status {code}",
                out.status.code()
            );
        }
    }
}
