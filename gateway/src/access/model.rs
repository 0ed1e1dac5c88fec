//! The gateway's identity model: orgs own hostnames and relay keys; users
//! hold public keys and belong to orgs; roles (defined per org) grant
//! permissions, and users hold roles per `org/project`.
//!
//! Every mutation checks the whole document stays consistent, so a store
//! never holds a dangling reference.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tunnel_proto::routes::{parse_project, valid_name};
use tunnel_proto::{AuthMode, HostPattern, PublicKey};

use super::keys::UserPublicKey;

/// Most users, hosts, keys... of one kind (the document is held in memory).
pub const MAX_ENTRIES: usize = 100_000;
/// Most keys of one user.
pub const MAX_KEYS_PER_USER: usize = 32;

/// The whole identity model. Change users through the methods below:
/// they keep the key-id index in step (it is rebuilt on deserializing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "DocFields")]
pub struct IdentityDoc {
    pub orgs: BTreeMap<String, Org>,
    /// Host pattern (`name` or `*.suffix`) → owning org.
    pub hosts: BTreeMap<String, String>,
    /// Relay public key → org; it may serve that org's hosts.
    pub relay_keys: BTreeMap<String, String>,
    pub users: BTreeMap<String, User>,
    /// Key id → the user holding it, so adding a key (and validating a
    /// loaded document) does not scan every user.
    #[serde(skip)]
    key_owners: HashMap<String, String>,
}

/// The stored form of [`IdentityDoc`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocFields {
    #[serde(default)]
    orgs: BTreeMap<String, Org>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    relay_keys: BTreeMap<String, String>,
    #[serde(default)]
    users: BTreeMap<String, User>,
}

impl From<DocFields> for IdentityDoc {
    fn from(f: DocFields) -> Self {
        let mut key_owners = HashMap::new();
        for (name, user) in &f.users {
            for kid in user.keys.keys() {
                // A key listed under two users stays with the first; the
                // store's `validate` refuses such a document anyway.
                key_owners.entry(kid.clone()).or_insert_with(|| name.clone());
            }
        }
        IdentityDoc {
            orgs: f.orgs,
            hosts: f.hosts,
            relay_keys: f.relay_keys,
            users: f.users,
            key_owners,
        }
    }
}

fn all_modes() -> BTreeSet<AuthMode> {
    [AuthMode::Public, AuthMode::Jwt, AuthMode::Mtls].into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    /// Route policies this org's routes may use; others are refused (403).
    #[serde(default = "all_modes")]
    pub allowed_policies: BTreeSet<AuthMode>,
    /// PEM CA certificate(s) that issue this org's client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// Role name → permissions it grants.
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeSet<String>>,
}

impl Default for Org {
    fn default() -> Self {
        Org {
            allowed_policies: all_modes(),
            client_ca: None,
            roles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub orgs: BTreeSet<String>,
    /// Key id → public JWK.
    #[serde(default)]
    pub keys: BTreeMap<String, serde_json::Value>,
    /// Scope (`org/project`, or `org` for all its projects) → role names.
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeSet<String>>,
}

/// What `user add` brings: everything is merged into an existing user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAdd {
    pub name: String,
    #[serde(default)]
    pub orgs: Vec<String>,
    /// JWK or PEM public keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// `org/project=role` (or `org=role`).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A rejected change: what is wrong, in one line.
pub type Refusal = String;

fn check_name(what: &str, s: &str) -> Result<(), Refusal> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(format!("{what} {s:?}: use 1-64 letters, digits, '-', '_', '.'"))
    }
}

/// `org` or `org/project`; returns the org.
fn scope_org(scope: &str) -> Result<&str, Refusal> {
    if scope.contains('/') {
        parse_project(scope).map(|(o, _)| o).map_err(|e| e.to_string())
    } else {
        check_name("org", scope).map(|()| scope)
    }
}

impl IdentityDoc {
    fn org(&self, name: &str) -> Result<&Org, Refusal> {
        self.orgs.get(name).ok_or_else(|| format!("no org {name:?}"))
    }

    fn full(n: usize, what: &str) -> Result<(), Refusal> {
        if n >= MAX_ENTRIES {
            Err(format!("too many {what}"))
        } else {
            Ok(())
        }
    }

    /// Adds an org, or updates its CA and allowed policies.
    pub fn add_org(
        &mut self,
        name: &str,
        client_ca: Option<String>,
        allowed: Option<BTreeSet<AuthMode>>,
    ) -> Result<(), Refusal> {
        check_name("org", name)?;
        if let Some(ca) = &client_ca {
            super::mtls::parse_roots(ca)?;
        }
        if !self.orgs.contains_key(name) {
            Self::full(self.orgs.len(), "orgs")?;
        }
        let org = self.orgs.entry(name.into()).or_default();
        if client_ca.is_some() {
            org.client_ca = client_ca;
        }
        if let Some(a) = allowed {
            org.allowed_policies = a;
        }
        Ok(())
    }

