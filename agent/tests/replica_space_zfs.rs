//! Replica mode's free-space reserve and per-host quota on real zfs-fuse (issue 14, item 7 for
//! replicas): a replica stream that would break the pool's reserve, or its host's quota, is
//! refused with 507 and a sentence (before a byte is received when the numbers already say so,
//! else as soon as they do, with its `zfs receive` aborted), and nothing partial is left.
//!
//! The pool's free space is made small with a ZFS `quota` on the replica root (what
//! `zfs get available` reports there), so that the streams stay a few MiB to a few tens of MiB.
//!
//! Also: two replica streams from different hosts, each fitting alone but not together, are
//! not both admitted (the first holds its announced size until it ends); and a stream stopped
//! mid-way leaves none of the empty `canmount=off` parents it made for its new replica (and
//! never removes a parent that was there before, or one that holds something).

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

/// The token of host `src-2`'s agent, added to the store's identities by [`two_hosts`].
const SRC2_TOKEN: &str = "test-src-2-token";

/// The callers of a store that takes replicas from two hosts, `src-1` and `src-2`.
fn two_hosts() -> Tokens {
    let tokens = Tokens::new();
    std::fs::write(
        &tokens.identities,
        format!(
            r#"[{{"token": "test-src-1-token", "hosts": ["src-1"]}},
                {{"token": "{SRC2_TOKEN}", "hosts": ["src-2"]}},
                {{"token": "test-controller-token", "role": "controller"}}]"#
        ),
    )
    .expect("identities");
    tokens
}

/// The head of a full replica stream of `dataset` (snapshot `zb-<ts>`) from `host` into
/// `root`, `len` bytes announced; see [`raw_put::RawPut`].
async fn replica_put(
    addr: &str,
    host: &str,
    token: &str,
    dataset: &str,
    ts: i64,
    root: &str,
    len: usize,
) -> raw_put::RawPut {
    raw_put::RawPut::start(
        addr,
        &format!("/v1/streams/{host}/{}/{ts}.full", dataset.replace('/', "+")),
        token,
        &[
            ("x-zetaback-snapshot", &format!("zb-{ts}")),
            ("x-zetaback-receive-into", root),
        ],
        len,
    )
    .await
}

