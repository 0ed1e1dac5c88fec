//! ACME certificates over time: one order per name however many
//! handshakes wait for it, backoff after failures, and a background task
//! that renews when a third of the lifetime is left (or inside the CA's
//! ARI window), drops expired certificates, and fetches the gateway's own
//! names.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::acme::{AcmeIssuer, CertEvents, RenewalWindow};
use crate::challenge::Challenges;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ledger::Failure;
use crate::pem::{CertBundle, CertInfo};
use crate::served::{Served, ServedCerts};
use crate::store::CertStore;

/// Orders talking to the CA at once; more wait their turn.
pub const MAX_CONCURRENT_ORDERS: usize = 4;
/// Names with an order pending (running or queued); beyond this, new
/// names fail at once instead of queueing without bound.
pub const MAX_PENDING_ORDERS: usize = 256;
/// First wait after a failed validation; doubles per failure. (The
/// ledger also caps failed validations per name per hour, which this
/// backoff alone would not: auto mode makes two orders per attempt.)
pub const VALIDATION_RETRY_BASE: Duration = Duration::from_secs(600);
/// First wait after any other failure (CA unreachable, store error);
/// doubles per failure.
pub const RETRY_BASE: Duration = Duration::from_secs(60);
/// Longest wait between attempts for one name.
pub const MAX_RETRY: Duration = Duration::from_secs(24 * 3600);
/// The maintenance task wakes at least this often.
pub const MAX_MAINTENANCE_SLEEP: Duration = Duration::from_secs(3600);
/// Bounds on how soon the CA may ask to be asked again about a renewal
/// window.
const ARI_RECHECK: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(24 * 3600));
/// Wait before asking the CA again when a renewal-window request failed.
const ARI_RETRY: Duration = Duration::from_secs(3600);
/// Renewal-window requests in flight at once in one maintenance pass.
pub const MAX_CONCURRENT_ARI: usize = 8;
/// Longest time one maintenance pass spends on renewal-window requests;
/// the rest wait for the next pass (which follows at once). After a
/// restart there may be thousands to ask, each up to the HTTP timeout:
/// asked one by one, they would hold up expiring certificates and the
/// gateway's own names.
pub const ARI_PASS_DEADLINE: Duration = Duration::from_secs(30);

type Outcome = Option<Result<(), Arc<Error>>>;

pub(crate) struct AcmeState {
    pub(crate) issuer: AcmeIssuer,
    store: Arc<dyn CertStore>,
    pub(crate) challenges: Arc<Challenges>,
    events: Arc<dyn CertEvents>,
    inflight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    permits: Semaphore,
    /// Wakes the maintenance task (new certificate, failure, stop).
    wake: Arc<Notify>,
    stopped: watch::Sender<bool>,
    /// The certificates served: renewal's only way to them.
    served: Arc<ServedCerts>,
    clock: Clock,
}

impl AcmeState {
    pub(crate) fn new(
        issuer: AcmeIssuer,
        store: Arc<dyn CertStore>,
        challenges: Arc<Challenges>,
        events: Arc<dyn CertEvents>,
        served: Arc<ServedCerts>,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(AcmeState {
            issuer,
            store,
            challenges,
            events,
            inflight: Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_CONCURRENT_ORDERS),
            wake: Arc::new(Notify::new()),
            stopped: watch::channel(false).0,
            served,
            clock,
        })
    }

    pub(crate) fn stop(&self) {
        self.stopped.send_replace(true);
    }

    fn failure(&self, name: &str) -> Option<Failure> {
        self.issuer.ledger().failure(name)
    }

    fn is_inflight(&self, name: &str) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }
}

