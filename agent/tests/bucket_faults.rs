//! Faults of an upload into a real S3 server: the server (SeaweedFS, a private instance on its
//! own ports and data directory, `e2e/scripts/seaweedfs.sh` with `ZETABACK_S3_*`) SIGKILLed in
//! the middle of a multipart upload and started again on the same data. What is in the bucket
//! afterwards is either a whole backup (the upload's retries carried it over the restart) whose
//! restore gives the original files byte for byte, or nothing (no manifest, no object, no
//! lingering multipart upload); and the next backup uploads and restores.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Pool, checksums, mountpoint, next_second, repo_root, write_files};
use futures::StreamExt;
use object_store::ObjectStore;
use zetaback_agent::job::{self, JobSettings};
use zetaback_agent::objstore_restore;
use zetaback_agent::transfer::Endpoint;
use zetaback_agent::zfs::Zfs;
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName, Target};
use zetaback_core::api::{BackupJobSpec, BackupType};
use zetaback_objstore::{Credentials, Keys, catalogue, connect};

const HOST: &str = "objstore-src-a";
const PREFIX: &str = "objstore";
const S3_PORT: &str = "18433";

/// A SeaweedFS of this test alone: stopped and its data removed when dropped.
struct PrivateS3 {
    run: PathBuf,
}

impl PrivateS3 {
    fn new() -> Self {
        let run = PathBuf::from(format!(
            "/tmp/zetaback-s3-bucket-faults-{}",
            std::process::id()
        ));
        Self { run }
    }

