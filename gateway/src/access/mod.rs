//! Access control: the identity model and its store, end-user keys and
//! tokens, client certificates, and the per-request decision.

pub mod authority;
pub mod jws;
pub mod keys;
pub mod model;
pub mod mtls;
pub mod policy;
pub mod store;

pub use authority::{Authority, Owner};
pub use model::IdentityDoc;
pub use store::{FileIdentityStore, IdentityStore};
