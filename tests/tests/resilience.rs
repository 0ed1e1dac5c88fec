//! Tunnel resilience: UDP blocked from the start or mid-session, QUIC coming
//! back, packet loss, NAT rebinding, several gateways.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::client::{Proto, body, empty};
use harness::faults::Direction;
use harness::net::routes;
use harness::{Backend, FaultProxy, TestClient, TestNet, wait_until};
use http::{Method, Request, StatusCode};
use relay::{Relay, TransportMode};
use tunnel_proto::Transport;

fn transport(relay: &Relay) -> Option<Transport> {
    relay
        .status()
        .borrow()
        .values()
        .find_map(|g| g.session.as_ref().map(|s| s.transport))
}

async fn wait_transport(relay: &Relay, want: Transport, within: Duration) -> bool {
    wait_until(within, || async { (transport(relay) == Some(want)).then_some(()) })
        .await
        .is_some()
}

/// Which transport carried a request, as the backend saw it.
async fn carried_by(client: &TestClient) -> Option<String> {
    let reply = client.get("app.test", "/headers").await.ok()?;
    let text = reply.text();
    text.lines()
        .find_map(|l| l.strip_prefix("x-routehub-transport: "))
        .map(str::to_owned)
}

/// Waits until requests through the gateway are carried by `want`.
async fn carried_within(client: &TestClient, want: Transport, within: Duration) -> bool {
    wait_until(within, || async {
        (carried_by(client).await.as_deref() == Some(want.as_str())).then_some(())
    })
    .await
    .is_some()
}

struct Setup {
    backend: Backend,
    net: TestNet,
    proxy: FaultProxy,
}

async fn setup() -> Setup {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let proxy = FaultProxy::start(net.gateway.addr()).await.unwrap();
    Setup { backend, net, proxy }
}

impl Setup {
    async fn relay(&self, configure: impl FnOnce(&mut relay::RelayConfig)) -> Relay {
        let mut config =
            self.net
                .relay_config_via(self.proxy.addr(), "a", routes(&[("app.test", &self.backend.url())]));
        configure(&mut config);
        Relay::start(config).await.unwrap()
    }
}

#[tokio::test]
async fn udp_blocked_from_the_start_serves_over_tcp_within_2s() {
    let s = setup().await;
    s.proxy.udp.set_blackhole(true);
    let started = Instant::now();
    let relay = s.relay(|_| {}).await;
    relay
        .wait_ready(1, Duration::from_secs(5))
        .await
        .expect("relay ready over TCP");
    let elapsed = started.elapsed();
    eprintln!("serving over TCP {elapsed:?} after the relay started");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(transport(&relay), Some(Transport::Tcp));
    assert_eq!(carried_by(&s.net.client()).await.as_deref(), Some("tcp"));
    assert_eq!(
        s.net.metric("routehub_relay_sessions{transport=\"tcp\"}").await,
        Some(1.0)
    );
    assert_eq!(
        s.net.metric("routehub_relay_sessions{transport=\"quic\"}").await,
        Some(0.0)
    );
}

/// SIGTERM while the gateway can't be reached: the relay stops at once,
/// not after its connect and handshake timeouts.
#[tokio::test]
async fn a_relay_stops_at_once_while_the_gateway_is_unreachable() {
    let s = setup().await;
    s.proxy.udp.set_blackhole(true);
    s.proxy.tcp.set_blackhole(true);
    let relay = s.relay(|_| {}).await;
    // An attempt is under way: its QUIC packets vanish.
    let trying = wait_until(Duration::from_secs(5), || async {
        (s.proxy.udp.dropped.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert!(trying.is_some(), "the relay never tried to connect");
    let asked = Instant::now();
    relay.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(10), relay.wait()).await;
    assert!(stopped.is_ok(), "the relay did not stop within 10 s");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "the relay took {took:?} to stop");
}

/// One request of a load.
struct Outcome {
    id: String,
    method: Method,
    status: Option<StatusCode>,
    done: Instant,
    transport: Option<String>,
    text: String,
}

impl Outcome {
    /// GET, HEAD, OPTIONS and TRACE: the gateway may send them twice.
    fn safe(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        )
    }
}