fn random_fraction() -> f64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// When to renew a certificate with no renewal window from the CA: when a
/// third of its lifetime is left, minus up to a thirtieth of the lifetime
/// of jitter so renewals of certificates issued together spread out.
pub(crate) fn renew_at(info: &CertInfo) -> SystemTime {
    let lifetime = info.lifetime();
    let jitter = lifetime.div_f64(30.0).mul_f64(random_fraction());
    info.not_after
        .checked_sub(lifetime / 3 + jitter)
        .unwrap_or(info.not_before)
}

/// Why a certificate is being obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A handshake (or startup, for own names) needs one: a stored
    /// certificate is good enough, even if due for renewal.
    Needed,
    /// The served certificate is due for renewal.
    Renewal,
}

/// Orders: one per name however many handshakes wait for it.
impl AcmeState {
    /// Waits for a certificate for `name`, starting one order if none is
    /// pending and the name is not backing off after failures.
    pub(crate) async fn obtain(self: &Arc<Self>, name: &str) -> Result<()> {
        let mut rx = self.start(name, Trigger::Needed)?;
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Acme {
                name: name.to_owned(),
                step: "order task",
                message: "the order task ended without a result".into(),
            })?
            .clone();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Ok(()),
        }
    }

    /// Joins the pending order for `name` or starts one.
    fn start(self: &Arc<Self>, name: &str, trigger: Trigger) -> Result<watch::Receiver<Outcome>> {
        let acme = self.clone();
        let task_name = name.to_owned();
        self.spawn_order(name, async move { acme.obtain_now(&task_name, trigger).await })
    }

    /// Joins the pending order for `name`, or runs `order` as its task.
    fn spawn_order(
        self: &Arc<Self>,
        name: &str,
        order: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Result<watch::Receiver<Outcome>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = inflight.get(name) {
            return Ok(rx.clone());
        }
        if let Some(f) = self.failure(name) {
            let retry_in = self.clock.until(f.retry_at);
            if !retry_in.is_zero() {
                return Err(Error::BackingOff {
                    name: name.to_owned(),
                    retry_in,
                    last_error: f.last_error,
                });
            }
        }
        if inflight.len() >= MAX_PENDING_ORDERS {
            return Err(Error::TooManyPending(inflight.len()));
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(name.to_owned(), rx.clone());
        let task = OrderTask {
            acme: self.clone(),
            name: name.to_owned(),
            tx,
            outcome: None,
        };
        // A task of its own: the order finishes even if every handshake
        // waiting for it gives up.
        tokio::spawn(async move {
            let result = order.await;
            task.acme.record(&task.name, &result);
            task.acme.issuer.persist().await;
            task.finish(result);
        });
        Ok(rx)
    }

    fn record(&self, name: &str, result: &Result<()>) {
        let mut ledger = self.issuer.ledger();
        match result {
            Ok(()) => ledger.succeeded(name),
            Err(e) => {
                let failure = ledger.failed(name, self.clock.now(), e.to_string(), |count| backoff(e, count));
                drop(ledger);
                let serving = self.served.get(name).map(|s| s.info.not_after);
                tracing::warn!(
                    %name,
                    error = %e,
                    failures = failure.count,
                    retry_in = ?self.clock.until(failure.retry_at),
                    still_serving_until = ?serving,
                    "could not obtain a certificate"
                );
            }
        }
    }

    /// One attempt: the store first (a restart, another replica), then an
    /// order.
    async fn obtain_now(&self, name: &str, trigger: Trigger) -> Result<()> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Store("order queue closed".into()))?;
        let issuer_key = self.issuer.issuer_key();
        let _lock = self.store.lock(issuer_key, name).await?;
        match self.store.load_cert(issuer_key, name).await {
            Ok(Some(stored)) => match self.install_if_better(name, &stored) {
                Ok(served) => {
                    if served && (trigger == Trigger::Needed || !self.is_due(name)) {
                        return Ok(());
                    }
                    if trigger == Trigger::Needed && self.served.has(name) {
                        return Ok(());
                    }
                }
                // A damaged file must not block issuance: order a new one.
                Err(e) => tracing::warn!(%name, error = %e, "ignoring a damaged stored certificate"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(%name, error = %e, "ignoring an unreadable stored certificate"),
        }
        let on_demand = trigger == Trigger::Needed && !self.served.is_own(name);
        let bundle = self.issuer.issue(name, on_demand, self.events.as_ref()).await?;
        let cert = bundle.certified_key().map_err(Error::BadCertificate)?;
        // Served even if it cannot be stored: the order is spent either way;
        // a store that fails only costs a new order after a restart.
        if let Err(e) = self.store.save_cert(issuer_key, name, bundle).await {
            tracing::error!(%name, error = %e, "a new certificate could not be stored; serving it from memory");
        }
        self.install(name, cert)?;
        self.hold_fresh(name);
        if let Some(s) = self.served.get(name) {
            tracing::info!(
                %name,
                not_after = %httpdate::fmt_http_date(s.info.not_after),
                renew_after = %httpdate::fmt_http_date(s.renew_at),
                "certificate issued"
            );
        }
        Ok(())
    }

    /// Serves `cert` for `name`, renewed a third of its lifetime before
    /// the end unless the CA says otherwise (asked at the next pass).
    fn install(&self, name: &str, cert: Arc<rustls::sign::CertifiedKey>) -> Result<()> {
        let now = self.clock.now();
        self.served.install(name, cert, &|info| (renew_at(info), Some(now)))
    }

    /// A certificate issued just now is not renewed before a third of its
    /// lifetime has passed by our clock, whatever its dates say: a clock
    /// ahead of the CA's (or a CA back-dating far) must not turn every fresh
    /// certificate into a due one and renew in a loop.
    fn hold_fresh(&self, name: &str) {
        let now = self.clock.now();
        if let Some(s) = self.served.lock().get_mut(name) {
            s.renew_at = s.renew_at.max(now + s.info.lifetime() / 3);
        }
    }

    /// Serves a stored certificate if it is valid and outlives the one
    /// served now. Returns whether it is served now.
    fn install_if_better(&self, name: &str, stored: &CertBundle) -> Result<bool> {
        let cert = stored.certified_key().map_err(Error::BadCertificate)?;
        let info = CertInfo::of(&cert)?;
        if self.clock.now() >= info.not_after {
            return Ok(false);
        }
        match self.served.get(name) {
            Some(c) if c.info.not_after >= info.not_after => Ok(c.info == info),
            _ => {
                self.install(name, cert)?;
                Ok(true)
            }
        }
    }

    fn is_due(&self, name: &str) -> bool {
        self.served.get(name).is_none_or(|s| s.renew_at <= self.clock.now())
    }
}

