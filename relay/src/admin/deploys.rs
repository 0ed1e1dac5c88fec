//! `/api/composes/*` and `/api/deployments/*`: compose apps, their
//! versions, deployments, rollbacks and live logs.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::{event_stream, ok_json, query, read_json};
use super::{Admin, Body, Endpoint, error_response, store_error};
use crate::deployer::{Apply, Deployer};
use crate::records::{DeployStatus, Deployment};

/// Largest apply body: the largest compose file, and room for the rest.
pub const MAX_APPLY_BODY: usize = deploy::compose::MAX_COMPOSE_FILE + 128 * 1024;
/// Log lines per container without `?tail=`.
const DEFAULT_TAIL: usize = 200;
/// Deployments a list returns without `?limit=`.
const DEFAULT_DEPLOYMENTS: usize = 50;

/// A deployment without its output and health history: what lists show.
fn summary(d: &Deployment) -> Value {
    json!({
        "id": d.id, "compose": d.compose, "version": d.version, "generation": d.generation,
        "status": d.status, "reason": d.reason, "detail": d.detail, "images": d.images,
        "actor": d.actor, "created_at": d.created_at, "updated_at": d.updated_at,
    })
}

/// `?key=` as a number; the error says which is not one.
fn number(req: &Request<Incoming>, key: &str) -> Result<Option<u64>, String> {
    match query(req, key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("{key}={v:?} is not a number")),
    }
}

