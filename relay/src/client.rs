//! A client for the relay's admin API, used by the `routehub routes` CLI
//! and by tests: the relay's routes, history and status, typed, over
//! `ops::AdminClient`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, StatusCode};
use ops::{AdminToken, TokenLookup};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Change, HealthStatus, NewRoute, Route, RoutePatch};

/// Environment variable that may hold the relay's admin token itself.
pub const TOKEN_ENV: &str = "ROUTEHUB_ADMIN_TOKEN";

/// The relay's admin API, typed.
#[derive(Clone, Debug)]
pub struct AdminClient {
    api: ops::AdminClient,
}

/// Finds the relay's admin token: `--token-file`, else
/// `ROUTEHUB_ADMIN_TOKEN`, else the relay's data dir, else the demo's.
pub fn find_token(explicit: Option<&Path>, data_dir: Option<&Path>) -> Result<AdminToken> {
    let default_dirs: [PathBuf; 2] = [
        ops::fs::default_data_dir("relay"),
        ops::fs::default_data_dir("demo").join("relay"),
    ];
    let lookup = TokenLookup {
        role: "relay",
        env: TOKEN_ENV,
        default_dirs: &default_dirs,
    };
    Ok(ops::find_token(explicit, data_dir, &lookup)?)
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: &str, token: AdminToken) -> Self {
        AdminClient {
            api: ops::AdminClient::new(base, token),
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
        Ok(self.api.raw(method, path, body, auth).await?)
    }

    /// A call whose error statuses become the relay's own errors.
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T> {
        self.api.call(method, path, body).await.map_err(|e| match e {
            ops::Error::Api { status, message } => match status {
                StatusCode::NOT_FOUND => Error::NotFound(message),
                StatusCode::CONFLICT => Error::Conflict(message),
                StatusCode::UNAUTHORIZED => Error::Invalid(format!("the admin token was refused: {message}")),
                _ => Error::Invalid(format!("{status}: {message}")),
            },
            other => Error::Ops(other),
        })
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
