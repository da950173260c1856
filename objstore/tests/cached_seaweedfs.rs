//! The incremental catalogue read (`cached::CachedCatalogue`) against a real S3 server
//! (SeaweedFS, `e2e/scripts/seaweedfs.sh up`): a read again fetches only new or rewritten
//! manifests, a deleted manifest's backup disappears, a stream without its manifest never
//! appears, and each read equals the whole read of the old path (`catalogue::read`) for its
//! scope.

use std::process::Command;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName};
use zetaback_core::store::{Catalogue, MANIFEST_VERSION, Manifest, StreamId};
use zetaback_objstore::cached::{CachedCatalogue, Scope};
use zetaback_objstore::{Credentials, Keys, catalogue, connect};

const HOST: &str = "bucket-ca";
const OTHER: &str = "bucket-cb";
const DATASET: &str = "tank/x";

fn endpoint() -> String {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/scripts/seaweedfs.sh");
    let out = Command::new(script)
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

fn store(endpoint: &str) -> Arc<dyn ObjectStore> {
    let target = ObjectStoreTarget {
        endpoint: Some(endpoint.to_owned()),
        bucket: "zetaback-e2e".into(),
        prefix: None,
        region: "us-east-1".into(),
        path_style: true,
        credentials_secret: SecretName {
            name: "unused".into(),
        },
        archive_storage_class: None,
        immutable_for: None,
    };
    connect(
        &target,
        &Credentials {
            access_key_id: "ZBE2EADMIN".into(),
            secret_access_key: "zetaback-e2e-admin-secret".into(),
        },
    )
    .expect("client")
}

fn manifest(host: &str, dataset: &str, ts: i64, bytes: u64) -> Vec<u8> {
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: StreamId::Full { ts }.to_string(),
        host: host.into(),
        dataset: dataset.into(),
        snapshot: format!("zetaback-{ts}"),
        base_snapshot: None,
        backup_type: BackupType::Full,
        bytes,
        sha256: Some("0".repeat(64)),
        compression: Compression::None,
        created: jiff::Timestamp::from_second(ts).unwrap(),
        policy: None,
        xxh3: None,
        raw: false,
    };
    serde_json::to_vec(&m).unwrap()
}

async fn put_stream(s: &dyn ObjectStore, keys: &Keys, host: &str, dataset: &str, ts: i64) {
    let key = keys
        .stream(host, dataset, &StreamId::Full { ts }, false)
        .unwrap();
    s.put(&key, PutPayload::from_static(b"0123456789"))
        .await
        .unwrap();
}

async fn put_manifest(
    s: &dyn ObjectStore,
    keys: &Keys,
    host: &str,
    dataset: &str,
    ts: i64,
    bytes: u64,
) {
    let key = keys
        .manifest(host, dataset, &StreamId::Full { ts }, false)
        .unwrap();
    s.put(&key, PutPayload::from(manifest(host, dataset, ts, bytes)))
        .await
        .unwrap();
}

async fn put_backup(s: &dyn ObjectStore, keys: &Keys, host: &str, dataset: &str, ts: i64) {
    put_stream(s, keys, host, dataset, ts).await;
    put_manifest(s, keys, host, dataset, ts, 10).await;
}

fn ids(cat: &Catalogue) -> Vec<String> {
    cat.backups
        .iter()
        .map(|b| {
            format!(
                "{}:{}/{}",
                b.manifest.host, b.manifest.dataset, b.manifest.id
            )
        })
        .collect()
}

/// The old path's answer for the same scope: the whole prefix read, then filtered.
async fn oracle(
    s: &dyn ObjectStore,
    keys: &Keys,
    host: &str,
    dataset: Option<&str>,
) -> Vec<String> {
    let whole = catalogue::read(s, keys).await.unwrap();
    ids(&whole)
        .into_iter()
        .filter(|id| {
            id.starts_with(&format!("{host}:"))
                && dataset.is_none_or(|d| id.starts_with(&format!("{host}:{d}/")))
        })
        .collect()
}

