//! End-user requests: route by `Host` then path, forward over a tunnel
//! stream as HTTP/1.1, stream the response back. Errors become responses in
//! one place, [`error_response`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use tokio::time::timeout;
use tracing::Instrument;
use tunnel_proto::http::{Refusal, X_ROUTEHUB_ERROR};
use tunnel_proto::limits::STREAM_OPEN_TIMEOUT;
use tunnel_proto::names::host_of_authority;
use tunnel_proto::path::RequestPath;

use crate::State;
use crate::access::policy::{self, AccessRequest, Denial, Identity};
use crate::body::{ClientBody, Keeper, TunnelBody};
use crate::error::Error;
use crate::headers::{
    self, HeadBudget, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, X_ROUTEHUB_ROLES,
    X_ROUTEHUB_TRANSPORT, X_ROUTEHUB_USER,
};
use crate::metrics::{AuthLabel, CodeLabel, OutcomeLabel};
use crate::pool::{self, TunnelConn};
use crate::registry::{Lookup, Routed};
use crate::relay_body::RelayBody;
use crate::session::Session;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What the gateway knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// SNI of the TLS session (lowercase), if the client sent one.
    pub sni: Option<String>,
    /// The client's certificate chain, leaf first, if it sent one (only
    /// hosts with mTLS routes ask). Not verified yet: see [`policy`].
    pub client_chain: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    /// What this connection sent and what its request heads decoded to.
    pub(crate) budget: Arc<HeadBudget>,
}

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The one place a gateway error becomes an HTTP response.
pub fn error_response(err: &Error) -> Response<Body> {
    let mut resp = Response::new(full(format!("{}\n", err)));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_ROUTEHUB_ERROR, HeaderValue::from_static(err.kind()));
    if let Error::Unauthorized { challenge, .. } = err
        && let Ok(v) = HeaderValue::from_str(challenge)
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Runs the route's access policy; counts the decision.
fn authorize<B>(
    state: &State,
    conn: &ConnInfo,
    req: &Request<B>,
    host: &str,
    policy: Option<&tunnel_proto::RoutePolicy>,
) -> Result<Option<Identity>, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access = AccessRequest {
        host,
        peer: conn.peer.ip(),
        headers: req.headers(),
        client_chain: conn.client_chain.as_deref().map(Vec::as_slice),
        now,
    };
    let verdict = policy::decide(policy, &access, &state.registry.keys());
    let outcome = match &verdict {
        Ok(_) => "allowed",
        Err(d) => d.outcome(),
    };
    state
        .metrics
        .auth_decisions
        .get_or_create(&AuthLabel {
            policy: policy::mode(policy).as_str(),
            outcome,
        })
        .inc();
    verdict.map_err(|d| match d {
        Denial::Unauthorized { reason, challenge } => Error::Unauthorized { reason, challenge },
        Denial::Forbidden(reason) => Error::Forbidden(reason),
    })
}

