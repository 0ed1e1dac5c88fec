//! One immutable snapshot of who may do what, merged from the static
//! authorized-keys file and the identity store: which relay key (or org)
//! owns each hostname, which org a relay key belongs to, users' keys by id,
//! and each org's client-certificate verifier. Swapped atomically on every
//! change; requests never take a lock to read it.

use std::collections::HashMap;
use tunnel_proto::{HostPattern, PublicKey, RejectCode};

use super::keys::UserPublicKey;
use super::model::{IdentityDoc, Org, User};
use super::mtls::{OrgVerifier, org_verifier};
use crate::authorized_keys::{AuthorizedKeys, Denied, covers};

/// Who owns a hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A key of the authorized-keys file.
    Key(PublicKey),
    /// An org of the identity store: any of its relay keys.
    Org(String),
}

/// A stored user key, found by its id.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub user: String,
    pub key: UserPublicKey,
}

#[derive(Default)]
pub struct Authority {
    file: AuthorizedKeys,
    doc: IdentityDoc,
    exact: HashMap<String, Owner>,
    wildcard: HashMap<String, Owner>,
    key_org: HashMap<PublicKey, String>,
    /// Orgs with at least one relay key.
    orgs_with_keys: std::collections::HashSet<String>,
    org_patterns: HashMap<String, Vec<HostPattern>>,
    user_keys: HashMap<String, KeyEntry>,
    verifiers: HashMap<String, OrgVerifier>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("hosts", &(self.exact.len() + self.wildcard.len()))
            .field("relay_keys", &self.len())
            .field("users", &self.doc.users.len())
            .finish()
    }
}

