//! Certificates from ACME, against a real Pebble with real validation
//! (Pebble connects to the gateway's HTTP and TLS listeners). Orders are
//! counted at the fault-injecting proxy in front of Pebble (new orders
//! Pebble accepted) and in the gateway's metrics, never by timing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use harness::acme_proxy::{AriWindow, Fault};
use harness::client::{Proto, empty, read};
use harness::{Backend, Pebble, TestNet, logs, pebble, wait_until};
use http::{Request, StatusCode};

async fn acme_net(backend: &Backend, pebble: &Arc<Pebble>, challenge: &str) -> TestNet {
    acme_net_with(backend, pebble, challenge, certs::Clock::system()).await
}

async fn acme_net_with(backend: &Backend, pebble: &Arc<Pebble>, challenge: &str, clock: certs::Clock) -> TestNet {
    let challenge = challenge.to_owned();
    TestNet::builder()
        .key("a", &["app.test", "*.wild.test"])
        .relay("a", &[("app.test", &backend.url()), ("x.wild.test", &backend.url())])
        .acme(pebble)
        .gateway_config(move |c| {
            c.acme.as_mut().expect("acme").challenge = challenge;
            c.clock = clock;
        })
        .start()
        .await
        .expect("test net")
}

/// The leaf certificate the gateway serves for `sni` on a new connection.
async fn served_leaf(net: &TestNet, sni: &str) -> Vec<u8> {
    let tls = net.client().tls_connect(sni, &[b"http/1.1"]).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn metric(net: &TestNet, series: &str) -> f64 {
    net.metric(series).await.unwrap_or(0.0)
}

async fn get_ok(net: &TestNet, host: &str) {
    let reply = net.client().get(host, "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn http01_issues_on_demand_and_serves_through_the_tunnel() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    assert!(
        net.gateway.certs().info("app.test").is_none(),
        "nothing before the first handshake"
    );
    let before = pebble.proxy().orders_created();
    // The client trusts only Pebble's issuing root.
    let started = Instant::now();
    get_ok(&net, "app.test").await;
    println!("first request, HTTP-01 order included: {:?}", started.elapsed());
    assert_eq!(pebble.proxy().orders_created(), before + 1);
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"valid\"}").await, 2.0);
    let text = net.admin_get("/metrics").await.unwrap();
    assert!(
        text.contains("routehub_tls_certificates_expiring{within_days=\"+Inf\"} 2"),
        "{text}"
    );
    // Later requests reuse the certificate.
    get_ok(&net, "app.test").await;
    assert_eq!(pebble.proxy().orders_created(), before + 1);
}

#[tokio::test]
async fn tls_alpn01_issues_on_demand() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "tls-alpn-01").await;
    let before = pebble.proxy().orders_created();
    get_ok(&net, "app.test").await;
    assert_eq!(pebble.proxy().orders_created(), before + 1);
    assert_eq!(
        metric(
            &net,
            "routehub_acme_challenge_failures_total{challenge=\"tls-alpn-01\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn auto_falls_back_to_http01_when_tls_alpn01_fails() {
    let Some(pebble) = pebble::require().await else { return };
    pebble.break_tls_alpn01().unwrap();
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "auto").await;
    get_ok(&net, "app.test").await;
    // Own name and app.test: each one failed TLS-ALPN-01 order, then HTTP-01.
    assert_eq!(
        metric(
            &net,
            "routehub_acme_challenge_failures_total{challenge=\"tls-alpn-01\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&net, "routehub_acme_orders_total{outcome=\"invalid\"}").await,
        2.0
    );
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"valid\"}").await, 2.0);
}

#[tokio::test]
async fn twenty_concurrent_first_handshakes_make_one_order() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    let before = pebble.proxy().orders_created();
    let client = net.client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("app.test", "/").await.map(|r| r.status) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(
        pebble.proxy().orders_created(),
        before + 1,
        "one order for 20 handshakes"
    );
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"valid\"}").await, 2.0);
}