/// Header-safe text: printable ASCII only.
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(256)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets the identity headers of an authenticated request (any the client
/// sent were stripped by [`prepare`]).
fn set_identity<B>(req: &mut Request<B>, identity: Option<&Identity>) {
    let Some(id) = identity else { return };
    let h = req.headers_mut();
    h.insert(X_ROUTEHUB_USER, header_text(&id.user));
    h.insert(X_ROUTEHUB_ROLES, header_text(&id.roles.join(",")));
}

/// Handles one request; never fails (errors are responses).
pub(crate) async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let keeper = Keeper::default();
    let resp = match route(&state, &conn, req, &keeper).await {
        Ok(resp) => resp,
        Err(err) => {
            state
                .metrics
                .request_errors
                .get_or_create(&OutcomeLabel { outcome: err.kind() })
                .inc();
            tracing::debug!(error = %err, "request answered by the gateway");
            keeper.discard();
            error_response(&err)
        }
    };
    state
        .metrics
        .requests
        .get_or_create(&CodeLabel {
            code: resp.status().as_u16(),
        })
        .inc();
    state.metrics.request_duration.observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

fn request_host<B>(req: &Request<B>) -> Option<String> {
    // RFC 9112 §3.2.2: an absolute-form target (and h2's :authority) wins over Host.
    match req.uri().authority() {
        Some(a) => host_of_authority(a.as_str()),
        None => host_of_authority(req.headers().get(header::HOST)?.to_str().ok()?),
    }
}

async fn route(
    state: &Arc<State>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    keeper: &Keeper,
) -> Result<Response<Body>, Error> {
    let host = request_host(&req).ok_or(Error::MissingHost)?;
    check_head(state, conn, &req)?;
    // Routed, policed and forwarded in one form: see `tunnel_proto::path`.
    let path = RequestPath::parse(req.uri().path()).map_err(|e| Error::BadPath(e.to_string()))?;
    let mut routed = match state.registry.lookup(&host, &path, None) {
        Lookup::Found(routed) => routed,
        Lookup::UnknownHost => return Err(Error::UnknownHost(host)),
        Lookup::NoRoute => {
            return Err(Error::NoRoute {
                host,
                path: path.as_str().chars().take(200).collect(),
            });
        }
        // Its relay is switching sessions (a transport fallback takes
        // milliseconds): wait for the new one's routes, don't fail. A relay
        // that is really gone gets no wait.
        Lookup::NoRelay if let Some(until) = state.registry.switching(&host) => {
            next_session(state, &host, &path, None, until.into())
                .await
                .ok_or_else(|| Error::NoRelay(host.clone()))?
        }
        Lookup::NoRelay => return Err(Error::NoRelay(host)),
        Lookup::Unhealthy => return Err(Error::Unhealthy(format!("{host}{path}"))),
    };
    // The certificate of this TLS session covers exactly its SNI name (or the
    // gateway's own names when there was none): any other Host is misdirected,
    // e.g. an h2 client reusing a connection for a different site.
    let served = match &conn.sni {
        Some(sni) => sni == &host,
        None => state.config.names.iter().any(|n| n == &host),
    };
    if !served {
        let sni = conn.sni.clone().unwrap_or_else(|| "no SNI".into());
        return Err(Error::Misdirected { host, sni });
    }
    // Nothing is forwarded before the route's policy allows it.
    let policy = routed.policy.clone();
    let identity = authorize(state, conn, &req, &host, policy.as_deref())?;
    if policy::mode(policy.as_deref()) == tunnel_proto::AuthMode::Jwt {
        policy::strip_token(req.headers_mut());
    }
    let upgrade = prepare(
        &mut req,
        &host,
        conn,
        &path.forwarded(&routed.prefix),
        policy.as_deref(),
    );
    set_identity(&mut req, identity.as_ref());
    let replay = Replay::of(&req, upgrade.is_some());
    // Taken once: a request that is retried keeps its client's upgrade.
    let mut client_upgrade = upgrade.map(|asked| (asked, hyper::upgrade::on(&mut req)));
    let mut req = req.map(|body| Either::Left(ClientBody::new(body, keeper.clone())));
    // A request that can't be replayed takes only a connection that was
    // busy moments ago: the older an idle one, the likelier its target has
    // just closed it, and then the request may be lost.
    let mut reuse = if replay.is_some() {
        pool::IDLE_TIMEOUT
    } else {
        pool::UNREPLAYABLE_IDLE_LIMIT
    };
    let mut attempt = 0;
    loop {
        let Routed { session, route_id, .. } = &routed;
        req.headers_mut().insert(
            X_ROUTEHUB_TRANSPORT,
            HeaderValue::from_static(session.tunnel.transport().as_str()),
        );
        let span = tracing::debug_span!("request", %host, session = session.id, route = route_id, attempt);
        let failure = match forward(
            state,
            session,
            *route_id,
            (&host, path.as_str()),
            reuse,
            req,
            &mut client_upgrade,
        )
        .instrument(span)
        .await
        {
            Ok(resp) => return Ok(resp),
            Err(failure) => failure,
        };
        attempt += 1;
        let Failure {
            error,
            unsent,
            maybe_in_progress,
            stale,
            refused,
        } = failure;
        // What the client gets when this was the last attempt.
        let give_up = move || Err(error);
        // Retry only what can't be duplicated harmfully: a request that
        // provably never reached the relay, whatever its method; or a safe
        // one without a body, unless the relay may still be working on it.
        let again = match (unsent, &replay) {
            (Some(unsent), _) => unsent,
            (None, Some(replay)) if !maybe_in_progress => replay.rebuild(),
            (None, _) => return give_up(),
        };
        if attempt > MAX_RETRIES {
            return give_up();
        }
        // An idle connection its target had closed, on a session that is
        // still up: again on it, over a new stream.
        if stale && session.is_usable() {
            tracing::debug!(%host, "idle tunnel connection was stale; retrying on a new stream");
            reuse = std::time::Duration::ZERO;
            req = again;
            continue;
        }
        // A relay that answered for itself is up: take another session only
        // if there is one now. After a lost session, wait only for a relay
        // that is switching sessions.
        let now = tokio::time::Instant::now();
        let until = match state.registry.switching(&host) {
            Some(until) if !refused => until.into(),
            _ => now,
        };
        let failed = session.id;
        match next_session(state, &host, &path, Some(failed), until).await {
            // Only to a route with the very policy this request passed,
            // and the same prefix it was forwarded under.
            Some(next) if next.policy == policy && next.prefix == routed.prefix => routed = next,
            _ => return give_up(),
        }
        tracing::debug!(%host, next = routed.session.id, "retrying on another session");
        req = again;
    }
}

/// Refuses a request head over the configured bounds (431), and closes a
/// connection whose heads decode to far more than it sent (HPACK
/// amplification: see [`headers::HPACK_ALLOWANCE_PER_REQUEST`]).
fn check_head<B>(state: &State, conn: &ConnInfo, req: &Request<B>) -> Result<(), Error> {
    let (bytes, fields) = headers::head_size(req.method(), req.uri(), req.headers());
    if !conn.budget.admit(bytes) {
        tracing::info!(peer = %conn.peer, "request heads decode to far more than the connection sent: closing it");
        return Err(Error::HeadersTooLarge(
            "request heads decode to far more than this connection sent".into(),
        ));
    }
    let (max_bytes, max_fields) = (
        state.config.max_request_header_bytes,
        state.config.max_request_header_fields,
    );
    if bytes > max_bytes || fields > max_fields {
        return Err(Error::HeadersTooLarge(format!(
            "{fields} fields, {bytes} bytes (at most {max_fields} fields, {max_bytes} bytes)"
        )));
    }
    Ok(())
}

/// Retries per request after a relay session failed under it.
const MAX_RETRIES: u32 = 2;
/// Waits for a usable session other than `failed`, up to `deadline`.
async fn next_session(
    state: &State,
    host: &str,
    path: &RequestPath,
    failed: Option<u64>,
    deadline: tokio::time::Instant,
) -> Option<Routed> {
    let mut changes = state.registry.subscribe();
    loop {
        if let Lookup::Found(routed) = state.registry.lookup(host, path, failed) {
            return Some(routed);
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            return None;
        }
    }
}

/// Whether a request that may have reached the relay can be sent again:
/// only a safe method (RFC 9110 §9.2.1: GET, HEAD, OPTIONS, TRACE) with no
/// body and no upgrade. PUT and DELETE are idempotent on paper, but a
/// backend that reached them once may have acted on them (a second DELETE
/// can remove what was created in between): they fail with a 502 instead.
fn replayable(method: &http::Method, has_body: bool, upgrade: bool) -> bool {
    use http::Method;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    safe && !has_body && !upgrade
}

/// What is needed to send a body-less safe request again.
struct Replay {
    head: http::request::Parts,
}

impl Replay {
    fn of(req: &Request<Incoming>, upgrade: bool) -> Option<Replay> {
        use http_body::Body as _;
        if !replayable(req.method(), !req.body().is_end_stream(), upgrade) {
            return None;
        }
        let mut head = Request::new(()).into_parts().0;
        head.method = req.method().clone();
        head.uri = req.uri().clone();
        head.version = req.version();
        head.headers = req.headers().clone();
        Some(Replay { head })
    }

    fn rebuild(&self) -> Request<TunnelBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = self.head.uri.clone();
        *req.version_mut() = self.head.version;
        *req.headers_mut() = self.head.headers.clone();
        req
    }
}

