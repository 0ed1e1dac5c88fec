//! Route sync, both halves: the relay keeps each gateway's copy of its
//! route set equal to its own ([`RouteSync`]: deltas computed by diffing
//! the set last sent against the current one, so bursts of changes
//! coalesce and nothing lags behind; a chunked full set when a gateway asks
//! for it; a rate limit on full resyncs), and the gateway holds that copy
//! ([`RouteState`]: deltas applied on top of the right version only, full
//! sets replacing everything, a checksum to compare with the relay's).
//! Pure: no I/O, the clock passed in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{Frame, RoutesUpdate, UpdateKind};
use crate::limits::{MAX_FRAME_PAYLOAD, MAX_HOSTNAME_LEN, MAX_ROUTES_PER_SESSION};
use crate::path::MAX_PATH_PREFIX;
use crate::routes::{RouteSpec, checksum};

/// A relay's route set at one version, as gateways see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSnapshot {
    pub version: u64,
    /// Sorted by id.
    pub specs: Vec<RouteSpec>,
    /// [`checksum`] of `specs`.
    pub checksum: [u8; 32],
}

impl RouteSnapshot {
    /// The set `specs` (sorted here by id) at `version`.
    pub fn new(version: u64, mut specs: Vec<RouteSpec>) -> Self {
        specs.sort_by_key(|s| s.id);
        RouteSnapshot {
            version,
            checksum: checksum(&specs),
            specs,
        }
    }

    /// No routes, version 0: what a gateway holds before the first update.
    pub fn empty() -> Self {
        RouteSnapshot::new(0, Vec::new())
    }
}

/// Routes per full-set chunk stay under this many JSON bytes.
const CHUNK_BYTES: usize = MAX_FRAME_PAYLOAD - 4096;
/// At most one full resync per this interval (a gateway that can't agree
/// with us must not make us loop).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// What one session has told its gateway.
#[derive(Debug)]
pub struct RouteSync {
    sent: Arc<RouteSnapshot>,
    last_full: Option<Instant>,
    /// A full set is on its way: acks older than it are stale.
    full_version: Option<u64>,
}

impl Default for RouteSync {
    fn default() -> Self {
        RouteSync::new()
    }
}

impl RouteSync {
    /// Nothing sent yet: the gateway holds the empty set.
    pub fn new() -> Self {
        RouteSync {
            sent: Arc::new(RouteSnapshot::empty()),
            last_full: None,
            full_version: None,
        }
    }

    /// Version and checksum the gateway should hold (sent in heartbeats).
    pub fn announced(&self) -> (u64, [u8; 32]) {
        (self.sent.version, self.sent.checksum)
    }

    /// The whole set as frames, and remember it as sent.
    pub fn full(&mut self, current: Arc<RouteSnapshot>, now: Instant) -> Vec<Frame> {
        self.last_full = Some(now);
        self.full_version = Some(current.version);
        let frames = full_frames(&current);
        self.sent = current;
        frames
    }

    /// Frames that bring the gateway from what we sent to `current`.
    pub fn update(&mut self, current: Arc<RouteSnapshot>, now: Instant) -> Vec<Frame> {
        if current.version == self.sent.version {
            return Vec::new();
        }
        let (upserts, removes) = diff(&self.sent.specs, &current.specs);
        let delta = Frame::Routes(RoutesUpdate {
            version: current.version,
            base_version: self.sent.version,
            checksum: current.checksum,
            kind: UpdateKind::Delta,
            upserts,
            removes,
        });
        // A delta too large for one frame (a rollback of many routes, say)
        // goes as a full set instead.
        if delta.to_bytes().is_err() {
            return self.full(current, now);
        }
        self.sent = current;
        vec![delta]
    }

    /// Handles a `RoutesAck`; returns true if a full resync should be sent.
    pub fn on_ack(&mut self, version: u64, in_sync: bool, now: Instant) -> bool {
        if let Some(full) = self.full_version {
            // About an older state: the full set is on its way. Past the
            // resync interval it went missing after all: send it again.
            let recent = self
                .last_full
                .is_some_and(|at| now.saturating_duration_since(at) < RESYNC_INTERVAL);
            if version < full && recent {
                return false;
            }
            self.full_version = None;
        }
        if in_sync {
            return false;
        }
        let allowed = self
            .last_full
            .is_none_or(|at| now.saturating_duration_since(at) >= RESYNC_INTERVAL);
        if !allowed {
            tracing::warn!(
                version,
                "gateway still out of sync; next full resync after the rate limit"
            );
        }
        allowed
    }
}

