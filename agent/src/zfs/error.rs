//! Typed errors of the ZFS driver. Every failure of a `zfs` run carries the command line, its
//! exit status and its standard error, so that a job's status message says what happened.

use std::fmt;

use zetaback_core::names::NameError;

/// A command line as it was run (argv, shown space-separated; never passed to a shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// What went wrong talking to `zfs` / `zpool`.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    /// A name was refused before it reached `zfs`.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The program could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: CommandLine,
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the program failed.
    #[error("i/o with `{command}` failed: {source}")]
    Io {
        command: CommandLine,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: CommandLine,
        status: String,
        stderr: String,
    },
    /// The program's output was not what was expected.
    #[error("unexpected output from `{command}`: {detail}")]
    Parse {
        command: CommandLine,
        detail: String,
    },
    /// The agent only destroys snapshots it made.
    #[error("refusing to destroy {snapshot}: it is not marked as made by zetaback")]
    NotOurs { snapshot: String },
    /// A short command did not end in time and was killed.
    #[error(
        "`{command}` did not finish within {}s and was killed (is zfs wedged?)",
        after.as_secs()
    )]
    Timeout {
        command: CommandLine,
        after: std::time::Duration,
    },
    /// A send or receive moved no data (or did not exit after its stream ended) for too long
    /// and was killed.
    #[error(
        "`{command}` made no progress for {}s and was killed (is zfs wedged?)",
        after.as_secs()
    )]
    Stalled {
        command: CommandLine,
        after: std::time::Duration,
    },
    /// An optional feature the local `zfs` lacks.
    #[error("the local zfs does not support {feature}")]
    Unsupported { feature: &'static str },
}

impl ZfsError {
    /// The standard error of a failed command, if any.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ZfsError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}
