//! The store agent against a hostile or broken client (issue 14, items 7 and 8): what one
//! client may take (connections, header time, stream size, a host's bytes, free space, streams
//! at once, zstd memory, catalogue scans), HTTP/1 only, and bodies that are not ZFS streams.
//! No ZFS needed; the disk-full cases run on a small tmpfs (the tests run as root). Streams
//! admitted and still being written hold their size (announced, estimated, or the reserve):
//! two that fit alone but not together are not both admitted.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{Tmpfs, temp_stream, zfs_stream_bytes, zstd_frame_with_window};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::{Caller, StaticIdentities};
use zetaback_agent::limits::{ListenerLimits, StoreLimits};
use zetaback_agent::store_server::{ServerState, serve_with};
use zetaback_agent::transfer::{self, Endpoint, SourceDone, TransferError, Upload};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::StreamId;

const TOKEN: &str = "source-token";
const ADMIN: &str = "admin-token";
const MIB: usize = 1024 * 1024;

/// Starts a store agent on `root` with these limits; its address and a handle on its store.
async fn start(root: &Path, limits: StoreLimits, listener: ListenerLimits) -> (String, FileStore) {
    let store = FileStore::new(root);
    store.recover().await.expect("recover");
    let state = ServerState::new(
        std::sync::Arc::new(
            StaticIdentities::new()
                .with(TOKEN, Caller::agent("node-1", ["db-1", "db-2"]))
                .controller(ADMIN),
        ),
        Some(store.clone()),
        None,
    )
    .with_limits(limits);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr").to_string();
    tokio::spawn(serve_with(socket, state, listener));
    (addr, store)
}

fn no_reserve() -> StoreLimits {
    StoreLimits {
        min_free_bytes: 0,
        ..StoreLimits::default()
    }
}

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