#[tokio::test]
async fn a_wildcard_registration_gets_a_certificate_per_name() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    get_ok(&net, "x.wild.test").await;
    let leaf = served_leaf(&net, "x.wild.test").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        ["DNSName(x.wild.test)"],
        "a per-name certificate, not *.wild.test"
    );

    // A name the wildcard grant covers but no connected relay serves gets
    // no order: random names under a wildcard cannot spend the budget.
    let before = pebble.proxy().orders_created();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        net.client().tls_connect("random-1234.wild.test", &[b"http/1.1"]),
    )
    .await
    .expect("refused at once, not left hanging");
    assert!(attempt.is_err(), "a TLS session for a name no relay serves");
    assert_eq!(pebble.proxy().orders_created(), before);
}

#[tokio::test]
async fn an_unregistered_sni_makes_no_order_and_fails_cleanly() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    let before = pebble.proxy().orders_created();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        net.client().tls_connect("evil.test", &[b"http/1.1"]),
    )
    .await
    .expect("refused at once, not left hanging");
    let err = match attempt {
        Ok(_) => panic!("a TLS session for an unregistered name"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.to_lowercase().contains("alert") || err.contains("handshake"),
        "{err}"
    );
    assert_eq!(
        pebble.proxy().orders_created(),
        before,
        "no order for an unregistered name"
    );
    assert_eq!(metric(&net, "routehub_tls_unknown_sni_total").await, 1.0);
    assert!(net.gateway.certs().info("evil.test").is_none());
    // The gateway still serves registered names.
    get_ok(&net, "app.test").await;
}

