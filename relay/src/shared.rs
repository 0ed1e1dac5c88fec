//! What every session of one relay shares: its key and identity, the
//! proxy and routes, how to reach gateways, the status it reports and the
//! signals that stop it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel_proto::RelayKey;

use crate::connect::Dialer;
use crate::gateways::GatewayBook;
use crate::proxy::Proxy;
use crate::status::{GatewayStatus, Status};

pub(crate) struct Shared {
    pub key: RelayKey,
    /// Random per process: lets gateways replace this relay's older sessions.
    pub instance: u64,
    pub proxy: Arc<Proxy>,
    pub dialer: Dialer,
    pub server_name: Option<String>,
    pub quic_retry: Duration,
    pub shutdown: CancellationToken,
    pub drain_timeout: Duration,
    pub status: watch::Sender<Status>,
    /// Ids of routes failing their health check.
    pub unhealthy: watch::Receiver<std::collections::BTreeSet<u64>>,
    /// One `maintain` task per gateway, peers included, and the sessions
    /// that drain on after another took over.
    pub maintainers: TaskTracker,
    pub gateways: Mutex<GatewayBook>,
}

impl Shared {
    pub fn set_status(&self, gateway: &str, f: impl FnOnce(&mut GatewayStatus)) {
        self.status.send_modify(|s| f(s.entry(gateway.to_owned()).or_default()));
    }

    pub fn book(&self) -> std::sync::MutexGuard<'_, GatewayBook> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }
}
