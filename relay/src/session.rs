//! Runs one established session with a gateway: moves frames between the
//! control stream and [`RelayControl`], wakes it on time, serves the
//! streams the gateway opens, and brings up the session that takes over
//! (QUIC again after a TCP fallback, or another transport when the
//! gateway goes quiet) before this one drains.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;
use tunnel_proto::control::{RelayControl, RelayEvent};
use tunnel_proto::io::{spawn_frame_reader, write_frame_within};
use tunnel_proto::limits::{MAX_HEARTBEAT, MIN_HEARTBEAT, dead_after};
use tunnel_proto::{Transport, Tunnel};

use crate::connect::{Established, TransportMode};
use crate::gateway_addr::GatewayAddr;
use crate::handoff::{Ended, Next, TakeOver};
use crate::proxy::{Proxy, serve_stream};
use crate::shared::Shared;
use crate::status::{GatewayStatus, SessionInfo};

type Attempt = Pin<Box<dyn Future<Output = crate::Result<Established>> + Send>>;

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Runs an established session until it ends. `routes_in_place` (a
/// session taking over) fires at the gateway's first in-sync `RoutesAck`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    gateway: GatewayAddr,
    est: Established,
    mut routes_in_place: Option<oneshot::Sender<()>>,
    next: mpsc::Sender<Next>,
) -> Ended {
    let Established {
        tunnel,
        ctrl,
        welcome,
        asked,
    } = est;
    let name = gateway.to_string();
    let id = welcome.session_id;
    let transport = tunnel.transport();
    // A newer session of this gateway may own the status entry now: only
    // touch it while it describes this session.
    let mine = |g: &GatewayStatus| g.session.as_ref().is_some_and(|i| i.session_id == id);
    let heartbeat = Duration::from_millis(welcome.heartbeat_ms.into()).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
    // A gateway that stops reading must not stall the loop for longer than
    // it takes to call the session dead.
    let write_limit = dead_after(heartbeat);
    tracing::info!(granted = ?welcome.granted, "connected");
    // Of what the handshake asked for: routes added since are answered by
    // route sync, route by route.
    let refused: Vec<&String> = asked.iter().filter(|h| !welcome.granted.contains(h)).collect();
    if !refused.is_empty() {
        tracing::warn!(?refused, "the gateway will not serve these hostnames for this key");
    }
    let info = SessionInfo {
        session_id: id,
        transport,
        routes_version_acked: None,
        refused: BTreeMap::new(),
    };
    shared.set_status(&name, |g| g.session = Some(info));

    let accept = tokio::spawn(accept_streams(shared.proxy.clone(), tunnel.clone()).in_current_span());
    let (rd, mut wr) = tokio::io::split(ctrl);
    let mut frames = spawn_frame_reader(rd);
    let routes = shared.proxy.routes.clone();
    let mut versions = routes.subscribe();
    let mut unhealthy = shared.unhealthy.clone();
    let initial = unhealthy.borrow_and_update().clone();
    let mut control = RelayControl::new(heartbeat, routes.snapshot().announced.clone(), initial, now());
    // On TCP, try QUIC again every `quic_retry` to move back to it.
    let probing = transport == Transport::Tcp && shared.dialer.mode == TransportMode::Auto;
    let mut probe_at = probing.then(|| Instant::now() + shared.quic_retry);
    let mut attempt: Option<Attempt> = None;
    // Set once a session took over: fires when its routes are in place.
    let mut replaced: Option<oneshot::Receiver<()>> = None;
    let mut shutting_down = false;
    let (reason, silent) = 'session: loop {
        while let Some(event) = control.poll_event() {
            match event {
                RelayEvent::RoutesAcked {
                    version,
                    refused,
                    first,
                } => {
                    for r in &refused {
                        tracing::warn!(route = r.route_id, reason = %r.reason, "gateway refused a route");
                    }
                    shared.set_status(&name, |g| {
                        if let Some(info) = g.session.as_mut().filter(|i| i.session_id == id) {
                            info.routes_version_acked = Some(version);
                            info.refused = refused.into_iter().map(|r| (r.route_id, r.reason)).collect();
                        }
                    });
                    if let (true, Some(tx)) = (first, routes_in_place.take()) {
                        let _ = tx.send(());
                    }
                }
                // Make before break: a replacement that is up before the
                // gateway gives this session up loses no request.
                RelayEvent::Quiet if attempt.is_none() && !control.is_draining() => {
                    tracing::info!("gateway quiet; bringing up another session alongside");
                    let suspect = transport == Transport::Quic;
                    attempt = Some(establish(&shared, &gateway, move |s, g, h| {
                        Box::pin(async move { s.dialer.establish(&s.key, s.instance, h, &g, suspect).await })
                    }));
                }
                RelayEvent::Quiet => {}
                RelayEvent::GatewayDraining { reason } => {
                    tracing::info!(%reason, "gateway is draining; connecting again while this session finishes");
                    (probe_at, attempt) = (None, None);
                    let _ = next.try_send(Next::Reconnect);
                }
                RelayEvent::Closed { reason, silent } => break 'session (reason, silent),
            }
        }
        while let Some(frame) = control.poll_transmit() {
            tracing::trace!(frame = frame.name(), "control frame out");
            if let Err(e) = write_frame_within(&mut wr, &frame, write_limit).await {
                break 'session (format!("control stream error: {e}"), false);
            }
        }
        let wake = control
            .poll_timeout()
            .map_or_else(|| Instant::now() + write_limit, Instant::from_std);
        tokio::select! {
            _ = sleep_until(wake) => control.handle_timeout(now()),
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    tracing::trace!(frame = frame.name(), "control frame in");
                    control.handle_frame(frame, now())
                }
                Some(Err(e)) => break (format!("control stream error: {e}"), false),
                None => break ("gateway closed the control stream".into(), false),
            },
            _ = versions.changed() => control.routes_changed(routes.snapshot().announced.clone(), now()),
            _ = unhealthy.changed() => control.health_changed(unhealthy.borrow_and_update().clone()),
            e = tunnel.closed() => break (format!("tunnel closed: {e}"), false),
            _ = sleep_until(probe_at.unwrap_or_else(Instant::now)), if probe_at.is_some() && attempt.is_none() => {
                probe_at = None;
                attempt = Some(establish(&shared, &gateway, |s, g, h| {
                    Box::pin(async move { s.dialer.establish_quic(&s.key, s.instance, h, &g).await })
                }));
            }
            r = pending_or(attempt.as_mut()), if attempt.is_some() => {
                attempt = None;
                match r {
                    Ok(est) => {
                        tracing::info!(transport = %est.tunnel.transport(), "a new session takes over once its routes are in place");
                        let (tx, rx) = oneshot::channel();
                        if next.try_send(Next::TakeOver(Box::new(TakeOver { est, routes_in_place: tx }))).is_ok() {
                            replaced = Some(rx);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no session to take over");
                        probe_at = probing.then(|| Instant::now() + shared.quic_retry);
                    }
                }
            }
            done = pending_or(replaced.as_mut()), if replaced.is_some() => {
                replaced = None;
                match done {
                    // The gateway routes to the new session already (its
                    // routes retire this one there too): say so, and finish
                    // what is in flight here.
                    Ok(()) => control.go_away("another session took over", (Instant::now() + shared.drain_timeout).into_std()),
                    Err(_) => {
                        tracing::info!("the new session ended before taking over; this one goes on");
                        probe_at = probing.then(|| Instant::now() + shared.quic_retry);
                    }
                }
            }
            _ = shared.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                // The gateway closes the tunnel once the last response has
                // reached it; heartbeats go on until then.
                control.go_away("relay shutting down", (Instant::now() + shared.drain_timeout).into_std());
            }
        }
    };
    // Ending a drain this side or the gateway asked for is no failure.
    let failed = (!control.is_draining()).then(|| reason.clone());
    tracing::info!(%reason, "session ended");
    shared.set_status(&name, |g| {
        if mine(g) {
            g.session = None;
            g.last_error = failed;
        }
    });
    tunnel.close(&reason);
    accept.abort();
    if shutting_down {
        Ended::Shutdown
    } else {
        Ended::Lost {
            quic_silent: silent && transport == Transport::Quic,
        }
    }
}

/// Awaits `f` if there is one; never resolves otherwise.
async fn pending_or<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// An attempt at the session to take over, with the hostnames to ask for now.
fn establish(
    shared: &Arc<Shared>,
    gateway: &GatewayAddr,
    connect: impl FnOnce(Arc<Shared>, GatewayAddr, Vec<String>) -> Attempt,
) -> Attempt {
    let hostnames = shared.proxy.routes.hostnames();
    connect(shared.clone(), gateway.clone(), hostnames)
}

async fn accept_streams(proxy: Arc<Proxy>, tunnel: Tunnel) {
    loop {
        match tunnel.accept_stream().await {
            Ok(Some(stream)) => {
                tokio::spawn(serve_stream(proxy.clone(), stream).in_current_span());
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "stream accept ended");
                break;
            }
        }
    }
}
