//! The HTTP client the ACME protocol runs over: rustls with the ring
//! provider, the public roots plus an optional extra root (a private CA,
//! Pebble), a deadline per request, and `Retry-After` obeyed for every
//! request to the server, not only the one that was told.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Longest wait for one ACME request (connect, send, response head).
pub const ACME_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A `Retry-After` up to this long is waited out before the next request;
/// longer ones fail requests at once until they pass (the scheduler comes
/// back then).
pub const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A 429/503 without `Retry-After` pauses requests this long.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(30);
/// Longest pause a server can impose.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

/// The server's most recent request to wait, shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct ServerPause {
    until: Mutex<Option<(Instant, String)>>,
}

impl ServerPause {
    /// Time left of the pause, and why, if one is in force.
    pub(crate) fn remaining(&self) -> Option<(Duration, String)> {
        let guard = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let (until, why) = guard.as_ref()?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| (left, why.clone()))
    }

    fn set(&self, wait: Duration, why: String) {
        let until = Instant::now() + wait.min(MAX_PAUSE);
        let mut guard = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|(u, _)| *u < until) {
            *guard = Some((until, why));
        }
    }
}

/// Returned (boxed in `instant_acme::Error::Other`) instead of sending a
/// request during a pause longer than [`MAX_INLINE_RETRY_AFTER`].
#[derive(Debug, thiserror::Error)]
#[error("paused by the ACME server for {wait:?} more: {why}")]
pub(crate) struct Paused {
    pub(crate) wait: Duration,
    pub(crate) why: String,
}

/// Parses `Retry-After` (seconds or an HTTP date) relative to now.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at: SystemTime = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

pub(crate) struct AcmeHttp {
    client: Client<Https, BodyWrapper<Bytes>>,
    pause: Arc<ServerPause>,
}

/// TLS roots for the ACME server: the public web roots, plus every
/// certificate in `extra_root` (PEM) if given.
pub(crate) fn roots(extra_root: Option<&Path>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_root {
        let bad = |reason: String| Error::BadFile {
            path: path.to_owned(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(roots)
}

impl AcmeHttp {
    pub(crate) fn new(roots: rustls::RootCertStore, pause: Arc<ServerPause>) -> Result<Self> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            pause,
        })
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        let pause = self.pause.clone();
        Box::pin(async move {
            if let Some((wait, why)) = pause.remaining() {
                if wait > MAX_INLINE_RETRY_AFTER {
                    return Err(other(Paused { wait, why }));
                }
                tracing::info!(?wait, %why, "waiting as the ACME server asked");
                tokio::time::sleep(wait).await;
            }
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let rsp = tokio::time::timeout(ACME_REQUEST_TIMEOUT, client.request(req))
                .await
                .map_err(|_| {
                    other(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{method} {uri}: no response within {ACME_REQUEST_TIMEOUT:?}"),
                    ))
                })?
                .map_err(other)?;
            let status = rsp.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                let wait = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                    .unwrap_or(DEFAULT_PAUSE);
                tracing::warn!(%status, ?wait, %uri, "the ACME server asks to retry later");
                pause.set(wait, format!("{status} from {method} {}", uri.path()));
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_pause_only_grows_and_expires() {
        let p = ServerPause::default();
        assert!(p.remaining().is_none());
        p.set(Duration::from_secs(60), "a".into());
        p.set(Duration::from_secs(1), "b".into());
        let (left, why) = p.remaining().unwrap();
        assert!(left > Duration::from_secs(50));
        assert_eq!(why, "a");
        let p = ServerPause::default();
        p.set(Duration::ZERO, "now".into());
        assert!(p.remaining().is_none());
    }
}
