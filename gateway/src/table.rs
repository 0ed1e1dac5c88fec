//! The route table: for each host pattern, the routes that sessions offer
//! for it. An immutable value swapped atomically, so a request sees the
//! old routes of a host or the new ones, never a mix, and lookups take no
//! lock.
//!
//! Updates are incremental: a change to one session rebuilds only the host
//! patterns that session served before or serves now, and copies only the
//! shards holding them. With n relays connecting one after the other, the
//! table costs O(n) work in all, not O(n²).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tunnel_proto::path::RequestPath;
use tunnel_proto::{HostPattern, RoutePolicy, RouteSpec};

use crate::session::Session;

/// Shards of the table; an update copies the maps of the shards it touches.
const SHARDS: usize = 64;

#[derive(Debug)]
pub(crate) struct Candidate {
    /// The route's path prefix (normalised), as the relay spells it.
    pub prefix: Arc<str>,
    pub priority: i32,
    pub route_id: u64,
    pub policy: Option<Arc<RoutePolicy>>,
    pub session: Arc<Session>,
    /// The relay's health check of this route passes (or there is none).
    pub healthy: bool,
}

/// What a host's routes offer for a path.
pub(crate) enum Pick<'a> {
    Found(&'a Candidate),
    /// The matching route exists but every session reports it unhealthy.
    Unhealthy,
    /// The matching route exists but no session can take requests.
    NoSession,
    NoRoute,
}

/// Routes for one host pattern, most specific first.
#[derive(Debug, Default)]
pub(crate) struct HostRoutes {
    pub candidates: Vec<Candidate>,
    rr: AtomicUsize,
}

impl HostRoutes {
    /// Longest matching prefix, then highest priority; among sessions
    /// offering that route, round-robin over the usable, healthy ones. An
    /// unhealthy route never falls back to a shorter prefix.
    /// Only sessions of `owner` (the key that owns the request's hostname)
    /// are candidates: a wildcard route never catches a name another key
    /// owns, even while that key's relay is away.
    pub fn pick(&self, path: &RequestPath, exclude: Option<u64>, owned: impl Fn(&Candidate) -> bool) -> Pick<'_> {
        let Some(first) = self.candidates.iter().position(|c| owned(c) && path.matches(&c.prefix)) else {
            return Pick::NoRoute;
        };
        let (prefix, priority) = (&self.candidates[first].prefix, self.candidates[first].priority);
        let same = || {
            self.candidates[first..]
                .iter()
                .take_while(|c| c.prefix.eq_ignore_ascii_case(prefix) && c.priority == priority)
                .filter(|c| owned(c) && c.session.is_usable() && Some(c.session.id) != exclude)
        };
        let healthy = same().filter(|c| c.healthy).count();
        if healthy == 0 {
            return if same().next().is_none() {
                Pick::NoSession
            } else {
                Pick::Unhealthy
            };
        }
        let n = self.rr.fetch_add(1, Ordering::Relaxed) % healthy;
        match same().filter(|c| c.healthy).nth(n) {
            Some(c) => Pick::Found(c),
            None => Pick::NoSession,
        }
    }

    /// The routes `sessions` offer for one pattern, or `None` if none.
    fn build(pattern: &HostPattern, sessions: impl Iterator<Item = Arc<Session>>) -> Option<HostRoutes> {
        let mut candidates = Vec::new();
        for session in sessions {
            let published = session.published();
            let Some(routes) = published.get(pattern) else { continue };
            let unhealthy = session.unhealthy_routes();
            candidates.extend(routes.iter().map(|r| Candidate {
                prefix: Arc::from(r.path_prefix.as_str()),
                priority: r.priority,
                route_id: r.id,
                policy: r.policy.clone().map(Arc::new),
                session: session.clone(),
                healthy: !unhealthy.contains(&r.id),
            }));
        }
        if candidates.is_empty() {
            return None;
        }
        // Prefixes that differ only in case are one prefix (matching
        // ignores case): sorted together, they form one group.
        candidates.sort_by(|a, b| {
            let lower = |c: &Candidate| c.prefix.to_ascii_lowercase();
            (b.prefix.len(), b.priority, lower(a), a.session.id).cmp(&(
                a.prefix.len(),
                a.priority,
                lower(b),
                b.session.id,
            ))
        });
        Some(HostRoutes {
            candidates,
            rr: AtomicUsize::new(0),
        })
    }
}

