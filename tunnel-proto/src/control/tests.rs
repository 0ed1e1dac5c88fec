//! Both machines against each other in virtual time, through two links
//! that delay, drop or hold frames (the way quinn-proto tests its
//! `Connection` with a `Pair`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::frame::{Frame, Hello, Refused, RoutesUpdate, UpdateKind};
use crate::limits::{DEFAULT_HEARTBEAT, dead_after};
use crate::routes::RouteSpec;
use crate::sync::{RESYNC_INTERVAL, RouteSnapshot};

const HB: Duration = DEFAULT_HEARTBEAT;

fn spec(id: u64) -> RouteSpec {
    RouteSpec {
        id,
        host: format!("h{id}.test"),
        path_prefix: "/".into(),
        priority: 0,
        policy: None,
    }
}

fn snapshot(version: u64, ids: impl IntoIterator<Item = u64>) -> Arc<RouteSnapshot> {
    Arc::new(RouteSnapshot::new(version, ids.into_iter().map(spec).collect()))
}

/// One direction of the transport: frames arrive `delay` after they were
/// sent, in order, unless `drop` says otherwise; `held` stops delivery (a
/// blackhole) without losing order.
struct Link {
    queue: VecDeque<(Instant, Frame)>,
    delay: Duration,
    blackhole: bool,
    /// Drops the frames it returns true for.
    drop: Box<dyn FnMut(&Frame) -> bool>,
    sent: Vec<Frame>,
}

impl Link {
    fn new() -> Self {
        Link {
            queue: VecDeque::new(),
            delay: Duration::from_millis(5),
            blackhole: false,
            drop: Box::new(|_| false),
            sent: Vec::new(),
        }
    }

    fn send(&mut self, now: Instant, frame: Frame) {
        self.sent.push(frame.clone());
        if self.blackhole || (self.drop)(&frame) {
            return;
        }
        // In order: never before the frame ahead of it.
        let at = self
            .queue
            .back()
            .map_or(now + self.delay, |(t, _)| (*t).max(now + self.delay));
        self.queue.push_back((at, frame));
    }

    fn due(&mut self, now: Instant) -> Option<Frame> {
        match self.queue.front() {
            Some((at, _)) if *at <= now => self.queue.pop_front().map(|(_, f)| f),
            _ => None,
        }
    }
}

struct Pair {
    now: Instant,
    start: Instant,
    relay: RelayControl,
    gateway: GatewayControl,
    to_gateway: Link,
    to_relay: Link,
    relay_events: Vec<(Duration, RelayEvent)>,
    gateway_events: Vec<(Duration, GatewayEvent)>,
    /// Routes the gateway refuses when it installs a set.
    refuse: BTreeSet<u64>,
    /// Whether streams are in flight on the gateway's side.
    busy: bool,
    /// What the gateway serves now.
    served: Vec<RouteSpec>,
}

impl Pair {
    fn new(routes: Arc<RouteSnapshot>) -> Pair {
        Pair::new_at(routes, Instant::now())
    }

    /// A pair whose session starts at `now`.
    fn new_at(routes: Arc<RouteSnapshot>, now: Instant) -> Pair {
        Pair {
            now,
            start: now,
            relay: RelayControl::new(HB, routes, BTreeSet::new(), now),
            gateway: GatewayControl::new(HB, now),
            to_gateway: Link::new(),
            to_relay: Link::new(),
            relay_events: Vec::new(),
            gateway_events: Vec::new(),
            refuse: BTreeSet::new(),
            busy: false,
            served: Vec::new(),
        }
    }