    fn script(&self, arg: &str) -> String {
        let out = Command::new(repo_root().join("e2e/scripts/seaweedfs.sh"))
            .arg(arg)
            .env("ZETABACK_S3_RUN", &self.run)
            .env("ZETABACK_S3_PORT", S3_PORT)
            .env("ZETABACK_S3_MASTER_PORT", "19433")
            .env("ZETABACK_S3_VOLUME_PORT", "18180")
            .env("ZETABACK_S3_FILER_PORT", "18988")
            .output()
            .expect("run seaweedfs.sh");
        assert!(
            out.status.success(),
            "seaweedfs.sh {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// SIGKILLs the server (no clean shutdown).
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.run.join("weed.pid")).expect("weed.pid");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        // SIGKILL at once (`down` waits up to 10 s for a clean exit first: nothing to keep).
        if let Ok(pid) = std::fs::read_to_string(self.run.join("weed.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.script("down");
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

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

fn spec(dataset: &str, snapshot: &str, t: ObjectStoreTarget) -> BackupJobSpec {
    BackupJobSpec {
        policy: "bucket-faults".into(),
        host: HOST.into(),
        dataset: dataset.into(),
        backup_type: BackupType::Full,
        base_snapshot: None,
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

/// The incomplete multipart uploads under `prefix` (ListMultipartUploads, signed by curl).
fn pending_uploads(ep: &str, prefix: &str) -> String {
    let encoded = prefix.replace('/', "%2F").replace('+', "%2B");
    let out = Command::new("curl")
        .args([
            "-s",
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "ZBE2EADMIN:zetaback-e2e-admin-secret",
            &format!("{ep}/zetaback-e2e?prefix={encoded}&uploads="),
        ])
        .output()
        .expect("curl");
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(xml.contains("ListMultipartUploadsResult"), "{xml}");
    xml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_s3_server_killed_mid_upload_leaves_a_whole_backup_or_nothing() {
    let s3 = PrivateS3::new();
    let ep = s3.script("up");
    let t = target(&ep);
    let pool = Pool::new("bucketfaults");
    let (ds, dir) = pool.create("data");
    // 48 MB of noise at 8 MB/s: the upload runs for ~6 s, parts of 8 MiB.
    write_files(&dir, 7, 6, 8_000_000);
    let want = checksums(&dir);
    let zfs = Zfs::detect().await.expect("detect zfs");
    let creds_path = s3.run.join("src.json");
    std::fs::write(
        &creds_path,
        r#"{"accessKeyId":"ZBE2ESRCA","secretAccessKey":"zetaback-e2e-src-a-secret"}"#,
    )
    .expect("credentials");
    let settings = JobSettings {
        bandwidth_limit: 8_000_000,
        prune_snapshots: false,
        idle_timeout: Duration::from_secs(60),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        tls: None,
        object_store_credentials: Some(creds_path),
    };
    let none = Endpoint::new("object-store", String::new());
    let admin = connect(
        &t,
        &Credentials {
            access_key_id: "ZBE2EADMIN".into(),
            secret_access_key: "zetaback-e2e-admin-secret".into(),
        },
    )
    .expect("client");
    let keys = Keys::new(Some(PREFIX));
    let dataset_dir = keys.dataset_dir(HOST, &ds, false).expect("dir");

    let upload = {
        let (zfs, settings, none, t, ds) = (
            zfs.clone(),
            settings.clone(),
            none.clone(),
            t.clone(),
            ds.clone(),
        );
        tokio::spawn(async move {
            job::run(
                &zfs,
                HOST,
                &spec(&ds, "zb-bf-1", t),
                Some("t/p"),
                &none,
                &settings,
            )
            .await
        })
    };
    // Mid-upload: the first parts are in, the stream is not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!upload.is_finished(), "the upload ended before the kill");
    s3.kill();
    let ep_again = s3.script("up");
    assert_eq!(ep_again, ep);
    let outcome = upload.await.expect("join");
    println!("the upload across the server's SIGKILL and restart: {outcome:?}");

    let cat = catalogue::read(admin.as_ref(), &keys)
        .await
        .expect("catalogue");
    assert!(cat.problems.is_empty(), "{:?}", cat.problems);
    let stored: Vec<_> = cat.of(HOST, &ds).collect();
    match &outcome {
        Ok(done) => {
            // Carried over the restart: a whole backup, restored byte for byte.
            assert_eq!(stored.len(), 1, "{stored:?}");
            assert_eq!(stored[0].manifest.id, done.backup_id);
            let into = format!("{}/restored1", pool.name);
            objstore_restore::restore(
                &zfs,
                admin.as_ref(),
                &keys,
                (HOST, &ds, &done.backup_id),
                &into,
            )
            .await
            .expect("restore of the backup that survived the restart");
            assert_eq!(checksums(&mountpoint(&into)), want);
        }
        Err(e) => {
            // Failed: nothing of it is visible, no object, no manifest.
            assert!(
                stored.is_empty(),
                "a failed upload left a backup: {e}: {stored:?}"
            );
            let root = object_store::path::Path::from(dataset_dir.as_str());
            let objects: Vec<_> = admin.list(Some(&root)).collect::<Vec<_>>().await;
            assert!(objects.is_empty(), "left behind: {objects:?}");
        }
    }
    let pending = pending_uploads(&ep, &format!("{dataset_dir}/"));
    assert!(
        !pending.contains("<Upload>"),
        "an incomplete upload lingers: {pending}"
    );

    // The next run uploads and restores.
    next_second();
    write_files(&dir, 8, 1, 1_000_000);
    let want2 = checksums(&dir);
    let settings = JobSettings {
        bandwidth_limit: 0,
        ..settings
    };
    let next = job::run(
        &zfs,
        HOST,
        &spec(&ds, "zb-bf-2", t.clone()),
        Some("t/p"),
        &none,
        &settings,
    )
    .await
    .expect("the next backup after the restart");
    let into = format!("{}/restored2", pool.name);
    objstore_restore::restore(
        &zfs,
        admin.as_ref(),
        &keys,
        (HOST, &ds, &next.backup_id),
        &into,
    )
    .await
    .expect("restore of the next backup");
    assert_eq!(checksums(&mountpoint(&into)), want2);
}
