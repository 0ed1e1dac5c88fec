//! Control-stream frames and their sans-IO encoding.
//!
//! ```text
//! | version u8 | type u8 | payload length u32 BE | payload |
//! ```
//! The payload is at most [`MAX_FRAME_PAYLOAD`] bytes. Unknown versions and
//! types are errors; a payload must be consumed exactly.

use crate::error::{Error, Result};
use crate::limits::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD, MAX_HOSTNAME_LEN, MAX_HOSTNAMES, WIRE_VERSION};
use crate::reject::RejectCode;
use crate::routes::RouteSpec;
use crate::wire::{Reader, Writer};

/// Relay → gateway, first frame of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    pub public_key: [u8; 32],
    /// Random per relay process: a new session from the same instance
    /// replaces the older ones (e.g. after falling back from QUIC to TCP).
    pub instance: u64,
    pub hostnames: Vec<String>,
    pub capabilities: Vec<String>,
}

/// Gateway → relay: the session is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub session_id: u64,
    pub granted: Vec<String>,
    pub heartbeat_ms: u32,
    /// Other gateway replicas the relay should also keep a session with.
    pub peers: Vec<String>,
}

/// Relay → gateway: a change to the route set, or (a part of) all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesUpdate {
    /// The relay's route-set version once this update is applied.
    pub version: u64,
    /// For a delta: the version it applies on top of.
    pub base_version: u64,
    /// [`checksum`](crate::routes::checksum) of the whole set at `version`.
    pub checksum: [u8; 32],
    pub kind: UpdateKind,
    /// Routes added or changed (a full set: all routes of this chunk).
    pub upserts: Vec<RouteSpec>,
    /// Route ids removed (deltas only).
    pub removes: Vec<u64>,
}

/// A route a gateway won't serve (its key may not serve the host, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub route_id: u64,
    pub reason: String,
}

/// How a [`RoutesUpdate`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// On top of `base_version`; a gap means a resync.
    Delta,
    /// The whole set, possibly in several chunks (each under the frame
    /// limit): `first` starts a new set, `last` applies it.
    Full { first: bool, last: bool },
}

/// What a data stream carries, named in its [`Frame::StreamOpen`] header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// One HTTP/1.1 exchange (plus an upgrade, if both sides agree).
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Challenge {
        nonce: [u8; 32],
    },
    Proof {
        signature: [u8; 64],
    },
    Welcome(Welcome),
    Reject {
        code: RejectCode,
        message: String,
    },
    /// Relay → gateway heartbeat; carries the relay's last measured RTT and
    /// its current route-set version and checksum, so drift is found.
    Ping {
        seq: u64,
        rtt_micros: u32,
        routes_version: u64,
        routes_checksum: [u8; 32],
    },
    Pong {
        seq: u64,
    },
    /// Either side: no new streams; finish what is in flight.
    GoAway {
        reason: String,
    },
    /// Relay → gateway: a route-set change or the whole set.
    Routes(RoutesUpdate),
    /// Gateway → relay: the route set it holds now. `in_sync: false` asks
    /// for the whole set (a version gap or a checksum mismatch). `refused`
    /// lists routes of that set the gateway won't serve, and why.
    RoutesAck {
        version: u64,
        in_sync: bool,
        refused: Vec<Refused>,
    },
    /// Relay → gateway: every route currently failing its health check.
    Health {
        unhealthy: Vec<u64>,
    },
    /// First frame of every data stream (gateway → relay).
    StreamOpen {
        kind: StreamKind,
        route_id: u64,
    },
}

const HELLO: u8 = 0x01;
const CHALLENGE: u8 = 0x02;
const PROOF: u8 = 0x03;
const WELCOME: u8 = 0x04;
const REJECT: u8 = 0x05;
const PING: u8 = 0x06;
const PONG: u8 = 0x07;
const GOAWAY: u8 = 0x08;
const ROUTES: u8 = 0x09;
const ROUTES_ACK: u8 = 0x0a;
const STREAM_OPEN: u8 = 0x0b;
const HEALTH: u8 = 0x0c;
/// Highest known frame type.
const LAST_TYPE: u8 = HEALTH;
/// Most route ids in one frame's list.
const MAX_IDS: usize = 8192;