/// Sequential requests from a few workers until stopped, each tagged with
/// an `x-test-id` so the backend can tell duplicates.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// One worker per plan, cycling through its methods: GET and DELETE go
    /// to `/headers` without a body, POST and PUT to `/echo` with one.
    fn start(client: TestClient, plans: &[&[Method]]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let workers = plans
            .iter()
            .enumerate()
            .map(|(w, methods)| {
                let (client, stop, done, methods) = (client.clone(), stop.clone(), done.clone(), methods.to_vec());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) && i < 10_000 {
                        let method = methods[i % methods.len()].clone();
                        i += 1;
                        let id = format!("{method}-{w}-{i}");
                        let with_body = matches!(method, Method::POST | Method::PUT);
                        let req = Request::builder()
                            .method(method.clone())
                            .uri(if with_body { "/echo" } else { "/headers" })
                            .header("host", "app.test")
                            .header("x-test-id", &id)
                            .body(if with_body { body("payload") } else { empty() })
                            .expect("valid request");
                        let reply =
                            tokio::time::timeout(Duration::from_secs(10), client.request("app.test", Proto::H1, req))
                                .await;
                        let (status, transport, text) = match reply {
                            Ok(Ok(r)) => {
                                let t = r
                                    .text()
                                    .lines()
                                    .find_map(|l| l.strip_prefix("x-routehub-transport: ").map(str::to_owned));
                                (Some(r.status), t, r.text())
                            }
                            Ok(Err(e)) => (None, None, e.to_string()),
                            Err(_) => (None, None, "timed out".into()),
                        };
                        outcomes.push(Outcome {
                            id,
                            method,
                            status,
                            done: Instant::now(),
                            transport,
                            text,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, done, workers }
    }

    /// Waits until `n` more requests have completed.
    async fn wait_for(&self, n: u64, within: Duration) -> bool {
        let target = self.done.load(Ordering::Relaxed) + n;
        wait_until(within, || async {
            (self.done.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await
        .is_some()
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.expect("load worker"));
        }
        all
    }
}

#[tokio::test]
async fn udp_blocked_mid_session_recovers_within_3s_without_duplicates() {
    let s = setup().await;
    let relay = s.relay(|_| {}).await;
    relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(transport(&relay), Some(Transport::Quic));

    // Sequential load: GETs (idempotent, retried) and POSTs (never duplicated).
    let load = Load::start(s.net.client(), &[&[Method::GET, Method::POST]]);
    assert!(load.wait_for(20, Duration::from_secs(5)).await);
    let blackholed = Instant::now();
    s.proxy.udp.set_blackhole(true);
    assert!(
        wait_transport(&relay, Transport::Tcp, Duration::from_secs(5)).await,
        "relay never moved to TCP"
    );
    assert!(carried_within(&s.net.client(), Transport::Tcp, Duration::from_secs(5)).await);
    assert!(load.wait_for(20, Duration::from_secs(5)).await);
    let outcomes = load.finish().await;

    let first_tcp = outcomes
        .iter()
        .filter(|o| o.done > blackholed && o.status == Some(StatusCode::OK) && o.safe())
        .find(|o| o.transport.as_deref() == Some("tcp"))
        .expect("a GET succeeded over TCP");
    let recovery = first_tcp.done - blackholed;
    // The relay brings up a TCP session at 1.5 silent heartbeats and the
    // gateway closes the quiet QUIC one as soon as the new one has its
    // routes: about 1.5 s, well before the QUIC session would be declared
    // dead (2.5 s).
    assert!(
        recovery < Duration::from_millis(2200),
        "serving again only after {recovery:?}"
    );
    for o in &outcomes {
        match (o.safe(), o.status) {
            (_, Some(StatusCode::OK)) => {}
            (false, Some(StatusCode::BAD_GATEWAY)) => {}
            (safe, status) => panic!("{} (safe: {safe}) ended with {status:?}: {}", o.id, o.text),
        }
        // A GET whose answer was lost with the QUIC session may be sent
        // again (a safe method, RFC 9110 §9.2.2), at most once per retry;
        // anything else never reaches the backend twice.
        let seen = s.backend.times_seen(&o.id);
        if o.safe() {
            assert!(seen <= 3, "{} reached the backend {seen} times", o.id);
        } else {
            assert!(seen <= 1, "{} reached the backend twice", o.id);
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::BAD_GATEWAY))
        .count();
    eprintln!(
        "recovery {recovery:?}; {} requests, {failed} POSTs failed with 502",
        outcomes.len()
    );
}

/// Requests reach the relay (and the backend) but no answer comes back:
/// the requests in flight are lost after they were carried out. A safe
/// one may be sent again; a POST, PUT or DELETE must fail with a clear 502
/// and reach the backend at most once.
#[tokio::test]
async fn answers_lost_mid_session_never_duplicate_an_unsafe_request() {
    let s = setup().await;
    let relay = s.relay(|_| {}).await;
    relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(transport(&relay), Some(Transport::Quic));
    // One worker per method (two each), so every kind is in flight when
    // the answers start to vanish.
    let plans: [&[Method]; 8] = [
        &[Method::GET],
        &[Method::POST],
        &[Method::PUT],
        &[Method::DELETE],
        &[Method::GET],
        &[Method::POST],
        &[Method::PUT],
        &[Method::DELETE],
    ];
    let load = Load::start(s.net.client(), &plans);
    assert!(load.wait_for(40, Duration::from_secs(5)).await);
    s.proxy.udp.set_blackhole_toward(Direction::ToTarget, true);
    assert!(
        wait_transport(&relay, Transport::Tcp, Duration::from_secs(5)).await,
        "relay never moved to TCP"
    );
    assert!(
        carried_within(&s.net.client(), Transport::Tcp, Duration::from_secs(5)).await,
        "not serving over TCP"
    );
    assert!(load.wait_for(40, Duration::from_secs(5)).await);
    let outcomes = load.finish().await;

    let mut lost_unsafe = 0;
    for o in &outcomes {
        let seen = s.backend.times_seen(&o.id);
        match (o.safe(), o.status) {
            (_, Some(StatusCode::OK)) => {}
            (false, Some(StatusCode::BAD_GATEWAY)) => {
                assert!(o.text.contains("could not take the request"), "{}: {}", o.id, o.text);
                lost_unsafe += usize::from(seen == 1);
            }
            (safe, status) => panic!("{} (safe: {safe}) ended with {status:?}: {}", o.id, o.text),
        }
        if !o.safe() {
            assert!(seen <= 1, "{} reached the backend {seen} times", o.id);
        }
    }
    // The scenario happened: unsafe requests were carried out, their
    // answers lost, and they were not sent again.
    assert!(
        lost_unsafe > 0,
        "no unsafe request was in flight when answers were lost"
    );
    let twice: Vec<&String> = outcomes
        .iter()
        .filter(|o| s.backend.times_seen(&o.id) > 1)
        .map(|o| &o.id)
        .collect();
    eprintln!(
        "{} requests; {lost_unsafe} unsafe ones carried out but answered 502; sent twice (safe only): {twice:?}",
        outcomes.len()
    );
}

/// The relay may still be working on a request whose answer timed out:
/// even a GET is not sent again (to another session) then.
#[tokio::test]
async fn a_request_whose_answer_timed_out_is_never_sent_again() {
    let backend = Backend::start().await;
    let target = backend.url();
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .gateway_config(|c| c.response_timeout_secs = 1)
        // Two sessions for the host: a retry would have somewhere to go.
        .relay("a", &[("app.test", &target)])
        .relay("a", &[("app.test", &target)])
        .start()
        .await
        .unwrap();
    assert_eq!(net.gateway.session_count(), 2);
    let req = Request::get("/slow/2500")
        .header("host", "app.test")
        .header("x-test-id", "slow-get")
        .body(empty())
        .unwrap();
    let reply = net.client().request("app.test", Proto::H1, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
    assert_eq!(backend.times_seen("slow-get"), 1, "the timed-out GET was sent again");
}

#[tokio::test]
async fn quic_is_used_again_once_udp_is_back() {
    let s = setup().await;
    s.proxy.udp.set_blackhole(true);
    let relay = s.relay(|c| c.quic_retry_secs = 1).await;
    relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(transport(&relay), Some(Transport::Tcp));
    // A steady load across the move back: not one request may fail.
    let load = Load::start(s.net.client(), &[&[Method::GET, Method::POST] as &[Method]; 4]);
    assert!(load.wait_for(20, Duration::from_secs(5)).await);
    // A long request keeps the TCP session busy, so the gateway can't
    // just drop it (and wait for the relay as for one that reconnects).
    let slow = tokio::spawn({
        let client = s.net.client();
        async move { client.get("app.test", "/slow/3000").await }
    });
    // UDP comes back slower than TCP (as on many networks): the QUIC
    // session's routes reach the gateway well after its handshake, so
    // the TCP session must serve until they do.
    s.proxy.udp.set_delay(Duration::from_millis(40));
    s.proxy.udp.set_blackhole(false);
    let unblocked = Instant::now();
    assert!(
        wait_transport(&relay, Transport::Quic, Duration::from_secs(10)).await,
        "relay stayed on TCP"
    );
    // Requests move over once the QUIC session's routes are in place.
    assert!(
        carried_within(&s.net.client(), Transport::Quic, Duration::from_secs(5)).await,
        "requests never moved to QUIC"
    );
    eprintln!("back on QUIC after {:?}", unblocked.elapsed());
    // The TCP session is drained and closed.
    let tcp_gone = wait_until(Duration::from_secs(10), || async {
        (s.net.metric("routehub_relay_sessions{transport=\"tcp\"}").await == Some(0.0)).then_some(())
    })
    .await;
    assert!(tcp_gone.is_some());
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status, StatusCode::OK, "{}", slow.text());
    assert!(load.wait_for(20, Duration::from_secs(5)).await);
    let outcomes = load.finish().await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != Some(StatusCode::OK))
        .map(|o| format!("{} {:?}: {}", o.id, o.status, o.text.trim()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    assert!(outcomes.iter().any(|o| o.transport.as_deref() == Some("tcp")));
    assert!(outcomes.iter().any(|o| o.transport.as_deref() == Some("quic")));
    assert!(s.backend.duplicated_ids().is_empty());
}

#[tokio::test]
async fn twenty_percent_udp_loss_loses_no_request() {
    let s = setup().await;
    let relay = s.relay(|c| c.transport = TransportMode::Quic).await;
    relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    s.proxy.udp.set_loss_percent(20);
    let client = s.net.client();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..50 {
                let path = format!("/bytes/{}", 1000 + worker * 100 + i);
                let reply = client.get("app.test", &path).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
                assert_eq!(reply.body.len(), 1000 + worker * 100 + i);
                ok += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 200);
    let dropped = s.proxy.udp.dropped.load(Ordering::Relaxed);
    assert!(dropped > 50, "the proxy dropped only {dropped} packets");
}

#[tokio::test]
async fn quic_session_survives_a_nat_rebinding() {
    let s = setup().await;
    let relay = s.relay(|c| c.transport = TransportMode::Quic).await;
    let before = relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    let id = |st: &relay::Status| st.values().find_map(|g| g.session.as_ref().map(|s| s.session_id));
    s.proxy.rebind_udp();
    for _ in 0..20 {
        assert_eq!(
            s.net.client().get("app.test", "/").await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(
        id(&relay.status().borrow()),
        id(&before),
        "the session was replaced instead of migrating"
    );
}

#[tokio::test]
async fn relay_joins_peer_gateways_and_survives_losing_one() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    // Gateway B sits behind a proxy, so it can be cut off like a dead host;
    // gateway A tells relays about B in its Welcome.
    let b = net.start_replica("b", |_| {}).await.unwrap();
    let b_proxy = FaultProxy::start(b.addr()).await.unwrap();
    let a = net
        .start_replica("a", |c| c.peers = vec![b_proxy.addr().to_string()])
        .await
        .unwrap();
    let mut config = net.relay_config("a", routes(&[("app.test", &backend.url())]));
    config.gateways = vec![a.addr().to_string()];
    let relay = Relay::start(config).await.unwrap();
    relay
        .wait_ready(2, Duration::from_secs(10))
        .await
        .expect("sessions with A and its peer B");
    assert_eq!((a.session_count(), b.session_count()), (1, 1));

    // Sequential requests to A while B dies: zero failures.
    let client_a = TestClient::new(a.addr(), a.ca_cert_path().expect("dev CA")).unwrap();
    let load = tokio::spawn(async move {
        let mut failures = 0;
        for _ in 0..150 {
            match client_a.get("app.test", "/").await {
                Ok(r) if r.status == StatusCode::OK => {}
                _ => failures += 1,
            }
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b_proxy.udp.set_blackhole(true);
    b_proxy.tcp.set_blackhole(true);
    b_proxy.cut_tcp();
    assert_eq!(load.await.unwrap(), 0);
    assert_eq!(a.session_count(), 1);
}

/// The TCP fallback carries hundreds of slow requests at once on one
/// tunnel, like QUIC: none waits for another's stream to close.
#[tokio::test]
async fn hundreds_of_concurrent_requests_share_one_tcp_tunnel() {
    let s = setup().await;
    let relay = s.relay(|c| c.transport = TransportMode::Tcp).await;
    let before = relay.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    let id = |st: &relay::Status| st.values().find_map(|g| g.session.as_ref().map(|s| s.session_id));
    // 400 requests of about 1 s each over four h2 connections. Taken 64 at
    // a time (the stream limit of the earlier yamux fallback), they would
    // need 7 s.
    const CONNS: usize = 4;
    const PER_CONN: usize = 100;
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(s.net.client().connect("app.test", Proto::H2).await.unwrap());
    }
    let hits = s.backend.hits();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        for j in 0..PER_CONN {
            let mut sender = conn.h2_sender().unwrap();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("https://app.test/slow/{}", 1000 + (i * PER_CONN + j) % 50))
                    .body(empty())
                    .unwrap();
                sender.ready().await.unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let reply = harness::client::read(resp).await.unwrap();
                (reply.status, reply.text())
            }));
        }
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "400 concurrent 1 s requests took {took:?}"
    );
    assert_eq!(
        s.backend.hits() - hits,
        (CONNS * PER_CONN) as u64,
        "each request reached the backend once"
    );
    assert_eq!(id(&relay.status().borrow()), id(&before), "the TCP tunnel was replaced");
}

/// Two relays serve app.test and one cannot reach its target. A safe
/// request that lands on that one goes on to the other; a POST gets that
/// relay's own 502 (it provably never reached a target, but its body is
/// spent), never a second delivery.
#[tokio::test]
async fn a_relay_that_cannot_reach_its_target_hands_safe_requests_to_another() {
    let s = setup().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let broken = s
        .relay(|c| c.routes = routes(&[("app.test", &format!("http://{dead}"))]))
        .await;
    broken.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    let good = s.relay(|_| {}).await;
    good.wait_ready(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        s.net.metric("routehub_relay_sessions{transport=\"quic\"}").await,
        Some(2.0)
    );
    let client = s.net.client();
    let hits = s.backend.hits();
    for _ in 0..10 {
        let reply = client.get("app.test", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(s.backend.hits() - hits, 10);

    let hits = s.backend.hits();
    let mut refused = 0;
    for _ in 0..10 {
        let req = Request::post("https://app.test/").body(body("x")).unwrap();
        let reply = client.request("app.test", Proto::H1, req).await.unwrap();
        if reply.status == StatusCode::BAD_GATEWAY {
            assert_eq!(reply.headers["x-routehub-error"], "target_unreachable");
            assert!(reply.text().contains("unreachable"), "{}", reply.text());
            assert!(!reply.text().contains(&dead.to_string()), "{}", reply.text());
            // The relay's hop-by-hop `connection: close` is its own.
            assert!(reply.headers.get("connection").is_none(), "{:?}", reply.headers);
            refused += 1;
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
    }
    assert!(refused > 0, "round robin sent no POST to the broken relay");
    assert_eq!(
        s.backend.hits() - hits,
        10 - refused,
        "each POST delivered at most once"
    );
}
