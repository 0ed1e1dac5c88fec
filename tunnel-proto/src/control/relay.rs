//! The relay's side of the control session.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{Frame, Refused};
use crate::limits::dead_after;
use crate::sync::{RouteSnapshot, RouteSync};

/// Most unhealthy route ids one `Health` frame reports (it must fit a frame).
pub const MAX_HEALTH_IDS: usize = 4096;

/// Pings kept for RTT: a Pong older than these is ignored.
const PINGS_KEPT: usize = 8;

/// Silence after which the relay starts another session alongside this one
/// (1.5 heartbeats): one lost Ping is normal, two in a row rarely are, and
/// a replacement that is up before the gateway gives this one up (at 2.5)
/// loses no request.
pub fn suspect_after(heartbeat: Duration) -> Duration {
    heartbeat * 3 / 2
}

/// What the relay's driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The gateway holds the route set at `version` and serves it except
    /// `refused`. `first`: the first such ack of this session, from which
    /// the gateway routes to it (a session it replaces may stop now).
    RoutesAcked {
        version: u64,
        refused: Vec<Refused>,
        first: bool,
    },
    /// Nothing heard for [`suspect_after`]: the path may be gone. Start
    /// another session now; this one goes on until it is dead.
    Quiet,
    /// The gateway is draining: open a session elsewhere (or again). This
    /// one goes on, heartbeats included, until the gateway closes it once
    /// its streams are done.
    GatewayDraining { reason: String },
    /// The session is over: close the tunnel. `silent`: nothing was heard
    /// for 2.5 heartbeats (on QUIC, UDP is probably blocked now).
    Closed { reason: String, silent: bool },
}

/// The relay's control session: heartbeat and RTT, route sync, health,
/// GoAway both ways, dead-peer detection.
#[derive(Debug)]
pub struct RelayControl {
    heartbeat: Duration,
    last_heard: Instant,
    next_ping: Instant,
    seq: u64,
    pings: VecDeque<(u64, Instant)>,
    rtt: Option<Duration>,
    sync: RouteSync,
    routes: Arc<RouteSnapshot>,
    unhealthy: BTreeSet<u64>,
    transmit: VecDeque<Frame>,
    events: VecDeque<RelayEvent>,
    /// Set once this side said GoAway: the session ends then at the latest.
    drain_deadline: Option<Instant>,
    gateway_draining: bool,
    quiet: bool,
    acked: bool,
    closed: bool,
}

impl RelayControl {
    /// A session that starts at `now` with the `heartbeat` the gateway's
    /// `Welcome` asked for: the whole route set and the health go first.
    pub fn new(heartbeat: Duration, routes: Arc<RouteSnapshot>, unhealthy: BTreeSet<u64>, now: Instant) -> Self {
        let mut c = RelayControl {
            heartbeat,
            last_heard: now,
            next_ping: now,
            seq: 0,
            pings: VecDeque::with_capacity(PINGS_KEPT),
            rtt: None,
            sync: RouteSync::new(),
            routes,
            unhealthy,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            drain_deadline: None,
            gateway_draining: false,
            quiet: false,
            acked: false,
            closed: false,
        };
        c.send_everything(now);
        c
    }

    fn send_everything(&mut self, now: Instant) {
        self.transmit.extend(self.sync.full(self.routes.clone(), now));
        self.transmit.push_back(health_frame(&self.unhealthy));
    }

    fn close(&mut self, reason: String, silent: bool) {
        if !self.closed {
            self.closed = true;
            self.transmit.clear();
            self.events.push_back(RelayEvent::Closed { reason, silent });
        }
    }