    /// Removes an org with its hosts, relay keys and memberships.
    pub fn rm_org(&mut self, name: &str) -> Result<(), Refusal> {
        self.orgs.remove(name).ok_or_else(|| format!("no org {name:?}"))?;
        self.hosts.retain(|_, o| o != name);
        self.relay_keys.retain(|_, o| o != name);
        for u in self.users.values_mut() {
            u.orgs.remove(name);
            u.roles.retain(|scope, _| scope_org(scope).is_ok_and(|o| o != name));
        }
        Ok(())
    }

    /// Gives `pattern` to `org`. Returns the normalised pattern.
    pub fn add_host(&mut self, pattern: &str, org: &str) -> Result<String, Refusal> {
        self.org(org)?;
        let p = HostPattern::parse(pattern).map_err(|e| e.to_string())?.to_string();
        match self.hosts.get(&p) {
            Some(o) if o != org => return Err(format!("{p} belongs to org {o:?}")),
            Some(_) => {}
            None => Self::full(self.hosts.len(), "hosts")?,
        }
        self.hosts.insert(p.clone(), org.into());
        Ok(p)
    }

    pub fn rm_host(&mut self, pattern: &str) -> Result<(), Refusal> {
        let p = HostPattern::parse(pattern).map_err(|e| e.to_string())?.to_string();
        self.hosts.remove(&p).map(|_| ()).ok_or_else(|| format!("no host {p}"))
    }

    /// Lets a relay key serve `org`'s hosts. Returns the key's canonical text.
    pub fn add_relay_key(&mut self, key: &str, org: &str) -> Result<String, Refusal> {
        self.org(org)?;
        let k: PublicKey = key.trim().parse().map_err(|e: tunnel_proto::Error| e.to_string())?;
        let k = k.to_string();
        match self.relay_keys.get(&k) {
            Some(o) if o != org => return Err(format!("this relay key belongs to org {o:?}")),
            Some(_) => {}
            None => Self::full(self.relay_keys.len(), "relay keys")?,
        }
        self.relay_keys.insert(k.clone(), org.into());
        Ok(k)
    }

    pub fn rm_relay_key(&mut self, key: &str) -> Result<(), Refusal> {
        let k: PublicKey = key.trim().parse().map_err(|e: tunnel_proto::Error| e.to_string())?;
        self.relay_keys
            .remove(&k.to_string())
            .map(|_| ())
            .ok_or_else(|| "no such relay key".into())
    }

    /// Adds a user or merges orgs, keys and roles into one. Returns the
    /// ids of the keys given.
    pub fn add_user(&mut self, add: &UserAdd) -> Result<Vec<String>, Refusal> {
        check_name("user", &add.name)?;
        for o in &add.orgs {
            self.org(o)?;
        }
        let mut kids = Vec::new();
        let mut user = self.users.get(&add.name).cloned().unwrap_or_default();
        if !self.users.contains_key(&add.name) {
            Self::full(self.users.len(), "users")?;
        }
        for text in &add.keys {
            let key = UserPublicKey::parse(text)?;
            let kid = key.thumbprint();
            if let Some(other) = self.key_owner(&kid)
                && other != add.name
            {
                return Err(format!("key {kid} already belongs to user {other:?}"));
            }
            user.keys.insert(kid.clone(), key.to_jwk(&kid));
            kids.push(kid);
        }
        if user.keys.len() > MAX_KEYS_PER_USER {
            return Err(format!("a user holds at most {MAX_KEYS_PER_USER} keys"));
        }
        user.orgs.extend(add.orgs.iter().cloned());
        for grant in &add.roles {
            let (scope, role) = grant
                .split_once('=')
                .ok_or_else(|| format!("role {grant:?}: expected org/project=role"))?;
            let org = scope_org(scope)?;
            self.org(org)?;
            check_name("role", role)?;
            if !user.orgs.contains(org) {
                return Err(format!("user {:?} is not in org {org:?}", add.name));
            }
            user.roles.entry(scope.into()).or_default().insert(role.into());
        }
        for kid in &kids {
            self.key_owners.insert(kid.clone(), add.name.clone());
        }
        self.users.insert(add.name.clone(), user);
        Ok(kids)
    }

    /// The user holding the key with id `kid`.
    pub fn key_owner(&self, kid: &str) -> Option<&str> {
        self.key_owners.get(kid).map(String::as_str)
    }

    pub fn rm_user(&mut self, name: &str) -> Result<(), Refusal> {
        let user = self.users.remove(name).ok_or_else(|| format!("no user {name:?}"))?;
        for kid in user.keys.keys() {
            self.key_owners.remove(kid);
        }
        Ok(())
    }

    /// Removes one key of a user (the next request signed with it fails).
    pub fn rm_user_key(&mut self, name: &str, kid: &str) -> Result<(), Refusal> {
        let user = self.users.get_mut(name).ok_or_else(|| format!("no user {name:?}"))?;
        user.keys
            .remove(kid)
            .ok_or_else(|| format!("user {name:?} has no key {kid}"))?;
        self.key_owners.remove(kid);
        Ok(())
    }

