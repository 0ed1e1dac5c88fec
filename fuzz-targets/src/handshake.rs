//! The handshake state machines, fed arbitrary frame sequences.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tunnel_proto::handshake::{ClientEvent, ClientHandshake, Exporter, ServerEvent, ServerHandshake, proof_message};
use tunnel_proto::limits::{HANDSHAKE_TIMEOUT, MAX_HOSTNAMES, PROTOCOL_VERSION};
use tunnel_proto::{Error, Frame, HostPattern, PublicKey, RelayKey};

use crate::input;

/// Two fixed relay keys, so a case means the same thing on every run.
pub(crate) fn keys() -> &'static [RelayKey; 2] {
    static KEYS: OnceLock<[RelayKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [relay_key(1), relay_key(2)])
}

/// The relay key whose Ed25519 seed is 32 times `seed`, through the PKCS#8
/// PEM a relay's key file holds.
fn relay_key(seed: u8) -> RelayKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    der.extend_from_slice(&[seed; 32]);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    RelayKey::from_pem(&pem).expect("a fixed PKCS#8 Ed25519 key")
}

const EXPORTER: Exporter = [0xe0; 32];
const OTHER_EXPORTER: Exporter = [0xe1; 32];

/// A frame through the wire: encoded and decoded. `None` if the decoder
/// refuses what the encoder wrote (a field over its limit).
fn wire(frame: &Frame) -> Option<Frame> {
    let bytes = frame.to_bytes().ok()?;
    let (back, used) = Frame::decode(&bytes).ok()??;
    assert_eq!(used, bytes.len());
    assert_eq!(&back, frame, "{} changed on the wire", frame.name());
    Some(back)
}

/// A relay and a gateway talking through the wire, then each side alone
/// fed an arbitrary sequence of frames and clock jumps.
///
/// Invariants: a gateway verifies a relay exactly when the relay holds the
/// key it named, signed this connection's exporter and asked for valid
/// hostnames, and then grants them normalised, sorted and unique; each side
/// answers only the frame its state expects, and once finished (done or
/// failed) answers nothing; nothing passes the handshake deadline; the
/// relay's proof verifies, and it reports the gateway's `Welcome` or
/// `Reject` as sent.
pub fn handshake(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = pair(&mut u)
        .and_then(|()| server_alone(&mut u))
        .and_then(|()| client_alone(&mut u));
}

fn pair(u: &mut Unstructured) -> Result<()> {
    let key = &keys()[0];
    let hostnames = input::list(u, 4, input::hostname)?;
    let capabilities = input::list(u, 2, input::text)?;
    let same_connection: bool = u.arbitrary()?;
    let nonce: [u8; 32] = u.arbitrary()?;
    let now = Instant::now();
    let (mut client, hello) = ClientHandshake::start(key, u.arbitrary()?, hostnames.clone(), capabilities, EXPORTER);
    let gateway_exporter = if same_connection { EXPORTER } else { OTHER_EXPORTER };
    let mut server = ServerHandshake::new(gateway_exporter, nonce, now);
    let Some(hello) = wire(&hello) else {
        return Ok(());
    };
    let parsed: std::result::Result<Vec<HostPattern>, _> = hostnames.iter().map(|h| HostPattern::parse(h)).collect();
    let challenge = match server.handle(hello, now) {
        Ok(ServerEvent::Send(challenge)) => challenge,
        Ok(ServerEvent::Verified(_)) => panic!("verified on a Hello alone"),
        Err(e) => {
            assert!(parsed.is_err(), "a Hello with valid hostnames was refused: {e}");
            let _ = e.reject_code();
            return Ok(());
        }
    };
    let mut parsed = parsed.expect("the gateway accepted invalid hostnames");
    assert_eq!(challenge, Frame::Challenge { nonce });
    let challenge = wire(&challenge).expect("a Challenge crosses the wire");
    let Ok(ClientEvent::Send(proof)) = client.handle(key, challenge) else {
        panic!("the relay did not answer a Challenge with a Proof");
    };
    let proof = wire(&proof).expect("a Proof crosses the wire");
    let verified = match server.handle(proof, now) {
        Ok(ServerEvent::Verified(v)) => v,
        Err(Error::BadProof) => {
            assert!(!same_connection, "a proof made on this connection was refused");
            return Ok(());
        }
        other => panic!("a Proof got {other:?}"),
    };
    assert!(same_connection, "a proof made for another connection verified");
    assert_eq!(verified.key, key.public_key());
    parsed.sort();
    parsed.dedup();
    assert_eq!(verified.hostnames, parsed);
    for h in &verified.hostnames {
        assert_eq!(HostPattern::parse(&h.to_string()).ok().as_ref(), Some(h));
    }
    let welcome = ServerHandshake::welcome(u.arbitrary()?, &verified.hostnames, Duration::from_secs(1), vec![]);
    let welcome = wire(&welcome).expect("a Welcome with granted hostnames crosses the wire");
    match client.handle(key, welcome.clone()) {
        Ok(ClientEvent::Established(w)) => assert_eq!(Frame::Welcome(w), welcome),
        other => panic!("the relay did not take its Welcome: {other:?}"),
    }
    Ok(())
}

