//! The channel-bound handshake, as two sans-IO state machines.
//!
//! ```text
//! relay                                   gateway
//!   Hello {version, public key, hostnames} ─▶
//!                                         ◀─ Challenge {32 random bytes}
//!   Proof {sig(CONTEXT ‖ nonce ‖ exporter)} ─▶
//!                                         ◀─ Welcome {…} | Reject {code, message}
//! ```
//! `exporter` is 32 bytes of TLS keying material ([`EXPORTER_LABEL`]) from
//! the connection the handshake runs on, so a proof is worthless on any
//! other connection. Neither machine reads a clock or touches a socket: the
//! caller passes `now` and moves frames.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::frame::{Frame, Hello, Welcome};
use crate::identity::{PublicKey, RelayKey};
use crate::limits::{HANDSHAKE_TIMEOUT, MAX_HOSTNAMES, PROTOCOL_VERSION};
use crate::names::HostPattern;
use crate::reject::RejectCode;

/// Domain separation for the proof signature.
pub const PROOF_CONTEXT: &[u8] = b"routehub-auth-v1";
/// TLS exporter label for the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-routehub-auth";

/// Keying material exported from the TLS/QUIC session.
pub type Exporter = [u8; 32];

/// The exact bytes a relay signs.
pub fn proof_message(nonce: &[u8; 32], exporter: &Exporter) -> [u8; 80] {
    let mut m = [0u8; 80];
    m[..16].copy_from_slice(PROOF_CONTEXT);
    m[16..48].copy_from_slice(nonce);
    m[48..].copy_from_slice(exporter);
    m
}

#[derive(Debug)]
enum ClientState {
    AwaitChallenge,
    AwaitWelcome,
    Done,
}

/// The relay's side.
#[derive(Debug)]
pub struct ClientHandshake {
    state: ClientState,
    exporter: Exporter,
}

/// What the relay does next.
#[derive(Debug)]
pub enum ClientEvent {
    Send(Frame),
    Established(Welcome),
}

impl ClientHandshake {
    /// Starts a handshake; send the returned `Hello`.
    pub fn start(
        key: &RelayKey,
        instance: u64,
        hostnames: Vec<String>,
        capabilities: Vec<String>,
        exporter: Exporter,
    ) -> (Self, Frame) {
        let hello = Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            public_key: key.public_key().to_bytes(),
            instance,
            hostnames,
            capabilities,
        });
        (
            ClientHandshake {
                state: ClientState::AwaitChallenge,
                exporter,
            },
            hello,
        )
    }

    pub fn handle(&mut self, key: &RelayKey, frame: Frame) -> Result<ClientEvent> {
        match (&self.state, frame) {
            (_, Frame::Reject { code, message }) => {
                self.state = ClientState::Done;
                Err(Error::Rejected { code, message })
            }
            (ClientState::AwaitChallenge, Frame::Challenge { nonce }) => {
                self.state = ClientState::AwaitWelcome;
                let signature = key.sign(&proof_message(&nonce, &self.exporter));
                Ok(ClientEvent::Send(Frame::Proof { signature }))
            }
            (ClientState::AwaitWelcome, Frame::Welcome(w)) => {
                self.state = ClientState::Done;
                Ok(ClientEvent::Established(w))
            }
            (state, other) => {
                let expected = match state {
                    ClientState::AwaitChallenge => "Challenge",
                    ClientState::AwaitWelcome => "Welcome",
                    ClientState::Done => "nothing (handshake finished)",
                };
                self.state = ClientState::Done;
                Err(Error::UnexpectedFrame {
                    expected,
                    got: other.name(),
                })
            }
        }
    }
}

/// A relay that proved it holds `key`, asking for `hostnames` (validated
/// patterns). Authorisation is the caller's job.
#[derive(Debug, Clone)]
pub struct VerifiedHello {
    pub key: PublicKey,
    pub instance: u64,
    pub hostnames: Vec<HostPattern>,
    pub capabilities: Vec<String>,
}

#[derive(Debug)]
enum ServerState {
    AwaitHello,
    AwaitProof(Box<VerifiedHello>),
    Done,
}

