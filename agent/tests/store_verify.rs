//! The store's verifier over its HTTP API, on a file store (no ZFS needed): `POST /v1/verify`
//! re-reads stored streams and records what it found; a flipped byte quarantines the backup
//! (recorded in the store, shown in the catalogue, the stream refused on read, the policy
//! logic never restoring from it or from what depends on it); a quarantine is sticky; a
//! backup verified recently is not read again; deleting a backup deletes its record.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::{Caller, StaticIdentities};
use zetaback_agent::store_server::{ServerState, serve};
use zetaback_agent::transfer::{self, Endpoint, SourceDone, Upload};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::policy::{ChainError, DatasetBackups};
use zetaback_core::store::{Catalogue, Layout, StreamId};
use zetaback_core::wire::{VerifyRequest, VerifyStatus};

const TOKEN: &str = "source-token";
const ADMIN: &str = "admin-token";

async fn start(root: &Path) -> String {
    let state = ServerState::new(
        std::sync::Arc::new(
            StaticIdentities::new()
                .with(TOKEN, Caller::agent("node-1", ["db-1"]))
                .controller(ADMIN),
        ),
        Some(FileStore::new(root)),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(serve(listener, state));
    addr
}

/// `n` bytes that begin like a ZFS send stream, then pseudo-random bytes.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut head = vec![0u8; 8];
    head.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    // drr_versioninfo: a plain (not raw) single-dataset stream. (Random bytes here made the
    // store read some seeds' streams as raw sent as not raw: refused, 400.)
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

async fn upload(addr: &str, id: &str, seed: u64) {
    let sid: StreamId = id.parse().expect("id");
    let up = Upload {
        host: "db-1".into(),
        dataset: "tank/db".into(),
        id: sid,
        snapshot: format!("zb-{}", sid.ts()),
        base_snapshot: sid.base_ts().map(|b| format!("zb-{b}")),
        compression: Compression::None,
        receive_into: None,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(30),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    };
    let done: SourceDone = Box::pin(async { Ok(()) });
    transfer::upload(
        &transfer::client(),
        &Endpoint::new(addr, TOKEN),
        &up,
        std::io::Cursor::new(data(300_000, seed)),
        done,
    )
    .await
    .expect("upload");
}

async fn call(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).expect("req"))
        .await
        .expect("request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec())
}

async fn ask(addr: &str, ids: &[&str], not_verified_since: Option<jiff::Timestamp>) -> StatusCode {
    let req = VerifyRequest {
        host: "db-1".into(),
        dataset: "tank/db".into(),
        ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        rate: 0,
        not_verified_since,
    };
    let body = serde_json::to_vec(&req).expect("json");
    call(addr, Method::POST, "/v1/verify", Some(ADMIN), body)
        .await
        .0
}

async fn status(addr: &str) -> VerifyStatus {
    let (code, body) = call(addr, Method::GET, "/v1/verify", Some(ADMIN), Vec::new()).await;
    assert_eq!(code, StatusCode::OK);
    serde_json::from_slice(&body).expect("status")
}

