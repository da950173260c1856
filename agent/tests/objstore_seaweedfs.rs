//! Backups into a real S3 server: SeaweedFS (`e2e/scripts/seaweedfs.sh up`, built from its Go
//! module), real zfs-fuse pools, the agent's own job code, and the identities of
//! `e2e/manifests/seaweedfs/s3-identities.json`: `objstore-src-a` may write only under
//! `zetaback-e2e/objstore/objstore-src-a/` and never delete; the admin identity does the rest.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::{Pool, checksums, mountpoint, next_second, repo_root, write_files};
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use zetaback_agent::job::{self, JobError, JobSettings};
use zetaback_agent::transfer::Endpoint;
use zetaback_agent::zfs::{ReceivePurpose, ReceiveRequest, Zfs};
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName, Target};
use zetaback_core::api::{BackupJobSpec, BackupType};
use zetaback_core::store::StreamId;
use zetaback_objstore::upload::{UploadSpec, upload};
use zetaback_objstore::{Credentials, Keys, catalogue, connect};

const BUCKET: &str = "zetaback-e2e";
const PREFIX: &str = "objstore";
const HOST: &str = "objstore-src-a";
/// The policy the test's backups belong to (recorded in their manifests).
const POLICY: &str = "objstore-e2e/p";

fn endpoint() -> String {
    let out = Command::new(repo_root().join("e2e/scripts/seaweedfs.sh"))
        .arg("up")
        .output()
        .expect("run e2e/scripts/seaweedfs.sh up");
    assert!(
        out.status.success(),
        "seaweedfs.sh up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn target(endpoint: &str, bucket: &str) -> ObjectStoreTarget {
    ObjectStoreTarget {
        endpoint: Some(endpoint.to_owned()),
        bucket: bucket.to_owned(),
        prefix: Some(PREFIX.to_owned()),
        region: "us-east-1".into(),
        path_style: true,
        credentials_secret: SecretName {
            name: "unused-by-the-agent".into(),
        },
        archive_storage_class: None,
        immutable_for: None,
    }
}

fn creds(id: &str, secret: &str) -> Credentials {
    Credentials {
        access_key_id: id.into(),
        secret_access_key: secret.into(),
    }
}

fn admin() -> Credentials {
    creds("ZBE2EADMIN", "zetaback-e2e-admin-secret")
}

fn source_a() -> Credentials {
    creds("ZBE2ESRCA", "zetaback-e2e-src-a-secret")
}

/// A credentials file as the agent reads it (`--object-store-credentials`).
fn creds_file(tag: &str, c: &Credentials) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zb-objstore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join(format!("{tag}.json"));
    let body =
        serde_json::json!({"accessKeyId": c.access_key_id, "secretAccessKey": c.secret_access_key});
    std::fs::write(&f, body.to_string()).expect("write credentials");
    f
}

fn settings(creds: PathBuf) -> JobSettings {
    JobSettings {
        bandwidth_limit: 0,
        prune_snapshots: false,
        idle_timeout: std::time::Duration::from_secs(60),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        tls: None,
        object_store_credentials: Some(creds),
    }
}

fn spec(dataset: &str, snapshot: &str, base: Option<&str>, t: ObjectStoreTarget) -> BackupJobSpec {
    BackupJobSpec {
        policy: "objstore".into(),
        host: HOST.into(),
        dataset: dataset.into(),
        backup_type: if base.is_some() {
            BackupType::Incremental
        } else {
            BackupType::Full
        },
        base_snapshot: base.map(str::to_owned),
        snapshot: snapshot.into(),
        target: Target {
            host: None,
            path: None,
            dataset: None,
            object_store: Some(t),
        },
        compression: Compression::None,
        intermediates: false,
    }
}

fn no_endpoint() -> Endpoint {
    Endpoint::new("object-store", String::new())
}

