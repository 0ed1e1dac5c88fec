//! The gateway's identity document (`identity.json`) and the changes the
//! admin API makes to it.

use arbitrary::{Result, Unstructured};
use gateway::AuthorizedKeys;
use gateway::access::model::UserAdd;
use gateway::access::{Authority, IdentityDoc, Owner};
use tunnel_proto::{AuthMode, HostPattern};

use crate::input;

/// A document as the store reads it (input starting with `{`), or else a
/// sequence of admin changes to one.
///
/// Invariants: a document that validates survives a JSON round trip and
/// still validates; every host it lists resolves to its org once loaded,
/// every user key to its user; every change the model accepts leaves a
/// document that validates, and one that is refused changes nothing.
pub fn identity(data: &[u8]) {
    if data.first() == Some(&b'{') {
        document(data);
    } else {
        let mut u = Unstructured::new(data);
        let _ = changes(&mut u);
    }
}

fn document(data: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<IdentityDoc>(data) else {
        return;
    };
    if doc.validate().is_err() {
        return;
    }
    check_loaded(&doc);
}

/// A document that validated, as a gateway loads it.
fn check_loaded(doc: &IdentityDoc) {
    let json = serde_json::to_string(doc).expect("a document serialises");
    let back: IdentityDoc = serde_json::from_str(&json).expect("a serialised document parses");
    assert_eq!(&back, doc, "the document changed through JSON");
    back.validate()
        .expect("a valid document still validates after a round trip");
    for (name, user) in &doc.users {
        for kid in user.keys.keys() {
            assert_eq!(back.key_owner(kid), Some(name.as_str()));
        }
    }
    let authority = Authority::new(AuthorizedKeys::default(), back);
    for (pattern, org) in &doc.hosts {
        let p = HostPattern::parse(pattern).expect("a valid document's host parses");
        match &p {
            HostPattern::Exact(h) => assert_eq!(
                authority.owner(h),
                Some(Owner::Org(org.clone())),
                "{h} of org {org} resolves elsewhere"
            ),
            // A more specific name under it may belong to another org.
            HostPattern::Wildcard(s) => assert!(authority.owner(&format!("a.{s}")).is_some()),
        }
    }
    for (name, user) in &doc.users {
        for kid in user.keys.keys() {
            let entry = authority.user_key(kid).expect("a stored key is found by its id");
            assert_eq!(&entry.user, name);
            assert_eq!(&entry.key.thumbprint(), kid);
        }
    }
}

/// Names the changes use: few, so they collide.
const NAMES: &[&str] = &["acme", "other", "alice", "bob", "web", "viewer", "read", "bad name", ""];

fn name(u: &mut Unstructured) -> Result<String> {
    Ok((*u.choose(NAMES)?).to_owned())
}

fn changes(u: &mut Unstructured) -> Result<()> {
    let mut doc = IdentityDoc::default();
    let relay_keys: Vec<String> = crate::handshake::keys()
        .iter()
        .map(|k| k.public_key().to_string())
        .collect();
    let user_keys: Vec<String> = crate::jws::user_public_keys()
        .iter()
        .map(|k| {
            if u.ratio(1, 2).unwrap_or(false) {
                k.to_pem()
            } else {
                k.to_jwk("x").to_string()
            }
        })
        .collect();
    for _ in 0..16 {
        if u.is_empty() {
            break;
        }
        let before = doc.clone();
        let result = match u.int_in_range(0..=10)? {
            0 => {
                let allowed = if u.ratio(1, 3)? {
                    Some(
                        [AuthMode::Public, AuthMode::Jwt, AuthMode::Mtls]
                            .into_iter()
                            .filter(|_| u.ratio(1, 2).unwrap_or(false))
                            .collect(),
                    )
                } else {
                    None
                };
                doc.add_org(&name(u)?, None, allowed)
            }
            1 => doc.rm_org(&name(u)?),
            2 => doc.add_host(&input::hostname(u)?, &name(u)?).map(drop),
            3 => doc.rm_host(&input::hostname(u)?),
            4 => {
                let key = if u.ratio(3, 4)? {
                    u.choose(&relay_keys)?.clone()
                } else {
                    input::text(u)?
                };
                doc.add_relay_key(&key, &name(u)?).map(drop)
            }
            5 => doc.rm_relay_key(u.choose(&relay_keys)?),
            6 => {
                let add = UserAdd {
                    name: name(u)?,
                    orgs: input::list(u, 2, name)?,
                    keys: input::list(u, 2, |u| {
                        if u.ratio(7, 8)? {
                            Ok(u.choose(&user_keys)?.clone())
                        } else {
                            input::text(u)
                        }
                    })?,
                    roles: input::list(u, 2, |u| {
                        Ok(format!(
                            "{}{}={}",
                            name(u)?,
                            if u.ratio(1, 2)? { "/web" } else { "" },
                            name(u)?
                        ))
                    })?,
                };
                doc.add_user(&add).map(drop)
            }
            7 => doc.rm_user(&name(u)?),
            8 => {
                let kid = crate::jws::user_public_keys()[usize::from(u.arbitrary::<bool>()?)].thumbprint();
                doc.rm_user_key(&name(u)?, &kid)
            }
            9 => doc.add_role(&name(u)?, &name(u)?, &input::list(u, 2, name)?),
            _ => doc.rm_role(&name(u)?, &name(u)?),
        };
        match result {
            Ok(()) => {
                if let Err(e) = doc.validate() {
                    panic!("an accepted change left a document that does not validate: {e}");
                }
            }
            Err(_) => assert_eq!(doc, before, "a refused change changed the document"),
        }
    }
    if doc.validate().is_ok() {
        check_loaded(&doc);
    }
    Ok(())
}
