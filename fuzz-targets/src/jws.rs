//! JWS (JWT) parsing and verification, with tokens built from header and
//! claims pieces and signed for real, as well as garbage.

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gateway::access::jws::{Claims, JwsError, LEEWAY_SECS, MAX_TOKEN_LEN, MAX_TOKEN_TTL_SECS, mint, parse};
use gateway::access::keys::{UserPublicKey, UserSigningKey};
use serde_json::{Map, Value, json};

use crate::input;

/// A fixed P-256 PKCS#8 key (test only), so a case means the same on every
/// run; ECDSA signatures still differ, but whether they verify does not.
const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQge1Yj6berZSpwG+AI
D4j8bP9uNtgIDTBievzsWQURF/ShRANCAAQ1y8VuhrL1jRCyZeDTCJcSH4ABPuK3
g4tAQ0OWCnTPy4VI7BNeCjKpAOz2Da3mGbn/xGFDLR8N48QJKFP1Gflp
-----END PRIVATE KEY-----
";

/// Users' signing keys: Ed25519 and P-256.
fn signing_keys() -> &'static [UserSigningKey; 2] {
    static KEYS: OnceLock<[UserSigningKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
        ];
        der.extend_from_slice(&[7; 32]);
        let ed = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der)
        );
        [
            UserSigningKey::from_pem(&ed).expect("a fixed Ed25519 key"),
            UserSigningKey::from_pem(P256_PEM).expect("a fixed P-256 key"),
        ]
    })
}

/// The public halves of [`signing_keys`].
pub(crate) fn user_public_keys() -> [UserPublicKey; 2] {
    signing_keys().each_ref().map(UserSigningKey::public_key)
}

/// A token, then a check of its claims.
///
/// Invariants: a token verifies only if the key that verifies it signed
/// it, untouched; a well-formed token signed by the verifying key always
/// verifies, giving the claims that were signed; whatever `mint` makes
/// verifies; `Claims::check` passes only for the right audience within the
/// validity window.
pub fn jws(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

/// A piece of JSON, or (sometimes) raw bytes in its place.
enum Piece {
    Json(Value),
    Raw(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Piece::Json(v) => v.to_string().into_bytes(),
            Piece::Raw(b) => b.clone(),
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    if u.ratio(1, 8)? {
        // Garbage: whatever parses must look like a token.
        let token: String = u.arbitrary()?;
        if let Ok(t) = parse(&token) {
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert_eq!(token.matches('.').count(), 2);
            assert!(matches!(t.header.alg.as_str(), "EdDSA" | "ES256"));
            assert!(!t.header.kid.is_empty() && t.header.kid.len() <= 256);
            for k in signing_keys() {
                let _ = t.verify(&k.public_key());
            }
        }
        return Ok(());
    }
    let signer_index = usize::from(u.arbitrary::<bool>()?);
    let signer = &signing_keys()[signer_index];
    let verifier_index = if u.ratio(3, 4)? { signer_index } else { 1 - signer_index };
    let verifier = signing_keys()[verifier_index].public_key();
    let (header, header_ok) = header(u, &signer.public_key())?;
    let (claims, claims_ok) = claims(u)?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.bytes()),
        URL_SAFE_NO_PAD.encode(claims.bytes())
    );
    let genuine = u.ratio(7, 8)?;
    let signature = if genuine {
        signer.sign(signing_input.as_bytes()).expect("a fixed key signs")
    } else {
        let n = if u.ratio(3, 4)? { 64 } else { u.int_in_range(0..=80)? };
        u.bytes(n)?.to_vec()
    };
    let mut token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&signature));
    let mut tampered = false;
    if u.ratio(1, 6)? && !token.is_empty() {
        let mut bytes = token.clone().into_bytes();
        let i = u.choose_index(bytes.len())?;
        bytes[i] = *u.choose(b"AQgw_-.=+/ \x00")?;
        if let Ok(t) = String::from_utf8(bytes) {
            tampered = t != token;
            token = t;
        }
    }
    let verdict = parse(&token).and_then(|t| t.verify(&verifier));
    if let Ok(got) = &verdict {
        assert!(genuine && !tampered, "a token verified without its genuine signature");
        assert_eq!(verifier_index, signer_index, "a token verified with another key");
        if let (true, Piece::Json(c)) = (claims_ok, &claims) {
            assert_eq!(&serde_json::to_value(got).expect("claims serialise"), &strip_unknown(c));
        }
    }
    let well_formed = genuine && !tampered && verifier_index == signer_index && header_ok && claims_ok;
    if well_formed && token.len() <= MAX_TOKEN_LEN {
        assert!(verdict.is_ok(), "a well-formed token was refused: {verdict:?}");
    }
    if let Ok(c) = &verdict {
        check_window(c, u)?;
    }
    // What `routehub token` mints verifies at the gateway.
    if let Some(c) = verdict.ok().or_else(|| serde_json::from_slice(&claims.bytes()).ok()) {
        let kid = if u.ratio(3, 4)? {
            signer.public_key().thumbprint()
        } else {
            input::text(u)?
        };
        if let Ok(minted) = mint(signer, &kid, &c) {
            let back = parse(&minted).and_then(|t| {
                assert_eq!(t.header.kid, kid);
                t.verify(&signer.public_key())
            });
            assert_eq!(back, Ok(c), "a minted token does not verify");
        }
    }
    Ok(())
}

