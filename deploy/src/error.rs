use std::path::PathBuf;

/// Everything that can go wrong talking to the Docker Engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no Docker Engine at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("Docker Engine: {0}")]
    Engine(#[from] bollard::errors::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
