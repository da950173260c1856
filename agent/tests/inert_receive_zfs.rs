//! Inert receives on zfs-fuse (issue 13, safe receives): a stream that carries
//! `mountpoint=<somewhere>` must not be mounted there by a restore or a replica receive.
//! zfs-fuse's `receive` has no `-u`, `-o` or `-x`, so the agent refuses a stream that carries
//! properties at all (a compound stream, `zfs send -p`) before `zfs receive` reads it.
//!
//! The "somewhere" is a fresh temporary directory standing in for `/etc`: this machine is
//! shared, and a test that got it wrong must not mount a file system over the real `/etc`.
//! (The OpenZFS VM tier uses `/etc` itself: tests/openzfs_vm.rs.)

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use zetaback_agent::transfer::{self, Endpoint, SourceDone, Upload};
use zetaback_core::api::backup_policy::Compression;

const ID: &str = "1700000000.full";
const SNAP: &str = "zb-1700000000";

fn mounted_at(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let want = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

/// `zfs send -p` of a dataset whose mountpoint is `evil`: the stream carries it. The source
/// dataset is destroyed again, so that nothing is mounted at `evil` when the test starts.
fn stream_carrying_mountpoint(pool: &Pool, evil: &Path) -> (String, Vec<u8>) {
    let (ds, _) = pool.create("evil");
    zfs(&["set", &format!("mountpoint={}", evil.display()), &ds]);
    zfs(&["snapshot", &format!("{ds}@{SNAP}")]);
    let out = Command::new("zfs")
        .args(["send", "-p", &format!("{ds}@{SNAP}")])
        .output()
        .expect("zfs send -p");
    assert!(
        out.status.success(),
        "zfs send -p: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // zfs-fuse reports a file system busy for a moment after a mountpoint change: retry.
    wait_until("the source dataset destroyed", || {
        Command::new("zfs")
            .args(["destroy", "-r", &ds])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(!mounted_at(evil), "{} still mounted", evil.display());
    // It is a compound stream (DMU_COMPOUNDSTREAM in drr_versioninfo's low bits): the kind
    // that carries properties.
    let stream = out.stdout;
    let mut v = [0u8; 8];
    v.copy_from_slice(&stream[16..24]);
    assert_eq!(u64::from_le_bytes(v) & 3, 2, "not a compound stream");
    (ds, stream)
}

fn spec(dataset: &str, receive_into: Option<String>) -> Upload {
    Upload {
        host: "src-1".into(),
        dataset: dataset.into(),
        id: ID.parse().expect("id"),
        snapshot: SNAP.into(),
        base_snapshot: None,
        compression: Compression::None,
        receive_into,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(30),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_stream_carrying_a_mountpoint_is_not_mounted_there() {
    let pool = Pool::prefixed("openzfs", "inr", "256M");
    let evil = tempfile::tempdir().expect("tempdir");
    let (ds, stream) = stream_carrying_mountpoint(&pool, evil.path());
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let target = TargetAgent::start(&tokens, &addr, store.path(), None, None);
    // What a malicious source does: upload it as a backup.
    transfer::upload(
        &transfer::client(),
        &Endpoint::new(&target.addr, "test-src-1-token"),
        &spec(&ds, None),
        Cursor::new(stream),
        ok_done(),
    )
    .await
    .expect("the file store takes any stream");

    let into = format!("{}/restore/evil", pool.name);
    let out = restore_cmd(&tokens, &target.addr, &ds, ID, &into)
        .output()
        .expect("run restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let landed_there = mounted_at(evil.path());
    if landed_there {
        // Leave nothing mounted on the temporary directory.
        let _ = Command::new("zfs").args(["destroy", "-r", &into]).output();
    }
    assert!(
        !landed_there,
        "the restored dataset was mounted where the stream said ({})",
        evil.path().display()
    );
    assert!(
        !out.status.success(),
        "the restore of a stream carrying properties was not refused: {stderr}"
    );
    assert!(
        stderr.contains("carries dataset properties"),
        "unexpected failure: {stderr}"
    );
    let listed = Command::new("zfs")
        .args(["list", "-H", "-o", "name", &into])
        .output()
        .expect("zfs list");
    assert!(!listed.status.success(), "{into} was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_of_a_stream_carrying_a_mountpoint_is_refused() {
    let pool = Pool::prefixed("openzfs", "inp", "256M");
    let replicas = Pool::prefixed("openzfs", "inq", "256M");
    let evil = tempfile::tempdir().expect("tempdir");
    let (ds, stream) = stream_carrying_mountpoint(&pool, evil.path());
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let root = format!("{}/r", replicas.name);
    let target = TargetAgent::start(&tokens, &addr, store.path(), Some(&root), None);
    let result = transfer::upload(
        &transfer::client(),
        &Endpoint::new(&target.addr, "test-src-1-token"),
        &spec(&ds, Some(root.clone())),
        Cursor::new(stream),
        ok_done(),
    )
    .await;
    let replica = format!("{root}/src-1/{ds}");
    let landed_there = mounted_at(evil.path());
    if landed_there {
        let _ = Command::new("zfs")
            .args(["destroy", "-r", &replica])
            .output();
    }
    assert!(
        !landed_there,
        "the replica was mounted where the stream said ({})",
        evil.path().display()
    );
    let err = result.expect_err("a stream carrying properties is refused");
    assert!(
        err.to_string().contains("carries dataset properties"),
        "unexpected failure: {err}"
    );
    // Nothing received, and the parents made for it are not mounted.
    let listed = Command::new("zfs")
        .args(["list", "-H", "-o", "name", &replica])
        .output()
        .expect("zfs list");
    assert!(!listed.status.success(), "{replica} was created");
}