/// A header and whether it is one the gateway must accept from `key`.
fn header(u: &mut Unstructured, key: &UserPublicKey) -> Result<(Piece, bool)> {
    if u.ratio(1, 10)? {
        return Ok((Piece::Raw(u.arbitrary()?), false));
    }
    let alg = if u.ratio(3, 4)? {
        key.alg().to_owned()
    } else {
        (*u.choose(&["EdDSA", "ES256", "none", "HS256", "RS256", "eddsa", ""])?).to_owned()
    };
    let kid = if u.ratio(3, 4)? {
        key.thumbprint()
    } else {
        input::text(u)?
    };
    let mut ok = alg == key.alg() && !kid.is_empty() && kid.len() <= 256;
    let mut h = Map::new();
    h.insert("alg".into(), json!(alg));
    h.insert("kid".into(), json!(kid));
    if u.ratio(1, 3)? {
        let typ = *u.choose(&["JWT", "jwt", "JOSE", "at+jwt", ""])?;
        ok &= typ.eq_ignore_ascii_case("JWT");
        h.insert("typ".into(), json!(typ));
    }
    if u.ratio(1, 8)? {
        let member = *u.choose(&["crit", "jwk", "x5u", "b64", "zip"])?;
        h.insert(member.into(), json!(["exp"]));
        ok = false;
    }
    Ok((Piece::Json(Value::Object(h)), ok))
}

/// Claims and whether they are ones the gateway must accept.
fn claims(u: &mut Unstructured) -> Result<(Piece, bool)> {
    if u.ratio(1, 10)? {
        return Ok((Piece::Raw(u.arbitrary()?), false));
    }
    let mut ok = true;
    let mut c = Map::new();
    if u.ratio(1, 2)? {
        let sub = if u.ratio(1, 16)? {
            "s".repeat(u.int_in_range(250..=260)?)
        } else {
            input::text(u)?
        };
        ok &= sub.len() <= 256;
        c.insert("sub".into(), json!(sub));
    }
    match u.int_in_range(0..=9)? {
        0 => ok = false,
        1 => {
            c.insert("aud".into(), json!(["app.test"]));
            ok = false;
        }
        _ => {
            c.insert("aud".into(), json!(input::hostname(u)?));
        }
    }
    match u.int_in_range(0..=9)? {
        0 => ok = false,
        1 => {
            c.insert("exp".into(), json!(-1));
            ok = false;
        }
        2 => {
            c.insert("exp".into(), json!(1.5));
            ok = false;
        }
        _ => {
            c.insert("exp".into(), json!(u.arbitrary::<u64>()?));
        }
    }
    for name in ["nbf", "iat"] {
        if u.ratio(1, 3)? {
            c.insert(name.into(), json!(u.arbitrary::<u64>()?));
        }
    }
    if u.ratio(1, 8)? {
        // Claims Routehub does not read are ignored.
        c.insert("scope".into(), json!(input::text(u)?));
    }
    Ok((Piece::Json(Value::Object(c)), ok))
}

/// The claims as `Claims` keeps them: members it does not read dropped.
fn strip_unknown(v: &Value) -> Value {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.retain(|k, _| matches!(k.as_str(), "sub" | "aud" | "exp" | "nbf" | "iat"));
    Value::Object(m)
}

fn check_window(c: &Claims, u: &mut Unstructured) -> Result<()> {
    let host = if u.ratio(3, 4)? {
        c.aud.clone()
    } else {
        input::hostname(u)?
    };
    let now: u64 = match u.int_in_range(0..=3)? {
        0 => c
            .exp
            .saturating_add(u.int_in_range(0..=2 * LEEWAY_SECS)?)
            .saturating_sub(LEEWAY_SECS),
        1 => c
            .nbf
            .unwrap_or(0)
            .saturating_add(u.int_in_range(0..=2 * LEEWAY_SECS)?)
            .saturating_sub(LEEWAY_SECS),
        _ => u.arbitrary()?,
    };
    match c.check(&host, now) {
        Ok(()) => {
            assert_eq!(host, c.aud);
            assert!(now < c.exp.saturating_add(LEEWAY_SECS), "an expired token passed");
            assert!(
                c.exp <= now.saturating_add(MAX_TOKEN_TTL_SECS + LEEWAY_SECS),
                "a token living past the cap passed"
            );
            assert!(c.nbf.is_none_or(|nbf| now.saturating_add(LEEWAY_SECS) >= nbf));
        }
        Err(JwsError::WrongAudience) => assert_ne!(host, c.aud),
        Err(JwsError::Expired) => assert!(now >= c.exp.saturating_add(LEEWAY_SECS)),
        Err(JwsError::NotYetValid) => assert!(c.nbf.is_some()),
        Err(JwsError::TooLongLived) => assert!(c.exp > now.saturating_add(MAX_TOKEN_TTL_SECS + LEEWAY_SECS)),
        Err(e) => panic!("check gave {e}"),
    }
    Ok(())
}
