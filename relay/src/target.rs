//! A route's target: the local origin its requests go to.

use http::Uri;

/// Where a route's requests go: an `http://host:port` origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`
    pub authority: http::uri::Authority,
    pub url: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let url = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            format!("http://127.0.0.1:{s}")
        } else {
            s.to_owned()
        };
        let uri: Uri = url.parse().map_err(|_| format!("{s:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(format!("scheme {other}:// is not supported; use http://")),
            None => return Err("the target needs a scheme, e.g. http://127.0.0.1:3000".into()),
        }
        let authority = uri.authority().cloned().ok_or("the target needs a host")?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("a target is an origin (http://host:port), without path or query".into());
        }
        if authority.as_str().contains('@') {
            return Err("credentials in the target URL are not supported".into());
        }
        let authority = if authority.port().is_some() {
            authority
        } else {
            format!("{}:80", authority.host())
                .parse()
                .map_err(|_| "bad target host")?
        };
        Ok(Target {
            url: format!("http://{authority}"),
            authority,
        })
    }
}
