//! Verification of a backup in a bucket (`verify::verify`) against a real S3 server
//! (SeaweedFS, `e2e/scripts/seaweedfs.sh up`): a stream of more than one ranged window is
//! re-read and found good, the verdict recorded under `.verify/`; a good check newer than the
//! request is not repeated; one byte flipped through the admin key is found (sha256) and
//! quarantined, stickily; both catalogue reads (whole and incremental) attach the record to its
//! backup; a source's own key may not write a record.

use std::process::Command;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName};
use zetaback_core::store::{MANIFEST_VERSION, Manifest, StreamId, Verified};
use zetaback_objstore::cached::{CachedCatalogue, Scope};
use zetaback_objstore::{Credentials, Keys, catalogue, connect, verify};

/// The host whose own key (`objstore-src-a`) may write exactly `objstore/objstore-src-a/*`.
const HOST: &str = "objstore-src-a";

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

fn client(endpoint: &str, (id, secret): (&str, &str)) -> Arc<dyn ObjectStore> {
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
            access_key_id: id.into(),
            secret_access_key: secret.into(),
        },
    )
    .expect("client")
}

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn a_flipped_byte_in_a_bucket_is_found_quarantined_and_shown_by_the_catalogue() {
    let endpoint = endpoint();
    let admin = client(&endpoint, ("ZBE2EADMIN", "zetaback-e2e-admin-secret"));
    // The prefix the source identities are scoped under, a dataset of this run's own.
    let prefix = "objstore";
    let host = HOST.to_owned();
    let dataset = format!("tank/verify{}", std::process::id());
    let dataset = dataset.as_str();
    let keys = Keys::new(Some(prefix));
    let ts = 1_700_000_000;
    let id = StreamId::Full { ts };
    // More than one ranged window (16 MiB), so the read continues across ranges.
    let body = noise(verify::WINDOW as usize + 1_000_003);
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: id.to_string(),
        host: host.clone(),
        dataset: dataset.to_owned(),
        snapshot: format!("zetaback-{ts}"),
        base_snapshot: None,
        backup_type: BackupType::Full,
        bytes: body.len() as u64,
        sha256: Some(hex::encode(Sha256::digest(&body))),
        compression: Compression::None,
        created: jiff::Timestamp::from_second(ts).unwrap(),
        policy: None,
        xxh3: None,
        raw: false,
    };
    let stream_key = keys.stream(&host, dataset, &id, false).unwrap();
    admin
        .put(&stream_key, PutPayload::from(body.clone()))
        .await
        .unwrap();
    admin
        .put(
            &keys.manifest(&host, dataset, &id, false).unwrap(),
            PutPayload::from(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .unwrap();
    let b = (host.as_str(), dataset, &id);

    // Good: read whole (every byte, across windows), recorded.
    let progress = std::sync::atomic::AtomicU64::new(0);
    let first = verify::verify(admin.as_ref(), &keys, b, 0, None, |n| {
        progress.store(n, std::sync::atomic::Ordering::Relaxed)
    })
    .await
    .unwrap();
    let Verified::Checked(good) = first else {
        panic!("not read: {first:?}")
    };
    assert!(good.ok, "{good:?}");
    assert_eq!(good.bytes, body.len() as u64);
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::Relaxed),
        body.len() as u64
    );
    assert_eq!(
        verify::read_record(admin.as_ref(), &keys, b).await.unwrap(),
        Some(good.clone())
    );
    // Checked good at or after the request's time: not read again.
    let again = verify::verify(admin.as_ref(), &keys, b, 0, Some(good.verified_at), |_| {})
        .await
        .unwrap();
    assert_eq!(again, Verified::Recent(good.clone()));

    // One byte flipped (same size), through the admin key: found and quarantined.
    let mut flipped = body.clone();
    flipped[body.len() / 3] ^= 0x20;
    admin
        .put(&stream_key, PutPayload::from(flipped))
        .await
        .unwrap();
    let found = verify::verify(admin.as_ref(), &keys, b, 64 << 20, None, |_| {})
        .await
        .unwrap();
    let Verified::Checked(bad) = found else {
        panic!("not read: {found:?}")
    };
    assert!(bad.quarantined(), "{bad:?}");
    assert!(
        bad.problem.as_deref().is_some_and(|p| p.contains("sha256")),
        "{bad:?}"
    );
    // Sticky: never read again.
    let sticky = verify::verify(admin.as_ref(), &keys, b, 0, None, |_| {})
        .await
        .unwrap();
    assert_eq!(sticky, Verified::AlreadyQuarantined(bad.clone()));

    // Both catalogue reads carry the verdict on the backup.
    // (The whole read covers the prefix other tests share: this run's dataset is looked at.)
    let whole = catalogue::read(admin.as_ref(), &keys).await.unwrap();
    let mine: Vec<_> = whole
        .backups
        .iter()
        .filter(|b| b.manifest.dataset == dataset)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].verification, Some(bad.clone()));
    assert!(
        !whole
            .problems
            .iter()
            .any(|p| p.contains(dataset.replace('/', "+").as_str())),
        "{:?}",
        whole.problems
    );
    let mut cached = CachedCatalogue::new(Scope::Dataset {
        host: host.clone(),
        dataset: dataset.to_owned(),
    });
    let stats = cached.refresh(admin.as_ref(), &keys, 4).await.unwrap();
    assert_eq!(stats.fetched, 2, "the manifest and the record: {stats:?}");
    let cat = cached.catalogue();
    assert_eq!(cat.backups.len(), 1);
    assert_eq!(cat.backups[0].verification, Some(bad.clone()));
    let stats = cached.refresh(admin.as_ref(), &keys, 4).await.unwrap();
    assert!(!stats.manifests_changed(), "nothing changed: {stats:?}");
    assert_eq!(cached.catalogue().backups[0].verification, Some(bad));

    // A source's own key writes only under its host: it cannot clear the verdict.
    let source = client(&endpoint, ("ZBE2ESRCA", "zetaback-e2e-src-a-secret"));
    let record_key = keys.verification(&host, dataset, &id).unwrap();
    let forged = source
        .put(&record_key, PutPayload::from_static(b"{}"))
        .await;
    assert!(forged.is_err(), "a source wrote a verdict: {forged:?}");

    for root in [
        keys.dataset_dir(&host, dataset, false).unwrap(),
        keys.verification_dir(&host, Some(dataset)).unwrap(),
    ] {
        let objects: Vec<_> = admin
            .list(Some(&Path::from(root.as_str())))
            .try_collect()
            .await
            .unwrap_or_default();
        for o in objects {
            let _ = admin.delete(&o.location).await;
        }
    }
}
