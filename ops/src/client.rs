//! The CLI side of an admin API: where to find the token, and a small JSON
//! client with a deadline on every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::token::{AdminToken, TOKEN_FILE};

/// Time for one admin call, answer included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Time to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a route list of the largest store fits).
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Where one role's admin token is looked for.
#[derive(Debug, Clone)]
pub struct TokenLookup<'a> {
    /// `gateway` or `relay`, for the error message.
    pub role: &'a str,
    /// Environment variable that may hold the token itself.
    pub env: &'a str,
    /// Data dirs tried in order when no `--data-dir` is given.
    pub default_dirs: &'a [PathBuf],
}

/// Finds the admin token: the `explicit` file (`--token-file`), else the
/// environment variable `lookup.env`, else `admin.token` in `data_dir`, else
/// in the first of `lookup.default_dirs` that has one.
pub fn find_token(explicit: Option<&Path>, data_dir: Option<&Path>, lookup: &TokenLookup<'_>) -> Result<AdminToken> {
    if let Some(path) = explicit {
        return AdminToken::read(path);
    }
    if let Some(token) = std::env::var(lookup.env).ok().and_then(|t| AdminToken::from_text(&t)) {
        return Ok(token);
    }
    let candidates: Vec<PathBuf> = match data_dir {
        Some(d) => vec![d.join(TOKEN_FILE)],
        None => lookup.default_dirs.iter().map(|d| d.join(TOKEN_FILE)).collect(),
    };
    if let Some(found) = candidates.iter().find(|c| c.exists()) {
        return AdminToken::read(found);
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(Error::NoToken {
        role: lookup.role.to_owned(),
        tried: tried.join(", "),
    })
}

/// A client for a Routehub admin API (gateway or relay): JSON in and out,
/// the bearer token on every call that asks for it, [`CALL_TIMEOUT`] per
/// call. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: AdminToken,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: &str, token: AdminToken) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any call, returning the status and the JSON body (`null` if the body
    /// is not JSON); `auth: false` leaves the token out (tests of refusals).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: bool,
    ) -> Result<(StatusCode, Value)> {
        let bad = |reason: String| Error::BadExchange {
            base: self.base.clone(),
            reason,
        };
        let unreachable = |reason: String| Error::Unreachable {
            base: self.base.clone(),
            reason,
        };
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.token.secret()));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| bad(format!("bad request: {e}")))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(format!("{e}; is it running?")))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| bad(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
    }

    /// A GET whose answer goes on (an event stream): the status within
    /// [`CALL_TIMEOUT`], then the body as it comes, for as long as the
    /// server sends it. A non-2xx answer is [`Error::Api`].
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let req = Request::get(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.secret()))
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::BadExchange {
                base: self.base.clone(),
                reason: format!("bad request: {e}"),
            })?;
        let unreachable = |reason: String| Error::Unreachable {
            base: self.base.clone(),
            reason,
        };
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
            .map_err(|e| unreachable(format!("{e}; is it running?")))?;
        let status = resp.status();
        if !status.is_success() {
            let body = tokio::time::timeout(CALL_TIMEOUT, Limited::new(resp.into_body(), 64 * 1024).collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = json["error"].as_str().unwrap_or("no details").to_owned();
            return Err(Error::Api { status, message });
        }
        Ok(resp.into_body())
    }

    /// A call with the token whose 2xx answer is a `T`; any other status is
    /// [`Error::Api`] with the API's `error` message.
    pub async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, json) = self.raw(method, path, body, true).await?;
        if !status.is_success() {
            let message = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no details")
                .to_owned();
            return Err(Error::Api { status, message });
        }
        serde_json::from_value(json).map_err(|e| Error::BadExchange {
            base: self.base.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable no test environment sets.
    const UNSET: &str = "ROUTEHUB_OPS_TEST_TOKEN_NEVER_SET";

    #[test]
    fn the_token_is_found_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, explicit) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("t"));
        let defaults = [a.clone(), b.clone()];
        let lookup = TokenLookup {
            role: "relay",
            env: UNSET,
            default_dirs: &defaults,
        };
        let err = find_token(None, None, &lookup).unwrap_err().to_string();
        assert!(
            err.contains(&a.join(TOKEN_FILE).display().to_string())
                && err.contains(&b.join(TOKEN_FILE).display().to_string())
                && err.contains("is the relay running?"),
            "{err}"
        );
        let tb = AdminToken::load_or_create(&b).unwrap();
        assert_eq!(find_token(None, None, &lookup).unwrap().secret(), tb.secret());
        let ta = AdminToken::load_or_create(&a).unwrap();
        assert_eq!(
            find_token(None, None, &lookup).unwrap().secret(),
            ta.secret(),
            "first default wins"
        );
        assert_eq!(find_token(None, Some(&b), &lookup).unwrap().secret(), tb.secret());
        std::fs::write(&explicit, "given\n").unwrap();
        assert_eq!(
            find_token(Some(&explicit), Some(&b), &lookup).unwrap().secret(),
            "given"
        );
        assert!(find_token(Some(&dir.path().join("nope")), None, &lookup).is_err());
        let err = find_token(None, Some(dir.path()), &lookup).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join(TOKEN_FILE).display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn calls_carry_the_token_and_errors_carry_the_message() {
        use crate::listener::AdminListener;
        let token = AdminToken::from_text("s3cret").unwrap();
        let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), false, "test")
            .await
            .unwrap();
        let addr = listener.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let server_token = token.clone();
        tokio::spawn(listener.serve(stop, move |req: Request<hyper::body::Incoming>| {
            let admitted = server_token.admits(&req);
            async move {
                let (status, body) = match (admitted, req.uri().path()) {
                    (false, _) => (StatusCode::UNAUTHORIZED, r#"{"error":"token"}"#),
                    (true, "/ok") => (StatusCode::OK, r#"{"n":1}"#),
                    (true, _) => (StatusCode::CONFLICT, r#"{"error":"taken"}"#),
                };
                let mut resp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *resp.status_mut() = status;
                resp
            }
        }));
        let api = AdminClient::new(&format!("http://{addr}/"), token);
        let v: Value = api.call(Method::GET, "/ok", None).await.unwrap();
        assert_eq!(v["n"], 1);
        let err = api
            .call::<Value>(Method::POST, "/x", Some(serde_json::json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Api { status: StatusCode::CONFLICT, message } if message == "taken"),
            "{err}"
        );
        assert_eq!(err.to_string(), "409 Conflict: taken");
        let (status, _) = api.raw(Method::GET, "/ok", None, false).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!format!("{api:?}").contains("s3cret"));

        drop(guard);
        let gone = AdminClient::new("http://127.0.0.1:1", AdminToken::from_text("t").unwrap());
        let err = gone.call::<Value>(Method::GET, "/", None).await.unwrap_err();
        assert!(err.is_retryable() && err.to_string().contains("can't reach"), "{err}");
    }
}
