//! `TestNet`: a gateway with an authorized-keys file, relays and their keys,
//! in a temp dir, on ephemeral loopback ports. Everything stops on drop.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway::{Gateway, GatewayConfig};
use relay::{Relay, RelayConfig, RouteConfig};
use tempfile::TempDir;
use tunnel_proto::RelayKey;

use crate::client::TestClient;
use crate::pebble::Pebble;

/// A loopback port free on both TCP and UDP right now (for processes that
/// must come back on the same port).
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..32 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no port free on both TCP and UDP"))
}

/// Polls `check` every few milliseconds until it yields `Some` or `within`
/// passes.
pub async fn wait_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Builder {
    keys: Vec<(String, Vec<String>)>,
    relays: Vec<(String, Vec<RouteConfig>)>,
    gateway: GatewayConfig,
    pebble: Option<Arc<Pebble>>,
}

/// Parses `host[/path]=target` pairs.
pub fn routes(pairs: &[(&str, &str)]) -> Vec<RouteConfig> {
    pairs
        .iter()
        .map(|(lhs, target)| format!("{lhs}={target}").parse().expect("test route"))
        .collect()
}

impl Builder {
    /// An authorized key called `name`, for these host patterns.
    pub fn key(mut self, name: &str, hosts: &[&str]) -> Self {
        self.keys
            .push((name.into(), hosts.iter().map(|h| h.to_string()).collect()));
        self
    }

    /// A relay with key `name` serving `routes` (`("host[/path]", target)`).
    pub fn relay(mut self, key: &str, pairs: &[(&str, &str)]) -> Self {
        self.relays.push((key.into(), routes(pairs)));
        self
    }

    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.gateway.heartbeat_ms = d.as_millis() as u64;
        self
    }

    pub fn gateway_config(mut self, f: impl FnOnce(&mut GatewayConfig)) -> Self {
        f(&mut self.gateway);
        self
    }

    /// Certificates from `pebble` (launched once the gateway's ports are
    /// known); relays and [`TestNet::client`] trust Pebble's issuing root.
    /// The gateway's own name is issued before relays start.
    pub fn acme(mut self, pebble: &Arc<Pebble>) -> Self {
        let mut acme = gateway::config::AcmeSection::new(pebble.directory_url());
        acme.ca_root = Some(pebble.tls_root().to_owned());
        self.gateway.acme = Some(acme);
        self.pebble = Some(pebble.clone());
        self
    }

    /// Starts the gateway, then the relays, and waits until every relay's
    /// routes are acknowledged.
    pub async fn start(self) -> Result<TestNet> {
        crate::init();
        let dir = tempfile::tempdir()?;
        let mut key_paths = HashMap::new();
        let mut file = String::new();
        for (name, hosts) in &self.keys {
            let path = dir.path().join(format!("{name}.key"));
            let key = RelayKey::generate()?;
            key.save_new(&path)?;
            file.push_str(&format!("{} {}\n", key.public_key(), hosts.join(",")));
            key_paths.insert(name.clone(), path);
        }
        let keys_file = dir.path().join("authorized_keys");
        std::fs::write(&keys_file, file)?;
        let mut config = self.gateway;
        config.data_dir = dir.path().join("gateway");
        config.authorized_keys = Some(keys_file);
        let gateway = Gateway::start(config.clone()).await?;
        let ca = match &self.pebble {
            Some(pebble) => {
                let http = gateway.http_addr().context("ACME tests need the HTTP listener")?;
                pebble.launch(http.port(), gateway.addr().port()).await?;
                let own = config.names.first().cloned().unwrap_or_default();
                let issued = wait_until(Duration::from_secs(20), || {
                    let ok = gateway.certs().info(&own).is_some();
                    async move { ok.then_some(()) }
                })
                .await;
                if issued.is_none() {
                    bail!(
                        "no ACME certificate for the gateway's name {own} within 20 s: {}",
                        pebble.logs()
                    );
                }
                pebble.issuing_root().to_owned()
            }
            None => gateway.ca_cert_path().context("dev CA")?.to_owned(),
        };
        let mut net = TestNet {
            dir,
            relay_dirs: Default::default(),
            gateway,
            config,
            ca,
            key_paths,
            relays: Vec::new(),
        };
        for (key, routes) in self.relays {
            let relay = net.start_relay(&key, routes).await?;
            net.relays.push(relay);
        }
        for relay in &net.relays {
            if let Err(status) = relay.wait_ready(1, Duration::from_secs(10)).await {
                bail!("relay not ready within 10 s: {status:?}");
            }
        }
        Ok(net)
    }
}

