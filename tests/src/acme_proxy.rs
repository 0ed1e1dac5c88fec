//! A fault-injecting HTTPS proxy in front of Pebble: it forwards every
//! request (keeping `Host`, so Pebble writes the proxy's address into the
//! URLs it hands out), logs what passed, answers chosen requests with an
//! error such as `429` + `Retry-After`, and can add ACME Renewal
//! Information, which Pebble 2.4 lacks. It can also hide challenge types
//! from authorizations (a CA that offers fewer), hold requests until
//! released (an order left pending), and reports the challenge tokens it
//! saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// One request that reached the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub at: Instant,
    /// Answered by the proxy itself (a fault or ARI), not by Pebble.
    pub injected: bool,
}

/// Answers the next `times` requests matching `method` and `path_prefix`
/// with `status` and a problem document, without forwarding them.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Method,
    pub path_prefix: String,
    pub times: u32,
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub problem_type: String,
}

impl Fault {
    /// `429 rateLimited` with `Retry-After: secs` for the next `times`
    /// new-order requests.
    pub fn rate_limit_new_order(times: u32, retry_after: Duration) -> Self {
        Fault {
            method: Method::POST,
            path_prefix: crate::pebble::NEW_ORDER_PATH.into(),
            times,
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(retry_after),
            problem_type: "urn:ietf:params:acme:error:rateLimited".into(),
        }
    }
}

/// A renewal window the proxy hands out for every certificate.
#[derive(Debug, Clone, Copy)]
pub struct AriWindow {
    pub start: SystemTime,
    pub end: SystemTime,
    pub retry_after: Duration,
}

pub const RENEWAL_INFO_PATH: &str = "/renewal-info";
/// Pebble's new-account endpoint.
pub const NEW_ACCOUNT_PATH: &str = "/sign-me-up";
/// Prefix of Pebble's authorization URLs.
pub const AUTHZ_PATH: &str = "/authZ/";
/// Prefix of Pebble's challenge URLs (a POST there starts validation).
pub const CHALLENGE_PATH: &str = "/chalZ/";

#[derive(Default)]
struct Plan {
    faults: Vec<Fault>,
    /// Served in turn; the last one repeats.
    ari: Vec<AriWindow>,
    /// Challenge types (`tls-alpn-01`...) removed from authorizations.
    hidden: Vec<String>,
    /// Requests held until [`AcmeProxy::release`].
    hold: Option<(Method, String)>,
    /// Tokens of the challenges in authorizations seen.
    tokens: Vec<String>,
}

struct Shared {
    upstream: watch::Sender<Option<SocketAddr>>,
    client_tls: Arc<rustls::ClientConfig>,
    seen: Mutex<Vec<Seen>>,
    plan: Mutex<Plan>,
    /// Requests waiting at the hold.
    held: watch::Sender<usize>,
    released: watch::Sender<bool>,
}

pub struct AcmeProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a request waits for Pebble to be up.
const UPSTREAM_WAIT: Duration = Duration::from_secs(30);

impl AcmeProxy {
    /// Listens on `127.0.0.1:0` with `server_tls`; forwards to the
    /// upstream set later with [`AcmeProxy::set_upstream`], trusting it
    /// with `client_tls`.
    pub async fn start(server_tls: rustls::ServerConfig, client_tls: rustls::ClientConfig) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: watch::channel(None).0,
            client_tls: Arc::new(client_tls),
            seen: Mutex::new(Vec::new()),
            plan: Mutex::new(Plan::default()),
            held: watch::channel(0).0,
            released: watch::channel(false).0,
        });
        let acceptor = TlsAcceptor::from(Arc::new(server_tls));
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        Ok(AcmeProxy { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_upstream(&self, addr: SocketAddr) {
        self.shared.upstream.send_replace(Some(addr));
    }

    pub fn add_fault(&self, fault: Fault) {
        self.shared.plan.lock().unwrap().faults.push(fault);
    }

    /// Offers ARI: the directory gains `renewalInfo`, and every renewal
    /// information request gets the next of `windows` (the last repeats).
    pub fn serve_ari(&self, windows: Vec<AriWindow>) {
        self.shared.plan.lock().unwrap().ari = windows;
    }

    /// Removes challenges of `kind` (e.g. `tls-alpn-01`) from every
    /// authorization: a CA that does not offer it.
    pub fn hide_challenge(&self, kind: &str) {
        self.shared.plan.lock().unwrap().hidden.push(kind.to_owned());
    }

    /// Holds requests matching `method` and `path_prefix` until
    /// [`AcmeProxy::release`]; [`AcmeProxy::wait_held`] sees them arrive.
    pub fn hold(&self, method: Method, path_prefix: &str) {
        self.shared.released.send_replace(false);
        self.shared.plan.lock().unwrap().hold = Some((method, path_prefix.to_owned()));
    }

    /// Lets held requests (and later ones) through.
    pub fn release(&self) {
        self.shared.plan.lock().unwrap().hold = None;
        self.shared.released.send_replace(true);
    }

    /// Waits until at least one request is held, up to `within`.
    pub async fn wait_held(&self, within: Duration) -> bool {
        let mut rx = self.shared.held.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n > 0)).await.is_ok()
    }

    /// Challenge tokens of the authorizations seen so far.
    pub fn challenge_tokens(&self) -> Vec<String> {
        self.shared.plan.lock().unwrap().tokens.clone()
    }

    /// New-account requests Pebble accepted (201 created, 200 existing).
    /// Pebble rejects some nonces on purpose (`badNonce`, 400) and the
    /// client retries, so counting every request would count one account
    /// twice now and then.
    pub fn accounts_accepted(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == Method::POST && s.path == NEW_ACCOUNT_PATH && matches!(s.status, 200 | 201))
            .count()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// New orders Pebble accepted (201), not counting retries after a bad
    /// nonce or injected faults.
    pub fn orders_created(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == Method::POST && s.path == crate::pebble::NEW_ORDER_PATH && s.status == 201)
            .count()
    }
}

