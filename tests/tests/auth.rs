//! Relay authentication: who may connect, which hostnames a key may serve,
//! channel binding, and hostile bytes on the control stream.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use harness::faults::Direction;
use harness::{Backend, FaultProxy, TestNet, wait_until};
use tunnel_proto::handshake::proof_message;
use tunnel_proto::io::{expect_frame, write_frame};
use tunnel_proto::limits::{HANDSHAKE_TIMEOUT, MAX_FRAME_PAYLOAD, PROTOCOL_VERSION};
use tunnel_proto::{Frame, Hello, RejectCode, RelayKey, Transport};

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn key_not_in_authorized_keys_is_rejected_with_a_clear_reason() {
    let backend = Backend::start().await;
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let relay = net
        .start_relay("stranger", harness::net::routes(&[("app.test", &backend.url())]))
        .await
        .unwrap();
    let err = TestNet::relay_error(&relay, WITHIN)
        .await
        .expect("relay reports an error");
    assert!(err.contains("is not authorized on this gateway"), "{err}");
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(
        net.metric("routehub_relay_handshakes_total{outcome=\"unknown_key\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn key_asking_for_a_hostname_it_does_not_own_is_rejected() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .key("b", &["other.test"])
        .start()
        .await
        .unwrap();
    let relay = net
        .start_relay("a", harness::net::routes(&[("other.test", &backend.url())]))
        .await
        .unwrap();
    let err = TestNet::relay_error(&relay, WITHIN).await.unwrap();
    assert!(err.contains("may not serve other.test"), "{err}");
    assert_eq!(net.gateway.session_count(), 0);
}

#[tokio::test]
async fn second_key_claiming_a_taken_hostname_is_rejected() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("owner", &["app.site.test"])
        .key("wild", &["*.site.test"])
        .relay("owner", &[("app.site.test", &backend.url())])
        .start()
        .await
        .unwrap();
    let relay = net
        .start_relay("wild", harness::net::routes(&[("app.site.test", &backend.url())]))
        .await
        .unwrap();
    let err = TestNet::relay_error(&relay, WITHIN).await.unwrap();
    assert!(err.contains("app.site.test is served by another key"), "{err}");
    assert_eq!(net.gateway.session_count(), 1);
    // The owner keeps serving.
    assert_eq!(net.client().get("app.site.test", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn the_same_hostname_for_two_keys_is_a_config_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        RelayKey::generate().unwrap().public_key(),
        RelayKey::generate().unwrap().public_key(),
    );
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("{a} app.test\n# b\n{b} app.test\n")).unwrap();
    let config = gateway::GatewayConfig {
        data_dir: dir.path().join("gw"),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        authorized_keys: Some(path.clone()),
        ..Default::default()
    };
    let err = gateway::Gateway::start(config)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.starts_with(&format!("{}:3:", path.display())), "{err}");
    assert!(err.contains("already claimed by the key on line 1"), "{err}");
}