    /// Streams in flight on the gateway's side, or none.
    fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
        self.gateway.set_idle(!busy);
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves frames and events until nothing more happens at `now`.
    fn settle(&mut self) {
        self.gateway.set_idle(!self.busy);
        loop {
            let mut moved = false;
            while let Some(f) = self.relay.poll_transmit() {
                self.to_gateway.send(self.now, f);
                moved = true;
            }
            while let Some(f) = self.gateway.poll_transmit() {
                self.to_relay.send(self.now, f);
                moved = true;
            }
            while let Some(f) = self.to_gateway.due(self.now) {
                self.gateway.handle_frame(f, self.now);
                moved = true;
            }
            while let Some(f) = self.to_relay.due(self.now) {
                self.relay.handle_frame(f, self.now);
                moved = true;
            }
            while let Some(e) = self.relay.poll_event() {
                self.relay_events.push((self.elapsed(), e));
                moved = true;
            }
            while let Some(e) = self.gateway.poll_event() {
                if let GatewayEvent::Routes {
                    version,
                    specs,
                    in_sync,
                } = &e
                {
                    let refused: Vec<Refused> = specs
                        .iter()
                        .filter(|s| self.refuse.contains(&s.id))
                        .map(|s| Refused {
                            route_id: s.id,
                            reason: "not yours".into(),
                        })
                        .collect();
                    self.served = specs.iter().filter(|s| !self.refuse.contains(&s.id)).cloned().collect();
                    self.gateway.routes_installed(*version, *in_sync, refused);
                }
                self.gateway_events.push((self.elapsed(), e));
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs in virtual time until `until` from the start.
    fn run_until(&mut self, until: Duration) {
        let end = self.start + until;
        loop {
            self.settle();
            let next = [
                self.relay.poll_timeout(),
                self.gateway.poll_timeout(),
                self.to_gateway.queue.front().map(|(t, _)| *t),
                self.to_relay.queue.front().map(|(t, _)| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end.max(self.now);
                self.settle();
                return;
            };
            self.now = next.max(self.now);
            if self.relay.poll_timeout().is_some_and(|t| t <= self.now) {
                self.relay.handle_timeout(self.now);
            }
            if self.gateway.poll_timeout().is_some_and(|t| t <= self.now) {
                self.gateway.handle_timeout(self.now);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.elapsed() + d;
        self.run_until(until);
    }

    fn relay_closed(&self) -> Option<&(Duration, RelayEvent)> {
        self.relay_events
            .iter()
            .find(|(_, e)| matches!(e, RelayEvent::Closed { .. }))
    }

    fn gateway_closed(&self) -> Option<&(Duration, GatewayEvent)> {
        self.gateway_events
            .iter()
            .find(|(_, e)| matches!(e, GatewayEvent::Closed { .. }))
    }

    fn in_sync(&self) -> bool {
        let relay = self.relay_routes();
        self.gateway.routes().version == relay.version && self.gateway.routes().specs() == relay.specs
    }

    fn relay_routes(&self) -> Arc<RouteSnapshot> {
        self.relay.routes().clone()
    }

    fn pings(&self) -> usize {
        self.to_gateway
            .sent
            .iter()
            .filter(|f| matches!(f, Frame::Ping { .. }))
            .count()
    }

    fn full_sets(&self) -> usize {
        self.to_gateway
            .sent
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Frame::Routes(RoutesUpdate {
                        kind: UpdateKind::Full { first: true, .. },
                        ..
                    })
                )
            })
            .count()
    }
}

#[test]
fn a_new_session_sends_its_routes_and_the_first_ack_says_so() {
    let mut p = Pair::new(snapshot(3, [1, 2]));
    p.run_for(Duration::from_millis(50));
    assert!(p.in_sync());
    assert_eq!(p.served, [spec(1), spec(2)]);
    assert_eq!(
        p.relay_events[0].1,
        RelayEvent::RoutesAcked {
            version: 3,
            refused: vec![],
            first: true
        }
    );
    assert!(
        matches!(p.to_gateway.sent[1], Frame::Health { .. }),
        "health follows the routes"
    );
}

#[test]
fn a_healthy_session_lives_for_hours_with_one_ping_per_heartbeat() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(3600));
    assert!(p.relay_closed().is_none() && p.gateway_closed().is_none());
    let pings = p.pings();
    assert!((3600..=3602).contains(&pings), "{pings} pings in an hour");
    assert_eq!(p.relay.rtt(), Some(Duration::from_millis(10)), "two 5 ms hops");
    assert!(!p.relay_events.iter().any(|(_, e)| *e == RelayEvent::Quiet));
}

#[test]
fn a_silent_relay_is_dead_after_two_and_a_half_heartbeats() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(10));
    p.to_gateway.blackhole = true;
    let went_silent = p.elapsed();
    p.run_for(Duration::from_secs(10));
    let (at, e) = p.gateway_closed().expect("declared dead");
    assert!(
        matches!(e, GatewayEvent::Closed { reason } if reason.contains("no heartbeat")),
        "{e:?}"
    );
    // Dead 2.5 heartbeats after the last ping that got through (one may
    // have been on its way when the blackhole began).
    let silence = *at - went_silent;
    let hop = p.to_gateway.delay;
    assert!(
        silence <= dead_after(HB) + hop && silence > dead_after(HB) - HB,
        "{silence:?}"
    );
}

