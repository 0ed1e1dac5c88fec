//! Which relay key may serve which hostnames.
//!
//! File format, one key per line: `<public key> <pattern>[,<pattern>…]`
//! where a pattern is a hostname or `*.suffix`; `#` starts a comment.
//!
//! Every hostname has at most one owner, decided statically so all gateway
//! replicas agree: the key with the most specific matching pattern (an exact
//! name beats any wildcard, a longer suffix beats a shorter one). Two keys
//! listing the same pattern is an error in the file.

use std::collections::HashMap;
use std::path::Path;

use tunnel_proto::{HostPattern, PublicKey, RejectCode};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Entry {
    key: PublicKey,
    line: usize,
}

/// The parsed file (or an empty set).
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    exact: HashMap<String, Entry>,
    /// Wildcard suffix → owner.
    wildcard: HashMap<String, Entry>,
    keys: HashMap<PublicKey, Vec<HostPattern>>,
}

/// Why a key may not serve a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: RejectCode,
    pub message: String,
}

impl AuthorizedKeys {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::AuthorizedKeys {
            path: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the file text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut keys = AuthorizedKeys::default();
        let mut key_lines: HashMap<PublicKey, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| Error::AuthorizedKeys {
                path: source.to_owned(),
                line,
                message,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(key), Some(hosts), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(err("expected '<public key> <hostname>[,<hostname>...]'".into()));
            };
            let key: PublicKey = key.parse().map_err(|e: tunnel_proto::Error| err(e.to_string()))?;
            if let Some(first) = key_lines.insert(key, line) {
                return Err(err(format!("key {key} is already listed on line {first}")));
            }
            let mut patterns = Vec::new();
            for host in hosts.split(',').filter(|h| !h.is_empty()) {
                let pattern = HostPattern::parse(host).map_err(|e| err(e.to_string()))?;
                let slot = match &pattern {
                    HostPattern::Exact(h) => keys.exact.entry(h.clone()),
                    HostPattern::Wildcard(s) => keys.wildcard.entry(s.clone()),
                };
                match slot {
                    std::collections::hash_map::Entry::Occupied(o) if o.get().key != key => {
                        return Err(err(format!(
                            "{pattern} is already claimed by the key on line {}",
                            o.get().line
                        )));
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {}
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Entry { key, line });
                    }
                }
                patterns.push(pattern);
            }
            if patterns.is_empty() {
                return Err(err("no hostnames given".into()));
            }
            keys.keys.insert(key, patterns);
        }
        Ok(keys)
    }

    /// The key that owns `host` (a normalised hostname), if any.
    pub fn owner(&self, host: &str) -> Option<PublicKey> {
        if let Some(e) = self.exact.get(host) {
            return Some(e.key);
        }
        // Most specific first: strip one label at a time.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(e) = self.wildcard.get(suffix) {
                return Some(e.key);
            }
            rest = suffix;
        }
        None
    }

    /// The owner of a whole pattern: for a wildcard, the key whose pattern
    /// covering it is most specific.
    fn pattern_owner(&self, pattern: &HostPattern) -> Option<PublicKey> {
        match pattern {
            HostPattern::Exact(h) => self.owner(h),
            HostPattern::Wildcard(s) => self.wildcard.get(s).map(|e| e.key).or_else(|| self.owner(s)),
        }
    }

    /// Whether some key may serve `host`.
    pub fn is_registered(&self, host: &str) -> bool {
        self.owner(host).is_some()
    }

    /// Whether `host` is granted by name, not through a wildcard.
    pub fn is_exact(&self, host: &str) -> bool {
        self.exact.contains_key(host)
    }

    pub fn contains_key(&self, key: &PublicKey) -> bool {
        self.keys.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key with the patterns the file gives it.
    pub fn entries(&self) -> impl Iterator<Item = (&PublicKey, &[HostPattern])> {
        self.keys.iter().map(|(k, p)| (k, p.as_slice()))
    }

    /// Checks that `key` may serve `pattern`.
    pub fn authorize(&self, key: &PublicKey, pattern: &HostPattern) -> Result<(), Denied> {
        let Some(own) = self.keys.get(key) else {
            return Err(Denied {
                code: RejectCode::UnknownKey,
                message: format!("key {key} is not authorized on this gateway"),
            });
        };
        if self.pattern_owner(pattern) == Some(*key) {
            return Ok(());
        }
        let covered = own.iter().any(|p| covers(p, pattern));
        if covered {
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

/// Whether every name `inner` matches is also matched by `outer`.
pub(crate) fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (outer, inner) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
        (w @ HostPattern::Wildcard(_), HostPattern::Exact(h)) => w.matches(h),
        (w @ HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => a == b || w.matches(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnel_proto::RelayKey;

    fn key() -> PublicKey {
        RelayKey::generate().unwrap().public_key()
    }

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn ownership_is_most_specific() {
        let (a, b) = (key(), key());
        let text =
            format!("# comment\n{a} *.example.com,a.test  # trailing\n\n{b} api.example.com,*.dev.example.com\n");
        let keys = AuthorizedKeys::parse(&text, "keys").unwrap();
        assert_eq!(keys.owner("www.example.com"), Some(a));
        assert_eq!(keys.owner("api.example.com"), Some(b));
        assert_eq!(keys.owner("x.dev.example.com"), Some(b));
        assert_eq!(keys.owner("example.com"), None);
        assert!(keys.authorize(&a, &p("www.example.com")).is_ok());
        assert!(keys.authorize(&a, &p("*.example.com")).is_ok());
        assert_eq!(
            keys.authorize(&a, &p("api.example.com")).unwrap_err().code,
            RejectCode::HostnameTaken
        );
        assert_eq!(
            keys.authorize(&a, &p("*.dev.example.com")).unwrap_err().code,
            RejectCode::HostnameTaken
        );
        assert_eq!(
            keys.authorize(&b, &p("www.example.com")).unwrap_err().code,
            RejectCode::HostnameNotAllowed
        );
        assert_eq!(
            keys.authorize(&key(), &p("a.test")).unwrap_err().code,
            RejectCode::UnknownKey
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let (a, b) = (key(), key());
        let cases = [
            (format!("{a}\n"), 1, "expected"),
            (format!("\n{a} a.test extra\n"), 2, "expected"),
            ("ssh-ed25519 a.test\n".to_owned(), 1, "public key"),
            (format!("{a} bad_host!\n"), 1, "invalid hostname"),
            (
                format!("{a} a.test\n{b} a.test\n"),
                2,
                "already claimed by the key on line 1",
            ),
            (format!("{a} a.test\n{a} b.test\n"), 2, "already listed on line 1"),
            (format!("{a} *.com\n"), 1, "wildcard"),
        ];
        for (text, line, needle) in cases {
            let err = AuthorizedKeys::parse(&text, "/etc/routehub/keys")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("/etc/routehub/keys:{line}: ")), "{err}");
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }
}
