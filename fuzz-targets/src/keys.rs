//! The gateway's authorized-keys file and end users' public keys.

use gateway::AuthorizedKeys;
use gateway::access::keys::{UserPublicKey, UserSigningKey};
use tunnel_proto::{HostPattern, PublicKey, RejectCode};

/// An authorized-keys file.
///
/// Invariants: every key may serve every pattern its line lists, and owns
/// each hostname listed exactly; no other key may serve a pattern someone
/// listed; the owner of any listed name has a pattern matching it; the
/// file written back from what was parsed parses to the same grants.
pub fn authorized_keys(data: &[u8]) {
    let text = crate::text(data);
    let Ok(keys) = AuthorizedKeys::parse(&text, "fuzz") else {
        return;
    };
    let stranger: PublicKey = crate::handshake::keys()[1].public_key();
    let mut written = String::new();
    for (key, patterns) in keys.entries() {
        assert!(keys.contains_key(key));
        assert!(!patterns.is_empty());
        written.push_str(&format!("{key} "));
        for (i, p) in patterns.iter().enumerate() {
            crate::names::check_pattern(p);
            assert_eq!(keys.authorize(key, p), Ok(()), "{key} may not serve its own {p}");
            if !keys.contains_key(&stranger) {
                assert_eq!(
                    keys.authorize(&stranger, p).map_err(|d| d.code),
                    Err(RejectCode::UnknownKey)
                );
            }
            for (other, _) in keys.entries().filter(|(k, _)| *k != key) {
                assert!(keys.authorize(other, p).is_err(), "{other} may serve {key}'s {p}");
            }
            let host = match p {
                HostPattern::Exact(h) => {
                    assert_eq!(keys.owner(h), Some(*key));
                    assert!(keys.is_exact(h));
                    h.clone()
                }
                HostPattern::Wildcard(s) => format!("a.{s}"),
            };
            let owner = keys.owner(&host).expect("a listed name has an owner");
            let owner_patterns = keys
                .entries()
                .find(|(k, _)| **k == owner)
                .map(|(_, p)| p)
                .expect("the owner is listed");
            assert!(owner_patterns.iter().any(|q| q.matches(&host)));
            written.push_str(if i == 0 { "" } else { "," });
            written.push_str(&p.to_string());
        }
        written.push('\n');
    }
    let again = AuthorizedKeys::parse(&written, "written").expect("the file written back parses");
    assert_eq!(again.len(), keys.len());
    for (key, patterns) in keys.entries() {
        let back = again
            .entries()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p)
            .expect("every key survives");
        assert_eq!(back, patterns);
    }
}

/// A user's public key as JWK or PEM, and a private key PEM.
///
/// Invariants: a parsed key comes back unchanged through its JWK and its
/// PEM, with the same thumbprint; a private key is never taken for a
/// public one; a private key that loads signs what its public key verifies.
pub fn user_key(data: &[u8]) {
    let text = crate::text(data);
    if let Ok(key) = UserPublicKey::parse(&text) {
        let kid = key.thumbprint();
        let jwk = key.to_jwk(&kid);
        assert_eq!(UserPublicKey::from_jwk(&jwk).as_ref(), Ok(&key));
        assert_eq!(UserPublicKey::parse(&jwk.to_string()).as_ref(), Ok(&key));
        assert_eq!(UserPublicKey::parse(&key.to_pem()).as_ref(), Ok(&key));
        assert_eq!(jwk["alg"], key.alg());
    }
    if let Ok(sk) = UserSigningKey::from_pem(&text) {
        assert!(
            UserPublicKey::parse(&text).is_err(),
            "a private key was taken for a public one"
        );
        let pk = sk.public_key();
        let sig = sk.sign(b"message").expect("a loaded key signs");
        assert!(pk.verify(pk.alg(), b"message", &sig));
        assert!(!pk.verify(pk.alg(), b"massage", &sig));
        let again = UserSigningKey::from_pem(&sk.to_pem()).expect("a key's own PEM loads");
        assert_eq!(again.public_key(), pk);
    }
}
