//! Typed errors.

use thiserror::Error;

/// Problems with the configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Failures talking to one backend.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("connect/request to backend {backend} failed: {message}")]
    Connect { backend: String, message: String },
    #[error("backend {backend} did not answer within {timeout:?}")]
    Timeout {
        backend: String,
        timeout: std::time::Duration,
    },
    #[error("cannot build upstream request: {0}")]
    Build(#[from] http::Error),
    #[error("request body larger than the limit")]
    BodyTooLarge,
}

/// Errors that end a request with a synthetic status.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("no backend could answer")]
    NoBackend,
    #[error("backend timed out")]
    Timeout,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("host not served")]
    UnknownHost,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("loop detected: the request already passed through this proxy (Via)")]
    Loop,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Errors starting or running the server.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
