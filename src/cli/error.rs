//! What can go wrong in `kubectl zetaback`, each with the context a user needs to act on it.

use std::path::PathBuf;

/// A failed command. The binary prints it (with its sources) on stderr and exits 1 (3, UNKNOWN,
/// for `violators`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("BackupPolicy {name:?} not found in namespace {namespace:?}")]
    PolicyNotFound { namespace: String, name: String },
    #[error("invalid {what} regular expression {pattern:?}: {source}")]
    Regex {
        what: &'static str,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BackupPolicy {policy}: its spec cannot be evaluated: {message}")]
    InvalidPolicy { policy: String, message: String },
    #[error(
        "cannot read the backup catalogue of policy {policy}: {message}; nothing was requested"
    )]
    CatalogueUnavailable { policy: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "refusing to archive without confirmation: standard input is not a terminal (pass --yes to confirm)"
    )]
    NeedsConfirmation,
    #[error("cancelled: nothing was created")]
    Cancelled,
    #[error("asking interactively: {0}")]
    Prompt(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding {format} output: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

impl CliError {
    /// A Kubernetes API error with what was being done.
    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| CliError::Kube { what, source }
    }

    /// The message and its chain of causes, `: `-separated.
    pub fn chain(&self) -> String {
        crate::error_chain::format(self)
    }
}