#[test]
fn a_silent_gateway_is_suspected_at_one_and_a_half_heartbeats_and_dead_at_two_and_a_half() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(5));
    p.to_relay.blackhole = true;
    let went_silent = p.elapsed();
    p.run_for(Duration::from_secs(10));
    let quiet = p
        .relay_events
        .iter()
        .find(|(_, e)| *e == RelayEvent::Quiet)
        .expect("suspected")
        .0;
    let (dead, e) = p.relay_closed().expect("dead");
    assert!(matches!(e, RelayEvent::Closed { silent: true, .. }), "{e:?}");
    let heard = went_silent - Duration::from_secs(1);
    assert!(
        quiet - heard >= suspect_after(HB) && quiet - went_silent <= suspect_after(HB),
        "{quiet:?}"
    );
    assert!(
        *dead - heard >= dead_after(HB) && *dead - went_silent <= dead_after(HB),
        "{dead:?}"
    );
    assert!(quiet < *dead);
}

#[test]
fn one_lost_ping_is_forgiven() {
    let mut p = Pair::new(snapshot(1, [1]));
    let mut n = 0;
    p.to_gateway.drop = Box::new(move |f| {
        if matches!(f, Frame::Ping { .. }) {
            n += 1;
            return n % 10 == 5;
        }
        false
    });
    p.run_for(Duration::from_secs(120));
    assert!(p.relay_closed().is_none() && p.gateway_closed().is_none());
}

#[test]
fn quiet_clears_when_the_gateway_is_heard_again() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_millis(3500));
    // One Pong lost: quiet at 1.5 heartbeats, alive when the next comes.
    p.to_relay.blackhole = true;
    p.run_for(Duration::from_millis(1100));
    assert!(p.relay_events.iter().any(|(_, e)| *e == RelayEvent::Quiet));
    p.to_relay.blackhole = false;
    p.run_for(Duration::from_secs(30));
    assert!(p.relay_closed().is_none(), "{:?}", p.relay_events);
    assert!(p.gateway_closed().is_none());
}

#[test]
fn a_route_change_goes_as_a_delta_and_is_acked() {
    let mut p = Pair::new(snapshot(1, [1, 2]));
    p.run_for(Duration::from_millis(100));
    p.relay.routes_changed(snapshot(2, [2, 3]), p.now);
    p.run_for(Duration::from_millis(100));
    assert!(p.in_sync());
    assert_eq!(p.served, [spec(2), spec(3)]);
    assert_eq!(p.full_sets(), 1, "only the first set was full");
    assert!(p.relay_events.iter().any(|(_, e)| matches!(
        e,
        RelayEvent::RoutesAcked {
            version: 2,
            first: false,
            ..
        }
    )));
}

#[test]
fn a_lost_delta_is_found_by_the_next_heartbeat_and_repaired_with_a_full_set() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_millis(100));
    let mut dropped = false;
    p.to_gateway.drop = Box::new(move |f| {
        if !dropped
            && matches!(
                f,
                Frame::Routes(RoutesUpdate {
                    kind: UpdateKind::Delta,
                    ..
                })
            )
        {
            dropped = true;
            return true;
        }
        false
    });
    p.relay.routes_changed(snapshot(2, [1, 2]), p.now);
    p.run_for(Duration::from_millis(100));
    assert!(!p.in_sync(), "the delta was lost");
    p.run_for(HB * 2);
    assert!(p.in_sync(), "a heartbeat found the drift and a full set fixed it");
    assert_eq!(p.full_sets(), 2);
}

