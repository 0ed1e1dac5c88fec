//! Client certificates. The TLS handshake of a host that needs mTLS asks
//! for a certificate without requiring one and checks only that the client
//! holds its key ([`OfferClientCert`]); which CA must have issued it
//! depends on the host's org, so the chain is verified per request,
//! against the org's uploaded CA, before anything is forwarded.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// Most CA certificates one org may upload.
const MAX_CA_CERTS: usize = 16;

/// Parses an org's CA bundle (PEM, one or more certificates).
pub fn parse_roots(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| "client CA is not PEM certificates".to_owned())?;
    if certs.is_empty() || certs.len() > MAX_CA_CERTS {
        return Err(format!("client CA must hold 1 to {MAX_CA_CERTS} certificates"));
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err("client CA holds a certificate that does not parse".into());
    }
    Ok(certs)
}

/// A verifier of client chains issued by one org's CA.
pub type OrgVerifier = Arc<dyn ClientCertVerifier>;

pub fn org_verifier(pem: &str) -> Result<OrgVerifier, String> {
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(parse_roots(pem)?);
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), tunnel_proto::tls::provider())
        .build()
        .map(|v| v as OrgVerifier)
        .map_err(|e| format!("client CA: {e}"))
}

/// Checks a client's chain (leaf first) with an org's verifier, now.
pub fn verify_chain(verifier: &OrgVerifier, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no client certificate")?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("client certificate refused: {e}"))
}

/// The leaf's subject common name, for `X-Routehub-User`.
pub fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.chars().take(256).collect())
}

/// Handshake verifier for mTLS hosts: offers client auth, does not require
/// it, and accepts any chain whose holder proves its key. It never decides
/// access on its own: every request checks the chain against its host's
/// org CA first ([`verify_chain`]).
#[derive(Debug)]
pub struct OfferClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl OfferClientCert {
    pub fn new() -> Arc<Self> {
        Arc::new(OfferClientCert {
            algs: tunnel_proto::tls::provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for OfferClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to the request, where the host (and so the org) is known.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
