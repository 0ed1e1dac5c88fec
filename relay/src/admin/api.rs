//! `/api/*` handlers. Bodies are strict JSON (unknown fields are errors),
//! at most [`MAX_BODY`] bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::wire::{event_stream, ok_json, query, read_json};
use super::{Admin, Body, Endpoint, MAX_BODY, error_response, store_error};
use crate::model::{NewRoute, RoutePatch};
use crate::status::Status;
use crate::store::Event;

/// Changes `/api/history` returns without `?limit=`.
const DEFAULT_HISTORY: usize = 100;
/// Longest a write waits for gateways to acknowledge it (`?wait=1`).
const WAIT_FOR_GATEWAYS: Duration = Duration::from_secs(5);
/// An idle event feed gets a comment this often, so proxies keep it open.
const FEED_KEEPALIVE: Duration = Duration::from_secs(15);

fn not_served(path: &str) -> Response<Body> {
    error_response(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
}

fn status_json(status: &Status) -> serde_json::Value {
    let gateways: serde_json::Map<String, serde_json::Value> = status
        .iter()
        .map(|(name, g)| {
            let s = g.session.as_ref();
            (
                name.clone(),
                json!({
                    "connected": s.is_some(),
                    "transport": s.map(|s| s.transport.as_str()),
                    "session_id": s.map(|s| s.session_id.to_string()),
                    "routes_version": s.and_then(|s| s.routes_version_acked),
                    "refused": s.map(|s| s.refused.iter().map(|(id, why)| json!({ "route_id": id, "reason": why })).collect::<Vec<_>>()),
                    "last_error": g.last_error,
                }),
            )
        })
        .collect();
    serde_json::Value::Object(gateways)
}

fn labels_json(labels: &crate::containers::LabelStatus) -> serde_json::Value {
    let left_out: Vec<serde_json::Value> = labels
        .left_out
        .iter()
        .map(|l| json!({ "container": l.container, "route": l.route, "reason": l.reason }))
        .collect();
    json!({ "engine": labels.engine, "left_out": left_out })
}

/// After a write at `version`: with `?wait=1`, waits until every connected
/// gateway acknowledged it (bounded). Returns (acknowledged, connected).
async fn wait_for_gateways(admin: &Admin, req_wants: bool, version: u64) -> (usize, usize) {
    let count = |s: &Status| crate::status::acked(s, version);
    let mut rx = admin.status.clone();
    if req_wants {
        let _ = tokio::time::timeout(
            WAIT_FOR_GATEWAYS,
            rx.wait_for(|s| {
                let (a, c) = count(s);
                a == c
            }),
        )
        .await;
    }
    count(&rx.borrow())
}

/// Serves an `/api/` endpoint; the caller checked the token and that the
/// method is one the endpoint answers.
pub(super) async fn handle(admin: Arc<Admin>, endpoint: Endpoint, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let wait = query(&req, "wait").is_some_and(|v| v == "1" || v == "true");
    let method = req.method().clone();
    match (endpoint, method, segments.as_slice()) {
        (Endpoint::Routes, Method::GET, _) => match admin.store.list().await {
            Ok(routes) => ok_json(StatusCode::OK, json!(routes)),
            Err(e) => store_error(&e),
        },
        (Endpoint::Routes, Method::POST, _) => {
            let new: NewRoute = match read_json(req, MAX_BODY).await {
                Ok(n) => n,
                Err(resp) => return resp,
            };
            match admin.store.add(new, "api").await {
                Ok(change) => write_reply(&admin, StatusCode::CREATED, change, wait).await,
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::Route, method, ["routes", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error_response(StatusCode::BAD_REQUEST, format!("{id:?} is not a route id"));
            };
            match method {
                Method::GET => match admin.store.get(id).await {
                    Ok(r) => ok_json(StatusCode::OK, json!(r)),
                    Err(e) => store_error(&e),
                },
                Method::PATCH => {
                    let patch: RoutePatch = match read_json(req, MAX_BODY).await {
                        Ok(p) => p,
                        Err(resp) => return resp,
                    };
                    match admin.store.update(id, patch, "api").await {
                        Ok(change) => write_reply(&admin, StatusCode::OK, change, wait).await,
                        Err(e) => store_error(&e),
                    }
                }
                Method::DELETE => match admin.store.remove(id, "api").await {
                    Ok(change) => write_reply(&admin, StatusCode::OK, change, wait).await,
                    Err(e) => store_error(&e),
                },
                _ => not_served(&path),
            }
        }
        (Endpoint::History, Method::GET, _) => {
            // A typo must not silently become the default.
            let number = |key: &str| match query(&req, key) {
                None => Ok(None),
                Some(v) => v
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("{key}={v:?} is not a number")),
            };
            let (limit, before) = match (number("limit"), number("before")) {
                (Ok(limit), Ok(before)) => (limit.map_or(DEFAULT_HISTORY, |l| l as usize), before),
                (Err(e), _) | (_, Err(e)) => return error_response(StatusCode::BAD_REQUEST, e),
            };
            match admin.store.history(limit, before).await {
                Ok(h) => ok_json(StatusCode::OK, json!(h)),
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::VersionRoutes, Method::GET, ["versions", v, "routes"]) => match v.parse::<u64>() {
            Ok(v) => match admin.store.routes_at(v).await {
                Ok(routes) => ok_json(StatusCode::OK, json!(routes)),
                Err(e) => store_error(&e),
            },
            Err(_) => error_response(StatusCode::BAD_REQUEST, format!("{v:?} is not a version")),
        },
        (Endpoint::Rollback, Method::POST, _) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Rollback {
                version: u64,
            }
            let body: Rollback = match read_json(req, MAX_BODY).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match admin.store.rollback(body.version, "api").await {
                Ok(change) => write_reply(&admin, StatusCode::OK, change, wait).await,
                Err(e) => store_error(&e),
            }
        }
        (Endpoint::Health, Method::GET, _) => match admin.store.health().await {
            Ok(h) => ok_json(StatusCode::OK, json!(h)),
            Err(e) => store_error(&e),
        },
        (Endpoint::Status, Method::GET, _) => {
            let (version, checksum) = match admin.store.version().await {
                Ok(v) => v,
                Err(e) => return store_error(&e),
            };
            let gateways = status_json(&admin.status.borrow());
            let labels = labels_json(&admin.labels.borrow());
            ok_json(
                StatusCode::OK,
                json!({ "version": version, "checksum": checksum, "gateways": gateways, "labels": labels }),
            )
        }
        (Endpoint::Events, Method::GET, _) => events(admin),
        // Unreachable through `super::handle`, which answers 404 and 405.
        _ => not_served(&path),
    }
}

async fn write_reply(admin: &Admin, status: StatusCode, change: crate::model::Change, wait: bool) -> Response<Body> {
    let (acked, connected) = wait_for_gateways(admin, wait, change.version).await;
    let route = match change.route_id {
        Some(id) => admin.store.get(id).await.ok(),
        None => None,
    };
    // Of the gateways that acknowledged this version, those that won't
    // serve the route say why (e.g. a host the relay's key is not
    // authorized for); the others serve it. A gateway that has not
    // acknowledged it yet knows nothing about it either way.
    let (mut refused, mut live) = (Vec::new(), 0);
    for (gw, g) in admin.status.borrow().iter() {
        let Some(session) = g.session.as_ref() else {
            continue;
        };
        if session.routes_version_acked.is_none_or(|v| v < change.version) {
            continue;
        }
        match change.route_id.and_then(|id| session.refused.get(&id)) {
            Some(reason) => refused.push(json!({ "gateway": gw, "reason": reason })),
            None => live += 1,
        }
    }
    ok_json(
        status,
        json!({
            "version": change.version,
            "checksum": change.checksum,
            "route": route,
            "change": change,
            "gateways": { "acknowledged": acked, "connected": connected, "live": live },
            "refused": refused,
        }),
    )
}

/// `text/event-stream` of store events (`change`, `health`) and relay
/// status (`status`), ending on shutdown. A client that falls behind gets
/// `resync` and should reload.
fn events(admin: Arc<Admin>) -> Response<Body> {
    let Ok(permit) = admin.feeds.clone().try_acquire_owned() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "too many event feeds open");
    };
    let store_events = admin.store.subscribe();
    let status = admin.status.clone();
    let shutdown = admin.shutdown.clone();
    let state = (store_events, status, shutdown, permit, true);
    let stream = futures_util::stream::unfold(state, |(mut events, mut status, shutdown, permit, first)| async move {
        let chunk = if first {
            let s = status_json(&status.borrow_and_update());
            format!("event: status\ndata: {s}\n\n")
        } else {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(Event::Change(c)) => format!("event: change\ndata: {}\n\n", json!(c)),
                    Ok(Event::Health(h)) => format!("event: health\ndata: {}\n\n", json!(h)),
                    Ok(Event::Deploy(d)) => format!("event: deploy\ndata: {}\n\n", json!(d)),
                    Err(broadcast::error::RecvError::Lagged(_)) => "event: resync\ndata: {}\n\n".to_owned(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                r = status.changed() => match r {
                    Ok(()) => format!("event: status\ndata: {}\n\n", status_json(&status.borrow_and_update())),
                    Err(_) => return None,
                },
                _ = tokio::time::sleep(FEED_KEEPALIVE) => ": keepalive\n\n".to_owned(),
                _ = shutdown.cancelled() => return None,
            }
        };
        Some((
            Ok::<_, super::BoxError>(Frame::data(Bytes::from(chunk))),
            (events, status, shutdown, permit, false),
        ))
    });
    event_stream(stream)
}