/// The in-flight entry of one order task. Dropped when the task ends, also
/// by a panic or a runtime shutting down mid-order: the entry goes and the
/// waiters get an answer, so the name is never stuck "in flight".
struct OrderTask {
    acme: Arc<AcmeState>,
    name: String,
    tx: watch::Sender<Outcome>,
    /// Set when the task finished normally.
    outcome: Outcome,
}

impl OrderTask {
    fn finish(mut self, result: Result<()>) {
        self.outcome = Some(result.map_err(Arc::new));
    }
}

impl Drop for OrderTask {
    fn drop(&mut self) {
        let outcome = match self.outcome.take() {
            Some(o) => o,
            None => {
                let err = Error::Acme {
                    name: self.name.clone(),
                    step: "order task",
                    message: "the order task ended without a result".into(),
                };
                // Backs off like any failure, so a panicking order cannot
                // run again at every handshake. Saved with the next change.
                let result = Err(err);
                self.acme.record(&self.name, &result);
                result.map_err(Arc::new)
            }
        };
        self.acme
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
        let _ = self.tx.send(Some(outcome));
        self.acme.wake.notify_one();
    }
}

fn backoff(err: &Error, count: u32) -> Duration {
    let base = match err {
        Error::ChallengeFailed { .. } => VALIDATION_RETRY_BASE,
        Error::ValidationTimeout { .. } => VALIDATION_RETRY_BASE,
        Error::BudgetExhausted { retry_in, .. } | Error::ValidationLimit { retry_in, .. } => {
            return (*retry_in).min(MAX_RETRY);
        }
        Error::Shared(inner) => return backoff(inner, count),
        _ => RETRY_BASE,
    };
    let exp = base
        .saturating_mul(1u32 << count.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    match err {
        Error::RateLimited { wait, .. } => exp.max(*wait).min(MAX_RETRY),
        _ => exp,
    }
}

/// Startup and the background task: stored certificates, renewals,
/// expiry, the gateway's own names.
impl AcmeState {
    /// Serves every valid stored certificate of names still allowed.
    pub(crate) async fn load_stored(&self) {
        let key = self.issuer.issuer_key();
        let names = match self.store.list_certs(key).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list stored certificates");
                return;
            }
        };
        let mut loaded = 0usize;
        for name in names {
            // Ownership only: a name under a wildcard grant needs a live relay
            // to be *ordered*, but its relay reconnects after the gateway is
            // up, and a stored certificate costs the CA nothing.
            if !self.served.may_serve_stored(&name) {
                continue;
            }
            match self.store.load_cert(key, &name).await {
                Ok(Some(stored)) => match self.install_if_better(&name, &stored) {
                    Ok(true) => loaded += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%name, error = %e, "ignoring a stored certificate"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(%name, error = %e, "ignoring a stored certificate"),
            }
        }
        tracing::info!(loaded, "stored certificates served");
    }

    /// Renews in the background until [`AcmeState::stop`] or until the
    /// manager is dropped.
    pub(crate) fn spawn_maintenance(self: &Arc<Self>) {
        tokio::spawn(maintain(
            Arc::downgrade(self),
            self.stopped.subscribe(),
            self.wake.clone(),
        ));
    }

    /// One pass: own names, expiry, due renewals, then renewal windows from
    /// the CA (bounded, time-boxed, after everything that must not wait).
    /// Returns when the next pass is needed.
    async fn tick(self: &Arc<Self>) -> SystemTime {
        let mut next = self.clock.now() + MAX_MAINTENANCE_SLEEP;
        let mut consider = |at: SystemTime| {
            if at < next {
                next = at;
            }
        };
        for name in &self.served.own_names {
            if !self.served.has(name) {
                self.start_background(name, Trigger::Needed, &mut consider);
            }
        }
        let snapshot: Vec<(String, Served)> = self.served.lock().iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        let mut ask_ca = Vec::new();
        for (name, served) in snapshot {
            let now = self.clock.now();
            if now >= served.info.not_after {
                tracing::warn!(%name, "certificate expired; no longer served");
                self.served.uninstall(&name);
                continue;
            }
            consider(served.info.not_after);
            if !self.served.allowed(&name) {
                continue; // no longer registered: served until it expires, not renewed
            }
            if served.renew_at <= now {
                self.start_background(&name, Trigger::Renewal, &mut consider);
                continue;
            }
            consider(served.renew_at);
            match served.ari_check_at {
                Some(check_at) if check_at <= now => ask_ca.push((name, served)),
                Some(check_at) => consider(check_at),
                None => {}
            }
        }
        if ask_ca.is_empty() {
            return next;
        }
        let checker = self.clone();
        let (answers, left) = bounded_pass(ask_ca, MAX_CONCURRENT_ARI, ARI_PASS_DEADLINE, move |(name, served)| {
            let acme = checker.clone();
            async move {
                let (window, answered_at) = answered(&acme.clock, acme.issuer.renewal_window(&served.leaf)).await;
                (name, served, window, answered_at)
            }
        })
        .await;
        for (name, served, window, answered_at) in answers {
            let renew_at = self.apply_window(&name, &served, window, answered_at);
            if let Some(check_at) = self.served.get(&name).and_then(|s| s.ari_check_at) {
                consider(check_at);
            }
            if renew_at <= self.clock.now() {
                self.start_background(&name, Trigger::Renewal, &mut consider);
            } else {
                consider(renew_at);
            }
        }
        if left > 0 {
            tracing::debug!(left, "renewal windows not asked for in this pass; next pass at once");
            consider(self.clock.now());
        }
        next
    }

    /// Applies the CA's answer about a renewal window (ARI), given at
    /// `answered_at` (see [`answered`]), to `name`'s certificate; returns its
    /// renewal time. The next request is due `Retry-After` (or
    /// [`ARI_RETRY`] after a failure) from `answered_at`, not from now.
    fn apply_window(
        &self,
        name: &str,
        served: &Served,
        window: Result<Option<RenewalWindow>>,
        answered_at: SystemTime,
    ) -> SystemTime {
        let (new_renew_at, new_check_at) = match window {
            Ok(Some(w)) => {
                let span = w.end.duration_since(w.start).unwrap_or(Duration::ZERO);
                let at = w.start + span.mul_f64(random_fraction());
                let recheck = w.recheck_in.clamp(ARI_RECHECK.0, ARI_RECHECK.1);
                tracing::debug!(%name, window_start = ?w.start, window_end = ?w.end, "renewal window from the CA");
                (at.max(served.info.not_before), Some(answered_at + recheck))
            }
            Ok(None) => (served.renew_at, None),
            Err(e) => {
                tracing::debug!(%name, error = %e, "renewal window request failed");
                (served.renew_at, Some(answered_at + ARI_RETRY))
            }
        };
        if let Some(s) = self.served.lock().get_mut(name)
            && s.info == served.info
        {
            s.renew_at = new_renew_at;
            s.ari_check_at = new_check_at;
        }
        new_renew_at
    }

    fn start_background(self: &Arc<Self>, name: &str, trigger: Trigger, consider: &mut impl FnMut(SystemTime)) {
        if self.is_inflight(name) {
            return;
        }
        if let Some(f) = self.failure(name)
            && f.retry_at > self.clock.now()
        {
            consider(f.retry_at);
            return;
        }
        if trigger == Trigger::Renewal {
            tracing::info!(%name, "renewing certificate");
        }
        // The outcome is logged and recorded by the order task.
        let _ = self.start(name, trigger);
    }
}

