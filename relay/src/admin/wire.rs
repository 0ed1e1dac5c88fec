//! Small pieces every `/api/` handler uses: JSON answers, JSON bodies
//! with a size limit, query parameters.

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{Body, error_response, full};

pub(super) fn ok_json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// The body as JSON, at most `limit` bytes.
pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            error_response(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {limit} bytes"))
        } else {
            error_response(StatusCode::BAD_REQUEST, format!("can't read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

pub(super) fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

/// A `text/event-stream` answer of `chunks`, never cached.
pub(super) fn event_stream(
    chunks: impl futures_util::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, super::BoxError>> + Send + 'static,
) -> Response<Body> {
    use futures_util::StreamExt;
    let mut resp = Response::new(BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks.boxed())));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}