fn upload_spec(host: &str, id: &str, compression: Compression) -> Upload {
    let sid: StreamId = id.parse().expect("id");
    Upload {
        host: host.into(),
        dataset: "tank/db".into(),
        id: sid,
        snapshot: format!("zb-{}", sid.ts()),
        base_snapshot: sid.base_ts().map(|b| format!("zb-{b}")),
        compression,
        receive_into: None,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(30),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}

async fn upload(
    addr: &str,
    host: &str,
    id: &str,
    body: Vec<u8>,
    compression: Compression,
) -> Result<transfer::Uploaded, TransferError> {
    let ep = Endpoint::new(addr, TOKEN);
    transfer::upload(
        &transfer::client(),
        &ep,
        &upload_spec(host, id, compression),
        std::io::Cursor::new(body),
        ok_done(),
    )
    .await
}

/// A PUT of `body` as one piece with a Content-Length; status and answer.
async fn put_raw(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-zetaback-snapshot", "zb-1700000000");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).expect("req"))
        .await
        .expect("request");
    let status = resp.status();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    (status, text)
}

/// Every file under `dir`, relative, sorted.
fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("under").display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Waits until no temporary file is left under `dir` (a refused stream is discarded by its
/// request's task, which may end a moment after the answer).
async fn no_temporaries(dir: &Path) {
    for _ in 0..200 {
        if !all_files(dir).iter().any(|f| f.contains(".tmp-")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("temporary files left: {:?}", all_files(dir));
}

fn backups(root: &Path) -> usize {
    zetaback_core::store::scan(root)
        .expect("scan")
        .backups
        .len()
}

/// A refusal: the answer's status, or (when the target answered before it read the whole
/// body and closed) a connection error; never a stored backup.
fn refused_with(err: &TransferError, status: StatusCode) {
    match err {
        TransferError::Rejected { status: s, .. } => assert_eq!(*s, status, "{err}"),
        TransferError::Connection(_) => {}
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn h2c_is_not_spoken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _) = start(dir.path(), no_reserve(), ListenerLimits::default()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .uri(format!("http://{addr}/healthz"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let answer = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("an answer or an error within 20 s");
    if let Ok(resp) = answer {
        panic!(
            "the agent answered HTTP/2 with prior knowledge (h2c): {:?} {}",
            resp.version(),
            resp.status()
        );
    }
    // HTTP/1.1 still works.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .uri(format!("http://{addr}/healthz"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        client.request(req).await.expect("http/1.1").status(),
        StatusCode::OK
    );
}

/// Reads until the peer closes (or the bound passes); what arrived, and whether it closed.
async fn read_until_closed(conn: &mut tokio::net::TcpStream, bound: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test]
async fn slow_request_heads_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = ListenerLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ListenerLimits::default()
    };
    let (addr, _) = start(dir.path(), no_reserve(), limits).await;
    // Half a request head, then nothing (slowloris).
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(20)).await;
    assert!(
        closed,
        "a connection with half a request head was still open after 20 s"
    );
    // A keep-alive connection that asks nothing more.
    let mut idle = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (text, closed) = read_until_closed(&mut idle, Duration::from_secs(20)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed,
        "an idle keep-alive connection was still open after 20 s"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = ListenerLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(120),
    };
    let (addr, _) = start(dir.path(), no_reserve(), limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(c);
    }
    // Let the agent accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (text, closed) = read_until_closed(&mut third, Duration::from_secs(20)).await;
    assert!(
        closed,
        "the connection over the cap was neither answered nor closed"
    );
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "a third connection was served with a cap of two: {text}"
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "{text}"
    );
    // A slot freed is a slot for the next one.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        let mut c = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let (text, _) = read_until_closed(&mut c, Duration::from_secs(20)).await;
        if text.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "no connection was served after one of the two was closed"
    );
}

#[tokio::test]
async fn streams_over_the_size_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StoreLimits {
        max_stream_bytes: Some(MIB as u64),
        ..no_reserve()
    };
    let (addr, _) = start(dir.path(), limits, ListenerLimits::default()).await;
    // Announced with Content-Length: refused before the body is read, with a clear answer.
    let (status, text) = put_raw(
        &addr,
        "/v1/streams/db-1/tank+db/1700000000.full",
        &[],
        zfs_stream_bytes(2 * MIB, 1, false),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("limit"), "{text}");
    // Streamed (chunked, no length): stopped once over the limit, nothing kept.
    let err = upload(
        &addr,
        "db-1",
        "1700000001.full",
        zfs_stream_bytes(3 * MIB, 2, false),
        Compression::None,
    )
    .await
    .expect_err("a 3 MiB stream with a 1 MiB limit");
    refused_with(&err, StatusCode::PAYLOAD_TOO_LARGE);
    no_temporaries(dir.path()).await;
    assert_eq!(backups(dir.path()), 0);
    // Under the limit: stored.
    upload(
        &addr,
        "db-1",
        "1700000002.full",
        zfs_stream_bytes(MIB / 2, 3, false),
        Compression::None,
    )
    .await
    .expect("a 512 KiB stream");
    assert_eq!(backups(dir.path()), 1);
}

#[tokio::test]
async fn a_host_over_its_quota_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StoreLimits {
        host_quota_bytes: Some(3 * MIB as u64),
        ..no_reserve()
    };
    let (addr, _) = start(dir.path(), limits, ListenerLimits::default()).await;
    upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(2 * MIB, 1, false),
        Compression::None,
    )
    .await
    .expect("2 MiB of a 3 MiB quota");
    // 2 MiB more for the same host would be 4 MiB: refused.
    let (status, text) = put_raw(
        &addr,
        "/v1/streams/db-1/tank+db/1700000100.incremental.1700000000",
        &[("x-zetaback-base-snapshot", "zb-1700000000")],
        zfs_stream_bytes(2 * MIB, 2, false),
    )
    .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{text}");
    assert!(text.contains("quota"), "{text}");
    let err = upload(
        &addr,
        "db-1",
        "1700000200.incremental.1700000000",
        zfs_stream_bytes(2 * MIB, 3, false),
        Compression::None,
    )
    .await
    .expect_err("over the quota, streamed");
    refused_with(&err, StatusCode::INSUFFICIENT_STORAGE);
    no_temporaries(dir.path()).await;
    assert_eq!(backups(dir.path()), 1);
    // Another host has its own quota.
    upload(
        &addr,
        "db-2",
        "1700000000.full",
        zfs_stream_bytes(2 * MIB, 4, false),
        Compression::None,
    )
    .await
    .expect("another host");
    assert_eq!(backups(dir.path()), 2);
}