async fn maintain(weak: Weak<AcmeState>, mut stopped: watch::Receiver<bool>, wake: Arc<Notify>) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let Some(acme) = weak.upgrade() else { return };
        let clock = acme.clock.clone();
        // Watching before the pass: an advance while it runs is not lost.
        let mut advanced = clock.watch();
        let next = acme.tick().await;
        let wake = wake.notified();
        tokio::pin!(wake);
        // Registers interest before `acme` is released so no wake is lost.
        wake.as_mut().enable();
        let sleep = clock.until(next).min(MAX_MAINTENANCE_SLEEP);
        drop(acme);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = advanced.changed() => {}
            _ = wake => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Runs `check` on every item, at most `limit` at once, until all are
/// done or `deadline` has passed; checks still running then are cancelled.
/// Returns the answers and how many items got none. A check that panics
/// gets no answer and does not stop the others.
pub(crate) async fn bounded_pass<T, R, F, Fut>(
    items: Vec<T>,
    limit: usize,
    deadline: Duration,
    check: F,
) -> (Vec<R>, usize)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + deadline;
    let total = items.len();
    let mut pending = items.into_iter();
    let mut running = JoinSet::new();
    for item in pending.by_ref().take(limit.max(1)) {
        running.spawn(check(item));
    }
    let mut answers = Vec::with_capacity(total);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, running.join_next()).await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
        if let Some(item) = pending.next() {
            running.spawn(check(item));
        }
    }
    // Dropping the set cancels what still runs.
    let left = total - answers.len();
    (answers, left)
}