/// The gateway's side.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    exporter: Exporter,
    nonce: [u8; 32],
    deadline: Instant,
}

#[derive(Debug)]
pub enum ServerEvent {
    Send(Frame),
    /// The proof checked out; answer with [`ServerHandshake::welcome`] or a
    /// `Reject`.
    Verified(VerifiedHello),
}

impl ServerHandshake {
    /// `nonce` must come from a CSPRNG, fresh for every connection.
    pub fn new(exporter: Exporter, nonce: [u8; 32], now: Instant) -> Self {
        ServerHandshake {
            state: ServerState::AwaitHello,
            exporter,
            nonce,
            deadline: now + HANDSHAKE_TIMEOUT,
        }
    }

    /// When the handshake must have finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn handle(&mut self, frame: Frame, now: Instant) -> Result<ServerEvent> {
        if now >= self.deadline {
            self.state = ServerState::Done;
            return Err(Error::HandshakeTimeout(HANDSHAKE_TIMEOUT));
        }
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        match (state, frame) {
            (ServerState::AwaitHello, Frame::Hello(hello)) => {
                let verified = check_hello(hello)?;
                self.state = ServerState::AwaitProof(Box::new(verified));
                Ok(ServerEvent::Send(Frame::Challenge { nonce: self.nonce }))
            }
            (ServerState::AwaitProof(hello), Frame::Proof { signature }) => {
                hello
                    .key
                    .verify(&proof_message(&self.nonce, &self.exporter), &signature)?;
                Ok(ServerEvent::Verified(*hello))
            }
            (state, other) => Err(Error::UnexpectedFrame {
                expected: match state {
                    ServerState::AwaitHello => "Hello",
                    ServerState::AwaitProof(_) => "Proof",
                    ServerState::Done => "nothing (handshake finished)",
                },
                got: other.name(),
            }),
        }
    }

    /// The `Welcome` to send after `Verified`.
    pub fn welcome(
        session_id: u64,
        granted: &[HostPattern],
        heartbeat: std::time::Duration,
        peers: Vec<String>,
    ) -> Frame {
        Frame::Welcome(Welcome {
            session_id,
            granted: granted.iter().map(ToString::to_string).collect(),
            heartbeat_ms: heartbeat.as_millis().min(u32::MAX as u128) as u32,
            peers,
        })
    }
}

fn check_hello(hello: Hello) -> Result<VerifiedHello> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Error::Rejected {
            code: RejectCode::UnsupportedVersion,
            message: format!(
                "protocol version {} is not supported (gateway speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        });
    }
    if hello.hostnames.len() > MAX_HOSTNAMES {
        return Err(Error::Malformed {
            frame: "Hello",
            reason: "too many hostnames",
        });
    }
    let key = PublicKey::from_bytes(&hello.public_key)?;
    let mut hostnames = hello
        .hostnames
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>>>()?;
    hostnames.sort();
    hostnames.dedup();
    Ok(VerifiedHello {
        key,
        instance: hello.instance,
        hostnames,
        capabilities: hello.capabilities,
    })
}

impl Error {
    /// The `Reject` code a gateway sends for a failed handshake.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Error::Rejected { code, .. } => *code,
            Error::BadProof => RejectCode::BadProof,
            Error::HandshakeTimeout(_) => RejectCode::Timeout,
            Error::InvalidKey(_) => RejectCode::UnknownKey,
            Error::InvalidHostname { .. } => RejectCode::HostnameNotAllowed,
            Error::UnsupportedWireVersion(_) => RejectCode::UnsupportedVersion,
            _ => RejectCode::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run_pair(
        key: &RelayKey,
        client_exporter: Exporter,
        server_exporter: Exporter,
    ) -> Result<(VerifiedHello, Frame)> {
        let now = Instant::now();
        let (mut client, hello) = ClientHandshake::start(key, 1, vec!["App.test".into()], vec![], client_exporter);
        let mut server = ServerHandshake::new(server_exporter, [7; 32], now);
        let ServerEvent::Send(challenge) = server.handle(hello, now)? else {
            panic!("no challenge")
        };
        let ClientEvent::Send(proof) = client.handle(key, challenge)? else {
            panic!("no proof")
        };
        let ServerEvent::Verified(v) = server.handle(proof.clone(), now)? else {
            panic!("not verified")
        };
        let welcome = ServerHandshake::welcome(1, &v.hostnames, Duration::from_secs(1), vec![]);
        match client.handle(key, welcome)? {
            ClientEvent::Established(w) => assert_eq!(w.granted, ["app.test"]),
            other => panic!("{other:?}"),
        }
        Ok((v, proof))
    }

