//! The ACME issuer: one account per directory URL (created once, persisted
//! in the [`CertStore`]), orders for one hostname at a time, answered with
//! TLS-ALPN-01 or HTTP-01, a budget of orders per hour, and `Retry-After`
//! obeyed.
//!
//! Only single-name certificates are ordered. Wildcard certificates would
//! need DNS-01, which Routehub does not do: a `*.example.com` registration
//! gets one certificate per name on demand.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::CertificateDer;

use crate::acme_http::{AcmeHttp, MAX_INLINE_RETRY_AFTER, Paused, ServerPause, roots};
use crate::challenge::Challenges;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::pem::CertBundle;
use crate::store::{CertStore, issuer_key};

/// Default budget of orders per hour. Let's Encrypt allows 300 new orders
/// per 3 hours per account and 5 failed validations per name per hour.
pub const DEFAULT_ORDERS_PER_HOUR: u32 = 50;
/// How long the CA may take to validate the challenges of one order.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the CA may take to issue after finalization.
pub const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Orders retried within one attempt after a short `Retry-After`.
pub const MAX_RATE_LIMITED_RETRIES: u32 = 3;

/// Which challenge proves control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengePolicy {
    /// TLS-ALPN-01 on the TLS listener (port 443 must reach the gateway).
    TlsAlpn01,
    /// HTTP-01 on the plain-HTTP listener (port 80 must reach the gateway).
    Http01,
    /// TLS-ALPN-01 where the CA offers it, else HTTP-01; HTTP-01 in a
    /// second order if TLS-ALPN-01 validation fails or times out.
    #[default]
    Auto,
}

impl FromStr for ChallengePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tls-alpn-01" => Ok(ChallengePolicy::TlsAlpn01),
            "http-01" => Ok(ChallengePolicy::Http01),
            "auto" => Ok(ChallengePolicy::Auto),
            other => Err(format!("unknown challenge {other:?} (tls-alpn-01, http-01 or auto)")),
        }
    }
}

/// One challenge type, as used in orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    TlsAlpn01,
    Http01,
}

impl Challenge {
    pub fn label(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        }
    }
}

/// The first of `candidates` (in preference order) that the CA offers.
fn pick_challenge(candidates: &[Challenge], offered: &[ChallengeType]) -> Option<Challenge> {
    candidates.iter().copied().find(|c| offered.contains(&c.acme_type()))
}

fn labels(list: &[Challenge]) -> String {
    list.iter().map(|c| c.label()).collect::<Vec<_>>().join(", ")
}

/// One order attempt with the challenge types allowed for it, as
/// [`AcmeIssuer::issue_with`] calls it.
type OrderFn<'a> =
    dyn FnMut(Vec<Challenge>) -> Pin<Box<dyn Future<Output = Result<CertBundle>> + Send + 'a>> + Send + 'a;

/// External Account Binding (RFC 8555 §7.3.4), for CAs that need it.
#[derive(Clone)]
pub struct ExternalAccountBinding {
    pub key_id: String,
    /// The HMAC key, base64url as CAs hand it out.
    pub hmac_key: String,
}

impl std::fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccountBinding")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory, e.g. Let's Encrypt's.
    pub directory_url: String,
    /// Contact for the account (expiry warnings, policy mail).
    pub contact_email: Option<String>,
    pub eab: Option<ExternalAccountBinding>,
    /// An extra root to trust for the ACME server's own TLS (private CA,
    /// Pebble), on top of the public roots.
    pub ca_root: Option<PathBuf>,
    pub challenge: ChallengePolicy,
    /// Whether the plain-HTTP listener runs (HTTP-01 needs it).
    pub http01_available: bool,
    /// Most orders started in any hour.
    pub orders_per_hour: u32,
}

impl AcmeConfig {
    pub fn new(directory_url: impl Into<String>) -> Self {
        AcmeConfig {
            directory_url: directory_url.into(),
            contact_email: None,
            eab: None,
            ca_root: None,
            challenge: ChallengePolicy::Auto,
            http01_available: true,
            orders_per_hour: DEFAULT_ORDERS_PER_HOUR,
        }
    }

