//! Micro-benchmarks of the tunnel protocol's sans-IO core:
//! `cargo bench -p benches --bench proto`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tunnel_proto::handshake::{ClientEvent, ClientHandshake, ServerEvent, ServerHandshake, proof_message};
use tunnel_proto::{Frame, RelayKey, RouteSpec, RoutesUpdate, StreamKind, UpdateKind};

fn routes_update(n: u64) -> Frame {
    Frame::Routes(RoutesUpdate {
        version: 42,
        base_version: 41,
        checksum: [7; 32],
        kind: UpdateKind::Delta,
        upserts: (0..n)
            .map(|id| RouteSpec {
                id,
                host: format!("app{id}.example.com"),
                path_prefix: "/api".into(),
                priority: 0,
                policy: None,
            })
            .collect(),
        removes: vec![],
    })
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let cases = [
        (
            "stream_open",
            Frame::StreamOpen {
                kind: StreamKind::Http,
                route_id: 12345,
            },
        ),
        (
            "ping",
            Frame::Ping {
                seq: 9,
                rtt_micros: 250,
                routes_version: 42,
                routes_checksum: [1; 32],
            },
        ),
        ("routes_100", routes_update(100)),
    ];
    for (name, frame) in cases {
        let bytes = frame.to_bytes().expect("encodes");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut buf = Vec::with_capacity(bytes.len());
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&frame).encode(&mut buf).expect("encodes");
                black_box(buf.len())
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Frame::decode(black_box(&bytes)).expect("decodes").expect("complete"))
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let key = RelayKey::generate().expect("key");
    let public = key.public_key();
    let nonce = [3u8; 32];
    let exporter = [5u8; 32];
    let signature = key.sign(&proof_message(&nonce, &exporter));
    c.bench_function("handshake/proof_verify", |b| {
        b.iter(|| {
            public
                .verify(&proof_message(black_box(&nonce), black_box(&exporter)), &signature)
                .expect("valid")
        })
    });
    c.bench_function("handshake/proof_sign", |b| {
        b.iter(|| key.sign(&proof_message(black_box(&nonce), black_box(&exporter))))
    });
    // The whole exchange through both state machines (no I/O).
    c.bench_function("handshake/full_exchange", |b| {
        b.iter(|| {
            let now = Instant::now();
            let (mut client, hello) = ClientHandshake::start(&key, 1, vec!["app.example.com".into()], vec![], exporter);
            let mut server = ServerHandshake::new(exporter, nonce, now);
            let ServerEvent::Send(challenge) = server.handle(hello, now).expect("hello") else {
                panic!("expected a challenge");
            };
            let ClientEvent::Send(proof) = client.handle(&key, challenge).expect("challenge") else {
                panic!("expected a proof");
            };
            black_box(server.handle(proof, now).expect("proof"))
        })
    });
}

criterion_group!(benches, frames, handshake);
criterion_main!(benches);