#[tokio::test]
async fn a_restarted_gateway_serves_stored_certificates_without_orders() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let mut net = acme_net(&backend, &pebble, "http-01").await;
    get_ok(&net, "app.test").await;
    let leaf = served_leaf(&net, "app.test").await;
    let orders = pebble.proxy().orders_created();

    net.restart_gateway().await.unwrap();
    assert_eq!(served_leaf(&net, "app.test").await, leaf, "the stored certificate");
    let up = wait_until(Duration::from_secs(20), || {
        let client = net.client();
        async move {
            client
                .get("app.test", "/")
                .await
                .ok()
                .filter(|r| r.status == StatusCode::OK)
        }
    })
    .await;
    assert!(up.is_some(), "the relay reconnected and the stored certificate serves");
    assert_eq!(
        pebble.proxy().orders_created(),
        orders,
        "no new order after the restart"
    );
    let text = net.admin_get("/metrics").await.unwrap();
    assert!(
        !text.contains("routehub_acme_orders_total{"),
        "no order on the new gateway: {text}"
    );
    let key = std::fs::read_dir(net.dir.path().join("gateway/acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("certs/app.test.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

/// Far enough for any certificate issued before to be due for renewal
/// (two thirds of its lifetime plus the largest jitter), not expired.
fn renewal_jump(net: &TestNet, name: &str) -> Duration {
    let info = net.gateway.certs().info(name).unwrap();
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    let age = SystemTime::now().duration_since(info.not_before).unwrap_or_default();
    (lifetime * 2 / 3 + lifetime / 30 + Duration::from_secs(3600)).saturating_sub(age)
}

#[tokio::test]
async fn renewal_swaps_the_certificate_without_dropping_open_connections() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let clock = certs::Clock::adjustable();
    let net = acme_net_with(&backend, &pebble, "http-01", clock.clone()).await;
    let mut conn = net.client().connect("app.test", Proto::H2).await.unwrap();
    let reply = read(
        conn.send(Request::get("https://app.test/").body(empty()).unwrap())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let first = served_leaf(&net, "app.test").await;
    let orders = pebble.proxy().orders_created();

    clock.advance(renewal_jump(&net, "app.test"));
    let renewed = wait_until(Duration::from_secs(20), || {
        let net = &net;
        let first = first.clone();
        async move {
            let leaf = served_leaf(net, "app.test").await;
            (leaf != first).then_some(leaf)
        }
    })
    .await;
    assert!(renewed.is_some(), "renewed within 20 s: {}", pebble.logs());
    // The h2 connection opened before the renewal still works.
    for _ in 0..3 {
        let reply = read(
            conn.send(Request::get("https://app.test/").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    // app.test and the gateway's own name were due; nothing renews again.
    let settled = wait_until(Duration::from_secs(20), || {
        let n = pebble.proxy().orders_created();
        async move { (n == orders + 2).then_some(()) }
    })
    .await;
    assert!(
        settled.is_some(),
        "orders: {}",
        pebble.proxy().orders_created() - orders
    );
    get_ok(&net, "app.test").await;
    assert_eq!(pebble.proxy().orders_created(), orders + 2, "no renewal loop");
}

#[tokio::test]
async fn a_429_with_retry_after_makes_the_issuer_wait_as_told() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    let retry_after = Duration::from_secs(2);
    pebble.proxy().add_fault(Fault::rate_limit_new_order(1, retry_after));
    let mark = pebble.proxy().seen().len();
    get_ok(&net, "app.test").await;

    let seen = pebble.proxy().seen()[mark..].to_vec();
    let limited = seen.iter().position(|s| s.status == 429).expect("the 429 was served");
    let next = seen.get(limited + 1).expect("the issuer came back");
    let waited = next.at.duration_since(seen[limited].at);
    assert!(
        waited >= retry_after,
        "next ACME request after {waited:?}, told {retry_after:?}"
    );
    assert_eq!(
        metric(&net, "routehub_acme_orders_total{outcome=\"rate_limited\"}").await,
        1.0
    );
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"valid\"}").await, 2.0);
}

#[tokio::test]
async fn a_failing_challenge_is_logged_and_counted_and_the_old_certificate_kept() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let clock = certs::Clock::adjustable();
    let net = acme_net_with(&backend, &pebble, "http-01", clock.clone()).await;
    get_ok(&net, "app.test").await;
    let first = served_leaf(&net, "app.test").await;

    // The name now resolves where no gateway listens: validation fails.
    pebble.set_address("app.test", "127.0.0.2").await.unwrap();
    clock.advance(renewal_jump(&net, "app.test"));
    let failed = wait_until(Duration::from_secs(20), || async {
        (metric(&net, "routehub_acme_challenge_failures_total{challenge=\"http-01\"}").await >= 1.0).then_some(())
    })
    .await;
    assert!(failed.is_some(), "the failed renewal is counted");
    assert_eq!(
        metric(&net, "routehub_acme_orders_total{outcome=\"invalid\"}").await,
        1.0
    );
    // Logged once the order task has recorded the failure, just after
    // the metric.
    let logged = wait_until(Duration::from_secs(10), || async {
        let lines = logs::lines_with(&[
            "could not obtain a certificate",
            "name=app.test",
            "http-01 challenge for app.test failed",
        ]);
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .expect("a clear error in the logs");
    assert!(
        logged[0].contains("127.0.0.2"),
        "the CA's reason is in the log: {}",
        logged[0]
    );
    assert_eq!(
        served_leaf(&net, "app.test").await,
        first,
        "the old certificate is still served"
    );
    get_ok(&net, "app.test").await;
}

#[tokio::test]
async fn a_renewal_window_from_the_ca_triggers_renewal() {
    let Some(pebble) = pebble::require().await else { return };
    let now = SystemTime::now();
    let later = AriWindow {
        start: now + Duration::from_secs(30 * 86400),
        end: now + Duration::from_secs(31 * 86400),
        retry_after: Duration::from_secs(60),
    };
    pebble.proxy().serve_ari(vec![later]);
    let clock = certs::Clock::adjustable();
    let ari_clock = clock.clone();
    // The gateway's own name is the only certificate: no relay needed.
    let net = TestNet::builder()
        .acme(&pebble)
        .gateway_config(move |c| {
            c.names = vec!["app.test".into()];
            c.acme.as_mut().expect("acme").challenge = "tls-alpn-01".into();
            c.clock = ari_clock;
        })
        .start()
        .await
        .expect("test net");
    let first = served_leaf(&net, "app.test").await;
    let orders = pebble.proxy().orders_created();

    // The CA now says: renew now. The gateway asks again after the
    // Retry-After it was given (60 s, passed on the clock). The first
    // window request may still be in flight: its 60 s count from its
    // answer, given before this advance.
    let now_window = AriWindow {
        start: now - Duration::from_secs(3600),
        end: now - Duration::from_secs(60),
        retry_after: Duration::from_secs(60),
    };
    pebble.proxy().serve_ari(vec![now_window, later]);
    clock.advance(Duration::from_secs(120));
    let renewed = wait_until(Duration::from_secs(20), || {
        let net = &net;
        let first = first.clone();
        async move { (served_leaf(net, "app.test").await != first).then_some(()) }
    })
    .await;
    assert!(renewed.is_some(), "renewed inside the CA's window: {}", pebble.logs());
    assert_eq!(pebble.proxy().orders_created(), orders + 1);
}

#[tokio::test]
async fn the_hourly_order_budget_protects_the_account() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .relay("a", &[("app.test", &backend.url())])
        .acme(&pebble)
        .gateway_config(|c| {
            let acme = c.acme.as_mut().expect("acme");
            acme.challenge = "http-01".into();
            acme.orders_per_hour = 1; // spent on the gateway's own name
        })
        .start()
        .await
        .expect("test net");
    let before = pebble.proxy().orders_created();
    assert!(
        net.client().get("app.test", "/").await.is_err(),
        "no certificate: budget spent"
    );
    assert_eq!(pebble.proxy().orders_created(), before, "the CA never saw an order");
    assert_eq!(
        metric(&net, "routehub_acme_orders_total{outcome=\"budget_exhausted\"}").await,
        1.0
    );
    // Handshakes during the backoff do not even try.
    assert!(net.client().get("app.test", "/").await.is_err());
    assert_eq!(
        metric(&net, "routehub_acme_orders_total{outcome=\"budget_exhausted\"}").await,
        1.0
    );
}

/// One plain-HTTP/1.1 request to the gateway's HTTP listener.
async fn plain_http(net: &TestNet, host: &str, path: &str) -> http::Response<bytes::Bytes> {
    let addr = net.gateway.http_addr().expect("HTTP listener on");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(empty()).unwrap();
    let reply = read(send.send_request(req).await.unwrap()).await.unwrap();
    let mut resp = http::Response::new(reply.body);
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    resp
}

#[tokio::test]
async fn the_http_listener_answers_404_for_unknown_tokens_and_redirects_the_rest() {
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let resp = plain_http(&net, "app.test", "/.well-known/acme-challenge/no-such-token").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = plain_http(&net, "App.Test:80", "/some/path?q=1").await;
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    let https_port = net.gateway.addr().port();
    assert_eq!(
        resp.headers()["location"],
        format!("https://app.test:{https_port}/some/path?q=1").as_str()
    );
    // With the dev CA there are no challenges at all.
    assert!(net.gateway.certs().challenges().is_none());
}

#[tokio::test]
async fn acme_tls_alpn_without_a_pending_challenge_is_refused() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "tls-alpn-01").await;
    let before = pebble.proxy().orders_created();
    let attempt = net.client().tls_connect("app.test", &[b"acme-tls/1"]).await;
    assert!(attempt.is_err(), "no challenge pending for app.test");
    assert_eq!(
        pebble.proxy().orders_created(),
        before,
        "an acme-tls/1 hello starts no order"
    );
}

