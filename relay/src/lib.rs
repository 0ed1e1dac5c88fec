//! The Routehub relay: dials out to one or more gateways, proves its
//! identity, announces its routes and serves the streams gateways open by
//! forwarding them to local services.

pub mod admin;
pub mod backoff;
pub mod client;
pub mod config;
pub mod connect;
pub mod containers;
pub mod deployer;
pub mod error;
pub mod gateway_addr;
pub mod gateways;
mod handoff;
pub mod health;
mod maintain;
pub mod model;
pub mod proxy;
pub mod records;
pub mod routes;
pub mod secrets;
mod session;
mod shared;
pub mod status;
pub mod store;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel_proto::{PublicKey, RelayKey};

pub use config::{RelayConfig, RouteConfig};
use connect::Dialer;
pub use connect::TransportMode;
pub use error::{Error, Result};
pub use gateway_addr::GatewayAddr;
use proxy::Proxy;
use shared::Shared;
pub use status::{GatewayStatus, SessionInfo, Status};
use store::Store;

/// A running relay.
pub struct Relay {
    shared: Arc<Shared>,
    status: watch::Receiver<Status>,
    labels: watch::Receiver<containers::LabelStatus>,
    store: Store,
    admin_addr: Option<std::net::SocketAddr>,
}

/// The store's file in the data dir.
pub const STORE_FILE: &str = "relay.db";

/// The store entries `routes` seed, each checked; two for one host and
/// path are an error naming both (the second would be dropped: the store
/// keeps one target per host and path).
fn checked_seeds(routes: &[RouteConfig]) -> Result<Vec<model::NewRoute>> {
    let written = |r: &RouteConfig| {
        let path = if r.path == "/" { "" } else { r.path.as_str() };
        format!("{}{path}={}", r.host, r.target)
    };
    let mut seen = std::collections::HashMap::new();
    let mut seeds = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let mut new = r.to_new_route();
        model::validate(&mut new).map_err(|reason| Error::Route {
            route: written(r),
            reason,
        })?;
        if let Some(first) = seen.insert((new.host.clone(), new.path.clone()), i) {
            let path = if new.path == "/" { "" } else { new.path.as_str() };
            return Err(Error::Route {
                route: format!("{}{path}", new.host),
                reason: format!(
                    "given twice, as `{}` and as `{}` ([[route]] entries and --route flags): \
                     one host and path take one target, keep one of them",
                    written(&routes[first]),
                    written(r)
                ),
            });
        }
        seeds.push(new);
    }
    Ok(seeds)
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // A weak instance id only risks retiring a sibling's session early.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_be_bytes(b)
}

impl Relay {
    /// Loads the key, checks the routes and starts a session per gateway.
    /// Connection failures are retried in the background, never returned.
    pub async fn start(config: RelayConfig) -> Result<Relay> {
        if config.gateways.is_empty() {
            return Err(Error::Config {
                path: "<config>".into(),
                message: "at least one gateway is needed".into(),
            });
        }
        let gateways = config
            .gateways
            .iter()
            .flat_map(|g| g.split(','))
            .filter(|g| !g.trim().is_empty())
            .map(|g| GatewayAddr::parse(g.trim(), config.server_name.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        let key = RelayKey::load(&config.key)?;
        // Every seed is checked before anything is written, and written only
        // once nothing else can fail: a start that fails leaves the store as
        // it was.
        let seeds = checked_seeds(&config.routes)?;
        ops::fs::ensure_private_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join(STORE_FILE))?;
        let roots = tunnel_proto::tls::load_roots(config.ca.as_deref())?;
        let tls = tunnel_proto::tls::client_config(roots)?;
        let dialer = Dialer {
            quic: tunnel_proto::quic::client_config(tls.clone())?,
            tcp: Arc::new(tls),
            mode: config.transport,
            resolver: Default::default(),
        };
        let admin_listener = match config.admin_listen {
            Some(addr) => {
                // The token exists before the port accepts, so a client that
                // sees the port open can always read it.
                let token = ops::AdminToken::load_or_create(&config.data_dir)?;
                let listener = ops::AdminListener::bind(addr, config.dangerous_admin_public, "relay").await?;
                let local = listener.local_addr();
                Some((listener, token, local))
            }
            None => None,
        };
        let added = store.seed(seeds).await?;
        if added > 0 {
            tracing::info!(added, "routes from the config added to the store");
        }
        let (status_tx, status) = watch::channel(Status::new());
        let shutdown = CancellationToken::new();
        let unhealthy = health::spawn(store.clone(), store.routes(), shutdown.clone()).await;
        let labels = if config.label_routes {
            containers::spawn(store.clone(), config.docker_socket.clone(), shutdown.clone())
        } else {
            watch::channel(containers::LabelStatus::off()).1
        };
        let deployer = if config.deployments {
            Some(
                deployer::Deployer::start(
                    store.clone(),
                    config.docker_socket.clone(),
                    &config.data_dir,
                    status.clone(),
                    shutdown.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared {
            key,
            instance: random_u64(),
            proxy: Arc::new(Proxy::new(store.routes())),
            dialer,
            server_name: config.server_name.clone(),
            quic_retry: Duration::from_secs(config.quic_retry_secs.max(1)),
            shutdown,
            unhealthy,
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            status: status_tx,
            maintainers: TaskTracker::new(),
            gateways: Default::default(),
        });
        let admin_addr = match admin_listener {
            Some((listener, token, local)) => {
                let admin = Arc::new(admin::Admin {
                    store: store.clone(),
                    token,
                    status: status.clone(),
                    labels: labels.clone(),
                    shutdown: shared.shutdown.clone(),
                    feeds: Arc::new(tokio::sync::Semaphore::new(admin::MAX_EVENT_CLIENTS)),
                    deployer,
                });
                tokio::spawn(admin::serve(listener, admin));
                tracing::info!(admin = %local, "admin API and dashboard listening");
                Some(local)
            }
            None => None,
        };
        tracing::info!(key = %shared.key.public_key(), gateways = gateways.len(), transport = ?config.transport, "relay starting");
        for g in gateways {
            maintain::join(&shared, g);
        }
        Ok(Relay {
            shared,
            status,
            labels,
            store,
            admin_addr,
        })
    }

    /// Where the admin API listens, if it does.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// The relay's configuration store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn public_key(&self) -> PublicKey {
        self.shared.key.public_key()
    }

    /// What label sync is doing and what it left out.
    pub fn labels(&self) -> watch::Receiver<containers::LabelStatus> {
        self.labels.clone()
    }

    /// Live sessions, updated on every change.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until `gateways` sessions are up with their routes
    /// acknowledged. Returns the last status either way.
    pub async fn wait_ready(&self, gateways: usize, within: Duration) -> std::result::Result<Status, Status> {
        let mut rx = self.status.clone();
        let ready = |s: &Status| {
            s.values()
                .filter(|g| g.session.as_ref().is_some_and(|i| i.routes_version_acked.is_some()))
                .count()
                >= gateways
        };
        match tokio::time::timeout(within, rx.wait_for(ready)).await {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(self.status.borrow().clone()),
        }
    }

    /// Starts a graceful stop: `GoAway` to gateways, in-flight streams finish.
    /// Tunnel streams being served now (each with its target connection).
    pub fn streams_open(&self) -> usize {
        self.shared.proxy.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits for every session to end (after [`Relay::shutdown`]).
    pub async fn wait(self) {
        self.shared.maintainers.close();
        self.shared.maintainers.wait().await;
    }
}