    /// The challenges to try, in order.
    pub fn challenges(&self) -> Result<Vec<Challenge>> {
        let list = match (self.challenge, self.http01_available) {
            (ChallengePolicy::TlsAlpn01, _) => vec![Challenge::TlsAlpn01],
            (ChallengePolicy::Http01, true) => vec![Challenge::Http01],
            (ChallengePolicy::Http01, false) => {
                return Err(Error::AcmeConfig(
                    "HTTP-01 needs the plain-HTTP listener, which is off".into(),
                ));
            }
            (ChallengePolicy::Auto, true) => vec![Challenge::TlsAlpn01, Challenge::Http01],
            (ChallengePolicy::Auto, false) => vec![Challenge::TlsAlpn01],
        };
        Ok(list)
    }
}

/// Reports what the issuer does, for metrics.
pub trait CertEvents: Send + Sync + 'static {
    /// An order ended: `valid`, `invalid`, `rate_limited`, `error`, or
    /// `budget_exhausted` (refused before reaching the CA).
    fn order_finished(&self, outcome: &'static str);
    /// The CA could not validate a challenge.
    fn challenge_failed(&self, challenge: &'static str);
}

/// Events going nowhere.
#[derive(Debug, Default)]
pub struct NoEvents;

impl CertEvents for NoEvents {
    fn order_finished(&self, _: &'static str) {}
    fn challenge_failed(&self, _: &'static str) {}
}

const ARI_UNKNOWN: u8 = 0;
const ARI_YES: u8 = 1;
const ARI_NO: u8 = 2;

/// A suggested renewal window from the CA (RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: SystemTime,
    pub end: SystemTime,
    /// When to ask again.
    pub recheck_in: Duration,
}

pub struct AcmeIssuer {
    config: AcmeConfig,
    challenges_in_order: Vec<Challenge>,
    issuer_key: String,
    store: Arc<dyn CertStore>,
    challenges: Arc<Challenges>,
    pause: Arc<ServerPause>,
    roots: rustls::RootCertStore,
    account: tokio::sync::Mutex<Option<Account>>,
    clock: Clock,
    /// Order budget, failed validations and backoff; saved in the store.
    ledger: Mutex<Ledger>,
    /// Orders saves of the ledger, so the last one written is the newest.
    saving: tokio::sync::Mutex<()>,
    ari: AtomicU8,
}

impl AcmeIssuer {
    /// Checks the config; contacts the CA only at the first order. The
    /// rate-limit state is read from the store by [`AcmeIssuer::load_ledger`].
    pub fn new(
        config: AcmeConfig,
        store: Arc<dyn CertStore>,
        challenges: Arc<Challenges>,
        clock: Clock,
    ) -> Result<Self> {
        if !config.directory_url.starts_with("https://") {
            return Err(Error::AcmeConfig(format!(
                "the directory URL must be https: {}",
                config.directory_url
            )));
        }
        if config.orders_per_hour == 0 {
            return Err(Error::AcmeConfig("orders_per_hour must be positive".into()));
        }
        if let Some(eab) = &config.eab {
            decode_hmac(&eab.hmac_key)?;
        }
        Ok(AcmeIssuer {
            challenges_in_order: config.challenges()?,
            issuer_key: issuer_key(&config.directory_url),
            roots: roots(config.ca_root.as_deref())?,
            config,
            store,
            challenges,
            pause: Arc::default(),
            account: tokio::sync::Mutex::new(None),
            clock,
            ledger: Mutex::new(Ledger::default()),
            saving: tokio::sync::Mutex::new(()),
            ari: AtomicU8::new(ARI_UNKNOWN),
        })
    }

    /// The store key of this directory.
    pub fn issuer_key(&self) -> &str {
        &self.issuer_key
    }

    pub fn directory_url(&self) -> &str {
        &self.config.directory_url
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the rate-limit state a previous run saved. A damaged file is
    /// logged and ignored: it must not keep certificates from being served.
    pub(crate) async fn load_ledger(&self) {
        match self.store.load_state(&self.issuer_key).await {
            Ok(Some(bytes)) => match Ledger::from_bytes(&bytes, self.clock.now()) {
                Ok(ledger) => *self.ledger() = ledger,
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable ACME rate-limit state"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read ACME rate-limit state"),
        }
    }

    /// Saves the rate-limit state. A failure is logged: serving goes on,
    /// only a restart would forget the state.
    pub(crate) async fn persist(&self) {
        let _order = self.saving.lock().await;
        let bytes = self.ledger().to_bytes(self.clock.now());
        if let Err(e) = self.store.save_state(&self.issuer_key, bytes).await {
            tracing::warn!(error = %e, "cannot save ACME rate-limit state");
        }
    }

    /// Takes one order from the hourly budget. On-demand orders leave a
    /// quarter of it to renewals and the gateway's own names, so a flood of
    /// handshakes for new names can never starve certificates in use.
    fn spend_budget(&self, on_demand: bool) -> Result<()> {
        let limit = match on_demand {
            true => (self.config.orders_per_hour as usize * 3 / 4).max(1),
            false => self.config.orders_per_hour as usize,
        };
        let now = self.clock.now();
        self.ledger()
            .spend_order(now, limit)
            .map_err(|retry_in| Error::BudgetExhausted {
                per_hour: self.config.orders_per_hour,
                retry_in,
            })
    }

    fn validation_room(&self, name: &str) -> Result<()> {
        let now = self.clock.now();
        self.ledger()
            .validation_room(name, now)
            .map_err(|retry_in| Error::ValidationLimit {
                name: name.to_owned(),
                retry_in,
            })
    }

    /// Obtains a certificate for `name`. Each order answers with the
    /// first challenge type of the policy that the CA offers; when its
    /// validation fails or times out, the next order tries the types after
    /// it. Failed validations per name stay within
    /// [`crate::ledger::MAX_FAILED_VALIDATIONS_PER_HOUR`]. A short
    /// `Retry-After` is waited out and the order retried. `on_demand`
    /// orders (a new name's first handshake) may not use the budget's
    /// reserve. Cancel-safe: dropping the future abandons the order and
    /// withdraws its challenge answers.
    pub async fn issue(&self, name: &str, on_demand: bool, events: &dyn CertEvents) -> Result<CertBundle> {
        self.issue_with(name, on_demand, events, &mut |allowed| {
            Box::pin(self.order(name, allowed))
        })
        .await
    }

    /// [`AcmeIssuer::issue`] with the order attempt given, so the fallback
    /// and the limits can be tested without a CA.
    async fn issue_with<'a>(
        &'a self,
        name: &'a str,
        on_demand: bool,
        events: &'a dyn CertEvents,
        order: &mut OrderFn<'a>,
    ) -> Result<CertBundle> {
        let mut allowed = self.challenges_in_order.clone();
        loop {
            if let Err(e) = self.validation_room(name) {
                events.order_finished(e.order_outcome());
                return Err(e);
            }
            let mut rate_limited = 0;
            let result = loop {
                if let Err(e) = self.spend_budget(on_demand) {
                    events.order_finished(e.order_outcome());
                    return Err(e);
                }
                let result = order(allowed.clone()).await;
                match &result {
                    Ok(_) => events.order_finished("valid"),
                    Err(e) => events.order_finished(e.order_outcome()),
                }
                match result {
                    Err(Error::RateLimited { wait, detail })
                        if wait <= MAX_INLINE_RETRY_AFTER && rate_limited < MAX_RATE_LIMITED_RETRIES =>
                    {
                        rate_limited += 1;
                        tracing::warn!(%name, ?wait, %detail, "ACME server rate limit: retrying as told");
                        self.persist().await;
                        tokio::time::sleep(wait).await;
                    }
                    other => break other,
                }
            };
            let Some(used) = result.as_ref().err().and_then(Error::failed_challenge) else {
                self.persist().await;
                return result;
            };
            events.challenge_failed(used);
            let now = self.clock.now();
            self.ledger().validation_failed(name, now);
            self.persist().await;
            let Err(e) = result else { unreachable!("checked above") };
            // Only the types after the one that failed: an order with a
            // fresh authorization for the next.
            match allowed.iter().position(|c| c.label() == used) {
                Some(i) if i + 1 < allowed.len() => {
                    allowed.drain(..=i);
                    tracing::warn!(%name, error = %e, next = allowed[0].label(), "trying the next challenge type");
                }
                _ => return Err(e),
            }
        }
    }

    fn order_err(&self, name: &str, step: &'static str, e: instant_acme::Error) -> Error {
        if let instant_acme::Error::Other(inner) = &e
            && let Some(p) = inner.downcast_ref::<Paused>()
        {
            return Error::RateLimited {
                wait: p.wait,
                detail: p.why.clone(),
            };
        }
        if let instant_acme::Error::Api(problem) = &e
            && is_rate_limit(problem)
        {
            let wait = self.pause.remaining().map(|(w, _)| w).unwrap_or(Duration::ZERO);
            return Error::RateLimited {
                wait,
                detail: problem.to_string(),
            };
        }
        Error::Acme {
            name: name.to_owned(),
            step,
            message: e.to_string(),
        }
    }

    /// One order, answered with the first of `allowed` that the CA offers.
    async fn order(&self, name: &str, allowed: Vec<Challenge>) -> Result<CertBundle> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| self.order_err(name, "new order", e))?;
        let mut answers = Vec::new();
        // Named in validation errors; an order whose authorizations are all
        // reused has nothing to validate.
        let mut used = allowed.first().copied().unwrap_or(Challenge::Http01);
        // The CA may validate at once and answer `set_ready` with the
        // failure: that is a failed challenge (the next one may work), not
        // a broken order.
        let mut refused_at_ready = None;
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| self.order_err(name, "authorization", e))?;
                match authz.status {
                    AuthorizationStatus::Valid => continue, // reused from an earlier order
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::Acme {
                            name: name.to_owned(),
                            step: "authorization",
                            message: format!("authorization is {other:?}"),
                        });
                    }
                }
                let offered: Vec<ChallengeType> = authz.challenges.iter().map(|c| c.r#type.clone()).collect();
                let Some(challenge) = pick_challenge(&allowed, &offered) else {
                    return Err(Error::ChallengeUnavailable {
                        name: name.to_owned(),
                        wanted: labels(&allowed),
                        offered: offered.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", "),
                    });
                };
                used = challenge;
                let Some(mut handle) = authz.challenge(challenge.acme_type()) else {
                    unreachable!("picked among the offered types")
                };
                let key_auth = handle.key_authorization();
                answers.push(match challenge {
                    Challenge::Http01 => self.challenges.add_http01(&handle.token, key_auth.as_str()),
                    Challenge::TlsAlpn01 => self.challenges.add_tls_alpn01(name, key_auth.digest().as_ref())?,
                });
                match handle.set_ready().await {
                    Ok(()) => {}
                    Err(instant_acme::Error::Api(problem)) if !is_rate_limit(&problem) => {
                        refused_at_ready = Some(problem.to_string());
                        break;
                    }
                    Err(e) => return Err(self.order_err(name, "challenge ready", e)),
                }
            }
        }
        if let Some(problem) = refused_at_ready {
            return Err(self.validation_failure(&mut order, name, used, problem).await);
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(VALIDATION_TIMEOUT);
        let status = match order.poll_ready(&policy).await {
            Ok(status) => status,
            Err(instant_acme::Error::Api(problem)) => {
                return Err(self
                    .validation_failure(&mut order, name, used, problem.to_string())
                    .await);
            }
            Err(instant_acme::Error::Timeout(_)) => {
                // Left pending, the authorization could be handed out again
                // (CAs reuse pending ones) with this challenge already
                // started: give it up so the next order gets a fresh one.
                let mut authzs = order.authorizations();
                while let Some(Ok(mut authz)) = authzs.next().await {
                    if authz.status == AuthorizationStatus::Pending
                        && let Err(e) = authz.deactivate().await
                    {
                        tracing::debug!(%name, error = %e, "could not deactivate a timed-out authorization");
                    }
                }
                return Err(Error::ValidationTimeout {
                    name: name.to_owned(),
                    challenge: used.label(),
                    waited: VALIDATION_TIMEOUT,
                });
            }
            Err(e) => return Err(self.order_err(name, "validation", e)),
        };
        if status != OrderStatus::Ready {
            return Err(self
                .validation_failure(&mut order, name, used, format!("order is {status:?}"))
                .await);
        }
        drop(answers);

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| self.order_err(name, "finalize", e))?;
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(ISSUANCE_TIMEOUT);
        let chain_pem = order
            .poll_certificate(&policy)
            .await
            .map_err(|e| self.order_err(name, "certificate download", e))?;
        Ok(CertBundle {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's reason a challenge failed, read from the authorizations.
    async fn validation_failure(&self, order: &mut Order, name: &str, challenge: Challenge, fallback: String) -> Error {
        let mut detail = None;
        let mut authzs = order.authorizations();
        while let Some(Ok(mut authz)) = authzs.next().await {
            if authz.refresh().await.is_err() {
                continue;
            }
            let found = authz
                .challenges
                .iter()
                .filter(|c| c.r#type == challenge.acme_type())
                .find_map(|c| c.error.as_ref().map(|p| p.to_string()));
            if found.is_some() {
                detail = found;
                break;
            }
        }
        Error::ChallengeFailed {
            name: name.to_owned(),
            challenge: challenge.label(),
            detail: detail.unwrap_or(fallback),
        }
    }

    /// The account: loaded from the store, or created once and stored.
    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let failed = |message: String| Error::AcmeAccount {
            directory: self.config.directory_url.clone(),
            message,
        };
        // Another gateway on the same store may be creating it right now.
        let _lock = self.store.lock(&self.issuer_key, "_account").await?;
        let http = Box::new(AcmeHttp::new(self.roots.clone(), self.pause.clone())?);
        let account = match self.store.load_account(&self.issuer_key).await? {
            Some(bytes) => {
                let creds: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| failed(format!("stored credentials are unreadable: {e}")))?;
                Account::builder_with_http(http)
                    .from_credentials(creds)
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
            None => {
                let contact: Vec<String> = self
                    .config
                    .contact_email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = match &self.config.eab {
                    Some(eab) => Some(ExternalAccountKey::new(
                        eab.key_id.clone(),
                        &decode_hmac(&eab.hmac_key)?,
                    )),
                    None => None,
                };
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, creds) = Account::builder_with_http(http)
                    .create(&new, self.config.directory_url.clone(), eab.as_ref())
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let bytes = serde_json::to_vec(&creds).map_err(|e| failed(e.to_string()))?;
                self.store.save_account(&self.issuer_key, bytes).await?;
                tracing::info!(directory = %self.config.directory_url, id = %account.id(), "created an ACME account");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The CA's suggested renewal window for `leaf` (ACME Renewal
    /// Information), or `None` when the CA does not offer it.
    pub async fn renewal_window(&self, leaf: &CertificateDer<'_>) -> Result<Option<RenewalWindow>> {
        if self.ari.load(Ordering::Relaxed) == ARI_NO {
            return Ok(None);
        }
        let account = self.account().await?;
        let id = CertificateIdentifier::try_from(leaf).map_err(Error::BadCertificate)?;
        match account.renewal_info(&id).await {
            Ok((info, recheck_in)) => {
                self.ari.store(ARI_YES, Ordering::Relaxed);
                let to_system = |t: time::OffsetDateTime| {
                    let secs = t.unix_timestamp();
                    if secs > 0 {
                        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
                    } else {
                        SystemTime::UNIX_EPOCH
                    }
                };
                Ok(Some(RenewalWindow {
                    start: to_system(info.suggested_window.start),
                    end: to_system(info.suggested_window.end),
                    recheck_in,
                }))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                self.ari.store(ARI_NO, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(self.order_err("(renewal info)", "renewal info", e)),
        }
    }
}

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer")
            .field("directory", &self.config.directory_url)
            .field("challenges", &self.challenges_in_order)
            .finish_non_exhaustive()
    }
}

fn decode_hmac(key: &str) -> Result<Vec<u8>> {
    let trimmed = key.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|e| Error::AcmeConfig(format!("EAB HMAC key is not base64: {e}")))
}

/// Whether the CA said "slow down" (rather than "no").
fn is_rate_limit(problem: &instant_acme::Problem) -> bool {
    problem.status.is_some_and(|s| s == 429 || s == 503)
        || problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirStore;

    fn issuer(cfg: AcmeConfig) -> Result<AcmeIssuer> {
        let dir = tempfile::tempdir().unwrap();
        AcmeIssuer::new(
            cfg,
            Arc::new(DirStore::new(dir.path())),
            Challenges::new(),
            Clock::system(),
        )
    }

    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl CertEvents for Recorded {
        fn order_finished(&self, outcome: &'static str) {
            self.0.lock().unwrap().push(format!("order {outcome}"));
        }
        fn challenge_failed(&self, challenge: &'static str) {
            self.0.lock().unwrap().push(format!("failed {challenge}"));
        }
    }

    impl Recorded {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn failed(name: &str, challenge: Challenge) -> Error {
        Error::ChallengeFailed {
            name: name.into(),
            challenge: challenge.label(),
            detail: "connection refused".into(),
        }
    }

    #[test]
    fn the_challenge_is_picked_among_those_offered_in_preference_order() {
        let both = [Challenge::TlsAlpn01, Challenge::Http01];
        let offered = [ChallengeType::Http01, ChallengeType::Dns01, ChallengeType::TlsAlpn01];
        assert_eq!(pick_challenge(&both, &offered), Some(Challenge::TlsAlpn01));
        let no_alpn = [ChallengeType::Http01, ChallengeType::Dns01];
        assert_eq!(pick_challenge(&both, &no_alpn), Some(Challenge::Http01));
        assert_eq!(pick_challenge(&[Challenge::TlsAlpn01], &no_alpn), None);
    }

    #[tokio::test]
    async fn a_validation_timeout_falls_back_to_the_next_challenge_and_counts() {
        let issuer = issuer(AcmeConfig::new("https://ca.test/dir")).unwrap();
        let events = Recorded::default();
        let calls = Mutex::new(Vec::new());
        let bundle = issuer
            .issue_with("a.test", false, &events, &mut |allowed| {
                calls.lock().unwrap().push(allowed.clone());
                Box::pin(async move {
                    match allowed[0] {
                        Challenge::TlsAlpn01 => Err(Error::ValidationTimeout {
                            name: "a.test".into(),
                            challenge: "tls-alpn-01",
                            waited: VALIDATION_TIMEOUT,
                        }),
                        Challenge::Http01 => Ok(crate::pem::test_bundle("a.test")),
                    }
                })
            })
            .await;
        assert!(bundle.is_ok(), "{bundle:?}");
        assert_eq!(
            *calls.lock().unwrap(),
            [vec![Challenge::TlsAlpn01, Challenge::Http01], vec![Challenge::Http01]]
        );
        assert_eq!(
            events.take(),
            ["order validation_timeout", "failed tls-alpn-01", "order valid"]
        );
        // Errors that are not about validation do not switch challenges.
        let mut orders = 0;
        let err = issuer
            .issue_with("b.test", false, &events, &mut |_| {
                orders += 1;
                Box::pin(async {
                    Err(Error::ChallengeUnavailable {
                        name: "b.test".into(),
                        wanted: "tls-alpn-01, http-01".into(),
                        offered: "Dns01".into(),
                    })
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ChallengeUnavailable { .. }), "{err}");
        assert_eq!(orders, 1);
    }

    #[tokio::test]
    async fn failed_validations_per_name_are_capped_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CertStore> = Arc::new(DirStore::new(dir.path()));
        let clock = Clock::adjustable();
        let new_issuer = || {
            AcmeIssuer::new(
                AcmeConfig::new("https://ca.test/dir"),
                store.clone(),
                Challenges::new(),
                clock.clone(),
            )
            .unwrap()
        };
        let events = Recorded::default();
        let mut fail_all = |allowed: Vec<Challenge>| -> Pin<Box<dyn Future<Output = Result<CertBundle>> + Send>> {
            Box::pin(async move { Err(failed("a.test", allowed[0])) })
        };
        let issuer = new_issuer();
        // Auto makes two orders per attempt: two attempts spend the hour.
        for _ in 0..2 {
            let err = issuer
                .issue_with("a.test", false, &events, &mut fail_all)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::ChallengeFailed {
                        challenge: "http-01",
                        ..
                    }
                ),
                "{err}"
            );
            clock.advance(Duration::from_secs(600));
        }
        assert_eq!(events.take().iter().filter(|e| e.starts_with("failed")).count(), 4);
        let err = issuer
            .issue_with("a.test", false, &events, &mut fail_all)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ValidationLimit { .. }), "{err}");
        assert_eq!(events.take(), ["order validation_limited"], "the CA never saw it");

        // A restarted issuer remembers, and so does its budget.
        let restarted = new_issuer();
        restarted.load_ledger().await;
        let err = restarted
            .issue_with("a.test", false, &events, &mut fail_all)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ValidationLimit { .. }), "{err}");
        assert_eq!(
            restarted.ledger().to_bytes(clock.now()),
            issuer.ledger().to_bytes(clock.now())
        );

        // The first attempt's two failures are an hour old 40 minutes from
        // now (saved times round up to the second).
        clock.advance(Duration::from_secs(2401));
        let err = restarted
            .issue_with("a.test", false, &events, &mut fail_all)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ChallengeFailed { .. }), "{err}");
        let failed_now = events.take().iter().filter(|e| e.starts_with("failed")).count();
        assert!(failed_now <= 2, "{failed_now}");
    }

    #[test]
    fn config_is_checked_up_front() {
        assert!(issuer(AcmeConfig::new("http://ca.test/dir")).is_err());
        let mut cfg = AcmeConfig::new("https://ca.test/dir");
        cfg.orders_per_hour = 0;
        assert!(issuer(cfg).is_err());
        let mut cfg = AcmeConfig::new("https://ca.test/dir");
        cfg.eab = Some(ExternalAccountBinding {
            key_id: "kid".into(),
            hmac_key: "not base64!".into(),
        });
        assert!(issuer(cfg.clone()).is_err());
        assert!(!format!("{cfg:?}").contains("base64!"), "the HMAC key never shows");
        let mut cfg = AcmeConfig::new("https://ca.test/dir");
        cfg.challenge = ChallengePolicy::Http01;
        cfg.http01_available = false;
        assert!(issuer(cfg).is_err());
    }

    #[test]
    fn challenge_order_follows_the_policy() {
        let mut cfg = AcmeConfig::new("https://ca.test/dir");
        assert_eq!(cfg.challenges().unwrap(), [Challenge::TlsAlpn01, Challenge::Http01]);
        cfg.http01_available = false;
        assert_eq!(cfg.challenges().unwrap(), [Challenge::TlsAlpn01]);
        cfg.challenge = "http-01".parse().unwrap();
        assert!(cfg.challenges().is_err());
        assert!("dns-01".parse::<ChallengePolicy>().is_err());
    }

    #[test]
    fn the_budget_refuses_orders_past_the_hourly_limit() {
        let mut cfg = AcmeConfig::new("https://ca.test/dir");
        cfg.orders_per_hour = 4;
        let issuer = issuer(cfg).unwrap();
        for _ in 0..3 {
            issuer.spend_budget(true).unwrap();
        }
        // The last quarter is kept for renewals and the gateway's own names.
        assert!(matches!(
            issuer.spend_budget(true),
            Err(Error::BudgetExhausted { per_hour: 4, .. })
        ));
        issuer.spend_budget(false).unwrap();
        match issuer.spend_budget(false) {
            Err(Error::BudgetExhausted { per_hour: 4, retry_in }) => {
                assert!(retry_in > Duration::from_secs(3500), "{retry_in:?}")
            }
            other => panic!("expected the budget to be spent, got {other:?}"),
        }
    }
}
