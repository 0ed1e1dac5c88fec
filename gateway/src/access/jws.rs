//! Compact JWS (JWT) parsing, verification and minting, strict by design:
//! bounded size, exactly three canonical base64url parts, only `EdDSA` and
//! `ES256` (never `none`, never HMAC), the algorithm must match the stored
//! key's type, and a fixed set of header members.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::keys::{UserPublicKey, UserSigningKey};

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest lifetime a token may claim (`exp` from now). A token cannot be
/// revoked short of removing its key, so a leaked one must not stay good
/// for long; the gateway refuses longer ones whoever minted them.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;
/// Longest `kid` or `sub`.
const MAX_ID_LEN: usize = 256;

/// Why a token was refused: a short reason safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("token is over {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime is over {} days", MAX_TOKEN_TTL_SECS / 86_400)]
    TooLongLived,
    #[error("token audience is not this host")]
    WrongAudience,
    #[error("token subject does not match its key's user")]
    WrongSubject,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub alg: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// Registered claims Routehub reads; others are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Must be one string: the hostname the token opens.
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn part(s: &str) -> Result<Vec<u8>, JwsError> {
    // The decoder refuses padding and non-zero trailing bits, so each
    // token has exactly one encoding.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(JwsError::Malformed("not base64url"));
    }
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwsError::Malformed("not canonical base64url"))
}

/// Splits and decodes a compact JWS. Only `EdDSA` and `ES256` get past here.
pub fn parse(token: &str) -> Result<Unverified<'_>, JwsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwsError::Malformed("expected three dot-separated parts"));
    };
    let header: Header =
        serde_json::from_slice(&part(h)?).map_err(|_| JwsError::Malformed("header is not the expected JSON"))?;
    if header.alg != "EdDSA" && header.alg != "ES256" {
        return Err(JwsError::Algorithm(header.alg.chars().take(16).collect()));
    }
    if header.kid.is_empty() || header.kid.len() > MAX_ID_LEN {
        return Err(JwsError::Malformed("bad kid"));
    }
    if header.typ.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("JWT")) {
        return Err(JwsError::Malformed("typ is not JWT"));
    }
    let payload = part(p)?;
    let signature = part(s)?;
    if signature.len() != 64 {
        return Err(JwsError::BadSignature);
    }
    Ok(Unverified {
        header,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

impl Unverified<'_> {
    /// Checks the signature with `key` (its type fixes the algorithm),
    /// then decodes the claims.
    pub fn verify(&self, key: &UserPublicKey) -> Result<Claims, JwsError> {
        if self.header.alg != key.alg() {
            return Err(JwsError::Algorithm(self.header.alg.clone()));
        }
        if !key.verify(&self.header.alg, self.signing_input.as_bytes(), &self.signature) {
            return Err(JwsError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&self.payload)
            .map_err(|_| JwsError::Malformed("claims are not the expected JSON"))?;
        if claims.sub.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
            return Err(JwsError::Malformed("sub is too long"));
        }
        Ok(claims)
    }
}

impl Claims {
    /// `aud` is `host`; `now` (Unix seconds) is within `nbf`..`exp`,
    /// give or take [`LEEWAY_SECS`]; `exp` is at most
    /// [`MAX_TOKEN_TTL_SECS`] away.
    pub fn check(&self, host: &str, now: u64) -> Result<(), JwsError> {
        if self.aud != host {
            return Err(JwsError::WrongAudience);
        }
        if now >= self.exp.saturating_add(LEEWAY_SECS) {
            return Err(JwsError::Expired);
        }
        if self.exp > now.saturating_add(MAX_TOKEN_TTL_SECS + LEEWAY_SECS) {
            return Err(JwsError::TooLongLived);
        }
        if self.nbf.is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf) {
            return Err(JwsError::NotYetValid);
        }
        Ok(())
    }
}

