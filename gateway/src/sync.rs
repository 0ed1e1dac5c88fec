//! A relay session's route set as this gateway holds it: deltas applied
//! on top of the right version only, full sets (possibly chunked) replacing
//! everything, and a checksum to compare with the relay's.

use std::collections::BTreeMap;

use tunnel_proto::limits::{MAX_HOSTNAME_LEN, MAX_ROUTES_PER_SESSION};
use tunnel_proto::path::MAX_PATH_PREFIX;
use tunnel_proto::{RouteSpec, RoutesUpdate, UpdateKind};

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
            checksum: tunnel_proto::routes::checksum([]),
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
                let checksum = tunnel_proto::routes::checksum(self.specs.values());
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
        self.checksum = tunnel_proto::routes::checksum(self.specs.values());
        Ok(Applied::Changed {
            in_sync: self.checksum == u.checksum,
        })
    }

    /// Drops a route without telling the relay (tests of drift detection).
    pub fn forget(&mut self, id: u64) {
        self.specs.remove(&id);
        self.checksum = tunnel_proto::routes::checksum(self.specs.values());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64) -> RouteSpec {
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
            checksum: tunnel_proto::routes::checksum(all),
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
            st.apply(update(3, 0, full, vec![spec(1)], vec![], &[spec(1)])),
            Ok(Applied::Changed { in_sync: true })
        );
        let d = update(4, 3, UpdateKind::Delta, vec![spec(2)], vec![1], &[spec(2)]);
        assert_eq!(st.apply(d), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs(), [spec(2)]);
        let gap = update(6, 5, UpdateKind::Delta, vec![spec(3)], vec![], &[spec(2), spec(3)]);
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
        let all = [spec(1), spec(2)];
        st.apply(update(4, 0, full, all.to_vec(), vec![], &all)).unwrap();
        let before = (st.version, st.checksum, st.specs());
        let mut changed = spec(2);
        changed.priority = 9;
        // Removes 1, changes 2, adds 3; the relay's checksum says otherwise.
        let wrong = update(5, 4, UpdateKind::Delta, vec![changed, spec(3)], vec![1], &[spec(9)]);
        assert_eq!(st.apply(wrong), Ok(Applied::Mismatch));
        assert_eq!((st.version, st.checksum, st.specs()), before, "the old set, untouched");
        assert!(st.agrees(4, &before.1));
        // The same change with the right checksum applies.
        let mut changed = spec(2);
        changed.priority = 9;
        let right = update(
            5,
            4,
            UpdateKind::Delta,
            vec![changed.clone(), spec(3)],
            vec![1],
            &[changed.clone(), spec(3)],
        );
        assert_eq!(st.apply(right), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs(), [changed, spec(3)]);
    }

    #[test]
    fn chunked_full_sets_apply_at_the_last_chunk() {
        let mut st = RouteState::new();
        let all = [spec(1), spec(2), spec(3)];
        let c1 = update(
            9,
            0,
            UpdateKind::Full {
                first: true,
                last: false,
            },
            vec![spec(1)],
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
            vec![spec(2), spec(3)],
            vec![],
            &all,
        );
        assert_eq!(st.apply(c1), Ok(Applied::Pending));
        assert!(st.agrees(0, &[0; 32]), "pending full set");
        assert_eq!(st.apply(c2), Ok(Applied::Changed { in_sync: true }));
        assert_eq!(st.specs().len(), 3);
        assert!(st.agrees(9, &tunnel_proto::routes::checksum(&all)));
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
        let mut big = spec(1);
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
        let over: Vec<RouteSpec> = (0..MAX_ROUTES_PER_SESSION as u64 + 5).map(spec).collect();
        let mut st = RouteState::new();
        // Held (the registry serves the first MAX_ROUTES_PER_SESSION and
        // refuses the rest): the session stays up, in sync.
        assert_eq!(
            st.apply(update(1, 0, full, over.clone(), vec![], &over)),
            Ok(Applied::Changed { in_sync: true })
        );
        assert_eq!(st.specs().len(), MAX_ROUTES_PER_SESSION + 5);
        let too_many: Vec<RouteSpec> = (0..=MAX_ROUTES_HELD as u64).map(spec).collect();
        assert!(st.apply(update(2, 0, full, too_many, vec![], &[])).is_err());
    }
}
