//! The load generator: HTTP/1.1 clients over plain TCP or TLS, closed-loop
//! and open-loop (coordinated-omission-aware) request loops, bulk download,
//! connect-to-first-byte and held streams. Every loop ends by itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest one request may take before the case counts it as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where requests go: an address, the Host header, and TLS (with SNI) or not.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The same TLS, offering only h2 (for [`Endpoint::connect_h2`]).
    tls_h2: Option<TlsConnector>,
}

pub type Sender = SendRequest<Empty<Bytes>>;

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            host: addr.to_string(),
            tls: None,
            tls_h2: None,
        }
    }

    /// HTTPS to `addr` as `host` (SNI and Host), trusting the CA in `ca_pem`.
    pub fn tls(addr: SocketAddr, host: &str, ca_pem: &Path) -> Result<Self> {
        let roots = tunnel_proto::tls::load_roots(Some(ca_pem))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(tunnel_proto::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut h2 = cfg.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_owned())?;
        Ok(Endpoint {
            addr,
            host: host.to_owned(),
            tls: Some((TlsConnector::from(Arc::new(cfg)), name)),
            tls_h2: Some(TlsConnector::from(Arc::new(h2))),
        })
    }

    /// The same endpoint under another name (SNI and Host).
    pub fn with_host(&self, host: &str) -> Result<Self> {
        let mut ep = self.clone();
        ep.host = host.to_owned();
        if let Some((_, name)) = ep.tls.as_mut() {
            *name = ServerName::try_from(host.to_owned())?;
        }
        Ok(ep)
    }

    /// A new HTTP/2 connection (TLS endpoints only).
    pub async fn connect_h2(&self) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
        let (Some(connector), Some((_, name))) = (&self.tls_h2, &self.tls) else {
            bail!("h2 needs a TLS endpoint");
        };
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector.connect(name.clone(), tcp).await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// A new HTTP/1.1 connection.
    pub async fn connect(&self) -> Result<Sender> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    pub fn get(&self, path: &str) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = path.parse().unwrap_or_default();
        if let Ok(v) = http::HeaderValue::from_str(&self.host) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        req
    }

    /// One GET on `send`, body read to the end; returns the status and body length.
    pub async fn fetch(&self, send: &mut Sender, path: &str) -> Result<(u16, u64)> {
        let fut = async {
            send.ready().await?;
            let resp = send.send_request(self.get(path)).await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    n += data.len() as u64;
                }
            }
            anyhow::Ok((status, n))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .context("request timed out")?
    }

    /// Waits until `GET /` answers 200, or fails after `within`.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.connect().await {
                Ok(mut s) => match self.fetch(&mut s, "/").await {
                    Ok((200, _)) => return Ok(()),
                    Ok((status, _)) => last = format!("status {status}"),
                    Err(e) => last = format!("{e:#}"),
                },
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} not ready within {within:?}: {last}", self.addr)
    }
}

