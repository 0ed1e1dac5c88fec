//! The admin token: 32 random bytes, base64url, in `admin.token` (0600) in
//! the data dir, created on first start, compared in constant time. The
//! gateway and the relay check it the same way; the CLI reads it.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::fs::{Access, ensure_private_dir, read_bounded, write_atomic};

/// File of the admin API's bearer token in a data dir.
pub const TOKEN_FILE: &str = "admin.token";
/// Random bytes in a new token.
const TOKEN_BYTES: usize = 32;
/// Largest token file read; a token is 43 characters.
const MAX_TOKEN_FILE: u64 = 4096;

/// An admin bearer token. Never shown in Debug output.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads `admin.token` from `dir`, creating it (and `dir`, mode 0700)
    /// with a fresh random token if it is missing or empty. The file is
    /// 0600 and replaced atomically.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKEN_FILE);
        match read_bounded(&path, MAX_TOKEN_FILE) {
            Ok(t) if !t.trim().is_empty() => return Ok(AdminToken(t.trim().to_owned())),
            Ok(_) => {}
            Err(Error::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new().fill(&mut bytes).map_err(|_| Error::Token {
            path: path.clone(),
            reason: "the OS random source failed".into(),
        })?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        ensure_private_dir(dir)?;
        write_atomic(&path, format!("{token}\n").as_bytes(), Access::Private)?;
        Ok(AdminToken(token))
    }

    /// Reads a token file another process wrote (the CLI's side). An empty
    /// file is an error rather than a token nobody accepts.
    pub fn read(path: &Path) -> Result<Self> {
        let text = read_bounded(path, MAX_TOKEN_FILE)?;
        Self::from_text(&text).ok_or_else(|| Error::Token {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        })
    }

    /// A token given as text (an environment variable); `None` if blank.
    pub fn from_text(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| AdminToken(t.to_owned()))
    }

    /// The token itself, to send it. Never log it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether the request carries `Authorization: Bearer <token>`. The
    /// scheme is matched case-insensitively (RFC 9110 section 11.1); the
    /// token is compared in constant time.
    pub fn admits<B>(&self, req: &http::Request<B>) -> bool {
        let Some((scheme, given)) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(given.trim().as_bytes(), self.0.as_bytes())
    }
}

/// Equal slices, in a time that depends on their length only (the length
/// of a token is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let t = AdminToken::load_or_create(&data).unwrap();
        assert_eq!(t.secret().len(), 43);
        assert_eq!(AdminToken::load_or_create(&data).unwrap().secret(), t.secret());
        assert_eq!(AdminToken::read(&data.join(TOKEN_FILE)).unwrap().secret(), t.secret());
        assert!(!format!("{t:?}").contains(t.secret()), "never in Debug output");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&data.join(TOKEN_FILE)), 0o600);
            assert_eq!(mode(&data), 0o700, "a data dir it creates is private");
        }
        let secret = t.secret();
        let req = |v: &str| http::Request::get("/").header("authorization", v).body(()).unwrap();
        assert!(t.admits(&req(&format!("Bearer {secret}"))));
        assert!(
            t.admits(&req(&format!("bearer {secret}"))),
            "the scheme is case-insensitive"
        );
        assert!(t.admits(&req(&format!("BEARER  {secret}"))));
        assert!(!t.admits(&req(&format!("Basic {secret}"))));
        assert!(!t.admits(&req(&format!("Bearer {secret}x"))));
        assert!(!t.admits(&req("Bearer x")));
        assert!(!t.admits(&req(secret)));
        assert!(!t.admits(&http::Request::get("/").body(()).unwrap()));
    }

    #[test]
    fn an_empty_token_file_is_replaced_on_the_server_and_refused_by_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "\n").unwrap();
        let err = AdminToken::read(&path).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let t = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(AdminToken::read(&path).unwrap().secret(), t.secret());
        assert!(AdminToken::from_text("  ").is_none());
    }
}
