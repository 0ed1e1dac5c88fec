//! What the relay reports about its gateway sessions (admin API, CLI,
//! readiness).

use std::collections::BTreeMap;

use tunnel_proto::Transport;

/// What a relay reports about one gateway session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: u64,
    pub transport: Transport,
    /// The gateway acknowledged the current route set.
    pub routes_version_acked: Option<u64>,
    /// Routes the gateway won't serve, and why.
    pub refused: BTreeMap<u64, String>,
}

/// One gateway as the relay sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStatus {
    pub session: Option<SessionInfo>,
    /// Why the last attempt or session failed, for people and tests.
    pub last_error: Option<String>,
}

/// Gateway → status, published on every change.
pub type Status = BTreeMap<String, GatewayStatus>;

/// Of the gateways with a session, how many acknowledged route set
/// `version` or a later one: (acknowledged, connected).
pub fn acked(status: &Status, version: u64) -> (usize, usize) {
    let sessions = status.values().filter_map(|g| g.session.as_ref());
    let connected = sessions.clone().count();
    let acked = sessions
        .filter(|i| i.routes_version_acked.is_some_and(|v| v >= version))
        .count();
    (acked, connected)
}