#[tokio::test]
async fn auto_answers_http01_in_the_same_order_when_the_ca_offers_no_tls_alpn01() {
    let Some(pebble) = pebble::require().await else { return };
    pebble.proxy().hide_challenge("tls-alpn-01");
    let backend = Backend::start().await;
    // The gateway's own name is issued while the net starts: that alone
    // failed before, when auto insisted on TLS-ALPN-01 first.
    let net = acme_net(&backend, &pebble, "auto").await;
    let before = pebble.proxy().orders_created();
    get_ok(&net, "app.test").await;
    assert_eq!(
        pebble.proxy().orders_created(),
        before + 1,
        "one order, no fallback order"
    );
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"valid\"}").await, 2.0);
    assert_eq!(metric(&net, "routehub_acme_orders_total{outcome=\"error\"}").await, 0.0);
    assert_eq!(
        metric(
            &net,
            "routehub_acme_challenge_failures_total{challenge=\"tls-alpn-01\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn a_restarted_gateway_serves_stored_wildcard_names_before_their_relay_returns() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let mut net = acme_net(&backend, &pebble, "http-01").await;
    get_ok(&net, "x.wild.test").await;
    let leaf = served_leaf(&net, "x.wild.test").await;
    let orders = pebble.proxy().orders_created();
    // No relay comes back: x.wild.test is owned (through *.wild.test) but
    // has no live route, which is what a new order would need.
    for relay in &net.relays {
        relay.shutdown();
    }
    net.restart_gateway().await.unwrap();
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(
        served_leaf(&net, "x.wild.test").await,
        leaf,
        "the stored certificate, served at once"
    );
    assert_eq!(pebble.proxy().orders_created(), orders, "no new order");
}

/// One plain-HTTP/1.1 request to `addr`.
async fn plain_http_to(addr: std::net::SocketAddr, host: &str, path: &str) -> harness::client::Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(empty()).unwrap();
    read(send.send_request(req).await.unwrap()).await.unwrap()
}