/// Runs `request`; returns its output and when it was answered: `clock`
/// as read when asking plus the monotonic time the request took. A step of
/// `clock` while the request is in flight (NTP, [`Clock::advance`]) thus
/// counts as after the answer. Reading `clock` after the answer instead
/// would add the step to every wait counted from the answer: the CA's
/// `Retry-After` would be stretched, and the pass the step wakes would find
/// nothing due.
async fn answered<T>(clock: &Clock, request: impl Future<Output = T>) -> (T, SystemTime) {
    let asked_at = clock.now();
    let started = tokio::time::Instant::now();
    let output = request.await;
    (output, asked_at + started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::AcmeConfig;
    use crate::manager::{AcmeOptions, CertManager};
    use crate::served::Registered;
    use crate::store::DirStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn acme_of(m: &CertManager) -> &Arc<AcmeState> {
        match &m.inner.source {
            crate::manager::Source::Acme(acme) => acme,
            crate::manager::Source::Dev { .. } => panic!("an ACME manager"),
        }
    }

    /// An ACME manager whose CA is never reached (nothing here orders).
    async fn manager(dir: &std::path::Path, registered: Registered, options: AcmeOptions) -> CertManager {
        CertManager::with_acme(
            AcmeConfig::new("https://127.0.0.1:9/dir"),
            Arc::new(DirStore::new(dir)),
            Vec::new(),
            registered,
            options,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_panicking_order_task_does_not_jam_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), Arc::new(|_: &str| true), AcmeOptions::default()).await;
        let acme = acme_of(&m);
        let mut rx = acme
            .spawn_order("a.test", async { panic!("order task panicked (on purpose)") })
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
            .await
            .expect("the waiters get an answer")
            .expect("sent before the channel closed")
            .clone();
        assert!(matches!(outcome, Some(Err(_))), "{outcome:?}");
        assert!(!acme.is_inflight("a.test"), "the in-flight entry is gone");
        // The next handshake gets an answer at once (backing off), not a
        // wait on an order that will never end.
        let next = tokio::time::timeout(Duration::from_secs(10), acme.obtain("a.test"))
            .await
            .expect("not stuck");
        assert!(matches!(next, Err(Error::BackingOff { .. })), "{next:?}");
    }

    /// Counts a running check until dropped (finished or cancelled).
    struct Running(Arc<AtomicUsize>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_window_requests_are_bounded_and_time_boxed() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let items: Vec<u32> = (0..100).collect();
        let (r, m) = (running.clone(), most.clone());
        // A CA taking 30 s per answer: 8 at once, 61 s, two rounds.
        let (answers, left) = bounded_pass(items, 8, Duration::from_secs(61), move |i| {
            let (running, most) = (r.clone(), m.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _running = Running(running);
                tokio::time::sleep(Duration::from_secs(30)).await;
                i
            }
        })
        .await;
        assert_eq!(answers.len(), 16);
        assert_eq!(left, 84);
        assert_eq!(most.load(Ordering::SeqCst), 8);
        // Cancelled checks do not linger.
        for _ in 0..100 {
            if running.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(running.load(Ordering::SeqCst), 0);
        // A panicking check costs only its own answer.
        let (answers, left) = bounded_pass(vec![1, 2, 3], 2, Duration::from_secs(5), |i| async move {
            assert_ne!(i, 2, "check panicked (on purpose)");
            i
        })
        .await;
        assert_eq!((answers.len(), left), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_step_during_a_request_counts_after_its_answer() {
        let clock = Clock::adjustable();
        let before = clock.now();
        let ((), answered_at) = answered(&clock, async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            clock.advance(Duration::from_secs(120));
        })
        .await;
        let took = answered_at.duration_since(before).unwrap();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "answered {took:?} after asking, the 120 s step included"
        );
    }

    /// The flaky ARI test in `tests/tests/acme.rs`: the clock advanced
    /// 120 s while the first renewal-window request was in flight, the
    /// recheck (Retry-After 60 s) was counted from after the advance, and
    /// the pass the advance woke found nothing due.
    #[tokio::test]
    async fn the_next_renewal_window_request_counts_from_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), Arc::new(|_: &str| true), AcmeOptions::default()).await;
        let acme = acme_of(&m);
        let cert = crate::pem::test_bundle("a.test").certified_key().unwrap();
        acme.install("a.test", cert).unwrap();
        // Answered 120 s ago by the clock: it has moved on since.
        let answered_at = acme.clock.now() - Duration::from_secs(120);
        let later = answered_at + Duration::from_secs(30 * 86400);
        let window = RenewalWindow {
            start: later,
            end: later + Duration::from_secs(86400),
            recheck_in: Duration::from_secs(60),
        };
        let served = acme.served.get("a.test").unwrap();
        acme.apply_window("a.test", &served, Ok(Some(window)), answered_at);
        let check_at = acme.served.get("a.test").unwrap().ari_check_at;
        assert_eq!(check_at, Some(answered_at + Duration::from_secs(60)));
        assert!(
            check_at.is_some_and(|at| at <= acme.clock.now()),
            "due at the next pass"
        );
        // A failed request is retried likewise from when it failed.
        let served = acme.served.get("a.test").unwrap();
        acme.apply_window("a.test", &served, Err(Error::Store("down".into())), answered_at);
        assert_eq!(
            acme.served.get("a.test").unwrap().ari_check_at,
            Some(answered_at + ARI_RETRY)
        );
    }

    #[tokio::test]
    async fn stored_certificates_are_served_on_ownership_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = crate::store::issuer_key("https://127.0.0.1:9/dir");
        for name in ["x.wild.test", "gone.test"] {
            store
                .save_cert(&key, name, crate::pem::test_bundle(name))
                .await
                .unwrap();
        }
        // A wildcard name with no live relay: not registered for orders,
        // but owned.
        let live: Registered = Arc::new(|_: &str| false);
        let owned: Registered = Arc::new(|n: &str| n.ends_with(".wild.test"));
        let options = AcmeOptions {
            stored: Some(owned),
            ..Default::default()
        };
        let m = manager(dir.path(), live.clone(), options).await;
        assert!(m.resolver().get("x.wild.test").is_some(), "served after a restart");
        assert!(m.resolver().get("gone.test").is_none(), "nobody owns it any more");
        // Without the ownership check, only what `registered` admits.
        let m = manager(dir.path(), live, AcmeOptions::default()).await;
        assert!(m.resolver().get("x.wild.test").is_none());
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
        };
        for _ in 0..100 {
            let at = renew_at(&info);
            let left = info.not_after.duration_since(at).unwrap();
            assert!(left >= Duration::from_secs(30 * 86400), "{left:?}");
            assert!(left <= Duration::from_secs(33 * 86400), "{left:?}");
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_honours_the_server() {
        let other = Error::Store("x".into());
        assert_eq!(backoff(&other, 1), RETRY_BASE);
        assert_eq!(backoff(&other, 3), RETRY_BASE * 4);
        assert_eq!(backoff(&other, 40), MAX_RETRY);
        let invalid = Error::ChallengeFailed {
            name: "a".into(),
            challenge: "http-01",
            detail: "x".into(),
        };
        assert_eq!(backoff(&invalid, 2), VALIDATION_RETRY_BASE * 2);
        let limited = Error::RateLimited {
            wait: Duration::from_secs(7200),
            detail: "x".into(),
        };
        assert_eq!(backoff(&limited, 1), Duration::from_secs(7200));
        let budget = Error::BudgetExhausted {
            per_hour: 1,
            retry_in: Duration::from_secs(5),
        };
        assert_eq!(backoff(&budget, 9), Duration::from_secs(5));
    }
}