/// What the model of the gateway's side expects next.
enum ServerModel {
    AwaitHello,
    /// The key the Hello named, if it is a valid key.
    AwaitProof(PublicKey),
    Done,
}

fn server_alone(u: &mut Unstructured) -> Result<()> {
    let start = Instant::now();
    let nonce: [u8; 32] = u.arbitrary()?;
    let mut server = ServerHandshake::new(EXPORTER, nonce, start);
    assert_eq!(server.deadline(), start + HANDSHAKE_TIMEOUT);
    let mut model = ServerModel::AwaitHello;
    let mut now = start;
    for _ in 0..8 {
        if u.is_empty() {
            break;
        }
        // A frame with what it should get, as far as the model can tell.
        let (frame, genuine_proof_by) = match u.int_in_range(0..=5)? {
            0 => {
                now += Duration::from_millis(u.int_in_range(0..=12_000)?);
                continue;
            }
            1 | 2 => {
                let key = if u.ratio(3, 4)? {
                    keys()[usize::from(u.arbitrary::<bool>()?)].public_key().to_bytes()
                } else {
                    u.arbitrary()?
                };
                let hello = Frame::Hello(tunnel_proto::Hello {
                    protocol_version: if u.ratio(7, 8)? {
                        PROTOCOL_VERSION
                    } else {
                        u.arbitrary()?
                    },
                    public_key: key,
                    instance: u.arbitrary()?,
                    hostnames: input::list(u, 4, input::hostname)?,
                    capabilities: input::list(u, 2, input::text)?,
                });
                (hello, None)
            }
            3 | 4 => {
                // A proof signed by one of the keys over this connection's
                // message, or over a near miss.
                let signer = &keys()[usize::from(u.arbitrary::<bool>()?)];
                let (signed_nonce, exporter) = match u.int_in_range(0..=3)? {
                    0 => (nonce, OTHER_EXPORTER),
                    1 => (u.arbitrary()?, EXPORTER),
                    _ => (nonce, EXPORTER),
                };
                let genuine = signed_nonce == nonce && exporter == EXPORTER;
                let signature = signer.sign(&proof_message(&signed_nonce, &exporter));
                let mut signature_bytes = signature;
                let tampered = u.ratio(1, 8)?;
                if tampered {
                    let i = u.choose_index(64)?;
                    signature_bytes[i] ^= u.int_in_range(1..=255)?;
                }
                let by = (genuine && !tampered).then(|| signer.public_key());
                (
                    Frame::Proof {
                        signature: signature_bytes,
                    },
                    by,
                )
            }
            _ => (input::frame(u)?, None),
        };
        let Some(frame) = wire(&frame) else { continue };
        let is_hello = matches!(frame, Frame::Hello(_));
        let hello_ok = match &frame {
            Frame::Hello(h) => {
                h.protocol_version == PROTOCOL_VERSION
                    && h.hostnames.len() <= MAX_HOSTNAMES
                    && PublicKey::from_bytes(&h.public_key).is_ok()
                    && h.hostnames.iter().all(|n| HostPattern::parse(n).is_ok())
            }
            _ => false,
        };
        let hello_key = match &frame {
            Frame::Hello(h) => PublicKey::from_bytes(&h.public_key).ok(),
            _ => None,
        };
        let proof_by = genuine_proof_by;
        let result = server.handle(frame.clone(), now);
        if let Err(e) = &result {
            let _ = e.reject_code();
        }
        if now >= server.deadline() {
            assert!(
                matches!(result, Err(Error::HandshakeTimeout(_))),
                "a frame past the deadline got {result:?}"
            );
            model = ServerModel::Done;
            continue;
        }
        model = match (model, result) {
            (ServerModel::AwaitHello, Ok(ServerEvent::Send(challenge))) => {
                assert!(is_hello && hello_ok, "{} got a Challenge", frame.name());
                assert_eq!(challenge, Frame::Challenge { nonce });
                ServerModel::AwaitProof(hello_key.expect("a valid Hello names a valid key"))
            }
            (ServerModel::AwaitHello, Err(_)) => {
                assert!(!(is_hello && hello_ok), "a valid Hello was refused");
                ServerModel::Done
            }
            (ServerModel::AwaitProof(key), Ok(ServerEvent::Verified(v))) => {
                assert_eq!(
                    proof_by,
                    Some(key),
                    "verified without a genuine proof by the Hello's key"
                );
                assert_eq!(v.key, key);
                let mut sorted = v.hostnames.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted, v.hostnames, "granted hostnames are sorted and unique");
                ServerModel::Done
            }
            (ServerModel::AwaitProof(key), Err(e)) => {
                assert_ne!(proof_by, Some(key), "a genuine proof was refused: {e}");
                ServerModel::Done
            }
            (ServerModel::Done, Err(_)) => ServerModel::Done,
            (_, other) => panic!("{} got {other:?} out of turn", frame.name()),
        };
    }
    Ok(())
}

