//! What the relay's admin listener serves: JSON API over the store, a live
//! event feed (Server-Sent Events), the OpenAPI description and the
//! dashboard. Every `/api` call needs the bearer token from `admin.token` in
//! the data dir. The listener itself (loopback unless
//! `dangerous_admin_public`, connection cap, timeouts) is
//! `ops::AdminListener`.

mod api;
mod deploys;
mod endpoints;
mod wire;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ops::{AdminListener, AdminToken, MAX_ADMIN_CONNECTIONS};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::status::Status;
use crate::store::Store;
use endpoints::Endpoint;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Event-feed clients at once; below the listener's connection cap, so
/// feeds alone can't take every connection.
pub const MAX_EVENT_CLIENTS: usize = 64;
const _: () = assert!(MAX_EVENT_CLIENTS < MAX_ADMIN_CONNECTIONS);

const DASHBOARD: &str = include_str!("dashboard.html");
const OPENAPI: &str = include_str!("openapi.json");

pub(crate) struct Admin {
    pub store: Store,
    pub token: AdminToken,
    pub status: watch::Receiver<Status>,
    /// What label sync is doing and what it left out.
    pub labels: watch::Receiver<crate::containers::LabelStatus>,
    pub shutdown: CancellationToken,
    pub feeds: Arc<Semaphore>,
    /// Compose deployments; `None` where the config turns them off.
    pub deployer: Option<Arc<crate::deployer::Deployer>>,
}

/// Serves the admin API on `listener` until the relay shuts down.
pub(crate) async fn serve(listener: AdminListener, admin: Arc<Admin>) {
    let shutdown = admin.shutdown.clone();
    listener.serve(shutdown, move |req| handle(admin.clone(), req)).await;
}

