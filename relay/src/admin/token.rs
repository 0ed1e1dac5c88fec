//! The admin token: 32 random bytes, base64url, in `admin.token` (0600),
//! created on first start, compared in constant time.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

pub const TOKEN_FILE: &str = "admin.token";

/// Reads the token from `dir`, creating it if missing.
pub fn load_or_create_token(dir: &Path) -> Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Config {
                path,
                message: e.to_string(),
            });
        }
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| Error::Config {
        path: path.clone(),
        message: "the OS random source failed".into(),
    })?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    certs::fs::write_atomic(&path, format!("{token}\n").as_bytes(), true).map_err(|e| Error::Config {
        path,
        message: e.to_string(),
    })?;
    Ok(token)
}

/// Whether the request carries `Authorization: Bearer <token>` (the scheme
/// is case-insensitive, RFC 9110 section 11.1).
pub fn authorized<B>(req: &http::Request<B>, token: &str) -> bool {
    let Some((scheme, given)) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let req = |v: &str| http::Request::get("/").header("authorization", v).body(()).unwrap();
        assert!(authorized(&req(&format!("Bearer {t}")), &t));
        assert!(
            authorized(&req(&format!("bearer {t}")), &t),
            "the scheme is case-insensitive"
        );
        assert!(authorized(&req(&format!("BEARER  {t}")), &t));
        assert!(!authorized(&req(&format!("Basic {t}")), &t));
        assert!(!authorized(&req(&format!("Bearer {t}x")), &t));
        assert!(!authorized(&req(&t), &t));
        assert!(!authorized(&http::Request::get("/").body(()).unwrap(), &t));
    }
}
