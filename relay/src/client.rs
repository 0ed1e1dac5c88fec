//! A client for the relay's admin API, used by the `routehub routes` CLI
//! and by tests: the relay's routes, history and status, typed, over
//! `ops::AdminClient`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, StatusCode};
use ops::{AdminToken, TokenLookup};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::deployer::Apply;
use crate::error::{Error, Result};
use crate::model::{Change, HealthStatus, NewRoute, Route, RoutePatch};
use crate::records::{ComposeVersion, Deployment};

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

    /// Starts a deployment of `apply`; returns its record (deploying).
    pub async fn apply(&self, apply: &Apply) -> Result<Deployment> {
        let body = serde_json::json!({
            "name": apply.name, "yaml": apply.yaml, "description": apply.description,
            "secrets": apply.secrets, "auto_rollback": apply.auto_rollback,
            "ready_timeout_secs": apply.ready_timeout_secs,
        });
        self.call(Method::POST, "/api/composes", Some(body)).await
    }

    /// Starts a rollback of `name` (to `version`, or the one before).
    pub async fn rollback_compose(&self, name: &str, version: Option<u64>) -> Result<Deployment> {
        let body = serde_json::json!({ "version": version });
        self.call(Method::POST, &format!("/api/composes/{name}/rollback"), Some(body))
            .await
    }

    pub async fn deployment(&self, id: u64) -> Result<Deployment> {
        self.call(Method::GET, &format!("/api/deployments/{id}"), None).await
    }

    /// Polls deployment `id` until it is over, at most `within`; the last
    /// record either way (`Err` only when the API can't be read).
    pub async fn wait_deployment(&self, id: u64, within: std::time::Duration) -> Result<Deployment> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let d = self.deployment(id).await?;
            if d.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(d);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    pub async fn composes(&self) -> Result<Vec<Value>> {
        self.call(Method::GET, "/api/composes", None).await
    }

    /// One compose: its record, what serves, its services now.
    pub async fn compose_status(&self, name: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/api/composes/{name}"), None).await
    }

    /// Deployments of `name`, newest first (without output and health).
    pub async fn deployments(&self, name: &str, limit: usize) -> Result<Vec<Value>> {
        self.call(
            Method::GET,
            &format!("/api/composes/{name}/deployments?limit={limit}"),
            None,
        )
        .await
    }

    pub async fn compose_version(&self, name: &str, version: u64) -> Result<ComposeVersion> {
        self.call(Method::GET, &format!("/api/composes/{name}/versions/{version}"), None)
            .await
    }

    /// Unified diff of two versions of `name`.
    pub async fn diff(&self, name: &str, from: u64, to: u64) -> Result<String> {
        let v: Value = self
            .call(
                Method::GET,
                &format!("/api/composes/{name}/diff?from={from}&to={to}"),
                None,
            )
            .await?;
        Ok(v["diff"].as_str().unwrap_or_default().to_owned())
    }

    /// The last `tail` log lines of each container of `name` (of `service`).
    pub async fn logs(&self, name: &str, service: Option<&str>, tail: usize) -> Result<Vec<String>> {
        let service = service.map(|s| format!("&service={s}")).unwrap_or_default();
        let v: Value = self
            .call(
                Method::GET,
                &format!("/api/composes/{name}/logs?tail={tail}{service}"),
                None,
            )
            .await?;
        Ok(serde_json::from_value(v["lines"].clone()).unwrap_or_default())
    }

    /// The logs of `name` (of `service`) as they come: the body of a
    /// `text/event-stream`, `data:` lines.
    pub async fn follow_logs(&self, name: &str, service: Option<&str>, tail: usize) -> Result<hyper::body::Incoming> {
        let service = service.map(|s| format!("&service={s}")).unwrap_or_default();
        self.api
            .stream(&format!("/api/composes/{name}/logs?follow=1&tail={tail}{service}"))
            .await
            .map_err(|e| match e {
                ops::Error::Api { status, message } if status == StatusCode::NOT_FOUND => Error::NotFound(message),
                other => Error::Ops(other),
            })
    }

    /// Takes compose `name` down and forgets it.
    pub async fn remove_compose(&self, name: &str) -> Result<Value> {
        self.call(Method::DELETE, &format!("/api/composes/{name}"), None).await
    }
}