/// Sends the whole `body` of an admitted stream; its answer must be 201.
async fn send_all(mut put: raw_put::RawPut, body: &[u8], what: &str) {
    if let Err(refusal) = put.admitted().await {
        panic!("{what} refused: {} {}", refusal.status, refusal.body);
    }
    put.send(body).await.expect("send");
    let answer = put.answer().await;
    assert_eq!(answer.status, 201, "{what}: {}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replica_streams_hold_their_announced_size_at_admission() {
    let pool = Pool::prefixed("replica14", "cc", "160M");
    let root = format!("{}/r", pool.name);
    zfs(&["create", "-o", "canmount=off", &root]);
    // 40 MiB free under the root, an 8 MiB reserve: an 18 MiB stream fits alone (8 + 18 <= 40),
    // two do not (8 + 36 > 40).
    zfs(&["set", "quota=40M", &root]);
    let ts = 1_700_000_000;
    let (a, a_stream) = source(&pool, "a", 18, ts);
    let (b, b_stream) = source(&pool, "b", 18, ts);
    let (c, c_stream) = source(&pool, "c", 2, ts);
    let tokens = two_hosts();
    let (target, _store) = target_agent(&tokens, &root, &["--replica-min-free-bytes", "8388608"]);
    let addr = &target.addr;
    let src1 = "test-src-1-token";

    let mut first = replica_put(addr, "src-1", src1, &a, ts, &root, a_stream.len()).await;
    first.admitted().await.expect("the first stream fits");
    first.send(&a_stream[..MIB]).await.expect("send");

    let mut second = replica_put(addr, "src-2", SRC2_TOKEN, &b, ts, &root, b_stream.len()).await;
    let refusal = match second.admitted().await {
        Err(refusal) => refusal,
        Ok(()) => {
            let sent = second.send(&b_stream).await;
            let answer = second.answer().await;
            panic!(
                "a second {}-byte replica stream was admitted while the first held {} bytes of 40 MiB free with an 8 MiB reserve: sent {sent:?}, answered {} {}",
                b_stream.len(),
                a_stream.len(),
                answer.status,
                answer.body
            );
        }
    };
    assert_eq!(refusal.status, 507, "{}", refusal.body);
    assert!(
        refusal
            .body
            .contains("held for replica streams being received")
            && refusal.body.contains("--replica-min-free-bytes"),
        "{}",
        refusal.body
    );
    drop(second);
    assert!(
        !everything_under(&root)
            .iter()
            .any(|d| d.starts_with(&format!("{root}/src-2"))),
        "the refused stream left {:?}",
        everything_under(&root)
    );

    // The first stream is cut off: its receive is aborted, its hold released, and the second
    // now fits.
    drop(first);
    let a_replica = format!("{root}/src-1/{a}");
    wait_until("the cut stream's receive gone", || {
        !everything_under(&root)
            .iter()
            .any(|d| d.starts_with(&a_replica))
    });
    let mut admitted = None;
    for _ in 0..100 {
        let mut put = replica_put(addr, "src-2", SRC2_TOKEN, &b, ts, &root, b_stream.len()).await;
        match put.admitted().await {
            Ok(()) => {
                admitted = Some(put);
                break;
            }
            // The cut stream's request may take a moment to end (and ZFS to free its blocks).
            Err(r) if r.status == 507 => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(r) => panic!("{} {}", r.status, r.body),
        }
    }
    let mut second = admitted.expect("the second stream admitted once the first was cut off");
    second.send(&b_stream).await.expect("send");
    let answer = second.answer().await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    // About 22 MiB free now: a 2 MiB stream fits (8 + 2 <= 22) only if the received one's
    // hold is gone (22 - 18 < 10).
    send_all(
        replica_put(addr, "src-1", src1, &c, ts, &root, c_stream.len()).await,
        &c_stream,
        "a small stream after the second was received",
    )
    .await;
    let all = everything_under(&root);
    assert!(
        all.contains(&format!("{root}/src-2/{b}@zb-{ts}")),
        "{all:?}"
    );
    assert!(
        all.contains(&format!("{root}/src-1/{c}@zb-{ts}")),
        "{all:?}"
    );
}

/// Waits (bounded) until `zfs list -r -t all` of `root` is `expected`, and asserts it.
fn settles_to(root: &str, expected: &[String]) {
    for _ in 0..120 {
        if everything_under(root) == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(everything_under(root), expected);
}

/// A full stream of `dataset` from `src-1` into `root`, cut off after its first MiB.
async fn cut_off(addr: &str, dataset: &str, ts: i64, root: &str, stream: &[u8]) {
    let mut put = replica_put(
        addr,
        "src-1",
        "test-src-1-token",
        dataset,
        ts,
        root,
        stream.len(),
    )
    .await;
    put.admitted().await.expect("admitted");
    put.send(&stream[..MIB]).await.expect("send");
    // Let the store receive that much before the connection is cut.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(put);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_leaves_no_empty_parent_it_made() {
    let pool = Pool::prefixed("replica14", "par", "128M");
    let root = format!("{}/r", pool.name);
    zfs(&["create", "-o", "canmount=off", &root]);
    let ts = 1_700_000_000;
    let (x, x_stream) = source(&pool, "x", 4, ts);
    let (y, y_stream) = source(&pool, "y", 1, ts);
    let tokens = Tokens::new();
    let (target, _store) = target_agent(&tokens, &root, &["--replica-min-free-bytes", "0"]);
    let addr = &target.addr;
    let token = "test-src-1-token";
    let host_parent = format!("{root}/src-1");
    let pool_parent = format!("{host_parent}/{}", pool.name);

    // Every parent was made by the stream: all go with it; the root, there before, stays.
    cut_off(addr, &x, ts, &root, &x_stream).await;
    settles_to(&root, std::slice::from_ref(&root));

    // A parent that was there before the stream stays; the one it made goes.
    zfs(&["create", "-o", "canmount=off", &host_parent]);
    cut_off(addr, &x, ts, &root, &x_stream).await;
    settles_to(&root, &[root.clone(), host_parent.clone()]);

    // A parent the stream made that holds another replica by the time the stream stops is
    // not empty: it stays, and so does every parent above it.
    zfs(&["destroy", &host_parent]);
    settles_to(&root, std::slice::from_ref(&root));
    let mut put = replica_put(addr, "src-1", token, &x, ts, &root, x_stream.len()).await;
    put.admitted().await.expect("admitted");
    put.send(&x_stream[..MIB]).await.expect("send");
    wait_until("the stream's parents made", || {
        everything_under(&root).contains(&pool_parent)
    });
    send_all(
        replica_put(addr, "src-1", token, &y, ts, &root, y_stream.len()).await,
        &y_stream,
        "another replica under the same parents",
    )
    .await;
    drop(put);
    let y_replica = format!("{root}/src-1/{y}");
    settles_to(
        &root,
        &[
            root.clone(),
            host_parent.clone(),
            pool_parent.clone(),
            y_replica.clone(),
            format!("{y_replica}@zb-{ts}"),
        ],
    );
}