pub(crate) fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed_unsync());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// The one place an API error becomes a response.
pub(crate) fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    let mut resp = full(status, "application/json", body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Maps store errors to statuses.
pub(crate) fn store_error(e: &Error) -> Response<Body> {
    let status = match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) | Error::Limit(_) => StatusCode::CONFLICT,
        Error::Invalid(_) | Error::Route { .. } => StatusCode::BAD_REQUEST,
        Error::Deploy(deploy::Error::InvalidName { .. } | deploy::Error::TooLarge { .. }) => StatusCode::BAD_REQUEST,
        Error::Unavailable(_)
        | Error::Deploy(deploy::Error::ComposeUnavailable(_) | deploy::Error::Unreachable { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e)
}

async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let Some(endpoint) = Endpoint::find(&path) else {
        return error_response(StatusCode::NOT_FOUND, format!("no such page: {path}"));
    };
    if endpoint.needs_token() && !admin.token.admits(&req) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (admin.token in the relay's data dir)",
        );
    }
    let allowed = endpoint.methods();
    if !allowed.contains(req.method()) {
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let allow = allow.join(", ");
        let mut resp = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path}: use {allow}", req.method()),
        );
        if let Ok(v) = header::HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    match endpoint {
        Endpoint::Dashboard | Endpoint::DashboardIndex => {
            let mut resp = full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD);
            // The page talks only to this listener.
            resp.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                ),
            );
            resp
        }
        Endpoint::OpenApi => full(StatusCode::OK, "application/json", OPENAPI),
        Endpoint::Healthz => full(StatusCode::OK, "text/plain", "ok\n"),
        Endpoint::Composes
        | Endpoint::Compose
        | Endpoint::ComposeVersions
        | Endpoint::ComposeVersion
        | Endpoint::ComposeDiff
        | Endpoint::ComposeDeployments
        | Endpoint::ComposeRollback
        | Endpoint::ComposeLogs
        | Endpoint::Deployment => deploys::handle(admin, endpoint, req).await,
        api_endpoint => api::handle(admin, api_endpoint, req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AdminClient;
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;

    /// An admin listener over a fresh store, as `Relay::start` runs it.
    pub(super) struct Running {
        pub addr: SocketAddr,
        pub api: AdminClient,
        pub token: AdminToken,
        pub store: Store,
        _status: watch::Sender<Status>,
        _dir: tempfile::TempDir,
    }

    pub(super) async fn start(max_connections: usize) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let token = AdminToken::load_or_create(dir.path()).unwrap();
        let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), false, "relay")
            .await
            .unwrap()
            .with_max_connections(max_connections);
        let addr = listener.local_addr();
        let (status_tx, status) = watch::channel(Status::new());
        let admin = Arc::new(Admin {
            store: store.clone(),
            token: token.clone(),
            status,
            labels: watch::channel(crate::containers::LabelStatus::off()).1,
            shutdown: CancellationToken::new(),
            feeds: Arc::new(Semaphore::new(MAX_EVENT_CLIENTS)),
            deployer: None,
        });
        tokio::spawn(serve(listener, admin));
        Running {
            addr,
            api: AdminClient::new(&format!("http://{addr}"), token.clone()),
            token,
            store,
            _status: status_tx,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn bad_query_numbers_and_unknown_versions_are_errors() {
        let running = start(MAX_ADMIN_CONNECTIONS).await;
        let api = &running.api;
        let (s, j) = api
            .raw(Method::GET, "/api/history?limit=abc", None, true)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        assert!(j["error"].as_str().unwrap().contains("limit"), "{j}");
        let (s, _) = api.raw(Method::GET, "/api/history?before=x", None, true).await.unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = api.raw(Method::GET, "/api/history?limit=5", None, true).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        let (s, j) = api
            .raw(Method::GET, "/api/versions/0/routes", None, true)
            .await
            .unwrap();
        assert_eq!((s, j), (StatusCode::OK, serde_json::json!([])));
        let (s, j) = api
            .raw(Method::GET, "/api/versions/3/routes", None, true)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::NOT_FOUND, "{j}");
        assert!(j["error"].as_str().unwrap().contains("the latest is 0"), "{j}");
        let (s, _) = api
            .raw(Method::GET, "/api/versions/x/routes", None, true)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            store_error(&Error::Limit("x".into())).status(),
            StatusCode::CONFLICT,
            "a route limit is a conflict with the stored state"
        );
    }

    /// Status, headers and (unless it is an event stream) JSON body.
    async fn probe(
        addr: SocketAddr,
        method: &Method,
        path: &str,
        token: Option<&AdminToken>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "admin");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("bearer {}", t.secret()));
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let json = if parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json")
        {
            let bytes = body.collect().await.unwrap().to_bytes();
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Null
        };
        (parts.status, parts.headers, json)
    }

    /// Every `$ref` in `v` names something in `doc`.
    fn check_refs(doc: &serde_json::Value, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    let pointer = r.strip_prefix('#').expect("a local $ref");
                    assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                }
                m.values().for_each(|v| check_refs(doc, v));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| check_refs(doc, v)),
            _ => {}
        }
    }

    #[tokio::test]
    async fn openapi_describes_exactly_what_the_router_serves() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        check_refs(&doc, &doc);
        let paths = doc["paths"].as_object().unwrap();
        let verbs = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
        let documented: std::collections::BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(p, item)| {
                verbs
                    .iter()
                    .filter(|v| item.get(**v).is_some())
                    .map(|v| (p.clone(), v.to_uppercase()))
            })
            .collect();
        let served: std::collections::BTreeSet<(String, String)> = Endpoint::ALL
            .iter()
            .flat_map(|e| e.methods().iter().map(|m| (e.template().to_owned(), m.to_string())))
            .collect();
        assert_eq!(documented, served, "openapi.json and the router disagree");
        for (path, method) in &documented {
            let op = &paths[path][method.to_lowercase()];
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("405"), "{method} {path}: 405");
            if Endpoint::find(path).unwrap().needs_token() {
                assert!(responses.contains_key("401"), "{method} {path}: 401");
            } else {
                assert_eq!(op["security"], serde_json::json!([]), "{method} {path} is public");
            }
        }
        let wait = &doc["components"]["parameters"]["wait"]["schema"]["enum"];
        assert!(wait.as_array().unwrap().contains(&"true".into()), "?wait=true works");
        for schema in ["WriteResult", "GatewayStatus"] {
            assert!(
                doc["components"]["schemas"][schema]["properties"]["refused"].is_object(),
                "{schema}.refused"
            );
        }

        // The router answers each documented method, and 405 (with Allow)
        // for the others.
        let running = start(MAX_ADMIN_CONNECTIONS).await;
        let route = serde_json::from_value(serde_json::json!({ "host": "a.test", "target": "1" })).unwrap();
        running.store.add(route, "t").await.unwrap();
        let token = &running.token;
        let all = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
        for e in Endpoint::ALL {
            let path = e
                .template()
                .replace("{id}", "1")
                .replace("{version}", "1")
                .replace("{name}", "web");
            for method in &all {
                let (status, headers, body) = probe(running.addr, method, &path, Some(token)).await;
                let routed = !(status == StatusCode::NOT_FOUND
                    && body["error"].as_str().is_some_and(|e| e.starts_with("no such")));
                assert!(routed, "{method} {path}: {body}");
                if e.methods().contains(method) {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                    assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
                    let allow: Vec<&str> = e.methods().iter().map(Method::as_str).collect();
                    assert_eq!(headers[header::ALLOW], allow.join(", ").as_str());
                }
            }
            if e.needs_token() {
                let (status, headers, _) = probe(running.addr, &Method::GET, &path, None).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
                assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            }
        }
        let (status, _, body) = probe(running.addr, &Method::GET, "/api/nope", Some(token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
}