#[test]
fn a_delta_after_a_lost_one_is_a_gap_and_asks_for_everything() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_millis(100));
    let mut dropped = false;
    p.to_gateway.drop = Box::new(move |f| {
        if !dropped && matches!(f, Frame::Routes(_)) {
            dropped = true;
            return true;
        }
        false
    });
    p.relay.routes_changed(snapshot(2, [1, 2]), p.now);
    p.run_for(Duration::from_millis(20));
    p.relay.routes_changed(snapshot(3, [1, 2, 3]), p.now);
    p.run_for(Duration::from_millis(100));
    assert!(!p.in_sync(), "a delta over a gap is not applied");
    assert_eq!(p.served.len(), 1, "the old set is still served");
    // The gap asked for everything; it comes once the rate limit allows.
    p.run_for(RESYNC_INTERVAL + HB);
    assert!(p.in_sync());
    assert_eq!(p.served.len(), 3);
}

#[test]
fn drift_on_the_gateway_is_repaired() {
    let mut p = Pair::new(snapshot(7, [1, 2, 3]));
    p.run_for(Duration::from_millis(100));
    p.gateway.dangerous_forget_a_route();
    assert!(!p.in_sync());
    p.run_for(HB * 2);
    assert!(p.in_sync());
    assert_eq!(p.served.len(), 3);
}

#[test]
fn a_gateway_that_keeps_drifting_gets_a_full_set_at_most_every_resync_interval() {
    let mut p = Pair::new(snapshot(7, [1, 2, 3]));
    p.run_for(Duration::from_millis(100));
    for _ in 0..20 {
        p.gateway.dangerous_forget_a_route();
        p.run_for(HB);
    }
    let limit = 1 + (20 * HB.as_millis() / RESYNC_INTERVAL.as_millis()) as usize + 1;
    assert!(p.full_sets() <= limit, "{} full sets", p.full_sets());
    assert!(p.relay_closed().is_none() && p.gateway_closed().is_none());
}

#[test]
fn refused_routes_reach_the_relay_with_their_reason() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.refuse.insert(2);
    p.run_for(Duration::from_millis(100));
    p.relay.routes_changed(snapshot(2, [1, 2]), p.now);
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.served, [spec(1)]);
    let refused = p
        .relay_events
        .iter()
        .find_map(|(_, e)| match e {
            RelayEvent::RoutesAcked {
                version: 2, refused, ..
            } => Some(refused.clone()),
            _ => None,
        })
        .expect("acked");
    assert_eq!(
        refused,
        [Refused {
            route_id: 2,
            reason: "not yours".into()
        }]
    );
}

#[test]
fn a_gateway_going_away_keeps_the_session_until_the_long_request_ends() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(1));
    p.set_busy(true);
    let deadline = p.now + Duration::from_secs(30);
    p.gateway.go_away("gateway shutting down", deadline);
    p.run_for(Duration::from_secs(9));
    assert!(
        p.relay_events
            .iter()
            .any(|(_, e)| matches!(e, RelayEvent::GatewayDraining { .. }))
    );
    assert!(p.relay_closed().is_none(), "{:?}", p.relay_events);
    assert!(p.gateway_closed().is_none(), "{:?}", p.gateway_events);
    let pings_before = p.pings();
    p.run_for(Duration::from_secs(5));
    assert!(p.pings() >= pings_before + 4, "heartbeats go on while draining");
    p.set_busy(false);
    p.run_for(Duration::from_millis(1));
    let (_, e) = p.gateway_closed().expect("closed once idle");
    assert_eq!(
        *e,
        GatewayEvent::Closed {
            reason: "drained".into()
        }
    );
}

#[test]
fn requests_of_1_5_and_9_seconds_all_finish_within_the_drain_timeout() {
    for secs in [1, 5, 9] {
        let mut p = Pair::new(snapshot(1, [1]));
        p.run_for(Duration::from_millis(500));
        p.set_busy(true);
        p.gateway
            .go_away("gateway shutting down", p.now + Duration::from_secs(10));
        p.run_for(Duration::from_secs(secs));
        assert!(p.gateway_closed().is_none() && p.relay_closed().is_none(), "{secs} s");
        p.set_busy(false);
        p.run_for(Duration::from_millis(1));
        assert!(p.gateway_closed().is_some(), "{secs} s");
    }
}