impl Authority {
    /// Merges both sources. The file wins a pattern both claim (the store's
    /// admin API refuses such a claim; one loaded from disk is skipped).
    pub fn new(file: AuthorizedKeys, doc: IdentityDoc) -> Self {
        let mut a = Authority {
            file,
            ..Default::default()
        };
        fn slot<'a>(a: &'a mut Authority, p: &HostPattern) -> std::collections::hash_map::Entry<'a, String, Owner> {
            match p {
                HostPattern::Exact(h) => a.exact.entry(h.clone()),
                HostPattern::Wildcard(s) => a.wildcard.entry(s.clone()),
            }
        }
        let file_entries: Vec<(PublicKey, Vec<HostPattern>)> =
            a.file.entries().map(|(k, p)| (*k, p.to_vec())).collect();
        for (key, patterns) in file_entries {
            for p in &patterns {
                slot(&mut a, p).or_insert(Owner::Key(key));
            }
        }
        for (pattern, org) in &doc.hosts {
            let Ok(p) = HostPattern::parse(pattern) else { continue };
            match slot(&mut a, &p) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Owner::Org(org.clone()));
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    tracing::warn!(%pattern, %org, "host is in the authorized-keys file too; the file wins");
                    continue;
                }
            }
            a.org_patterns.entry(org.clone()).or_default().push(p);
        }
        for (key, org) in &doc.relay_keys {
            if let Ok(k) = key.parse::<PublicKey>() {
                a.key_org.insert(k, org.clone());
                a.orgs_with_keys.insert(org.clone());
            }
        }
        for (name, user) in &doc.users {
            for (kid, jwk) in &user.keys {
                if let Ok(key) = UserPublicKey::from_jwk(jwk) {
                    a.user_keys.insert(
                        kid.clone(),
                        KeyEntry {
                            user: name.clone(),
                            key,
                        },
                    );
                }
            }
        }
        for (name, org) in &doc.orgs {
            if let Some(ca) = &org.client_ca {
                match org_verifier(ca) {
                    Ok(v) => {
                        a.verifiers.insert(name.clone(), v);
                    }
                    Err(e) => tracing::warn!(org = %name, error = %e, "client CA unusable"),
                }
            }
        }
        a.doc = doc;
        a
    }

    pub fn doc(&self) -> &IdentityDoc {
        &self.doc
    }

    /// Whether the authorized-keys file claims exactly this pattern.
    pub fn file_claims(&self, pattern: &HostPattern) -> bool {
        self.file.entries().any(|(_, ps)| ps.contains(pattern))
    }

    /// The owner of `host` (normalised): the most specific pattern wins.
    pub fn owner(&self, host: &str) -> Option<Owner> {
        if let Some(o) = self.exact.get(host) {
            return Some(o.clone());
        }
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(o) = self.wildcard.get(suffix) {
                return Some(o.clone());
            }
            rest = suffix;
        }
        None
    }

    fn pattern_owner(&self, pattern: &HostPattern) -> Option<Owner> {
        match pattern {
            HostPattern::Exact(h) => self.owner(h),
            HostPattern::Wildcard(s) => self.wildcard.get(s).cloned().or_else(|| self.owner(s)),
        }
    }

    /// Whether `host` is granted by name, not through a wildcard.
    pub fn is_exact(&self, host: &str) -> bool {
        self.exact.contains_key(host)
    }

    /// Whether a session with `key` may serve what `owner` owns.
    pub fn admits(&self, owner: &Owner, key: &PublicKey) -> bool {
        match owner {
            Owner::Key(k) => k == key,
            Owner::Org(o) => self.key_org.get(key) == Some(o),
        }
    }

    /// Whether some relay key may serve what `owner` owns: a file key
    /// always; an org once it has a relay key.
    pub fn has_relay_key(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Key(_) => true,
            Owner::Org(o) => self.orgs_with_keys.contains(o),
        }
    }

    /// The org a request to `host` belongs to, if any.
    pub fn org_of_host(&self, host: &str) -> Option<(&str, &Org)> {
        let name = match self.owner(host)? {
            Owner::Org(o) => o,
            // A file key that was also given to an org speaks for that org.
            Owner::Key(k) => self.key_org.get(&k)?.clone(),
        };
        self.doc.orgs.get_key_value(&name).map(|(n, o)| (n.as_str(), o))
    }

    pub fn user_key(&self, kid: &str) -> Option<&KeyEntry> {
        self.user_keys.get(kid)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.doc.users.get(name)
    }

    pub fn client_verifier(&self, org: &str) -> Option<&OrgVerifier> {
        self.verifiers.get(org)
    }

    pub fn is_registered(&self, host: &str) -> bool {
        self.owner(host).is_some()
    }

    pub fn contains_key(&self, key: &PublicKey) -> bool {
        self.file.contains_key(key) || self.key_org.contains_key(key)
    }

    /// Relay keys known from both sources.
    pub fn len(&self) -> usize {
        self.file.len() + self.key_org.keys().filter(|k| !self.file.contains_key(k)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `key` may serve `pattern`.
    pub fn authorize(&self, key: &PublicKey, pattern: &HostPattern) -> Result<(), Denied> {
        if !self.contains_key(key) {
            return Err(Denied {
                code: RejectCode::UnknownKey,
                message: format!("key {key} is not authorized on this gateway"),
            });
        }
        if self.pattern_owner(pattern).is_some_and(|o| self.admits(&o, key)) {
            return Ok(());
        }
        let from_file = self
            .file
            .entries()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p)
            .unwrap_or(&[]);
        let from_org = self
            .key_org
            .get(key)
            .and_then(|o| self.org_patterns.get(o))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if from_file.iter().chain(from_org).any(|p| covers(p, pattern)) {
            Err(Denied {
                code: RejectCode::HostnameTaken,
                message: format!("{pattern} is served by another key"),
            })
        } else {
            Err(Denied {
                code: RejectCode::HostnameNotAllowed,
                message: format!("key {key} may not serve {pattern}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnel_proto::RelayKey;

    #[test]
    fn file_and_store_merge_most_specific_first() {
        let (a, b, c) = (
            RelayKey::generate().unwrap().public_key(),
            RelayKey::generate().unwrap().public_key(),
            RelayKey::generate().unwrap().public_key(),
        );
        let file = AuthorizedKeys::parse(&format!("{a} *.site.test\n"), "keys").unwrap();
        let mut doc = IdentityDoc::default();
        doc.add_org("acme", None, None).unwrap();
        doc.add_host("app.site.test", "acme").unwrap();
        doc.add_host("*.acme.test", "acme").unwrap();
        doc.add_relay_key(&b.to_string(), "acme").unwrap();
        doc.add_relay_key(&c.to_string(), "acme").unwrap();
        let auth = Authority::new(file, doc);
        assert_eq!(auth.owner("www.site.test"), Some(Owner::Key(a)));
        assert_eq!(auth.owner("app.site.test"), Some(Owner::Org("acme".into())));
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(auth.authorize(&b, &p("app.site.test")).is_ok());
        assert!(auth.authorize(&c, &p("x.acme.test")).is_ok(), "every key of the org");
        assert_eq!(
            auth.authorize(&a, &p("app.site.test")).unwrap_err().code,
            RejectCode::HostnameTaken
        );
        assert_eq!(
            auth.authorize(&b, &p("www.site.test")).unwrap_err().code,
            RejectCode::HostnameNotAllowed
        );
        assert_eq!(auth.org_of_host("x.acme.test").map(|(n, _)| n), Some("acme"));
        assert_eq!(auth.org_of_host("www.site.test").map(|(n, _)| n), None);
        assert_eq!(auth.len(), 3);
    }
}