#[tokio::test]
async fn no_new_stream_below_the_free_space_reserve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StoreLimits {
        min_free_bytes: u64::MAX / 4,
        ..StoreLimits::default()
    };
    let (addr, _) = start(dir.path(), limits, ListenerLimits::default()).await;
    let err = upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(100_000, 1, false),
        Compression::None,
    )
    .await
    .expect_err("refused: the reserve is more than the disk");
    match &err {
        TransferError::Rejected { status, message } => {
            assert_eq!(*status, StatusCode::INSUFFICIENT_STORAGE, "{err}");
            assert!(message.contains("free"), "{message}");
        }
        other => panic!("expected a 507 answer: {other}"),
    }
    assert!(
        all_files(dir.path()).is_empty(),
        "{:?}",
        all_files(dir.path())
    );
}

#[tokio::test]
async fn a_stream_that_would_eat_the_reserve_is_stopped_and_space_comes_back() {
    let fs = Tmpfs::new(48 * MIB as u64);
    let root = fs.path().join("store");
    let limits = StoreLimits {
        min_free_bytes: 32 * MIB as u64,
        ..StoreLimits::default()
    };
    let (addr, _) = start(&root, limits, ListenerLimits::default()).await;
    let before = fs.free();
    let err = upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(40 * MIB, 1, false),
        Compression::None,
    )
    .await
    .expect_err("40 MiB with 48 MiB free and a 32 MiB reserve");
    refused_with(&err, StatusCode::INSUFFICIENT_STORAGE);
    no_temporaries(&root).await;
    assert_eq!(backups(&root), 0);
    assert_eq!(fs.free(), before, "the partial stream's space came back");
    upload(
        &addr,
        "db-1",
        "1700000001.full",
        zfs_stream_bytes(4 * MIB, 2, false),
        Compression::None,
    )
    .await
    .expect("a small stream still fits");
    assert_eq!(backups(&root), 1);
}

#[tokio::test]
async fn a_disk_full_at_the_manifest_leaves_no_stream_without_manifest() {
    let fs = Tmpfs::new(8 * MIB as u64);
    let root = fs.path().join("store");
    let (addr, _) = start(&root, no_reserve(), ListenerLimits::default()).await;
    // Exactly the free space: the stream fits, its manifest does not.
    let n = usize::try_from(fs.free()).expect("size");
    let err = upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(n, 1, false),
        Compression::None,
    )
    .await
    .expect_err("no room for the manifest");
    match &err {
        TransferError::Rejected { status, message } => {
            assert_eq!(*status, StatusCode::INSUFFICIENT_STORAGE, "{err}");
            assert!(message.to_lowercase().contains("space"), "{message}");
        }
        other => panic!("expected a 507 answer: {other}"),
    }
    no_temporaries(&root).await;
    assert_eq!(
        all_files(&root),
        Vec::<String>::new(),
        "nothing left behind, above all no stream without its manifest"
    );
    upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(MIB, 2, false),
        Compression::None,
    )
    .await
    .expect("the retry, smaller, fits");
    assert_eq!(backups(&root), 1);
}

