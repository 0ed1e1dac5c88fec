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
use crate::manager::{Inner, Served, Source};
use crate::pem::{CertBundle, CertInfo};
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
}

impl AcmeState {
    pub(crate) fn new(
        issuer: AcmeIssuer,
        store: Arc<dyn CertStore>,
        challenges: Arc<Challenges>,
        events: Arc<dyn CertEvents>,
    ) -> Self {
        AcmeState {
            issuer,
            store,
            challenges,
            events,
            inflight: Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_CONCURRENT_ORDERS),
            wake: Arc::new(Notify::new()),
            stopped: watch::channel(false).0,
        }
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

fn acme_of(inner: &Inner) -> Option<&AcmeState> {
    match &inner.source {
        Source::Acme(a) => Some(a),
        Source::Dev { .. } => None,
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

/// Waits for a certificate for `name`, starting one order if none is
/// pending and the name is not backing off after failures.
pub(crate) async fn obtain(inner: &Arc<Inner>, name: &str) -> Result<()> {
    let Some(acme) = acme_of(inner) else {
        return Err(Error::AcmeConfig("ACME is not configured".into()));
    };
    let mut rx = start(inner, acme, name, Trigger::Needed)?;
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
fn start(inner: &Arc<Inner>, acme: &AcmeState, name: &str, trigger: Trigger) -> Result<watch::Receiver<Outcome>> {
    let task_inner = inner.clone();
    let task_name = name.to_owned();
    spawn_order(inner, acme, name, async move {
        obtain_now(&task_inner, &task_name, trigger).await
    })
}

/// Joins the pending order for `name`, or runs `order` as its task.
fn spawn_order(
    inner: &Arc<Inner>,
    acme: &AcmeState,
    name: &str,
    order: impl Future<Output = Result<()>> + Send + 'static,
) -> Result<watch::Receiver<Outcome>> {
    let mut inflight = acme.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rx) = inflight.get(name) {
        return Ok(rx.clone());
    }
    if let Some(f) = acme.failure(name) {
        let retry_in = inner.clock.until(f.retry_at);
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
        inner: inner.clone(),
        name: name.to_owned(),
        tx,
        outcome: None,
    };
    // A task of its own: the order finishes even if every handshake
    // waiting for it gives up.
    tokio::spawn(async move {
        let result = order.await;
        if let Some(acme) = acme_of(&task.inner) {
            record(&task.inner, acme, &task.name, &result);
            acme.issuer.persist().await;
        }
        task.finish(result);
    });
    Ok(rx)
}

/// The in-flight entry of one order task. Dropped when the task ends, also
/// by a panic or a runtime shutting down mid-order: the entry goes and the
/// waiters get an answer, so the name is never stuck "in flight".
struct OrderTask {
    inner: Arc<Inner>,
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
        let Some(acme) = acme_of(&self.inner) else { return };
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
                record(&self.inner, acme, &self.name, &result);
                result.map_err(Arc::new)
            }
        };
        acme.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
        let _ = self.tx.send(Some(outcome));
        acme.wake.notify_one();
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

fn record(inner: &Inner, acme: &AcmeState, name: &str, result: &Result<()>) {
    let mut ledger = acme.issuer.ledger();
    match result {
        Ok(()) => ledger.succeeded(name),
        Err(e) => {
            let failure = ledger.failed(name, inner.clock.now(), e.to_string(), |count| backoff(e, count));
            drop(ledger);
            let serving = inner.served_get(name).map(|s| s.info.not_after);
            tracing::warn!(
                %name,
                error = %e,
                failures = failure.count,
                retry_in = ?inner.clock.until(failure.retry_at),
                still_serving_until = ?serving,
                "could not obtain a certificate"
            );
        }
    }
}

/// One attempt: the store first (a restart, another replica), then an
/// order.
async fn obtain_now(inner: &Arc<Inner>, name: &str, trigger: Trigger) -> Result<()> {
    let Some(acme) = acme_of(inner) else {
        return Ok(());
    };
    let _permit = acme
        .permits
        .acquire()
        .await
        .map_err(|_| Error::Store("order queue closed".into()))?;
    let issuer_key = acme.issuer.issuer_key();
    let _lock = acme.store.lock(issuer_key, name).await?;
    match acme.store.load_cert(issuer_key, name).await {
        Ok(Some(stored)) => match install_if_better(inner, name, &stored) {
            Ok(served) => {
                if served && (trigger == Trigger::Needed || !is_due(inner, name)) {
                    return Ok(());
                }
                if trigger == Trigger::Needed && inner.resolver.get(name).is_some() {
                    return Ok(());
                }
            }
            // A damaged file must not block issuance: order a new one.
            Err(e) => tracing::warn!(%name, error = %e, "ignoring a damaged stored certificate"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(%name, error = %e, "ignoring an unreadable stored certificate"),
    }
    let on_demand = trigger == Trigger::Needed && !inner.own_names.iter().any(|n| n == name);
    let bundle = acme.issuer.issue(name, on_demand, acme.events.as_ref()).await?;
    let cert = bundle.certified_key().map_err(Error::BadCertificate)?;
    // Served even if it cannot be stored: the order is spent either way;
    // a store that fails only costs a new order after a restart.
    if let Err(e) = acme.store.save_cert(issuer_key, name, bundle).await {
        tracing::error!(%name, error = %e, "a new certificate could not be stored; serving it from memory");
    }
    inner.install(name, cert)?;
    hold_fresh(inner, name);
    if let Some(s) = inner.served_get(name) {
        tracing::info!(
            %name,
            not_after = %httpdate::fmt_http_date(s.info.not_after),
            renew_after = %httpdate::fmt_http_date(s.renew_at),
            "certificate issued"
        );
    }
    Ok(())
}

/// A certificate issued just now is not renewed before a third of its
/// lifetime has passed by our clock, whatever its dates say: a clock
/// ahead of the CA's (or a CA back-dating far) must not turn every fresh
/// certificate into a due one and renew in a loop.
fn hold_fresh(inner: &Inner, name: &str) {
    let now = inner.clock.now();
    let mut served = inner.served.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = served.get_mut(name) {
        s.renew_at = s.renew_at.max(now + s.info.lifetime() / 3);
    }
}

/// Serves a stored certificate if it is valid and outlives the one served
/// now. Returns whether it is served now.
fn install_if_better(inner: &Inner, name: &str, stored: &CertBundle) -> Result<bool> {
    let cert = stored.certified_key().map_err(Error::BadCertificate)?;
    let info = CertInfo::of(&cert)?;
    if inner.clock.now() >= info.not_after {
        return Ok(false);
    }
    let current = inner.served_get(name);
    match current {
        Some(c) if c.info.not_after >= info.not_after => Ok(c.info == info),
        _ => {
            inner.install(name, cert)?;
            Ok(true)
        }
    }
}

fn is_due(inner: &Inner, name: &str) -> bool {
    inner.served_get(name).is_none_or(|s| s.renew_at <= inner.clock.now())
}

/// Serves every valid stored certificate of names still allowed.
pub(crate) async fn load_stored(inner: &Arc<Inner>) {
    let Some(acme) = acme_of(inner) else { return };
    let key = acme.issuer.issuer_key();
    let names = match acme.store.list_certs(key).await {
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
        if !inner.may_serve_stored(&name) {
            continue;
        }
        match acme.store.load_cert(key, &name).await {
            Ok(Some(stored)) => match install_if_better(inner, &name, &stored) {
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

pub(crate) fn spawn_maintenance(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let (stopped, wake) = match acme_of(inner) {
        Some(a) => (a.stopped.subscribe(), a.wake.clone()),
        None => return,
    };
    tokio::spawn(maintain(weak, stopped, wake));
}

async fn maintain(weak: Weak<Inner>, mut stopped: watch::Receiver<bool>, wake: Arc<Notify>) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let clock = inner.clock.clone();
        // Watching before the pass: an advance while it runs is not lost.
        let mut advanced = clock.watch();
        let next = tick(&inner).await;
        let wake = wake.notified();
        tokio::pin!(wake);
        // Registers interest before `inner` is released so no wake is lost.
        wake.as_mut().enable();
        let sleep = clock.until(next).min(MAX_MAINTENANCE_SLEEP);
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = advanced.changed() => {}
            _ = wake => {}
            _ = stopped.changed() => {}
        }
    }
}

/// One pass: own names, expiry, due renewals, then renewal windows from
/// the CA (bounded, time-boxed, after everything that must not wait).
/// Returns when the next pass is needed.
async fn tick(inner: &Arc<Inner>) -> SystemTime {
    let mut next = inner.clock.now() + MAX_MAINTENANCE_SLEEP;
    let Some(acme) = acme_of(inner) else { return next };
    let mut consider = |at: SystemTime| {
        if at < next {
            next = at;
        }
    };
    for name in &inner.own_names {
        if inner.resolver.get(name).is_none() {
            start_background(inner, acme, name, Trigger::Needed, &mut consider);
        }
    }
    let snapshot: Vec<(String, Served)> = inner
        .served
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let mut ask_ca = Vec::new();
    for (name, served) in snapshot {
        let now = inner.clock.now();
        if now >= served.info.not_after {
            tracing::warn!(%name, "certificate expired; no longer served");
            inner.uninstall(&name);
            continue;
        }
        consider(served.info.not_after);
        if !inner.allowed(&name) {
            continue; // no longer registered: served until it expires, not renewed
        }
        if served.renew_at <= now {
            start_background(inner, acme, &name, Trigger::Renewal, &mut consider);
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
    let checker = inner.clone();
    let (answers, left) = bounded_pass(ask_ca, MAX_CONCURRENT_ARI, ARI_PASS_DEADLINE, move |(name, served)| {
        let inner = checker.clone();
        async move {
            let (window, answered_at) = answered(&inner.clock, async {
                match acme_of(&inner) {
                    Some(acme) => acme.issuer.renewal_window(&served.leaf).await,
                    None => Ok(None),
                }
            })
            .await;
            (name, served, window, answered_at)
        }
    })
    .await;
    for (name, served, window, answered_at) in answers {
        let renew_at = apply_window(inner, &name, &served, window, answered_at);
        if let Some(check_at) = inner.served_get(&name).and_then(|s| s.ari_check_at) {
            consider(check_at);
        }
        if renew_at <= inner.clock.now() {
            start_background(inner, acme, &name, Trigger::Renewal, &mut consider);
        } else {
            consider(renew_at);
        }
    }
    if left > 0 {
        tracing::debug!(left, "renewal windows not asked for in this pass; next pass at once");
        consider(inner.clock.now());
    }
    next
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

/// Applies the CA's answer about a renewal window (ARI), given at
/// `answered_at` (see [`answered`]), to `name`'s certificate; returns its
/// renewal time. The next request is due `Retry-After` (or
/// [`ARI_RETRY`] after a failure) from `answered_at`, not from now.
fn apply_window(
    inner: &Inner,
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
    let mut all = inner.served.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.get_mut(name)
        && s.info == served.info
    {
        s.renew_at = new_renew_at;
        s.ari_check_at = new_check_at;
    }
    new_renew_at
}

fn start_background(
    inner: &Arc<Inner>,
    acme: &AcmeState,
    name: &str,
    trigger: Trigger,
    consider: &mut impl FnMut(SystemTime),
) {
    if acme.is_inflight(name) {
        return;
    }
    if let Some(f) = acme.failure(name)
        && f.retry_at > inner.clock.now()
    {
        consider(f.retry_at);
        return;
    }
    if trigger == Trigger::Renewal {
        tracing::info!(%name, "renewing certificate");
    }
    // The outcome is logged and recorded by the order task.
    let _ = start(inner, acme, name, trigger);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::AcmeConfig;
    use crate::manager::{AcmeOptions, CertManager, Registered};
    use crate::store::DirStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let inner = &m.inner;
        let acme = acme_of(inner).unwrap();
        let mut rx = spawn_order(inner, acme, "a.test", async {
            panic!("order task panicked (on purpose)")
        })
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
        let next = tokio::time::timeout(Duration::from_secs(10), obtain(inner, "a.test"))
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
        let inner = &m.inner;
        let cert = crate::pem::test_bundle("a.test").certified_key().unwrap();
        inner.install("a.test", cert).unwrap();
        // Answered 120 s ago by the clock: it has moved on since.
        let answered_at = inner.clock.now() - Duration::from_secs(120);
        let later = answered_at + Duration::from_secs(30 * 86400);
        let window = RenewalWindow {
            start: later,
            end: later + Duration::from_secs(86400),
            recheck_in: Duration::from_secs(60),
        };
        let served = inner.served_get("a.test").unwrap();
        apply_window(inner, "a.test", &served, Ok(Some(window)), answered_at);
        let check_at = inner.served_get("a.test").unwrap().ari_check_at;
        assert_eq!(check_at, Some(answered_at + Duration::from_secs(60)));
        assert!(
            check_at.is_some_and(|at| at <= inner.clock.now()),
            "due at the next pass"
        );
        // A failed request is retried likewise from when it failed.
        let served = inner.served_get("a.test").unwrap();
        apply_window(inner, "a.test", &served, Err(Error::Store("down".into())), answered_at);
        assert_eq!(
            inner.served_get("a.test").unwrap().ari_check_at,
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