impl Drop for AcmeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(b: impl Into<Bytes>) -> http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error> {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let (resp, injected) = match answer(shared, req).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(full(format!("proxy error: {e:#}\n")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            (r, true)
        }
    };
    shared.seen.lock().unwrap().push(Seen {
        method,
        path,
        status: resp.status().as_u16(),
        at: Instant::now(),
        injected,
    });
    resp
}

fn injected_fault(shared: &Shared, method: &Method, path: &str) -> Option<Fault> {
    let mut plan = shared.plan.lock().unwrap();
    let fault = plan
        .faults
        .iter_mut()
        .find(|f| f.times > 0 && f.method == *method && path.starts_with(&f.path_prefix))?;
    fault.times -= 1;
    Some(fault.clone())
}

fn next_ari(shared: &Shared) -> Option<AriWindow> {
    let mut plan = shared.plan.lock().unwrap();
    match plan.ari.len() {
        0 => None,
        1 => plan.ari.first().copied(),
        _ => Some(plan.ari.remove(0)),
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Result<(Response<ProxyBody>, bool)> {
    let path = req.uri().path().to_owned();
    if let Some(f) = injected_fault(shared, req.method(), &path) {
        let body = format!(
            r#"{{"type":"{}","detail":"injected by the test proxy","status":{}}}"#,
            f.problem_type,
            f.status.as_u16()
        );
        let mut r = Response::new(full(body));
        *r.status_mut() = f.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = f.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, after.as_secs().into());
        }
        return Ok((r, true));
    }
    if path.starts_with(RENEWAL_INFO_PATH)
        && let Some(w) = next_ari(shared)
    {
        let body = format!(
            r#"{{"suggestedWindow":{{"start":"{}","end":"{}"}}}}"#,
            rfc3339(w.start),
            rfc3339(w.end)
        );
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, w.retry_after.as_secs().into());
        return Ok((r, true));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let held = shared
        .plan
        .lock()
        .unwrap()
        .hold
        .as_ref()
        .is_some_and(|(m, prefix)| m == req.method() && path.starts_with(prefix.as_str()));
    if held {
        shared.held.send_modify(|n| *n += 1);
        let mut released = shared.released.subscribe();
        released.wait_for(|r| *r).await?;
    }
    let resp = forward(shared, req).await?;
    if path.starts_with(AUTHZ_PATH) && resp.status().is_success() {
        let (mut parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let mut authz: serde_json::Value = serde_json::from_slice(&bytes)?;
        let mut plan = shared.plan.lock().unwrap();
        if let Some(list) = authz["challenges"].as_array_mut() {
            list.retain(|c| !plan.hidden.iter().any(|h| c["type"] == h.as_str()));
            for c in list.iter() {
                if let Some(t) = c["token"].as_str()
                    && !plan.tokens.iter().any(|k| k == t)
                {
                    plan.tokens.push(t.to_owned());
                }
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok((Response::from_parts(parts, full(serde_json::to_vec(&authz)?)), false));
    }
    let offer_ari = path == "/dir" && !shared.plan.lock().unwrap().ari.is_empty();
    if offer_ari {
        let (mut parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let mut dir: serde_json::Value = serde_json::from_slice(&bytes)?;
        dir["renewalInfo"] = format!("https://{host}{RENEWAL_INFO_PATH}").into();
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok((Response::from_parts(parts, full(serde_json::to_vec(&dir)?)), false));
    }
    Ok((resp.map(|b| b.boxed_unsync()), false))
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Result<Response<Incoming>> {
    let mut rx = shared.upstream.subscribe();
    let upstream = tokio::time::timeout(UPSTREAM_WAIT, rx.wait_for(Option::is_some))
        .await
        .context("Pebble never came up")??
        .ok_or_else(|| anyhow!("no upstream"))?;
    let tcp = TcpStream::connect(upstream).await?;
    let name = ServerName::IpAddress(upstream.ip().into());
    let tls = TlsConnector::from(shared.client_tls.clone()).connect(name, tcp).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let out = Request::from_parts(parts, Full::new(body));
    Ok(send.send_request(out).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }
}
