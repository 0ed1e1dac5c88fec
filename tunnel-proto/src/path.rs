//! Request paths and route path prefixes in one canonical form, so the
//! gateway routes, polices and forwards the very same path.
//!
//! Backends disagree on what a path means (`/x/../admin`, `/%61dmin`,
//! `//admin`, `/admin;x`, `/ADMIN` on a case-insensitive file system all
//! reach `/admin` somewhere). A gateway that matched one spelling and
//! forwarded another would let a request around a path-prefix policy. So
//! every request path is first brought to one form, and only that form is
//! matched and forwarded:
//!
//! - escapes of unreserved characters (RFC 3986 §2.3: letters, digits,
//!   `-._~`) are decoded; other escapes stay, with upper-case hex;
//! - an escaped `/` or `\` (`%2F`, `%5C`), a raw `\`, an escaped NUL, a
//!   malformed escape, or a byte outside printable ASCII is refused: some
//!   backends read them as separators, others as data;
//! - empty segments are dropped (`//a` is `/a`, as most servers merge them)
//!   and dot segments removed (RFC 3986 §5.2.4), whether spelled `..`,
//!   `%2e%2e` or with parameters (`..;x`, which servlet containers read as
//!   `..`);
//! - a segment's `;parameters` are kept, but only the part before `;` is
//!   compared with a prefix (servlet containers strip parameters);
//! - prefixes match whole segments, ignoring ASCII case (a case-insensitive
//!   file system serves `/SECURE` as `/secure`), and the matched segments
//!   are forwarded in the route's own spelling, so a case-sensitive backend
//!   sees the path that was policed too.

use crate::error::{Error, Result};

/// Longest path prefix a route may have.
pub const MAX_PATH_PREFIX: usize = 1024;

/// A request path in canonical form: starts with `/`, no empty or dot
/// segments, printable ASCII with only the escapes the rules above keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath(String);

