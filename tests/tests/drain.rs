//! Graceful drains lose nothing: a gateway or a relay that is told to
//! stop finishes every request in flight (1, 5 and 9 s long) within its
//! drain timeout, over QUIC and over the TCP fallback, with heartbeats
//! going on until the last stream ends.

use std::time::Duration;

use harness::{Backend, TestNet};
use http::StatusCode;
use relay::{Relay, TransportMode};

const DRAIN: u64 = 12;

async fn net(transport: TransportMode) -> (TestNet, Backend) {
    let backend = Backend::start().await;
    let mut net = TestNet::builder()
        .key("a", &["app.test"])
        .gateway_config(|c| c.drain_timeout_secs = DRAIN)
        .start()
        .await
        .unwrap();
    let mut config = net.relay_config("a", harness::net::routes(&[("app.test", &backend.url())]));
    config.transport = transport;
    config.drain_timeout_secs = DRAIN;
    let relay = Relay::start(config).await.unwrap();
    relay
        .wait_ready(1, Duration::from_secs(10))
        .await
        .expect("relay connects");
    net.relays.push(relay);
    (net, backend)
}

/// Starts requests of 1, 5 and 9 s, waits until the backend has them all,
/// runs `stop`, and checks that every one gets its 200.
async fn slow_requests_survive(net: &TestNet, backend: &Backend, stop: impl FnOnce()) {
    let client = net.client();
    let before = backend.hits();
    let requests: Vec<_> = [1000, 5000, 9000]
        .into_iter()
        .map(|ms| {
            let client = client.clone();
            tokio::spawn(async move { (ms, client.get("app.test", &format!("/slow/{ms}")).await) })
        })
        .collect();
    let arrived = harness::wait_until(Duration::from_secs(5), || async {
        (backend.hits() >= before + 3).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the requests reached the backend");
    stop();
    for r in requests {
        let (ms, reply) = r.await.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("the {ms} ms request failed: {e:#}"));
        assert_eq!(reply.status, StatusCode::OK, "the {ms} ms request: {}", reply.text());
        assert_eq!(reply.text(), "slow done\n");
    }
}

async fn gateway_drain(transport: TransportMode) {
    let (net, backend) = net(transport).await;
    slow_requests_survive(&net, &backend, || net.gateway.shutdown()).await;
    let stopped = tokio::time::timeout(Duration::from_secs(DRAIN), net.gateway.stopped()).await;
    assert!(stopped.is_ok(), "the gateway stops once they are done");
}

async fn relay_drain(transport: TransportMode) {
    let (mut net, backend) = net(transport).await;
    let relay = net.relays.pop().expect("one relay");
    slow_requests_survive(&net, &backend, || relay.shutdown()).await;
    let ended = tokio::time::timeout(Duration::from_secs(DRAIN), relay.wait()).await;
    assert!(ended.is_ok(), "the relay stops once they are done");
}

#[tokio::test]
async fn a_gateway_draining_finishes_requests_in_flight_over_quic() {
    gateway_drain(TransportMode::Quic).await;
}

#[tokio::test]
async fn a_gateway_draining_finishes_requests_in_flight_over_tcp() {
    gateway_drain(TransportMode::Tcp).await;
}

#[tokio::test]
async fn a_relay_draining_finishes_requests_in_flight_over_quic() {
    relay_drain(TransportMode::Quic).await;
}

#[tokio::test]
async fn a_relay_draining_finishes_requests_in_flight_over_tcp() {
    relay_drain(TransportMode::Tcp).await;
}