/// Plays a relay by hand on a raw tunnel over `transport`: sends Hello,
/// returns the challenge nonce and the control stream.
async fn hello(
    net: &TestNet,
    key: &RelayKey,
    transport: Transport,
) -> (tunnel_proto::Tunnel, tunnel_proto::TunnelStream, [u8; 32]) {
    let tunnel = match transport {
        Transport::Quic => net.raw_quic().await.unwrap(),
        Transport::Tcp => net.raw_tcp().await.unwrap(),
    };
    assert_eq!(tunnel.transport(), transport);
    let mut ctrl = tunnel.open_stream().await.unwrap();
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        public_key: key.public_key().to_bytes(),
        instance: 7,
        hostnames: vec!["app.test".into()],
        capabilities: vec![],
    });
    write_frame(&mut ctrl, &hello).await.unwrap();
    match expect_frame(&mut ctrl).await.unwrap() {
        Frame::Challenge { nonce } => (tunnel, ctrl, nonce),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

async fn expect_reject(ctrl: &mut tunnel_proto::TunnelStream) -> (RejectCode, String) {
    match expect_frame(ctrl).await {
        Ok(Frame::Reject { code, message }) => (code, message),
        other => panic!("expected Reject, got {other:?}"),
    }
}

/// A genuine proof is useless on any connection but its own: the TLS
/// exporter it signs differs (channel binding), on either transport.
async fn replayed_proofs_are_rejected(transport: Transport) {
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let key = RelayKey::load(&net.key_path("a")).unwrap();

    // A genuine proof on connection A, replayed on connection B.
    let (tunnel_a, _ctrl_a, nonce_a) = hello(&net, &key, transport).await;
    let proof_a = key.sign(&proof_message(&nonce_a, &tunnel_a.exporter().unwrap()));
    let (_tunnel_b, mut ctrl_b, _nonce_b) = hello(&net, &key, transport).await;
    write_frame(&mut ctrl_b, &Frame::Proof { signature: proof_a })
        .await
        .unwrap();
    let (code, message) = expect_reject(&mut ctrl_b).await;
    assert_eq!(code, RejectCode::BadProof, "{message}");

    // A relay tricked into signing B's nonce on its own connection (A):
    // the exporter differs, so the proof is still useless on B.
    let (_tunnel_c, mut ctrl_c, nonce_c) = hello(&net, &key, transport).await;
    let relayed = key.sign(&proof_message(&nonce_c, &tunnel_a.exporter().unwrap()));
    write_frame(&mut ctrl_c, &Frame::Proof { signature: relayed })
        .await
        .unwrap();
    assert_eq!(expect_reject(&mut ctrl_c).await.0, RejectCode::BadProof);

    // The honest path on a fresh connection works.
    let (tunnel_d, mut ctrl_d, nonce_d) = hello(&net, &key, transport).await;
    let proof = key.sign(&proof_message(&nonce_d, &tunnel_d.exporter().unwrap()));
    write_frame(&mut ctrl_d, &Frame::Proof { signature: proof })
        .await
        .unwrap();
    assert!(matches!(expect_frame(&mut ctrl_d).await.unwrap(), Frame::Welcome(_)));
    assert_eq!(
        net.metric("routehub_relay_handshakes_total{outcome=\"bad_proof\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn proof_from_another_connection_is_rejected() {
    replayed_proofs_are_rejected(Transport::Quic).await;
}

#[tokio::test]
async fn proof_from_another_connection_is_rejected_over_tcp() {
    replayed_proofs_are_rejected(Transport::Tcp).await;
}

/// A proof made on a QUIC connection, replayed over TCP (and back).
#[tokio::test]
async fn proof_from_the_other_transport_is_rejected() {
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let key = RelayKey::load(&net.key_path("a")).unwrap();
    for (from, to) in [(Transport::Quic, Transport::Tcp), (Transport::Tcp, Transport::Quic)] {
        let (tunnel_a, _ctrl_a, nonce_a) = hello(&net, &key, from).await;
        let proof = key.sign(&proof_message(&nonce_a, &tunnel_a.exporter().unwrap()));
        let (_tunnel_b, mut ctrl_b, _) = hello(&net, &key, to).await;
        write_frame(&mut ctrl_b, &Frame::Proof { signature: proof })
            .await
            .unwrap();
        assert_eq!(
            expect_reject(&mut ctrl_b).await.0,
            RejectCode::BadProof,
            "{from} → {to}"
        );
    }
}

/// Most a gateway may take to drop a peer that never authenticates:
/// the handshake deadline, the second it gives a rejected peer to read
/// the Reject, and some slack.
const DROPPED_WITHIN: Duration = Duration::from_millis(HANDSHAKE_TIMEOUT.as_millis() as u64 + 2_500);

/// A TCP peer slow to start TLS, then silent: the gateway's deadline runs
/// from the TCP connection, not again from the end of TLS.
#[tokio::test]
async fn a_silent_tcp_peer_is_dropped_one_handshake_timeout_after_connecting() {
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let tcp = tokio::net::TcpStream::connect(net.gateway.addr()).await.unwrap();
    let connected = Instant::now();
    // The peer's slowness is the scenario, not a wait for readiness.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tunnel = net.raw_tcp_over(tcp).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), tunnel.closed()).await;
    assert!(closed.is_ok(), "the gateway never dropped the silent peer");
    let held = connected.elapsed();
    assert!(
        held <= DROPPED_WITHIN,
        "an unauthenticated peer held a slot for {held:?}"
    );
}

/// The same over QUIC, whose handshake the gateway's answers being lost
/// drags out: the deadline runs from the peer's first packet.
#[tokio::test]
async fn a_silent_quic_peer_is_dropped_one_handshake_timeout_after_its_first_packet() {
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let proxy = FaultProxy::start(net.gateway.addr()).await.unwrap();
    proxy.udp.set_blackhole_toward(Direction::ToClient, true);
    let drag_out = async {
        // The gateway got the first packet once its answer is being dropped.
        let answered = wait_until(WITHIN, || async {
            (proxy.udp.dropped.load(Ordering::Relaxed) > 0).then_some(())
        })
        .await;
        assert!(answered.is_some(), "the gateway never answered");
        let first_packet = Instant::now();
        // The lost answers are the scenario, not a wait for readiness.
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.udp.set_blackhole_toward(Direction::ToClient, false);
        first_packet
    };
    let (tunnel, first_packet) = tokio::join!(net.raw_quic_to(proxy.addr()), drag_out);
    let tunnel = tunnel.expect("QUIC handshake");
    let closed = tokio::time::timeout(Duration::from_secs(30), tunnel.closed()).await;
    assert!(closed.is_ok(), "the gateway never dropped the silent peer");
    let held = first_packet.elapsed();
    assert!(
        held <= DROPPED_WITHIN,
        "an unauthenticated peer held a slot for {held:?}"
    );
}

#[tokio::test]
async fn hostile_control_bytes_get_a_clean_error_and_the_gateway_keeps_serving() {
    let backend = Backend::start().await;
    let net = TestNet::builder()
        .key("a", &["app.test"])
        .relay("a", &[("app.test", &backend.url())])
        .start()
        .await
        .unwrap();
    let oversize = {
        let mut h = vec![1u8, 0x01];
        h.extend_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_be_bytes());
        h
    };
    let unknown_type = vec![1u8, 0xee, 0, 0, 0, 0];
    let bad_version = vec![9u8, 0x01, 0, 0, 0, 0];
    let truncated = {
        let mut f = Frame::Pong { seq: 1 }.to_bytes().unwrap();
        f.truncate(f.len() - 3);
        f
    };
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("oversize", oversize, "exceeds the 65536-byte limit"),
        ("unknown type", unknown_type, "unknown frame type 0xee"),
        ("bad version", bad_version, "unsupported wire version 9"),
        ("truncated", truncated, "in the middle of a frame"),
    ];
    for (name, bytes, needle) in cases {
        let tunnel = net.raw_quic().await.unwrap();
        let mut ctrl = tunnel.open_stream().await.unwrap();
        use tokio::io::AsyncWriteExt;
        ctrl.write_all(&bytes).await.unwrap();
        ctrl.shutdown().await.unwrap();
        let started = Instant::now();
        let (code, message) = expect_reject(&mut ctrl).await;
        assert!(message.contains(needle), "{name}: {code:?} {message}");
        assert!(started.elapsed() < Duration::from_secs(2), "{name}: slow reject");
        let closed = tokio::time::timeout(Duration::from_secs(3), tunnel.closed()).await;
        assert!(closed.is_ok(), "{name}: gateway must close the connection");
    }
    assert_eq!(net.client().get("app.test", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn silent_connection_is_closed_at_the_handshake_deadline() {
    // A peer that opens QUIC and never speaks must not hold resources: the
    // gateway closes it (handshake deadline 10 s, QUIC idle 10 s).
    let net = TestNet::builder().key("a", &["app.test"]).start().await.unwrap();
    let tunnel = net.raw_quic().await.unwrap();
    let _ctrl = tunnel.open_stream().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), tunnel.closed()).await;
    assert!(closed.is_ok(), "silent connection stayed open");
}

#[tokio::test]
async fn a_wildcard_route_never_catches_a_hostname_another_key_owns() {
    let (wild, owner) = (Backend::start().await, Backend::start().await);
    let net = TestNet::builder()
        .key("wild", &["*.site.test"])
        .key("owner", &["api.site.test"])
        .relay("wild", &[("*.site.test", &wild.url())])
        .start()
        .await
        .unwrap();
    let client = net.client();
    assert_eq!(client.get("www.site.test", "/").await.unwrap().status, 200);
    // api.site.test belongs to the other key, whose relay is away: 502, and
    // the wildcard relay never sees the request (nor its cookies).
    let reply = client.get("api.site.test", "/").await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(wild.hits(), 1);
    let relay = net
        .start_relay("owner", harness::net::routes(&[("api.site.test", &owner.url())]))
        .await
        .unwrap();
    relay.wait_ready(1, WITHIN).await.unwrap();
    assert_eq!(client.get("api.site.test", "/").await.unwrap().status, 200);
    assert_eq!((wild.hits(), owner.hits()), (1, 1));
}

#[tokio::test]
async fn one_foreign_hostname_does_not_lock_the_relay_out() {
    let backend = Backend::start().await;
    let mut net = TestNet::builder()
        .key("a", &["app.test"])
        .key("b", &["other.test"])
        .relay("a", &[("app.test", &backend.url()), ("other.test", &backend.url())])
        .start()
        .await
        .unwrap();
    assert_eq!(net.client().get("app.test", "/").await.unwrap().status, 200);
    assert_eq!(net.client().get("other.test", "/").await.unwrap().status, 502);
    // A reconnect (here: the gateway restarts) must not turn the relay away.
    net.restart_gateway().await.unwrap();
    let back = harness::wait_until(WITHIN, || async {
        net.client().get("app.test", "/").await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert!(back.is_some(), "the relay was locked out after reconnecting");
}
