//! The Routehub gateway: public TLS edge, relay sessions, routing, metrics.
//!
//! [`Gateway::start`] binds everything and returns a handle; the work runs
//! on spawned tasks until [`Gateway::shutdown`], which drains: no new
//! connections, `GoAway` to relays, in-flight requests finish (up to the
//! drain timeout), then the tunnels close.

pub mod access;
mod acme_tls;
pub mod admin;
pub mod authorized_keys;
mod body;
pub mod config;
mod control;
pub mod error;
mod handshake;
pub mod headers;
mod http_listener;
mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod registry;
mod relay_body;
pub mod session;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use access::{Authority, FileIdentityStore, IdentityStore};
pub use authorized_keys::AuthorizedKeys;
pub use config::GatewayConfig;
pub use error::{Error, Result};
use metrics::Metrics;
use registry::Registry;

/// Shared by every task of one gateway.
pub(crate) struct State {
    pub(crate) config: GatewayConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) certs: certs::CertManager,
    pub(crate) metrics: Metrics,
    pub(crate) https_tls: Arc<rustls::ServerConfig>,
    /// HTTPS for hosts with mTLS routes: asks for a client certificate.
    pub(crate) https_mtls: Arc<rustls::ServerConfig>,
    /// The identity store, its static part, and the lock that orders
    /// admin changes.
    pub(crate) identity: admin::IdentityAdmin,
    /// The HTTPS listener's port, for redirects from plain HTTP.
    pub(crate) https_port: u16,
    /// TLS for relay tunnels over TCP (TLS 1.3, ALPN `routehub/1`).
    pub(crate) tunnel_tls: Arc<rustls::ServerConfig>,
    /// Cancelled when the drain begins.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when everything has stopped.
    pub(crate) stopped: CancellationToken,
    /// Relay tunnels (authenticated or not yet), QUIC and TCP.
    pub(crate) tunnel_permits: Arc<tokio::sync::Semaphore>,
    /// Client connections, so the drain can wait for them.
    pub(crate) tasks: TaskTracker,
}

/// A running gateway.
pub struct Gateway {
    state: Arc<State>,
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    supervisor: tokio::task::JoinHandle<()>,
}

fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<TcpListener> {
    let bind_err = |source| Error::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    // A deep backlog absorbs bursts of new connections.
    socket.listen(4096).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    TcpListener::from_std(socket.into()).map_err(bind_err)
}

