//! Time limits on zfs children, against real processes that really hang: a stand-in `zfs`
//! (a script that sleeps, writes part of a stream, or stops reading) runs as the driver's
//! program, and the real timers must end it. Each test also checks that the hung process is
//! gone afterwards. A wedged zfs-fuse (seen once: `zfs create` stuck for good) behaves like
//! these from the agent's side.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zetaback_agent::zfs::{Capabilities, ReceiveRequest, SendRequest, Timeouts, Zfs, ZfsError};

const SHORT: Timeouts = Timeouts {
    command: Duration::from_secs(1),
    stall: Duration::from_secs(1),
};

/// A failsafe so that a broken timeout fails the test instead of hanging it.
const FAILSAFE: Duration = Duration::from_secs(60);

/// Writes an executable stand-in for `zfs` that records its pid in `<dir>/pid` and then runs
/// `body` (sh).
fn fake_zfs(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("zfs");
    let pid = dir.join("pid");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho $$ > '{}'\n{body}\n", pid.display()),
    )
    .expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The pid the stand-in recorded.
fn recorded_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("pid"))
        .expect("the stand-in ran")
        .trim()
        .parse()
        .expect("pid")
}

/// Whether a process is gone (or a zombie nobody waits for any more).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: u32) {
    for _ in 0..100 {
        if gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} still runs after its timeout");
}

fn driver(dir: &Path, body: &str) -> Zfs {
    let program = fake_zfs(dir, body);
    Zfs::new(&program, &program, Capabilities::none()).with_timeouts(SHORT)
}

#[tokio::test]
async fn a_short_command_that_hangs_is_killed_with_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zfs = driver(dir.path(), "exec sleep 600");
    let err = tokio::time::timeout(FAILSAFE, zfs.snapshot("tank/db", "zb-1"))
        .await
        .expect("the timeout fired")
        .expect_err("a hung zfs snapshot must fail");
    match &err {
        ZfsError::Timeout { command, after } => {
            let line = command.to_string();
            assert!(
                line.contains("snapshot") && line.contains("tank/db@zb-1"),
                "{line}"
            );
            assert_eq!(*after, SHORT.command);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        err.to_string().contains("did not finish within 1s"),
        "{err}"
    );
    wait_gone(recorded_pid(dir.path())).await;

    // The same for a list (the inventory) and for a child that ignores SIGTERM: the kill is a
    // SIGKILL.
    let zfs = driver(dir.path(), "trap '' TERM\nsleep 600 &\nwait");
    let err = tokio::time::timeout(FAILSAFE, zfs.inventory(Some("tank")))
        .await
        .expect("the timeout fired")
        .expect_err("a hung zfs get must fail");
    assert!(matches!(err, ZfsError::Timeout { .. }), "{err:?}");
    wait_gone(recorded_pid(dir.path())).await;
}

#[tokio::test]
async fn a_command_that_ends_in_time_is_not_affected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zfs = driver(dir.path(), "sleep 0.2\nexit 0");
    tokio::time::timeout(FAILSAFE, zfs.snapshot("tank/db", "zb-1"))
        .await
        .expect("no hang")
        .expect("a command that ends before its limit succeeds");
}

fn send_request() -> SendRequest {
    SendRequest {
        dataset: "tank/db".into(),
        snapshot: "zb-1".into(),
        ..Default::default()
    }
}

fn stalled_in(e: &std::io::Error) -> Option<&ZfsError> {
    e.get_ref()?.downcast_ref::<ZfsError>()
}

#[tokio::test]
async fn a_send_that_stops_producing_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zfs = driver(dir.path(), "printf abc\nexec sleep 600");
    let mut send = zfs.send(&send_request()).expect("spawn");
    let mut out = send.take_stdout().expect("stdout");
    let mut got = Vec::new();
    let err = tokio::time::timeout(FAILSAFE, out.read_to_end(&mut got))
        .await
        .expect("the watchdog fired")
        .expect_err("a stalled send must fail");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    match stalled_in(&err) {
        Some(ZfsError::Stalled { command, after }) => {
            assert!(
                command.to_string().contains("send tank/db@zb-1"),
                "{command}"
            );
            assert_eq!(*after, SHORT.stall);
        }
        other => panic!("expected Stalled, got {other:?} ({err})"),
    }
    assert_eq!(got, b"abc", "what came before the stall was delivered");
    drop(out);
    send.kill().await;
    wait_gone(recorded_pid(dir.path())).await;
}

