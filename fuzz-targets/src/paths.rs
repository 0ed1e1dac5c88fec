//! Request paths: the one canonical form the gateway routes, polices and
//! forwards (see `tunnel_proto::path`).

use tunnel_proto::path::{RequestPath, normalize_path_prefix};

/// The first line is a request path, the second a route prefix.
pub fn request_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or("");
    let prefix = lines.next().and_then(|p| normalize_path_prefix(p).ok());
    let Ok(path) = RequestPath::parse(raw) else { return };
    let canonical = path.as_str();
    // One form: canonical paths are fixed points, start with '/', hold no
    // empty, dot or escaped-separator segments, only printable ASCII.
    assert_eq!(RequestPath::parse(canonical).ok().as_ref(), Some(&path), "{raw:?}");
    assert!(canonical.starts_with('/'));
    assert!(!canonical.contains("//"), "{canonical:?}");
    assert!(canonical.bytes().all(|b| b.is_ascii_graphic()), "{canonical:?}");
    for segment in canonical[1..].split('/') {
        let name = segment.split(';').next().unwrap_or("");
        assert!(name != "." && name != "..", "{canonical:?}");
    }
    let lower = canonical.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
    // Every prefix matches itself and "/" matches everything; what is
    // forwarded under a matching prefix is a canonical path matched the
    // same way.
    assert!(path.matches("/"));
    if let Some(prefix) = prefix {
        let as_path = RequestPath::parse(&prefix).expect("a normalised prefix is a path");
        assert!(as_path.matches(&prefix), "{prefix:?}");
        if path.matches(&prefix) {
            let forwarded = RequestPath::parse(&path.forwarded(&prefix)).expect("forwarded paths parse");
            assert_eq!(forwarded.as_str(), path.forwarded(&prefix), "{raw:?} under {prefix:?}");
            assert!(forwarded.matches(&prefix), "{raw:?} under {prefix:?}");
        }
    }
}
