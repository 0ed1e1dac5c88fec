//! End-user keys: Ed25519 and ECDSA P-256 public keys as JWK or PEM, their
//! RFC 7638 thumbprints (the default key id), and the private half a user
//! keeps to mint tokens with `routehub token`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Longest key text accepted (a JWK or PEM is a few hundred bytes).
pub const MAX_KEY_TEXT: usize = 4096;

/// A user's public key. Each type verifies exactly one JWS algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum UserPublicKey {
    Ed25519([u8; 32]),
    /// Uncompressed SEC1 point (`04 || x || y`).
    P256([u8; 65]),
}

impl std::fmt::Debug for UserPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.alg(), self.thumbprint())
    }
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64url(s: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("{what} is not base64url without padding"))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl UserPublicKey {
    /// Parses a public JWK (JSON) or a PEM `PUBLIC KEY`. Private keys are
    /// refused, so one is never stored by mistake.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() > MAX_KEY_TEXT {
            return Err("key text is too long".into());
        }
        if text.starts_with('{') {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("JWK is not valid JSON: {e}"))?;
            return Self::from_jwk(&v);
        }
        if text.contains("PRIVATE KEY") {
            return Err("this is a private key; give the public key (routehub keygen --user prints it)".into());
        }
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes())
            .map_err(|_| "expected a public JWK or a PEM PUBLIC KEY".to_owned())?;
        Self::from_spki(spki.as_ref())
    }

    /// From DER SubjectPublicKeyInfo (Ed25519 or P-256, nothing else).
    pub fn from_spki(der: &[u8]) -> Result<Self, String> {
        if let Some(k) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            return k
                .try_into()
                .map(UserPublicKey::Ed25519)
                .map_err(|_| "bad Ed25519 key length".into());
        }
        if let Some(k) = der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            return Self::p256(k);
        }
        Err("only Ed25519 and ECDSA P-256 public keys are supported".into())
    }

    fn p256(point: &[u8]) -> Result<Self, String> {
        let point: [u8; 65] = point.try_into().map_err(|_| "bad P-256 point length".to_owned())?;
        if point[0] != 4 {
            return Err("P-256 point must be uncompressed".into());
        }
        Ok(UserPublicKey::P256(point))
    }

    /// From a JWK object: `OKP`/`Ed25519` or `EC`/`P-256`.
    pub fn from_jwk(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("JWK must be an object")?;
        if obj.contains_key("d") {
            return Err("this JWK holds a private key; give the public key".into());
        }
        let field = |name: &str| obj.get(name).and_then(Value::as_str);
        let key = match (field("kty"), field("crv")) {
            (Some("OKP"), Some("Ed25519")) => {
                let x = unb64url(field("x").ok_or("JWK lacks x")?, "x")?;
                UserPublicKey::Ed25519(x.try_into().map_err(|_| "Ed25519 x must be 32 bytes".to_owned())?)
            }
            (Some("EC"), Some("P-256")) => {
                let x = unb64url(field("x").ok_or("JWK lacks x")?, "x")?;
                let y = unb64url(field("y").ok_or("JWK lacks y")?, "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 x and y must be 32 bytes each".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Self::p256(&point)?
            }
            _ => return Err("only OKP/Ed25519 and EC/P-256 JWKs are supported".into()),
        };
        if let Some(alg) = obj.get("alg")
            && alg.as_str() != Some(key.alg())
        {
            return Err(format!("JWK alg {alg} does not match its key type ({})", key.alg()));
        }
        Ok(key)
    }

    /// The one JWS algorithm this key verifies.
    pub fn alg(&self) -> &'static str {
        match self {
            UserPublicKey::Ed25519(_) => "EdDSA",
            UserPublicKey::P256(_) => "ES256",
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the default key id.
    pub fn thumbprint(&self) -> String {
        // Members in lexicographic order, no whitespace, as the RFC requires.
        let canonical = match self {
            UserPublicKey::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url(x)),
            UserPublicKey::P256(p) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64url(&p[1..33]),
                b64url(&p[33..])
            ),
        };
        b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// The public JWK, with `kid`, `alg` and `use`.
    pub fn to_jwk(&self, kid: &str) -> Value {
        match self {
            UserPublicKey::Ed25519(x) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64url(x), "kid": kid, "alg": "EdDSA", "use": "sig",
            }),
            UserPublicKey::P256(p) => json!({
                "kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..]),
                "kid": kid, "alg": "ES256", "use": "sig",
            }),
        }
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        let mut der = Vec::new();
        match self {
            UserPublicKey::Ed25519(x) => {
                der.extend_from_slice(&ED25519_SPKI_PREFIX);
                der.extend_from_slice(x);
            }
            UserPublicKey::P256(p) => {
                der.extend_from_slice(&P256_SPKI_PREFIX);
                der.extend_from_slice(p);
            }
        }
        pem("PUBLIC KEY", &der)
    }

    /// Checks a JWS signature made with `alg` over `message`. An `alg`
    /// other than this key's own never verifies.
    pub fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (UserPublicKey::Ed25519(k), "EdDSA") => signature::UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(message, sig)
                .is_ok(),
            (UserPublicKey::P256(k), "ES256") => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// Which kind of user key to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    P256,
}