/// Closed loop: `conns` connections, each sending back-to-back requests.
pub struct ClosedLoop {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// Runs `warmup` then measures for `duration`; `on_window(start)` is called
/// when the measured window opens and closes (for CPU snapshots).
pub async fn closed_loop(
    ep: &Endpoint,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    mut on_window: impl FnMut(bool),
) -> Result<ClosedLoop> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (ep, stop, count, errors) = (ep.clone(), stop.clone(), count.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = None;
            while !stop.load(Ordering::Relaxed) {
                if send.is_none() {
                    match ep.connect().await {
                        Ok(s) => send = Some(s),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = send.as_mut() else { continue };
                match ep.fetch(s, "/").await {
                    Ok((200, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        send = None;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let c0 = count.load(Ordering::Relaxed);
    let e0 = errors.load(Ordering::Relaxed);
    on_window(true);
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    let c1 = count.load(Ordering::Relaxed);
    let e1 = errors.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    on_window(false);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, t).await;
    }
    Ok(ClosedLoop {
        requests: c1 - c0,
        errors: e1 - e0,
        elapsed,
    })
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: usize,
}

pub fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: v[v.len() - 1] as f64,
        samples: v.len(),
    }
}

/// Open loop at `rate` req/s for `duration` over `conns` connections.
///
/// Request *i* is due at `start + i/rate`. A worker that is free before a
/// request is due sleeps until then and times it from when it actually
/// sends (so the timer's own slack is not charged to the tunnel); a request
/// that is already late because every connection was busy is timed from
/// when it was due (the coordinated-omission correction). The first
/// `warmup` is sent but not recorded.
pub async fn open_loop(
    ep: &Endpoint,
    rate: u64,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(Percentiles, u64)> {
    let total = rate * (warmup + duration).as_millis() as u64 / 1000;
    let skip = rate * warmup.as_millis() as u64 / 1000;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(ep.connect().await?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let interval_ns = 1_000_000_000 / rate;
    let mut tasks = Vec::new();
    for mut send in senders {
        let (ep, next, errors) = (ep.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos(i * interval_ns);
                let began = if tokio::time::Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    tokio::time::Instant::now()
                } else {
                    due
                };
                let ok = matches!(ep.fetch(&mut send, "/").await, Ok((200, _)));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    match ep.connect().await {
                        Ok(s) => send = s,
                        Err(_) => break,
                    }
                }
                if i >= skip {
                    lat.push(began.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    Ok((percentiles(all), errors.load(Ordering::Relaxed)))
}

/// Downloads `bytes` over one connection; returns Gbit/s.
pub async fn bulk(ep: &Endpoint, bytes: u64) -> Result<f64> {
    let mut send = ep.connect().await?;
    // Warm the path (windows, pools) with a small transfer first.
    ep.fetch(&mut send, &format!("/bulk?bytes={}", 8 << 20)).await?;
    let t0 = Instant::now();
    let (status, got) = ep.fetch(&mut send, &format!("/bulk?bytes={bytes}")).await?;
    let secs = t0.elapsed().as_secs_f64();
    if status != 200 || got != bytes {
        bail!("bulk download: status {status}, {got} of {bytes} bytes");
    }
    Ok(got as f64 * 8.0 / secs / 1e9)
}

/// New connection (TCP, TLS if any, HTTP/1.1) to first response byte, `n`
/// times in a row.
pub async fn connect_latency(ep: &Endpoint, n: usize) -> Result<(Percentiles, u64)> {
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let res = async {
            let mut send = ep.connect().await?;
            send.ready().await?;
            let resp = send.send_request(ep.get("/")).await?;
            let elapsed = t0.elapsed();
            let ok = resp.status() == http::StatusCode::OK;
            let _ = resp.into_body().collect().await;
            anyhow::Ok((ok, elapsed))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, res).await {
            Ok(Ok((true, elapsed))) => lat.push(elapsed.as_micros() as u64),
            _ => errors += 1,
        }
    }
    Ok((percentiles(lat), errors))
}

/// A request in flight: its connection and its response, body unread.
pub type HeldStream = (Sender, hyper::Response<hyper::body::Incoming>);

/// Opens `n` connections, each with a `/hold` request in flight (headers
/// received), and returns them; dropping them closes the streams.
pub async fn hold_streams(ep: &Endpoint, n: usize, hold: Duration) -> Result<Vec<HeldStream>> {
    let path = format!("/hold?ms={}", hold.as_millis());
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (ep, path, permits) = (ep.clone(), path.clone(), permits.clone());
        joins.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let fut = async {
                let mut send = ep.connect().await?;
                send.ready().await?;
                let resp = send.send_request(ep.get(&path)).await?;
                anyhow::Ok((send, resp))
            };
            tokio::time::timeout(REQUEST_TIMEOUT, fut)
                .await
                .context("opening a held stream")?
        });
    }
    let mut opened = Vec::with_capacity(n);
    while let Some(r) = joins.join_next().await {
        opened.push(r??);
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_rank() {
        let p = percentiles((1..=1000).collect());
        assert_eq!((p.p50_us, p.p99_us, p.p999_us, p.max_us), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(percentiles(Vec::new()).samples, 0);
    }
}