#[test]
fn a_drain_ends_at_its_deadline_if_a_stream_never_does() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(1));
    p.set_busy(true);
    p.gateway
        .go_away("gateway shutting down", p.now + Duration::from_secs(10));
    p.run_for(Duration::from_secs(20));
    let (at, e) = p.gateway_closed().expect("closed");
    assert!(
        matches!(e, GatewayEvent::Closed { reason } if reason.contains("deadline")),
        "{e:?}"
    );
    assert_eq!(*at, Duration::from_secs(11));
}

#[test]
fn an_idle_gateway_going_away_closes_at_once() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(1));
    p.gateway
        .go_away("gateway shutting down", p.now + Duration::from_secs(10));
    assert!(p.gateway.is_closed());
    assert!(
        matches!(p.gateway.poll_transmit(), Some(Frame::GoAway { .. })),
        "GoAway still goes out"
    );
}

#[test]
fn a_relay_going_away_keeps_heartbeating_until_the_gateway_closes() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(1));
    p.set_busy(true);
    p.relay.go_away("relay shutting down", p.now + Duration::from_secs(10));
    p.run_for(Duration::from_secs(5));
    assert!(
        p.gateway_events
            .iter()
            .any(|(_, e)| matches!(e, GatewayEvent::RelayDraining { .. }))
    );
    assert!(p.gateway_closed().is_none() && p.relay_closed().is_none());
    p.set_busy(false);
    p.run_for(Duration::from_millis(1));
    assert!(p.gateway_closed().is_some(), "the gateway closes once idle");
}

#[test]
fn a_relay_going_away_closes_at_its_own_deadline() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_secs(1));
    p.set_busy(true);
    p.relay.go_away("relay shutting down", p.now + Duration::from_secs(3));
    p.run_for(Duration::from_secs(10));
    let (at, e) = p.relay_closed().expect("closed");
    assert!(matches!(e, RelayEvent::Closed { silent: false, .. }), "{e:?}");
    assert_eq!(*at, Duration::from_secs(4));
}

#[test]
fn a_new_session_takes_over_and_the_old_one_drains() {
    // The old session (TCP, say) serves while the new one (QUIC) gets its
    // routes in place; then the old says GoAway and ends once idle.
    let routes = snapshot(4, [1, 2]);
    let mut old = Pair::new(routes.clone());
    old.run_for(Duration::from_secs(5));
    old.set_busy(true);
    let mut new = Pair::new_at(routes, old.now);
    new.start = old.start;
    new.run_for(Duration::from_millis(100));
    let first = new
        .relay_events
        .iter()
        .any(|(_, e)| matches!(e, RelayEvent::RoutesAcked { first: true, .. }));
    assert!(first, "routes in place on the new session");
    old.run_until(new.elapsed());
    old.relay.go_away("moving to QUIC", old.now + Duration::from_secs(10));
    old.run_for(Duration::from_secs(2));
    assert!(
        old.gateway_events
            .iter()
            .any(|(_, e)| matches!(e, GatewayEvent::RelayDraining { reason } if reason == "moving to QUIC"))
    );
    assert!(old.gateway_closed().is_none(), "a request is still in flight");
    old.set_busy(false);
    old.run_for(Duration::from_millis(1));
    assert!(old.gateway_closed().is_some());
}

#[test]
fn unexpected_frames_end_the_session() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_millis(100));
    p.gateway.handle_frame(
        Frame::Hello(Hello {
            protocol_version: 1,
            public_key: [0; 32],
            instance: 0,
            hostnames: vec![],
            capabilities: vec![],
        }),
        p.now,
    );
    assert!(p.gateway.is_closed());
    let mut p = Pair::new(snapshot(1, [1]));
    p.relay.handle_frame(
        Frame::Ping {
            seq: 1,
            rtt_micros: 0,
            routes_version: 0,
            routes_checksum: [0; 32],
        },
        p.now,
    );
    assert!(p.relay.is_closed());
    assert!(p.relay.poll_transmit().is_none(), "nothing more is sent");
}

