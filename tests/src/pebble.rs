//! Pebble, the ACME test server (Debian package `pebble`), run by the
//! tests themselves: its own config on free loopback ports, its
//! `httpPort`/`tlsPort` pointed at the gateway under test, fake DNS from
//! `pebble-challtestsrv` resolving every name to 127.0.0.1, real
//! validation. A fault-injecting proxy ([`AcmeProxy`]) stands in front;
//! the gateway talks to the proxy. Child processes die with the
//! [`Pebble`] value, also when a test fails.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_rustls::TlsConnector;

use crate::acme_proxy::AcmeProxy;

/// Pebble's new-order endpoint.
pub const NEW_ORDER_PATH: &str = "/order-plz";
/// Longest wait for Pebble and challtestsrv to answer after starting.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Launch attempts (a free port picked for Pebble may be taken before it
/// binds it).
const LAUNCH_ATTEMPTS: usize = 3;

/// Whether Pebble and its fake DNS are installed.
pub fn installed() -> bool {
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
            .unwrap_or(false)
    };
    on_path("pebble") && on_path("pebble-challtestsrv")
}

/// A prepared Pebble, or `None` (the test is skipped) when it is not
/// installed. Under `CI=true` a missing Pebble fails the test instead:
/// `scripts/test.sh` installs it.
pub async fn require() -> Option<Arc<Pebble>> {
    if !installed() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("pebble is not installed (scripts/test.sh installs Debian's `pebble` package)");
        }
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble)");
        return None;
    }
    Some(Pebble::prepare().await.expect("prepare pebble"))
}

struct Launched {
    pebble: SocketAddr,
    management: SocketAddr,
    challtestsrv: SocketAddr,
    issuing_root: PathBuf,
}

pub struct Pebble {
    dir: TempDir,
    tls_root: PathBuf,
    client_tls: Arc<rustls::ClientConfig>,
    proxy: AcmeProxy,
    children: Mutex<Vec<Child>>,
    launched: OnceLock<Launched>,
    tls_port_override: Mutex<Option<u16>>,
    /// External Account Binding required: key id → HMAC key (base64url).
    eab: Mutex<Option<(String, String)>>,
}

fn free_tcp_port() -> Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_tcp_port() -> Result<u16> {
    // challtestsrv's DNS listens on UDP and TCP.
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free on both UDP and TCP")
}

