use std::path::PathBuf;

use http::StatusCode;

/// Everything the gateway can fail at: starting up, and each request.
/// Request errors become responses in one place, [`crate::proxy::error_response`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}:{line}: {message}")]
    AuthorizedKeys { path: String, line: usize, message: String },
    #[error("identity store {0}")]
    Identity(String),
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("can't bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Certs(#[from] certs::Error),
    /// The admin token, the admin listener or a file write.
    #[error(transparent)]
    Ops(#[from] ops::Error),
    #[error(transparent)]
    Tunnel(#[from] tunnel_proto::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),

    // Per request. Blame: the client.
    #[error("the request has no valid Host")]
    MissingHost,
    #[error("{0}")]
    BadPath(String),
    #[error("request headers over the limit: {0}")]
    HeadersTooLarge(String),
    #[error("no site is served at {0}")]
    UnknownHost(String),
    #[error("no route for {host}{path}")]
    NoRoute { host: String, path: String },
    #[error("{host} is not served on this TLS connection (it was opened for {sni})")]
    Misdirected { host: String, sni: String },
    #[error("{reason}")]
    Unauthorized { reason: String, challenge: String },
    #[error("{0}")]
    Forbidden(String),
    // Blame: the relay or the tunnel.
    #[error("{0} is registered, but no relay is connected for it")]
    NoRelay(String),
    #[error("the relay for {host} could not take the request: {reason}")]
    RelayUnavailable { host: String, reason: String },
    #[error("{}", refused_text(route, *refusal))]
    Refused {
        route: String,
        refusal: tunnel_proto::http::Refusal,
    },
    #[error("{route} did not answer within {secs} s")]
    RelayTimeout { route: String, secs: u64 },
    #[error("{0} is failing its health check")]
    Unhealthy(String),
}

impl Error {
    /// HTTP status for a request that failed with this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MissingHost | Error::BadPath(_) => StatusCode::BAD_REQUEST,
            Error::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UnknownHost(_) | Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            Error::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NoRelay(_) | Error::RelayUnavailable { .. } | Error::Refused { .. } => StatusCode::BAD_GATEWAY,
            Error::RelayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-readable kind, for metrics and the error header.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingHost => "missing_host",
            Error::BadPath(_) => "bad_path",
            Error::HeadersTooLarge(_) => "headers_too_large",
            Error::UnknownHost(_) => "unknown_host",
            Error::NoRoute { .. } => "no_route",
            Error::Misdirected { .. } => "misdirected",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NoRelay(_) => "no_relay",
            Error::RelayUnavailable { .. } => "relay_unavailable",
            Error::Refused { refusal, .. } => refusal.as_str(),
            Error::RelayTimeout { .. } => "relay_timeout",
            Error::Unhealthy(_) => "unhealthy",
            _ => "internal",
        }
    }
}

/// What a public client reads when a relay could not reach a route's
/// target: the route, never the target's address.
fn refused_text(route: &str, refusal: tunnel_proto::http::Refusal) -> String {
    match refusal {
        tunnel_proto::http::Refusal::RouteGone => format!("{route} is no longer served by its relay"),
        tunnel_proto::http::Refusal::TargetUnreachable => {
            format!("{route} is unreachable: its local service did not take the connection")
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
