//! The certificates being served, by name, and which names may have one:
//! the narrow handle the dev CA, the ACME renewal and the manager share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::pem::CertInfo;
use crate::resolver::CertResolver;

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

/// When a certificate just installed is renewed: `(renew_at, ari_check_at)`.
pub(crate) type Schedule<'a> = &'a dyn Fn(&CertInfo) -> (SystemTime, Option<SystemTime>);

/// The certificates served and the names allowed one.
pub(crate) struct ServedCerts {
    pub(crate) resolver: Arc<CertResolver>,
    /// The gateway's own names; the first is the default certificate.
    pub(crate) own_names: Vec<String>,
    registered: Registered,
    /// Whose stored certificates are served at startup.
    stored: Registered,
    by_name: Mutex<HashMap<String, Served>>,
}

impl ServedCerts {
    pub(crate) fn new(own_names: Vec<String>, registered: Registered, stored: Registered) -> Self {
        ServedCerts {
            resolver: Arc::new(CertResolver::new()),
            own_names,
            registered,
            stored,
            by_name: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn is_own(&self, name: &str) -> bool {
        self.own_names.iter().any(|n| n == name)
    }

    /// Own names always; others when a relay key may serve them.
    pub(crate) fn allowed(&self, name: &str) -> bool {
        self.is_own(name) || (self.registered)(name)
    }

    /// Own names always; others when a stored certificate may be served.
    pub(crate) fn may_serve_stored(&self, name: &str) -> bool {
        self.is_own(name) || (self.stored)(name)
    }

    /// Whether a certificate for `name` is in the resolver.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.resolver.get(name).is_some()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Served>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Served> {
        self.lock().get(name).cloned()
    }

    /// Serves `cert` for `name` from the next handshake on, renewed as
    /// `schedule` says; open connections keep the certificate they started
    /// with.
    pub(crate) fn install(&self, name: &str, cert: Arc<CertifiedKey>, schedule: Schedule<'_>) -> Result<()> {
        let info = CertInfo::of(&cert)?;
        let leaf = cert
            .cert
            .first()
            .cloned()
            .ok_or_else(|| Error::BadCertificate("empty chain".into()))?;
        let (renew_at, ari_check_at) = schedule(&info);
        let mut served = self.lock();
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
        self.lock().remove(name);
        self.resolver.remove(name);
    }
}