impl Frame {
    /// Name of the frame type, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Welcome(_) => "Welcome",
            Frame::Reject { .. } => "Reject",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::GoAway { .. } => "GoAway",
            Frame::Routes(_) => "Routes",
            Frame::RoutesAck { .. } => "RoutesAck",
            Frame::Health { .. } => "Health",
            Frame::StreamOpen { .. } => "StreamOpen",
        }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// Fails only if the payload would exceed [`MAX_FRAME_PAYLOAD`] (a route
    /// set that is too large, say); `out` is then left unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[WIRE_VERSION, self.type_byte(), 0, 0, 0, 0]);
        let mut w = Writer(out);
        match self {
            Frame::Hello(h) => {
                w.u16(h.protocol_version);
                w.raw(&h.public_key);
                w.u64(h.instance);
                w.strs(&h.hostnames);
                w.strs(&h.capabilities);
            }
            Frame::Challenge { nonce } => w.raw(nonce),
            Frame::Proof { signature } => w.raw(signature),
            Frame::Welcome(wl) => {
                w.u64(wl.session_id);
                w.strs(&wl.granted);
                w.u32(wl.heartbeat_ms);
                w.strs(&wl.peers);
            }
            Frame::Reject { code, message } => {
                w.u16(code.to_u16());
                w.str(message);
            }
            Frame::Ping {
                seq,
                rtt_micros,
                routes_version,
                routes_checksum,
            } => {
                w.u64(*seq);
                w.u32(*rtt_micros);
                w.u64(*routes_version);
                w.raw(routes_checksum);
            }
            Frame::Pong { seq } => w.u64(*seq),
            Frame::GoAway { reason } => w.str(reason),
            Frame::Routes(u) => {
                w.u64(u.version);
                w.u64(u.base_version);
                w.raw(&u.checksum);
                w.u8(match u.kind {
                    UpdateKind::Delta => 0,
                    UpdateKind::Full { first, last } => 1 | (u8::from(first) << 1) | (u8::from(last) << 2),
                });
                // serde_json can't fail on these plain structs.
                let json = serde_json::to_vec(&u.upserts).unwrap_or_default();
                w.bytes(&json);
                w.ids(&u.removes);
            }
            Frame::RoutesAck {
                version,
                in_sync,
                refused,
            } => {
                w.u64(*version);
                w.u8(u8::from(*in_sync));
                w.u32(refused.len() as u32);
                for r in refused {
                    w.u64(r.route_id);
                    w.str(&r.reason);
                }
            }
            Frame::Health { unhealthy } => w.ids(unhealthy),
            Frame::StreamOpen { kind, route_id } => {
                w.u8(match kind {
                    StreamKind::Http => 1,
                });
                w.u64(*route_id);
            }
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_FRAME_PAYLOAD {
            out.truncate(start);
            return Err(Error::FrameTooLarge {
                len,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        out[start + 2..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => HELLO,
            Frame::Challenge { .. } => CHALLENGE,
            Frame::Proof { .. } => PROOF,
            Frame::Welcome(_) => WELCOME,
            Frame::Reject { .. } => REJECT,
            Frame::Ping { .. } => PING,
            Frame::Pong { .. } => PONG,
            Frame::GoAway { .. } => GOAWAY,
            Frame::Routes(_) => ROUTES,
            Frame::RoutesAck { .. } => ROUTES_ACK,
            Frame::Health { .. } => HEALTH,
            Frame::StreamOpen { .. } => STREAM_OPEN,
        }
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` holds only part of a frame (read more and
    /// call again), `Ok(Some((frame, consumed)))` otherwise. Limits are checked
    /// on the header, before waiting for the payload, so a peer can't make us
    /// buffer more than [`MAX_FRAME_PAYLOAD`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
        let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let (ty, len) = parse_header(header.try_into().map_err(|_| Error::Truncated)?)?;
        let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((decode_payload(ty, payload)?, FRAME_HEADER_LEN + len)))
    }
}

/// Checks a frame header and returns (type, payload length).
pub fn parse_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<(u8, usize)> {
    if h[0] != WIRE_VERSION {
        return Err(Error::UnsupportedWireVersion(h[0]));
    }
    let ty = h[1];
    if !(HELLO..=LAST_TYPE).contains(&ty) {
        return Err(Error::UnknownFrameType(ty));
    }
    let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(Error::FrameTooLarge {
            len,
            max: MAX_FRAME_PAYLOAD,
        });
    }
    Ok((ty, len))
}

/// Decodes a payload whose header [`parse_header`] accepted.
pub fn decode_payload(ty: u8, payload: &[u8]) -> Result<Frame> {
    let name = match ty {
        HELLO => "Hello",
        CHALLENGE => "Challenge",
        PROOF => "Proof",
        WELCOME => "Welcome",
        REJECT => "Reject",
        PING => "Ping",
        PONG => "Pong",
        GOAWAY => "GoAway",
        ROUTES => "Routes",
        ROUTES_ACK => "RoutesAck",
        STREAM_OPEN => "StreamOpen",
        HEALTH => "Health",
        other => return Err(Error::UnknownFrameType(other)),
    };
    let mut r = Reader::new(payload, name);
    let frame = match ty {
        HELLO => Frame::Hello(Hello {
            protocol_version: r.u16()?,
            public_key: r.array()?,
            instance: r.u64()?,
            hostnames: r.strs(MAX_HOSTNAMES, MAX_HOSTNAME_LEN)?,
            capabilities: r.strs(64, 64)?,
        }),
        CHALLENGE => Frame::Challenge { nonce: r.array()? },
        PROOF => Frame::Proof { signature: r.array()? },
        WELCOME => Frame::Welcome(Welcome {
            session_id: r.u64()?,
            granted: r.strs(MAX_HOSTNAMES, MAX_HOSTNAME_LEN)?,
            heartbeat_ms: r.u32()?,
            peers: r.strs(64, MAX_HOSTNAME_LEN + 6)?,
        }),
        REJECT => Frame::Reject {
            code: RejectCode::from_u16(r.u16()?),
            message: r.str()?,
        },
        PING => Frame::Ping {
            seq: r.u64()?,
            rtt_micros: r.u32()?,
            routes_version: r.u64()?,
            routes_checksum: r.array()?,
        },
        PONG => Frame::Pong { seq: r.u64()? },
        GOAWAY => Frame::GoAway { reason: r.str()? },
        ROUTES => {
            let (version, base_version, checksum) = (r.u64()?, r.u64()?, r.array()?);
            let kind = match r.u8()? {
                0 => UpdateKind::Delta,
                k if k & !0b111 == 0 && k & 1 == 1 => UpdateKind::Full {
                    first: k & 2 != 0,
                    last: k & 4 != 0,
                },
                _ => return Err(r.malformed("unknown update kind")),
            };
            let upserts = serde_json::from_slice(r.bytes()?).map_err(|_| r.malformed("routes are not valid JSON"))?;
            let removes = r.ids(MAX_IDS)?;
            Frame::Routes(RoutesUpdate {
                version,
                base_version,
                checksum,
                kind,
                upserts,
                removes,
            })
        }
        ROUTES_ACK => {
            let version = r.u64()?;
            let in_sync = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.malformed("in_sync is not a boolean")),
            };
            let n = r.u32()? as usize;
            if n > MAX_IDS {
                return Err(r.malformed("refused list over its length limit"));
            }
            let refused = (0..n)
                .map(|_| {
                    Ok(Refused {
                        route_id: r.u64()?,
                        reason: r.str()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Frame::RoutesAck {
                version,
                in_sync,
                refused,
            }
        }
        HEALTH => Frame::Health {
            unhealthy: r.ids(MAX_IDS)?,
        },
        STREAM_OPEN => {
            let kind = match r.u8()? {
                1 => StreamKind::Http,
                _ => return Err(r.malformed("unknown stream kind")),
            };
            Frame::StreamOpen {
                kind,
                route_id: r.u64()?,
            }
        }
        other => return Err(Error::UnknownFrameType(other)),
    };
    r.finish()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hostname() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,10}){0,3}"
    }

    fn route() -> impl Strategy<Value = RouteSpec> {
        (any::<u64>(), hostname(), "(/[a-z0-9]{1,8}){0,3}", any::<i32>()).prop_map(|(id, host, path, priority)| {
            RouteSpec {
                id,
                host,
                path_prefix: if path.is_empty() { "/".into() } else { path },
                priority,
                policy: None,
            }
        })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let text = ".{0,100}";
        prop_oneof![
            (
                any::<u16>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                prop::collection::vec(hostname(), 0..20),
                prop::collection::vec("[a-z]{1,10}", 0..5)
            )
                .prop_map(
                    |(protocol_version, public_key, instance, hostnames, capabilities)| Frame::Hello(Hello {
                        protocol_version,
                        public_key,
                        instance,
                        hostnames,
                        capabilities
                    })
                ),
            any::<[u8; 32]>().prop_map(|nonce| Frame::Challenge { nonce }),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
                let mut signature = [0; 64];
                signature[..32].copy_from_slice(&a);
                signature[32..].copy_from_slice(&b);
                Frame::Proof { signature }
            }),
            (
                any::<u64>(),
                prop::collection::vec(hostname(), 0..20),
                any::<u32>(),
                prop::collection::vec(hostname(), 0..4)
            )
                .prop_map(|(session_id, granted, heartbeat_ms, peers)| Frame::Welcome(Welcome {
                    session_id,
                    granted,
                    heartbeat_ms,
                    peers
                })),
            (1u16..=9, text).prop_map(|(c, message)| Frame::Reject {
                code: RejectCode::from_u16(c),
                message
            }),
            (any::<u64>(), any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(
                |(seq, rtt_micros, routes_version, routes_checksum)| Frame::Ping {
                    seq,
                    rtt_micros,
                    routes_version,
                    routes_checksum
                }
            ),
            any::<u64>().prop_map(|seq| Frame::Pong { seq }),
            text.prop_map(|reason| Frame::GoAway { reason }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                prop_oneof![
                    Just(UpdateKind::Delta),
                    (any::<bool>(), any::<bool>()).prop_map(|(first, last)| UpdateKind::Full { first, last })
                ],
                prop::collection::vec(route(), 0..30),
                prop::collection::vec(any::<u64>(), 0..30)
            )
                .prop_map(|(version, base_version, checksum, kind, upserts, removes)| {
                    Frame::Routes(RoutesUpdate {
                        version,
                        base_version,
                        checksum,
                        kind,
                        upserts,
                        removes,
                    })
                }),
            (
                any::<u64>(),
                any::<bool>(),
                prop::collection::vec((any::<u64>(), ".{0,40}"), 0..5)
            )
                .prop_map(|(version, in_sync, refused)| Frame::RoutesAck {
                    version,
                    in_sync,
                    refused: refused
                        .into_iter()
                        .map(|(route_id, reason)| Refused { route_id, reason })
                        .collect()
                }),
            prop::collection::vec(any::<u64>(), 0..50).prop_map(|unhealthy| Frame::Health { unhealthy }),
            any::<u64>().prop_map(|route_id| Frame::StreamOpen {
                kind: StreamKind::Http,
                route_id
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in frame()) {
            let bytes = f.to_bytes().unwrap();
            let (back, used) = Frame::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, f);
        }

        #[test]
        fn every_prefix_asks_for_more(f in frame()) {
            let bytes = f.to_bytes().unwrap();
            for cut in 0..bytes.len() {
                prop_assert!(matches!(Frame::decode(&bytes[..cut]), Ok(None)));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn arbitrary_payloads_never_panic(ty in any::<u8>(), payload in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload(ty, &payload);
        }

        #[test]
        fn corrupted_frames_never_panic(f in frame(), idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = f.to_bytes().unwrap();
            let i = idx.index(bytes.len());
            bytes[i] = byte;
            let _ = Frame::decode(&bytes);
        }
    }

    #[test]
    fn limits_on_the_wire() {
        let oversize = [WIRE_VERSION, PING, 0, 1, 0, 1];
        assert!(matches!(
            Frame::decode(&oversize),
            Err(Error::FrameTooLarge { len: 65537, .. })
        ));
        assert!(matches!(
            Frame::decode(&[2, PING, 0, 0, 0, 0]),
            Err(Error::UnsupportedWireVersion(2))
        ));
        assert!(matches!(
            Frame::decode(&[1, 0xee, 0, 0, 0, 0]),
            Err(Error::UnknownFrameType(0xee))
        ));
        assert!(matches!(
            Frame::decode(&[1, 0, 0, 0, 0, 0]),
            Err(Error::UnknownFrameType(0))
        ));
        let mut trailing = Frame::Pong { seq: 1 }.to_bytes().unwrap();
        trailing.push(0);
        trailing[5] += 1;
        assert!(matches!(
            Frame::decode(&trailing),
            Err(Error::Malformed {
                reason: "trailing bytes",
                ..
            })
        ));
        let too_many_routes = Frame::Routes(RoutesUpdate {
            version: 1,
            base_version: 0,
            checksum: [0; 32],
            kind: UpdateKind::Delta,
            removes: vec![],
            upserts: (0..2000)
                .map(|id| RouteSpec {
                    id,
                    host: format!("host-{id}.example.com"),
                    path_prefix: "/".into(),
                    priority: 0,
                    policy: None,
                })
                .collect(),
        });
        let mut out = vec![9];
        assert!(matches!(
            too_many_routes.encode(&mut out),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(out, [9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn string_and_list_limits() {
        let long = Frame::GoAway {
            reason: "x".repeat(crate::limits::MAX_TEXT_LEN + 1),
        };
        assert!(matches!(
            Frame::decode(&long.to_bytes().unwrap()),
            Err(Error::Malformed { .. })
        ));
        let hello = Frame::Hello(Hello {
            protocol_version: 1,
            public_key: [0; 32],
            instance: 0,
            hostnames: vec!["a".into(); MAX_HOSTNAMES + 1],
            capabilities: vec![],
        });
        assert!(matches!(
            Frame::decode(&hello.to_bytes().unwrap()),
            Err(Error::Malformed { .. })
        ));
    }
}
