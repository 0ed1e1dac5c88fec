//! The gateway's side of the control session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::frame::{Frame, Refused};
use crate::limits::dead_after;
use crate::routes::RouteSpec;
use crate::sync::{Applied, RouteState};

/// What the gateway's driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// A heartbeat arrived, with the relay's last measured RTT.
    Heartbeat { rtt: Option<Duration> },
    /// The relay's route set is now `specs` (at `version`): authorize and
    /// install it, then call
    /// [`routes_installed`](GatewayControl::routes_installed).
    Routes {
        version: u64,
        specs: Vec<RouteSpec>,
        in_sync: bool,
    },
    /// Route ids failing their health check on the relay, all of them.
    Health { unhealthy: Vec<u64> },
    /// The relay said GoAway: route no new request to the session.
    RelayDraining { reason: String },
    /// The session is over: close the tunnel.
    Closed { reason: String },
}

/// The gateway's control session: answers heartbeats and finds drift,
/// applies route updates, watches the relay's liveness, and ends a
/// draining session once its last stream is done.
#[derive(Debug)]
pub struct GatewayControl {
    heartbeat: Duration,
    last_heard: Instant,
    routes: RouteState,
    /// A route update waits for its ack.
    installing: bool,
    transmit: VecDeque<Frame>,
    events: VecDeque<GatewayEvent>,
    relay_draining: bool,
    /// Set once this side said GoAway: the session ends then at the latest.
    drain_deadline: Option<Instant>,
    /// No stream is in flight on the session, as the driver last said
    /// (until it says, a session counts as busy).
    idle: bool,
    closed: bool,
}

impl GatewayControl {
    /// A session whose `Welcome` (with `heartbeat`) went out at `now`.
    pub fn new(heartbeat: Duration, now: Instant) -> Self {
        GatewayControl {
            heartbeat,
            last_heard: now,
            routes: RouteState::new(),
            installing: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            relay_draining: false,
            drain_deadline: None,
            idle: false,
            closed: false,
        }
    }

    fn close(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(GatewayEvent::Closed { reason });
        }
    }

    fn draining(&self) -> bool {
        self.relay_draining || self.drain_deadline.is_some()
    }

    /// A frame from the relay.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.closed {
            return;
        }
        self.last_heard = now;
        match frame {
            Frame::Ping {
                seq,
                rtt_micros,
                routes_version,
                routes_checksum,
            } => {
                let rtt = (rtt_micros > 0).then(|| Duration::from_micros(rtt_micros.into()));
                self.events.push_back(GatewayEvent::Heartbeat { rtt });
                // Drift (a lost or misapplied update): ask for everything.
                // Not while an update waits for its ack: that ack settles it.
                if !self.installing && !self.routes.agrees(routes_version, &routes_checksum) {
                    tracing::info!(
                        ours = self.routes.version,
                        theirs = routes_version,
                        "route set out of sync"
                    );
                    self.transmit.push_back(Frame::RoutesAck {
                        version: self.routes.version,
                        in_sync: false,
                        refused: Vec::new(),
                    });
                }
                self.transmit.push_back(Frame::Pong { seq });
            }
            Frame::Routes(update) => match self.routes.apply(update) {
                Err(e) => self.close(format!("bad route update: {e}")),
                Ok(Applied::Pending) => {}
                Ok(Applied::Gap | Applied::Mismatch) => {
                    // Nothing installed: the table keeps the set it had.
                    self.transmit.push_back(Frame::RoutesAck {
                        version: self.routes.version,
                        in_sync: false,
                        refused: Vec::new(),
                    });
                }
                Ok(Applied::Changed { in_sync }) => {
                    self.installing = true;
                    self.events.push_back(GatewayEvent::Routes {
                        version: self.routes.version,
                        specs: self.routes.specs(),
                        in_sync,
                    });
                }
            },
            Frame::Health { unhealthy } => self.events.push_back(GatewayEvent::Health { unhealthy }),
            Frame::GoAway { reason } => {
                // The session ends once the driver says no stream is in
                // flight ([`set_idle`](Self::set_idle)).
                if !self.relay_draining {
                    self.relay_draining = true;
                    self.events.push_back(GatewayEvent::RelayDraining { reason });
                }
            }
            other => self.close(format!("unexpected {} frame", other.name())),
        }
    }

    /// The route set of a [`GatewayEvent::Routes`] is installed; `refused`
    /// are the routes the gateway won't serve.
    pub fn routes_installed(&mut self, version: u64, in_sync: bool, refused: Vec<Refused>) {
        if self.closed {
            return;
        }
        self.installing = false;
        self.transmit.push_back(Frame::RoutesAck {
            version,
            in_sync,
            refused,
        });
    }

    /// Wakes the machine at (or after) [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let silence = now.saturating_duration_since(self.last_heard);
        if silence >= dead_after(self.heartbeat) {
            return self.close(format!("no heartbeat for {silence:?}"));
        }
        if let Some(deadline) = self.drain_deadline
            && now >= deadline
        {
            self.close("drain deadline reached with streams still open".into());
        }
    }

    /// Whether streams are in flight on the session. A draining session
    /// ends when the last one is done: only this side knows when that is.
    pub fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
        self.end_if_drained();
    }

    fn end_if_drained(&mut self) {
        if self.idle && self.draining() {
            self.close("drained".into());
        }
    }

    /// This gateway shuts down: says GoAway, takes no new stream, and ends
    /// the session once its streams are done or at `deadline`.
    pub fn go_away(&mut self, reason: &str, deadline: Instant) {
        if self.closed || self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(deadline);
        self.transmit.push_back(Frame::GoAway { reason: reason.into() });
        self.end_if_drained();
    }

    /// Drops one route from this side's copy without telling the relay,
    /// to test that drift is found and repaired.
    pub fn dangerous_forget_a_route(&mut self) {
        if let Some(first) = self.routes.specs().first() {
            self.routes.forget(first.id);
        }
    }

    /// The route set as received (version, routes).
    pub fn routes(&self) -> &RouteState {
        &self.routes
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None`
    /// once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let dead = self.last_heard + dead_after(self.heartbeat);
        Some(self.drain_deadline.map_or(dead, |d| d.min(dead)))
    }

    pub fn is_draining(&self) -> bool {
        self.draining()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
