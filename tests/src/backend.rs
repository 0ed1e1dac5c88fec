//! A small HTTP backend for tests and benchmarks. Paths:
//! `/echo` streams the request body back; `/bytes/N` streams N bytes;
//! `/slow/MS` answers after MS milliseconds; `/ws` is a WebSocket echo;
//! `/headers` returns the request head as text; anything else is a fixed
//! 612-byte page (nginx's default page size, as in the benchmarks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The body of the default page: 612 bytes.
pub const PAGE: &[u8; 612] = &{
    let mut page = [b'x'; 612];
    page[611] = b'\n';
    page
};

/// A running backend; stops when dropped.
pub struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    ids: Ids,
    task: tokio::task::JoinHandle<()>,
    /// Ends every open connection too, as a dying process would.
    stop: tokio_util::sync::CancellationToken,
}

/// How often each `x-test-id` was received, to catch duplicated requests.
type Ids = Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

impl Backend {
    pub async fn start() -> Backend {
        Self::start_on("127.0.0.1:0".parse().expect("literal")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        let ids = Ids::default();
        let (counter, seen) = (hits.clone(), ids.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let (counter, seen, stopped) = (counter.clone(), seen.clone(), stopped.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = req.headers().get("x-test-id").and_then(|v| v.to_str().ok()) {
                            *seen
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(id.to_owned())
                                .or_default() += 1;
                        }
                        handle(req)
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            hits,
            connections,
            ids,
            task,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// How many times the request with this `x-test-id` arrived.
    pub fn times_seen(&self, id: &str) -> u32 {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// `x-test-id`s that arrived more than once.
    pub fn duplicated_ids(&self) -> Vec<String> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.cancel();
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

/// Deterministic content for byte `i` of a generated body.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = if path == "/echo" {
        Response::new(req.into_body().boxed_unsync())
    } else if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<u64>().ok()) {
        let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
            if sent >= n {
                return None;
            }
            let len = (n - sent).min(64 * 1024);
            let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
            Some((Ok::<_, hyper::Error>(Frame::data(Bytes::from(chunk))), sent + len))
        });
        let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
        resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
        resp
    } else if let Some(ms) = path.strip_prefix("/slow/").and_then(|n| n.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        Response::new(full("slow done\n"))
    } else if path == "/ws" {
        websocket(req)
    } else if path == "/headers" {
        let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        Response::new(full(text))
    } else {
        Response::new(full(&PAGE[..]))
    };
    Ok(resp)
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        accept.parse().expect("base64 is a valid header"),
    );
    r
}