#[test]
fn a_full_set_chunk_without_its_start_is_a_violation() {
    let mut p = Pair::new(snapshot(1, [1]));
    p.run_for(Duration::from_millis(100));
    p.gateway.handle_frame(
        Frame::Routes(RoutesUpdate {
            version: 9,
            base_version: 0,
            checksum: [0; 32],
            kind: UpdateKind::Full {
                first: false,
                last: true,
            },
            upserts: vec![],
            removes: vec![],
        }),
        p.now,
    );
    let closed = p.gateway.poll_event();
    assert!(matches!(closed, Some(GatewayEvent::Closed { reason }) if reason.contains("bad route update")));
}

#[test]
fn thousands_of_routes_go_in_chunks_and_install_once() {
    let mut p = Pair::new(snapshot(1, 0..5000));
    p.run_for(Duration::from_millis(100));
    assert!(p.in_sync());
    let chunks = p
        .to_gateway
        .sent
        .iter()
        .filter(|f| matches!(f, Frame::Routes(_)))
        .count();
    assert!(chunks > 1, "{chunks}");
    let installs = p
        .gateway_events
        .iter()
        .filter(|(_, e)| matches!(e, GatewayEvent::Routes { .. }))
        .count();
    assert_eq!(installs, 1);
}

#[test]
fn health_changes_are_sent_once() {
    let mut p = Pair::new(snapshot(1, [1, 2]));
    p.run_for(Duration::from_millis(100));
    p.relay.health_changed([2].into());
    p.relay.health_changed([2].into());
    p.run_for(Duration::from_millis(100));
    let health: Vec<_> = p
        .gateway_events
        .iter()
        .filter_map(|(_, e)| match e {
            GatewayEvent::Health { unhealthy } => Some(unhealthy.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(health, [vec![], vec![2]]);
}

#[test]
fn late_wake_ups_delay_pings_rather_than_bunch_them() {
    let now = Instant::now();
    let mut relay = RelayControl::new(HB, snapshot(1, [1]), BTreeSet::new(), now);
    let pings = |relay: &mut RelayControl| {
        std::iter::from_fn(|| relay.poll_transmit())
            .filter(|f| matches!(f, Frame::Ping { .. }))
            .count()
    };
    relay.handle_timeout(now);
    assert_eq!(pings(&mut relay), 1);
    // Woken 700 ms late, and heard from meanwhile: one ping, not two.
    relay.handle_frame(Frame::Pong { seq: 1 }, now + HB);
    let late = now + HB + Duration::from_millis(700);
    relay.handle_timeout(late);
    assert_eq!(pings(&mut relay), 1);
    relay.handle_timeout(late + HB - Duration::from_millis(1));
    assert_eq!(pings(&mut relay), 0, "the next one a heartbeat after the late one");
    relay.handle_frame(Frame::Pong { seq: 2 }, late + HB - Duration::from_millis(1));
    relay.handle_timeout(late + HB);
    assert_eq!(pings(&mut relay), 1);
}

#[test]
fn stale_pongs_do_not_count_for_rtt() {
    let now = Instant::now();
    let mut relay = RelayControl::new(HB, snapshot(1, [1]), BTreeSet::new(), now);
    relay.handle_frame(Frame::Pong { seq: 42 }, now + Duration::from_millis(3));
    assert_eq!(relay.rtt(), None);
    relay.handle_timeout(now);
    relay.handle_frame(Frame::Pong { seq: 1 }, now + Duration::from_millis(7));
    assert_eq!(relay.rtt(), Some(Duration::from_millis(7)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any delays under a heartbeat, frames lost at random for a while and
    /// route changes at random moments: once the link is clean again, the
    /// gateway holds exactly the relay's set within a resync interval and
    /// a few heartbeats, and a session that lost no more than one ping in
    /// a row never died.
    #[test]
    fn route_sets_converge_under_any_interleaving(
        delay_ms in 0u64..900,
        loss in prop::collection::vec(any::<bool>(), 1..64),
        changes in prop::collection::vec((0u64..5_000, prop::collection::btree_set(0u64..40, 0..12)), 0..20),
    ) {
        let mut p = Pair::new(snapshot(1, [1]));
        p.to_gateway.delay = Duration::from_millis(delay_ms);
        p.to_relay.delay = Duration::from_millis(delay_ms / 2);
        let mut i = 0;
        let pattern = loss.clone();
        // Lose route updates and acks (never two pings in a row).
        p.to_gateway.drop = Box::new(move |f| {
            i += 1;
            matches!(f, Frame::Routes(_) | Frame::Health { .. }) && pattern[i % pattern.len()]
        });
        let mut j = 0;
        let pattern = loss;
        p.to_relay.drop = Box::new(move |f| {
            j += 1;
            matches!(f, Frame::RoutesAck { .. }) && pattern[j % pattern.len()]
        });
        let mut changes = changes;
        changes.sort_by_key(|(at, _)| *at);
        for (version, (at, ids)) in changes.into_iter().enumerate() {
            p.run_until(Duration::from_millis(at));
            p.relay.routes_changed(snapshot(version as u64 + 2, ids), p.now);
        }
        p.run_for(Duration::from_secs(2));
        p.to_gateway.drop = Box::new(|_| false);
        p.to_relay.drop = Box::new(|_| false);
        p.run_for(RESYNC_INTERVAL + HB * 4);
        prop_assert!(p.in_sync(), "gateway v{} vs relay v{}", p.gateway.routes().version, p.relay_routes().version);
        prop_assert!(p.relay_closed().is_none(), "{:?}", p.relay_events);
        prop_assert!(p.gateway_closed().is_none(), "{:?}", p.gateway_events);
    }

    /// Drains of random length, GoAway from either side at a random
    /// moment: the session stays up while a stream is in flight and until
    /// the deadline, and ends as soon as the gateway is idle.
    #[test]
    fn a_drain_ends_exactly_when_the_last_stream_or_the_deadline_does(
        relay_says in any::<bool>(),
        start_ms in 0u64..3_000,
        busy_ms in 0u64..15_000,
        deadline_ms in 1u64..12_000,
    ) {
        let mut p = Pair::new(snapshot(1, [1]));
        p.run_until(Duration::from_millis(start_ms));
        p.set_busy(busy_ms > 0);
        let deadline = p.now + Duration::from_millis(deadline_ms);
        if relay_says {
            p.relay.go_away("relay shutting down", deadline);
        } else {
            p.gateway.go_away("gateway shutting down", deadline);
        }
        // The side that said GoAway ends at its deadline; otherwise the
        // gateway ends when idle (plus the GoAway's trip when the relay
        // said it).
        let slack = if relay_says { Duration::from_millis(10) } else { Duration::ZERO };
        let began = p.elapsed();
        p.run_for(Duration::from_millis(busy_ms));
        p.set_busy(false);
        // Long enough for the end to happen however early it is due: a
        // drain with nothing in flight still waits for the GoAway's trip.
        p.run_for(Duration::from_millis(1) + slack);
        let gateway_end = p.gateway_closed().map(|(at, _)| *at - began);
        let relay_end = p.relay_closed().map(|(at, _)| *at - began);
        let end = [gateway_end, relay_end].into_iter().flatten().min();
        let expected = Duration::from_millis(busy_ms.min(deadline_ms));
        // When the relay said it, the relay's own deadline is the bound:
        // the gateway ending it earlier, once idle, is not guaranteed (a
        // GoAway in a session's first milliseconds waits out its deadline).
        let latest = if relay_says {
            (expected + slack).max(Duration::from_millis(deadline_ms) + Duration::from_millis(1))
        } else {
            expected
        };
        let end = end.expect("the session ended");
        prop_assert!(end >= expected.saturating_sub(Duration::from_millis(1)) && end <= latest,
            "ended after {end:?}, expected {expected:?} to {latest:?}");
    }
}

#[test]
fn a_relay_going_away_ends_nothing_until_the_gateway_knows_it_is_idle() {
    let now = Instant::now();
    let mut gateway = GatewayControl::new(HB, now);
    gateway.handle_frame(
        Frame::GoAway {
            reason: "relay shutting down".into(),
        },
        now,
    );
    assert_eq!(
        gateway.poll_event(),
        Some(GatewayEvent::RelayDraining {
            reason: "relay shutting down".into()
        })
    );
    assert!(!gateway.is_closed(), "streams may be in flight");
    gateway.set_idle(false);
    assert!(!gateway.is_closed());
    gateway.set_idle(true);
    assert!(gateway.is_closed());
}
