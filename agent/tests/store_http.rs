//! The target agent's HTTP API with a file store (no ZFS needed for these).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncReadExt;
use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::{Caller, StaticIdentities};
use zetaback_agent::store_server::{ServerState, serve};
use zetaback_agent::transfer::{self, Endpoint, SourceDone, TransferError, Upload};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::StreamId;

const TOKEN: &str = "source-token";
const ADMIN: &str = "admin-token";

async fn start(root: &Path) -> String {
    let store = FileStore::new(root);
    store.remove_stale_temporaries().await.expect("cleanup");
    let state = ServerState::new(
        std::sync::Arc::new(
            StaticIdentities::new()
                .with(TOKEN, Caller::agent("node-1", ["db-1"]))
                .controller(ADMIN),
        ),
        Some(store),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, state));
    addr.to_string()
}

/// `n` bytes that begin like a ZFS send stream (a DRR_BEGIN record head with the magic and a
/// plain stream's versioninfo: the store refuses anything else), then pseudo-random bytes (deterministic per seed).
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut head = vec![0u8; 8];
    head.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    // drr_versioninfo: a plain (not raw) single-dataset stream.
    head.extend_from_slice(&1u64.to_le_bytes());
    let mut x = seed | 1;
    head.into_iter()
        .chain(std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }))
        .take(n)
        .collect()
}

/// `n` bytes beginning with the first record (DRR_BEGIN) of a real stream captured from
/// OpenZFS 2.3.2 (`record`: plain or raw; agent/tests/fixtures/openzfs-2.3.2-drr-begin-*.txt),
/// then pseudo-random bytes.
fn real_begin(record: &str, n: usize, seed: u64) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/fixtures/openzfs-2.3.2-drr-begin-{record}.txt"
    ));
    let text = std::fs::read_to_string(&path).expect("captured record");
    let hex: String = text.split_whitespace().collect();
    let mut bytes = hex::decode(hex).expect("hex");
    bytes.extend(
        data(n.saturating_sub(bytes.len()) + 24, seed)
            .into_iter()
            .skip(24),
    );
    bytes.truncate(n);
    bytes
}

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

fn upload_spec(id: &str, compression: Compression) -> Upload {
    let sid: StreamId = id.parse().expect("id");
    Upload {
        host: "db-1".into(),
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

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn raw(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from_static(body))).expect("req"))
        .await
        .expect("request");
    let status = resp.status();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    (status, text)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test]