#[derive(Debug, Default, Clone)]
struct Shard {
    exact: HashMap<String, Arc<HostRoutes>>,
    wildcard: HashMap<String, Arc<HostRoutes>>,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    shards: Vec<Arc<Shard>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

impl RouteTable {
    /// The routes for `host` (normalised): its exact name, else the
    /// longest `*.suffix` pattern that matches it.
    pub fn find(&self, host: &str) -> Option<&HostRoutes> {
        if let Some(hr) = self.shards[shard_of(host)].exact.get(host) {
            return Some(hr);
        }
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(hr) = self.shards[shard_of(suffix)].wildcard.get(suffix) {
                return Some(hr);
            }
            rest = suffix;
        }
        None
    }

    fn set(&mut self, pattern: &HostPattern, routes: Option<HostRoutes>) {
        let (name, exact) = match pattern {
            HostPattern::Exact(h) => (h, true),
            HostPattern::Wildcard(s) => (s, false),
        };
        let shard = Arc::make_mut(&mut self.shards[shard_of(name)]);
        let map = if exact { &mut shard.exact } else { &mut shard.wildcard };
        match routes {
            Some(r) => map.insert(name.clone(), Arc::new(r)),
            None => map.remove(name),
        };
    }
}

/// Which sessions serve each host pattern. Kept beside the sessions, under
/// the same lock, so the table is always built from one consistent view.
#[derive(Debug, Default)]
pub(crate) struct TableIndex {
    by_pattern: HashMap<HostPattern, BTreeSet<u64>>,
}

impl TableIndex {
    /// The table after `touched` sessions changed (their routes, health,
    /// draining, or presence in `sessions`): each touched session's
    /// routes are published anew (none if it is gone or draining), and
    /// every pattern it served before or serves now is rebuilt.
    pub fn update(
        &mut self,
        table: &RouteTable,
        sessions: &HashMap<u64, Arc<Session>>,
        touched: &[Arc<Session>],
    ) -> RouteTable {
        let mut affected: HashSet<HostPattern> = HashSet::new();
        for session in touched {
            let present = sessions.get(&session.id).is_some_and(|s| Arc::ptr_eq(s, session));
            let now = if present && !session.is_draining() {
                group(&session.routes())
            } else {
                HashMap::new()
            };
            let before = session.publish(now);
            for pattern in before.keys() {
                if let Some(ids) = self.by_pattern.get_mut(pattern) {
                    ids.remove(&session.id);
                    if ids.is_empty() {
                        self.by_pattern.remove(pattern);
                    }
                }
                affected.insert(pattern.clone());
            }
            for pattern in session.published().keys() {
                self.by_pattern.entry(pattern.clone()).or_default().insert(session.id);
                affected.insert(pattern.clone());
            }
        }
        let mut next = table.clone();
        for pattern in &affected {
            let serving = self
                .by_pattern
                .get(pattern)
                .into_iter()
                .flatten()
                .filter_map(|id| sessions.get(id).cloned());
            next.set(pattern, HostRoutes::build(pattern, serving));
        }
        next
    }
}

/// Routes grouped by host pattern (malformed hosts were refused earlier).
fn group(routes: &[RouteSpec]) -> HashMap<HostPattern, Vec<RouteSpec>> {
    let mut groups: HashMap<HostPattern, Vec<RouteSpec>> = HashMap::new();
    for r in routes {
        if let Ok(pattern) = HostPattern::parse(&r.host) {
            groups.entry(pattern).or_default().push(r.clone());
        }
    }
    groups
}
