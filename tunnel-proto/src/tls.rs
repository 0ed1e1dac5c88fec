//! TLS settings shared by both transports: ring only, TLS 1.3 only for
//! tunnels, ALPN `routehub/1`.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};
use crate::limits::ALPN;

/// The one crypto provider Routehub uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots a relay trusts for its gateways: the PEM file given (a private or
/// dev CA), else the public Web PKI roots.
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let file_err = |e: rustls_pki_types::pem::Error| Error::File {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(file_err)? {
                roots.add(cert.map_err(file_err)?)?;
            }
            if roots.is_empty() {
                return Err(Error::File {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no certificate in file"),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// Client config for tunnels.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Server config for tunnels (QUIC, and TCP once ALPN said `routehub/1`).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}
