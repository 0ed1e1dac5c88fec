//! Keeping a gateway's copy of the routes equal to ours: deltas computed by
//! diffing the snapshot last sent against the current one (so bursts of
//! changes coalesce and nothing can lag behind), a chunked full set when a
//! gateway asks for it, and a rate limit on full resyncs.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tunnel_proto::limits::MAX_FRAME_PAYLOAD;
use tunnel_proto::{Frame, RouteSpec, RoutesUpdate, UpdateKind};

use crate::routes::Snapshot;

/// Routes per full-set chunk stay under this many JSON bytes.
const CHUNK_BYTES: usize = MAX_FRAME_PAYLOAD - 4096;
/// At most one full resync per this interval (a gateway that can't agree
/// with us must not make us loop).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// What one session has told its gateway.
pub(crate) struct RouteSync {
    sent: Arc<Snapshot>,
    last_full: Option<Instant>,
    /// A full set is on its way: acks older than it are stale.
    full_version: Option<u64>,
}

impl RouteSync {
    pub fn new(initial: Arc<Snapshot>) -> Self {
        RouteSync {
            sent: initial,
            last_full: None,
            full_version: None,
        }
    }

    /// Version and checksum the gateway should hold (sent in heartbeats).
    pub fn announced(&self) -> (u64, [u8; 32]) {
        (self.sent.version, self.sent.checksum)
    }

    /// The whole set as frames, and remember it as sent.
    pub fn full(&mut self, current: Arc<Snapshot>) -> Vec<Frame> {
        self.last_full = Some(Instant::now());
        self.full_version = Some(current.version);
        let frames = full_frames(&current);
        self.sent = current;
        frames
    }

    /// Frames that bring the gateway from what we sent to `current`.
    pub fn update(&mut self, current: Arc<Snapshot>) -> Vec<Frame> {
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
            return self.full(current);
        }
        self.sent = current;
        vec![delta]
    }

    /// Handles a `RoutesAck`; returns true if a full resync should be sent.
    pub fn on_ack(&mut self, version: u64, in_sync: bool) -> bool {
        if let Some(full) = self.full_version {
            if version < full {
                return false; // about an older state; the full set is on its way
            }
            self.full_version = None;
        }
        if in_sync {
            return false;
        }
        let allowed = self.last_full.is_none_or(|at| at.elapsed() >= RESYNC_INTERVAL);
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

fn full_frames(s: &Snapshot) -> Vec<Frame> {
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
        let mut s = Snapshot::default();
        s.specs = (0..5000).map(|i| spec(i, 0)).collect();
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
            full_frames(&Snapshot::default()).len(),
            1,
            "an empty set is still one frame"
        );
    }

    #[test]
    fn resyncs_are_rate_limited_and_stale_acks_ignored() {
        let mut sync = RouteSync::new(Arc::new(Snapshot::default()));
        assert!(sync.on_ack(0, false));
        let mut next = Snapshot::default();
        next.version = 7;
        sync.full(Arc::new(next));
        assert!(!sync.on_ack(3, false), "ack about a state before the full set");
        assert!(!sync.on_ack(7, false), "second resync within the rate limit");
        assert!(!sync.on_ack(7, true));
    }
}
