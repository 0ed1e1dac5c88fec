use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid route {route:?}: {reason}")]
    Route { route: String, reason: String },
    #[error("gateway address {addr:?}: {reason}")]
    GatewayAddr { addr: String, reason: String },
    #[error("can't reach the gateway over QUIC ({quic}) nor TCP ({tcp})")]
    Connect { quic: String, tcp: String, retryable: bool },
    #[error(transparent)]
    Tunnel(#[from] tunnel_proto::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The admin token, the admin listener, the admin client or a file write.
    #[error(transparent)]
    Ops(#[from] ops::Error),
    #[error("store: {0}")]
    Store(String),
    /// The store on disk is damaged, or lost changes the relay had
    /// acknowledged: the relay refuses to run on it. The message names the
    /// file, what is wrong and the command that recovers it.
    #[error("{} {problem}. The relay will not run on a damaged store. {}", path.display(), recovery_hint(path))]
    Damaged { path: PathBuf, problem: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// A named limit would be exceeded; undo something first.
    #[error("limit reached: {0}")]
    Limit(String),
    /// What deployments need (the compose CLI, the Docker Engine) is not
    /// there.
    #[error("deployments are unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Deploy(#[from] deploy::Error),
}

impl Error {
    /// Whether connecting again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Tunnel(e) => e.is_retryable(),
            Error::Io(_) | Error::GatewayAddr { .. } => true,
            Error::Connect { retryable, .. } => *retryable,
            Error::Ops(e) => e.is_retryable(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to run to recover the store at `db` (its data dir is the file's
/// directory), ready to paste into a shell.
pub fn recovery_hint(db: &Path) -> String {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    format!(
        "With every relay using it stopped, run `routehub relay recover --data-dir {}`: it rebuilds the store \
         from its last backup and its change journal, reports what it restored, and keeps the damaged files aside",
        shell_word(&dir.display().to_string())
    )
}

/// `s` as one shell word: as is when that is safe, else single-quoted.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
