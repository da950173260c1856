//! Restores from a real S3 server (SeaweedFS, `e2e/scripts/seaweedfs.sh up`) into real zfs-fuse
//! pools: the agent reads the chain's manifests from the bucket, streams each piece with its
//! sha256 checked before the piece's end reaches `zfs receive`, and the restored files are the
//! originals byte for byte. An object changed in the bucket (one byte flipped, written back
//! with the admin key as an attacker or a bad disk would) is refused with a checksum error and
//! leaves no dataset behind, whether it is the full or a later incremental. A restore whose
//! destination ZFS calls busy (its mount in use) waits for it and then goes through.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{Pool, checksums, mountpoint, next_second, repo_root, write_files, zfs as zfs_cli};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use zetaback_agent::job::{self, JobSettings};
use zetaback_agent::objstore_restore;
use zetaback_agent::restore::RestoreError;
use zetaback_agent::transfer::Endpoint;
use zetaback_agent::zfs::Zfs;
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName, Target};
use zetaback_core::api::{BackupJobSpec, BackupType};
use zetaback_core::store::StreamId;
use zetaback_objstore::{Credentials, Keys, connect};

const PREFIX: &str = "objstore";
/// The source identity of s3-identities.json (writes only under `objstore/objstore-src-a/`).
const HOST: &str = "objstore-src-a";

