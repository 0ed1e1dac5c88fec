//! What the admin listener serves (the listener itself, its cap and its
//! loopback rule are `ops::AdminListener`). Open: `/healthz`, `/readyz`,
//! `/metrics`. Behind the bearer token in `admin.token` (data dir): the
//! identity API under `/v1/` (orgs, hosts, relay keys, users, roles),
//! whose changes apply at once, without a restart.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ops::{AdminListener, AdminToken};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::State;
use crate::access::model::{IdentityDoc, UserAdd};
use crate::access::{Authority, IdentityStore};
use crate::authorized_keys::AuthorizedKeys;
use crate::error::Result;
use crate::proxy::{Body, full};

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The identity store as the admin API changes it.
pub(crate) struct IdentityAdmin {
    store: Arc<dyn IdentityStore>,
    file: AuthorizedKeys,
    token: AdminToken,
    /// Orders read-modify-write cycles, the save included (a tokio mutex:
    /// it is held while the save runs on a blocking thread).
    lock: tokio::sync::Mutex<()>,
}

type ApiError = (StatusCode, String);

fn bad(message: impl Into<String>) -> ApiError {
    (StatusCode::BAD_REQUEST, message.into())
}

impl IdentityAdmin {
    pub(crate) fn new(store: Arc<dyn IdentityStore>, file: AuthorizedKeys, token: AdminToken) -> Self {
        IdentityAdmin {
            store,
            file,
            token,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies `f` to a copy of the document, saves it, then swaps the
    /// registry's authority (which closes sessions of removed relay keys).
    /// Changes are serialized; the save (write + fsync) runs on a blocking
    /// thread, never on the runtime's workers.
    async fn change(
        &self,
        state: &State,
        f: impl FnOnce(&Authority, &mut IdentityDoc) -> Result<Value, String>,
    ) -> Result<Value, ApiError> {
        let _order = self.lock.lock().await;
        let current = state.registry.keys();
        let mut doc = current.doc().clone();
        let out = f(&current, &mut doc).map_err(bad)?;
        let store = self.store.clone();
        let failed = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
        let doc = tokio::task::spawn_blocking(move || store.save(&doc).map(|()| doc))
            .await
            .map_err(|e| failed(format!("identity store task failed: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
        state.registry.set_authority(Authority::new(self.file.clone(), doc));
        Ok(out)
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    respond(status, "application/json", format!("{v}\n"))
}

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn read_json<T: for<'de> Deserialize<'de>>(body: Incoming) -> Result<T, ApiError> {
    let bytes = http_body_util::Limited::new(body, MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("request body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgAdd {
    name: String,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    allowed_policies: Option<std::collections::BTreeSet<tunnel_proto::AuthMode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAdd {
    pattern: String,
    org: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayKeyAdd {
    key: String,
    org: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleAdd {
    org: String,
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
}

fn listing(doc: &IdentityDoc, what: &str) -> Option<Value> {
    Some(match what {
        "orgs" => json!(
            doc.orgs
                .iter()
                .map(|(name, o)| json!({
                    "name": name,
                    "allowed_policies": o.allowed_policies,
                    "client_ca": o.client_ca.is_some(),
                    "roles": o.roles.len(),
                }))
                .collect::<Vec<_>>()
        ),
        "hosts" => json!(
            doc.hosts
                .iter()
                .map(|(p, o)| json!({"pattern": p, "org": o}))
                .collect::<Vec<_>>()
        ),
        "relay-keys" => json!(
            doc.relay_keys
                .iter()
                .map(|(k, o)| json!({"key": k, "org": o}))
                .collect::<Vec<_>>()
        ),
        "users" => json!(
            doc.users
                .iter()
                .map(|(name, u)| json!({
                    "name": name, "orgs": u.orgs, "keys": u.keys.keys().collect::<Vec<_>>(), "roles": u.roles,
                }))
                .collect::<Vec<_>>()
        ),
        "roles" => json!(
            doc.orgs
                .iter()
                .flat_map(|(org, o)| o
                    .roles
                    .iter()
                    .map(move |(r, perms)| json!({"org": org, "name": r, "permissions": perms})))
                .collect::<Vec<_>>()
        ),
        _ => return None,
    })
}

/// The identity API: `GET|POST /v1/<kind>`, `DELETE /v1/<kind>/<id...>`.
async fn api(state: &State, req: Request<Incoming>) -> Result<Value, ApiError> {
    let not_found = || (StatusCode::NOT_FOUND, "no such admin endpoint".to_owned());
    let path = req.uri().path().to_owned();
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(|s| percent_decode(s).ok_or_else(|| bad("bad path encoding")))
        .collect::<Result<_, _>>()?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let admin = &state.identity;
    match (req.method().clone(), seg.as_slice()) {
        (Method::GET, [what]) => listing(state.registry.keys().doc(), what).ok_or_else(not_found),
        (Method::POST, ["orgs"]) => {
            let add: OrgAdd = read_json(req.into_body()).await?;
            admin
                .change(state, |_, doc| {
                    doc.add_org(&add.name, add.client_ca, add.allowed_policies)?;
                    Ok(json!({"org": add.name}))
                })
                .await
        }
        (Method::DELETE, ["orgs", name]) => admin.change(state, |_, doc| doc.rm_org(name).map(|()| json!({}))).await,
        (Method::POST, ["hosts"]) => {
            let add: HostAdd = read_json(req.into_body()).await?;
            admin
                .change(state, |current, doc| {
                    let pattern = tunnel_proto::HostPattern::parse(&add.pattern).map_err(|e| e.to_string())?;
                    if current.file_claims(&pattern) {
                        return Err(format!("{pattern} is claimed by the authorized-keys file"));
                    }
                    doc.add_host(&add.pattern, &add.org).map(|p| json!({"pattern": p}))
                })
                .await
        }
        (Method::DELETE, ["hosts", pattern]) => {
            admin
                .change(state, |_, doc| doc.rm_host(pattern).map(|()| json!({})))
                .await
        }
        (Method::POST, ["relay-keys"]) => {
            let add: RelayKeyAdd = read_json(req.into_body()).await?;
            admin
                .change(state, |_, doc| {
                    doc.add_relay_key(&add.key, &add.org).map(|k| json!({"key": k}))
                })
                .await
        }
        (Method::DELETE, ["relay-keys", key]) => {
            admin
                .change(state, |_, doc| doc.rm_relay_key(key).map(|()| json!({})))
                .await
        }
        (Method::POST, ["users"]) => {
            let add: UserAdd = read_json(req.into_body()).await?;
            admin
                .change(state, |_, doc| doc.add_user(&add).map(|kids| json!({"keys": kids})))
                .await
        }
        (Method::DELETE, ["users", name]) => {
            admin
                .change(state, |_, doc| doc.rm_user(name).map(|()| json!({})))
                .await
        }
        (Method::DELETE, ["users", name, "keys", kid]) => {
            admin
                .change(state, |_, doc| doc.rm_user_key(name, kid).map(|()| json!({})))
                .await
        }
        (Method::POST, ["roles"]) => {
            let add: RoleAdd = read_json(req.into_body()).await?;
            admin
                .change(state, |_, doc| {
                    doc.add_role(&add.org, &add.name, &add.permissions).map(|()| json!({}))
                })
                .await
        }
        (Method::DELETE, ["roles", org, name]) => {
            admin
                .change(state, |_, doc| doc.rm_role(org, name).map(|()| json!({})))
                .await
        }
        _ => Err(not_found()),
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path().starts_with("/v1/") {
        if !state.identity.token.admits(&req) {
            let mut resp = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "the admin API needs Authorization: Bearer <admin.token>"}),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"routehub-admin\""),
            );
            return resp;
        }
        return match api(state, req).await {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err((status, message)) => json_response(status, &json!({ "error": message })),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if state.shutdown.is_cancelled() => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".into())
        }
        "/readyz" => respond(StatusCode::OK, "text/plain", "ready\n".into()),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves the admin listener until the gateway has stopped: it outlives
/// the drain, so `/readyz` can say so.
pub(crate) async fn serve(listener: AdminListener, state: Arc<State>) {
    let stopped = state.stopped.clone();
    listener
        .serve(stopped, move |req| {
            let state = state.clone();
            async move { handle(&state, req).await }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2A.a.test").as_deref(), Some("*.a.test"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
    }
}
