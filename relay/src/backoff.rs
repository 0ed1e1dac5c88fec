//! Reconnect delays: exponential, capped, with full jitter (AWS
//! Architecture Blog, "Exponential Backoff And Jitter"), so a thousand
//! relays that lost the same gateway don't come back in lockstep.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;

/// A session that lasted this long counts as stable: backoff starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// First reconnect delays are drawn from `[0, BACKOFF_BASE]`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Reconnect delays never exceed this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, attempt: 0 }
    }

    /// The next delay: uniform in `[0, min(cap, base · 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit_random())
    }

    /// Current upper bound.
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// Jumps to the cap (for errors that won't fix themselves soon).
    pub fn to_cap(&mut self) {
        self.attempt = 31;
    }

    /// After a stable session: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Uniform in [0, 1).
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// What a relay does between two attempts to reach one gateway: the
/// schedule `maintain::maintain` follows, kept apart so it can be timed.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
        }
    }
}

impl Reconnect {
    /// A session ended after `lasted`: after a stable one ([`STABLE_AFTER`])
    /// the delays start over from [`BACKOFF_BASE`]; after a short one they
    /// keep growing, so a gateway that accepts and then drops a relay
    /// again and again is not hammered.
    pub fn session_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE_AFTER {
            self.backoff.reset();
        }
    }

    /// An attempt failed; one that won't fix itself soon (`retryable`
    /// false, e.g. an unknown key) waits the longest delay.
    pub fn attempt_failed(&mut self, retryable: bool) {
        if !retryable {
            self.backoff.to_cap();
        }
    }

    /// The delay before the next attempt (full jitter).
    pub fn next_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// Upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        self.backoff.ceiling()
    }

    /// Sleeps the next delay. False if `shutdown` fired first.
    /// Cancellation safe: dropping it only skips the sleep.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tracing::debug!(?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let ceilings: Vec<_> = (0..12)
            .map(|_| {
                let c = b.ceiling();
                assert!(b.next_delay() <= c);
                c
            })
            .collect();
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(ceilings[11], Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        b.to_cap();
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn only_a_stable_session_starts_the_backoff_over() {
        let mut r = Reconnect::default();
        for _ in 0..6 {
            r.attempt_failed(true);
            r.next_delay();
        }
        let grown = r.ceiling();
        assert_eq!(grown, BACKOFF_BASE * 64);
        // A session that drops quickly (the gateway accepts, then fails)
        // does not reset: delays keep growing.
        r.session_ended(STABLE_AFTER - Duration::from_millis(1));
        assert_eq!(r.ceiling(), grown);
        r.session_ended(STABLE_AFTER);
        assert_eq!(r.ceiling(), BACKOFF_BASE);
        r.attempt_failed(false);
        assert_eq!(r.ceiling(), BACKOFF_CAP);
    }

    /// Largest share of `times` within any 100 ms (sliding window).
    fn worst_window(times: &mut [Duration]) -> f64 {
        times.sort();
        let window = Duration::from_millis(100);
        let (mut worst, mut first) = (0, 0);
        for last in 0..times.len() {
            while times[last] - times[first] >= window {
                first += 1;
            }
            worst = worst.max(last - first + 1);
        }
        worst as f64 / times.len() as f64
    }

    /// 1 000 relays run the real reconnect loop (real [`Reconnect`], real
    /// tokio sleeps, real TCP connects) against a gateway port that
    /// refuses connections until `back`, when it starts listening.
    /// Returns when each one got through. Time is virtual (paused), so
    /// seconds of backoff take milliseconds; the connects are real.
    async fn arrivals(relays: usize, back: Duration) -> Vec<Duration> {
        // Bound but not listening: connections are refused, and the port
        // stays ours until the gateway comes back on it.
        let gateway = tokio::net::TcpSocket::new_v4().expect("socket");
        gateway.bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
        let addr = gateway.local_addr().expect("local addr");
        let start = tokio::time::Instant::now();
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..relays {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let mut reconnect = Reconnect::default();
                // Each relay had a long session with the gateway that died
                // at `start`, as in `maintain`: wait, then try again.
                reconnect.session_ended(STABLE_AFTER);
                let mut attempts = 0u32;
                while reconnect.wait(&shutdown).await {
                    attempts += 1;
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(_) => return Some((start.elapsed(), attempts)),
                        Err(_) => reconnect.attempt_failed(true),
                    }
                }
                None
            });
        }
        tokio::time::sleep(back).await;
        let listener = gateway.listen(4096).expect("listen");
        let accept = tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let mut times = Vec::with_capacity(relays);
        let mut attempts = 0;
        while let Some(done) = tasks.join_next().await {
            let (at, n) = done.expect("relay task").expect("not shut down");
            assert!(
                at >= back,
                "connected at {at:?}, before the gateway was back at {back:?}"
            );
            times.push(at);
            attempts += n;
        }
        accept.abort();
        assert!(
            attempts as usize > 3 * relays,
            "only {attempts} attempts: the relays barely retried"
        );
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_relays_come_back_spread_out() {
        // A gateway restart takes seconds; by then the relays' retries are
        // spread by jitter, so the restarted gateway never gets more than
        // a small share of them in any 100 ms.
        for secs in [5, 10, 30] {
            let back = Duration::from_secs(secs);
            let mut times = arrivals(1000, back).await;
            let worst = worst_window(&mut times);
            let last = times.last().copied().unwrap_or_default();
            eprintln!(
                "back after {secs} s: worst 100 ms window {:.1}%, all in by {last:?}",
                worst * 100.0
            );
            assert!(
                worst <= 0.05,
                "back after {secs} s: {:.1}% in one 100 ms window",
                worst * 100.0
            );
            // Nobody waits longer than the largest delay once it is back.
            assert!(last <= back + BACKOFF_CAP + Duration::from_secs(1), "{last:?}");
        }
    }
}