/// Rewrites the request for the relay: origin-form URI with the canonical
/// `path` that was routed and policed, HTTP/1.1, `Host` set, hop-by-hop
/// headers removed, reserved and forwarding headers replaced (never trusted
/// from the client), upgrades only to protocols the route allows. Returns
/// the `Upgrade` protocols it kept, if the request still upgrades.
fn prepare(
    req: &mut Request<Incoming>,
    host: &str,
    conn: &ConnInfo,
    path: &str,
    policy: Option<&tunnel_proto::RoutePolicy>,
) -> Option<HeaderValue> {
    let asked = tunnel_proto::http::strip_hop_by_hop(req.headers_mut()).is_some();
    let upgrade = asked
        .then(|| headers::allowed_upgrade(req.headers_mut(), policy))
        .flatten();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| host.to_owned());
    let origin_form = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    // The canonical path and a query `http` already accepted always parse.
    *req.uri_mut() = origin_form.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&authority) {
        h.insert(header::HOST, v);
    }
    headers::strip_reserved(h);
    if let Ok(v) = HeaderValue::from_str(&conn.peer.ip().to_string()) {
        h.insert(X_FORWARDED_FOR, v.clone());
        h.insert(X_REAL_IP, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(X_FORWARDED_HOST, v);
    }
    upgrade
}

