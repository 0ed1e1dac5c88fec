//! Flow control across the tunnel: clients that stop reading hold only
//! their own streams' windows, never the tunnel's, so every other request
//! and the session's heartbeats go on.

use std::time::{Duration, Instant};

use harness::{Backend, TestNet};
use http::StatusCode;
use relay::{Relay, TransportMode};
use tokio::io::AsyncWriteExt;

/// Clients that stop reading, and what each asks for.
const STALLED: usize = 64;
const DOWNLOAD: usize = 8 * 1024 * 1024;
/// How long the other requests are watched, and how long each may take.
const WATCH: Duration = Duration::from_secs(30);
const EACH: Duration = Duration::from_secs(1);

async fn stalled_readers_never_block_the_tunnel(transport: TransportMode) {
    let backend = Backend::start().await;
    let mut net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let mut config = net.relay_config("a", harness::net::routes(&[("app.test", &backend.url())]));
    config.transport = transport;
    let relay = Relay::start(config).await.unwrap();
    relay
        .wait_ready(1, Duration::from_secs(10))
        .await
        .expect("relay connects");
    let session = |relay: &Relay| {
        relay
            .status()
            .borrow()
            .values()
            .find_map(|g| g.session.as_ref().map(|s| s.session_id))
    };
    let id = session(&relay).expect("a session");
    net.relays.push(relay);

    // 64 downloads of 8 MiB whose clients read nothing at all (with small
    // socket buffers, as over a slow link: what the gateway can't send
    // stays in the tunnel).
    let client = net.client();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let tcp = socket.connect(net.gateway.addr()).await.unwrap();
        let mut tls = client.tls_over(tcp, "app.test", &[b"http/1.1"]).await.unwrap();
        let req = format!("GET /bytes/{DOWNLOAD} HTTP/1.1\r\nhost: app.test\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        stalled.push(tls);
    }
    // The downloads first go at full speed; once the tunnel has given each
    // its window, nothing more moves for them.
    let through = harness::wait_until(Duration::from_secs(10), || async {
        let r = tokio::time::timeout(EACH, client.get("app.test", "/")).await;
        matches!(r, Ok(Ok(ref reply)) if reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(through.is_some(), "no request got through while the downloads stalled");
    let started = Instant::now();
    let mut asked = 0;
    while started.elapsed() < WATCH {
        let t = Instant::now();
        let reply = tokio::time::timeout(EACH, client.get("app.test", "/"))
            .await
            .unwrap_or_else(|_| panic!("request {asked} took over {EACH:?}, {:?} in", started.elapsed()))
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "request {asked}: {}", reply.text());
        asked += 1;
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(t.elapsed())).await;
    }
    assert!(asked >= 100, "{asked} requests in {WATCH:?}");
    assert_eq!(session(&net.relays[0]), Some(id), "the same session all along");
    assert_eq!(net.gateway.session_count(), 1);
    drop(stalled);
}

// One after the other: each moves hundreds of megabytes at first, and
// the watch is about the tunnel, not about a machine busy with both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_never_stall_the_tunnel_over_quic_or_tcp() {
    stalled_readers_never_block_the_tunnel(TransportMode::Quic).await;
    stalled_readers_never_block_the_tunnel(TransportMode::Tcp).await;
}