#[tokio::test]
async fn a_send_that_never_exits_after_its_stream_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The stream ends (stdout closed) but the process stays.
    let zfs = driver(dir.path(), "printf abc\nexec sleep 600 >&-");
    let mut send = zfs.send(&send_request()).expect("spawn");
    let mut out = send.take_stdout().expect("stdout");
    let mut got = Vec::new();
    out.read_to_end(&mut got).await.expect("the stream ends");
    assert_eq!(got, b"abc");
    drop(out);
    let err = tokio::time::timeout(FAILSAFE, send.wait())
        .await
        .expect("the limit fired")
        .expect_err("a send that does not exit must fail");
    assert!(matches!(err, ZfsError::Timeout { .. }), "{err:?}");
    wait_gone(recorded_pid(dir.path())).await;
}

#[tokio::test]
async fn back_pressure_is_not_a_stall() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 4 MiB: more than the pipe holds, so the child blocks on us while we dawdle.
    let zfs = driver(dir.path(), "exec head -c 4194304 /dev/zero");
    let mut send = zfs.send(&send_request()).expect("spawn");
    let mut out = send.take_stdout().expect("stdout");
    let mut total = 0usize;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut reads = 0;
    loop {
        let n = out
            .read(&mut buf)
            .await
            .expect("no stall while we are slow");
        if n == 0 {
            break;
        }
        total += n;
        reads += 1;
        if reads <= 3 {
            // Slower than the stall limit between reads: the child waits on us, not we on it.
            tokio::time::sleep(SHORT.stall + Duration::from_millis(300)).await;
        }
    }
    assert_eq!(total, 4 * 1024 * 1024);
    drop(out);
    send.wait().await.expect("send exits 0");
}

fn receive_request() -> ReceiveRequest {
    ReceiveRequest {
        target: "backup/h1/tank/db".into(),
        force: false,
        resumable: false,
        purpose: Default::default(),
    }
}

#[tokio::test]
async fn a_receive_that_stops_reading_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zfs = driver(dir.path(), "exec sleep 600");
    let mut recv = zfs.receive(&receive_request()).expect("spawn");
    let chunk = vec![7u8; 256 * 1024];
    let stdin = recv.stdin().expect("stdin");
    let write = async {
        // More than any pipe holds: the writes must block, then fail.
        for _ in 0..64 {
            stdin.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let err = tokio::time::timeout(FAILSAFE, write)
        .await
        .expect("the watchdog fired")
        .expect_err("a receive that stops reading must fail");
    match stalled_in(&err) {
        Some(ZfsError::Stalled { command, .. }) => {
            assert!(
                command.to_string().contains("receive backup/h1/tank/db"),
                "{command}"
            );
        }
        other => panic!("expected Stalled, got {other:?} ({err})"),
    }
    recv.abort().await;
    wait_gone(recorded_pid(dir.path())).await;
}

#[tokio::test]
async fn a_receive_that_never_exits_after_its_stream_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zfs = driver(dir.path(), "cat >/dev/null\nexec sleep 600");
    let mut recv = zfs.receive(&receive_request()).expect("spawn");
    recv.stdin()
        .expect("stdin")
        .write_all(b"a whole stream")
        .await
        .expect("write");
    let err = tokio::time::timeout(FAILSAFE, recv.finish())
        .await
        .expect("the limit fired")
        .expect_err("a receive that does not exit must fail");
    assert!(matches!(err, ZfsError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("did not finish within 1s"),
        "{err}"
    );
    wait_gone(recorded_pid(dir.path())).await;
}