/// TCP for HTTPS and UDP for QUIC on the same port. With port 0, retries
/// until a port is free on both.
fn bind_pair(addr: SocketAddr) -> Result<(TcpListener, std::net::UdpSocket)> {
    let mut last = None;
    for _ in 0..32 {
        let tcp = bind_tcp(addr, "HTTPS (TCP)")?;
        let port = tcp.local_addr()?.port();
        let udp_addr = SocketAddr::new(addr.ip(), port);
        match std::net::UdpSocket::bind(udp_addr) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(source) => {
                return Err(Error::Bind {
                    what: "QUIC (UDP)",
                    addr: udp_addr,
                    source,
                });
            }
        }
    }
    Err(Error::Bind {
        what: "QUIC (UDP)",
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

impl Gateway {
    /// Validates the config, binds the listeners and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Gateway> {
        let config = config.validate()?;
        // Keys, tokens and the identity store live here: private whatever
        // the umask (an existing dir keeps its mode).
        ops::fs::ensure_private_dir(&config.data_dir)?;
        let keys = match &config.authorized_keys {
            Some(path) => AuthorizedKeys::load(path)?,
            None => AuthorizedKeys::default(),
        };
        let identity_store: Arc<dyn IdentityStore> = Arc::new(FileIdentityStore::new(&config.data_dir));
        let identity = identity_store.load()?;
        let authority = Authority::new(keys.clone(), identity);
        if authority.is_empty() {
            tracing::warn!("no authorized relay keys: no relay can connect until one is added");
        }
        let registry = Arc::new(Registry::new(authority));
        // The token exists before the admin port accepts, so a client that
        // sees the port open can always read it.
        let admin_token = ops::AdminToken::load_or_create(&config.data_dir)?;
        let registered: certs::Registered = {
            let registry = registry.clone();
            // An ACME order spends CA rate limits; a dev certificate is free.
            let live_only = config.acme.is_some();
            Arc::new(move |name: &str| registry.is_registered(name, live_only))
        };
        let mut metrics = Metrics::new();
        let certs = match &config.acme {
            Some(acme) => {
                let acme = acme.to_certs(config.http_addr().is_some())?;
                tracing::info!(directory = %acme.directory_url, challenges = ?acme.challenges()?, "certificates from ACME");
                let store: Arc<dyn certs::CertStore> = Arc::new(certs::DirStore::new(&config.data_dir));
                let owned = registry.clone();
                let options = certs::AcmeOptions {
                    clock: config.clock.clone(),
                    events: metrics.cert_events(),
                    // Stored certificates need ownership only: a wildcard
                    // name's relay reconnects after the gateway is up.
                    stored: Some(Arc::new(move |name: &str| owned.is_registered(name, false))),
                };
                certs::CertManager::with_acme(acme, store, config.names.clone(), registered, options).await?
            }
            None => certs::CertManager::with_dev_ca(&config.data_dir, config.names.clone(), registered)?,
        };
        metrics.watch_certificates(certs.clone());
        let resolver = certs.resolver();
        let https_tls = Arc::new(listener::https_tls(resolver.clone(), false)?);
        let https_mtls = Arc::new(listener::https_tls(resolver.clone(), true)?);
        let tunnel_tls = tunnel_proto::tls::server_config(resolver)?;
        let quic_cfg = tunnel_proto::quic::server_config(tunnel_tls.clone())?;

        let (tcp, udp) = bind_pair(config.listen)?;
        let https_addr = tcp.local_addr()?;
        let http = match config.http_addr() {
            Some(addr) => Some(bind_tcp(addr, "HTTP")?),
            None => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
        let admin = ops::AdminListener::bind(config.admin_listen, config.dangerous_admin_public, "gateway").await?;
        let admin_addr = admin.local_addr();
        let endpoint = tunnel_proto::quic::server_endpoint(udp, quic_cfg)?;

        let tunnel_permits = Arc::new(tokio::sync::Semaphore::new(config.max_relay_tunnels));
        let state = Arc::new(State {
            config,
            registry,
            certs,
            metrics,
            https_tls,
            https_mtls,
            identity: admin::IdentityAdmin::new(identity_store, keys, admin_token),
            https_port: https_addr.port(),
            tunnel_tls: Arc::new(tunnel_tls),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            tunnel_permits,
            tasks: TaskTracker::new(),
        });

        tokio::spawn(listener::accept_tcp(tcp, state.clone()));
        tokio::spawn(handshake::accept_quic(endpoint.clone(), state.clone()));
        tokio::spawn(admin::serve(admin, state.clone()));
        if let Some(http) = http {
            tokio::spawn(http_listener::serve(http, state.clone()));
        }
        let supervisor = tokio::spawn(drain_on_shutdown(state.clone(), endpoint));
        tracing::info!(%https_addr, quic = %https_addr, http = ?http_addr, admin = %admin_addr, "gateway listening");
        Ok(Gateway {
            state,
            https_addr,
            http_addr,
            admin_addr,
            supervisor,
        })
    }

    /// HTTPS (TCP) and QUIC (UDP) address.
    pub fn addr(&self) -> SocketAddr {
        self.https_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The plain-HTTP listener (ACME HTTP-01, redirects), if on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The dev CA root that signs this gateway's certificates; `None` when
    /// they come from ACME.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.state.certs.ca_cert_path()
    }

    /// The certificate manager: what is served, until when.
    pub fn certs(&self) -> &certs::CertManager {
        &self.state.certs
    }

    pub fn data_dir(&self) -> PathBuf {
        self.state.config.data_dir.clone()
    }

    /// Prometheus text of the gateway's metrics.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.encode()
    }

    /// Test aid: see [`Registry::dangerous_forget_a_route`].
    pub fn dangerous_forget_a_route(&self) {
        self.state.registry.dangerous_forget_a_route();
    }

    /// Idle HTTP connections kept over tunnel streams, over all sessions.
    pub fn idle_tunnel_connections(&self) -> usize {
        self.state.registry.sessions().iter().map(|s| s.pool.idle()).sum()
    }

    pub fn session_count(&self) -> usize {
        self.state.registry.session_count()
    }

    /// Each session's route set as received from its relay: version and
    /// checksum (what a relay compares with its own; tests, diagnostics).
    pub fn route_sets(&self) -> Vec<(u64, [u8; 32])> {
        self.state
            .registry
            .sessions()
            .iter()
            .map(|s| {
                let (version, checksum, _) = s.received();
                (version, checksum)
            })
            .collect()
    }

    /// Starts the drain. Returns at once; [`Gateway::wait`] for the end.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Resolves once the gateway has stopped (after [`Gateway::shutdown`]);
    /// unlike [`Gateway::wait`] it keeps the handle.
    pub async fn stopped(&self) {
        self.state.stopped.cancelled().await;
    }

    /// Waits until the gateway has stopped (after [`Gateway::shutdown`]).
    pub async fn wait(self) {
        let _ = self.supervisor.await;
    }
}

async fn drain_on_shutdown(state: Arc<State>, endpoint: quinn::Endpoint) {
    state.shutdown.cancelled().await;
    state.certs.shutdown();
    tracing::info!(deadline = ?state.config.drain_timeout(), "draining");
    state.tasks.close();
    if tokio::time::timeout(state.config.drain_timeout(), state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = state.tasks.len(),
            "drain deadline reached; closing remaining connections"
        );
    }
    endpoint.close(0u32.into(), b"gateway shut down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    state.stopped.cancel();
    tracing::info!("gateway stopped");
}