/// Mints a token signed with `key` (EdDSA or ES256, by key type). Refuses
/// to mint one that [`parse`] and [`Unverified::verify`] would refuse.
pub fn mint(key: &UserSigningKey, kid: &str, claims: &Claims) -> Result<String, String> {
    if kid.is_empty() || kid.len() > MAX_ID_LEN {
        return Err(format!("a key id is 1 to {MAX_ID_LEN} bytes"));
    }
    if claims.sub.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
        return Err(format!("a subject is at most {MAX_ID_LEN} bytes"));
    }
    let header = Header {
        alg: key.public_key().alg().into(),
        kid: kid.into(),
        typ: Some("JWT".into()),
    };
    let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    let h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let c = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let input = format!("{}.{}", enc(&h), enc(&c));
    let sig = key.sign(input.as_bytes())?;
    let token = format!("{input}.{}", enc(&sig));
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token would be over {MAX_TOKEN_LEN} bytes"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::keys::KeyKind;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: Some("alice".into()),
            aud: "app.test".into(),
            exp,
            nbf: None,
            iat: None,
        }
    }

    #[test]
    fn minted_tokens_verify_with_their_key_only() {
        for kind in [KeyKind::Ed25519, KeyKind::P256] {
            let sk = UserSigningKey::generate(kind).unwrap();
            let pk = sk.public_key();
            let token = mint(&sk, "k1", &claims(1000)).unwrap();
            let u = parse(&token).unwrap();
            assert_eq!(u.header.kid, "k1");
            let c = u.verify(&pk).unwrap();
            assert_eq!(c.check("app.test", 999), Ok(()));
            assert_eq!(c.check("app.test", 1000 + LEEWAY_SECS), Err(JwsError::Expired));
            assert_eq!(c.check("other.test", 10), Err(JwsError::WrongAudience));
            let other = UserSigningKey::generate(kind).unwrap().public_key();
            assert_eq!(u.verify(&other).unwrap_err(), JwsError::BadSignature);
        }
        let ed = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
        let p256 = UserSigningKey::generate(KeyKind::P256).unwrap().public_key();
        let token = mint(&ed, "k", &claims(1)).unwrap();
        assert!(matches!(
            parse(&token).unwrap().verify(&p256),
            Err(JwsError::Algorithm(_))
        ));
    }

    /// A token the gateway would refuse is not minted: `routehub token`
    /// says why instead of printing one that never works.
    #[test]
    fn mint_refuses_what_verification_refuses() {
        let sk = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
        let long = "s".repeat(MAX_ID_LEN + 1);
        assert!(mint(&sk, "", &claims(1)).is_err(), "empty kid");
        assert!(mint(&sk, &long, &claims(1)).is_err(), "long kid");
        let mut c = claims(1);
        c.sub = Some(long);
        assert!(mint(&sk, "k", &c).is_err(), "long sub");
        c.sub = None;
        c.aud = "a".repeat(MAX_TOKEN_LEN);
        assert!(mint(&sk, "k", &c).is_err(), "token over the size limit");
        let ok = mint(&sk, &"k".repeat(MAX_ID_LEN), &claims(1)).unwrap();
        assert!(parse(&ok).unwrap().verify(&sk.public_key()).is_ok());
    }

    #[test]
    fn tokens_living_longer_than_the_cap_are_refused() {
        let now = 1_000_000;
        assert_eq!(claims(now + MAX_TOKEN_TTL_SECS).check("app.test", now), Ok(()));
        assert_eq!(
            claims(now + 365 * 86_400).check("app.test", now),
            Err(JwsError::TooLongLived)
        );
        assert_eq!(claims(u64::MAX).check("app.test", now), Err(JwsError::TooLongLived));
    }

    #[test]
    fn nbf_has_leeway() {
        let mut c = claims(10_000);
        c.nbf = Some(1000);
        assert_eq!(c.check("app.test", 1000 - LEEWAY_SECS), Ok(()));
        assert_eq!(c.check("app.test", 1000 - LEEWAY_SECS - 1), Err(JwsError::NotYetValid));
    }

    #[test]
    fn hostile_tokens_are_refused_without_panicking() {
        let sk = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
        let good = mint(&sk, "k", &claims(u64::MAX)).unwrap();
        let e = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let body = e(r#"{"aud":"app.test","exp":99999999999}"#);
        let sig = URL_SAFE_NO_PAD.encode([0u8; 64]);
        let mut cases = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{good}."),
            format!("{good}="),
            format!("{}.{body}.{sig}", e(r#"{"alg":"none","kid":"k"}"#)),
            format!("{}.{body}.", e(r#"{"alg":"none","kid":"k"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"HS256","kid":"k"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"RS256","kid":"k"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":""}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":"k","crit":["exp"]}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":"k","jwk":{}}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":"k","alg":"EdDSA"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":"k","typ":"JOSE+JSON"}"#)),
            format!("{}.{body}.{sig}", e("[]")),
            format!("{}.{body}.{sig}", e("\u{0}")),
            format!("{}.{body}.AAAA", e(r#"{"alg":"EdDSA","kid":"k"}"#)),
            format!("{}.{body}.{sig}==", e(r#"{"alg":"EdDSA","kid":"k"}"#)),
            format!("{}.{body}.{sig}", e(r#"{"alg":"EdDSA","kid":"k"}"#).replace('e', "+")),
            "é.é.é".into(),
            "a".repeat(MAX_TOKEN_LEN + 1),
            format!(
                "{}.{}.{sig}",
                e(r#"{"alg":"EdDSA","kid":"k"}"#),
                "A".repeat(MAX_TOKEN_LEN)
            ),
        ];
        // Every single-byte change of a good token.
        for i in 0..good.len() {
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            cases.push(String::from_utf8(b).unwrap());
        }
        let pk = sk.public_key();
        for t in &cases {
            let verdict = parse(t).and_then(|u| u.verify(&pk));
            assert!(verdict.is_err(), "accepted {t:?}");
        }
        // Claims that are not what we expect, correctly signed.
        for claims_json in [
            r#"{"exp":99999999999}"#,
            r#"{"aud":["app.test"],"exp":99999999999}"#,
            r#"{"aud":"app.test","exp":-1}"#,
            r#"{"aud":"app.test","exp":1.5}"#,
            r#"{"aud":"app.test","exp":"99999999999"}"#,
            "null",
        ] {
            let input = format!("{}.{}", e(r#"{"alg":"EdDSA","kid":"k"}"#), e(claims_json));
            let sig = URL_SAFE_NO_PAD.encode(sk.sign(input.as_bytes()).unwrap());
            let t = format!("{input}.{sig}");
            assert!(parse(&t).unwrap().verify(&pk).is_err(), "{claims_json}");
        }
    }
}