pub struct TestNet {
    pub dir: TempDir,
    relay_dirs: std::sync::atomic::AtomicUsize,
    pub gateway: Gateway,
    /// The config the gateway was started with (ports as configured).
    pub config: GatewayConfig,
    /// The root clients and relays trust: the dev CA, or Pebble's.
    pub ca: PathBuf,
    key_paths: HashMap<String, PathBuf>,
    pub relays: Vec<Relay>,
}

impl TestNet {
    pub fn builder() -> Builder {
        let gateway = GatewayConfig {
            listen: "127.0.0.1:0".parse().expect("literal"),
            admin_listen: "127.0.0.1:0".parse().expect("literal"),
            http_listen: gateway::config::HttpListen::At("127.0.0.1:0".parse().expect("literal")),
            names: vec!["gateway.test".into()],
            drain_timeout_secs: 5,
            ..Default::default()
        };
        Builder {
            keys: Vec::new(),
            relays: Vec::new(),
            gateway,
            pebble: None,
        }
    }

    pub fn client(&self) -> TestClient {
        TestClient::new(self.gateway.addr(), &self.ca).expect("CA readable")
    }

    /// The private key file of the authorized key `name`, or a new key
    /// that no authorized-keys line lists.
    pub fn key_path(&self, name: &str) -> PathBuf {
        if let Some(p) = self.key_paths.get(name) {
            return p.clone();
        }
        let path = self.dir.path().join(format!("unlisted-{name}.key"));
        if !path.exists() {
            RelayKey::generate().and_then(|k| k.save_new(&path)).expect("write key");
        }
        path
    }

    /// A relay config with its own data dir and an ephemeral admin port.
    pub fn relay_config(&self, key: &str, routes: Vec<RouteConfig>) -> RelayConfig {
        let n = self.relay_dirs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RelayConfig {
            data_dir: self.dir.path().join(format!("relay-{n}")),
            admin_listen: Some("127.0.0.1:0".parse().expect("literal")),
            gateways: vec![self.gateway.addr().to_string()],
            key: self.key_path(key),
            ca: Some(self.ca.clone()),
            server_name: Some("gateway.test".into()),
            routes,
            drain_timeout_secs: 5,
            // Tests that follow containers say so (tests/tests/labels.rs).
            label_routes: false,
            deployments: false,
            ..Default::default()
        }
    }

