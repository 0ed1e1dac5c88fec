//! The rustls certificate resolver every TLS listener shares. Entries are
//! replaced in place, so a renewed certificate is used by the next handshake
//! and open connections are untouched.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Hostname → certificate, plus a default for handshakes without SNI.
#[derive(Default)]
pub struct CertResolver {
    by_name: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    default: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs or replaces the certificate for `name` (lowercase).
    pub fn insert(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), cert);
    }

    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    pub fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| keep(name));
    }

    /// The certificate for handshakes that name no server.
    pub fn set_default(&self, cert: Arc<CertifiedKey>) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = Some(cert);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => self.get(&name.to_ascii_lowercase()),
            None => self.default.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("certificates", &self.len())
            .finish()
    }
}
