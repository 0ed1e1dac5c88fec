//! The handle to one h2 connection: opens and accepts streams by role,
//! counts the relay's stream limit, and says when the connection ended.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::stream::{H2Stream, open, to_io};
use crate::error::{Error, Result};
use crate::handshake::Exporter;
use crate::limits::MAX_STREAMS_PER_SESSION;

/// Streams the gateway may have open: the relay's limit. Opens beyond it
/// wait (callers bound the wait) instead of queueing inside h2.
pub const OPEN_PERMITS: usize = MAX_STREAMS_PER_SESSION as usize;

/// What one side of the connection does with streams.
pub(super) enum Role {
    /// h2 client: opens every stream. `control` is the relay's control
    /// stream, opened at once, until the gateway's session takes it.
    Gateway {
        opener: h2::client::SendRequest<Bytes>,
        control: std::sync::Mutex<Option<H2Stream>>,
    },
    /// h2 server: accepts streams; the first is the control stream.
    Relay {
        inbound: Mutex<mpsc::Receiver<H2Stream>>,
        control_taken: AtomicBool,
    },
}

/// Handle to an h2 connection driven by its own task.
pub(crate) struct H2Tunnel {
    pub(super) role: Role,
    pub(super) close: CancellationToken,
    /// `Some(reason)` once the connection task has stopped.
    pub(super) closed: watch::Receiver<Option<String>>,
    pub(super) remote: SocketAddr,
    pub(super) exporter: Exporter,
    pub(super) permits: Arc<Semaphore>,
    pub(super) waiting: AtomicUsize,
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl H2Tunnel {
    /// Gateway: waits for a permit (the relay's stream limit), then opens.
    /// Relay: returns the control stream the gateway opened for it.
    pub(crate) async fn open_stream(&self) -> Result<H2Stream> {
        match &self.role {
            Role::Gateway { opener, .. } => {
                let permit = {
                    self.waiting.fetch_add(1, Ordering::AcqRel);
                    let _waited = scopeguard(|| {
                        self.waiting.fetch_sub(1, Ordering::AcqRel);
                    });
                    self.permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| self.closed_error())?
                };
                let mut stream = open(opener.clone()).await.map_err(|e| self.h2_error(e))?;
                stream.permit = Some(permit);
                Ok(stream)
            }
            Role::Relay { inbound, control_taken } => {
                if control_taken.swap(true, Ordering::AcqRel) {
                    return Err(Error::Closed(
                        "a relay opens only its control stream on a TCP tunnel".into(),
                    ));
                }
                inbound.lock().await.recv().await.ok_or_else(|| self.closed_error())
            }
        }
    }

    pub(crate) async fn accept_stream(&self) -> Option<H2Stream> {
        match &self.role {
            Role::Gateway { control, .. } => {
                let taken = control.lock().unwrap_or_else(|e| e.into_inner()).take();
                if taken.is_some() {
                    return taken;
                }
                // The relay can open nothing else.
                self.closed().await;
                None
            }
            Role::Relay { inbound, .. } => inbound.lock().await.recv().await,
        }
    }

    pub(crate) fn at_limit(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Opens waiting for a permit right now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.close.cancel();
    }

    pub(crate) async fn closed(&self) -> Error {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(Option::is_some).await;
        self.closed_error()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    fn closed_error(&self) -> Error {
        Error::Closed(
            self.closed
                .borrow()
                .clone()
                .unwrap_or_else(|| "TCP tunnel closed".into()),
        )
    }

    fn h2_error(&self, e: h2::Error) -> Error {
        if self.is_closed() {
            return self.closed_error();
        }
        Error::Io(to_io(e))
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    pub(crate) fn exporter(&self) -> Exporter {
        self.exporter
    }
}

/// What the connection task needs to end a tunnel.
pub(super) struct Ending {
    pub(super) stop: CancellationToken,
    pub(super) closed: watch::Sender<Option<String>>,
    pub(super) permits: Arc<Semaphore>,
}

/// Runs `conn` (the connection's I/O) until it ends or the tunnel is
/// closed, then publishes why and fails every open waiting for a permit.
pub(super) fn spawn_connection<F>(conn: F, ending: Ending)
where
    F: Future<Output = Result<(), h2::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = conn => match r {
                Ok(()) => "peer closed the connection".to_owned(),
                Err(e) => format!("h2: {e}"),
            },
            _ = ending.stop.cancelled() => "closed locally".to_owned(),
        };
        // Dropping the connection closes the socket.
        let _ = ending.closed.send(Some(reason));
        ending.permits.close();
    });
}
