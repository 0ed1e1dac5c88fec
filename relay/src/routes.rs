//! The relay's published routes: an immutable snapshot swapped atomically
//! after every committed change, read by the proxy and the sessions.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tunnel_proto::RouteSpec;
use tunnel_proto::sync::RouteSnapshot;

use crate::model::Route;
use crate::target::Target;

/// A route ready to serve.
#[derive(Debug)]
pub struct LocalRoute {
    pub route: Route,
    pub target: Target,
}

impl LocalRoute {
    pub fn name(&self) -> String {
        self.route.name()
    }
}

/// Routes at one version: as gateways see them (`announced`, also
/// reached through `Deref`: version, specs, checksum) and with their
/// targets.
#[derive(Debug)]
pub struct Snapshot {
    pub announced: Arc<RouteSnapshot>,
    by_id: HashMap<u64, Arc<LocalRoute>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            announced: Arc::new(RouteSnapshot::empty()),
            by_id: HashMap::new(),
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = RouteSnapshot;
    fn deref(&self) -> &RouteSnapshot {
        &self.announced
    }
}

impl Snapshot {
    pub fn get(&self, id: u64) -> Option<Arc<LocalRoute>> {
        self.by_id.get(&id).cloned()
    }

    /// Every enabled route with a health check.
    pub fn checked(&self) -> impl Iterator<Item = &Arc<LocalRoute>> {
        self.by_id.values().filter(|r| r.route.health.is_some())
    }
}

#[derive(Debug)]
pub struct RouteSet {
    current: ArcSwap<Snapshot>,
    /// The published version, for sessions waiting for changes.
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for RouteSet {
    fn default() -> Self {
        RouteSet {
            current: ArcSwap::default(),
            version: tokio::sync::watch::channel(0).0,
        }
    }
}

impl RouteSet {
    /// Publishes the set at `version`. Disabled routes and routes whose
    /// target no longer parses are left out (and logged).
    pub fn publish(&self, version: u64, routes: &[Route]) {
        let mut by_id = HashMap::new();
        for r in routes.iter().filter(|r| r.enabled) {
            if let Err(e) = tunnel_proto::RoutePolicy::from_json(&r.policy) {
                // Published without it, the route would be public: leave it out.
                tracing::warn!(route = %r.name(), error = %e, "route left out: bad policy");
                continue;
            }
            match Target::parse(&r.target) {
                Ok(target) => {
                    by_id.insert(
                        r.id,
                        Arc::new(LocalRoute {
                            route: r.clone(),
                            target,
                        }),
                    );
                }
                Err(e) => tracing::warn!(route = %r.name(), error = %e, "route left out"),
            }
        }
        let specs: Vec<RouteSpec> = by_id.values().map(|r| r.route.spec()).collect();
        self.current.store(Arc::new(Snapshot {
            announced: Arc::new(RouteSnapshot::new(version, specs)),
            by_id,
        }));
        self.version.send_replace(version);
    }

    /// Sees every later publication (changes coalesce: read the snapshot).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn get(&self, id: u64) -> Option<Arc<LocalRoute>> {
        self.current.load().get(id)
    }

    /// Distinct hostnames (patterns) of all enabled routes, at most
    /// `MAX_HOSTNAMES` (what a `Hello` may carry; routes are authorized one
    /// by one anyway).
    pub fn hostnames(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.current.load().specs.iter().map(|s| s.host.clone()).collect();
        hosts.sort();
        hosts.dedup();
        hosts.truncate(tunnel_proto::limits::MAX_HOSTNAMES);
        hosts
    }
}
