//! A relay's response body on its way back to the client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::TunnelConn;
use crate::session::{Session, StreamGuard};

/// A response body from a relay. Counts as in flight until it is done;
/// once read to the end, its connection goes back to the session's pool.
pub struct RelayBody {
    inner: Incoming,
    done: bool,
    back: Option<(Arc<Session>, u64, TunnelConn)>,
    _in_flight: StreamGuard,
}

impl RelayBody {
    /// The body of a response that came on `back`'s connection.
    pub fn new(inner: Incoming, back: (Arc<Session>, u64, TunnelConn), in_flight: StreamGuard) -> Self {
        RelayBody {
            inner,
            done: false,
            back: Some(back),
            _in_flight: in_flight,
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.done = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // A body dropped half-read leaves its connection mid-response: it
        // closes with the handle.
        if (self.done || self.inner.is_end_stream())
            && let Some((session, route_id, conn)) = self.back.take()
        {
            session.release(route_id, conn);
        }
    }
}
