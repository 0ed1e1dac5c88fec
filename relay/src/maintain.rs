//! Keeping a session with each gateway: connect (QUIC and TCP raced),
//! run the session, reconnect with backoff when it is lost, and let a
//! newer session take over while the older one drains.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use tunnel_proto::Transport;

use crate::backoff::Reconnect;
use crate::gateway_addr::GatewayAddr;
use crate::handoff::{Ended, Next, TakeOver};
use crate::session;
use crate::shared::Shared;

/// Starts keeping a session with a configured `gateway` unless one is
/// kept already.
pub(crate) fn join(shared: &Arc<Shared>, gateway: GatewayAddr) {
    if shared.book().add_configured(&gateway.to_string()) {
        spawn_maintainer(shared, gateway, false);
    }
}

/// `from`'s `Welcome` listed `peers`: keeps sessions with the new ones
/// (bounded: see [`GatewayBook::listed`](crate::gateways::GatewayBook::listed)).
fn join_peers(shared: &Arc<Shared>, from: &str, peers: &[String]) {
    let mut addrs = BTreeMap::new();
    for peer in peers {
        match GatewayAddr::parse(peer, shared.server_name.as_deref()) {
            Ok(addr) => {
                addrs.insert(addr.to_string(), addr);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "ignoring a peer gateway"),
        }
    }
    let names: Vec<String> = addrs.keys().cloned().collect();
    let join = shared.book().listed(from, &names);
    for name in join {
        if let Some(addr) = addrs.remove(&name) {
            spawn_maintainer(shared, addr, true);
        }
    }
}

fn spawn_maintainer(shared: &Arc<Shared>, gateway: GatewayAddr, peer: bool) {
    let span = tracing::info_span!("gateway", name = %gateway, peer);
    shared
        .maintainers
        .spawn(maintain(shared.clone(), gateway, peer).instrument(span));
}

/// Keeps a session with one gateway until shutdown (or, for a `peer`,
/// until it is forgotten: see
/// [`GatewayBook::forget_if_gone`](crate::gateways::GatewayBook::forget_if_gone)).
async fn maintain(shared: Arc<Shared>, gateway: GatewayAddr, peer: bool) {
    let name = gateway.to_string();
    let mut reconnect = Reconnect::default();
    // Since when no attempt has got through.
    let mut unreachable_since: Option<Instant> = None;
    let mut quic_suspect = false;
    let mut pending: Option<TakeOver> = None;
    loop {
        let (attempt, routes_in_place) = match pending.take() {
            Some(t) => (Ok(t.est), Some(t.routes_in_place)),
            None => {
                let hostnames = shared.proxy.routes.hostnames();
                let establish =
                    shared
                        .dialer
                        .establish(&shared.key, shared.instance, hostnames, &gateway, quic_suspect);
                let attempt = tokio::select! {
                    r = establish => r,
                    // An unreachable gateway must not hold up a shutdown
                    // for a connect and a handshake timeout.
                    _ = shared.shutdown.cancelled() => break,
                };
                (attempt, None)
            }
        };
        match attempt {
            Ok(est) => {
                unreachable_since = None;
                let started = Instant::now();
                // On TCP (it won, or QUIC was suspect) the session keeps
                // probing QUIC; a new session after this one races both.
                quic_suspect = est.tunnel.transport() == Transport::Tcp;
                join_peers(&shared, &name, &est.welcome.peers);
                let span =
                    tracing::info_span!("session", id = est.welcome.session_id, transport = %est.tunnel.transport());
                let (next_tx, mut next_rx) = mpsc::channel(1);
                let mut session = Box::pin(
                    session::run(shared.clone(), gateway.clone(), est, routes_in_place, next_tx).instrument(span),
                );
                let ended = tokio::select! {
                    ended = &mut session => ended,
                    Some(next) = next_rx.recv() => {
                        // The session drains on in the background while the
                        // next one starts, with no backoff: nothing was lost.
                        shared.maintainers.spawn(session);
                        if let Next::TakeOver(t) = next {
                            pending = Some(*t);
                        }
                        continue;
                    }
                };
                // It may have handed over just as it ended.
                if let Ok(Next::TakeOver(t)) = next_rx.try_recv() {
                    pending = Some(*t);
                    continue;
                }
                match ended {
                    Ended::Shutdown => break,
                    Ended::Lost { quic_silent } => quic_suspect |= quic_silent,
                }
                reconnect.session_ended(started.elapsed());
            }
            Err(e) => {
                reconnect.attempt_failed(e.is_retryable());
                tracing::warn!(error = %e, "can't connect to the gateway");
                shared.set_status(&name, |g| g.last_error = Some(e.to_string()));
                let away = unreachable_since.get_or_insert_with(Instant::now).elapsed();
                if peer && shared.book().forget_if_gone(&name, away) {
                    tracing::info!(?away, "peer gateway unreachable and no longer listed: forgotten");
                    shared.status.send_modify(|s| {
                        s.remove(&name);
                    });
                    break;
                }
            }
        }
        if shared.shutdown.is_cancelled() || !reconnect.wait(&shared.shutdown).await {
            break;
        }
    }
}
