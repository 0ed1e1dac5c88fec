//! Hostnames, host patterns, `Host` authorities, path prefixes and CIDRs.

use std::net::IpAddr;

use tunnel_proto::limits::MAX_HOSTNAME_LEN;
use tunnel_proto::names::{host_of_authority, normalize_hostname};
use tunnel_proto::path::{MAX_PATH_PREFIX, RequestPath, normalize_path_prefix};
use tunnel_proto::{Cidr, HostPattern};

/// One string through every name parser (each line of it, too, so a
/// corpus file can hold several cases).
///
/// Invariants: a normalised hostname or path prefix is a fixed point of its
/// normaliser; a parsed pattern re-parses to itself from its printed form,
/// fits in a `Hello`, and matches at least one valid hostname (a wildcard
/// that matches none is a route nobody can reach); a CIDR re-parses to
/// itself and contains its own address.
pub fn host_pattern(data: &[u8]) {
    let text = crate::text(data);
    check(&text);
    for line in text.lines() {
        check(line);
    }
}

fn check(s: &str) {
    if let Ok(h) = normalize_hostname(s) {
        assert!(h.len() <= MAX_HOSTNAME_LEN && !h.ends_with('.'));
        assert_eq!(h, h.to_ascii_lowercase());
        assert_eq!(
            normalize_hostname(&h).ok().as_deref(),
            Some(h.as_str()),
            "not a fixed point"
        );
        assert_eq!(HostPattern::parse(&h).ok(), Some(HostPattern::Exact(h.clone())));
        assert_eq!(host_of_authority(&h).as_deref(), Some(h.as_str()));
        assert_eq!(host_of_authority(&format!("{h}:443")).as_deref(), Some(h.as_str()));
    }
    if let Ok(p) = HostPattern::parse(s) {
        check_pattern(&p);
    }
    if let Some(h) = host_of_authority(s) {
        assert_eq!(normalize_hostname(&h).ok().as_deref(), Some(h.as_str()));
    }
    if let Ok(p) = normalize_path_prefix(s) {
        assert!(p.starts_with('/') && p.len() <= MAX_PATH_PREFIX);
        assert!(p == "/" || !p.ends_with('/'));
        assert_eq!(
            normalize_path_prefix(&p).ok().as_deref(),
            Some(p.as_str()),
            "not a fixed point"
        );
        // A prefix is a request path it matches, as are the paths under
        // it; a longer last segment is not under it.
        let path = |s: &str| RequestPath::parse(s).expect("a normalised prefix is a path");
        assert!(path(&p).matches(&p));
        assert!(path(&format!("{p}/x")).matches(&p));
        assert!(p == "/" || !path(&format!("{p}x")).matches(&p));
    }
    if let Ok(c) = s.parse::<Cidr>() {
        check_cidr(c);
    }
}

/// A pattern the parser accepted.
pub(crate) fn check_pattern(p: &HostPattern) {
    let text = p.to_string();
    assert_eq!(
        HostPattern::parse(&text).ok().as_ref(),
        Some(p),
        "{text:?} re-parses differently"
    );
    assert!(text.len() <= MAX_HOSTNAME_LEN, "{text:?} does not fit in a Hello");
    assert!(p.overlaps(p));
    match p {
        HostPattern::Exact(h) => {
            assert!(p.matches(h));
            assert_eq!(p.specificity(), usize::MAX);
        }
        HostPattern::Wildcard(suffix) => {
            assert!(!p.matches(suffix), "a wildcard matches its apex");
            let below = format!("a.{suffix}");
            assert!(
                normalize_hostname(&below).is_ok(),
                "*.{suffix} matches no valid hostname"
            );
            assert!(p.matches(&below));
            assert!(p.specificity() < HostPattern::Exact(below).specificity());
        }
    }
}

fn check_cidr(c: Cidr) {
    let text = c.to_string();
    assert_eq!(text.parse::<Cidr>(), Ok(c), "{text:?} re-parses differently");
    let (addr, len) = text.split_once('/').expect("a CIDR prints as addr/len");
    let addr: IpAddr = addr.parse().expect("a CIDR's address parses");
    let len: u8 = len.parse().expect("a CIDR's length parses");
    // An IPv4-mapped client is matched as IPv4, which only an IPv4-mapped
    // network (/96 or longer) takes: a wider IPv6 one means IPv6 clients.
    let mapped_in_wide_v6 = matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) && len < 96;
    assert!(
        c.contains(addr) || mapped_in_wide_v6,
        "{text} does not contain its own address"
    );
    // An IPv4 client may show up as an IPv4-mapped IPv6 address.
    if let IpAddr::V4(v4) = addr {
        assert!(c.contains(IpAddr::V6(v4.to_ipv6_mapped())));
    }
}
