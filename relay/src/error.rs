use std::path::PathBuf;

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
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// A named limit would be exceeded; undo something first.
    #[error("limit reached: {0}")]
    Limit(String),
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
