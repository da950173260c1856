//! Long-running `zfs send` / `zfs receive` children whose stdout / stdin carry a stream, and
//! the time limits on every `zfs` child.
//!
//! **Stall watchdog.** The stream end of a send or receive is [`Watched`]: a read or write that
//! stays pending for the stall limit fails with [`ZfsError::Stalled`] (as an `io::Error` of kind
//! `TimedOut` carrying it), and the child is killed when its handle is dropped. Waiting for the
//! child to exit after its stream ended is limited like a short command ([`ZfsError::Timeout`]):
//! a receive commits at the end, which can take a while on a slow pool with much dirty data.
//! Back-pressure is not a stall: the clock only runs while the agent is waiting on the child,
//! not while the child waits on the agent (a slow network keeps the pipe full, and the next
//! read returns at once).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::error::{CommandLine, ZfsError};

/// How long a killed child may take to be reaped before we stop waiting for it (a process
/// stuck in the kernel cannot be waited for; tokio reaps it later).
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Kills a child and waits (briefly) for it to be reaped.
pub(super) async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
}

/// A child's stdout or stdin whose reads or writes fail when they stay pending for longer than
/// the stall limit.
pub struct Watched<T> {
    inner: T,
    stall: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    command: CommandLine,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("command", &self.command.to_string())
            .field("stall", &self.stall)
            .finish()
    }
}

impl<T> Watched<T> {
    pub fn new(inner: T, stall: Duration, command: CommandLine) -> Self {
        Self {
            inner,
            stall,
            sleep: Box::pin(tokio::time::sleep(stall)),
            armed: false,
            command,
        }
    }

    /// The error a stall gives.
    pub fn stalled(&self) -> ZfsError {
        ZfsError::Stalled {
            command: self.command.clone(),
            after: self.stall,
        }
    }

    /// After the inner poll: disarms on progress; on pending, starts the clock (once) and
    /// fails when it ran out.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.sleep.as_mut().reset(Instant::now() + self.stall);
                    self.armed = true;
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.armed = false;
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, self.stalled())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: std::os::fd::AsFd> std::os::fd::AsFd for Watched<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

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

/// Waits for a child whose stream ended, at most `limit`; kills it if it does not exit.
async fn finish(
    child: &mut Child,
    stderr: JoinHandle<String>,
    command: CommandLine,
    limit: Duration,
) -> Result<(), ZfsError> {
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(|source| ZfsError::Io {
            command: command.clone(),
            source,
        })?,
        Err(_) => {
            kill(child).await;
            stderr.abort();
            return Err(ZfsError::Timeout {
                command,
                after: limit,
            });
        }
    };
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
    stdout: Option<Watched<ChildStdout>>,
    stderr: JoinHandle<String>,
    command: CommandLine,
    /// How long the child may take to exit once its stream ended.
    exit_limit: Duration,
}

impl SendProcess {
    pub(super) fn spawn(
        program: &Path,
        command: CommandLine,
        args: &[String],
        stall: Duration,
        exit_limit: Duration,
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
            stdout: child
                .stdout
                .take()
                .map(|out| Watched::new(out, stall, command.clone())),
            child,
            stderr,
            command,
            exit_limit,
        })
    }

    /// The command line.
    pub fn command(&self) -> &CommandLine {
        &self.command
    }

    /// The stream (once), under the stall watchdog.
    pub fn take_stdout(&mut self) -> Option<Watched<ChildStdout>> {
        self.stdout.take()
    }

    /// Waits for the send to end (at most the exit limit once its stream ended); an error
    /// carries its stderr.
    pub async fn wait(mut self) -> Result<(), ZfsError> {
        drop(self.stdout.take());
        finish(&mut self.child, self.stderr, self.command, self.exit_limit).await
    }

    /// Kills the send (the transfer failed elsewhere).
    pub async fn kill(mut self) {
        kill(&mut self.child).await;
    }
}

/// A running `zfs receive`. Dropping it kills the child (an incomplete stream is discarded by
/// ZFS itself: nothing partial becomes a snapshot).
#[derive(Debug)]
pub struct ReceiveProcess {
    child: Child,
    stdin: Option<Watched<ChildStdin>>,
    stderr: JoinHandle<String>,
    command: CommandLine,
    /// How long the child may take to exit once its stream ended.
    exit_limit: Duration,
}

impl ReceiveProcess {
    pub(super) fn spawn(
        program: &Path,
        command: CommandLine,
        args: &[String],
        stall: Duration,
        exit_limit: Duration,
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
            stdin: child
                .stdin
                .take()
                .map(|input| Watched::new(input, stall, command.clone())),
            child,
            stderr,
            command,
            exit_limit,
        })
    }

    /// The command line.
    pub fn command(&self) -> &CommandLine {
        &self.command
    }

    /// Where the stream goes (until [`ReceiveProcess::finish`]), under the stall watchdog.
    pub fn stdin(&mut self) -> Option<&mut Watched<ChildStdin>> {
        self.stdin.as_mut()
    }

    /// Closes the stream and waits for the receive to end (at most the exit limit).
    pub async fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdin.take());
        finish(&mut self.child, self.stderr, self.command, self.exit_limit).await
    }

    /// Aborts the receive.
    pub async fn abort(mut self) {
        drop(self.stdin.take());
        kill(&mut self.child).await;
    }

    /// The stderr collected so far is only available after the end; this is the command.
    pub fn describe(&self) -> String {
        self.command.to_string()
    }
}