fn invalid(path: &str, reason: &'static str) -> Error {
    Error::InvalidPath {
        path: path.chars().take(80).collect(),
        reason,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The part of a segment compared with a prefix: before any `;`.
fn name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// Canonical form of `raw`, and whether it held dot segments.
fn canonical(raw: &str) -> Result<(String, bool)> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(invalid(raw, "a path must start with '/'"));
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = match (
                    bytes.get(i + 1).and_then(|&b| hex_digit(b)),
                    bytes.get(i + 2).and_then(|&b| hex_digit(b)),
                ) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(invalid(raw, "a '%' must start an escape of two hex digits")),
                };
                match value {
                    b'/' | b'\\' => return Err(invalid(raw, "an escaped '/' or '\\' (%2F, %5C) is refused")),
                    0 => return Err(invalid(raw, "an escaped NUL (%00) is refused")),
                    v if is_unreserved(v) => decoded.push(char::from(v)),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.push('%');
                        decoded.push(char::from(HEX[usize::from(v >> 4)]));
                        decoded.push(char::from(HEX[usize::from(v & 15)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(invalid(raw, "a '\\' in a path is refused")),
            b @ 0x21..=0x7e => {
                decoded.push(char::from(b));
                i += 1;
            }
            _ => return Err(invalid(raw, "a path may hold only printable ASCII")),
        }
    }
    let mut kept: Vec<&str> = Vec::new();
    let (mut dots, mut trailing) = (false, false);
    for segment in decoded[1..].split('/') {
        let name = name(segment);
        trailing = matches!(name, "" | "." | "..");
        match name {
            "" => {}
            "." => dots = true,
            ".." => {
                dots = true;
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    if kept.is_empty() || trailing {
        path.push('/');
    }
    Ok((path, dots))
}

impl RequestPath {
    /// Brings a raw request path (no query) to canonical form, or refuses
    /// it (the gateway answers 400).
    pub fn parse(raw: &str) -> Result<RequestPath> {
        canonical(raw).map(|(path, _)| RequestPath(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn segments(&self) -> std::str::Split<'_, char> {
        self.0[1..].split('/')
    }

    /// Whether the path falls under `prefix` (normalised by
    /// [`normalize_path_prefix`]): on segment boundaries, segment
    /// parameters left out, ASCII case ignored.
    pub fn matches(&self, prefix: &str) -> bool {
        if prefix == "/" {
            return true;
        }
        let mut segments = self.segments();
        prefix[1..]
            .split('/')
            .all(|p| segments.next().is_some_and(|s| name(s).eq_ignore_ascii_case(p)))
    }

    /// The path to forward for a route with `prefix` (which it
    /// [`matches`](Self::matches)): the matched segments spelled as the
    /// prefix spells them, parameters and the rest kept.
    pub fn forwarded(&self, prefix: &str) -> String {
        if prefix == "/" {
            return self.0.clone();
        }
        let mut out = String::with_capacity(self.0.len());
        let mut theirs = prefix[1..].split('/');
        for segment in self.segments() {
            out.push('/');
            match theirs.next() {
                Some(spelled) => {
                    out.push_str(spelled);
                    out.push_str(&segment[name(segment).len()..]);
                }
                None => out.push_str(segment),
            }
        }
        out
    }
}

impl std::fmt::Display for RequestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a route path prefix and brings it to the canonical form request
/// paths are matched in: starts with `/`, no `.`/`..` segments (spelled
/// plainly or escaped), no `;` parameters, no query or fragment, printable
/// ASCII; empty segments and trailing slashes are removed (except for `/`
/// itself), since matching is by segment.
pub fn normalize_path_prefix(p: &str) -> Result<String> {
    if p.len() > MAX_PATH_PREFIX {
        return Err(invalid(p, "path prefix longer than 1024 bytes"));
    }
    if p.contains(['?', '#']) {
        return Err(invalid(
            p,
            "a path prefix may hold only printable ASCII, without '?' or '#'",
        ));
    }
    if p.contains(';') {
        return Err(invalid(p, "a path prefix may not hold ';' parameters"));
    }
    let (path, dots) = canonical(p)?;
    if dots {
        return Err(invalid(p, "a path prefix may not contain '.' or '..' segments"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(raw: &str) -> String {
        RequestPath::parse(raw).unwrap().0
    }

    #[test]
    fn spellings_of_one_path_meet_in_one_form() {
        for raw in [
            "/secure/secret.txt",
            "/x/../secure/secret.txt",
            "/./secure/secret.txt",
            "/%73ecure/secret.txt",
            "/%73%65%63%75%72%65/secret%2etxt",
            "//secure//secret.txt",
            "/secure/./secret.txt",
            "/a/b/../../secure/secret.txt",
            "/../secure/secret.txt",
            "/x/..;/secure/secret.txt",
            "/x/%2e%2E/secure/secret.txt",
            "/;x/secure/secret.txt",
        ] {
            assert_eq!(canon(raw), "/secure/secret.txt", "{raw}");
        }
        assert_eq!(canon("/"), "/");
        assert_eq!(canon("//"), "/");
        assert_eq!(canon("/a/"), "/a/");
        assert_eq!(canon("/a/."), "/a/");
        assert_eq!(canon("/a/b/.."), "/a/");
        assert_eq!(canon("/a%20b/%c3%A9"), "/a%20b/%C3%A9");
        assert_eq!(canon("/a;jsessionid=1/b"), "/a;jsessionid=1/b");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for raw in [
            "/secure%2fsecret.txt",
            "/secure%2Fsecret.txt",
            "/secure%5csecret.txt",
            "/secure\\secret.txt",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "/a%",
            "/a%+1",
            "/a b",
            "/caf\u{e9}",
            "secure",
            "*",
            "",
        ] {
            assert!(RequestPath::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn prefixes_match_whole_segments_without_parameters_or_case() {
        let p = |raw: &str| RequestPath::parse(raw).unwrap();
        assert!(p("/api").matches("/api"));
        assert!(p("/api/").matches("/api"));
        assert!(p("/api/v1").matches("/api"));
        assert!(p("/API/v1").matches("/api"));
        assert!(p("/api;x=1/v1").matches("/api"));
        assert!(p("/api/v1;y").matches("/api/v1"));
        assert!(!p("/apiv1").matches("/api"));
        assert!(!p("/").matches("/api"));
        assert!(!p("/ap").matches("/api"));
        assert!(p("/anything").matches("/"));
        assert!(p("/a%20b/c").matches("/a%20b"));
    }

    #[test]
    fn matched_segments_are_forwarded_as_the_route_spells_them() {
        let p = |raw: &str| RequestPath::parse(raw).unwrap();
        assert_eq!(p("/SECURE/Secret.txt").forwarded("/secure"), "/secure/Secret.txt");
        assert_eq!(p("/Api;s=1/v1/").forwarded("/api"), "/api;s=1/v1/");
        assert_eq!(p("/Any/Thing").forwarded("/"), "/Any/Thing");
        assert_eq!(p("/a/b").forwarded("/a/b"), "/a/b");
    }

    #[test]
    fn path_prefixes_are_checked_and_normalised() {
        assert_eq!(normalize_path_prefix("/api/").unwrap(), "/api");
        assert_eq!(normalize_path_prefix("/").unwrap(), "/");
        assert_eq!(normalize_path_prefix("//a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_path_prefix("/%73ecure").unwrap(), "/secure");
        for bad in [
            "api",
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a?b",
            "/a#b",
            "/a;b",
            "/a%2fb",
            "/a b",
        ] {
            assert!(normalize_path_prefix(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_path_prefix(&format!("/{}", "a".repeat(MAX_PATH_PREFIX))).is_err());
    }

    /// A segment of a canonical path: unreserved characters, not all dots.
    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,6}"
    }

    /// One way to spell a segment: some unreserved characters escaped (hex
    /// in either case), its letters' case changed, a parameter added.
    fn spell(segment: &str, choices: &[u8]) -> String {
        let mut out = String::new();
        for (i, c) in segment.chars().enumerate() {
            let choice = choices[i % choices.len()];
            match choice % 4 {
                0 => out.push_str(&format!("%{:02x}", c as u32)),
                1 => out.push_str(&format!("%{:02X}", c as u32)),
                2 => out.push(c.to_ascii_uppercase()),
                _ => out.push(c),
            }
        }
        if choices[0].is_multiple_of(5) {
            out.push_str(";p=1");
        }
        out
    }

    /// Noise between segments that a canonical form must remove.
    fn noise(choice: u8) -> &'static str {
        match choice % 6 {
            0 => "/.",
            1 => "/",
            2 => "/junk/..",
            3 => "/%2e",
            4 => "/x/..;y",
            _ => "",
        }
    }

    proptest! {
        /// For random paths and spellings, a request is routed to the
        /// route (longest matching prefix) its canonical path is routed
        /// to, and forwards a path that is matched the same way: a policy
        /// that refuses the canonical path refuses every spelling of it.
        #[test]
        fn every_spelling_meets_the_policy_of_its_canonical_path(
            segments in prop::collection::vec(segment(), 1..6),
            choices in prop::collection::vec(any::<u8>(), 1..40),
            prefix_len in 0usize..4,
            other in segment(),
        ) {
            let canonical = format!("/{}", segments.join("/"));
            let mut spelled = String::new();
            for (i, s) in segments.iter().enumerate() {
                spelled.push_str(noise(choices[i % choices.len()]));
                spelled.push('/');
                spelled.push_str(&spell(s, &choices[i % choices.len()..]));
            }
            // Routes: `/`, a prefix of the path, and a sibling.
            let protected = format!("/{}", segments[..prefix_len.min(segments.len())].join("/"));
            let protected = normalize_path_prefix(&protected).unwrap();
            let sibling = normalize_path_prefix(&format!("/{other}/x")).unwrap();
            let routes = ["/".to_owned(), protected, sibling];
            let pick = |path: &RequestPath| {
                routes.iter().filter(|r| path.matches(r)).max_by_key(|r| r.len()).cloned()
            };
            let canon = RequestPath::parse(&canonical).unwrap();
            let spelling = RequestPath::parse(&spelled).unwrap();
            let route = pick(&canon);
            prop_assert_eq!(&pick(&spelling), &route, "{} vs {}", spelled, canonical);
            let route = route.unwrap();
            let forwarded = RequestPath::parse(&spelling.forwarded(&route)).unwrap();
            prop_assert_eq!(pick(&forwarded), Some(route.clone()));
            prop_assert!(forwarded.matches(&route));
        }

        #[test]
        fn the_canonical_form_is_a_fixed_point(raw in "(/[A-Za-z0-9%.;~_-]{0,5}){0,6}") {
            if let Ok(p) = RequestPath::parse(&raw) {
                prop_assert_eq!(RequestPath::parse(p.as_str()).unwrap(), p.clone());
                prop_assert!(p.as_str().starts_with('/'));
                prop_assert!(!p.as_str().contains("//"));
            }
        }
    }
}
