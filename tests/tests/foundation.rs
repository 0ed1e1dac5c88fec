//! The foundation: HTTPS gateway → QUIC tunnel → relay → local service,
//! key-authenticated.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harness::backend::pattern_byte;
use harness::client::{Proto, body, empty, read};
use harness::{Backend, TestNet};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

async fn one_app(backend: &Backend) -> TestNet {
    TestNet::builder()
        .key("a", &["app.test", "*.wild.test"])
        .relay("a", &[("app.test", &backend.url()), ("x.wild.test", &backend.url())])
        .start()
        .await
        .expect("test net")
}

#[tokio::test]
async fn get_through_the_tunnel_sets_forwarding_headers() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let req = Request::get("/headers")
        .header("host", "app.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("true-client-ip", "6.6.6.6")
        .header("x-forwarded-port", "6666")
        .body(empty())
        .unwrap();
    let reply = net.client().request("app.test", Proto::H1, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("x-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(text.contains("x-real-ip: 127.0.0.1\n"), "{text}");
    assert!(!text.contains("6666"), "{text}");
    assert!(text.contains("x-forwarded-proto: https\n"), "{text}");
    assert!(text.contains("x-forwarded-host: app.test\n"), "{text}");
    assert!(text.contains("x-routehub-transport: quic\n"), "{text}");
    assert!(
        !text.contains("6.6.6.6") && !text.contains("evil.test"),
        "client-supplied forwarding headers leaked: {text}"
    );
    assert!(!text.contains("forwarded: for="), "{text}");
}

#[tokio::test]
async fn post_and_get_10_mib_streamed_both_ways() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let client = net.client();

    // Upload 10 MiB as a stream of chunks, echoed back as a stream.
    let chunks = futures_util::stream::iter((0..160u64).map(|c| {
        let chunk: Vec<u8> = (c * 65536..(c + 1) * 65536).map(pattern_byte).collect();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(BodyFrame::data(Bytes::from(chunk)))
    }));
    let req = Request::post("/echo")
        .header("host", "app.test")
        .body(StreamBody::new(chunks).boxed_unsync())
        .unwrap();
    let reply = client.request("app.test", Proto::H1, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len() as u64, 10 * MIB);
    assert!(
        reply.body.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)),
        "echoed body differs"
    );

    let reply = client.get("app.test", &format!("/bytes/{}", 10 * MIB)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len() as u64, 10 * MIB);
    assert!(
        reply.body.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)),
        "downloaded body differs"
    );
}

#[tokio::test]
async fn h2_from_the_client() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let mut conn = net.client().connect("app.test", Proto::H2).await.unwrap();
    // Several requests multiplexed on one h2 connection, each its own stream.
    let mut replies = Vec::new();
    for path in ["/", "/headers", "/bytes/100000"] {
        let req = Request::get(format!("https://app.test{path}")).body(empty()).unwrap();
        replies.push(read(conn.send(req).await.unwrap()).await.unwrap());
    }
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(replies[0].body.len(), 612);
    assert!(replies[1].text().contains("host: app.test\n"), "{}", replies[1].text());
    assert_eq!(replies[2].body.len(), 100_000);
    let post = Request::post("https://app.test/echo").body(body("over h2")).unwrap();
    assert_eq!(read(conn.send(post).await.unwrap()).await.unwrap().text(), "over h2");
}

#[tokio::test]
async fn websocket_echo() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let tls = net.client().tls_connect("app.test", &[b"http/1.1"]).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://app.test/ws", tls).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn two_hundred_concurrent_requests_all_correct() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let client = net.client();
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let payload = format!("request {i} {}", "x".repeat(i as usize * 37));
                let req = Request::post("/echo")
                    .header("host", "app.test")
                    .body(body(payload.clone()))
                    .unwrap();
                let reply = client.request("app.test", Proto::H1, req).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.text(), payload);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(backend.hits(), 200);
}

#[tokio::test]
async fn sequential_requests_reuse_one_stream_and_one_target_connection() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let client = net.client();
    for _ in 0..20 {
        let reply = client.get("app.test", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(backend.hits(), 20);
    assert_eq!(backend.connections(), 1, "the relay keeps its target connection");
    assert_eq!(net.gateway.idle_tunnel_connections(), 1);
}

#[tokio::test]
async fn idle_tunnel_connections_are_bounded() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let client = net.client();
    let n = gateway::pool::MAX_IDLE_PER_SESSION + 44;
    let statuses = client.get_concurrently("app.test", "/slow/300", n).await.unwrap();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(backend.hits(), n as u64);
    assert!(
        backend.connections() >= 2,
        "concurrent requests had streams of their own"
    );
    let idle = net.gateway.idle_tunnel_connections();
    assert!(
        idle > 0 && idle <= gateway::pool::MAX_IDLE_PER_SESSION,
        "{idle} idle connections"
    );
}

/// A local service that never answers: the gateway answers 504 naming the
/// route once its response timeout has passed, instead of waiting forever.
#[tokio::test]
async fn a_target_that_never_answers_gets_a_504_naming_the_route() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("k", &["app.test"])
        .relay("k", &[("app.test", &backend.url())])
        .gateway_config(|c| c.response_timeout_secs = 1)
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reply = net.client().get("app.test", "/slow/10000").await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
    assert_eq!(reply.headers["x-routehub-error"], "relay_timeout");
    assert!(reply.text().contains("app.test/slow/10000"), "{}", reply.text());
    assert!(took < std::time::Duration::from_secs(5), "answered after {took:?}");
}

