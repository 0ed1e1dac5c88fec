//! Drives one relay session's control stream: moves frames between the
//! stream and [`GatewayControl`], wakes it on time, and carries out its
//! events on the registry, until the session ends.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until};
use tunnel_proto::TunnelStream;
use tunnel_proto::control::{GatewayControl, GatewayEvent};
use tunnel_proto::io::{spawn_frame_reader, write_frame_within};
use tunnel_proto::limits::dead_after;

use crate::State;
use crate::metrics::TransportLabel;
use crate::session::Session;

/// Runs a session whose handshake just succeeded until it ends, then
/// closes its tunnel.
pub(crate) async fn run(session: Arc<Session>, ctrl: TunnelStream, state: Arc<State>) {
    let transport = TransportLabel {
        transport: session.tunnel.transport().as_str(),
    };
    state.registry.add(session.clone());
    state.metrics.sessions.get_or_create(&transport).inc();
    tracing::info!(transport = %session.tunnel.transport(), "relay connected");
    let reason = drive(&session, ctrl, &state).await;
    state.registry.remove(session.id);
    state.metrics.sessions.get_or_create(&transport).dec();
    tracing::info!(%reason, "relay session ended");
    session.tunnel.close(&reason);
    session.pool.clear();
}

/// The control loop; returns why the session ended.
async fn drive(session: &Arc<Session>, ctrl: TunnelStream, state: &State) -> String {
    let heartbeat = state.config.heartbeat();
    // A peer that stops reading its control stream must not stall this
    // loop for longer than it takes to call the session dead.
    let write_limit = dead_after(heartbeat);
    let (rd, mut wr) = tokio::io::split(ctrl);
    let mut frames = spawn_frame_reader(rd);
    let mut control = GatewayControl::new(heartbeat, Instant::now().into_std());
    let mut going_away = false;
    loop {
        // Events first: carrying them out may queue frames (an ack).
        while let Some(event) = control.poll_event() {
            match event {
                GatewayEvent::Heartbeat { rtt } => {
                    session.pool.sweep();
                    if let Some(rtt) = rtt {
                        state.metrics.relay_rtt.observe(rtt.as_secs_f64());
                    }
                }
                GatewayEvent::Routes {
                    version,
                    specs,
                    in_sync,
                } => {
                    // A changed route may have a new target: no stream
                    // connected to the old one is reused.
                    session.pool.clear();
                    let refused = state.registry.install_routes(session, version, specs);
                    control.routes_installed(version, in_sync, refused);
                }
                GatewayEvent::Health { unhealthy } => {
                    state
                        .registry
                        .set_unhealthy(session.id, unhealthy.into_iter().collect());
                }
                GatewayEvent::RelayDraining { reason } => {
                    tracing::info!(%reason, "relay is draining");
                    state.registry.set_draining(session.id);
                    control.set_idle(session.in_flight() == 0);
                }
                GatewayEvent::Closed { reason } => {
                    // What the machine still had to say (a GoAway) goes first.
                    while let Some(frame) = control.poll_transmit() {
                        let _ = write_frame_within(&mut wr, &frame, write_limit).await;
                    }
                    return reason;
                }
            }
        }
        while let Some(frame) = control.poll_transmit() {
            if let Err(e) = write_frame_within(&mut wr, &frame, write_limit).await {
                return format!("control stream error: {e}");
            }
        }
        let wake = control
            .poll_timeout()
            .map_or_else(|| Instant::now() + write_limit, Instant::from_std);
        tokio::select! {
            _ = sleep_until(wake) => control.handle_timeout(Instant::now().into_std()),
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    tracing::trace!(frame = frame.name(), "control frame in");
                    session.heard();
                    control.handle_frame(frame, Instant::now().into_std())
                }
                Some(Err(e)) => return format!("control stream error: {e}"),
                None => return "relay closed the control stream".into(),
            },
            e = session.tunnel.closed() => return e.to_string(),
            _ = state.shutdown.cancelled(), if !going_away => {
                going_away = true;
                control.set_idle(session.in_flight() == 0);
                let deadline = Instant::now() + state.config.drain_timeout();
                control.go_away("gateway shutting down", deadline.into_std());
            }
            _ = state.stopped.cancelled() => return "gateway stopped".into(),
            // A draining session ends once its last response is through.
            _ = session.wait_idle(), if control.is_draining() => control.set_idle(true),
            _ = session.drift.notified() => control.dangerous_forget_a_route(),
        }
    }
}