/// A failed attempt: the error, and the request if it never left.
struct Failure {
    error: Error,
    /// The request, when it provably never reached the relay.
    unsent: Option<Request<TunnelBody>>,
    /// The relay may still be working on the request (its response timed
    /// out, or came back unusable): it is never sent again.
    maybe_in_progress: bool,
    /// It failed on a reused idle connection before any response: most
    /// likely the target had closed it, not a failing session.
    stale: bool,
    /// The relay answered for itself (its target was not reached): the
    /// error is that answer, and another relay may take the request.
    refused: bool,
}

impl Failure {
    fn unsent(error: Error, req: Request<TunnelBody>) -> Failure {
        Failure {
            error,
            unsent: Some(req),
            maybe_in_progress: false,
            stale: false,
            refused: false,
        }
    }
}

/// A connection for `route_id` on `session`: one idle for less than
/// `reuse`, or a new stream.
async fn connection(session: &Session, route_id: u64, reuse: std::time::Duration) -> Result<TunnelConn, String> {
    if let Some(conn) = session.pool.take(route_id, reuse) {
        return Ok(conn);
    }
    // Idle connections of other routes may hold every stream there is.
    if session.tunnel.at_stream_limit() {
        session.pool.evict_oldest();
    }
    match timeout(
        STREAM_OPEN_TIMEOUT,
        TunnelConn::open(&session.tunnel, &session.pool, route_id),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no stream available in time".into()),
    }
}

