//! Reaching a gateway: QUIC first, TCP+TLS 300 ms later if QUIC has
//! not connected (Happy Eyeballs style), first to connect wins and the other
//! attempt is dropped; then the Routehub handshake on the winner.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tunnel_proto::handshake::{ClientEvent, ClientHandshake};
use tunnel_proto::io::{expect_frame, write_frame};
use tunnel_proto::limits::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, RACE_DELAY};
use tunnel_proto::{Error as ProtoError, RelayKey, Tunnel, TunnelStream, Welcome};

use crate::error::{Error, Result};
use crate::gateway_addr::GatewayAddr;

/// Which transports a relay may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// Race QUIC and TCP, prefer QUIC, fall back and come back automatically.
    #[default]
    Auto,
    Quic,
    Tcp,
}

impl std::str::FromStr for TransportMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(TransportMode::Auto),
            "quic" => Ok(TransportMode::Quic),
            "tcp" => Ok(TransportMode::Tcp),
            _ => Err(format!("unknown transport {s:?} (auto, quic or tcp)")),
        }
    }
}

/// TLS/QUIC settings for both transports.
pub(crate) struct Dialer {
    pub quic: quinn::ClientConfig,
    pub tcp: Arc<rustls::ClientConfig>,
    pub mode: TransportMode,
    pub resolver: Resolver,
}

/// How gateway names become addresses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Resolver {
    /// The system's (getaddrinfo).
    #[default]
    System,
    /// A lookup that never answers, as behind a dead DNS server.
    #[cfg(test)]
    Silent,
}

impl Resolver {
    async fn resolve(self, gateway: &GatewayAddr) -> Result<std::net::SocketAddr> {
        match self {
            Resolver::System => gateway.resolve().await,
            #[cfg(test)]
            Resolver::Silent => std::future::pending().await,
        }
    }
}

/// A session that passed the handshake, ready to run.
pub(crate) struct Established {
    pub tunnel: Tunnel,
    pub ctrl: TunnelStream,
    pub welcome: Welcome,
    /// The hostnames the handshake asked for (`welcome.granted` answers them).
    pub asked: Vec<String>,
}

