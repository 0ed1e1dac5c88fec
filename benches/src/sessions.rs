//! (g) Many idle relay sessions on one gateway: memory per session.
//!
//! One gateway process (pinned like the other tunnels) with an authorized
//! keys file of `n` generated keys, each for its own hostname. This process
//! opens `n` QUIC sessions with tunnel-proto's client handshake, announces
//! one route per session and heartbeats like a relay, so the gateway holds
//! what it would for `n` real relays. The figure is the gateway's RSS growth
//! divided by the sessions that stayed up.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tunnel_proto::handshake::{ClientEvent, ClientHandshake};
use tunnel_proto::io::{expect_frame, spawn_frame_reader, write_frame};
use tunnel_proto::{Frame, RelayKey, RouteSpec, RoutesUpdate, UpdateKind};

use crate::procs::{Proc, free_port, rss};

/// Handshakes in flight at once.
const PARALLEL: usize = 64;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sessions {
    pub requested: usize,
    pub established: usize,
    pub alive_after_hold: usize,
    pub gateway_rss_before: u64,
    pub gateway_rss_with: u64,
    pub bytes_per_session: f64,
    pub setup_secs: f64,
}

fn host(i: usize) -> String {
    format!("r{i}.sessions.test")
}

pub async fn run(routehub: &Path, dir: &Path, cpus: &str, n: usize) -> Result<Sessions> {
    std::fs::create_dir_all(dir)?;
    // Keys are generated here; the gateway only needs the public halves.
    let keys: Vec<RelayKey> = (0..n).map(|_| RelayKey::generate()).collect::<Result<_, _>>()?;
    let mut file = String::with_capacity(n * 80);
    for (i, k) in keys.iter().enumerate() {
        file.push_str(&format!("{} {}\n", k.public_key(), host(i)));
    }
    let keys_path = dir.join("authorized_keys");
    std::fs::write(&keys_path, file)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let args: Vec<String> = [
        "gateway",
        "--data-dir",
        &dir.join("gateway").display().to_string(),
        "--listen",
        &addr.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--http-listen",
        "off",
        "--authorized-keys",
        &keys_path.display().to_string(),
        "--name",
        "localhost",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gateway = Proc::spawn("sessions gateway", Some(cpus), routehub, &args, dir.join("gateway.log"))?;
    let ca = gateway.wait_log("dev CA root:", Duration::from_secs(30))?;
    let roots = tunnel_proto::tls::load_roots(Some(Path::new(&ca)))?;
    let quic = tunnel_proto::quic::client_config(tunnel_proto::tls::client_config(roots)?)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gateway.pid();
    let before = rss(pid)?;

    let alive = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let t0 = Instant::now();
    let mut joins = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let (quic, alive, stop, permits) = (quic.clone(), alive.clone(), stop.clone(), permits.clone());
        joins.spawn(async move {
            let permit = permits.acquire_owned().await?;
            let tunnel = tunnel_proto::quic::connect(addr, "localhost", quic).await?;
            let mut ctrl = tunnel.open_stream().await?;
            let (mut hs, hello) = ClientHandshake::start(&key, i as u64, vec![host(i)], Vec::new(), tunnel.exporter()?);
            write_frame(&mut ctrl, &hello).await?;
            let welcome = loop {
                match hs.handle(&key, expect_frame(&mut ctrl).await?)? {
                    ClientEvent::Send(f) => write_frame(&mut ctrl, &f).await?,
                    ClientEvent::Established(w) => break w,
                }
            };
            let route = RouteSpec {
                id: 1,
                host: host(i),
                path_prefix: "/".into(),
                priority: 0,
                policy: None,
            };
            let checksum = tunnel_proto::routes::checksum([&route]);
            let update = Frame::Routes(RoutesUpdate {
                version: 1,
                base_version: 0,
                checksum,
                kind: UpdateKind::Full {
                    first: true,
                    last: true,
                },
                upserts: vec![route],
                removes: vec![],
            });
            write_frame(&mut ctrl, &update).await?;
            drop(permit);
            alive.fetch_add(1, Ordering::Relaxed);
            let (rd, mut wr) = tokio::io::split(ctrl);
            // Drain acks and pongs so the control stream never backs up.
            let mut frames = spawn_frame_reader(rd);
            let beat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(100)));
            let mut seq = 0;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(beat) => {
                        seq += 1;
                        let ping = Frame::Ping { seq, rtt_micros: 0, routes_version: 1, routes_checksum: checksum };
                        if write_frame(&mut wr, &ping).await.is_err() {
                            break;
                        }
                    }
                    f = frames.recv() => if !matches!(f, Some(Ok(_))) { break },
                }
            }
            alive.fetch_sub(1, Ordering::Relaxed);
            tunnel.close("benchmark done");
            anyhow::Ok(())
        });
    }
    // Wait until every session is up (or failed), bounded.
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 50);
    let mut failed = 0;
    let mut last_error = None;
    while alive.load(Ordering::Relaxed) + failed < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), joins.join_next()).await {
            Ok(Some(Ok(Err(e)))) => {
                failed += 1;
                last_error = Some(format!("{e:#}"));
            }
            Ok(Some(_)) => failed += 1,
            _ => {}
        }
    }
    let established = alive.load(Ordering::Relaxed);
    let setup_secs = t0.elapsed().as_secs_f64();
    if let Some(e) = &last_error {
        eprintln!("[sessions] {failed} sessions failed, last: {e}");
    }
    // Several heartbeats: sessions are idle but alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    gateway.check_alive().context("the gateway died holding the sessions")?;
    let with = rss(pid)?;
    let alive_after_hold = alive.load(Ordering::Relaxed);
    stop.notify_waiters();
    joins.abort_all();
    let sessions = Sessions {
        requested: n,
        established,
        alive_after_hold,
        gateway_rss_before: before,
        gateway_rss_with: with,
        bytes_per_session: with.saturating_sub(before) as f64 / alive_after_hold.max(1) as f64,
        setup_secs,
    };
    drop(gateway);
    Ok(sessions)
}