impl Pebble {
    /// Makes Pebble's TLS material and starts the proxy; no process yet.
    pub async fn prepare() -> Result<Arc<Pebble>> {
        let dir = tempfile::tempdir()?;
        // Pebble ships no certificate for its own HTTPS listener.
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "Pebble listener test root");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate()?;
        let leaf =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?.signed_by(&leaf_key, &issuer)?;
        let tls_root = dir.path().join("listener-root.pem");
        std::fs::write(&tls_root, ca_cert.pem())?;
        std::fs::write(dir.path().join("cert.pem"), leaf.pem())?;
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem())?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes())?,
            )?;
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let proxy = AcmeProxy::start(server_tls, client_tls.clone()).await?;
        Ok(Arc::new(Pebble {
            dir,
            tls_root,
            client_tls: Arc::new(client_tls),
            proxy,
            children: Mutex::new(Vec::new()),
            launched: OnceLock::new(),
            tls_port_override: Mutex::new(None),
            eab: Mutex::new(None),
        }))
    }

    /// The directory URL the gateway uses (through the proxy).
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.proxy.addr())
    }

    /// The root of Pebble's (and the proxy's) own HTTPS: the gateway's
    /// `acme.ca_root`.
    pub fn tls_root(&self) -> &Path {
        &self.tls_root
    }

    pub fn proxy(&self) -> &AcmeProxy {
        &self.proxy
    }

    /// The root that signs the certificates Pebble issues (new at every
    /// start). Panics before [`Pebble::launch`].
    pub fn issuing_root(&self) -> &Path {
        &self.launched.get().expect("pebble launched").issuing_root
    }

    /// Makes every TLS-ALPN-01 validation fail: Pebble will connect to a
    /// port where nothing listens. Call before [`Pebble::launch`].
    pub fn break_tls_alpn01(&self) -> Result<()> {
        *self.tls_port_override.lock().unwrap() = Some(free_tcp_port()?);
        Ok(())
    }

    /// Makes Pebble refuse new accounts without an External Account
    /// Binding for `key_id` with `hmac_key` (base64url). Call before
    /// [`Pebble::launch`].
    pub fn require_eab(&self, key_id: &str, hmac_key: &str) {
        *self.eab.lock().unwrap() = Some((key_id.to_owned(), hmac_key.to_owned()));
    }

    /// Starts challtestsrv and Pebble, validating against the gateway's
    /// plain-HTTP port `http_port` and TLS port `tls_port` on 127.0.0.1.
    pub async fn launch(&self, http_port: u16, tls_port: u16) -> Result<()> {
        let mut last = None;
        for _ in 0..LAUNCH_ATTEMPTS {
            match self.try_launch(http_port, tls_port).await {
                Ok(l) => {
                    self.proxy.set_upstream(l.pebble);
                    let _ = self.launched.set(l);
                    return Ok(());
                }
                Err(e) => {
                    self.kill();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("pebble did not start")))
    }

    fn kill(&self) {
        for mut child in self.children.lock().unwrap().drain(..) {
            let _ = child.start_kill();
        }
    }

    async fn try_launch(&self, http_port: u16, tls_port: u16) -> Result<Launched> {
        let tls_port = self.tls_port_override.lock().unwrap().unwrap_or(tls_port);
        let dns_port = free_udp_tcp_port()?;
        let (pebble, management, challtestsrv) = (
            SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
        );
        let log = |name: &str| -> Result<Stdio> { Ok(std::fs::File::create(self.dir.path().join(name))?.into()) };
        let mut cts = Command::new("pebble-challtestsrv");
        cts.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-management")
            .arg(challtestsrv.to_string())
            .stdout(log("challtestsrv.log")?)
            .stderr(log("challtestsrv.err")?)
            .kill_on_drop(true);
        self.children
            .lock()
            .unwrap()
            .push(cts.spawn().context("spawn pebble-challtestsrv")?);

        let eab = self.eab.lock().unwrap().clone();
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": pebble.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": self.dir.path().join("cert.pem"),
            "privateKey": self.dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
        }});
        if let Some((kid, key)) = eab {
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_path = self.dir.path().join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // Validate at once, and never reuse an authorization: every
            // order proves control again, as the failure tests need.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            // Pebble refuses 5% of good nonces by default. The ACME client
            // retries a refused nonce twice, but about one request in 8 000
            // still fails, and the failed order backs off for a minute:
            // one test in a few runs would time out. Faults here are the
            // ones a test injects on purpose (see `AcmeProxy`).
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log")?)
            .stderr(log("pebble.err")?)
            .kill_on_drop(true);
        self.children.lock().unwrap().push(cmd.spawn().context("spawn pebble")?);

        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            let up = self.https_get(pebble, "/dir").await.is_ok() && TcpStream::connect(challtestsrv).await.is_ok();
            if up {
                break;
            }
            if let Some(status) = self.exited() {
                bail!("pebble or challtestsrv exited ({status}): {}", self.logs());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("pebble not up within {STARTUP_DEADLINE:?}: {}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let root = self.https_get(management, "/roots/0").await?;
        let issuing_root = self.dir.path().join("issuing-root.pem");
        CertificateDer::from_pem_slice(&root).context("Pebble's /roots/0 is not a PEM certificate")?;
        std::fs::write(&issuing_root, &root)?;
        Ok(Launched {
            pebble,
            management,
            challtestsrv,
            issuing_root,
        })
    }

    fn exited(&self) -> Option<String> {
        let mut children = self.children.lock().unwrap();
        children
            .iter_mut()
            .find_map(|c| c.try_wait().ok().flatten().map(|s| s.to_string()))
    }

    /// The tail of the processes' logs, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["pebble.log", "pebble.err", "challtestsrv.log", "challtestsrv.err"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(name)) {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                out.push_str(&format!("\n--- {name} ---\n{tail}"));
            }
        }
        out
    }

    async fn https_get(&self, addr: SocketAddr, path: &str) -> Result<Bytes> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(self.client_tls.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))?;
        let resp = send.send_request(req).await?;
        if !resp.status().is_success() {
            bail!("GET {path} on {addr}: {}", resp.status());
        }
        Ok(resp.into_body().collect().await?.to_bytes())
    }

    /// Makes the fake DNS answer `ip` for `host` (e.g. an address where
    /// the gateway does not listen, so validation fails).
    pub async fn set_address(&self, host: &str, ip: &str) -> Result<()> {
        let addr = self.launched.get().context("pebble not launched")?.challtestsrv;
        let body = serde_json::json!({"host": host, "addresses": [ip]}).to_string();
        let tcp = TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::post("/add-a")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body)))?;
        let resp = send.send_request(req).await?;
        if !resp.status().is_success() {
            bail!("challtestsrv /add-a: {}", resp.status());
        }
        Ok(())
    }

    /// Pebble's management address (roots, intermediates).
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.launched.get().map(|l| l.management)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // kill_on_drop does the same; this makes the order explicit.
        self.kill();
    }
}