impl std::str::FromStr for KeyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" | "eddsa" => Ok(KeyKind::Ed25519),
            "p256" | "p-256" | "es256" | "ecdsa" => Ok(KeyKind::P256),
            _ => Err(format!("unknown key type {s:?} (ed25519 or p256)")),
        }
    }
}

/// A user's private key (PKCS#8), kept by the user, never by the gateway.
pub enum UserSigningKey {
    Ed25519(Ed25519KeyPair, Vec<u8>),
    P256(EcdsaKeyPair, Vec<u8>),
}

impl std::fmt::Debug for UserSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserSigningKey({:?}, <private>)", self.public_key())
    }
}

impl UserSigningKey {
    pub fn generate(kind: KeyKind) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = match kind {
            KeyKind::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
            KeyKind::P256 => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        }
        .map_err(|_| "the random source failed".to_owned())?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(UserSigningKey::Ed25519(k, der.to_vec()));
        }
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map(|k| UserSigningKey::P256(k, der.to_vec()))
            .map_err(|_| "not an Ed25519 or P-256 PKCS#8 private key".into())
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
            .map_err(|_| "expected a PEM PRIVATE KEY (PKCS#8)".to_owned())?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    pub fn to_pem(&self) -> String {
        match self {
            UserSigningKey::Ed25519(_, der) | UserSigningKey::P256(_, der) => pem("PRIVATE KEY", der),
        }
    }

    pub fn public_key(&self) -> UserPublicKey {
        match self {
            UserSigningKey::Ed25519(k, _) => {
                let mut x = [0u8; 32];
                x.copy_from_slice(k.public_key().as_ref());
                UserPublicKey::Ed25519(x)
            }
            UserSigningKey::P256(k, _) => {
                let mut p = [0u8; 65];
                p.copy_from_slice(k.public_key().as_ref());
                UserPublicKey::P256(p)
            }
        }
    }

    /// Signs `message` with this key's JWS algorithm.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            UserSigningKey::Ed25519(k, _) => Ok(k.sign(message).as_ref().to_vec()),
            UserSigningKey::P256(k, _) => k
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "signing failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_jwk_and_pem() {
        for kind in [KeyKind::Ed25519, KeyKind::P256] {
            let sk = UserSigningKey::generate(kind).unwrap();
            let pk = sk.public_key();
            let kid = pk.thumbprint();
            assert_eq!(UserPublicKey::parse(&pk.to_jwk(&kid).to_string()).unwrap(), pk);
            assert_eq!(UserPublicKey::parse(&pk.to_pem()).unwrap(), pk);
            let again = UserSigningKey::from_pem(&sk.to_pem()).unwrap();
            assert_eq!(again.public_key(), pk);
            let sig = sk.sign(b"msg").unwrap();
            assert!(pk.verify(pk.alg(), b"msg", &sig));
            assert!(!pk.verify(pk.alg(), b"msh", &sig));
            assert!(!pk.verify("HS256", b"msg", &sig));
            assert!(UserPublicKey::parse(&sk.to_pem()).is_err(), "a private key is refused");
        }
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let k = UserPublicKey::parse(jwk).unwrap();
        assert_eq!(k.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn hostile_key_text_is_refused() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"x"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"ES256"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(UserPublicKey::parse(bad).is_err(), "{bad}");
        }
        assert!(UserPublicKey::parse(&"{".repeat(MAX_KEY_TEXT + 1)).is_err());
    }
}
