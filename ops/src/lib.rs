//! Operations plumbing that the gateway and the relay both run, kept in one
//! place so the two can't drift apart: the admin token, the admin listener
//! (loopback only, connection cap, timeouts), the admin client the CLI uses,
//! crash-safe file writes with explicit modes, and command-line flags laid
//! over a TOML config file.

pub mod client;
pub mod error;
pub mod fs;
pub mod listener;
pub mod overlay;
pub mod token;

pub use client::{AdminClient, TokenLookup, find_token};
pub use error::{Error, Result};
pub use listener::{ADMIN_HEADER_TIMEOUT, AdminListener, MAX_ADMIN_CONNECTIONS};
pub use token::{AdminToken, TOKEN_FILE};