#[tokio::test]
async fn an_unknown_http01_token_is_404_while_an_order_is_pending() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let net = acme_net(&backend, &pebble, "http-01").await;
    let http = net.gateway.http_addr().expect("HTTP listener on");
    // The order for app.test stops where its challenge is announced as
    // ready: its answer is published and nothing has validated it yet.
    pebble
        .proxy()
        .hold(http::Method::POST, harness::acme_proxy::CHALLENGE_PATH);
    let certs = net.gateway.certs().clone();
    let order = tokio::spawn(async move { certs.ensure("app.test").await });
    assert!(
        pebble.proxy().wait_held(Duration::from_secs(20)).await,
        "the order reached its challenge"
    );

    let mut answered = 0;
    for token in pebble.proxy().challenge_tokens() {
        let reply = plain_http_to(http, "app.test", &format!("/.well-known/acme-challenge/{token}")).await;
        if reply.status == StatusCode::OK {
            assert!(reply.text().starts_with(&format!("{token}.")), "{}", reply.text());
            answered += 1;
        }
    }
    assert_eq!(answered, 1, "the pending order's token is answered");
    for unknown in ["no-such-token", "../../etc/passwd", ""] {
        let reply = plain_http_to(http, "app.test", &format!("/.well-known/acme-challenge/{unknown}")).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{unknown:?}: {}", reply.text());
    }

    pebble.proxy().release();
    order.await.unwrap().expect("the order completes once released");
    get_ok(&net, "app.test").await;
}

#[tokio::test]
async fn the_account_is_created_once_and_reused_after_a_restart() {
    let Some(pebble) = pebble::require().await else { return };
    let backend = Backend::start().await;
    let mut net = acme_net(&backend, &pebble, "http-01").await;
    get_ok(&net, "app.test").await;
    assert_eq!(pebble.proxy().accounts_accepted(), 1, "one account for two orders");

    net.restart_gateway().await.unwrap();
    let orders = pebble.proxy().orders_created();
    // A name never ordered before: the restarted gateway must order it
    // with the stored account.
    let up = wait_until(Duration::from_secs(20), || {
        let client = net.client();
        async move {
            client
                .get("x.wild.test", "/")
                .await
                .ok()
                .filter(|r| r.status == StatusCode::OK)
        }
    })
    .await;
    assert!(up.is_some(), "x.wild.test served after the restart: {}", pebble.logs());
    assert_eq!(pebble.proxy().orders_created(), orders + 1);
    assert_eq!(
        pebble.proxy().accounts_accepted(),
        1,
        "no new account after the restart"
    );
}

#[tokio::test]
async fn external_account_binding_is_sent_when_the_ca_requires_it() {
    let Some(pebble) = pebble::require().await else { return };
    const KID: &str = "kid-1";
    const HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    pebble.require_eab(KID, HMAC);
    // The net starts only once the gateway's own name is issued, which
    // needs an account, which this Pebble grants only with the binding.
    let net = TestNet::builder()
        .acme(&pebble)
        .gateway_config(|c| {
            let acme = c.acme.as_mut().expect("acme");
            acme.challenge = "http-01".into();
            acme.eab_kid = Some(KID.into());
            acme.eab_hmac_key = Some(HMAC.into());
        })
        .start()
        .await
        .expect("issued with EAB");
    assert_eq!(pebble.proxy().accounts_accepted(), 1);

    // The same CA refuses a gateway without the binding.
    let mut config = net.config.clone();
    config.data_dir = net.dir.path().join("no-eab");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.http_listen = gateway::config::HttpListen::At("127.0.0.1:0".parse().unwrap());
    if let Some(acme) = config.acme.as_mut() {
        acme.eab_kid = None;
        acme.eab_hmac_key = None;
    }
    let without = gateway::Gateway::start(config).await.unwrap();
    let err = without.certs().ensure("gateway.test").await.unwrap_err().to_string();
    assert!(err.contains("account"), "{err}");
    assert!(without.certs().info("gateway.test").is_none());
    without.shutdown();
}
