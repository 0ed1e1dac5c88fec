//! The end-to-end harness: a whole gateway, relays and backends in one
//! process on ephemeral loopback ports, a TLS client that speaks h1 and h2,
//! and fault-injecting proxies.

pub mod acme_proxy;
pub mod backend;
pub mod browser;
pub mod client;
pub mod docker;
pub mod faults;
pub mod logs;
pub mod net;
pub mod pebble;

pub use backend::Backend;
pub use client::TestClient;
pub use faults::FaultProxy;
pub use net::{TestNet, free_port, wait_until};
pub use pebble::Pebble;

/// Installs ring as the process crypto provider and a test log subscriber
/// (`RUST_LOG` to see more). Safe to call from every test.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_ansi(false)
        .with_writer(logs::CapturingWriter)
        .try_init();
}
