//! The wall clock certificate decisions read (is it time to renew? how
//! many days are left?). Production uses the system clock; tests shift it
//! forward to reach a renewal window in milliseconds instead of weeks.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A cheap, cloneable clock handle. Clones share one offset.
#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system clock, unchanged. `Some`: system time plus an
    /// offset that [`Clock::advance`] moves; the channel wakes waiters.
    offset: Option<Arc<watch::Sender<Duration>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { offset: None }
    }

    /// The system clock plus an offset, starting at zero, that only
    /// [`Clock::advance`] changes. For tests.
    pub fn adjustable() -> Self {
        let (tx, _) = watch::channel(Duration::ZERO);
        Clock {
            offset: Some(Arc::new(tx)),
        }
    }

    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        match &self.offset {
            Some(offset) => now + *offset.borrow(),
            None => now,
        }
    }

    /// Moves an adjustable clock forward by `by` and wakes every task
    /// waiting in [`Clock::changed`]. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(offset) = &self.offset {
            offset.send_modify(|o| *o += by);
        }
    }

    /// Resolves after the next [`Clock::advance`]; never, for the system
    /// clock. Cancellation-safe. An advance between a caller reading the
    /// time and calling this is missed: use [`Clock::watch`] then.
    pub async fn changed(&self) {
        self.watch().changed().await
    }

    /// Starts watching for advances now: [`ClockWatch::changed`] resolves
    /// for any advance after this call, even one before it is polled.
    pub fn watch(&self) -> ClockWatch {
        ClockWatch {
            rx: self.offset.as_ref().map(|offset| {
                let mut rx = offset.subscribe();
                rx.borrow_and_update();
                rx
            }),
        }
    }

    /// Time from now until `at`, zero if `at` has passed.
    pub fn until(&self, at: SystemTime) -> Duration {
        at.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

/// Advances of a [`Clock`] since [`Clock::watch`].
pub struct ClockWatch {
    rx: Option<watch::Receiver<Duration>>,
}

impl ClockWatch {
    /// Resolves once the clock was advanced; never, for the system clock.
    pub async fn changed(&mut self) {
        match &mut self.rx {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.offset {
            Some(offset) => write!(f, "Clock(system + {:?})", *offset.borrow()),
            None => f.write_str("Clock(system)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advancing_moves_now_and_wakes_waiters() {
        let clock = Clock::adjustable();
        let before = clock.now();
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.changed().await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        let moved = clock.now().duration_since(before).unwrap();
        assert!(moved >= Duration::from_secs(3600), "{moved:?}");
        assert_eq!(Clock::system().until(SystemTime::UNIX_EPOCH), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_advance_after_watching_is_seen_even_before_the_wait() {
        let clock = Clock::adjustable();
        let mut watch = clock.watch();
        clock.advance(Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(1), watch.changed())
            .await
            .expect("the advance before the wait is not lost");
    }
}
