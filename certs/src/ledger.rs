//! What the ACME issuer must remember to stay inside the CA's rate limits,
//! also across restarts: the orders of the last hour (the hourly budget),
//! the failed validations of each name in the last hour, and each name's
//! backoff after failures. A gateway in a restart loop would otherwise
//! forget all three and spend the account's limits again on every start.
//!
//! Pure bookkeeping: the clock is passed in, nothing here does I/O. The
//! issuer saves [`Ledger::to_bytes`] through the [`crate::CertStore`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The window every limit here counts over.
pub const HOUR: Duration = Duration::from_secs(3600);
/// Most failed validations per name in any hour. Let's Encrypt allows 5
/// per hostname per hour; one is kept in hand for an operator retrying by
/// hand.
pub const MAX_FAILED_VALIDATIONS_PER_HOUR: usize = 4;
/// Names whose failures are remembered (for backoff and validation
/// counts) at once; a forgotten name only retries sooner.
pub const MAX_REMEMBERED_NAMES: usize = 10_000;
/// Version of the saved form; another version is ignored, not misread.
const SAVED_VERSION: u32 = 1;

/// Why and until when a name is backing off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) count: u32,
    pub(crate) retry_at: SystemTime,
    pub(crate) last_error: String,
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Start times of the orders of the last hour, oldest first.
    orders: VecDeque<SystemTime>,
    /// Failed validations of the last hour per name, oldest first.
    validations: HashMap<String, VecDeque<SystemTime>>,
    /// Backoff per name after failed attempts.
    failures: HashMap<String, Failure>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    /// Unix seconds.
    orders: Vec<u64>,
    validation_failures: BTreeMap<String, Vec<u64>>,
    backoff: BTreeMap<String, SavedFailure>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedFailure {
    count: u32,
    retry_at: u64,
    last_error: String,
}

/// Unix seconds, rounded up: a saved entry may expire a little late,
/// never early.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Whether `t` is still inside the hour before `now`. A time ahead of
/// `now` (the clock went back) counts as now, so it is kept, not lost.
fn within_hour(t: SystemTime, now: SystemTime) -> bool {
    now.duration_since(t).map_or(true, |age| age < HOUR)
}

/// Time until the oldest of `window` leaves the hour.
fn until_oldest_leaves(window: &VecDeque<SystemTime>, now: SystemTime) -> Duration {
    window
        .front()
        .map(|t| HOUR.saturating_sub(now.duration_since(*t).unwrap_or(Duration::ZERO)))
        .unwrap_or(HOUR)
}

impl Ledger {
    /// Takes one order from a budget of `limit` per hour; otherwise the
    /// time until one is free again.
    pub(crate) fn spend_order(&mut self, now: SystemTime, limit: usize) -> Result<(), Duration> {
        self.orders.retain(|t| within_hour(*t, now));
        if self.orders.len() >= limit {
            return Err(until_oldest_leaves(&self.orders, now));
        }
        self.orders.push_back(now);
        Ok(())
    }

    /// Whether `name` may have another validation now; otherwise the time
    /// until one of its failures is an hour old.
    pub(crate) fn validation_room(&mut self, name: &str, now: SystemTime) -> Result<(), Duration> {
        let Some(window) = self.validations.get_mut(name) else {
            return Ok(());
        };
        window.retain(|t| within_hour(*t, now));
        if window.is_empty() {
            self.validations.remove(name);
            return Ok(());
        }
        if window.len() >= MAX_FAILED_VALIDATIONS_PER_HOUR {
            return Err(until_oldest_leaves(window, now));
        }
        Ok(())
    }

    /// Counts one failed validation of `name`.
    pub(crate) fn validation_failed(&mut self, name: &str, now: SystemTime) {
        if !self.validations.contains_key(name) && self.validations.len() >= MAX_REMEMBERED_NAMES {
            self.validations
                .retain(|_, w| w.back().is_some_and(|t| within_hour(*t, now)));
            if self.validations.len() >= MAX_REMEMBERED_NAMES
                && let Some(oldest) = self
                    .validations
                    .iter()
                    .min_by_key(|(_, w)| w.back().copied())
                    .map(|(n, _)| n.clone())
            {
                self.validations.remove(&oldest);
            }
        }
        self.validations.entry(name.to_owned()).or_default().push_back(now);
    }