    /// Defines (or extends) a role of `org` with permissions.
    pub fn add_role(&mut self, org: &str, role: &str, permissions: &[String]) -> Result<(), Refusal> {
        check_name("role", role)?;
        for p in permissions {
            check_name("permission", p)?;
        }
        let o = self.orgs.get_mut(org).ok_or_else(|| format!("no org {org:?}"))?;
        o.roles
            .entry(role.into())
            .or_default()
            .extend(permissions.iter().cloned());
        Ok(())
    }

    pub fn rm_role(&mut self, org: &str, role: &str) -> Result<(), Refusal> {
        let o = self.orgs.get_mut(org).ok_or_else(|| format!("no org {org:?}"))?;
        o.roles
            .remove(role)
            .map(|_| ())
            .ok_or_else(|| format!("org {org:?} has no role {role:?}"))
    }

    /// Checks a document read from a store as if built by the methods above.
    pub fn validate(&self) -> Result<(), Refusal> {
        let mut rebuilt = IdentityDoc::default();
        for (name, org) in &self.orgs {
            rebuilt.add_org(name, org.client_ca.clone(), Some(org.allowed_policies.clone()))?;
            for (role, perms) in &org.roles {
                rebuilt.add_role(name, role, &perms.iter().cloned().collect::<Vec<_>>())?;
            }
        }
        for (host, org) in &self.hosts {
            rebuilt.add_host(host, org)?;
        }
        for (key, org) in &self.relay_keys {
            rebuilt.add_relay_key(key, org)?;
        }
        for (name, user) in &self.users {
            let mut add = UserAdd {
                name: name.clone(),
                orgs: user.orgs.iter().cloned().collect(),
                keys: Vec::new(),
                roles: Vec::new(),
            };
            for (kid, jwk) in &user.keys {
                let key = UserPublicKey::from_jwk(jwk).map_err(|e| format!("user {name:?} key {kid}: {e}"))?;
                if key.thumbprint() != *kid {
                    return Err(format!("user {name:?}: key id {kid} is not its key's thumbprint"));
                }
                add.keys.push(jwk.to_string());
            }
            for (scope, roles) in &user.roles {
                add.roles.extend(roles.iter().map(|r| format!("{scope}={r}")));
            }
            rebuilt.add_user(&add)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::keys::{KeyKind, UserSigningKey};

    #[test]
    fn mutations_keep_the_document_consistent() {
        let mut doc = IdentityDoc::default();
        assert!(doc.add_host("a.test", "acme").is_err(), "no such org");
        doc.add_org("acme", None, None).unwrap();
        doc.add_org("other", None, None).unwrap();
        assert_eq!(doc.add_host("A.test", "acme").unwrap(), "a.test");
        assert!(doc.add_host("a.test", "other").is_err(), "taken");
        let relay = tunnel_proto::RelayKey::generate().unwrap().public_key().to_string();
        doc.add_relay_key(&relay, "acme").unwrap();
        assert!(doc.add_relay_key(&relay, "other").is_err());
        let key = UserSigningKey::generate(KeyKind::Ed25519).unwrap().public_key();
        let add = UserAdd {
            name: "alice".into(),
            orgs: vec!["acme".into()],
            keys: vec![key.to_pem()],
            roles: vec!["acme/web=viewer".into()],
        };
        let kids = doc.add_user(&add).unwrap();
        assert_eq!(kids, [key.thumbprint()]);
        let thief = UserAdd {
            name: "mallory".into(),
            keys: vec![key.to_pem()],
            ..Default::default()
        };
        assert!(doc.add_user(&thief).is_err(), "a key has one owner");
        let outsider = UserAdd {
            name: "bob".into(),
            roles: vec!["acme/web=admin".into()],
            ..Default::default()
        };
        assert!(doc.add_user(&outsider).is_err(), "roles only within the user's orgs");
        doc.add_role("acme", "viewer", &["read".into()]).unwrap();
        doc.validate().unwrap();
        let json = serde_json::to_string(&doc).unwrap();
        let back: IdentityDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        // The key-id index survives a reload: a stored key still has one owner.
        let mut reloaded: IdentityDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(reloaded.key_owner(&key.thumbprint()), Some("alice"));
        assert!(
            reloaded.add_user(&thief).is_err(),
            "a key has one owner, after a reload too"
        );
        reloaded.rm_user_key("alice", &key.thumbprint()).unwrap();
        assert_eq!(reloaded.key_owner(&key.thumbprint()), None);
        reloaded.add_user(&thief).unwrap();
        reloaded.rm_user("mallory").unwrap();
        reloaded.add_user(&add).unwrap();
        reloaded.validate().unwrap();
        doc.rm_org("acme").unwrap();
        assert!(doc.hosts.is_empty() && doc.relay_keys.is_empty());
        assert!(doc.users["alice"].orgs.is_empty() && doc.users["alice"].roles.is_empty());
        doc.validate().unwrap();
    }
}
