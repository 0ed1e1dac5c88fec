//! The gateways a relay keeps sessions with: the ones it was configured
//! with, and the peers their `Welcome` frames list. Peers are bounded in
//! number and forgotten once gone for good, so replicas coming and going
//! over months don't pile up maintainer tasks retrying dead addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Most peer gateways (learned from `Welcome`) a relay joins; further ones
/// are ignored until some are forgotten.
pub const MAX_PEER_GATEWAYS: usize = 16;
/// A peer unreachable this long, that no known gateway's latest `Welcome`
/// lists any more, is forgotten: its maintainer stops.
pub const FORGET_PEER_AFTER: Duration = Duration::from_secs(10 * 60);

/// Every gateway a maintainer runs for, by name (`host:port`).
#[derive(Debug, Default)]
pub(crate) struct GatewayBook {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    /// From the relay's own config: never forgotten.
    configured: bool,
    /// Gateways whose latest `Welcome` lists this one.
    listed_by: BTreeSet<String>,
}

impl GatewayBook {
    /// Adds a configured gateway; false if it is known already (as a
    /// peer, it becomes configured).
    pub fn add_configured(&mut self, name: &str) -> bool {
        let new = !self.entries.contains_key(name);
        self.entries.entry(name.to_owned()).or_default().configured = true;
        new
    }

    /// `from`'s latest `Welcome` lists `peers` (replacing what its earlier
    /// ones listed). Returns the peers to join now: those not known yet,
    /// while fewer than [`MAX_PEER_GATEWAYS`] peers are.
    pub fn listed(&mut self, from: &str, peers: &[String]) -> Vec<String> {
        for entry in self.entries.values_mut() {
            entry.listed_by.remove(from);
        }
        let mut join = Vec::new();
        for peer in peers.iter().filter(|p| p.as_str() != from) {
            if !self.entries.contains_key(peer) {
                if self.peer_count() >= MAX_PEER_GATEWAYS {
                    tracing::warn!(%peer, max = MAX_PEER_GATEWAYS, "too many peer gateways; not joining this one");
                    continue;
                }
                join.push(peer.clone());
            }
            self.entries
                .entry(peer.clone())
                .or_default()
                .listed_by
                .insert(from.to_owned());
        }
        join
    }

    /// Forgets the peer `name` if it has been unreachable for at least
    /// [`FORGET_PEER_AFTER`] and no known gateway lists it; returns whether
    /// it did (its maintainer should then stop). Configured gateways are
    /// never forgotten.
    pub fn forget_if_gone(&mut self, name: &str, unreachable_for: Duration) -> bool {
        let gone = self
            .entries
            .get(name)
            .is_some_and(|e| !e.configured && e.listed_by.is_empty() && unreachable_for >= FORGET_PEER_AFTER);
        if gone {
            self.entries.remove(name);
            // What it listed no longer keeps anything alive.
            for entry in self.entries.values_mut() {
                entry.listed_by.remove(name);
            }
        }
        gone
    }

    fn peer_count(&self) -> usize {
        self.entries.values().filter(|e| !e.configured).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}:443")).collect()
    }

    #[test]
    fn peers_are_joined_once_and_capped() {
        let mut book = GatewayBook::default();
        assert!(book.add_configured("a:443"));
        assert!(!book.add_configured("a:443"));
        let peers = names("p", MAX_PEER_GATEWAYS + 5);
        let join = book.listed("a:443", &peers);
        assert_eq!(join, peers[..MAX_PEER_GATEWAYS]);
        // Listed again (a reconnect): nothing new to join.
        assert!(book.listed("a:443", &peers).is_empty());
        // A gateway listing itself is not a peer.
        assert!(book.listed("x:443", &["x:443".to_owned()]).is_empty());
        // A configured gateway listed as a peer stays configured.
        assert!(book.listed("p0:443", &["a:443".to_owned()]).is_empty());
        assert!(!book.forget_if_gone("a:443", FORGET_PEER_AFTER * 10));
    }

    #[test]
    fn a_peer_is_forgotten_only_when_unreachable_long_and_unlisted() {
        let mut book = GatewayBook::default();
        book.add_configured("a:443");
        book.add_configured("b:443");
        assert_eq!(book.listed("a:443", &names("p", 2)), names("p", 2));
        book.listed("b:443", &names("p", 1));
        // Still listed by a and b: kept however long it is away.
        assert!(!book.forget_if_gone("p0:443", FORGET_PEER_AFTER * 10));
        // a's next Welcome no longer lists p0 and p1; b still lists p0.
        book.listed("a:443", &[]);
        assert!(!book.forget_if_gone("p0:443", FORGET_PEER_AFTER));
        // p1: unlisted, but not away long enough yet.
        assert!(!book.forget_if_gone("p1:443", FORGET_PEER_AFTER - Duration::from_secs(1)));
        assert!(book.forget_if_gone("p1:443", FORGET_PEER_AFTER));
        assert!(!book.forget_if_gone("p1:443", FORGET_PEER_AFTER), "forgotten once");
        // Forgotten, it can be joined again when listed again.
        assert_eq!(book.listed("b:443", &names("p", 2)), ["p1:443"]);
        // Room frees up for new peers once old ones are forgotten.
        book.listed("a:443", &[]);
        book.listed("b:443", &[]);
        assert!(book.forget_if_gone("p0:443", FORGET_PEER_AFTER));
        assert_eq!(book.peer_count(), 1);
    }

    #[test]
    fn a_forgotten_peer_no_longer_keeps_its_own_peers() {
        let mut book = GatewayBook::default();
        book.add_configured("a:443");
        book.listed("a:443", &["p:443".to_owned()]);
        book.listed("p:443", &["q:443".to_owned()]);
        book.listed("a:443", &[]);
        assert!(!book.forget_if_gone("q:443", FORGET_PEER_AFTER), "p lists q");
        assert!(book.forget_if_gone("p:443", FORGET_PEER_AFTER));
        assert!(book.forget_if_gone("q:443", FORGET_PEER_AFTER));
    }
}