async fn receive(zfs: &Zfs, into: &str, stream: Bytes) {
    let mut r = zfs
        .receive(&ReceiveRequest {
            target: into.to_owned(),
            force: false,
            resumable: false,
            purpose: ReceivePurpose::Restore,
        })
        .expect("zfs receive starts");
    {
        let stdin = r.stdin().expect("stdin");
        stdin.write_all(&stream).await.expect("feed zfs receive");
    }
    r.finish().await.expect("zfs receive succeeds");
}

async fn get(store: &dyn ObjectStore, key: &Key) -> Bytes {
    store
        .get(key)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_into_seaweedfs_restore_and_a_source_key_cannot_delete() {
    let ep = endpoint();
    let t = target(&ep, BUCKET);
    let pool = Pool::new("objstore");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 1, 5, 300_000);
    let zfs = Zfs::detect().await.expect("detect zfs");
    let src = settings(creds_file("src-a", &source_a()));

    // A full and an incremental, uploaded by the agent's job code with the source's keys.
    let full = job::run(
        &zfs,
        HOST,
        &spec(&ds, "zb-os-1", None, t.clone()),
        Some(POLICY),
        &no_endpoint(),
        &src,
    )
    .await
    .expect("full backup into the bucket");
    next_second();
    write_files(&dir, 2, 3, 200_000);
    let incr = job::run(
        &zfs,
        HOST,
        &spec(&ds, "zb-os-2", Some("zb-os-1"), t.clone()),
        Some(POLICY),
        &no_endpoint(),
        &src,
    )
    .await
    .expect("incremental backup into the bucket");
    let want = checksums(&dir);

    // The controller's view: the catalogue rebuilt from the manifests in the bucket.
    let admin_store = connect(&t, &admin()).expect("admin client");
    let keys = Keys::new(Some(PREFIX));
    let cat = catalogue::read(admin_store.as_ref(), &keys)
        .await
        .expect("catalogue");
    let mine: Vec<_> = cat.of(HOST, &ds).collect();
    let ids: Vec<&str> = mine.iter().map(|b| b.manifest.id.as_str()).collect();
    assert!(
        mine.iter()
            .all(|b| b.manifest.policy.as_deref() == Some(POLICY)),
        "each manifest records the policy that made it"
    );
    assert_eq!(
        ids,
        [full.backup_id.as_str(), incr.backup_id.as_str()],
        "{cat:?}"
    );
    assert_eq!(mine[1].manifest.base_snapshot.as_deref(), Some("zb-os-1"));

    // Restore: each piece read back, verified against its manifest's sha256, then received.
    let restored = format!("{}/restored", pool.name);
    for b in &mine {
        let id: StreamId = b.manifest.id.parse().expect("id");
        let bytes = get(
            admin_store.as_ref(),
            &keys.stream(HOST, &ds, &id, false).expect("key"),
        )
        .await;
        assert_eq!(bytes.len() as u64, b.manifest.bytes);
        assert_eq!(Some(hex::encode(Sha256::digest(&bytes))), b.manifest.sha256);
        receive(&zfs, &restored, bytes).await;
    }
    assert_eq!(checksums(&mountpoint(&restored)), want);

    // Least privilege, answered by the server: the source's key cannot delete its own backup,
    // nor write under another host's prefix; the backup is still there afterwards.
    let src_store = connect(&t, &source_a()).expect("source client");
    let stream_key = keys
        .stream(HOST, &ds, &full.backup_id.parse().expect("id"), false)
        .expect("key");
    let denied = src_store.delete(&stream_key).await;
    println!("source DELETE of its own backup: {denied:?}");
    assert!(denied.is_err(), "the source's key deleted {stream_key}");
    let manifest_key = keys
        .manifest(HOST, &ds, &full.backup_id.parse().expect("id"), false)
        .expect("key");
    assert!(src_store.delete(&manifest_key).await.is_err());
    let elsewhere = Key::from(format!("{PREFIX}/objstore-src-b/x/1.full"));
    let put = src_store
        .put(&elsewhere, PutPayload::from_static(b"x"))
        .await;
    println!("source PUT under another host: {put:?}");
    assert!(
        put.is_err(),
        "the source's key wrote under another host's prefix"
    );
    assert_eq!(
        admin_store
            .head(&stream_key)
            .await
            .expect("still there")
            .size,
        full.bytes
    );

    // Clean up with the admin key (the only one that deletes).
    for b in &mine {
        let id: StreamId = b.manifest.id.parse().expect("id");
        for k in [
            keys.manifest(HOST, &ds, &id, false).expect("key"),
            keys.stream(HOST, &ds, &id, false).expect("key"),
        ] {
            admin_store.delete(&k).await.expect("admin deletes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_and_a_missing_bucket_fail_with_the_servers_reason() {
    let ep = endpoint();
    let pool = Pool::new("objstorebad");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 3, 2, 100_000);
    let zfs = Zfs::detect().await.expect("detect zfs");

    let wrong = settings(creds_file("wrong", &creds("ZBE2ESRCA", "not-the-secret")));
    let err = job::run(
        &zfs,
        HOST,
        &spec(&ds, "zb-bad-1", None, target(&ep, BUCKET)),
        Some(POLICY),
        &no_endpoint(),
        &wrong,
    )
    .await
    .expect_err("a wrong secret must fail");
    let text = err.to_string();
    println!("wrong secret: {text}");
    assert!(matches!(err, JobError::ObjectStore(_)), "{text}");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");

    let admin_file = settings(creds_file("admin", &admin()));
    let err = job::run(
        &zfs,
        HOST,
        &spec(
            &ds,
            "zb-bad-2",
            None,
            target(&ep, "zetaback-e2e-no-such-bucket"),
        ),
        Some(POLICY),
        &no_endpoint(),
        &admin_file,
    )
    .await
    .expect_err("a missing bucket must fail");
    let text = err.to_string();
    println!("missing bucket: {text}");
    assert!(text.contains("NoSuchBucket"), "{text}");
}

/// The source fails part-way through (a stream that errors after 20 MiB, named as the fake it
/// is: a real `zfs send` cannot be made to fail on cue): the multipart upload is aborted,
/// nothing is listed, no upload lingers, and the same backup then uploads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_mid_upload_leaves_nothing_and_the_retry_succeeds() {
    let ep = endpoint();
    let t = target(&ep, BUCKET);
    let keys = Keys::new(Some(PREFIX));
    let dataset = format!("zbobjfail{}/data", std::process::id());
    let spec = UploadSpec {
        host: HOST.into(),
        dataset: dataset.clone(),
        id: StreamId::Full { ts: 1_700_000_000 },
        snapshot: "zb-fail".into(),
        base_snapshot: None,
        compression: Compression::None,
        policy: Some(POLICY.into()),
    };
    let src: Arc<dyn ObjectStore> = connect(&t, &source_a()).expect("source client");
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let failing = futures::stream::iter(std::iter::repeat_n(chunk.clone(), 20).map(Ok).chain(
        std::iter::once(Err(std::io::Error::other("zfs send died (fake)"))),
    ))
    .boxed();
    let err = upload(src.as_ref(), &keys, &spec, failing)
        .await
        .expect_err("a failing source fails the upload");
    assert!(err.to_string().contains("zfs send died (fake)"), "{err}");

    let admin_store = connect(&t, &admin()).expect("admin client");
    let dir = Key::from(keys.dataset_dir(HOST, &dataset, false).expect("dir"));
    let listed: Vec<_> = admin_store
        .list(Some(&dir))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("list");
    assert!(listed.is_empty(), "left behind: {listed:?}");
    // ListMultipartUploads, signed by curl (the query sorted and encoded as SigV4 wants it).
    let encoded = dir.as_ref().replace('/', "%2F").replace('+', "%2B");
    let uploads = Command::new("curl")
        .args([
            "-s",
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "ZBE2EADMIN:zetaback-e2e-admin-secret",
            &format!("{ep}/{BUCKET}?prefix={encoded}&uploads="),
        ])
        .output()
        .expect("curl");
    let xml = String::from_utf8_lossy(&uploads.stdout);
    assert!(xml.contains("ListMultipartUploadsResult"), "{xml}");
    assert!(
        !xml.contains("<Upload>"),
        "an incomplete upload lingers: {xml}"
    );

    let whole =
        futures::stream::iter(std::iter::repeat_n(chunk, 20).map(Ok::<Bytes, std::io::Error>))
            .boxed();
    let m = upload(src.as_ref(), &keys, &spec, whole)
        .await
        .expect("the retry uploads");
    assert_eq!(m.bytes, 20 << 20);
    let cat = catalogue::read(admin_store.as_ref(), &keys)
        .await
        .expect("catalogue");
    assert_eq!(cat.of(HOST, &dataset).count(), 1);
    for k in [
        keys.manifest(HOST, &dataset, &spec.id, false).expect("key"),
        keys.stream(HOST, &dataset, &spec.id, false).expect("key"),
    ] {
        admin_store.delete(&k).await.expect("admin deletes");
    }
}

/// A source may write any object under its own host's prefix, so a compromised node can leave a
/// manifest of any size there; the controller, the CLI and a restoring agent read every manifest
/// of a bucket. A manifest larger than the limit is reported as a problem without being read
/// (before the limit, an 80 MiB manifest — valid JSON padded with spaces — was read whole into
/// memory and counted as a backup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_written_by_a_source_is_reported_and_never_read() {
    let ep = endpoint();
    let t = target(&ep, BUCKET);
    let keys = Keys::new(Some(PREFIX));
    let source = connect(&t, &source_a()).expect("source client");
    let dataset = format!("oversize{}/data", std::process::id());
    let created = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(3600))
        .expect("an hour ago");
    let id: StreamId = format!("{}.full", created.as_second())
        .parse()
        .expect("an id");
    let stream = b"not really a zfs stream".to_vec();
    let manifest = zetaback_core::store::Manifest {
        version: zetaback_core::store::MANIFEST_VERSION,
        id: id.to_string(),
        host: HOST.into(),
        dataset: dataset.clone(),
        snapshot: "zb-oversize".into(),
        base_snapshot: None,
        backup_type: zetaback_core::api::BackupType::Full,
        bytes: stream.len() as u64,
        sha256: Some(hex::encode(Sha256::digest(&stream))),
        compression: zetaback_core::api::backup_policy::Compression::None,
        created: jiff::Timestamp::from_second(created.as_second()).expect("created"),
        policy: Some(POLICY.into()),
        xxh3: None,
        raw: false,
    };
    let mut body = manifest.to_json().expect("manifest json");
    body.extend(std::iter::repeat_n(b' ', 80 << 20));
    let stream_key = keys.stream(HOST, &dataset, &id, false).expect("key");
    let manifest_key = keys.manifest(HOST, &dataset, &id, false).expect("key");
    source
        .put(&stream_key, PutPayload::from(stream))
        .await
        .expect("the source writes a stream under its prefix");
    source
        .put(&manifest_key, PutPayload::from(body))
        .await
        .expect("the source writes an 80 MiB manifest under its prefix");

    let admin_store = connect(&t, &admin()).expect("admin client");
    let cat = catalogue::read(admin_store.as_ref(), &keys)
        .await
        .expect("the catalogue is read despite the oversized manifest");
    assert_eq!(
        cat.of(HOST, &dataset).count(),
        0,
        "the oversized manifest was read and counted as a backup"
    );
    assert!(
        cat.problems
            .iter()
            .any(|p| p.contains(manifest_key.as_ref()) && p.contains("larger than")),
        "no size problem reported: {:?}",
        cat.problems
    );
    // The controller's cached reads (only new or changed manifests fetched) apply the same limit.
    let mut cached = zetaback_objstore::cached::CachedCatalogue::new(
        zetaback_objstore::cached::Scope::Host(HOST.into()),
    );
    cached
        .refresh(admin_store.as_ref(), &keys, 4)
        .await
        .expect("a cached read despite the oversized manifest");
    let cat = cached.catalogue();
    assert_eq!(cat.of(HOST, &dataset).count(), 0, "cached read counted it");
    assert!(
        cat.problems.iter().any(|p| p.contains("larger than")),
        "no size problem in the cached read: {:?}",
        cat.problems
    );
    for key in [&stream_key, &manifest_key] {
        admin_store.delete(key).await.expect("clean up");
    }
}