    pub(crate) fn failure(&self, name: &str) -> Option<Failure> {
        self.failures.get(name).cloned()
    }

    pub(crate) fn succeeded(&mut self, name: &str) {
        self.failures.remove(name);
    }

    /// Records one more failed attempt for `name`; `wait` gets the count
    /// of failures so far (this one included) and says how long to back
    /// off. Returns the failure recorded.
    pub(crate) fn failed(
        &mut self,
        name: &str,
        now: SystemTime,
        last_error: String,
        wait: impl FnOnce(u32) -> Duration,
    ) -> Failure {
        let count = self.failures.get(name).map_or(1, |f| f.count.saturating_add(1));
        if !self.failures.contains_key(name) && self.failures.len() >= MAX_REMEMBERED_NAMES {
            // Forget failures whose wait is over, then the oldest.
            self.failures.retain(|_, f| f.retry_at > now);
            if self.failures.len() >= MAX_REMEMBERED_NAMES
                && let Some(oldest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.retry_at)
                    .map(|(n, _)| n.clone())
            {
                self.failures.remove(&oldest);
            }
        }
        let failure = Failure {
            count,
            retry_at: now + wait(count),
            last_error,
        };
        self.failures.insert(name.to_owned(), failure.clone());
        failure
    }

    /// The saved form (JSON): only what still matters at `now`.
    pub(crate) fn to_bytes(&self, now: SystemTime) -> Vec<u8> {
        let saved = Saved {
            version: SAVED_VERSION,
            orders: self
                .orders
                .iter()
                .filter(|t| within_hour(**t, now))
                .map(|t| secs(*t))
                .collect(),
            validation_failures: self
                .validations
                .iter()
                .map(|(n, w)| {
                    (
                        n.clone(),
                        w.iter()
                            .filter(|t| within_hour(**t, now))
                            .map(|t| secs(*t))
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, w)| !w.is_empty())
                .collect(),
            backoff: self
                .failures
                .iter()
                .filter(|(_, f)| f.retry_at > now)
                .map(|(n, f)| {
                    (
                        n.clone(),
                        SavedFailure {
                            count: f.count,
                            retry_at: secs(f.retry_at),
                            last_error: f.last_error.chars().take(1000).collect(),
                        },
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// Reads the saved form. Sizes are bounded like the live ledger, so a
    /// huge or hostile file cannot fill memory.
    pub(crate) fn from_bytes(bytes: &[u8], now: SystemTime) -> Result<Ledger, String> {
        let saved: Saved = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if saved.version != SAVED_VERSION {
            return Err(format!("unknown version {}", saved.version));
        }
        let clamp = |t: u64| time(t).min(now);
        let mut orders: Vec<SystemTime> = saved.orders.into_iter().map(clamp).collect();
        orders.sort();
        let orders: VecDeque<SystemTime> = orders.into_iter().filter(|t| within_hour(*t, now)).collect();
        let validations = saved
            .validation_failures
            .into_iter()
            .take(MAX_REMEMBERED_NAMES)
            .filter_map(|(n, w)| {
                let mut w: Vec<SystemTime> = w.into_iter().map(clamp).filter(|t| within_hour(*t, now)).collect();
                w.sort();
                (!w.is_empty()).then(|| (n, w.into_iter().collect()))
            })
            .collect();
        let failures = saved
            .backoff
            .into_iter()
            .take(MAX_REMEMBERED_NAMES)
            .map(|(n, f)| {
                (
                    n,
                    Failure {
                        count: f.count,
                        // A clock that went back must not stretch a backoff
                        // past what it was: at most a day from now.
                        retry_at: time(f.retry_at).min(now + Duration::from_secs(24 * 3600)),
                        last_error: f.last_error,
                    },
                )
            })
            .filter(|(_, f)| f.retry_at > now)
            .collect();
        Ok(Ledger {
            orders,
            validations,
            failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed start, whole seconds (as saved), so waits compare exactly.
    fn t0() -> SystemTime {
        time(1_700_000_000)
    }

    #[test]
    fn failed_validations_per_name_stay_within_the_hourly_limit() {
        let mut now = t0();
        let mut l = Ledger::default();
        for _ in 0..MAX_FAILED_VALIDATIONS_PER_HOUR {
            l.validation_room("a.test", now).unwrap();
            l.validation_failed("a.test", now);
            now += Duration::from_secs(60);
        }
        let wait = l.validation_room("a.test", now).unwrap_err();
        assert_eq!(wait, HOUR - Duration::from_secs(60 * 4));
        assert!(l.validation_room("b.test", now).is_ok(), "per name");
        // The oldest failure leaves the hour: one more validation is allowed.
        now += wait;
        l.validation_room("a.test", now).unwrap();
    }

    #[test]
    fn the_order_budget_slides_over_the_hour() {
        let mut now = t0();
        let mut l = Ledger::default();
        l.spend_order(now, 2).unwrap();
        now += Duration::from_secs(600);
        l.spend_order(now, 2).unwrap();
        let wait = l.spend_order(now, 2).unwrap_err();
        assert_eq!(wait, HOUR - Duration::from_secs(600));
        now += wait;
        l.spend_order(now, 2).unwrap();
    }

    #[test]
    fn everything_survives_a_restart_and_old_entries_expire() {
        let mut now = t0();
        let mut l = Ledger::default();
        l.spend_order(now, 10).unwrap();
        for _ in 0..MAX_FAILED_VALIDATIONS_PER_HOUR {
            l.validation_failed("a.test", now);
        }
        let f = l.failed("a.test", now, "refused".into(), |n| {
            Duration::from_secs(600 * u64::from(n))
        });
        assert_eq!(f.count, 1);
        let bytes = l.to_bytes(now);

        let mut back = Ledger::from_bytes(&bytes, now).unwrap();
        assert_eq!(back.validation_room("a.test", now).unwrap_err(), HOUR);
        assert_eq!(back.spend_order(now, 1).unwrap_err(), HOUR);
        let f = back.failure("a.test").unwrap();
        assert_eq!((f.count, f.last_error.as_str()), (1, "refused"));
        assert_eq!(f.retry_at, now + Duration::from_secs(600));
        assert_eq!(
            back.failed("a.test", now, "again".into(), |n| Duration::from_secs(u64::from(n)))
                .count,
            2
        );

        // An hour later nothing of it is loaded.
        now += HOUR;
        let mut later = Ledger::from_bytes(&bytes, now).unwrap();
        assert!(later.validation_room("a.test", now).is_ok());
        later.spend_order(now, 1).unwrap();
        assert!(later.failure("a.test").is_none());

        // A clock that went back keeps what was saved, counted as now.
        let mut earlier = Ledger::from_bytes(&bytes, t0() - HOUR).unwrap();
        assert!(earlier.validation_room("a.test", t0() - HOUR).is_err());

        assert!(
            Ledger::from_bytes(
                b"{\"version\":99,\"orders\":[],\"validation_failures\":{},\"backoff\":{}}",
                now
            )
            .is_err()
        );
        assert!(Ledger::from_bytes(b"not json", now).is_err());
    }

    #[test]
    fn memory_of_names_is_bounded() {
        let now = SystemTime::now();
        let mut l = Ledger::default();
        for i in 0..MAX_REMEMBERED_NAMES + 10 {
            let name = format!("n{i}.test");
            l.validation_failed(&name, now);
            l.failed(&name, now, "x".into(), |_| HOUR);
        }
        assert!(l.validations.len() <= MAX_REMEMBERED_NAMES);
        assert!(l.failures.len() <= MAX_REMEMBERED_NAMES);
    }
}
