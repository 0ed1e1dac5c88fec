//! Certificates for the gateway: where they come from (a dev CA, or an ACME
//! CA on demand), where they are kept, and the rustls resolver that serves
//! them.

pub mod acme;
mod acme_http;
pub mod challenge;
pub mod clock;
pub mod dev_ca;
pub mod error;
pub mod ledger;
pub mod manager;
pub mod pem;
mod renewal;
pub mod resolver;
mod served;
pub mod store;

pub use acme::{AcmeConfig, CertEvents, ChallengePolicy, ExternalAccountBinding, NoEvents};
pub use challenge::Challenges;
pub use clock::Clock;
pub use dev_ca::DevCa;
pub use error::{Error, Result};
pub use manager::{AcmeOptions, CertManager};
pub use resolver::CertResolver;
pub use served::{MAX_CACHED_CERTS, Registered};
pub use store::{CertStore, DirStore};