/// A TCP relay in front of the S3 server that counts the bytes going to the server: what the
/// client really sent, whatever it believes it did.
struct CountingRelay {
    url: String,
    to_server: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    async fn start(endpoint: &str) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::AsyncReadExt;
        let upstream: std::net::SocketAddr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the endpoint is http://<ip>:<port>");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let to_server = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = to_server.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let counted = counted.clone();
                connections.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            counted.fetch_add(n as u64, Relaxed);
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            to_server,
            task,
        }
    }

    fn sent(&self) -> u64 {
        self.to_server.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A part goes to the server as soon as it is full, even while the source sends nothing more
/// (a `zfs send` slowed by its disks, or a bandwidth limit). Before, a full part waited unsent
/// until the reader needed room for another one, so a stalled source held it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_part_is_sent_while_the_source_is_stalled() {
    use zetaback_objstore::upload::FIRST_PART_SIZE;
    let ep = endpoint();
    let relay = CountingRelay::start(&ep).await;
    let keys = Keys::new(Some(PREFIX));
    let dataset = format!("zbobjstall{}/data", std::process::id());
    let spec = UploadSpec {
        host: HOST.into(),
        dataset: dataset.clone(),
        id: StreamId::Full { ts: 1_700_000_100 },
        snapshot: "zb-stall".into(),
        base_snapshot: None,
        compression: Compression::None,
        policy: Some(POLICY.into()),
    };
    let src: Arc<dyn ObjectStore> =
        connect(&target(&relay.url, BUCKET), &source_a()).expect("source client");
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let chunks =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed();
    let uploading = tokio::spawn({
        let (src, keys, spec) = (src.clone(), keys.clone(), spec.clone());
        async move { upload(src.as_ref(), &keys, &spec, chunks).await }
    });
    // One full part and one byte of the next, then nothing until the part reached the server.
    tx.send(Ok(Bytes::from(vec![5u8; FIRST_PART_SIZE + 1])))
        .await
        .expect("the upload reads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while relay.sent() < FIRST_PART_SIZE as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sent = relay.sent();
    assert!(
        sent >= FIRST_PART_SIZE as u64,
        "the full part was not sent while the source stalled: {sent} bytes reached the server in 60 s"
    );
    drop(tx);
    let m = uploading
        .await
        .expect("upload task")
        .expect("the upload completes once the source ends");
    assert_eq!(m.bytes, FIRST_PART_SIZE as u64 + 1);
    let admin_store = connect(&target(&ep, BUCKET), &admin()).expect("admin client");
    let stored = get(
        admin_store.as_ref(),
        &keys.stream(HOST, &dataset, &spec.id, false).expect("key"),
    )
    .await;
    assert_eq!(stored.len(), FIRST_PART_SIZE + 1);
    assert!(stored.iter().all(|b| *b == 5), "the stored bytes differ");
    for k in [
        keys.manifest(HOST, &dataset, &spec.id, false).expect("key"),
        keys.stream(HOST, &dataset, &spec.id, false).expect("key"),
    ] {
        admin_store.delete(&k).await.expect("admin deletes");
    }
}
