//! The plain-HTTP listener (port 80): answers ACME HTTP-01 challenges and
//! redirects everything else to https. It never proxies a request.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::State;
use crate::proxy::{Body, full};

/// Time for a client to send a request head on the HTTP listener.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once on the HTTP listener: it only redirects and
/// answers challenges, so it needs far fewer than the HTTPS listener.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The host of a `Host` header, without a port; `None` if unusable.
fn host_only(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        let end = rest.find(']')?;
        format!("[{}]", &rest[..end])
    } else {
        host.split(':').next()?.to_ascii_lowercase()
    };
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    ok.then_some(name)
}

/// The answer to one plain-HTTP request.
pub(crate) fn respond(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(certs::challenge::HTTP01_PREFIX) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        let answer = state.certs.challenges().and_then(|c| c.http01(token));
        return match answer {
            Some(key_authorization) => {
                tracing::debug!(%token, "answered an HTTP-01 challenge");
                let mut resp = Response::new(full(key_authorization));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
                resp
            }
            None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(host_only);
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "a Host header is needed\n");
    };
    let port = match state.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = format!("https://{host}{port}{pq}");
    let mut resp = text(StatusCode::PERMANENT_REDIRECT, "use https\n");
    match header::HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "bad request target\n"),
    }
}

/// Serves plain HTTP until shutdown.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    while let Some((tcp, peer, permit)) =
        crate::listener::next_connection(&listener, &permits, &state.shutdown, "HTTP").await
    {
        let state = state.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let service = service_fn(|req| {
                    let resp = respond(&state, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP_HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(tcp), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            }
            .instrument(tracing::debug_span!("http", %peer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_junk_is_refused() {
        assert_eq!(host_only("App.Test:8080").as_deref(), Some("app.test"));
        assert_eq!(host_only("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_only("a.test/evil"), None);
        assert_eq!(host_only(""), None);
    }
}
