//! Decides which names get certificates and gets them: only the gateway's
//! own names and hostnames some relay is registered for, never an arbitrary
//! SNI. Certificates come from the dev CA or from ACME (see
//! [`crate::renewal`] for orders, retries and renewal).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::acme::{AcmeConfig, AcmeIssuer, CertEvents, NoEvents};
use crate::challenge::Challenges;
use crate::clock::Clock;
use crate::dev_ca::DevCa;
use crate::error::{Error, Result};
use crate::pem::CertInfo;
use crate::renewal::AcmeState;
use crate::resolver::CertResolver;
use crate::served::{Registered, ServedCerts};
use crate::store::CertStore;

pub(crate) enum Source {
    Dev { ca: Box<DevCa>, issuing: Mutex<()> },
    Acme(Arc<AcmeState>),
}

pub(crate) struct Inner {
    pub(crate) served: Arc<ServedCerts>,
    pub(crate) clock: Clock,
    pub(crate) source: Source,
}

/// Options of an ACME-backed manager beyond the ACME config itself.
#[derive(Clone)]
pub struct AcmeOptions {
    /// The clock renewal decisions read.
    pub clock: Clock,
    /// Where order outcomes and challenge failures are reported.
    pub events: Arc<dyn CertEvents>,
    /// Names whose stored certificates are served at startup; `None`: the
    /// names `registered` admits. A check weaker than `registered` belongs
    /// here: ownership alone, where ordering also needs a live relay.
    pub stored: Option<Registered>,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        AcmeOptions {
            clock: Clock::system(),
            events: Arc::new(NoEvents),
            stored: None,
        }
    }
}

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct CertManager {
    pub(crate) inner: Arc<Inner>,
}

impl CertManager {
    /// A manager whose certificates come from the dev CA in `data_dir`. The
    /// gateway's `own_names` get a certificate at once (the first is also
    /// the default for clients that send no SNI).
    pub fn with_dev_ca(data_dir: &Path, own_names: Vec<String>, registered: Registered) -> Result<Self> {
        let ca = DevCa::load_or_create(data_dir)?;
        let served = Arc::new(ServedCerts::new(own_names.clone(), registered.clone(), registered));
        if !own_names.is_empty() {
            let cert = ca.issue(&own_names)?;
            for name in &own_names {
                served.install(name, cert.clone(), DEV_SCHEDULE)?;
            }
        }
        Ok(CertManager {
            inner: Arc::new(Inner {
                served,
                clock: Clock::system(),
                source: Source::Dev {
                    ca: Box::new(ca),
                    issuing: Mutex::new(()),
                },
            }),
        })
    }

    /// A manager whose certificates come from an ACME CA. Certificates in
    /// `store` are served at once (no order) for names that
    /// [`AcmeOptions::stored`] admits; the budget, failed validations and
    /// backoff saved by an earlier run are restored; the gateway's `own_names`
    /// are ordered in the background if missing; other names are ordered
    /// on the first handshake. A background task renews certificates until
    /// [`CertManager::shutdown`]. Must run inside a tokio runtime.
    pub async fn with_acme(
        config: AcmeConfig,
        store: Arc<dyn CertStore>,
        own_names: Vec<String>,
        registered: Registered,
        options: AcmeOptions,
    ) -> Result<Self> {
        let challenges = Challenges::new();
        let issuer = AcmeIssuer::new(config, store.clone(), challenges.clone(), options.clock.clone())?;
        issuer.load_ledger().await;
        let stored = options.stored.unwrap_or_else(|| registered.clone());
        let served = Arc::new(ServedCerts::new(own_names, registered, stored));
        let acme = AcmeState::new(
            issuer,
            store,
            challenges,
            options.events,
            served.clone(),
            options.clock.clone(),
        );
        acme.load_stored().await;
        acme.spawn_maintenance();
        Ok(CertManager {
            inner: Arc::new(Inner {
                served,
                clock: options.clock,
                source: Source::Acme(acme),
            }),
        })
    }