impl Dialer {
    /// The name lookup counts against [`CONNECT_TIMEOUT`] too: a DNS
    /// server that never answers must not stall the relay.
    async fn quic(&self, gateway: &GatewayAddr) -> Result<Tunnel> {
        let attempt = async {
            let addr = self.resolver.resolve(gateway).await?;
            Ok(tunnel_proto::quic::connect(addr, &gateway.server_name, self.quic.clone()).await?)
        };
        timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| ProtoError::HandshakeTimeout(CONNECT_TIMEOUT))?
    }

    async fn tcp(&self, gateway: &GatewayAddr) -> Result<Tunnel> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let addr = timeout_at(deadline, self.resolver.resolve(gateway))
            .await
            .map_err(|_| ProtoError::HandshakeTimeout(CONNECT_TIMEOUT))??;
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(tunnel_proto::tcp::connect(addr, &gateway.server_name, self.tcp.clone(), left).await?)
    }

    /// Connects with the configured transport(s). In `Auto` mode QUIC gets
    /// a head start of [`RACE_DELAY`] unless `quic_suspect` (QUIC just went
    /// silent or lost a race): then both start at once.
    pub async fn transport(&self, gateway: &GatewayAddr, quic_suspect: bool) -> Result<Tunnel> {
        match self.mode {
            TransportMode::Quic => return self.quic(gateway).await,
            TransportMode::Tcp => return self.tcp(gateway).await,
            TransportMode::Auto => {}
        }
        let head_start = if quic_suspect { Duration::ZERO } else { RACE_DELAY };
        let quic = self.quic(gateway);
        let tcp = async {
            sleep(head_start).await;
            self.tcp(gateway).await
        };
        tokio::pin!(quic, tcp);
        let (mut quic_err, mut tcp_err) = (None, None);
        loop {
            tokio::select! {
                r = &mut quic, if quic_err.is_none() => match r {
                    Ok(t) => return Ok(t),
                    Err(e) => quic_err = Some(e),
                },
                r = &mut tcp, if tcp_err.is_none() => match r {
                    Ok(t) => return Ok(t),
                    Err(e) => tcp_err = Some(e),
                },
            }
            if let (Some(q), Some(t)) = (&quic_err, &tcp_err) {
                let retryable = q.is_retryable() || t.is_retryable();
                return Err(Error::Connect {
                    quic: q.to_string(),
                    tcp: t.to_string(),
                    retryable,
                });
            }
        }
    }

    /// Transport, then the Routehub handshake.
    pub async fn establish(
        &self,
        key: &RelayKey,
        instance: u64,
        hostnames: Vec<String>,
        gateway: &GatewayAddr,
        quic_suspect: bool,
    ) -> Result<Established> {
        let tunnel = self.transport(gateway, quic_suspect).await?;
        self.handshake(key, instance, hostnames, tunnel).await
    }

    /// QUIC only, then the handshake: the background probe that moves a
    /// session back from TCP.
    pub async fn establish_quic(
        &self,
        key: &RelayKey,
        instance: u64,
        hostnames: Vec<String>,
        gateway: &GatewayAddr,
    ) -> Result<Established> {
        let tunnel = self.quic(gateway).await?;
        self.handshake(key, instance, hostnames, tunnel).await
    }

    async fn handshake(
        &self,
        key: &RelayKey,
        instance: u64,
        hostnames: Vec<String>,
        tunnel: Tunnel,
    ) -> Result<Established> {
        let asked = hostnames.clone();
        let exchange = async {
            let mut ctrl = tunnel.open_stream().await?;
            ctrl.prioritize();
            let (mut hs, hello) = ClientHandshake::start(key, instance, hostnames, Vec::new(), tunnel.exporter()?);
            write_frame(&mut ctrl, &hello).await?;
            loop {
                let frame = expect_frame(&mut ctrl).await?;
                match hs.handle(key, frame)? {
                    ClientEvent::Send(f) => write_frame(&mut ctrl, &f).await?,
                    ClientEvent::Established(welcome) => return Ok::<_, ProtoError>((ctrl, welcome)),
                }
            }
        };
        match timeout(HANDSHAKE_TIMEOUT, exchange).await {
            Ok(Ok((ctrl, welcome))) => Ok(Established {
                tunnel,
                ctrl,
                welcome,
                asked,
            }),
            Ok(Err(e)) => {
                tunnel.close("handshake failed");
                Err(e.into())
            }
            Err(_) => {
                tunnel.close("handshake timed out");
                Err(ProtoError::HandshakeTimeout(HANDSHAKE_TIMEOUT).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(mode: TransportMode) -> Dialer {
        let tls = tunnel_proto::tls::client_config(rustls::RootCertStore::empty()).expect("TLS config");
        Dialer {
            quic: tunnel_proto::quic::client_config(tls.clone()).expect("QUIC config"),
            tcp: Arc::new(tls),
            mode,
            resolver: Resolver::Silent,
        }
    }

    /// A DNS lookup that never answers fails the attempt within the
    /// connect timeout (plus the race delay for TCP), on every transport.
    #[tokio::test(start_paused = true)]
    async fn a_silent_dns_lookup_fails_within_the_connect_timeout() {
        let gateway = GatewayAddr::parse("gw.example.com", None).expect("address");
        for mode in [TransportMode::Auto, TransportMode::Quic, TransportMode::Tcp] {
            let started = Instant::now();
            let attempt = timeout(CONNECT_TIMEOUT * 10, dialer(mode).transport(&gateway, false)).await;
            let err = match attempt {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => panic!("{mode:?}: connected through a silent resolver"),
                Err(_) => panic!("{mode:?}: still waiting for DNS after {:?}", CONNECT_TIMEOUT * 10),
            };
            assert!(err.is_retryable(), "{mode:?}: {err}");
            let took = started.elapsed();
            assert!(took <= CONNECT_TIMEOUT + RACE_DELAY, "{mode:?}: gave up after {took:?}");
        }
    }
}
