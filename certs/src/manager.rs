//! Decides which names get certificates and gets them: only the gateway's
//! own names and hostnames some relay is registered for, never an arbitrary
//! SNI. Certificates come from the dev CA or from ACME (see
//! [`crate::renewal`] for orders, retries and renewal).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::acme::{AcmeConfig, AcmeIssuer, CertEvents, NoEvents};
use crate::challenge::Challenges;
use crate::clock::Clock;
use crate::dev_ca::DevCa;
use crate::error::{Error, Result};
use crate::pem::CertInfo;
use crate::renewal::{self, AcmeState};
use crate::resolver::CertResolver;
use crate::store::CertStore;

/// Whether a hostname is registered (some relay key may serve it).
pub type Registered = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Most on-demand certificates kept in memory; a wildcard registration
/// must not let a client fill memory by asking for endless names. (ACME
/// certificates dropped from memory stay in the store and come back on
/// the next handshake without an order.)
pub const MAX_CACHED_CERTS: usize = 10_000;

/// What the gateway knows about a certificate it serves.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) info: CertInfo,
    pub(crate) leaf: CertificateDer<'static>,
    /// When to renew (ACME only).
    pub(crate) renew_at: SystemTime,
    /// When to ask the CA for a renewal window (ACME with ARI only).
    pub(crate) ari_check_at: Option<SystemTime>,
}

pub(crate) enum Source {
    Dev { ca: DevCa, issuing: Mutex<()> },
    Acme(AcmeState),
}

pub(crate) struct Inner {
    pub(crate) resolver: Arc<CertResolver>,
    pub(crate) own_names: Vec<String>,
    registered: Registered,
    /// Whose stored certificates are served at startup.
    stored: Registered,
    pub(crate) clock: Clock,
    pub(crate) source: Source,
    pub(crate) served: Mutex<HashMap<String, Served>>,
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
        let m = CertManager {
            inner: Arc::new(Inner {
                resolver: Arc::new(CertResolver::new()),
                own_names: own_names.clone(),
                stored: registered.clone(),
                registered,
                clock: Clock::system(),
                source: Source::Dev {
                    ca,
                    issuing: Mutex::new(()),
                },
                served: Mutex::new(HashMap::new()),
            }),
        };
        if !own_names.is_empty()
            && let Source::Dev { ca, .. } = &m.inner.source
        {
            let cert = ca.issue(&own_names)?;
            for name in &own_names {
                m.inner.install(name, cert.clone())?;
            }
        }
        Ok(m)
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
        let m = CertManager {
            inner: Arc::new(Inner {
                resolver: Arc::new(CertResolver::new()),
                own_names,
                stored: options.stored.unwrap_or_else(|| registered.clone()),
                registered,
                clock: options.clock,
                source: Source::Acme(AcmeState::new(issuer, store, challenges, options.events)),
                served: Mutex::new(HashMap::new()),
            }),
        };
        renewal::load_stored(&m.inner).await;
        renewal::spawn_maintenance(&m.inner);
        Ok(m)
    }

    pub fn resolver(&self) -> Arc<CertResolver> {
        self.inner.resolver.clone()
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
        if self.inner.resolver.get(name).is_some() {
            return Ok(());
        }
        if !self.inner.allowed(name) {
            return Err(Error::NotRegistered(name.to_owned()));
        }
        match &self.inner.source {
            Source::Dev { ca, issuing } => {
                // Dev issuance is ~100 µs of CPU: done inline under a lock,
                // which is also what makes concurrent first handshakes
                // issue once.
                let _guard = issuing.lock().unwrap_or_else(|e| e.into_inner());
                if self.inner.resolver.get(name).is_some() {
                    return Ok(());
                }
                let cert = ca.issue(&[name.to_owned()])?;
                self.inner.install(name, cert)?;
                tracing::debug!(%name, "issued a dev certificate");
                Ok(())
            }
            Source::Acme(_) => renewal::obtain(&self.inner, name).await,
        }
    }

    /// Validity of the certificate served for `name`, if any.
    pub fn info(&self, name: &str) -> Option<CertInfo> {
        self.inner.served_get(name).map(|s| s.info)
    }

    /// `not_after` of every certificate served, for expiry metrics.
    pub fn expiries(&self) -> Vec<SystemTime> {
        self.inner
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.info.not_after)
            .collect()
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

impl Inner {
    /// Own names always; others when a relay key may serve them.
    pub(crate) fn allowed(&self, name: &str) -> bool {
        self.own_names.iter().any(|n| n == name) || (self.registered)(name)
    }

    /// Own names always; others when a stored certificate may be served.
    pub(crate) fn may_serve_stored(&self, name: &str) -> bool {
        self.own_names.iter().any(|n| n == name) || (self.stored)(name)
    }

    pub(crate) fn served_get(&self, name: &str) -> Option<Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Serves `cert` for `name` from the next handshake on; open
    /// connections keep the certificate they started with.
    pub(crate) fn install(&self, name: &str, cert: Arc<CertifiedKey>) -> Result<()> {
        let info = CertInfo::of(&cert)?;
        let leaf = cert
            .cert
            .first()
            .cloned()
            .ok_or_else(|| Error::BadCertificate("empty chain".into()))?;
        let (renew_at, ari_check_at) = match &self.source {
            Source::Acme(_) => (renewal::renew_at(&info), Some(self.clock.now())),
            Source::Dev { .. } => (info.not_after, None),
        };
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if !served.contains_key(name) && served.len() >= MAX_CACHED_CERTS {
            // Drop some on-demand entries; they come back from the store or
            // the dev CA on their next handshake.
            let victims: Vec<String> = served
                .keys()
                .filter(|n| !self.own_names.contains(n))
                .take(MAX_CACHED_CERTS / 10)
                .cloned()
                .collect();
            for v in victims {
                served.remove(&v);
                self.resolver.remove(&v);
            }
        }
        served.insert(
            name.to_owned(),
            Served {
                info,
                leaf,
                renew_at,
                ari_check_at,
            },
        );
        self.resolver.insert(name, cert.clone());
        if self.own_names.first().is_some_and(|n| n == name) {
            self.resolver.set_default(cert);
        }
        Ok(())
    }

    /// Stops serving `name` (its certificate expired).
    pub(crate) fn uninstall(&self, name: &str) {
        self.served.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.resolver.remove(name);
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.inner.source {
            Source::Dev { ca, .. } => format!("{ca:?}"),
            Source::Acme(acme) => format!("{:?}", acme.issuer),
        };
        f.debug_struct("CertManager")
            .field("source", &source)
            .field("resolver", &self.inner.resolver)
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