fn target(endpoint: &str) -> ObjectStoreTarget {
    ObjectStoreTarget {
        endpoint: Some(endpoint.to_owned()),
        bucket: "zetaback-e2e".into(),
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

fn creds(id: &str, secret: &str) -> Credentials {
    Credentials {
        access_key_id: id.into(),
        secret_access_key: secret.into(),
    }
}

/// A credentials file `name` in `dir` holding these keys (the agent reads keys from a file).
fn credentials_file(
    dir: &std::path::Path,
    name: &str,
    id: &str,
    secret: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(r#"{{"accessKeyId":"{id}","secretAccessKey":"{secret}"}}"#),
    )
    .expect("credentials");
    path
}

/// A temporary directory for a test's files (removed by the test), and the job settings of a
/// source uploading into the bucket with source host A's keys (a file in that directory).
fn source_settings(tag: &str) -> (std::path::PathBuf, JobSettings) {
    let dir = std::env::temp_dir().join(format!("zb-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keys = credentials_file(&dir, "src.json", "ZBE2ESRCA", "zetaback-e2e-src-a-secret");
    let settings = JobSettings {
        bandwidth_limit: 0,
        prune_snapshots: false,
        idle_timeout: std::time::Duration::from_secs(60),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        tls: None,
        object_store_credentials: Some(keys),
    };
    (dir, settings)
}

fn spec(dataset: &str, snapshot: &str, base: Option<&str>, t: ObjectStoreTarget) -> BackupJobSpec {
    BackupJobSpec {
        policy: "bucket-restore".into(),
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
        compression: Compression::Zstd,
        intermediates: false,
    }
}

/// Flips one byte in the middle of the object at `key` (rewritten with the admin key).
async fn flip_a_byte(store: &dyn ObjectStore, key: &Key) {
    let mut bytes = store
        .get(key)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store
        .put(key, PutPayload::from(bytes))
        .await
        .expect("overwrite with the admin key");
}

fn exists(dataset: &str) -> bool {
    Command::new("zfs")
        .args(["list", "-H", "-o", "name", dataset])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn mounted_anything_of(dataset: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(dataset))
}

/// What [`full_then_incremental`] stored: the source dataset and its directory, the two
/// backups, and the source's temporary directory (its bucket keys).
struct Chain {
    ds: String,
    dir: std::path::PathBuf,
    full: job::JobOutcome,
    incr: job::JobOutcome,
    dir_tmp: std::path::PathBuf,
}

/// A new dataset `data` of `pool` backed up into the bucket with the agent's job code: a full
/// (snapshot `<tag>-1`) of `write_files(seed, n, size)` per `first`, then, a second later, an
/// incremental (`<tag>-2`) after `then`'s files were written.
async fn full_then_incremental(
    pool: &Pool,
    zfs: &Zfs,
    t: &ObjectStoreTarget,
    tag: &str,
    first: (u64, usize, usize),
    then: (u64, usize, usize),
) -> Chain {
    let (ds, dir) = pool.create("data");
    write_files(&dir, first.0, first.1, first.2);
    let (dir_tmp, settings) = source_settings(tag);
    let none = Endpoint::new("object-store", String::new());
    let (snap1, snap2) = (format!("{tag}-1"), format!("{tag}-2"));
    let full = job::run(
        zfs,
        HOST,
        &spec(&ds, &snap1, None, t.clone()),
        Some("t/p"),
        &none,
        &settings,
    )
    .await
    .expect("full into the bucket");
    next_second();
    write_files(&dir, then.0, then.1, then.2);
    let incr = job::run(
        zfs,
        HOST,
        &spec(&ds, &snap2, Some(&snap1), t.clone()),
        Some("t/p"),
        &none,
        &settings,
    )
    .await
    .expect("incremental into the bucket");
    Chain {
        ds,
        dir,
        full,
        incr,
        dir_tmp,
    }
}

/// Deletes the backups `ids` of `ds` (manifest and stream) with the admin key.
async fn delete_from_bucket(admin: &dyn ObjectStore, keys: &Keys, ds: &str, ids: &[&str]) {
    for id in ids {
        let id: StreamId = id.parse().expect("id");
        for k in [
            keys.manifest(HOST, ds, &id, false).expect("key"),
            keys.stream(HOST, ds, &id, false).expect("key"),
        ] {
            admin.delete(&k).await.expect("admin deletes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_restore_verifies_each_piece_and_refuses_a_changed_object() {
    let ep = endpoint();
    let t = target(&ep);
    let pool = Pool::new("bucketrestore");
    let zfs = Zfs::detect().await.expect("detect zfs");
    // More than the held-back megabyte, so the check is what keeps the end from zfs.
    let Chain {
        ds,
        dir,
        full,
        incr,
        dir_tmp,
    } = full_then_incremental(&pool, &zfs, &t, "zb-br", (1, 6, 400_000), (2, 4, 300_000)).await;
    let want = checksums(&dir);

    let admin = connect(&t, &creds("ZBE2EADMIN", "zetaback-e2e-admin-secret")).expect("client");
    let keys = Keys::new(Some(PREFIX));

    // The chain restored from the bucket: the files are the originals.
    let into = format!("{}/restored", pool.name);
    let restored = objstore_restore::restore(
        &zfs,
        admin.as_ref(),
        &keys,
        (HOST, &ds, &incr.backup_id),
        &into,
    )
    .await
    .expect("restore from the bucket");
    assert_eq!(
        restored.chain,
        [full.backup_id.clone(), incr.backup_id.clone()]
    );
    assert_eq!(checksums(&mountpoint(&into)), want, "restored files differ");

    // The incremental's object changed in the bucket: the full is applied, the incremental
    // refused, and the dataset the restore made is gone again.
    let key = |id: &str| {
        let id: StreamId = id.parse().expect("id");
        keys.stream(HOST, &ds, &id, false).expect("key")
    };
    flip_a_byte(admin.as_ref(), &key(&incr.backup_id)).await;
    let into2 = format!("{}/restored2", pool.name);
    let err = objstore_restore::restore(
        &zfs,
        admin.as_ref(),
        &keys,
        (HOST, &ds, &incr.backup_id),
        &into2,
    )
    .await
    .expect_err("a changed incremental is refused");
    println!("changed incremental: {err}");
    assert!(
        matches!(&err, RestoreError::ChecksumMismatch { id, .. } if *id == incr.backup_id),
        "{err:?}"
    );
    assert!(
        !exists(&into2),
        "{into2} was left behind: {}",
        zfs_cli(&["list", "-r", &pool.name])
    );
    assert!(!mounted_anything_of(&into2));

    // The full's object changed: refused before anything is applied.
    flip_a_byte(admin.as_ref(), &key(&full.backup_id)).await;
    let into3 = format!("{}/restored3", pool.name);
    let err = objstore_restore::restore(
        &zfs,
        admin.as_ref(),
        &keys,
        (HOST, &ds, &full.backup_id),
        &into3,
    )
    .await
    .expect_err("a changed full is refused");
    println!("changed full: {err}");
    assert!(
        matches!(&err, RestoreError::ChecksumMismatch { id, .. } if *id == full.backup_id),
        "{err:?}"
    );
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!exists(&into3), "{into3} was left behind");
    assert!(!mounted_anything_of(&into3));

    delete_from_bucket(
        admin.as_ref(),
        &keys,
        &ds,
        &[&full.backup_id, &incr.backup_id],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir_tmp);
}

/// The first piece of a bucket restore waits while ZFS calls the destination busy, as a
/// file-store restore's does: here `zfs receive -F` cannot unmount the dataset it replaces
/// while a process has its working directory in it (zfs-fuse: "umount: …: target is busy."),
/// and the restore goes through once that process ended. The bytes counted are those of the
/// piece once, not once per try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_restore_waits_while_zfs_calls_its_destination_busy() {
    let ep = endpoint();
    let t = target(&ep);
    let pool = Pool::new("bucketbusy");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 3, 2, 300_000);
    let want = checksums(&dir);
    let zfs = Zfs::detect().await.expect("detect zfs");
    let (dir_tmp, settings) = source_settings("bucket-busy");
    let reader_creds = credentials_file(
        &dir_tmp,
        "reader.json",
        "ZBE2EADMIN",
        "zetaback-e2e-admin-secret",
    );
    let none = Endpoint::new("object-store", String::new());
    let full = job::run(
        &zfs,
        HOST,
        &spec(&ds, "zb-busy-1", None, t.clone()),
        Some("t/p"),
        &none,
        &settings,
    )
    .await
    .expect("full into the bucket");

    // An existing dataset without snapshots, replaced (force); its mount is in use for a
    // few seconds.
    let (into, into_dir) = pool.create("busy");
    let mut holder = Command::new("sleep")
        .arg("4")
        .current_dir(&into_dir)
        .spawn()
        .expect("a process in the destination");
    let progress = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let restored = objstore_restore::restore_resolved(
        &zfs,
        Some(&reader_creds),
        &t,
        (HOST, &ds),
        &[objstore_restore::ResolvedPiece {
            id: full.backup_id.clone(),
            sha256: String::new(),
        }],
        &into,
        (true, false),
        &progress,
        |_| {},
    )
    .await;
    let waited = started.elapsed();
    let _ = holder.wait();
    let restored = restored.expect("the restore waits while the destination is busy");
    println!("restored after {waited:?}");
    assert_eq!(restored.chain, std::slice::from_ref(&full.backup_id));
    assert_eq!(checksums(&mountpoint(&into)), want, "restored files differ");
    assert_eq!(
        progress.load(Ordering::Relaxed),
        restored.bytes,
        "the piece's bytes, counted once"
    );

    let admin = connect(&t, &creds("ZBE2EADMIN", "zetaback-e2e-admin-secret")).expect("client");
    let keys = Keys::new(Some(PREFIX));
    let id: StreamId = full.backup_id.parse().expect("id");
    for k in [
        keys.manifest(HOST, &ds, &id, false).expect("key"),
        keys.stream(HOST, &ds, &id, false).expect("key"),
    ] {
        admin.delete(&k).await.expect("admin deletes");
    }
    let _ = std::fs::remove_dir_all(&dir_tmp);
}

/// A piece whose `zfs receive` stops reading early (here it refuses the stream after its first
/// records) ends the restore with the receive's own error; it does not hang. The bucket holds a
/// self-consistent but wrong backup, as a compromised source (or anyone who can write the
/// bucket) could leave: the full's object replaced by a large incremental stream and its
/// manifest's sha256 and size rewritten to match, so the checksum passes and the receive of an
/// incremental into a new dataset refuses it. Before the fix the feeder waited forever on a full
/// channel the stopped writer no longer read (the restore never returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_restore_whose_receive_stops_reading_early_fails_instead_of_hanging() {
    use sha2::Digest;
    let ep = endpoint();
    let t = target(&ep);
    let pool = Pool::new("bucketearly");
    let zfs = Zfs::detect().await.expect("detect zfs");
    // The incremental: far more than the channel, the held-back tail and the pipe hold (a few
    // MiB).
    let Chain {
        ds,
        full,
        incr,
        dir_tmp,
        ..
    } = full_then_incremental(
        &pool,
        &zfs,
        &t,
        "zb-early",
        (5, 1, 100_000),
        (6, 24, 1_000_000),
    )
    .await;

    let admin = connect(&t, &creds("ZBE2EADMIN", "zetaback-e2e-admin-secret")).expect("client");
    let keys = Keys::new(Some(PREFIX));
    let id = |id: &str| -> StreamId { id.parse().expect("id") };
    let incr_bytes = admin
        .get(
            &keys
                .stream(HOST, &ds, &id(&incr.backup_id), false)
                .expect("key"),
        )
        .await
        .expect("GET the incremental")
        .bytes()
        .await
        .expect("body");
    assert!(incr_bytes.len() > 16 << 20, "{} bytes", incr_bytes.len());
    let full_stream = keys
        .stream(HOST, &ds, &id(&full.backup_id), false)
        .expect("key");
    let full_manifest = keys
        .manifest(HOST, &ds, &id(&full.backup_id), false)
        .expect("key");
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &admin
            .get(&full_manifest)
            .await
            .expect("GET the manifest")
            .bytes()
            .await
            .expect("body"),
    )
    .expect("manifest JSON");
    manifest["sha256"] = hex::encode(sha2::Sha256::digest(&incr_bytes)).into();
    manifest["bytes"] = incr_bytes.len().into();
    admin
        .put(&full_stream, PutPayload::from(incr_bytes.clone()))
        .await
        .expect("replace the full's object");
    admin
        .put(
            &full_manifest,
            PutPayload::from(serde_json::to_vec(&manifest).expect("JSON")),
        )
        .await
        .expect("rewrite the full's manifest");

    let into = format!("{}/restored", pool.name);
    let restored = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        objstore_restore::restore(
            &zfs,
            admin.as_ref(),
            &keys,
            (HOST, &ds, &full.backup_id),
            &into,
        ),
    )
    .await
    .expect("the restore ended (it hung before: the receive had stopped reading)");
    let err = restored.expect_err("an incremental stream as the first piece is refused");
    println!("restore of the swapped full: {err}");
    assert!(
        !matches!(err, RestoreError::ChecksumMismatch { .. }),
        "the checksum matched the object; the receive is what refused it: {err:?}"
    );
    assert!(
        !exists(&into),
        "{into} was left behind: {}",
        zfs_cli(&["list", "-r", &pool.name])
    );

    delete_from_bucket(
        admin.as_ref(),
        &keys,
        &ds,
        &[&full.backup_id, &incr.backup_id],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir_tmp);
}