pub(super) async fn handle(admin: Arc<Admin>, endpoint: Endpoint, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let Some(deployer) = admin.deployer.clone() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "deployments are off in this relay's config (deployments = false)",
        );
    };
    let name = segments.get(1).copied().unwrap_or_default().to_owned();
    let method = req.method().clone();
    match (endpoint, method) {
        (Endpoint::Composes, Method::GET) => list(&deployer, &admin).await,
        (Endpoint::Composes, Method::POST) => {
            let apply: Apply = match read_json(req, MAX_APPLY_BODY).await {
                Ok(a) => a,
                Err(resp) => return resp,
            };
            match deployer.apply(apply, "api").await {
                Ok(d) => ok_json(StatusCode::ACCEPTED, json!(d)),
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::Compose, Method::GET) => status(&deployer, &admin, &name).await,
        (Endpoint::Compose, Method::DELETE) => match deployer.remove(&name).await {
            Ok(()) => ok_json(StatusCode::OK, json!({ "removed": name })),
            Err(e) => store_error(&e),
        },
        (Endpoint::ComposeVersions, _) => match admin.store.compose_versions(&name).await {
            Ok(versions) => {
                let list: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        json!({ "version": v.version, "secret_names": v.secret_names,
                                "actor": v.actor, "created_at": v.created_at })
                    })
                    .collect();
                ok_json(StatusCode::OK, json!(list))
            }
            Err(e) => store_error(&e),
        },
        (Endpoint::ComposeVersion, _) => {
            let Ok(version) = segments.get(3).copied().unwrap_or_default().parse::<u64>() else {
                return error_response(StatusCode::BAD_REQUEST, "the version is a number");
            };
            match admin.store.compose_version(&name, version).await {
                Ok((v, _)) => ok_json(StatusCode::OK, json!(v)),
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::ComposeDiff, _) => {
            let (from, to) = match (number(&req, "from"), number(&req, "to")) {
                (Ok(Some(f)), Ok(Some(t))) => (f, t),
                (Err(e), _) | (_, Err(e)) => return error_response(StatusCode::BAD_REQUEST, e),
                _ => return error_response(StatusCode::BAD_REQUEST, "give ?from=V1&to=V2"),
            };
            let (a, b) = match (
                admin.store.compose_version(&name, from).await,
                admin.store.compose_version(&name, to).await,
            ) {
                (Ok((a, _)), Ok((b, _))) => (a, b),
                (Err(e), _) | (_, Err(e)) => return store_error(&e),
            };
            let diff = similar::TextDiff::from_lines(&a.yaml, &b.yaml)
                .unified_diff()
                .context_radius(3)
                .header(&format!("{name} version {from}"), &format!("{name} version {to}"))
                .to_string();
            ok_json(StatusCode::OK, json!({ "from": from, "to": to, "diff": diff }))
        }
        (Endpoint::ComposeDeployments, _) => {
            let limit = match number(&req, "limit") {
                Ok(l) => l.map_or(DEFAULT_DEPLOYMENTS, |l| l as usize),
                Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
            };
            match admin.store.deployments(&name, limit).await {
                Ok(ds) => ok_json(StatusCode::OK, json!(ds.iter().map(summary).collect::<Vec<_>>())),
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::ComposeRollback, _) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Rollback {
                #[serde(default)]
                version: Option<u64>,
            }
            let body: Rollback = match read_json(req, super::MAX_BODY).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match deployer.rollback(&name, body.version, "api").await {
                Ok(d) => ok_json(StatusCode::ACCEPTED, json!(d)),
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::ComposeLogs, _) => logs(&deployer, &admin, &name, &req).await,
        (Endpoint::Deployment, _) => {
            let Ok(id) = name.parse::<u64>() else {
                return error_response(StatusCode::BAD_REQUEST, format!("{name:?} is not a deployment id"));
            };
            match admin.store.deployment(id).await {
                Ok(d) => ok_json(StatusCode::OK, json!(d)),
                Err(e) => store_error(&e),
            }
        }
        _ => error_response(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// Every compose with its newest version, the deployment that serves it
/// and the newest deployment.
async fn list(deployer: &Deployer, admin: &Admin) -> Response<Body> {
    let composes = match admin.store.composes().await {
        Ok(c) => c,
        Err(e) => return store_error(&e),
    };
    let mut out = Vec::with_capacity(composes.len());
    for c in composes {
        let history = admin
            .store
            .deployments(&c.name, DEFAULT_DEPLOYMENTS)
            .await
            .unwrap_or_default();
        let live = history.iter().find(|d| d.status == DeployStatus::Healthy);
        out.push(json!({
            "name": c.name, "description": c.description, "version": c.version,
            "updated_at": c.updated_at,
            "live": live.map(summary),
            "last": history.first().map(summary),
            "under_way": deployer.under_way(&c.name),
        }));
    }
    ok_json(StatusCode::OK, json!(out))
}

/// One compose: its record, what serves, and its services as the engine
/// sees them now.
async fn status(deployer: &Deployer, admin: &Admin, name: &str) -> Response<Body> {
    let compose = match admin.store.compose(name).await {
        Ok(c) => c,
        Err(e) => return store_error(&e),
    };
    let last = admin.store.deployments(name, 1).await.unwrap_or_default();
    let (live, services, engine) = match deployer.services(name).await {
        Ok((live, services)) => (live, services, Value::Null),
        Err(e) => (None, Vec::new(), json!(e.to_string())),
    };
    let services: Vec<Value> = services
        .iter()
        .map(|s| json!({ "service": s.service, "container": s.container, "state": s.health.to_string(), "restarts": s.restarts }))
        .collect();
    ok_json(
        StatusCode::OK,
        json!({
            "compose": compose,
            "live": live.as_ref().map(summary),
            "last": last.first().map(summary),
            "under_way": deployer.under_way(name),
            "services": services,
            "engine_error": engine,
            "cli": deployer.describe().await.unwrap_or_else(|e| e),
        }),
    )
}

/// The logs of the serving deployment's containers (`?service=` one
/// service): the last `?tail=` lines of each as JSON, or with
/// `?follow=1` a `text/event-stream` that goes on as they log.
async fn logs(deployer: &Deployer, admin: &Admin, name: &str, req: &Request<Incoming>) -> Response<Body> {
    let tail = match number(req, "tail") {
        Ok(t) => t.map_or(DEFAULT_TAIL, |t| t as usize),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let follow = query(req, "follow").is_some_and(|v| v == "1" || v == "true");
    let service = query(req, "service");
    let (live, states) = match deployer.services(name).await {
        Ok(s) => s,
        Err(e) => return store_error(&e),
    };
    if live.is_none() {
        return error_response(StatusCode::NOT_FOUND, format!("{name} has no healthy deployment"));
    }
    let chosen: Vec<_> = states
        .iter()
        .filter(|s| service.as_deref().is_none_or(|want| s.service == want))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = states.iter().map(|s| s.service.as_str()).collect();
        return error_response(
            StatusCode::NOT_FOUND,
            format!(
                "service {:?} in {name} (its services: {})",
                service.unwrap_or_default(),
                known.join(", ")
            ),
        );
    }
    let engine = match deployer.engine_for_logs().await {
        Ok(e) => e,
        Err(e) => return store_error(&e),
    };
    let streams = chosen
        .iter()
        .map(|s| engine.logs(&s.container, &s.service, tail, follow).boxed());
    let merged = futures_util::stream::select_all(streams);
    if !follow {
        let lines: Vec<String> = merged
            .take(deploy::services::MAX_LOG_TAIL * chosen.len())
            .filter_map(|l| async move { l.ok() })
            .flat_map(|chunk| futures_util::stream::iter(chunk.lines().map(str::to_owned).collect::<Vec<_>>()))
            .collect()
            .await;
        return ok_json(StatusCode::OK, json!({ "lines": lines }));
    }
    let Ok(permit) = admin.feeds.clone().try_acquire_owned() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "too many event feeds open");
    };
    let shutdown = admin.shutdown.clone();
    let stream = merged
        .take_until(async move { shutdown.cancelled().await })
        .map(move |chunk| {
            let _held = &permit;
            let text = match chunk {
                Ok(c) => c.lines().map(|l| format!("data: {l}\n")).collect::<String>() + "\n",
                Err(e) => format!("event: error\ndata: {e}\n\n"),
            };
            Ok::<_, super::BoxError>(Frame::data(Bytes::from(text)))
        });
    event_stream(stream)
}