    #[test]
    fn full_handshake_in_memory() {
        let key = RelayKey::generate().unwrap();
        let (v, _) = run_pair(&key, [1; 32], [1; 32]).unwrap();
        assert_eq!(v.key, key.public_key());
        assert_eq!(v.hostnames, [HostPattern::Exact("app.test".into())]);
    }

    #[test]
    fn proof_from_another_connection_fails() {
        let key = RelayKey::generate().unwrap();
        // The relay signs with its own connection's exporter; the gateway's differs.
        assert!(matches!(run_pair(&key, [1; 32], [2; 32]), Err(Error::BadProof)));
        // A proof captured on one connection replayed on another.
        let (_, captured) = run_pair(&key, [1; 32], [1; 32]).unwrap();
        let now = Instant::now();
        let (_, hello) = ClientHandshake::start(&key, 1, vec![], vec![], [3; 32]);
        let mut server = ServerHandshake::new([3; 32], [9; 32], now);
        server.handle(hello, now).unwrap();
        assert!(matches!(server.handle(captured, now), Err(Error::BadProof)));
    }

    #[test]
    fn out_of_order_and_late_frames_fail() {
        let now = Instant::now();
        let mut server = ServerHandshake::new([0; 32], [0; 32], now);
        assert!(matches!(
            server.handle(Frame::Proof { signature: [0; 64] }, now),
            Err(Error::UnexpectedFrame { expected: "Hello", .. })
        ));
        let key = RelayKey::generate().unwrap();
        let (_, hello) = ClientHandshake::start(&key, 1, vec![], vec![], [0; 32]);
        let mut server = ServerHandshake::new([0; 32], [0; 32], now);
        let ten_hours = now + Duration::from_secs(36_000);
        assert!(matches!(
            server.handle(hello, ten_hours),
            Err(Error::HandshakeTimeout(_))
        ));
        assert_eq!(server.deadline(), now + HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn bad_hello_fields_are_rejected() {
        let now = Instant::now();
        let key = RelayKey::generate().unwrap();
        // Any UTF-8 may come in a Hello: a long non-ASCII name is refused, not a panic.
        let long_utf8 = format!("a{}", "é".repeat(50));
        for hostnames in [vec!["bad host".to_owned()], vec!["*.com".to_owned()], vec![long_utf8]] {
            let (_, hello) = ClientHandshake::start(&key, 1, hostnames, vec![], [0; 32]);
            let mut server = ServerHandshake::new([0; 32], [0; 32], now);
            assert!(server.handle(hello, now).is_err());
        }
        let mut hello = Hello {
            protocol_version: 99,
            public_key: key.public_key().to_bytes(),
            instance: 1,
            hostnames: vec![],
            capabilities: vec![],
        };
        let mut server = ServerHandshake::new([0; 32], [0; 32], now);
        let err = server.handle(Frame::Hello(hello.clone()), now).unwrap_err();
        assert_eq!(err.reject_code(), RejectCode::UnsupportedVersion);
        hello.protocol_version = PROTOCOL_VERSION;
        hello.public_key = [0; 32];
        let mut server = ServerHandshake::new([0; 32], [0; 32], now);
        assert!(server.handle(Frame::Hello(hello), now).is_err());
    }

    #[test]
    fn client_surfaces_reject() {
        let key = RelayKey::generate().unwrap();
        let (mut client, _) = ClientHandshake::start(&key, 1, vec![], vec![], [0; 32]);
        let err = client
            .handle(
                &key,
                Frame::Reject {
                    code: RejectCode::UnknownKey,
                    message: "who are you".into(),
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("who are you"));
        assert!(!err.is_retryable());
    }
}
