//! Pieces that structure-aware targets build their cases from. Each mostly
//! makes something close to valid (so a case gets past the first check)
//! and sometimes arbitrary garbage.

use arbitrary::{Result, Unstructured};
use tunnel_proto::{Frame, Hello, Refused, RejectCode, RouteSpec, RoutesUpdate, StreamKind, UpdateKind, Welcome};

/// Letters a hostname-like string is made of, a few bad ones included.
const HOST_CHARS: &[u8] = b"abcxyzABZ019-_.*:/ ";

/// A hostname, a `*.suffix` pattern, or something almost like one.
pub fn hostname(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let mut s = String::new();
    if u.ratio(1, 4)? {
        s.push_str("*.");
    }
    let labels = u.int_in_range(1..=5)?;
    for i in 0..labels {
        if i > 0 {
            s.push('.');
        }
        let len = if u.ratio(1, 16)? {
            u.int_in_range(0..=70)?
        } else {
            u.int_in_range(1..=8)?
        };
        for _ in 0..len {
            let c = if u.ratio(7, 8)? {
                *u.choose(&HOST_CHARS[..9])?
            } else {
                *u.choose(HOST_CHARS)?
            };
            s.push(char::from(c));
        }
    }
    if u.ratio(1, 16)? {
        s.push('.');
    }
    Ok(s)
}

/// Free text: short and mostly printable, sometimes arbitrary.
pub fn text(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let len = u.int_in_range(0..=12)?;
    (0..len).map(|_| u.int_in_range(b' '..=b'~').map(char::from)).collect()
}

/// Up to `max` items made by `f`.
pub fn list<T>(u: &mut Unstructured, max: usize, f: impl Fn(&mut Unstructured) -> Result<T>) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// A route as a relay announces it.
pub fn route_spec(u: &mut Unstructured) -> Result<RouteSpec> {
    Ok(RouteSpec {
        id: u.int_in_range(0..=7)?,
        host: hostname(u)?,
        path_prefix: if u.ratio(1, 2)? { "/".into() } else { text(u)? },
        priority: u.arbitrary()?,
        policy: None,
    })
}

/// Any frame, each field from the input.
pub fn frame(u: &mut Unstructured) -> Result<Frame> {
    Ok(match u.int_in_range(0..=11)? {
        0 => Frame::Hello(Hello {
            protocol_version: u.arbitrary()?,
            public_key: u.arbitrary()?,
            instance: u.arbitrary()?,
            hostnames: list(u, 4, hostname)?,
            capabilities: list(u, 2, text)?,
        }),
        1 => Frame::Challenge { nonce: u.arbitrary()? },
        2 => Frame::Proof {
            signature: u.arbitrary()?,
        },
        3 => Frame::Welcome(Welcome {
            session_id: u.arbitrary()?,
            granted: list(u, 4, hostname)?,
            heartbeat_ms: u.arbitrary()?,
            peers: list(u, 2, hostname)?,
        }),
        4 => Frame::Reject {
            code: reject_code(u)?,
            message: text(u)?,
        },
        5 => Frame::Ping {
            seq: u.arbitrary()?,
            rtt_micros: u.arbitrary()?,
            routes_version: u.arbitrary()?,
            routes_checksum: u.arbitrary()?,
        },
        6 => Frame::Pong { seq: u.arbitrary()? },
        7 => Frame::GoAway { reason: text(u)? },
        8 => Frame::Routes(RoutesUpdate {
            version: u.arbitrary()?,
            base_version: u.arbitrary()?,
            checksum: u.arbitrary()?,
            kind: update_kind(u)?,
            upserts: list(u, 3, route_spec)?,
            removes: list(u, 3, |u| u.int_in_range(0..=7))?,
        }),
        9 => Frame::RoutesAck {
            version: u.arbitrary()?,
            in_sync: u.arbitrary()?,
            refused: list(u, 2, |u| {
                Ok(Refused {
                    route_id: u.arbitrary()?,
                    reason: text(u)?,
                })
            })?,
        },
        10 => Frame::Health {
            unhealthy: list(u, 3, |u| u.arbitrary())?,
        },
        _ => Frame::StreamOpen {
            kind: StreamKind::Http,
            route_id: u.arbitrary()?,
        },
    })
}

/// A reject code as one would arrive: decoded from its number.
pub fn reject_code(u: &mut Unstructured) -> Result<RejectCode> {
    let code: u16 = if u.ratio(3, 4)? {
        u.int_in_range(0..=11)?
    } else {
        u.arbitrary()?
    };
    // The wire form is the only way to name a code from outside.
    let frame = Frame::Reject {
        code: RejectCode::Other(code),
        message: String::new(),
    };
    let bytes = frame.to_bytes().map_err(|_| arbitrary::Error::IncorrectFormat)?;
    match Frame::decode(&bytes) {
        Ok(Some((Frame::Reject { code, .. }, _))) => Ok(code),
        _ => Err(arbitrary::Error::IncorrectFormat),
    }
}

pub fn update_kind(u: &mut Unstructured) -> Result<UpdateKind> {
    Ok(if u.ratio(1, 2)? {
        UpdateKind::Delta
    } else {
        UpdateKind::Full {
            first: u.arbitrary()?,
            last: u.arbitrary()?,
        }
    })
}
