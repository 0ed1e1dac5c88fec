use std::path::PathBuf;

/// Everything that can go wrong talking to the Docker Engine or running
/// the compose CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no Docker Engine at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("Docker Engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    #[error("deployments are off: {0}")]
    ComposeUnavailable(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("the compose file is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("`{command}` failed: {output}")]
    Failed { command: String, output: String },
    #[error("`{command}` did not finish within {after:?}")]
    TimedOut {
        command: String,
        after: std::time::Duration,
    },
    #[error("could not run `{command}`: {reason}")]
    Spawn { command: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