#[tokio::test]
async fn bodies_that_are_not_zfs_streams_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _) = start(dir.path(), no_reserve(), ListenerLimits::default()).await;
    let mut junk = zfs_stream_bytes(200_000, 1, false);
    junk[8..16].copy_from_slice(b"PK\x03\x04zip!"); // a wrong magic
    let short = zfs_stream_bytes(12, 2, false); // ends inside the header
    let text = b"GET / HTTP/1.1\r\n\r\n".repeat(1000);
    let zstd_junk = zstd_frame_with_window(20, &junk);
    for (what, body, compression) in [
        ("wrong magic", junk.clone(), "none"),
        ("truncated head", short, "none"),
        ("text", text, "none"),
        ("empty", Vec::new(), "none"),
        ("zstd of a wrong magic", zstd_junk, "zstd"),
        (
            "not zstd at all",
            zfs_stream_bytes(10_000, 3, false),
            "zstd",
        ),
    ] {
        let (status, answer) = put_raw(
            &addr,
            "/v1/streams/db-1/tank+db/1700000000.full",
            &[("x-zetaback-compression", compression)],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(answer.contains("ZFS send stream"), "{what}: {answer}");
        no_temporaries(dir.path()).await;
        assert_eq!(backups(dir.path()), 0, "{what}");
    }
    // Streams from little- and big-endian hosts, plain and zstd, are stored.
    for (i, (big_endian, compression)) in [
        (false, Compression::None),
        (true, Compression::None),
        (false, Compression::Zstd),
        (true, Compression::Zstd),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("{}.full", 1_700_000_000 + i);
        upload(
            &addr,
            "db-1",
            &id,
            zfs_stream_bytes(300_000, i as u64, big_endian),
            compression,
        )
        .await
        .unwrap_or_else(|e| panic!("{id} big-endian {big_endian} {compression:?}: {e}"));
    }
    assert_eq!(backups(dir.path()), 4);
}

#[tokio::test]
async fn zstd_frames_asking_for_a_huge_window_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _) = start(dir.path(), no_reserve(), ListenerLimits::default()).await;
    let content = zfs_stream_bytes(300_000, 1, false);
    // 2^27 bytes (128 MiB): what zstd allows by default, one header's worth of memory.
    let (status, answer) = put_raw(
        &addr,
        "/v1/streams/db-1/tank+db/1700000000.full",
        &[("x-zetaback-compression", "zstd")],
        zstd_frame_with_window(27, &content),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.contains("window"), "{answer}");
    no_temporaries(dir.path()).await;
    assert_eq!(backups(dir.path()), 0);
    // A modest window (2^20) is fine.
    let (status, answer) = put_raw(
        &addr,
        "/v1/streams/db-1/tank+db/1700000000.full",
        &[("x-zetaback-compression", "zstd")],
        zstd_frame_with_window(20, &content),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

/// A stuck source: some data, then nothing.
struct Stuck(Vec<u8>);

impl tokio::io::AsyncRead for Stuck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0.is_empty() {
            return std::task::Poll::Pending;
        }
        let n = self.0.len().min(buf.remaining());
        let rest = self.0.split_off(n);
        buf.put_slice(&self.0);
        self.0 = rest;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn uploads_over_the_concurrency_cap_are_refused_after_a_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StoreLimits {
        max_uploads: 1,
        slot_wait: Duration::from_secs(1),
        ..no_reserve()
    };
    let (addr, _) = start(dir.path(), limits, ListenerLimits::default()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let first = {
        let ep = ep.clone();
        tokio::spawn(async move {
            transfer::upload(
                &transfer::client(),
                &ep,
                &upload_spec("db-1", "1700000000.full", Compression::None),
                Stuck(zfs_stream_bytes(MIB, 1, false)),
                ok_done(),
            )
            .await
        })
    };
    let ds = dir.path().join("db-1/tank+db");
    for _ in 0..200 {
        if all_files(&ds).iter().any(|f| f.starts_with(".tmp-")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        all_files(&ds).iter().any(|f| f.starts_with(".tmp-")),
        "the first upload runs"
    );
    let err = upload(
        &addr,
        "db-2",
        "1700000000.full",
        zfs_stream_bytes(100_000, 2, false),
        Compression::None,
    )
    .await
    .expect_err("a second upload with a cap of one");
    match &err {
        TransferError::Rejected { status, message } => {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
            assert!(message.contains("at once"), "{message}");
        }
        other => panic!("expected a 503 answer: {other}"),
    }
    first.abort();
    // Once the first is gone, the second goes through.
    let mut stored = false;
    for _ in 0..100 {
        match upload(
            &addr,
            "db-2",
            "1700000000.full",
            zfs_stream_bytes(100_000, 2, false),
            Compression::None,
        )
        .await
        {
            Ok(_) => {
                stored = true;
                break;
            }
            Err(TransferError::Rejected { status, .. })
                if status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored, "the slot never came free");
}

#[tokio::test]
async fn the_catalogue_is_scanned_once_until_something_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StoreLimits {
        catalogue_max_age: Duration::from_secs(3600),
        ..no_reserve()
    };
    let (addr, store) = start(dir.path(), limits, ListenerLimits::default()).await;
    upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(100_000, 1, false),
        Compression::None,
    )
    .await
    .expect("upload");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = |client: hyper_util::client::legacy::Client<_, Full<Bytes>>| {
        let addr = addr.clone();
        async move {
            let req = Request::builder()
                .uri(format!("http://{addr}/v1/catalogue"))
                // The whole catalogue is the controller's to read.
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Full::new(Bytes::new()))
                .expect("req");
            let resp = client.request(req).await.expect("catalogue");
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<zetaback_core::store::Catalogue>(&body).expect("json")
        }
    };
    let scans_before = store.scans();
    for _ in 0..20 {
        assert_eq!(get(client.clone()).await.backups.len(), 1);
    }
    let scans = store.scans() - scans_before;
    assert!(
        scans <= 1,
        "20 catalogue reads scanned the store {scans} times"
    );
    // A write is seen at once.
    upload(
        &addr,
        "db-1",
        "1700000100.incremental.1700000000",
        zfs_stream_bytes(100_000, 2, false),
        Compression::None,
    )
    .await
    .expect("upload");
    assert_eq!(get(client.clone()).await.backups.len(), 2);
    let ep = "/v1/streams/db-1/tank+db/1700000000.full/archive";
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{ep}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        client.request(req).await.expect("archive").status(),
        StatusCode::NO_CONTENT
    );
    let cat = get(client.clone()).await;
    assert_eq!(cat.backups.iter().filter(|b| b.archived).count(), 1);
}

