//! Route specs and policies as a relay announces them, and the gateway's
//! side of route sync.

use arbitrary::{Result, Unstructured};
use serde_json::Value;
use tunnel_proto::routes::checksum;
use tunnel_proto::sync::{Applied, RouteState};
use tunnel_proto::{HostPattern, RoutePolicy, RouteSpec, RoutesUpdate, UpdateKind};

use crate::input;

/// JSON as it comes in a `Routes` frame (one spec or a list) or a relay's
/// stored policy.
///
/// Invariants: a spec survives a JSON round trip; validation normalises to
/// a fixed point (validating twice changes nothing) and leaves a host that
/// is a valid pattern; a policy parsed from its own JSON is itself; the
/// checksum of a set does not depend on its order.
pub fn route_spec(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<RouteSpec>(data) {
        check_spec(spec);
    }
    if let Ok(specs) = serde_json::from_slice::<Vec<RouteSpec>>(data) {
        let mut ids: Vec<u64> = specs.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        // A set has one spec per id (the gateway keys them by id).
        if ids.len() == specs.len() {
            let reversed: Vec<&RouteSpec> = specs.iter().rev().collect();
            assert_eq!(checksum(&specs), checksum(reversed), "the checksum depends on order");
        }
        for spec in specs {
            check_spec(spec);
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data)
        && let Ok(Some(policy)) = RoutePolicy::from_json(&v)
    {
        check_policy(&policy);
    }
}

pub(crate) fn check_spec(spec: RouteSpec) {
    let json = serde_json::to_vec(&spec).expect("a spec serialises");
    let back: RouteSpec = serde_json::from_slice(&json).expect("a serialised spec parses");
    assert_eq!(back, spec, "a spec changed through JSON");
    let Ok(valid) = spec.validated() else { return };
    assert_eq!(
        valid.clone().validated().ok().as_ref(),
        Some(&valid),
        "validation is not a fixed point"
    );
    let pattern = HostPattern::parse(&valid.host).expect("a validated host parses");
    crate::names::check_pattern(&pattern);
    if let Some(p) = &valid.policy {
        check_policy(p);
    }
}

fn check_policy(policy: &RoutePolicy) {
    let v = serde_json::to_value(policy).expect("a policy serialises");
    assert_eq!(
        RoutePolicy::from_json(&v).ok().flatten().as_ref(),
        Some(policy),
        "a policy re-parses differently from {v}"
    );
    assert_eq!(policy.clone().validated().ok().as_ref(), Some(policy));
}

/// A sequence of `Routes` updates from a (possibly hostile) relay, applied
/// to the gateway's copy of its route set.
///
/// Invariants: the checksum kept is always the checksum of the routes
/// held; a delta for another version, or one whose result misses the
/// relay's checksum, changes nothing; a delta or full set that is applied
/// gives exactly the routes a plain model computes; an error leaves the
/// routes served as they were.
pub fn route_sync(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = sync(&mut u);
}

fn sync(u: &mut Unstructured) -> Result<()> {
    let mut state = RouteState::new();
    // The model: routes by id, and a full set being received.
    let mut model: std::collections::BTreeMap<u64, RouteSpec> = Default::default();
    let mut pending: Option<Vec<RouteSpec>> = None;
    for _ in 0..12 {
        if u.is_empty() {
            break;
        }
        let kind = input::update_kind(u)?;
        let upserts = input::list(u, 4, input::route_spec)?;
        let removes = input::list(u, 3, |u| u.int_in_range(0..=7))?;
        // What the set would be after this update, for a relay that
        // computes its checksum honestly.
        let after = match kind {
            UpdateKind::Delta => {
                let mut m = model.clone();
                for id in &removes {
                    m.remove(id);
                }
                for s in &upserts {
                    m.insert(s.id, s.clone());
                }
                m
            }
            UpdateKind::Full { first, .. } => {
                let mut all = if first {
                    Vec::new()
                } else {
                    pending.clone().unwrap_or_default()
                };
                all.extend(upserts.iter().cloned());
                all.into_iter().map(|s| (s.id, s)).collect()
            }
        };
        let honest = u.ratio(3, 4)?;
        let update = RoutesUpdate {
            version: u.int_in_range(0..=20)?,
            base_version: if u.ratio(3, 4)? {
                state.version
            } else {
                u.int_in_range(0..=20)?
            },
            checksum: if honest {
                checksum(after.values())
            } else {
                u.arbitrary()?
            },
            kind,
            upserts,
            removes,
        };
        let before = (state.version, state.checksum, state.specs());
        let result = state.apply(update.clone());
        match (&result, kind) {
            (Ok(Applied::Changed { in_sync }), UpdateKind::Delta) => {
                assert!(*in_sync);
                model = after;
            }
            (Ok(Applied::Changed { in_sync }), UpdateKind::Full { last, .. }) => {
                assert!(last);
                assert_eq!(*in_sync, state.checksum == update.checksum);
                model = after;
                pending = None;
            }
            (Ok(Applied::Pending), UpdateKind::Full { first, last }) => {
                assert!(!last);
                assert!(first || pending.is_some(), "a chunk without its first part was kept");
                let mut all = if first {
                    Vec::new()
                } else {
                    pending.take().unwrap_or_default()
                };
                all.extend(update.upserts.iter().cloned());
                pending = Some(all);
            }
            (Ok(Applied::Gap), UpdateKind::Delta) => {
                assert_ne!(update.base_version, before.0);
                assert_eq!((state.version, state.checksum, state.specs()), before);
            }
            (Ok(Applied::Mismatch), UpdateKind::Delta) => {
                assert!(!honest || after.len() > tunnel_proto::sync::MAX_ROUTES_HELD);
                assert_eq!(
                    (state.version, state.checksum, state.specs()),
                    before,
                    "a mismatched delta changed the set"
                );
            }
            (Err(_), _) => {
                assert_eq!(state.specs(), before.2, "a refused update changed the set");
                // The session is closed on an error: start over.
                state = RouteState::new();
                model.clear();
                pending = None;
            }
            (other, kind) => panic!("{kind:?} gave {other:?}"),
        }
        assert_eq!(
            state.checksum,
            checksum(state.specs().iter()),
            "the checksum kept is not the set's"
        );
        assert_eq!(state.specs(), model.values().cloned().collect::<Vec<_>>());
        assert!(state.agrees(state.version, &state.checksum));
    }
    Ok(())
}