#[tokio::test]
async fn a_read_again_fetches_only_what_changed_and_matches_a_whole_read() {
    let endpoint = endpoint();
    let s = store(&endpoint);
    let s = s.as_ref();
    let prefix = format!(
        "bucket-cached-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_second()
    );
    let keys = Keys::new(Some(&prefix));
    for ts in [1_000, 2_000, 3_000] {
        put_backup(s, &keys, HOST, DATASET, ts).await;
    }
    put_backup(s, &keys, HOST, "tank/y", 1_500).await;
    put_backup(s, &keys, OTHER, DATASET, 1_000).await;

    let mut host = CachedCatalogue::new(Scope::Host(HOST.into()));
    let cold = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!((cold.fetched, cold.reused), (4, 0), "{cold:?}");
    assert_eq!(ids(&host.catalogue()), oracle(s, &keys, HOST, None).await);
    assert_eq!(
        host.catalogue().backups.len(),
        4,
        "another host's backup is not in the scope"
    );

    // Nothing changed: nothing fetched.
    let again = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!(
        (again.fetched, again.reused, again.gone),
        (0, 4, 0),
        "{again:?}"
    );

    // A new backup: only its manifest is fetched.
    put_backup(s, &keys, HOST, DATASET, 4_000).await;
    let grown = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!((grown.fetched, grown.reused), (1, 4), "{grown:?}");
    assert!(ids(&host.catalogue()).contains(&format!("{HOST}:{DATASET}/4000.full")));
    assert_eq!(ids(&host.catalogue()), oracle(s, &keys, HOST, None).await);

    // A deleted manifest: its backup is gone (its stream left alone is no backup).
    s.delete(
        &keys
            .manifest(HOST, DATASET, &StreamId::Full { ts: 2_000 }, false)
            .unwrap(),
    )
    .await
    .unwrap();
    let shrunk = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!((shrunk.fetched, shrunk.gone), (0, 1), "{shrunk:?}");
    let now = ids(&host.catalogue());
    assert!(
        !now.contains(&format!("{HOST}:{DATASET}/2000.full")),
        "{now:?}"
    );
    assert_eq!(now.len(), 4);
    assert_eq!(now, oracle(s, &keys, HOST, None).await);

    // A stream without its manifest (an upload whose manifest was never written): never a
    // backup, and nothing to fetch.
    put_stream(s, &keys, HOST, DATASET, 5_000).await;
    let orphan = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!(orphan.fetched, 0, "{orphan:?}");
    assert!(!ids(&host.catalogue()).iter().any(|i| i.contains("5000")));

    // A manifest rewritten at the same key (another ETag) is read again: here it no longer
    // matches its stream's size, and the catalogue says so.
    put_manifest(s, &keys, HOST, DATASET, 3_000, 11).await;
    let rewritten = host.refresh(s, &keys, 4).await.unwrap();
    assert_eq!(rewritten.fetched, 1, "{rewritten:?}");
    let cat = host.catalogue();
    assert!(!ids(&cat).contains(&format!("{HOST}:{DATASET}/3000.full")));
    assert!(
        cat.problems
            .iter()
            .any(|p| p.contains("3000.full.json") && p.contains("manifest says 11")),
        "{:?}",
        cat.problems
    );

    // A dataset's scope (what a Restore reads) holds that dataset only.
    let mut one = CachedCatalogue::new(Scope::Dataset {
        host: HOST.into(),
        dataset: DATASET.into(),
    });
    one.refresh(s, &keys, 4).await.unwrap();
    assert_eq!(
        ids(&one.catalogue()),
        oracle(s, &keys, HOST, Some(DATASET)).await
    );
    assert_eq!(
        ids(&one.catalogue()),
        [
            format!("{HOST}:{DATASET}/1000.full"),
            format!("{HOST}:{DATASET}/4000.full")
        ]
    );

    // Clean up the prefix.
    let root = Path::from(prefix.as_str());
    let all: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(s.list(Some(&root)))
        .await
        .unwrap();
    for o in all {
        s.delete(&o.location).await.unwrap();
    }
}
