use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;

/// What operations plumbing can fail at. Each variant names the file,
/// address or endpoint involved; only [`Error::Unreachable`] can go away by
/// trying again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read, written or created.
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    /// A config file, or the flags laid over it, is not a valid config.
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The admin listener was given a non-loopback address without the
    /// explicit `dangerous_admin_public` override.
    #[error(
        "config admin_listen: {addr} is not a loopback address; the {role}'s admin API changes its \
         configuration. Set dangerous_admin_public = true to expose it anyway"
    )]
    PublicAdmin { addr: SocketAddr, role: &'static str },
    #[error("can't bind the {role}'s admin listener on {addr}: {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// An admin token file is unusable (empty, too large) or could not be made.
    #[error("admin token {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    /// The CLI found no admin token where it looked.
    #[error("no admin token found (tried {tried}); is the {role} running? use --token-file")]
    NoToken { role: String, tried: String },
    /// The admin API did not answer (not running, wrong address, too slow).
    #[error("can't reach the admin API at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    /// The admin API answered with an error status and this message.
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    /// The admin API answered something this client does not understand,
    /// or the request could not be built.
    #[error("admin API at {base}: {reason}")]
    BadExchange { base: String, reason: String },
}

impl Error {
    pub(crate) fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::File {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
