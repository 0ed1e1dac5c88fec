use std::io;

use crate::reject::RejectCode;

/// Everything that can go wrong in the tunnel protocol.
///
/// Variants say what failed; [`Error::is_retryable`] says whether trying
/// again (a new connection) can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unsupported wire version {0} (this build speaks {v})", v = crate::limits::WIRE_VERSION)]
    UnsupportedWireVersion(u8),
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: &'static str },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("expected {expected}, got {got}")]
    UnexpectedFrame { expected: &'static str, got: &'static str },
    #[error("proof signature does not verify")]
    BadProof,
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("gateway rejected the relay ({code:?}): {message}")]
    Rejected { code: RejectCode, message: String },
    #[error("invalid hostname {name:?}: {reason}")]
    InvalidHostname { name: String, reason: &'static str },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    #[error("{path}: {source}")]
    File { path: String, source: io::Error },
    #[error("peer closed the tunnel: {0}")]
    Closed(String),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Whether a new attempt (new connection, later) can succeed where this failed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Quic(_) | Error::Closed(_) | Error::Truncated => true,
            Error::HandshakeTimeout(_) => true,
            Error::Rejected { code, .. } => code.is_retryable(),
            _ => false,
        }
    }
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                Error::Closed(String::from_utf8_lossy(&c.reason).into_owned())
            }
            other => Error::Quic(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
