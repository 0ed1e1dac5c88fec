//! A userspace fault-injecting proxy (the machines have no `tc netem`):
//! UDP and TCP on one port, forwarding to a target, with packet loss,
//! blackholes (both ways or one way), delay and "cut everything" on command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

/// Which way traffic crosses the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (a relay) toward the target (a gateway).
    ToTarget,
    /// From the target back to the client.
    ToClient,
}

/// Faults for one protocol. All settings apply at once to every flow.
#[derive(Debug, Default)]
pub struct Faults {
    /// Packets dropped, per mille (UDP only: TCP would retransmit anyway).
    drop_per_mille: AtomicU32,
    /// Nothing passes toward the target / toward the client (TCP flows
    /// stall, as on a dead path).
    blackhole_to_target: AtomicBool,
    blackhole_to_client: AtomicBool,
    /// Added to every packet or chunk, in microseconds.
    delay_us: AtomicU64,
    /// Packets (or TCP chunks) forwarded and dropped.
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    rng: AtomicU64,
}

impl Faults {
    pub fn set_loss_percent(&self, percent: u32) {
        self.drop_per_mille.store(percent.min(100) * 10, Ordering::Relaxed);
    }

    /// Nothing passes either way.
    pub fn set_blackhole(&self, on: bool) {
        self.set_blackhole_toward(Direction::ToTarget, on);
        self.set_blackhole_toward(Direction::ToClient, on);
    }

    /// Nothing passes one way: e.g. toward the target only, so requests
    /// still arrive but every answer is lost.
    pub fn set_blackhole_toward(&self, direction: Direction, on: bool) {
        self.blackhole_flag(direction).store(on, Ordering::Relaxed);
    }

    fn blackhole_flag(&self, direction: Direction) -> &AtomicBool {
        match direction {
            Direction::ToTarget => &self.blackhole_to_target,
            Direction::ToClient => &self.blackhole_to_client,
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn blackholed(&self, direction: Direction) -> bool {
        self.blackhole_flag(direction).load(Ordering::Relaxed)
    }

    /// Whether to drop this packet (blackhole or random loss).
    fn drop_packet(&self, direction: Direction) -> bool {
        let per_mille = self.drop_per_mille.load(Ordering::Relaxed);
        let drop = self.blackholed(direction) || (per_mille > 0 && self.next_random() % 1000 < u64::from(per_mille));
        if drop {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        drop
    }

    /// xorshift64*: reproducible enough, no dependency.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

type Mappings = Arc<Mutex<HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)>>>;

/// The proxy; stops (and drops every flow) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    pub udp: Arc<Faults>,
    pub tcp: Arc<Faults>,
    mappings: Mappings,
    tcp_flows: Arc<Mutex<JoinSet<()>>>,
    tasks: JoinSet<()>,
}

/// Binds TCP and UDP on one free loopback port.
async fn bind_pair() -> std::io::Result<(TcpListener, UdpSocket)> {
    let mut last = None;
    for _ in 0..32 {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        match UdpSocket::bind(tcp.local_addr()?).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

impl FaultProxy {
    /// Forwards UDP and TCP arriving on one port to `target` (same port
    /// number on both protocols, like a gateway).
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let (listener, udp) = bind_pair().await?;
        let addr = listener.local_addr()?;
        let (udp_faults, tcp_faults) = (Arc::new(Faults::default()), Arc::new(Faults::default()));
        let mappings: Mappings = Arc::default();
        let tcp_flows: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let mut tasks = JoinSet::new();
        tasks.spawn(udp_loop(Arc::new(udp), target, udp_faults.clone(), mappings.clone()));
        tasks.spawn(tcp_loop(listener, target, tcp_faults.clone(), tcp_flows.clone()));
        Ok(FaultProxy {
            addr,
            udp: udp_faults,
            tcp: tcp_faults,
            mappings,
            tcp_flows,
            tasks,
        })
    }

    /// Where clients connect (TCP and UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every TCP flow with a reset.
    pub fn cut_tcp(&self) {
        self.tcp_flows.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
    }

    /// Forgets every UDP flow: the next packet of a client leaves from a new
    /// port, as after a NAT rebinding or a network change.
    pub fn rebind_udp(&self) {
        for (_, (_, task)) in self.mappings.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.cut_tcp();
        self.rebind_udp();
    }
}

/// Sends `data` after the configured delay (on its own task if delayed).
async fn send_delayed(faults: &Faults, send: impl std::future::Future<Output = ()> + Send + 'static) {
    let delay = faults.delay();
    if delay.is_zero() {
        send.await;
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send.await;
        });
    }
}

async fn udp_loop(front: Arc<UdpSocket>, target: SocketAddr, faults: Arc<Faults>, mappings: Mappings) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        if faults.drop_packet(Direction::ToTarget) {
            continue;
        }
        let upstream = {
            let existing = mappings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&client)
                .map(|(s, _)| s.clone());
            match existing {
                Some(s) => s,
                None => match new_mapping(&front, client, target, &faults, &mappings).await {
                    Some(s) => s,
                    None => continue,
                },
            }
        };
        let data = buf[..n].to_vec();
        send_delayed(&faults, async move {
            let _ = upstream.send(&data).await;
        })
        .await;
    }
}

async fn new_mapping(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddr,
    faults: &Arc<Faults>,
    mappings: &Mappings,
) -> Option<Arc<UdpSocket>> {
    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.ok()?);
    upstream.connect(target).await.ok()?;
    let (up, front, faults) = (upstream.clone(), front.clone(), faults.clone());
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = up.recv(&mut buf).await {
            if faults.drop_packet(Direction::ToClient) {
                continue;
            }
            let (front, data) = (front.clone(), buf[..n].to_vec());
            send_delayed(&faults, async move {
                let _ = front.send_to(&data, client).await;
            })
            .await;
        }
    });
    mappings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(client, (upstream.clone(), task.abort_handle()));
    Some(upstream)
}

async fn tcp_loop(listener: TcpListener, target: SocketAddr, faults: Arc<Faults>, flows: Arc<Mutex<JoinSet<()>>>) {
    while let Ok((client, _)) = listener.accept().await {
        let faults = faults.clone();
        flows.lock().unwrap_or_else(|e| e.into_inner()).spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            for s in [&client, &server] {
                let _ = s.set_nodelay(true);
                // Dropped on cut: reset, not a polite FIN.
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(
                pipe(cr, sw, faults.clone(), Direction::ToTarget),
                pipe(sr, cw, faults, Direction::ToClient)
            );
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    direction: Direction,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A blackhole holds the bytes back, as a dead path does; TCP's own
        // timers then decide what happens.
        while faults.blackholed(direction) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = faults.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        faults.forwarded.fetch_add(1, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