/// Waits until the verifier is idle (up to 60 s) and returns its status.
async fn idle(addr: &str) -> VerifyStatus {
    for _ in 0..600 {
        let st = status(addr).await;
        if st.current.is_none() && st.queued == 0 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the verifier did not finish");
}

async fn catalogue(addr: &str) -> Catalogue {
    let (code, body) = call(addr, Method::GET, "/v1/catalogue", Some(ADMIN), Vec::new()).await;
    assert_eq!(code, StatusCode::OK);
    serde_json::from_slice(&body).expect("catalogue")
}

const FULL: &str = "1700000000.full";
const INCR: &str = "1700086400.incremental.1700000000";
const FULL2: &str = "1700172800.full";

#[tokio::test]
async fn a_flipped_byte_is_found_and_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = start(dir.path()).await;
    for (id, seed) in [(FULL, 1), (INCR, 2), (FULL2, 3)] {
        upload(&addr, id, seed).await;
    }

    // Only the admin may ask; a malformed request is refused.
    let body = |ids: &[&str]| {
        serde_json::to_vec(
            &serde_json::json!({"host": "db-1", "dataset": "tank/db", "ids": ids, "rate": 0}),
        )
        .expect("json")
    };
    assert_eq!(
        call(&addr, Method::POST, "/v1/verify", None, body(&[FULL]))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &addr,
            Method::POST,
            "/v1/verify",
            Some(TOKEN),
            body(&[FULL])
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &addr,
            Method::POST,
            "/v1/verify",
            Some(ADMIN),
            body(&["../x"])
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status(&addr).await.verified, 0, "nothing was read");

    // Good streams are recorded as verified.
    assert_eq!(ask(&addr, &[FULL, INCR], None).await, StatusCode::ACCEPTED);
    let st = idle(&addr).await;
    assert_eq!((st.verified, st.corrupt), (2, 0));
    assert_eq!(st.bytes_read, 600_000);
    let cat = catalogue(&addr).await;
    let of = |cat: &Catalogue, id: &str| {
        cat.backups
            .iter()
            .find(|b| b.manifest.id == id)
            .expect("listed")
            .verification
            .clone()
    };
    assert!(of(&cat, FULL).is_some_and(|v| v.ok && v.bytes == 300_000));
    assert!(of(&cat, INCR).is_some_and(|v| v.ok));
    assert!(of(&cat, FULL2).is_none(), "not asked for");

    // A byte flipped behind the store's back (same size): found and quarantined.
    let stream = dir.path().join("db-1/tank+db").join(FULL);
    let mut bytes = std::fs::read(&stream).expect("read");
    bytes[150_000] ^= 0x01;
    std::fs::write(&stream, &bytes).expect("corrupt it");
    assert_eq!(ask(&addr, &[FULL], None).await, StatusCode::ACCEPTED);
    let st = idle(&addr).await;
    assert_eq!((st.verified, st.corrupt), (3, 1));
    let cat = catalogue(&addr).await;
    let record = of(&cat, FULL).expect("a record");
    assert!(!record.ok && record.quarantined());
    assert!(
        record
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("sha256")),
        "{record:?}"
    );
    // Recorded durably in the store, outside the scanned areas.
    let id: StreamId = FULL.parse().expect("id");
    let path = Layout::new(dir.path())
        .verification_path("db-1", "tank/db", &id)
        .expect("path");
    assert!(path.exists(), "{}", path.display());

    // Never restored from: the store refuses the stream; the policy logic never picks it or
    // what depends on it.
    let (code, _) = call(
        &addr,
        Method::GET,
        &format!("/v1/streams/db-1/tank+db/{FULL}"),
        Some(TOKEN),
        Vec::new(),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let backups = DatasetBackups::from_store(cat.of("db-1", "tank/db")).expect("catalogue");
    assert!(matches!(
        backups.chain(INCR),
        Err(ChainError::Quarantined { ref corrupt, .. }) if corrupt == FULL
    ));
    assert_eq!(
        backups.newest_restorable().map(|r| r.id.as_str()),
        Some(FULL2)
    );
    assert_eq!(backups.dependents(FULL), [INCR]);

    // Sticky: asked again, the quarantined stream is not read again (its record stays), and
    // a stream verified good since the asked time is skipped.
    assert_eq!(ask(&addr, &[FULL], None).await, StatusCode::ACCEPTED);
    let since = of(&cat, INCR).expect("record").verified_at;
    assert_eq!(ask(&addr, &[INCR], Some(since)).await, StatusCode::ACCEPTED);
    let st = idle(&addr).await;
    assert_eq!((st.verified, st.corrupt, st.bytes_read), (3, 1, 900_000));
    assert_eq!(of(&catalogue(&addr).await, FULL), Some(record));

    // Deleting the backup deletes its record (a later backup of the same id starts clean).
    let (code, _) = call(
        &addr,
        Method::DELETE,
        &format!("/v1/streams/db-1/tank+db/{INCR}"),
        Some(ADMIN),
        Vec::new(),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = call(
        &addr,
        Method::DELETE,
        &format!("/v1/streams/db-1/tank+db/{FULL}"),
        Some(ADMIN),
        Vec::new(),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(!path.exists(), "the record of a deleted backup is gone");
}