    pub fn resolver(&self) -> Arc<CertResolver> {
        self.inner.served.resolver.clone()
    }

    /// The dev CA root, for clients to trust; `None` with ACME.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        match &self.inner.source {
            Source::Dev { ca, .. } => Some(ca.cert_path()),
            Source::Acme(_) => None,
        }
    }

    /// Pending ACME challenge answers, for the listeners; `None` without
    /// ACME.
    pub fn challenges(&self) -> Option<Arc<Challenges>> {
        match &self.inner.source {
            Source::Acme(acme) => Some(acme.challenges.clone()),
            Source::Dev { .. } => None,
        }
    }

    /// Makes sure a certificate for `name` (lowercase SNI) is in the
    /// resolver before the handshake continues. Concurrent calls for one
    /// name share one order. Fails with [`Error::NotRegistered`] for names
    /// no relay may serve (no order is made); the handshake then fails for
    /// lack of a certificate. Cancel-safe: an order started here runs to
    /// its end even if the caller stops waiting, so callers bound the wait
    /// with a timeout.
    pub async fn ensure(&self, name: &str) -> Result<()> {
        let served = &self.inner.served;
        if served.has(name) {
            return Ok(());
        }
        if !served.allowed(name) {
            return Err(Error::NotRegistered(name.to_owned()));
        }
        match &self.inner.source {
            Source::Dev { ca, issuing } => {
                // Dev issuance is ~100 µs of CPU: done inline under a lock,
                // which is also what makes concurrent first handshakes
                // issue once.
                let _guard = issuing.lock().unwrap_or_else(|e| e.into_inner());
                if served.has(name) {
                    return Ok(());
                }
                let cert = ca.issue(&[name.to_owned()])?;
                served.install(name, cert, DEV_SCHEDULE)?;
                tracing::debug!(%name, "issued a dev certificate");
                Ok(())
            }
            Source::Acme(acme) => acme.obtain(name).await,
        }
    }

    /// Validity of the certificate served for `name`, if any.
    pub fn info(&self, name: &str) -> Option<CertInfo> {
        self.inner.served.get(name).map(|s| s.info)
    }

    /// `not_after` of every certificate served, for expiry metrics.
    pub fn expiries(&self) -> Vec<SystemTime> {
        self.inner.served.lock().values().map(|s| s.info.not_after).collect()
    }

    /// The clock renewal decisions read.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Stops background renewal. Certificates keep being served.
    pub fn shutdown(&self) {
        if let Source::Acme(acme) = &self.inner.source {
            acme.stop();
        }
    }
}

/// Dev certificates are reissued on demand, never renewed in place.
const DEV_SCHEDULE: crate::served::Schedule<'static> = &|info| (info.not_after, None);

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.inner.source {
            Source::Dev { ca, .. } => format!("{ca:?}"),
            Source::Acme(acme) => format!("{:?}", acme.issuer),
        };
        f.debug_struct("CertManager")
            .field("source", &source)
            .field("resolver", &self.inner.served.resolver)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_only_for_registered_names_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let registered: Registered = Arc::new(|n: &str| n.ends_with(".test"));
        let m = CertManager::with_dev_ca(dir.path(), vec!["gw.local".into()], registered).unwrap();
        assert!(m.resolver().get("gw.local").is_some());
        m.ensure("a.test").await.unwrap();
        let first = m.resolver().get("a.test").unwrap();
        m.ensure("a.test").await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &m.resolver().get("a.test").unwrap()),
            "cached, not reissued"
        );
        assert!(matches!(m.ensure("evil.example").await, Err(Error::NotRegistered(_))));
        assert!(m.resolver().get("evil.example").is_none());
        assert_eq!(m.expiries().len(), 2);
        assert!(m.info("a.test").is_some());
    }
}