async fn forward(
    state: &State,
    session: &Arc<Session>,
    route_id: u64,
    (host, path): (&str, &str),
    reuse: std::time::Duration,
    mut req: Request<TunnelBody>,
    client_upgrade: &mut Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
) -> Result<Response<Body>, Failure> {
    let unavailable = |reason: String| Error::RelayUnavailable {
        host: host.to_owned(),
        reason,
    };
    // Counted until the response (or the upgraded connection) is done.
    let guard = session.stream_guard(&state.metrics.streams_open);
    let (mut conn, sent) = loop {
        let mut conn = match connection(session, route_id, reuse).await {
            Ok(conn) => conn,
            Err(reason) => return Err(Failure::unsent(unavailable(reason), req)),
        };
        let sent = tokio::select! {
            sent = timeout(state.config.response_timeout(), conn.sender.try_send_request(req)) => sent,
            // Replaced while waiting for the head (see `Session::replaced`):
            // nothing came back, so a safe request is sent again elsewhere.
            () = session.replaced.cancelled() => {
                return Err(Failure {
                    error: unavailable("the session was replaced by a newer one of the relay".into()),
                    unsent: None,
                    maybe_in_progress: false,
                    stale: false,
                    refused: false,
                });
            }
        };
        match sent {
            // An idle connection the relay closed meanwhile: if the request
            // never left, take another one.
            Ok(Err(mut e)) if conn.reused => match e.take_message() {
                Some(unsent) => {
                    tracing::debug!(error = %e.into_error(), "idle tunnel connection was closed; opening another");
                    req = unsent;
                }
                None => break (conn, Ok(Err(e))),
            },
            sent => break (conn, sent),
        }
    };
    let mut resp = match sent {
        Err(_) => {
            return Err(Failure {
                error: Error::RelayTimeout {
                    route: format!("{host}{path}"),
                    secs: state.config.response_timeout().as_secs(),
                },
                unsent: None,
                maybe_in_progress: true,
                stale: false,
                refused: false,
            });
        }
        Ok(Ok(resp)) => resp,
        Ok(Err(mut e)) => {
            let unsent = e.take_message();
            let e = e.into_error();
            let closed = e.is_canceled() || e.is_incomplete_message() || e.is_closed();
            let reason = if closed {
                "the tunnel closed before the response".to_owned()
            } else {
                e.to_string()
            };
            return Err(Failure {
                error: unavailable(reason),
                unsent,
                maybe_in_progress: false,
                stale: conn.reused,
                refused: false,
            });
        }
    };
    let upgraded = tunnel_proto::http::strip_hop_by_hop(resp.headers_mut());
    // The relay answered for itself: the target was not reached (a route it
    // no longer has, a target that refused), so another relay may take it.
    // Its answer is not streamed on: the client gets a whole response of
    // the gateway's, which the tunnel connection closing under the request
    // body can't cut short.
    if let Some(refusal) = Refusal::of(resp.status(), resp.headers()) {
        return Err(Failure {
            error: Error::Refused {
                route: format!("{host}{path}"),
                refusal,
            },
            unsent: None,
            maybe_in_progress: false,
            stale: false,
            refused: true,
        });
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match (client_upgrade.take(), upgraded) {
            // Only to a protocol the client asked for and the route allows.
            (Some((asked, client)), Some(switched)) if headers::upgrade_matches(&asked, Some(&switched)) => {
                // The connection task hands the stream to the upgrade.
                conn.reused = false;
                conn.detach();
                let relay = hyper::upgrade::on(&mut resp);
                tokio::spawn(
                    async move {
                        let _in_flight = guard;
                        if let Err(e) = tunnel_proto::http::splice(client, relay).await {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    .in_current_span(),
                );
                return Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()));
            }
            _ => {
                let error = unavailable("the relay switched to a protocol the request did not ask for".into());
                return Err(Failure {
                    error,
                    unsent: None,
                    maybe_in_progress: true,
                    stale: false,
                    refused: false,
                });
            }
        }
    }
    let session = session.clone();
    Ok(resp.map(|inner| {
        RelayBody::new(inner, (session, route_id, conn), guard)
            .map_err(|e| Box::new(e) as BoxError)
            .boxed_unsync()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses() {
        let cases = [
            (Error::UnknownHost("x".into()), 404),
            (Error::NoRelay("x".into()), 502),
            (
                Error::Misdirected {
                    host: "a".into(),
                    sni: "b".into(),
                },
                421,
            ),
            (Error::MissingHost, 400),
            (
                Error::RelayTimeout {
                    route: "x/".into(),
                    secs: 1,
                },
                504,
            ),
        ];
        for (err, code) in cases {
            let resp = error_response(&err);
            assert_eq!(resp.status().as_u16(), code);
            assert_eq!(resp.headers()[X_ROUTEHUB_ERROR], err.kind());
        }
    }

    #[test]
    fn only_safe_requests_without_a_body_are_replayed() {
        use http::Method;
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(replayable(&m, false, false), "{m}");
            assert!(!replayable(&m, true, false), "{m} with a body");
            assert!(!replayable(&m, false, true), "{m} upgrading");
        }
        for m in [
            Method::PUT,
            Method::DELETE,
            Method::POST,
            Method::PATCH,
            Method::CONNECT,
        ] {
            assert!(!replayable(&m, false, false), "{m}");
        }
    }

    #[test]
    fn host_comes_from_authority_first() {
        let req = Request::builder()
            .uri("https://a.test/x")
            .header("host", "b.test")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.test"));
        let req = Request::builder()
            .uri("/x")
            .header("host", "B.test:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("b.test"));
        let req = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(request_host(&req), None);
    }
}