/// A request the gateway gives up on (its answer timed out) frees the
/// relay's stream and target connection at once, even though the target
/// stays silent.
#[tokio::test]
async fn a_request_the_gateway_gives_up_on_ends_its_stream_at_the_relay() {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    // Accepts, reads, never answers.
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = target.accept().await {
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut tcp, &mut sink).await;
                std::future::pending::<()>().await;
            });
        }
    });
    let net = TestNet::builder()
        .key("k", &["app.test"])
        .relay("k", &[("app.test", &url)])
        .gateway_config(|c| c.response_timeout_secs = 1)
        .start()
        .await
        .unwrap();
    let reply = net.client().get("app.test", "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let relay = &net.relays[0];
    let freed = harness::wait_until(std::time::Duration::from_secs(2), || async {
        (relay.streams_open() == 0).then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "{} streams still open at the relay",
        relay.streams_open()
    );
}

/// A target that closes a kept-alive connection just as the next request
/// arrives (its keep-alive timeout ran out): a GET is retried on a new
/// stream of the same session, not failed.
#[tokio::test]
async fn a_stale_kept_alive_connection_does_not_fail_a_get() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    // Answers the first request of each connection, closes at the second.
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = target.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                let _ = tcp.read(&mut byte).await;
            });
        }
    });
    let net = TestNet::builder()
        .key("k", &["app.test"])
        .relay("k", &[("app.test", &url)])
        .start()
        .await
        .unwrap();
    let client = net.client();
    for i in 0..3 {
        let started = std::time::Instant::now();
        let reply = client.get("app.test", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.text());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "request {i} waited"
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn wildcard_host_and_longest_path_prefix() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let net = TestNet::builder()
        .key("k", &["*.site.test"])
        .relay(
            "k",
            &[
                ("app.site.test", &a.url()),
                ("app.site.test/api", &b.url()),
                ("*.site.test", &a.url()),
            ],
        )
        .start()
        .await
        .unwrap();
    let client = net.client();
    for (host, path, backend) in [
        ("app.site.test", "/", &a),
        ("app.site.test", "/api", &b),
        ("app.site.test", "/api/v1/x", &b),
        ("app.site.test", "/apiary", &a),
        ("other.site.test", "/api", &a),
    ] {
        let before = (a.hits(), b.hits());
        let reply = client.get(host, path).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{host}{path}: {}", reply.text());
        let after = (a.hits(), b.hits());
        let hit_b = after.1 > before.1;
        assert_eq!(
            hit_b,
            std::ptr::eq(backend, &b),
            "{host}{path} went to the wrong backend"
        );
    }
}

#[tokio::test]
async fn unknown_host_is_404_and_reaches_no_relay() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let client = net.client();
    // SNI the gateway has a certificate for; Host nobody registered.
    let req = Request::get("/").header("host", "nobody.test").body(empty()).unwrap();
    let reply = client.request("gateway.test", Proto::H1, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert!(reply.text().contains("nobody.test"));
    assert_eq!(reply.headers["x-routehub-error"], "unknown_host");
    // An SNI nobody registered gets no certificate: the handshake fails.
    assert!(client.get("nobody.test", "/").await.is_err());
    assert_eq!(backend.hits(), 0, "nothing may reach a relay");
    assert_eq!(net.metric("routehub_tls_unknown_sni_total").await, Some(1.0));
}

#[tokio::test]
async fn host_not_covered_by_the_sni_certificate_is_421() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    let req = Request::get("/").header("host", "app.test").body(empty()).unwrap();
    let reply = net.client().request("x.wild.test", Proto::H1, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{}", reply.text());
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn registered_host_without_a_relay_is_502() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["app.test", "idle.test"])
        .relay("a", &[("app.test", &backend.url())])
        .start()
        .await
        .unwrap();
    let reply = net.client().get("idle.test", "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(reply.text().contains("no relay is connected"), "{}", reply.text());
}

#[tokio::test]
async fn backend_down_is_502_naming_the_route() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .relay("a", &[("app.test/api", &format!("http://{dead}"))])
        .start()
        .await
        .unwrap();
    let reply = net.client().get("app.test", "/api/users").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let text = reply.text();
    // The public client learns which route failed, not where its target is;
    // the relay's log says both, and why.
    assert!(text.contains("app.test/api"), "{text}");
    assert!(!text.contains(&dead.to_string()), "{text}");
    assert_eq!(reply.headers["x-routehub-error"], "target_unreachable");
    let logged = harness::logs::lines_with(&["target unreachable", &dead.to_string()]);
    assert!(
        logged.iter().any(|l| l.to_lowercase().contains("refused")),
        "{logged:?}"
    );
}

#[tokio::test]
async fn metrics_count_quic_sessions() {
    let backend = Backend::start().await;
    let net = one_app(&backend).await;
    assert_eq!(
        net.metric("routehub_relay_sessions{transport=\"quic\"}").await,
        Some(1.0)
    );
    assert_eq!(
        net.metric("routehub_relay_sessions{transport=\"tcp\"}").await,
        Some(0.0)
    );
    assert_eq!(net.admin_get("/healthz").await.unwrap(), "ok\n");
    // Heartbeats carry the relay's measured RTT into a histogram.
    let rtt = harness::wait_until(std::time::Duration::from_secs(5), || async {
        net.metric("routehub_relay_rtt_seconds_count")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    assert!(rtt.is_some(), "no RTT sample");
}
