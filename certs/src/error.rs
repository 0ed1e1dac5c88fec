use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Writing a file or creating a directory failed.
    #[error(transparent)]
    Ops(#[from] ops::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a registered hostname")]
    NotRegistered(String),
    #[error("unreadable certificate: {0}")]
    BadCertificate(String),
    #[error("ACME configuration: {0}")]
    AcmeConfig(String),
    /// Creating or loading the ACME account failed (the CA is unreachable,
    /// refuses the account, or the stored credentials are bad). Retried on
    /// the next order.
    #[error("ACME account at {directory}: {message}")]
    AcmeAccount { directory: String, message: String },
    /// An ACME request failed for a reason other than validation.
    #[error("ACME order for {name} failed at {step}: {message}")]
    Acme {
        name: String,
        step: &'static str,
        message: String,
    },
    /// The CA tried the challenge and it failed: the name does not reach
    /// this gateway (DNS, firewall, port 80/443 not forwarded).
    #[error("ACME {challenge} challenge for {name} failed: {detail}")]
    ChallengeFailed {
        name: String,
        challenge: &'static str,
        detail: String,
    },
    /// The CA did not finish validating within the deadline. Counted as a
    /// failed validation: the CA may still fail it.
    #[error("ACME {challenge} challenge for {name}: the CA did not validate within {waited:?}")]
    ValidationTimeout {
        name: String,
        challenge: &'static str,
        waited: Duration,
    },
    /// The CA's authorization offers none of the challenge types this
    /// gateway can answer (with its listeners as configured).
    #[error("ACME order for {name}: the CA offers {offered}, none of {wanted}")]
    ChallengeUnavailable {
        name: String,
        wanted: String,
        offered: String,
    },
    /// The name had as many failed validations in the last hour as the
    /// CA tolerates; no order before the oldest is an hour old.
    #[error("{name} failed validation too often in the last hour; next attempt possible in {retry_in:?}")]
    ValidationLimit { name: String, retry_in: Duration },
    /// The CA asked us to wait (HTTP 429/503 with `Retry-After`).
    #[error("the ACME server asked to wait {wait:?} before the next request: {detail}")]
    RateLimited { wait: Duration, detail: String },
    /// The gateway's own budget of orders per hour is spent.
    #[error("the budget of {per_hour} ACME orders per hour is spent; next order possible in {retry_in:?}")]
    BudgetExhausted { per_hour: u32, retry_in: Duration },
    /// A recent order for this name failed; no new order before the delay.
    #[error("no new certificate order for {name} for {retry_in:?} after failures; last error: {last_error}")]
    BackingOff {
        name: String,
        retry_in: Duration,
        last_error: String,
    },
    #[error("too many certificate orders pending ({0}); try again later")]
    TooManyPending(usize),
    #[error("certificate store: {0}")]
    Store(String),
    /// The outcome of an order started by another handshake, shared with
    /// every handshake that waited for it.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

impl Error {
    pub(crate) fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::File {
            path: path.to_owned(),
            source,
        }
    }

    /// The challenge type whose validation failed or timed out, if that
    /// is what this error is: a reason to try the next challenge type.
    pub fn failed_challenge(&self) -> Option<&'static str> {
        match self {
            Error::Shared(inner) => inner.failed_challenge(),
            Error::ChallengeFailed { challenge, .. } | Error::ValidationTimeout { challenge, .. } => Some(challenge),
            _ => None,
        }
    }

    /// Short label for metrics: how an order ended.
    pub fn order_outcome(&self) -> &'static str {
        match self {
            Error::Shared(inner) => inner.order_outcome(),
            Error::ChallengeFailed { .. } => "invalid",
            Error::ValidationTimeout { .. } => "validation_timeout",
            Error::ValidationLimit { .. } => "validation_limited",
            Error::RateLimited { .. } => "rate_limited",
            Error::BudgetExhausted { .. } => "budget_exhausted",
            _ => "error",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
