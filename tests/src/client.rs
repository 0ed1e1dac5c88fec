//! A TLS client for the gateway under test: any SNI, h1 or h2, trusting
//! the gateway's dev CA, always connecting to the gateway's loopback address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type ReqBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn empty() -> ReqBody {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

/// Which HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

#[derive(Clone)]
pub struct TestClient {
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    /// A client certificate to offer when asked; counts the asks.
    client_cert: Option<Arc<ClientCertProbe>>,
}

/// Offers one client certificate and counts how many handshakes asked for
/// one (a server that does not ask never calls the resolver).
#[derive(Debug)]
struct ClientCertProbe {
    key: Arc<rustls::sign::CertifiedKey>,
    asked: AtomicUsize,
}

impl rustls::client::ResolvesClientCert for ClientCertProbe {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One open client connection.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Conn {
    /// For h2: a handle that sends requests concurrently on this connection.
    pub fn h2_sender(&self) -> Option<hyper::client::conn::http2::SendRequest<ReqBody>> {
        match self {
            Conn::H2(s) => Some(s.clone()),
            Conn::H1(_) => None,
        }
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>> {
        Ok(match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }
}

impl TestClient {
    pub fn new(addr: SocketAddr, ca_pem: &Path) -> Result<Self> {
        let roots = tunnel_proto::tls::load_roots(Some(ca_pem))?;
        Ok(TestClient {
            addr,
            roots: Arc::new(roots),
            client_cert: None,
        })
    }

    /// The same client, offering this certificate chain when asked.
    pub fn with_client_cert(mut self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).expect("usable client key");
        self.client_cert = Some(Arc::new(ClientCertProbe {
            key: Arc::new(rustls::sign::CertifiedKey::new(chain, signer)),
            asked: AtomicUsize::new(0),
        }));
        self
    }

    /// How many handshakes of this client (and its clones) the server
    /// asked for a client certificate; 0 without one.
    pub fn client_cert_requests(&self) -> usize {
        self.client_cert.as_ref().map_or(0, |p| p.asked.load(Ordering::SeqCst))
    }

    fn tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(tunnel_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the defaults")
            .with_root_certificates(self.roots.clone());
        let mut cfg = match &self.client_cert {
            Some(probe) => builder.with_client_cert_resolver(probe.clone()),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A TLS connection with the given SNI and ALPN list.
    pub async fn tls_connect(&self, sni: &str, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.tls_over(tcp, sni, alpn).await
    }

    /// TLS over a TCP connection to the gateway the test made itself (to
    /// set its socket options, say).
    pub async fn tls_over(&self, tcp: TcpStream, sni: &str, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>> {
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_owned())?;
        Ok(TlsConnector::from(self.tls(alpn)).connect(name, tcp).await?)
    }

    /// An HTTP connection to the gateway for `sni`.
    pub async fn connect(&self, sni: &str, proto: Proto) -> Result<Conn> {
        let alpn: &[&[u8]] = match proto {
            Proto::H1 => &[b"http/1.1"],
            Proto::H2 => &[b"h2"],
        };
        let tls = self
            .tls_connect(sni, alpn)
            .await
            .with_context(|| format!("TLS to the gateway as {sni}"))?;
        let io = TokioIo::new(tls);
        Ok(match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn.with_upgrades());
                Conn::H1(send)
            }
            Proto::H2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Conn::H2(send)
            }
        })
    }

    /// One request on a fresh h1 connection; SNI and Host are `host`.
    pub async fn get(&self, host: &str, path: &str) -> Result<Reply> {
        self.request(host, Proto::H1, Request::get(path).header("host", host).body(empty())?)
            .await
    }

    /// `n` GETs at once, each on a fresh h1 connection; their statuses.
    pub async fn get_concurrently(&self, host: &str, path: &str, n: usize) -> Result<Vec<StatusCode>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (client, host, path) = (self.clone(), host.to_owned(), path.to_owned());
                tokio::spawn(async move { client.get(&host, &path).await.map(|r| r.status) })
            })
            .collect();
        let mut statuses = Vec::with_capacity(n);
        for t in tasks {
            statuses.push(t.await??);
        }
        Ok(statuses)
    }

    /// `req` on a fresh connection (SNI `sni`), body read to the end.
    pub async fn request(&self, sni: &str, proto: Proto, mut req: Request<ReqBody>) -> Result<Reply> {
        let mut conn = self.connect(sni, proto).await?;
        if proto == Proto::H2 {
            let host = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or(sni)
                .to_owned();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            *req.uri_mut() = format!("https://{host}{pq}").parse()?;
            req.headers_mut().remove("host");
        }
        let resp = conn.send(req).await?;
        read(resp).await
    }
}

/// Reads a response body to the end.
pub async fn read(resp: Response<Incoming>) -> Result<Reply> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
