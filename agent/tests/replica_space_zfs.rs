//! Replica mode's free-space reserve and per-host quota on real zfs-fuse (issue 14, item 7 for
//! replicas): a replica stream that would break the pool's reserve, or its host's quota, is
//! refused with 507 and a sentence (before a byte is received when the numbers already say so,
//! else as soon as they do, with its `zfs receive` aborted), and nothing partial is left.
//!
//! The pool's free space is made small with a ZFS `quota` on the replica root (what
//! `zfs get available` reports there), so that the streams stay a few MiB to a few tens of MiB.

mod common;

use std::io::Cursor;
use std::process::Command;
use std::time::Duration;

use common::*;
use http::StatusCode;
use zetaback_agent::transfer::{self, Endpoint, SourceDone, TransferError, Upload};
use zetaback_core::api::backup_policy::Compression;

const MIB: usize = 1024 * 1024;

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

fn spec(dataset: &str, id: &str, root: &str) -> Upload {
    let sid: zetaback_core::store::StreamId = id.parse().expect("id");
    Upload {
        host: "src-1".into(),
        dataset: dataset.into(),
        id: sid,
        snapshot: format!("zb-{}", sid.ts()),
        base_snapshot: sid.base_ts().map(|b| format!("zb-{b}")),
        compression: Compression::None,
        receive_into: Some(root.into()),
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(30),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}

/// `zfs send [-i base] dataset@snap`, as bytes.
fn send(dataset: &str, snap: &str, base: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new("zfs");
    cmd.arg("send");
    if let Some(b) = base {
        cmd.args(["-i", &format!("{dataset}@{b}")]);
    }
    let out = cmd
        .arg(format!("{dataset}@{snap}"))
        .output()
        .expect("zfs send");
    assert!(
        out.status.success(),
        "zfs send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A dataset of `pool` with `mib` MiB of incompressible files and snapshot `zb-<ts>`; its
/// full stream.
fn source(pool: &Pool, child: &str, mib: usize, ts: i64) -> (String, Vec<u8>) {
    let (ds, mnt) = pool.create(child);
    write_files(&mnt, ts as u64, mib, MIB);
    zfs(&["snapshot", &format!("{ds}@zb-{ts}")]);
    let stream = send(&ds, &format!("zb-{ts}"), None);
    (ds, stream)
}

async fn upload(
    addr: &str,
    dataset: &str,
    id: &str,
    root: &str,
    body: Vec<u8>,
) -> Result<transfer::Uploaded, TransferError> {
    transfer::upload(
        &transfer::client(),
        &Endpoint::new(addr, "test-src-1-token"),
        &spec(dataset, id, root),
        Cursor::new(body),
        ok_done(),
    )
    .await
}

/// A 507 refusal saying `says` (or, when the store answered before it read the whole body
/// and closed, a connection error).
fn refused_507(result: Result<transfer::Uploaded, TransferError>, says: &str) {
    match result {
        Ok(up) => panic!(
            "not refused: stored {} bytes as {:?}",
            up.response.bytes, up.response.replica
        ),
        Err(TransferError::Rejected { status, message }) => {
            assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{message}");
            assert!(message.contains(says), "{message}");
        }
        Err(TransferError::Connection(e)) => eprintln!("refused by closing: {e}"),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// Every dataset and snapshot under `root`.
fn everything_under(root: &str) -> Vec<String> {
    zfs(&["list", "-H", "-r", "-t", "all", "-o", "name", root])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A target agent receiving replicas under `root` (and its file store's directory).
fn target_agent(tokens: &Tokens, root: &str, extra: &[&str]) -> (TargetAgent, tempfile::TempDir) {
    let store = tempfile::tempdir().expect("store");
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = TargetAgent::start_with(tokens, &addr, store.path(), Some(root), None, extra);
    (agent, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_would_break_the_pool_reserve_is_refused_and_leaves_nothing() {
    let pool = Pool::prefixed("proxy", "rsv", "128M");
    let root = format!("{}/r", pool.name);
    zfs(&["create", "-o", "canmount=off", &root]);
    // 40 MiB free under the root, a 24 MiB reserve: a stream may take 28 MiB at most (it is
    // stopped when less than half the reserve would be left).
    zfs(&["set", "quota=40M", &root]);
    let (big, big_stream) = source(&pool, "big", 32, 1_700_000_000);
    let tokens = Tokens::new();
    let (target, _store) = target_agent(&tokens, &root, &["--replica-min-free-bytes", "25165824"]);

    let result = upload(&target.addr, &big, "1700000000.full", &root, big_stream).await;
    refused_507(result, "under half the reserve");
    let replica = format!("{root}/src-1/{big}");
    wait_until("the aborted receive gone", || {
        !everything_under(&root)
            .iter()
            .any(|d| d.starts_with(&replica))
    });

    // Less free than the reserve: refused before a byte is received.
    zfs(&["set", "quota=20M", &root]);
    let (small, small_stream) = source(&pool, "small", 1, 1_700_000_100);
    let result = upload(
        &target.addr,
        &small,
        "1700000100.full",
        &root,
        small_stream.clone(),
    )
    .await;
    refused_507(result, "no new replica stream until space is freed");
    let small_replica = format!("{root}/src-1/{small}");
    assert!(
        !everything_under(&root).contains(&small_replica),
        "{:?}",
        everything_under(&root)
    );

    // Space freed: the same stream is received.
    zfs(&["set", "quota=none", &root]);
    let up = upload(&target.addr, &small, "1700000100.full", &root, small_stream)
        .await
        .expect("received once the pool has room");
    assert_eq!(up.response.replica.as_deref(), Some(small_replica.as_str()));
    assert!(everything_under(&root).contains(&format!("{small_replica}@zb-1700000100")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_its_hosts_quota_is_stopped_and_its_base_kept() {
    let pool = Pool::prefixed("proxy", "quo", "128M");
    let root = format!("{}/r", pool.name);
    zfs(&["create", "-o", "canmount=off", &root]);
    let (ds, full) = source(&pool, "db", 1, 1_700_000_000);
    let tokens = Tokens::new();
    let (target, _store) = target_agent(
        &tokens,
        &root,
        &[
            "--host-quota-bytes",
            "8388608",
            "--replica-min-free-bytes",
            "0",
        ],
    );
    upload(&target.addr, &ds, "1700000000.full", &root, full)
        .await
        .expect("1 MiB fits the 8 MiB quota");

    // 10 MiB more: over the quota while it is received.
    let mnt = mountpoint(&ds);
    write_files(&mnt.join("more"), 7, 10, MIB);
    zfs(&["snapshot", &format!("{ds}@zb-1700000100")]);
    let incr = send(&ds, "zb-1700000100", Some("zb-1700000000"));
    let result = upload(
        &target.addr,
        &ds,
        "1700000100.incremental.1700000000",
        &root,
        incr,
    )
    .await;
    refused_507(result, "over its quota");
    let replica = format!("{root}/src-1/{ds}");
    wait_until("the aborted receive gone", || {
        let all = everything_under(&root);
        all.contains(&format!("{replica}@zb-1700000000"))
            && !all
                .iter()
                .any(|d| d.contains("zb-1700000100") || d.contains('%'))
    });
}