async fn upload_read_back_and_refuse_overwrite() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    let payload = data(3 * 1024 * 1024 + 17, 1);

    for (id, comp) in [
        ("1700000000.full", Compression::None),
        ("1700086400.incremental.1700000000", Compression::Zstd),
    ] {
        let up = upload_spec(id, comp);
        let done = transfer::upload(
            &client,
            &ep,
            &up,
            std::io::Cursor::new(payload.clone()),
            ok_done(),
        )
        .await
        .expect("upload");
        assert!(done.response.verified, "trailer checked");
        assert_eq!(done.response.backup_id, id);
        let sid: StreamId = id.parse().expect("id");
        let mut dl = transfer::download(&client, &ep, "db-1", "tank/db", &sid)
            .await
            .expect("download");
        let mut back = Vec::new();
        dl.reader.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, payload, "{id} round trip");
    }
    let ds_dir: PathBuf = dir.path().join("db-1/tank+db");
    assert_eq!(
        files(&ds_dir),
        [
            "1700000000.full",
            "1700000000.full.json",
            "1700086400.incremental.1700000000",
            "1700086400.incremental.1700000000.json"
        ]
    );

    // A source may add, never overwrite.
    let before = std::fs::read(ds_dir.join("1700000000.full.json")).expect("manifest");
    let err = transfer::upload(
        &client,
        &ep,
        &upload_spec("1700000000.full", Compression::None),
        std::io::Cursor::new(data(1000, 2)),
        ok_done(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::Rejected {
                status: StatusCode::CONFLICT,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(ds_dir.join("1700000000.full.json")).expect("manifest"),
        before
    );

    // The catalogue: a host's agent reads its own host's, the controller the whole.
    let (status, _) = raw(&addr, Method::GET, "/v1/catalogue", Some(TOKEN), &[], b"").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = raw(
        &addr,
        Method::GET,
        "/v1/catalogue?host=db-2",
        Some(TOKEN),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, own) = raw(
        &addr,
        Method::GET,
        "/v1/catalogue?host=db-1",
        Some(TOKEN),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let own: zetaback_core::store::Catalogue = serde_json::from_str(&own).expect("catalogue");
    assert_eq!(own.backups.len(), 2);
    let (status, body) = raw(&addr, Method::GET, "/v1/catalogue", Some(ADMIN), &[], b"").await;
    assert_eq!(status, StatusCode::OK);
    let cat: zetaback_core::store::Catalogue = serde_json::from_str(&body).expect("catalogue");
    assert_eq!(cat.backups.len(), 2);

    // Delete needs the admin token; archive moves.
    let p = "/v1/streams/db-1/tank+db/1700086400.incremental.1700000000";
    assert_eq!(
        raw(&addr, Method::DELETE, p, Some(TOKEN), &[], b"").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        raw(&addr, Method::DELETE, p, None, &[], b"").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        raw(&addr, Method::DELETE, p, Some(ADMIN), &[], b"").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw(&addr, Method::GET, p, Some(TOKEN), &[], b"").await.0,
        StatusCode::NOT_FOUND
    );
    let a = "/v1/streams/db-1/tank+db/1700000000.full/archive";
    assert_eq!(
        raw(&addr, Method::POST, a, Some(ADMIN), &[], b"").await.0,
        StatusCode::NO_CONTENT
    );
    let cat = zetaback_core::store::scan(dir.path()).expect("scan");
    assert_eq!(cat.backups.len(), 1);
    assert!(cat.backups[0].archived);
    // Archived backups can still be read back.
    let (status, _) = raw(
        &addr,
        Method::GET,
        "/v1/streams/db-1/tank+db/1700000000.full",
        Some(TOKEN),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// path, token, headers, expected status, what the message must mention.
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn unauthenticated_and_malformed_requests_touch_nothing() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let snap = [("x-zetaback-snapshot", "zb-1700000000")];
    let cases: Vec<Case> = vec![
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            None,
            snap.to_vec(),
            StatusCode::UNAUTHORIZED,
            "bearer",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some("wrong"),
            snap.to_vec(),
            StatusCode::UNAUTHORIZED,
            "bearer",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some(TOKEN),
            vec![],
            StatusCode::BAD_REQUEST,
            "x-zetaback-snapshot",
        ),
        (
            "/v1/streams/db-1/tank+db/170000.0000.full",
            Some(TOKEN),
            snap.to_vec(),
            StatusCode::BAD_REQUEST,
            "stream id",
        ),
        (
            "/v1/streams/db-1/..+etc/1700000000.full",
            Some(TOKEN),
            snap.to_vec(),
            StatusCode::BAD_REQUEST,
            "escaped dataset",
        ),
        (
            "/v1/streams/db-1/tank%2Fdb/1700000000.full",
            Some(TOKEN),
            snap.to_vec(),
            StatusCode::BAD_REQUEST,
            "escaped dataset",
        ),
        (
            "/v1/streams/..%2F..%2Fetc/tank+db/1700000000.full",
            Some(TOKEN),
            snap.to_vec(),
            StatusCode::BAD_REQUEST,
            "host",
        ),
        (
            "/v1/streams/db-1/tank+db/1700086400.incremental.1700000000",
            Some(TOKEN),
            snap.to_vec(),
            StatusCode::BAD_REQUEST,
            "base-snapshot",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some(TOKEN),
            vec![("x-zetaback-snapshot", "-R")],
            StatusCode::BAD_REQUEST,
            "snapshot",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some(TOKEN),
            vec![
                ("x-zetaback-snapshot", "zb-1"),
                ("x-zetaback-compression", "gzip"),
            ],
            StatusCode::BAD_REQUEST,
            "none or zstd",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some(TOKEN),
            vec![
                ("x-zetaback-snapshot", "zb-1"),
                ("x-zetaback-receive-into", "backup"),
            ],
            StatusCode::BAD_REQUEST,
            "replicas",
        ),
        (
            "/v1/streams/db-1/tank+db/1700000000.full",
            Some(TOKEN),
            vec![
                ("x-zetaback-snapshot", "zb-1"),
                ("x-zetaback-store-path", "/elsewhere"),
            ],
            StatusCode::BAD_REQUEST,
            "stores backups under",
        ),
    ];
    for (path, token, headers, want, says) in cases {
        let (status, body) = raw(
            &addr,
            Method::PUT,
            path,
            token,
            &headers,
            b"not a zfs stream",
        )
        .await;
        assert_eq!(status, want, "{path} {headers:?}: {body}");
        assert!(
            body.to_lowercase().contains(&says.to_lowercase()),
            "{path}: {body:?} should mention {says:?}"
        );
    }
    assert!(
        files(dir.path()).is_empty(),
        "nothing touched: {:?}",
        files(dir.path())
    );
}

#[tokio::test]
async fn a_failed_source_leaves_no_backup() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    let up = upload_spec("1700000000.full", Compression::None);
    // The source dies after sending its data: the stream must not end cleanly.
    let err = transfer::upload(
        &client,
        &ep,
        &up,
        std::io::Cursor::new(data(2 * 1024 * 1024, 3)),
        Box::pin(async { Err("zfs send was killed".to_owned()) }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::Source(_)), "{err}");
    let ds_dir = dir.path().join("db-1/tank+db");
    wait_for_no_temporaries(&ds_dir).await;
    assert!(
        zetaback_core::store::scan(dir.path())
            .expect("scan")
            .backups
            .is_empty()
    );
    // The next run succeeds (once the target noticed the abort: until then it answers
    // "being written by another request").
    let mut result = None;
    for _ in 0..100 {
        match transfer::upload(
            &client,
            &ep,
            &up,
            std::io::Cursor::new(data(1000, 4)),
            ok_done(),
        )
        .await
        {
            Err(TransferError::Rejected { message, .. }) if message.contains("being written") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => {
                result = Some(other);
                break;
            }
        }
    }
    result.expect("retried").expect("retry");
    assert_eq!(
        zetaback_core::store::scan(dir.path())
            .expect("scan")
            .backups
            .len(),
        1
    );
}

/// A reader that yields some data and then never ends (a stuck source).
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

async fn wait_for_no_temporaries(dir: &Path) {
    for _ in 0..200 {
        if !files(dir).iter().any(|f| f.starts_with(".tmp-")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("temporary files left: {:?}", files(dir));
}

#[tokio::test]
async fn a_dropped_connection_leaves_no_backup() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let up = upload_spec("1700000000.full", Compression::None);
    let task = tokio::spawn(async move {
        let client = transfer::client();
        transfer::upload(&client, &ep, &up, Stuck(data(1024 * 1024, 5)), ok_done()).await
    });
    let ds_dir = dir.path().join("db-1/tank+db");
    // Wait until the target is writing, then cut the connection (drop the client side).
    for _ in 0..200 {
        if files(&ds_dir).iter().any(|f| f.starts_with(".tmp-")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        files(&ds_dir).iter().any(|f| f.starts_with(".tmp-")),
        "a write began"
    );
    assert!(
        zetaback_core::store::scan(dir.path())
            .expect("scan")
            .backups
            .is_empty(),
        "not yet a backup"
    );
    task.abort();
    wait_for_no_temporaries(&ds_dir).await;
    assert!(
        zetaback_core::store::scan(dir.path())
            .expect("scan")
            .backups
            .is_empty()
    );
}

#[tokio::test]
async fn corrupt_stored_streams_fail_on_read() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    let up = upload_spec("1700000000.full", Compression::None);
    transfer::upload(
        &client,
        &ep,
        &up,
        std::io::Cursor::new(data(100_000, 6)),
        ok_done(),
    )
    .await
    .expect("upload");
    let stream = dir.path().join("db-1/tank+db/1700000000.full");
    let mut bytes = std::fs::read(&stream).expect("read");
    bytes[500] ^= 0xff;
    std::fs::write(&stream, &bytes).expect("corrupt it");
    let mut dl = transfer::download(&client, &ep, "db-1", "tank/db", &up.id)
        .await
        .expect("starts");
    let mut back = Vec::new();
    assert!(
        dl.reader.read_to_end(&mut back).await.is_err(),
        "corruption detected"
    );

    // A reader that verifies the sha256 itself (a restore) asks the store not to hash: it
    // then gets the stored bytes as they are, corrupt byte included, and the manifest's
    // sha256 in the header to check them against (the restore's own check is exercised by
    // the end-to-end corruption test).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}/v1/streams/db-1/tank+db/{}", up.id))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-zetaback-reader-verifies", "sha256")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = client.request(req).await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let announced = resp
        .headers()
        .get("x-zetaback-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("sha256 header");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    assert_eq!(&body[..], &bytes[..], "the stored bytes, unchanged");
    assert_ne!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        announced,
        "the reader can tell the body from the manifest"
    );
}

/// A target that refuses a stream before reading it (here: the job names another store path)
/// still gets its refusal to the source while the source is writing a large stream: the
/// source reports the target's reason, not a reset connection. (Before the fix the target
/// closed the socket with the stream unread, the kernel answered with a reset, and the source
/// saw "Broken pipe" or "connection reset" instead of the refusal, in most tries.)
#[tokio::test]
async fn a_refusal_reaches_a_source_that_is_still_sending() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    let payload = data(1024 * 1024, 7);
    for try_no in 0..40 {
        let mut up = upload_spec("1700000000.full", Compression::None);
        up.store_path = Some("/not/the/store".into());
        // Like `zfs send`: a first piece at once, the rest in pieces with pauses between.
        let (reader, mut writer) = tokio::io::duplex(64 * 1024);
        let stream = payload.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in stream.chunks(64 * 1024) {
                if writer.write_all(piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        match transfer::upload(&client, &ep, &up, reader, ok_done()).await {
            Err(TransferError::Rejected { status, message }) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "try {try_no}");
                assert!(
                    message.contains("stores backups under"),
                    "try {try_no}: {message}"
                );
            }
            Err(e) => panic!("try {try_no}: expected the refusal, got {e}"),
            Ok(_) => panic!("try {try_no}: the target stored a stream it should refuse"),
        }
    }
    assert!(files(&dir.path().join("db-1/tank+db")).is_empty());
}

/// The manifest records what a restore and a sender whose answer was lost need: whether the
/// stream was sent raw (`zfs send -w`), and the xxh3-128 of the bytes as they arrived.
#[tokio::test]
async fn the_manifest_records_a_raw_send_and_the_transit_check() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    for (id, raw, record, seed) in [
        ("1700000000.full", true, "raw", 3),
        ("1700086400.incremental.1700000000", false, "plain", 4),
    ] {
        let mut up = upload_spec(id, Compression::Zstd);
        up.raw = raw;
        let done = transfer::upload(
            &client,
            &ep,
            &up,
            std::io::Cursor::new(real_begin(record, 200_000, seed)),
            ok_done(),
        )
        .await
        .expect("upload");
        let text = std::fs::read(dir.path().join(format!("db-1/tank+db/{id}.json")))
            .expect("manifest file");
        let m = zetaback_core::store::Manifest::from_json(&text).expect("manifest");
        assert_eq!(m.raw, raw, "{id}");
        assert_eq!(m.xxh3.as_deref(), Some(done.sent_xxh3.as_str()), "{id}");
        assert_eq!(m.bytes, done.sent_bytes, "{id}");
        // The JSON names it only when it is raw (older readers see nothing new otherwise).
        let json: serde_json::Value = serde_json::from_slice(&text).expect("json");
        assert_eq!(json.get("raw").is_some(), raw, "{json}");
    }
    // Anything but true/false is refused.
    let (status, _) = raw(
        &addr,
        Method::PUT,
        "/v1/streams/db-1/tank+db/1700172800.full",
        Some(TOKEN),
        &[
            ("x-zetaback-snapshot", "zb-1700172800"),
            ("x-zetaback-raw", "yes"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `x-zetaback-raw` is the sender's claim; the store checks it against the stream's first
/// record (DMU_BACKUP_FEATURE_RAW in DRR_BEGIN) and refuses a stream that contradicts it, raw
/// sent as not raw or the other way round, compressed or not, before anything is stored.
#[tokio::test]
async fn a_raw_claim_the_stream_contradicts_is_refused() {
    let dir = tempdir();
    let addr = start(dir.path()).await;
    let ep = Endpoint::new(&addr, TOKEN);
    let client = transfer::client();
    let mut ts = 1_700_000_000u64;
    for compression in [Compression::None, Compression::Zstd] {
        for (record, claimed) in [("raw", false), ("plain", true)] {
            ts += 86_400;
            let mut up = upload_spec(&format!("{ts}.full"), compression);
            up.raw = claimed;
            let body = real_begin(record, 100_000, ts);
            match transfer::upload(&client, &ep, &up, std::io::Cursor::new(body), ok_done()).await {
                Err(TransferError::Rejected { status, message }) => {
                    assert_eq!(
                        status,
                        StatusCode::BAD_REQUEST,
                        "{record} sent as raw={claimed}"
                    );
                    assert!(
                        message.contains("DMU_BACKUP_FEATURE_RAW"),
                        "{record} sent as raw={claimed}: {message}"
                    );
                }
                Err(e) => panic!("{record} sent as raw={claimed}: expected the refusal, got {e}"),
                Ok(done) => panic!(
                    "{record} sent as raw={claimed} ({compression:?}): the store stored it as {}",
                    done.response.backup_id
                ),
            }
        }
    }
    assert!(
        files(&dir.path().join("db-1/tank+db")).is_empty(),
        "something was stored"
    );
    // The same streams with the true claim are stored.
    for (record, raw) in [("raw", true), ("plain", false)] {
        ts += 86_400;
        let mut up = upload_spec(&format!("{ts}.full"), Compression::None);
        up.raw = raw;
        transfer::upload(
            &client,
            &ep,
            &up,
            std::io::Cursor::new(real_begin(record, 100_000, ts)),
            ok_done(),
        )
        .await
        .unwrap_or_else(|e| panic!("{record} sent as raw={raw}: {e}"));
    }
}