/// What the model of the relay's side expects next.
enum ClientModel {
    AwaitChallenge,
    AwaitWelcome,
    Done,
}

fn client_alone(u: &mut Unstructured) -> Result<()> {
    let key = &keys()[0];
    let (mut client, hello) = ClientHandshake::start(
        key,
        u.arbitrary()?,
        input::list(u, 2, input::hostname)?,
        vec![],
        EXPORTER,
    );
    assert!(matches!(&hello, Frame::Hello(h) if h.public_key == key.public_key().to_bytes()));
    let mut model = ClientModel::AwaitChallenge;
    for _ in 0..6 {
        if u.is_empty() {
            break;
        }
        let frame = if u.ratio(1, 3)? {
            Frame::Challenge { nonce: u.arbitrary()? }
        } else {
            input::frame(u)?
        };
        let Some(frame) = wire(&frame) else { continue };
        let result = client.handle(key, frame.clone());
        model = match (model, &frame, result) {
            (_, Frame::Reject { code, message }, Err(Error::Rejected { code: c, message: m })) => {
                assert_eq!((code, message), (&c, &m), "the relay reports the Reject as sent");
                ClientModel::Done
            }
            (_, Frame::Reject { .. }, other) => panic!("a Reject got {other:?}"),
            (ClientModel::AwaitChallenge, Frame::Challenge { nonce }, Ok(ClientEvent::Send(proof))) => {
                let Frame::Proof { signature } = proof else {
                    panic!("a Challenge was answered with {}", proof.name());
                };
                key.public_key()
                    .verify(&proof_message(nonce, &EXPORTER), &signature)
                    .expect("the relay's proof verifies");
                ClientModel::AwaitWelcome
            }
            (ClientModel::AwaitWelcome, Frame::Welcome(w), Ok(ClientEvent::Established(got))) => {
                assert_eq!(&got, w);
                ClientModel::Done
            }
            (ClientModel::AwaitChallenge, Frame::Challenge { .. }, Err(e)) => panic!("a Challenge was refused: {e}"),
            (ClientModel::AwaitWelcome, Frame::Welcome(_), Err(e)) => panic!("a Welcome was refused: {e}"),
            (_, _, Err(_)) => ClientModel::Done,
            (_, _, Ok(event)) => panic!("{} got {event:?} out of turn", frame.name()),
        };
    }
    Ok(())
}