    /// Another gateway replica sharing this one's CA and authorized keys
    /// (so relays trust it with the same `--ca`).
    pub async fn start_replica(&self, name: &str, configure: impl FnOnce(&mut GatewayConfig)) -> Result<Gateway> {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir)?;
        let ca_dir = self
            .gateway
            .ca_cert_path()
            .and_then(|p| p.parent())
            .context("replicas share the dev CA")?;
        for file in ["ca.pem", "ca-key.pem"] {
            std::fs::copy(ca_dir.join(file), data_dir.join(file))?;
        }
        let mut config = GatewayConfig {
            data_dir,
            listen: "127.0.0.1:0".parse().expect("literal"),
            admin_listen: "127.0.0.1:0".parse().expect("literal"),
            authorized_keys: Some(self.dir.path().join("authorized_keys")),
            names: vec!["gateway.test".into()],
            http_listen: gateway::config::HttpListen::At("127.0.0.1:0".parse().expect("literal")),
            drain_timeout_secs: 5,
            ..Default::default()
        };
        configure(&mut config);
        Ok(Gateway::start(config).await?)
    }

    /// A relay config that reaches the gateway through `via` (a fault proxy).
    pub fn relay_config_via(&self, via: std::net::SocketAddr, key: &str, routes: Vec<RouteConfig>) -> RelayConfig {
        RelayConfig {
            gateways: vec![via.to_string()],
            ..self.relay_config(key, routes)
        }
    }

    /// Starts a relay that follows the Docker Engine at `socket` for label
    /// routes, and waits for it to connect.
    pub async fn start_label_relay(&self, key: &str, socket: &std::path::Path) -> Result<Relay> {
        let relay = Relay::start(RelayConfig {
            label_routes: true,
            deployments: true,
            docker_socket: socket.to_owned(),
            ..self.relay_config(key, Vec::new())
        })
        .await
        .context("starting relay")?;
        relay
            .wait_ready(1, Duration::from_secs(10))
            .await
            .map_err(|s| anyhow::anyhow!("relay not ready: {s:?}"))?;
        Ok(relay)
    }

    /// Starts a relay; does not wait for it to connect.
    pub async fn start_relay(&self, key: &str, routes: Vec<RouteConfig>) -> Result<Relay> {
        Relay::start(self.relay_config(key, routes))
            .await
            .context("starting relay")
    }

    /// Waits for the relay's last error (its connection attempts fail).
    pub async fn relay_error(relay: &Relay, within: Duration) -> Option<String> {
        let status = relay.status();
        wait_until(within, || {
            let s = status.borrow().values().find_map(|g| g.last_error.clone());
            async move { s }
        })
        .await
    }

    /// A bare QUIC connection to the gateway, TLS done, no Routehub
    /// handshake: for tests that play a misbehaving relay.
    pub async fn raw_quic(&self) -> Result<tunnel_proto::Tunnel> {
        self.raw_quic_to(self.gateway.addr()).await
    }

    /// [`TestNet::raw_quic`] to another address (e.g. a fault proxy).
    pub async fn raw_quic_to(&self, addr: std::net::SocketAddr) -> Result<tunnel_proto::Tunnel> {
        let cfg = tunnel_proto::quic::client_config(self.tunnel_tls()?)?;
        Ok(tunnel_proto::quic::connect(addr, "gateway.test", cfg).await?)
    }

    /// A bare TCP+TLS tunnel to the gateway (ALPN `routehub/1` on
    /// its HTTPS port), TLS done, no Routehub handshake.
    pub async fn raw_tcp(&self) -> Result<tunnel_proto::Tunnel> {
        self.raw_tcp_over(tokio::net::TcpStream::connect(self.gateway.addr()).await?)
            .await
    }

    /// [`TestNet::raw_tcp`] over a TCP connection the test made (to pick
    /// when TLS starts).
    pub async fn raw_tcp_over(&self, tcp: tokio::net::TcpStream) -> Result<tunnel_proto::Tunnel> {
        let tls = Arc::new(self.tunnel_tls()?);
        Ok(tunnel_proto::tcp::connect_over(tcp, "gateway.test", tls, Duration::from_secs(10)).await?)
    }

    fn tunnel_tls(&self) -> Result<rustls::ClientConfig> {
        let roots = tunnel_proto::tls::load_roots(Some(&self.ca))?;
        Ok(tunnel_proto::tls::client_config(roots)?)
    }

    /// Stops the gateway and starts a new one with the same config, data
    /// dir and listen addresses (relays reconnect by themselves).
    pub async fn restart_gateway(&mut self) -> Result<()> {
        self.gateway.shutdown();
        self.gateway.stopped().await;
        let mut config = self.config.clone();
        config.listen = self.gateway.addr();
        config.http_listen = self.gateway.http_addr().into();
        // The old listeners close as their tasks end: retry the bind briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Gateway::start(config.clone()).await {
                Ok(gw) => {
                    self.gateway = gw;
                    return Ok(());
                }
                Err(gateway::Error::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let tcp = tokio::net::TcpStream::connect(self.gateway.admin_addr()).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "admin")
            .body(crate::client::empty())?;
        let resp = send.send_request(req).await?;
        Ok(crate::client::read(resp).await?.text())
    }

    /// A JSON call to the gateway's admin API, with its bearer token
    /// (`with_token: false` leaves it out). Returns status and body.
    pub async fn admin_api(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        with_token: bool,
    ) -> Result<(u16, serde_json::Value)> {
        let token = std::fs::read_to_string(self.gateway.data_dir().join(ops::TOKEN_FILE))?;
        let tcp = tokio::net::TcpStream::connect(self.gateway.admin_addr()).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin")
            .header("content-type", "application/json");
        if with_token {
            req = req.header("authorization", format!("Bearer {}", token.trim()));
        }
        let body = match body {
            Some(v) => crate::client::body(v.to_string()),
            None => crate::client::empty(),
        };
        let resp = send.send_request(req.body(body)?).await?;
        let reply = crate::client::read(resp).await?;
        let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
        Ok((reply.status.as_u16(), json))
    }

    /// Like [`TestNet::admin_api`], failing unless the answer is 200.
    pub async fn admin_ok(
        &self,
        method: http::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (status, v) = self.admin_api(method, path, Some(body), true).await?;
        if status != 200 {
            bail!("admin {path}: {status} {v}");
        }
        Ok(v)
    }

    /// The value of one metric line (exact name with labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await.ok()?;
        metric_value(&text, series)
    }
}

/// The value of `series` (exact name with labels) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for r in &self.relays {
            r.shutdown();
        }
        self.gateway.shutdown();
    }
}
