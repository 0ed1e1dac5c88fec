//! A client's request body on its way to a relay.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;

/// Body of a request sent to a relay: the client's, or none (a replay).
pub type TunnelBody = Either<ClientBody, Empty<Bytes>>;

/// Where a client's request body goes when the tunnel connection carrying
/// it fails before the body is done. On h2, a request body dropped
/// unfinished resets the stream, and h2 drops the response frames still
/// queued for it (or, after them, many clients take the reset for an
/// error): the client does not get the 502 the gateway sends instead. So
/// once the gateway answers the request itself, an unfinished body is read
/// to its end (bounded by [`DISCARD_LIMIT`] and [`DISCARD_TIMEOUT`]) while
/// the answer goes out, whenever its tunnel connection lets go of it.
#[derive(Debug, Clone, Default)]
pub struct Keeper(Arc<Mutex<Kept>>);

#[derive(Debug, Default)]
enum Kept {
    #[default]
    Nothing,
    /// Let go of before the request was answered.
    Body(Incoming),
    /// The request is answered: a body let go of now is discarded at once.
    Answered,
}

/// Most bytes of an unfinished request body read and dropped after the
/// gateway answered the request itself: an upload cut short past this
/// resets its stream.
pub const DISCARD_LIMIT: u64 = 16 * 1024 * 1024;
/// Longest time spent reading such a body.
pub const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);

impl Keeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gateway answers the request itself: the body, now or whenever
    /// it is let go of, is read to its end in the background.
    pub fn discard(&self) {
        if let Kept::Body(body) = std::mem::replace(&mut *self.lock(), Kept::Answered) {
            discard(body);
        }
    }

    fn keep(&self, body: Incoming) {
        let mut kept = self.lock();
        match *kept {
            Kept::Answered => discard(body),
            _ => *kept = Kept::Body(body),
        }
    }
}

fn discard(mut body: Incoming) {
    tokio::spawn(async move {
        let mut read = 0u64;
        let drained = async {
            while read < DISCARD_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIMEOUT, drained).await;
    });
}

/// A client's request body, handed to its [`Keeper`] if dropped unfinished.
#[derive(Debug)]
pub struct ClientBody {
    inner: Option<Incoming>,
    keeper: Keeper,
}

impl ClientBody {
    pub fn new(inner: Incoming, keeper: Keeper) -> Self {
        ClientBody {
            inner: Some(inner),
            keeper,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take().filter(|b| !b.is_end_stream()) {
            self.keeper.keep(inner);
        }
    }
}
