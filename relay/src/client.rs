//! A client for the relay's admin API, used by the `routehub routes` CLI
//! and by tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::admin::TOKEN_FILE;
use crate::error::{Error, Result};
use crate::model::{Change, HealthStatus, NewRoute, Route, RoutePatch};

/// Time for one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// An admin API error: the status and the API's message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// Finds the admin token: `--token-file`, else `ROUTEHUB_ADMIN_TOKEN`, else
/// the relay's data dir, else the demo's.
pub fn find_token(explicit: Option<&Path>, data_dir: Option<&Path>) -> Result<String> {
    if let Some(path) = explicit {
        return read_token(path);
    }
    if let Ok(t) = std::env::var("ROUTEHUB_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let candidates: Vec<PathBuf> = match data_dir {
        Some(d) => vec![d.join(TOKEN_FILE)],
        None => vec![
            certs::fs::default_data_dir("relay").join(TOKEN_FILE),
            certs::fs::default_data_dir("demo").join("relay").join(TOKEN_FILE),
        ],
    };
    for c in &candidates {
        if c.exists() {
            return read_token(c);
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(Error::Config {
        path: candidates.first().cloned().unwrap_or_default(),
        message: format!(
            "no admin token found (tried {}); is a relay running? use --token-file",
            tried.join(", ")
        ),
    })
}

fn read_token(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: &str, token: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Any call, returning status and JSON body (for tests of error cases).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: bool,
    ) -> Result<(StatusCode, Value)> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if auth {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let unreachable = |e: String| Error::GatewayAddr {
            addr: self.base.clone(),
            reason: e,
        };
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| unreachable("the admin API did not answer in time".into()))?
            .map_err(|e| {
                unreachable(format!(
                    "can't reach the relay's admin API ({e}); is the relay running?"
                ))
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, json) = self.raw(method, path, body, true).await?;
        if !status.is_success() {
            let message = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no details")
                .to_owned();
            return Err(match status {
                StatusCode::NOT_FOUND => Error::NotFound(message),
                StatusCode::CONFLICT => Error::Conflict(message),
                StatusCode::UNAUTHORIZED => Error::Invalid(format!("the admin token was refused: {message}")),
                _ => Error::Invalid(format!("{status}: {message}")),
            });
        }
        serde_json::from_value(json).map_err(|e| Error::Invalid(format!("unexpected answer: {e}")))
    }

    pub async fn routes(&self) -> Result<Vec<Route>> {
        self.call(Method::GET, "/api/routes", None).await
    }

    /// Creates a route; with `wait`, returns once gateways have it.
    pub async fn add(&self, route: &NewRoute, wait: bool) -> Result<Value> {
        let path = if wait { "/api/routes?wait=1" } else { "/api/routes" };
        self.call(
            Method::POST,
            path,
            Some(serde_json::to_value(route).unwrap_or_default()),
        )
        .await
    }

    pub async fn update(&self, id: u64, patch: &RoutePatch, wait: bool) -> Result<Value> {
        let path = format!("/api/routes/{id}{}", if wait { "?wait=1" } else { "" });
        self.call(
            Method::PATCH,
            &path,
            Some(serde_json::to_value(patch).unwrap_or_default()),
        )
        .await
    }

    pub async fn remove(&self, id: u64, wait: bool) -> Result<Value> {
        self.call(
            Method::DELETE,
            &format!("/api/routes/{id}{}", if wait { "?wait=1" } else { "" }),
            None,
        )
        .await
    }

    pub async fn history(&self, limit: usize) -> Result<Vec<Change>> {
        self.call(Method::GET, &format!("/api/history?limit={limit}"), None)
            .await
    }

    pub async fn rollback(&self, version: u64, wait: bool) -> Result<Value> {
        let path = if wait { "/api/rollback?wait=1" } else { "/api/rollback" };
        self.call(Method::POST, path, Some(serde_json::json!({ "version": version })))
            .await
    }

    pub async fn health(&self) -> Result<Vec<HealthStatus>> {
        self.call(Method::GET, "/api/health", None).await
    }

    pub async fn status(&self) -> Result<Value> {
        self.call(Method::GET, "/api/status", None).await
    }
}