    /// A frame from the gateway.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.closed {
            return;
        }
        self.last_heard = now;
        self.quiet = false;
        match frame {
            Frame::Pong { seq } => {
                if let Some(pos) = self.pings.iter().position(|(s, _)| *s == seq) {
                    self.rtt = Some(now.saturating_duration_since(self.pings[pos].1));
                    self.pings.drain(..=pos);
                }
            }
            Frame::RoutesAck {
                version,
                in_sync,
                refused,
            } => {
                if in_sync {
                    let first = !self.acked;
                    self.acked = true;
                    self.events.push_back(RelayEvent::RoutesAcked {
                        version,
                        refused,
                        first,
                    });
                }
                if self.sync.on_ack(version, in_sync, now) {
                    self.send_everything(now);
                }
            }
            Frame::GoAway { reason } => {
                if !self.gateway_draining {
                    self.gateway_draining = true;
                    self.events.push_back(RelayEvent::GatewayDraining { reason });
                }
            }
            other => self.close(format!("unexpected {} frame from the gateway", other.name()), false),
        }
    }

    /// Wakes the machine at (or after) [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let silence = now.saturating_duration_since(self.last_heard);
        if silence >= dead_after(self.heartbeat) {
            return self.close(format!("gateway silent for {silence:?}"), true);
        }
        if let Some(deadline) = self.drain_deadline
            && now >= deadline
        {
            return self.close("drain deadline reached with streams still open".into(), false);
        }
        if !self.quiet && silence >= suspect_after(self.heartbeat) {
            self.quiet = true;
            self.events.push_back(RelayEvent::Quiet);
        }
        if now >= self.next_ping {
            self.seq += 1;
            if self.pings.len() == PINGS_KEPT {
                self.pings.pop_front();
            }
            self.pings.push_back((self.seq, now));
            let (routes_version, routes_checksum) = self.sync.announced();
            self.transmit.push_back(Frame::Ping {
                seq: self.seq,
                rtt_micros: self.rtt.map_or(0, |r| r.as_micros().min(u32::MAX as u128) as u32),
                routes_version,
                routes_checksum,
            });
            // Late wake-ups delay the next ping rather than bunch pings up.
            self.next_ping = now + self.heartbeat;
        }
    }

    /// The relay's route set changed.
    pub fn routes_changed(&mut self, routes: Arc<RouteSnapshot>, now: Instant) {
        if self.closed {
            return;
        }
        self.routes = routes;
        let frames = self.sync.update(self.routes.clone(), now);
        self.transmit.extend(frames);
    }

    /// The set of routes failing their health check changed.
    pub fn health_changed(&mut self, unhealthy: BTreeSet<u64>) {
        if self.closed || unhealthy == self.unhealthy {
            return;
        }
        self.unhealthy = unhealthy;
        self.transmit.push_back(health_frame(&self.unhealthy));
    }

    /// This relay takes no new streams on the session (it shuts down, or
    /// a newer session replaces this one): says GoAway, and goes on until
    /// the gateway closes the session or `deadline`.
    pub fn go_away(&mut self, reason: &str, deadline: Instant) {
        if self.closed || self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(deadline);
        self.transmit.push_back(Frame::GoAway { reason: reason.into() });
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None`
    /// once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut at = self.next_ping.min(self.last_heard + dead_after(self.heartbeat));
        if !self.quiet {
            at = at.min(self.last_heard + suspect_after(self.heartbeat));
        }
        if let Some(deadline) = self.drain_deadline {
            at = at.min(deadline);
        }
        Some(at)
    }

    /// The route set this session announces.
    pub fn routes(&self) -> &Arc<RouteSnapshot> {
        &self.routes
    }

    /// The last measured round trip to the gateway.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Whether either side said GoAway.
    pub fn is_draining(&self) -> bool {
        self.gateway_draining || self.drain_deadline.is_some()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

fn health_frame(unhealthy: &BTreeSet<u64>) -> Frame {
    if unhealthy.len() > MAX_HEALTH_IDS {
        tracing::warn!(
            count = unhealthy.len(),
            "more unhealthy routes than one frame reports; gateways see the first {MAX_HEALTH_IDS}"
        );
    }
    Frame::Health {
        unhealthy: unhealthy.iter().take(MAX_HEALTH_IDS).copied().collect(),
    }
}