/// A target that answers every PUT 201 with a JSON body padded to 64 MiB (legal JSON: the
/// padding is whitespace).
async fn hostile_target() -> String {
    use hyper::service::service_fn;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = socket.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut body = br#"{"backupId":"1700000000.full","bytes":0,"sha256":"x","verified":false}"#.to_vec();
                    body.resize(64 * MIB, b' ');
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(201)
                            .body(Full::new(Bytes::from(body)))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn json_answers_are_read_with_a_bound() {
    let addr = hostile_target().await;
    let err = upload(
        &addr,
        "db-1",
        "1700000000.full",
        zfs_stream_bytes(1000, 1, false),
        Compression::None,
    )
    .await
    .expect_err("a 64 MiB answer");
    assert!(err.to_string().contains("too large"), "{err}");
}

/// Two streams from different hosts, announced with their size, each fitting the free space
/// alone but not together: the second is refused (507) before a byte of it is sent while the
/// first is being written, and is admitted once the first is gone. A finished stream's hold is
/// released too: a third one fits next to the second.
#[tokio::test]
async fn concurrent_streams_hold_their_announced_size_at_admission() {
    use common::raw_put::RawPut;

    let fs = Tmpfs::new(16 * MIB as u64);
    let root = fs.path().join("store");
    // 16 MiB free, a 4 MiB reserve: a 7 MiB stream fits alone (4 + 7 <= 16), two do not.
    let limits = StoreLimits {
        min_free_bytes: 4 * MIB as u64,
        ..StoreLimits::default()
    };
    let (addr, store) = start(&root, limits, ListenerLimits::default()).await;
    let size = 7 * MIB;
    let put = |host: &'static str, id: &'static str, len: usize| {
        let addr = addr.clone();
        async move {
            RawPut::start(
                &addr,
                &format!("/v1/streams/{host}/tank+db/{id}"),
                TOKEN,
                &[("x-zetaback-snapshot", "zb-1700000000")],
                len,
            )
            .await
        }
    };

    let first_body = zfs_stream_bytes(size, 1, false);
    let mut first = put("db-1", "1700000000.full", size).await;
    first.admitted().await.expect("the first stream fits");
    first.send(&first_body[..MIB]).await.expect("send");
    // Admitted means its temporary file is made (before the body is read).
    assert!(temp_stream(&root.join("db-1/tank+db")).is_some());

    let second_body = zfs_stream_bytes(size, 2, false);
    let mut second = put("db-2", "1700000000.full", size).await;
    let refusal = match second.admitted().await {
        Err(refusal) => refusal,
        Ok(()) => {
            let sent = second.send(&second_body).await;
            let answer = second.answer().await;
            panic!(
                "a second {size}-byte stream was admitted while the first held {size} of the {} bytes free with a {}-byte reserve: sent {sent:?}, answered {} {}",
                16 * MIB,
                4 * MIB,
                answer.status,
                answer.body
            );
        }
    };
    assert_eq!(refusal.status, 507, "{}", refusal.body);
    assert!(
        refusal.body.contains("held for streams being written")
            && refusal.body.contains("--store-min-free-bytes"),
        "{}",
        refusal.body
    );
    drop(second);
    assert!(
        !all_files(&root).iter().any(|f| f.starts_with("db-2/")),
        "the refused stream left {:?}",
        all_files(&root)
    );

    // The first stream is cut off: its hold goes with it, and the second now fits.
    drop(first);
    no_temporaries(&root).await;
    for _ in 0..200 {
        if store.held_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.held_bytes(), 0, "the cut stream still holds space");
    let mut second = put("db-2", "1700000000.full", size).await;
    second
        .admitted()
        .await
        .expect("admitted once the first is gone");
    second.send(&second_body).await.expect("send");
    let answer = second.answer().await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(store.held_bytes(), 0, "a stored stream still holds space");

    // 9 MiB free now: a 4 MiB stream fits (4 + 4 <= 9) only if the stored one's hold is gone.
    let third_body = zfs_stream_bytes(4 * MIB, 3, false);
    let mut third = put("db-1", "1700000100.full", third_body.len()).await;
    if let Err(refusal) = third.admitted().await {
        panic!(
            "refused after the second stream was stored: {} {}",
            refusal.status, refusal.body
        );
    }
    third.send(&third_body).await.expect("send");
    let answer = third.answer().await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    no_temporaries(&root).await;
    assert_eq!(backups(&root), 2, "{:?}", all_files(&root));
}

/// Waits (bounded) until a stream is being written into the dataset directory `ds`.
async fn being_written(ds: &Path, what: &str) {
    for _ in 0..200 {
        if temp_stream(ds).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(temp_stream(ds).is_some(), "{what} is being written");
}

/// Waits (bounded) until the store holds `bytes` for streams being written.
async fn holds(store: &FileStore, bytes: u64) {
    for _ in 0..200 {
        if store.held_bytes() == bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.held_bytes(),
        bytes,
        "bytes held for streams being written"
    );
}

/// A stream sent the way agents send (chunked, no length) holds its sender's estimate
/// (`x-zetaback-expected-bytes`), or, without one, the reserve: a stream announced next to
/// it that would not fit in the rest is refused.
#[tokio::test]
async fn a_stream_of_unknown_length_holds_its_senders_estimate_or_the_reserve() {
    use common::raw_put::RawPut;

    let fs = Tmpfs::new(16 * MIB as u64);
    let root = fs.path().join("store");
    let reserve = 4 * MIB as u64;
    let limits = StoreLimits {
        min_free_bytes: reserve,
        ..StoreLimits::default()
    };
    let (addr, store) = start(&root, limits, ListenerLimits::default()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let ds = root.join("db-1/tank+db");
    // (the estimate, the size of the stream announced next to it)
    for (expected, next) in [(Some(7 * MIB as u64), 7 * MIB), (None, 9 * MIB)] {
        let first = {
            let ep = ep.clone();
            tokio::spawn(async move {
                transfer::upload_expecting(
                    &transfer::client(),
                    &ep,
                    &upload_spec("db-1", "1700000000.full", Compression::None),
                    expected,
                    Stuck(zfs_stream_bytes(MIB, 1, false)),
                    ok_done(),
                )
                .await
            })
        };
        being_written(&ds, "the first stream").await;
        // 16 MiB free: the next stream fits alone (4 + 7, 4 + 9 <= 16), not next to the hold.
        let mut next_put = RawPut::start(
            &addr,
            "/v1/streams/db-2/tank+db/1700000000.full",
            TOKEN,
            &[("x-zetaback-snapshot", "zb-1700000000")],
            next,
        )
        .await;
        match next_put.admitted().await {
            Err(refusal) => {
                assert_eq!(refusal.status, 507, "{}", refusal.body);
                assert!(
                    refusal.body.contains("held for streams"),
                    "{}",
                    refusal.body
                );
            }
            Ok(()) => panic!(
                "a {next}-byte stream was admitted next to one of unknown length estimated at {expected:?} bytes ({} free, a {reserve}-byte reserve)",
                fs.free()
            ),
        }
        drop(next_put);
        // 1 MiB sent is still in the writer's first block: nothing landed yet.
        holds(&store, expected.unwrap_or(reserve)).await;
        first.abort();
        no_temporaries(&root).await;
        holds(&store, 0).await;
    }
    assert_eq!(backups(&root), 0);
}

/// A sender's estimate is a hint from a peer: a hostile source announcing a petabyte holds at
/// most what its stream may take (here, its host's quota), so another host's stream is still
/// admitted next to it. (Before the estimate was bounded, it was held as announced, and every
/// other host's stream got a 507 until the hostile stream timed out.)
#[tokio::test]
async fn a_huge_estimate_holds_no_more_than_its_hosts_quota() {
    use common::raw_put::RawPut;

    let fs = Tmpfs::new(16 * MIB as u64);
    let root = fs.path().join("store");
    let quota = 6 * MIB as u64;
    let limits = StoreLimits {
        min_free_bytes: 2 * MIB as u64,
        host_quota_bytes: Some(quota),
        ..StoreLimits::default()
    };
    let (addr, store) = start(&root, limits, ListenerLimits::default()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let ds = root.join("db-1/tank+db");
    let hostile = tokio::spawn(async move {
        transfer::upload_expecting(
            &transfer::client(),
            &ep,
            &upload_spec("db-1", "1700000000.full", Compression::None),
            Some(1 << 50),
            Stuck(zfs_stream_bytes(MIB, 1, false)),
            ok_done(),
        )
        .await
    });
    being_written(&ds, "the hostile stream").await;
    // Its host's quota, not its estimate (1 MiB sent is still in the writer's first block).
    holds(&store, quota).await;
    // Another host's 4 MiB fits in the rest: 16 MiB free, 6 held, a 2 MiB reserve.
    let mut other = RawPut::start(
        &addr,
        "/v1/streams/db-2/tank+db/1700000000.full",
        TOKEN,
        &[("x-zetaback-snapshot", "zb-1700000000")],
        4 * MIB,
    )
    .await;
    if let Err(refusal) = other.admitted().await {
        panic!(
            "another host's 4 MiB stream was refused next to a stream estimated at 1 PiB ({} free): {} {}",
            fs.free(),
            refusal.status,
            refusal.body
        );
    }
    drop(other);
    hostile.abort();
    no_temporaries(&root).await;
    holds(&store, 0).await;
    assert_eq!(backups(&root), 0);
}
