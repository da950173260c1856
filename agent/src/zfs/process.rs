//! Long-running `zfs send` / `zfs receive` children whose stdout / stdin carry a stream.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::error::{CommandLine, ZfsError};

/// At most this much of a child's stderr is kept for the error message.
const STDERR_LIMIT: usize = 16 * 1024;

/// The pipe size asked for between `zfs` and the agent. zfs-fuse's daemon writes the stream
/// straight into the pipe; with Linux's default 64 KiB it stalls on every few writes (a
/// measured 3x slowdown against `zfs send > file`). Capped by /proc/sys/fs/pipe-max-size.
const PIPE_SIZE: usize = 1024 * 1024;

/// Enlarges a pipe where the kernel allows it; a failure only costs speed.
fn enlarge_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE) {
        tracing::debug!(error = %e, "could not enlarge a pipe");
    }
}

fn collect_stderr(stderr: Option<impl AsyncRead + Unpin + Send + 'static>) -> JoinHandle<String> {
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if kept.len() < STDERR_LIMIT {
                        kept.extend_from_slice(&buf[..n.min(STDERR_LIMIT - kept.len())]);
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).trim().to_owned()
    })
}

async fn finish(
    mut child: Child,
    stderr: JoinHandle<String>,
    command: CommandLine,
) -> Result<(), ZfsError> {
    let status = child.wait().await.map_err(|source| ZfsError::Io {
        command: command.clone(),
        source,
    })?;
    let stderr = stderr.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(ZfsError::Failed {
            command,
            status: status.to_string(),
            stderr,
        })
    }
}

/// A running `zfs send`. Dropping it kills the child.
#[derive(Debug)]
pub struct SendProcess {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: JoinHandle<String>,
    command: CommandLine,
}

impl SendProcess {
    pub(super) fn spawn(
        program: &Path,
        command: CommandLine,
        args: &[String],
    ) -> Result<Self, ZfsError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ZfsError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stderr = collect_stderr(child.stderr.take());
        if let Some(out) = child.stdout.as_ref() {
            enlarge_pipe(out);
        }
        Ok(Self {
            stdout: child.stdout.take(),
            child,
            stderr,
            command,
        })
    }

    /// The command line.
    pub fn command(&self) -> &CommandLine {
        &self.command
    }

    /// The stream (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Waits for the send to end; an error carries its stderr.
    pub async fn wait(self) -> Result<(), ZfsError> {
        drop(self.stdout);
        finish(self.child, self.stderr, self.command).await
    }

    /// Kills the send (the transfer failed elsewhere).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running `zfs receive`. Dropping it kills the child (an incomplete stream is discarded by
/// ZFS itself: nothing partial becomes a snapshot).
#[derive(Debug)]
pub struct ReceiveProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: JoinHandle<String>,
    command: CommandLine,
}

impl ReceiveProcess {
    pub(super) fn spawn(
        program: &Path,
        command: CommandLine,
        args: &[String],
    ) -> Result<Self, ZfsError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ZfsError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stderr = collect_stderr(child.stderr.take());
        if let Some(input) = child.stdin.as_ref() {
            enlarge_pipe(input);
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stderr,
            command,
        })
    }

    /// The command line.
    pub fn command(&self) -> &CommandLine {
        &self.command
    }

    /// Where the stream goes (until [`ReceiveProcess::finish`]).
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Closes the stream and waits for the receive to end.
    pub async fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdin.take());
        finish(self.child, self.stderr, self.command).await
    }

    /// Aborts the receive.
    pub async fn abort(mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    /// The stderr collected so far is only available after the end; this is the command.
    pub fn describe(&self) -> String {
        self.command.to_string()
    }
}
