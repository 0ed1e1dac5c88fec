//! Hostnames and `*.suffix` patterns, validated once at the edge so the
//! rest of the code compares plain lowercase strings.

use std::fmt;

use crate::error::{Error, Result};
use crate::limits::MAX_HOSTNAME_LEN;

fn invalid(name: &str, reason: &'static str) -> Error {
    // Cut on a character boundary: the name may be any UTF-8 a peer sent.
    let name = name.chars().take(80).collect();
    Error::InvalidHostname { name, reason }
}

/// Lowercases and checks a DNS hostname (letters, digits, `-`, `_`; labels of
/// 1–63 bytes; at most 253 bytes; one trailing dot allowed and removed).
/// IP addresses are not hostnames.
pub fn normalize_hostname(name: &str) -> Result<String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid(name, "empty"));
    }
    if trimmed.len() > MAX_HOSTNAME_LEN {
        return Err(invalid(name, "longer than 253 bytes"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid(name, "each label must be 1-63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                name,
                "only letters, digits, '-' and '_' are allowed (use punycode)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(name, "a label can't start or end with '-'"));
        }
    }
    if trimmed
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(name, "an IP address is not a hostname"));
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// The host part of an HTTP `Host` header or `:authority` (port removed),
/// normalised, or `None` if it is not a hostname.
pub fn host_of_authority(authority: &str) -> Option<String> {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    normalize_hostname(host).ok()
}

/// A hostname or a `*.suffix` wildcard (matching any name that ends in
/// `.suffix`, at any depth, but not `suffix` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self> {
        match s.strip_prefix("*.") {
            Some(suffix) => {
                let suffix = normalize_hostname(suffix)?;
                // A matching name is at least `x.` + suffix: with no room
                // for it the wildcard matches nothing, and its own text
                // would not fit in a `Hello`.
                if suffix.len() + 2 > MAX_HOSTNAME_LEN {
                    return Err(invalid(
                        s,
                        "a wildcard's suffix must leave room for a label (at most 251 bytes)",
                    ));
                }
                // `*.localhost` is fine: RFC 6761 keeps it on loopback.
                if !suffix.contains('.') && suffix != "localhost" {
                    return Err(invalid(s, "a wildcard needs at least two labels after '*.'"));
                }
                Ok(HostPattern::Wildcard(suffix))
            }
            None if s.contains('*') => Err(invalid(s, "'*' is only allowed as a leading '*.' label")),
            None => Ok(HostPattern::Exact(normalize_hostname(s)?)),
        }
    }

    /// Whether `host` (already normalised) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// Higher is more specific: any exact name beats any wildcard; a longer
    /// suffix beats a shorter one.
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Wildcard(s) => s.len(),
        }
    }

    /// Whether some hostname matches both patterns.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), p) | (p, HostPattern::Exact(a)) => p.matches(a),
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a == b || HostPattern::Wildcard(a.clone()).matches(b) || HostPattern::Wildcard(b.clone()).matches(a)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_normalised_and_checked() {
        assert_eq!(normalize_hostname("App.Example.COM.").unwrap(), "app.example.com");
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a b",
            "a/b",
            "127.0.0.1",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A name a peer sent (a `Hello` hostname, say) may be any UTF-8; the
    /// error quoting it must not cut a character in two.
    #[test]
    fn a_refused_name_is_quoted_without_splitting_a_character() {
        let name = format!("a{}", "é".repeat(50));
        assert!(normalize_hostname(&name).is_err());
        assert!(HostPattern::parse(&name).is_err());
        assert!(HostPattern::parse(&format!("*.{name}")).is_err());
    }

    #[test]
    fn authority_port_is_stripped() {
        assert_eq!(host_of_authority("App.test:8443").as_deref(), Some("app.test"));
        assert_eq!(host_of_authority("app.test").as_deref(), Some("app.test"));
        assert_eq!(host_of_authority("[::1]:443"), None);
        assert_eq!(host_of_authority("10.0.0.1:80"), None);
    }

    #[test]
    fn wildcards_match_any_depth_but_not_the_apex() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("aexample.com"));
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("*.localhost").unwrap().matches("app.localhost"));
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(
            HostPattern::parse("*.example.com").unwrap().specificity()
                < HostPattern::parse("x.y").unwrap().specificity()
        );
    }

    /// A wildcard whose suffix leaves no room for a label matches no valid
    /// hostname, and its text would not fit in a `Hello`: a relay announcing
    /// one could never connect.
    #[test]
    fn a_wildcard_leaves_room_for_a_label() {
        let suffix = |len: usize| {
            let mut s = "a".repeat(len);
            for i in (63..len).step_by(64) {
                s.replace_range(i..=i, ".");
            }
            s
        };
        assert!(normalize_hostname(&suffix(253)).is_ok());
        assert!(HostPattern::parse(&format!("*.{}", suffix(253))).is_err());
        assert!(HostPattern::parse(&format!("*.{}", suffix(252))).is_err());
        let longest = HostPattern::parse(&format!("*.{}", suffix(251))).unwrap();
        assert_eq!(longest.to_string().len(), MAX_HOSTNAME_LEN);
        assert!(longest.matches(&normalize_hostname(&format!("a.{}", suffix(251))).unwrap()));
    }

    #[test]
    fn overlap() {
        let p = |s| HostPattern::parse(s).unwrap();
        assert!(p("*.a.com").overlaps(&p("x.a.com")));
        assert!(p("*.a.com").overlaps(&p("*.b.a.com")));
        assert!(!p("*.a.com").overlaps(&p("*.b.com")));
        assert!(!p("x.com").overlaps(&p("y.com")));
    }
}