/// Routes added or changed, and ids removed, from `old` to `new` (both
/// sorted by id).
fn diff(old: &[RouteSpec], new: &[RouteSpec]) -> (Vec<RouteSpec>, Vec<u64>) {
    let (mut upserts, mut removes) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.id == n.id => {
                if o != n {
                    upserts.push(n.clone());
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.id < n.id => {
                removes.push(o.id);
                i += 1;
            }
            (Some(o), None) => {
                removes.push(o.id);
                i += 1;
            }
            (_, Some(n)) => {
                upserts.push(n.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (upserts, removes)
}

fn full_frames(s: &RouteSnapshot) -> Vec<Frame> {
    let mut chunks: Vec<Vec<RouteSpec>> = vec![Vec::new()];
    let mut size = 0;
    for spec in &s.specs {
        let len = serde_json::to_vec(spec).map(|v| v.len() + 1).unwrap_or(0);
        if size + len > CHUNK_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.push(spec.clone());
        }
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, upserts)| {
            Frame::Routes(RoutesUpdate {
                version: s.version,
                base_version: 0,
                checksum: s.checksum,
                kind: UpdateKind::Full {
                    first: i == 0,
                    last: i + 1 == n,
                },
                upserts,
                removes: Vec::new(),
            })
        })
        .collect()
}

/// Most routes held for one session: twice what one session may have
/// served ([`MAX_ROUTES_PER_SESSION`]). Routes past the served limit are
/// still held, so the relay's checksum can be checked and its deltas
/// applied, and the registry refuses them (the relay hears which and why).
/// Past this bound the relay is misbehaving: the session is closed.
pub const MAX_ROUTES_HELD: usize = 2 * MAX_ROUTES_PER_SESSION;

/// What applying an update gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The set changed; ack with `in_sync`.
    Changed { in_sync: bool },
    /// Not applied: the delta is for another version. Ask for a resync.
    Gap,
    /// Not applied: the delta does not give the relay's checksum (the old
    /// set stays, served as it was). Ask for a resync.
    Mismatch,
    /// A chunk of a full set; more to come.
    Pending,
}

#[derive(Debug, Default)]
pub struct RouteState {
    pub version: u64,
    pub checksum: [u8; 32],
    specs: BTreeMap<u64, RouteSpec>,
    pending: Option<Vec<RouteSpec>>,
}

impl RouteState {
    pub fn new() -> Self {
        RouteState {
            checksum: checksum([]),
            ..Default::default()
        }
    }

    pub fn specs(&self) -> Vec<RouteSpec> {
        self.specs.values().cloned().collect()
    }

    /// Whether a heartbeat's view matches ours (a full set in flight counts
    /// as matching: it will settle it).
    pub fn agrees(&self, version: u64, checksum: &[u8; 32]) -> bool {
        self.pending.is_some() || (self.version == version && &self.checksum == checksum)
    }

    /// Applies an update. Errors are protocol violations (close the session).
    /// Specs are size-checked here, before they are kept (full validation
    /// and authorization happen when the table is built).
    pub fn apply(&mut self, u: RoutesUpdate) -> Result<Applied, String> {
        if let Some(s) = u
            .upserts
            .iter()
            .find(|s| s.host.len() > MAX_HOSTNAME_LEN + 2 || s.path_prefix.len() > MAX_PATH_PREFIX)
        {
            return Err(format!("route {} is over the size limits", s.id));
        }
        match u.kind {
            UpdateKind::Delta => {
                if self.pending.is_some() {
                    return Err("a delta in the middle of a full route set".into());
                }
                if u.base_version != self.version {
                    return Ok(Applied::Gap);
                }
                // Applied tentatively, with what it replaced kept aside: a
                // delta that does not give the relay's checksum is undone, so
                // a misapplied update is never served, not even until the
                // resync it asks for arrives.
                let mut undo: Vec<(u64, Option<RouteSpec>)> = Vec::with_capacity(u.removes.len() + u.upserts.len());
                for id in &u.removes {
                    undo.push((*id, self.specs.remove(id)));
                }
                for spec in u.upserts {
                    undo.push((spec.id, self.specs.insert(spec.id, spec)));
                }
                let too_many = self.specs.len() > MAX_ROUTES_HELD;
                let checksum = checksum(self.specs.values());
                if too_many || checksum != u.checksum {
                    for (id, old) in undo.into_iter().rev() {
                        match old {
                            Some(spec) => self.specs.insert(id, spec),
                            None => self.specs.remove(&id),
                        };
                    }
                    if too_many {
                        return Err(format!("more than {MAX_ROUTES_HELD} routes"));
                    }
                    return Ok(Applied::Mismatch);
                }
                self.version = u.version;
                self.checksum = checksum;
                return Ok(Applied::Changed { in_sync: true });
            }
            UpdateKind::Full { first, last } => {
                let pending = match (first, self.pending.take()) {
                    (true, _) => Vec::new(),
                    (false, Some(p)) => p,
                    (false, None) => return Err("a full-set chunk without its first part".into()),
                };
                let mut pending = pending;
                pending.extend(u.upserts);
                if pending.len() > MAX_ROUTES_HELD {
                    return Err(format!("more than {MAX_ROUTES_HELD} routes"));
                }
                if !last {
                    self.pending = Some(pending);
                    return Ok(Applied::Pending);
                }
                self.specs = pending.into_iter().map(|s| (s.id, s)).collect();
            }
        }
        self.version = u.version;
        self.checksum = checksum(self.specs.values());
        Ok(Applied::Changed {
            in_sync: self.checksum == u.checksum,
        })
    }

    /// Drops a route without telling the relay (tests of drift detection).
    pub fn forget(&mut self, id: u64) {
        self.specs.remove(&id);
        self.checksum = checksum(self.specs.values());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64, priority: i32) -> RouteSpec {
        RouteSpec {
            id,
            host: format!("h{id}.example.com"),
            path_prefix: "/".into(),
            priority,
            policy: None,
        }
    }

    #[test]
    fn diff_finds_adds_changes_and_removals() {
        let old = [spec(1, 0), spec(2, 0), spec(4, 0)];
        let new = [spec(2, 5), spec(3, 0), spec(4, 0)];
        let (up, rm) = diff(&old, &new);
        assert_eq!(up, [spec(2, 5), spec(3, 0)]);
        assert_eq!(rm, [1]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
    }

    #[test]
    fn large_sets_are_chunked_under_the_frame_limit() {
        let s = RouteSnapshot::new(1, (0..5000).map(|i| spec(i, 0)).collect());
        let frames = full_frames(&s);
        assert!(frames.len() > 1);
        let mut total = 0;
        for (i, f) in frames.iter().enumerate() {
            f.to_bytes().expect("each chunk fits a frame");
            let Frame::Routes(u) = f else { panic!() };
            assert_eq!(
                u.kind,
                UpdateKind::Full {
                    first: i == 0,
                    last: i + 1 == frames.len()
                }
            );
            total += u.upserts.len();
        }
        assert_eq!(total, 5000);
        assert_eq!(
            full_frames(&RouteSnapshot::empty()).len(),
            1,
            "an empty set is still one frame"
        );
    }

    #[test]
    fn resyncs_are_rate_limited_and_stale_acks_ignored() {
        let now = Instant::now();
        let mut sync = RouteSync::new();
        assert!(sync.on_ack(0, false, now));
        sync.full(Arc::new(RouteSnapshot::new(7, Vec::new())), now);
        assert!(!sync.on_ack(3, false, now), "ack about a state before the full set");
        assert!(!sync.on_ack(7, false, now), "second resync within the rate limit");
        assert!(!sync.on_ack(7, true, now));
        assert!(
            sync.on_ack(7, false, now + RESYNC_INTERVAL),
            "a resync after the rate limit"
        );
    }

    fn held(id: u64) -> RouteSpec {
        RouteSpec {
            id,
            host: format!("h{id}.test"),
            path_prefix: "/".into(),
            priority: 0,
            policy: None,
        }
    }

    fn update(
        version: u64,
        base: u64,
        kind: UpdateKind,
        upserts: Vec<RouteSpec>,
        removes: Vec<u64>,
        all: &[RouteSpec],
    ) -> RoutesUpdate {
        RoutesUpdate {
            version,
            base_version: base,
            checksum: checksum(all),
            kind,
            upserts,
            removes,
        }
    }

    #[test]
    fn deltas_apply_in_order_and_gaps_are_refused() {
        let mut st = RouteState::new();
        let full = UpdateKind::Full {
            first: true,
            last: true,
        };
        assert_eq!(
            st.apply(update(3, 0, full, vec![held(1)], vec![], &[held(1)])),
            Ok(Applied::Changed { in_sync: true })
        );
        let d = update(4, 3, UpdateKind::Delta, vec![held(2)], vec![1], &[held(2)]);
        assert_eq!(st.apply(d), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs(), [held(2)]);
        let gap = update(6, 5, UpdateKind::Delta, vec![held(3)], vec![], &[held(2), held(3)]);
        assert_eq!(st.apply(gap), Ok(Applied::Gap));
        assert_eq!(st.version, 4, "a gap changes nothing");
    }

    #[test]
    fn a_delta_that_misses_the_checksum_changes_nothing() {
        let mut st = RouteState::new();
        let full = UpdateKind::Full {
            first: true,
            last: true,
        };
        let all = [held(1), held(2)];
        st.apply(update(4, 0, full, all.to_vec(), vec![], &all)).unwrap();
        let before = (st.version, st.checksum, st.specs());
        let mut changed = held(2);
        changed.priority = 9;
        // Removes 1, changes 2, adds 3; the relay's checksum says otherwise.
        let wrong = update(5, 4, UpdateKind::Delta, vec![changed, held(3)], vec![1], &[held(9)]);
        assert_eq!(st.apply(wrong), Ok(Applied::Mismatch));
        assert_eq!((st.version, st.checksum, st.specs()), before, "the old set, untouched");
        assert!(st.agrees(4, &before.1));
        // The same change with the right checksum applies.
        let mut changed = held(2);
        changed.priority = 9;
        let right = update(
            5,
            4,
            UpdateKind::Delta,
            vec![changed.clone(), held(3)],
            vec![1],
            &[changed.clone(), held(3)],
        );
        assert_eq!(st.apply(right), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs(), [changed, held(3)]);
    }

    #[test]
    fn chunked_full_sets_apply_at_the_last_chunk() {
        let mut st = RouteState::new();
        let all = [held(1), held(2), held(3)];
        let c1 = update(
            9,
            0,
            UpdateKind::Full {
                first: true,
                last: false,
            },
            vec![held(1)],
            vec![],
            &all,
        );
        let c2 = update(
            9,
            0,
            UpdateKind::Full {
                first: false,
                last: true,
            },
            vec![held(2), held(3)],
            vec![],
            &all,
        );
        assert_eq!(st.apply(c1), Ok(Applied::Pending));
        assert!(st.agrees(0, &[0; 32]), "pending full set");
        assert_eq!(st.apply(c2), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs().len(), 3);
        assert!(st.agrees(9, &checksum(&all)));
        let orphan = update(
            9,
            0,
            UpdateKind::Full {
                first: false,
                last: true,
            },
            vec![],
            vec![],
            &all,
        );
        assert!(st.apply(orphan).is_err());
    }

    #[test]
    fn oversized_specs_are_refused_before_they_are_kept() {
        let mut st = RouteState::new();
        let mut big = held(1);
        big.host = "a".repeat(300);
        let u = update(
            1,
            0,
            UpdateKind::Full {
                first: true,
                last: true,
            },
            vec![big],
            vec![],
            &[],
        );
        assert!(st.apply(u).is_err());
        assert!(st.specs().is_empty());
    }

    #[test]
    fn routes_past_the_served_limit_are_held_and_past_the_held_limit_refused() {
        let full = UpdateKind::Full {
            first: true,
            last: true,
        };
        let over: Vec<RouteSpec> = (0..MAX_ROUTES_PER_SESSION as u64 + 5).map(held).collect();
        let mut st = RouteState::new();
        // Held (the registry serves the first MAX_ROUTES_PER_SESSION and
        // refuses the rest): the session stays up, in sync.
        assert_eq!(
            st.apply(update(1, 0, full, over.clone(), vec![], &over)),
            Ok(Applied::Changed { in_sync: true })
        );
        assert_eq!(st.specs().len(), MAX_ROUTES_PER_SESSION + 5);
        let too_many: Vec<RouteSpec> = (0..=MAX_ROUTES_HELD as u64).map(held).collect();
        assert!(st.apply(update(2, 0, full, too_many, vec![], &[])).is_err());
    }
}
