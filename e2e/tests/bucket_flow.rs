//! A BackupPolicy whose target is an object store, on real parts: SeaweedFS
//! (`e2e/scripts/seaweedfs.sh up`), the local apiserver, zfs-fuse, a real agent uploading
//! with its own key (`bucket-src` of `e2e/manifests/seaweedfs/s3-identities.json`: writes under
//! `bucket/*/bucket-*-src/`, never deletes) and the controller reading the bucket with the keys
//! of the policy's Secret. The controller's catalogue is the bucket's manifests; retention
//! deletes only the policy's own backups and never a full a kept incremental needs; a bucket
//! the controller cannot read shows on the policy's status.

use std::time::Duration;

use kube::api::{Api, PostParams};
use zetaback::api::BackupPolicy;
use zetaback::store::StoredBackup;
use zetaback_e2e::fleet::{Fleet, HostSpec};
use zetaback_e2e::{Env, eventually};
use zetaback_objstore::object_store::ObjectStore;
use zetaback_objstore::{Credentials, Keys, catalogue};

// The bucket, its keys and the SeaweedFS of this environment: shared with the other bucket
// tests (zetaback_e2e::bucket).
use zetaback_e2e::bucket::{ADMIN, BUCKET, SOURCE, key_secret, s3_endpoint};

/// `target.objectStore` of a policy (JSON) into `bucket` under `prefix`, keys from `secret`.
fn object_store(endpoint: &str, bucket: &str, prefix: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({"objectStore": {
        "endpoint": endpoint, "bucket": bucket, "prefix": prefix, "region": "us-east-1",
        "pathStyle": true, "credentialsSecret": {"name": secret},
    }})
}

/// A credentials file for an agent (`--object-store-credentials`).
fn creds_file(fleet_dir: &std::path::Path, (id, secret): (&str, &str)) -> std::path::PathBuf {
    std::fs::create_dir_all(fleet_dir).expect("fleet dir");
    let f = fleet_dir.join("s3-credentials.json");
    std::fs::write(
        &f,
        serde_json::json!({"accessKeyId": id, "secretAccessKey": secret}).to_string(),
    )
    .expect("credentials file");
    f
}

/// What the bucket holds under `prefix` (read with the admin key, as a person would check).
async fn in_bucket(endpoint: &str, prefix: &str) -> Vec<StoredBackup> {
    let target: zetaback::api::backup_policy::ObjectStoreTarget = serde_json::from_value(
        object_store(endpoint, BUCKET, prefix, "unused")["objectStore"].clone(),
    )
    .expect("target");
    let store = zetaback_objstore::connect(
        &target,
        &Credentials {
            access_key_id: ADMIN.0.into(),
            secret_access_key: ADMIN.1.into(),
        },
    )
    .expect("client");
    let cat = catalogue::read(store.as_ref(), &Keys::new(Some(prefix)))
        .await
        .expect("the bucket's catalogue");
    assert!(cat.problems.is_empty(), "{:?}", cat.problems);
    cat.backups
}

/// Deletes everything under `prefix` (the admin key).
async fn empty_prefix(endpoint: &str, prefix: &str) {
    use futures::TryStreamExt;
    let target: zetaback::api::backup_policy::ObjectStoreTarget = serde_json::from_value(
        object_store(endpoint, BUCKET, prefix, "unused")["objectStore"].clone(),
    )
    .expect("target");
    let store = zetaback_objstore::connect(
        &target,
        &Credentials {
            access_key_id: ADMIN.0.into(),
            secret_access_key: ADMIN.1.into(),
        },
    )
    .expect("client");
    let root = zetaback_objstore::object_store::path::Path::from(prefix);
    let objects: Vec<_> = store
        .list(Some(&root))
        .try_collect()
        .await
        .unwrap_or_default();
    for o in objects {
        let _ =
            zetaback_objstore::object_store::ObjectStoreExt::delete(store.as_ref(), &o.location)
                .await;
    }
}

/// Every incremental in `backups` has its base (by snapshot) in `backups` too.
fn chains_complete(backups: &[StoredBackup]) -> Result<(), String> {
    for b in backups {
        let Some(base) = &b.manifest.base_snapshot else {
            continue;
        };
        let found = backups.iter().any(|o| {
            o.manifest.dataset == b.manifest.dataset
                && o.manifest.host == b.manifest.host
                && &o.manifest.snapshot == base
        });
        if !found {
            return Err(format!(
                "incremental {} is kept but its base {base} was deleted",
                b.manifest.id
            ));
        }
    }
    Ok(())
}

fn listed(backups: &[StoredBackup]) -> Vec<(String, Option<String>)> {
    backups
        .iter()
        .map(|b| (b.manifest.id.clone(), b.manifest.policy.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_policy_catalogue_status_and_owned_chain_aware_retention() {
    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-flow");
    let prefix = format!("bucket/{ns}");
    let creds = creds_file(
        &std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}")),
        SOURCE,
    );
    let creds_arg = format!("--object-store-credentials={}", creds.display());
    let mut fleet = Fleet::start(env, &ns, &[HostSpec::source("src").args(&[&creds_arg])]).await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"into the bucket");
    let src = fleet.name("src");

    // The long-lived policy: a full now, kept 48 h.
    let mut long = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    long["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("long", "src", &[&dataset], long).await;
    let kept = eventually(
        "the long-lived policy's full in the bucket",
        Duration::from_secs(120),
        || async {
            let b = in_bucket(&endpoint, &prefix).await;
            b.first().map(|b| b.manifest.clone())
        },
    )
    .await;
    println!("the agent uploaded {} ({} bytes)", kept.id, kept.bytes);
    assert_eq!(kept.host, src);
    assert_eq!(kept.dataset, dataset);
    assert_eq!(kept.policy.as_deref(), Some(format!("{ns}/long").as_str()));

    // The policy's status is the bucket's catalogue: its bytes and its last backup.
    let status = eventually(
        "long's status counts the bucket's backup",
        Duration::from_secs(60),
        || async {
            let st = policies.get("long").await.ok()?.status?;
            (st.bytes_stored == Some(kept.bytes) && st.violators == 0).then_some(st)
        },
    )
    .await;
    assert_eq!(
        status.last_backup.map(|t| t.0.as_second()),
        Some(kept.created.as_second()),
        "lastBackup is the stored full's time"
    );
    let compliant = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .expect("Compliant condition");
    assert_eq!(compliant.status, "True", "{compliant:?}");

    // An incremental on request: uploaded against the full, counted too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fleet.write_file(&dataset, "b.txt", b"an incremental");
    fleet.backup_incremental_now("long", "src", &dataset).await;
    let two = eventually(
        "the incremental in the bucket",
        Duration::from_secs(120),
        || async {
            let b = in_bucket(&endpoint, &prefix).await;
            (b.len() == 2).then_some(b)
        },
    )
    .await;
    let incremental = &two[1].manifest;
    assert_eq!(
        incremental.base_snapshot.as_deref(),
        Some(kept.snapshot.as_str()),
        "{incremental:?}"
    );
    let total = kept.bytes + incremental.bytes;
    eventually(
        "long's status counts both backups",
        Duration::from_secs(60),
        || async {
            let st = policies.get("long").await.ok()?.status?;
            (st.bytes_stored == Some(total)).then_some(())
        },
    )
    .await;

    // The short-lived policy over the same dataset and the same bucket prefix: fulls every
    // 20 s, incrementals (against the last full) every 10 s, all kept 30 s.
    let mut short = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "20s", "keep": "30s"},
        "incremental": {"every": "10s", "keep": "30s"},
        "jobHistory": {"successful": 100, "failed": 100},
    });
    short["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet
        .create_policy("short", "src", &[&dataset], short)
        .await;
    let short_owner = format!("{ns}/short");
    let first_short = eventually(
        "the short-lived policy's first full",
        Duration::from_secs(120),
        || async {
            in_bucket(&endpoint, &prefix)
                .await
                .into_iter()
                .find(|b| b.manifest.policy.as_deref() == Some(short_owner.as_str()))
                .map(|b| b.manifest)
        },
    )
    .await;
    println!("short-lived policy's first backup {}", first_short.id);

    // Its retention runs: the first full goes once no kept incremental needs it; at no
    // point is an incremental left without its base.
    let saw_dependent = std::sync::atomic::AtomicBool::new(false);
    eventually(
        "the short-lived policy's first full deleted from the bucket",
        Duration::from_secs(240),
        || async {
            let now = in_bucket(&endpoint, &prefix).await;
            if let Err(e) = chains_complete(&now) {
                panic!("{e}: {:?}", listed(&now));
            }
            let dependent = now.iter().any(|b| {
                b.manifest.base_snapshot.as_deref() == Some(first_short.snapshot.as_str())
            });
            if dependent {
                saw_dependent.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (!now.iter().any(|b| b.manifest.id == first_short.id)).then_some(())
        },
    )
    .await;
    let after = in_bucket(&endpoint, &prefix).await;
    println!(
        "after the short-lived policy's retention (an incremental needed its first full: {}): {:?}",
        saw_dependent.load(std::sync::atomic::Ordering::Relaxed),
        listed(&after)
    );
    for b in [&kept, incremental] {
        assert!(
            after.iter().any(|a| a.manifest.id == b.id),
            "the long-lived policy's {} was deleted by the other policy's retention: {:?}",
            b.id,
            listed(&after)
        );
    }
    chains_complete(&after).expect("chains complete");

    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_problems_show_on_the_policy_status() {
    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-status");
    let prefix = format!("bucket/{ns}");
    let mut fleet = Fleet::start(env, &ns, &[]).await;
    key_secret(
        &fleet.client,
        &ns,
        "wrong-secret",
        (ADMIN.0, "not-the-secret"),
    )
    .await;
    key_secret(&fleet.client, &ns, "admin", ADMIN).await;
    key_secret(&fleet.client, &ns, "source-key", SOURCE).await;
    fleet.start_controller(|_| {}).await;
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);

    // (policy, target, what its Ready condition's message must say)
    let cases = [
        (
            "wrong-secret",
            object_store(&endpoint, BUCKET, &prefix, "wrong-secret"),
            "SignatureDoesNotMatch: the keys of Secret wrong-secret",
        ),
        (
            "missing-bucket",
            object_store(&endpoint, "bucket-no-such-bucket", &prefix, "admin"),
            "NoSuchBucket: bucket bucket-no-such-bucket does not exist",
        ),
        (
            "unreachable",
            // Nothing listens on port 9 (discard) of loopback.
            object_store("http://127.0.0.1:9", BUCKET, &prefix, "admin"),
            "cannot reach http://127.0.0.1:9",
        ),
        (
            "no-secret",
            object_store(&endpoint, BUCKET, &prefix, "no-such-secret"),
            "Secret no-such-secret not found",
        ),
        (
            // The source's key may not list the bucket: the controller cannot work with it.
            "source-key",
            object_store(&endpoint, BUCKET, &prefix, "source-key"),
            "AccessDenied: the keys of Secret source-key",
        ),
    ];
    for (name, target, _) in &cases {
        let spec = serde_json::json!({
            "hosts": {"names": ["bucket-no-host"]},
            "datasets": {"include": ["*/data"]},
            "full": {"every": "24h", "keep": "48h"},
            "incremental": {"every": "12h", "keep": "48h"},
            "target": target,
        });
        policies
            .create(
                &PostParams::default(),
                &BackupPolicy::new(name, serde_json::from_value(spec).expect("spec")),
            )
            .await
            .expect("create policy");
    }
    for (name, _, expected) in &cases {
        let message = eventually(
            &format!("{name}: Ready=False StoreUnreachable"),
            Duration::from_secs(90),
            || async {
                let st = policies.get(name).await.ok()?.status?;
                st.conditions
                    .iter()
                    .find(|c| {
                        c.type_ == "Ready" && c.status == "False" && c.reason == "StoreUnreachable"
                    })
                    .map(|c| c.message.clone())
            },
        )
        .await;
        println!("{name}: {message}");
        assert!(
            message.contains(expected),
            "{name}: the status names the cause ({expected}): {message}"
        );
        // A sentence for a person: no XML of the server's answer, no Rust debug output.
        assert!(
            !message.contains('<') && !message.contains("Status {") && message.len() < 400,
            "{name}: the status is not readable: {message}"
        );
    }
    fleet.shutdown().await;
}

/// The incomplete multipart uploads under `prefix` (ListMultipartUploads, signed by curl with
/// the admin key): the raw XML answer.
fn pending_uploads(endpoint: &str, prefix: &str) -> String {
    let encoded = prefix.replace('/', "%2F").replace('+', "%2B");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            &format!("{}:{}", ADMIN.0, ADMIN.1),
            &format!("{endpoint}/{BUCKET}?prefix={encoded}&uploads="),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_agent_killed_mid_upload_leaves_no_backup_and_the_next_run_succeeds() {
    use sha2::Digest;
    use zetaback::api::{BackupJob, JobPhase};
    use zetaback_objstore::object_store::ObjectStoreExt;

    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-kill");
    let prefix = format!("bucket/{ns}");
    let creds = creds_file(
        &std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}")),
        SOURCE,
    );
    let creds_arg = format!("--object-store-credentials={}", creds.display());
    // 4 MB/s: 24 MB take six seconds, parts of 8 MiB.
    let src = HostSpec::source("src").args(&[&creds_arg, "--bandwidth-limit=4000000"]);
    let mut fleet = Fleet::start(env, &ns, &[src]).await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    for i in 0..3u32 {
        fleet.write_file(
            &dataset,
            &format!("f{i}"),
            &zetaback_e2e::fleet::noise(i + 1, 8_000_000),
        );
    }
    let mut spec = serde_json::json!({
        "hosts": {"names": [fleet.name("src")]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    spec["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    let jobs: Api<BackupJob> = Api::namespaced(fleet.client.clone(), &ns);
    let running = eventually(
        "the full's job running",
        Duration::from_secs(120),
        || async {
            let list = jobs.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == JobPhase::Running)
            })
        },
    )
    .await;
    // Some parts are in: the agent dies (SIGKILL: no abort, no clean-up).
    tokio::time::sleep(Duration::from_secs(4)).await;
    fleet.kill("src");
    println!(
        "killed the agent mid-upload of {}",
        running.metadata.name.clone().unwrap_or_default()
    );
    assert!(
        in_bucket(&endpoint, &prefix).await.is_empty(),
        "a killed upload is a backup"
    );
    let uploads = pending_uploads(&endpoint, &format!("{prefix}/"));
    println!(
        "incomplete multipart uploads after the kill: {}",
        uploads.matches("<Upload>").count()
    );
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let st = policies
        .get("p")
        .await
        .expect("policy")
        .status
        .unwrap_or_default();
    assert!(
        st.last_backup.is_none() && st.bytes_stored.unwrap_or(0) == 0,
        "the status counts a killed upload: {st:?}"
    );

    // The agent back: the next run stores a whole backup, its object what its manifest says.
    fleet.restart("src");
    let stored = eventually(
        "a backup after the restart",
        Duration::from_secs(240),
        || async { in_bucket(&endpoint, &prefix).await.into_iter().next() },
    )
    .await;
    let target: zetaback::api::backup_policy::ObjectStoreTarget = serde_json::from_value(
        object_store(&endpoint, BUCKET, &prefix, "unused")["objectStore"].clone(),
    )
    .expect("target");
    let admin = zetaback_objstore::connect(
        &target,
        &Credentials {
            access_key_id: ADMIN.0.into(),
            secret_access_key: ADMIN.1.into(),
        },
    )
    .expect("client");
    let id: zetaback::store::StreamId = stored.manifest.id.parse().expect("id");
    let key = Keys::new(Some(&prefix))
        .stream(&stored.manifest.host, &stored.manifest.dataset, &id, false)
        .expect("key");
    let body = admin
        .get(&key)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.len() as u64, stored.manifest.bytes);
    assert_eq!(
        Some(hex::encode(sha2::Sha256::digest(&body))),
        stored.manifest.sha256
    );
    let lingering = pending_uploads(&endpoint, &format!("{prefix}/"));
    println!(
        "after the restart: {} ({} bytes, sha256 checked); incomplete uploads now: {}",
        stored.manifest.id,
        stored.manifest.bytes,
        lingering.matches("<Upload>").count()
    );
    // The killed agent's upload was aborted by the restarted agent before it uploaded again.
    assert!(
        lingering.contains("ListMultipartUploadsResult") && !lingering.contains("<Upload>"),
        "the killed agent's incomplete upload lingers: {lingering}"
    );
    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_agent_with_a_wrong_key_fails_its_job_with_a_readable_message() {
    use zetaback::api::{BackupJob, JobPhase};

    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-badkey");
    let prefix = format!("bucket/{ns}");
    let creds = creds_file(
        &std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}")),
        (SOURCE.0, "not-the-source-secret"),
    );
    let creds_arg = format!("--object-store-credentials={}", creds.display());
    let mut fleet = Fleet::start(env, &ns, &[HostSpec::source("src").args(&[&creds_arg])]).await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    let mut spec = serde_json::json!({
        "hosts": {"names": [fleet.name("src")]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    spec["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    let jobs: Api<BackupJob> = Api::namespaced(fleet.client.clone(), &ns);
    let message = eventually("the job failed", Duration::from_secs(120), || async {
        let list = jobs.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|j| {
            let st = j.status?;
            (st.phase == JobPhase::Failed).then(|| st.message.unwrap_or_default())
        })
    })
    .await;
    println!("the job's message: {message}");
    fleet.shutdown().await;
    assert!(
        message.contains("SignatureDoesNotMatch"),
        "the job names the server's refusal: {message}"
    );
    assert!(
        !message.contains('<') && message.len() < 500,
        "the job's message is not readable: {message}"
    );
}

/// The destination host's own keys: `s3:GetObject` on `bucket/*/bucket-*-src/*` (and the
/// archive area's), nothing else: no listing, no writes, no deletes.
const DESTINATION: (&str, &str) = ("ZBE2EBUCKETDST", "zetaback-e2e-bucket-dst-secret");

/// A client for `prefix` of the e2e bucket signed with `keys`.
fn client_with(
    endpoint: &str,
    prefix: &str,
    (id, secret): (&str, &str),
) -> std::sync::Arc<dyn ObjectStore> {
    let target: zetaback::api::backup_policy::ObjectStoreTarget = serde_json::from_value(
        object_store(endpoint, BUCKET, prefix, "unused")["objectStore"].clone(),
    )
    .expect("target");
    zetaback_objstore::connect(
        &target,
        &Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
        },
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_restore_crd_resolved_from_the_bucket_and_read_with_the_destinations_own_key() {
    use futures::TryStreamExt;
    use zetaback::api::Restore;
    use zetaback::api::restore::RestorePhase;
    use zetaback_e2e::fleet::{create_restore, mounted, restore_finished, restore_reason, sums};
    use zetaback_objstore::object_store::{ObjectStoreExt, PutPayload};

    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-restore");
    let prefix = format!("bucket/{ns}");
    let dir = std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    let src_creds = creds_file(&dir.join("src"), SOURCE);
    let dst_creds = creds_file(&dir.join("dst"), DESTINATION);
    let src_arg = format!("--object-store-credentials={}", src_creds.display());
    let dst_arg = format!("--object-store-credentials={}", dst_creds.display());
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src").args(&[&src_arg]),
            HostSpec::source("dst").args(&[&dst_arg]),
        ],
    )
    .await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.bin", &zetaback_e2e::fleet::noise(7, 300_000));
    fleet.write_file(&dataset, "b.txt", b"version 1\n");
    let at_full = sums(&mounted(&dataset));
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let pd = fleet.host("dst").pool.clone();
    let mut spec = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
        "compression": "zstd",
    });
    spec["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    eventually(
        "the full in the bucket",
        Duration::from_secs(120),
        || async { (in_bucket(&endpoint, &prefix).await.len() == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fleet.write_file(&dataset, "b.txt", b"version 2\n");
    fleet.write_file(&dataset, "c.txt", b"added by the incremental\n");
    let at_incremental = sums(&mounted(&dataset));
    assert_ne!(at_full, at_incremental);
    fleet.backup_incremental_now("p", "src", &dataset).await;
    let stored = eventually(
        "the incremental in the bucket",
        Duration::from_secs(120),
        || async {
            let b = in_bucket(&endpoint, &prefix).await;
            (b.len() == 2).then_some(b)
        },
    )
    .await;
    let ids: Vec<String> = stored.iter().map(|b| b.manifest.id.clone()).collect();
    println!("in the bucket: {ids:?}");

    // The destination's key reads objects but may not list the bucket nor delete: the
    // restore below needs nothing more.
    let dst_client = client_with(&endpoint, &prefix, DESTINATION);
    let listed: Result<Vec<_>, _> = dst_client
        .list(Some(&zetaback_objstore::object_store::path::Path::from(
            prefix.as_str(),
        )))
        .try_collect()
        .await;
    let refused = listed.expect_err("the destination's key listed the bucket");
    println!("the destination's key may not list: {refused}");
    assert!(refused.to_string().contains("AccessDenied"), "{refused}");

    // 1. The newest point, to the destination host, under a parent that does not exist.
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let newest_ds = format!("{pd}/restored/newest");
    create_restore(
        &restores,
        "newest",
        serde_json::json!({"source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": newest_ds}}),
    )
    .await;
    let r = restore_finished(&restores, "newest", Duration::from_secs(180)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids, "the whole chain, in order");
    assert_eq!(st.verified, Some(true));
    assert!(st.pieces.iter().all(|p| p.verified == Some(true)), "{st:?}");
    assert_eq!(
        st.object_store.as_ref().map(|b| b.bucket.as_str()),
        Some(BUCKET),
        "the status names the bucket: {st:?}"
    );
    assert_eq!(st.bytes_done, st.bytes);
    assert_eq!(
        sums(&mounted(&newest_ds)),
        at_incremental,
        "newest restore differs"
    );

    // 2. The full alone, by id.
    let full_ds = format!("{pd}/restored/full");
    create_restore(
        &restores,
        "full",
        serde_json::json!({"source": {"host": src, "dataset": dataset, "backup": ids[0]},
            "destination": {"host": dst, "dataset": full_ds}}),
    )
    .await;
    let r = restore_finished(&restores, "full", Duration::from_secs(180)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids[..1]);
    assert_eq!(sums(&mounted(&full_ds)), at_full, "full restore differs");

    // The destination's key cannot delete what it restores from.
    let first = &stored[0].manifest;
    let manifest_key = Keys::new(Some(&prefix))
        .manifest(
            &first.host,
            &first.dataset,
            &first.id.parse().expect("id"),
            false,
        )
        .expect("key");
    let deleted = dst_client.delete(&manifest_key).await;
    assert!(
        deleted
            .as_ref()
            .is_err_and(|e| e.to_string().contains("AccessDenied")),
        "the destination's key deleted a manifest: {deleted:?}"
    );

    // 3. The incremental's object corrupted in the bucket (one byte, same size: only its
    // sha256 can tell): the restore fails before anything of it is applied, and leaves no
    // dataset behind.
    let admin = client_with(&endpoint, &prefix, ADMIN);
    let inc = &stored[1].manifest;
    let key = Keys::new(Some(&prefix))
        .stream(&inc.host, &inc.dataset, &inc.id.parse().expect("id"), false)
        .expect("key");
    let mut body = admin
        .get(&key)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
        .to_vec();
    let at = body.len() / 2;
    body[at] ^= 0x20;
    admin
        .put(&key, PutPayload::from(body))
        .await
        .expect("PUT the corrupted object");
    let bad_ds = format!("{pd}/restored/corrupt");
    create_restore(
        &restores,
        "corrupt",
        serde_json::json!({"source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": bad_ds}}),
    )
    .await;
    let r = restore_finished(&restores, "corrupt", Duration::from_secs(180)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Failed, "{st:?}");
    assert_eq!(restore_reason(&r), "ChecksumMismatch", "{st:?}");
    assert!(
        !zetaback_e2e::fleet::dataset_exists(&bad_ds),
        "{bad_ds} was left behind"
    );

    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}

/// The storage class SeaweedFS reports for `key` (HEAD, signed by curl with the admin key).
fn storage_class(endpoint: &str, key: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-I",
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            &format!("{}:{}", ADMIN.0, ADMIN.1),
            &format!("{endpoint}/{BUCKET}/{}", key.replace('+', "%2B")),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-amz-storage-class:")
                .map(|v| v.trim().to_ascii_uppercase())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_archive_moves_whole_chains_to_the_archive_prefix_and_restores_from_there() {
    use futures::TryStreamExt;
    use zetaback::api::Restore;
    use zetaback::api::restore::RestorePhase;
    use zetaback_e2e::fleet::{create_restore, mounted, restore_finished, sums};

    // The controller's archive steps in the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("zetaback=info,zetaback_objstore=info")
        .with_test_writer()
        .try_init();
    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-archive");
    let prefix = format!("bucket/{ns}");
    let dir = std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    let src_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("src"), SOURCE).display()
    );
    let dst_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("dst"), DESTINATION).display()
    );
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src").args(&[&src_arg]),
            HostSpec::source("dst").args(&[&dst_arg]),
        ],
    )
    .await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"archived in the bucket\n");
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    // Backups move to the archive after 20 s, a whole chain at once (an incremental whose
    // full is archived would be left without its base in the live area).
    let mut spec = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
        "archive": {"after": "20s", "keep": "48h"},
    });
    spec["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    spec["target"]["objectStore"]["archiveStorageClass"] = "STANDARD_IA".into();
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    eventually(
        "the full in the bucket",
        Duration::from_secs(120),
        || async { (!in_bucket(&endpoint, &prefix).await.is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fleet.write_file(&dataset, "b.txt", b"and an incremental\n");
    let at_incremental = sums(&mounted(&dataset));
    fleet.backup_incremental_now("p", "src", &dataset).await;
    eventually(
        "the incremental in the bucket",
        Duration::from_secs(120),
        || async { (in_bucket(&endpoint, &prefix).await.len() == 2).then_some(()) },
    )
    .await;
    // A second full: the newest backup and the newest full never move, so the first chain
    // (the full and its incremental) is what goes to the archive.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fleet.write_file(&dataset, "c.txt", b"in the second full\n");
    let (code, out) = fleet
        .zb(&[
            "backup",
            "p",
            "--host",
            &src,
            "--dataset",
            &dataset,
            "--full",
        ])
        .await;
    assert_eq!(code, 0, "{out}");

    // The first chain archived (the catalogue lists each once, archived), nothing of it live
    // left, the second full live. The policy
    // reconciles by itself only when a backup is due (hours here): it is asked to now and
    // then, as `kubectl zetaback` does.
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let saw_split = std::sync::atomic::AtomicBool::new(false);
    let archived = eventually(
        "the full and the incremental archived",
        Duration::from_secs(180),
        || async {
            let now = jiff::Timestamp::now().to_string();
            let ask = serde_json::json!({"metadata": {"annotations": {
                zetaback::api::backup_policy::RECONCILE_NOW_ANNOTATION: now}}});
            let _ = policies
                .patch(
                    "p",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&ask),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let b = in_bucket(&endpoint, &prefix).await;
            // Never an archived full under a live incremental of it.
            if b.iter()
                .any(|x| !x.archived && x.manifest.base_snapshot.is_some())
                && b.iter()
                    .any(|x| x.archived && x.manifest.base_snapshot.is_none())
            {
                saw_split.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let archived: Vec<_> = b.iter().filter(|x| x.archived).cloned().collect();
            (b.len() == 3 && archived.len() == 2 && !b[2].archived).then_some(archived)
        },
    )
    .await;
    assert!(
        !saw_split.load(std::sync::atomic::Ordering::Relaxed),
        "an incremental stayed live while its full was archived"
    );
    let ids: Vec<String> = archived.iter().map(|b| b.manifest.id.clone()).collect();
    println!("archived: {ids:?}");
    let admin = client_with(&endpoint, &prefix, ADMIN);
    let keys = Keys::new(Some(&prefix));
    let live_dir = zetaback_objstore::object_store::path::Path::from(
        keys.dataset_dir(&src, &dataset, false).expect("dir"),
    );
    let live: Vec<_> = admin
        .list(Some(&live_dir))
        .try_collect()
        .await
        .expect("list the live area");
    let live: Vec<String> = live.iter().map(|o| o.location.to_string()).collect();
    assert!(
        live.len() == 2
            && live
                .iter()
                .all(|k| !ids.iter().any(|id| k.contains(id.as_str()))),
        "the live area holds only the second full and its manifest: {live:?}"
    );
    for b in &archived {
        let id: zetaback::store::StreamId = b.manifest.id.parse().expect("id");
        let stream = keys
            .stream(&src, &dataset, &id, true)
            .expect("key")
            .to_string();
        let manifest = keys
            .manifest(&src, &dataset, &id, true)
            .expect("key")
            .to_string();
        println!(
            "{stream}: {}; its manifest: {}",
            storage_class(&endpoint, &stream),
            storage_class(&endpoint, &manifest)
        );
        assert_eq!(storage_class(&endpoint, &stream), "STANDARD_IA");
        assert_ne!(storage_class(&endpoint, &manifest), "STANDARD_IA");
    }
    let st = policies
        .get("p")
        .await
        .expect("policy")
        .status
        .unwrap_or_default();
    let total: u64 = in_bucket(&endpoint, &prefix)
        .await
        .iter()
        .map(|b| b.manifest.bytes)
        .sum();
    assert_eq!(st.bytes_stored, Some(total), "{st:?}");

    // A restore from the archive (includeArchive), by the destination's GetObject-only key.
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let into = format!("{}/restored/archived", fleet.host("dst").pool);
    create_restore(
        &restores,
        "from-archive",
        serde_json::json!({"source": {"host": src, "dataset": dataset, "includeArchive": true,
                "backup": ids[1]},
            "destination": {"host": dst, "dataset": into}}),
    )
    .await;
    let r = restore_finished(&restores, "from-archive", Duration::from_secs(180)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids);
    assert_eq!(
        sums(&mounted(&into)),
        at_incremental,
        "restore from the archive differs"
    );

    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}

/// A bucket with Object Lock enabled (created once, by curl with the admin key).
const LOCK_BUCKET: &str = "zetaback-e2e-lock";

/// Signs one request with the admin key (curl's SigV4); (HTTP status, headers and body).
fn admin_curl(method: &str, url: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "-s",
        "-i",
        "-X",
        method,
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
    ];
    let user = format!("{}:{}", ADMIN.0, ADMIN.1);
    args.extend(["--user", &user]);
    args.extend(extra);
    args.push(url);
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_immutable_for_locks_every_object_and_the_admin_key_cannot_delete_it_early() {
    let env = Env::get();
    let endpoint = s3_endpoint(env);
    // The bucket with Object Lock (and so versioning) on; "already owned" is fine.
    let (status, text) = admin_curl(
        "PUT",
        &format!("{endpoint}/{LOCK_BUCKET}"),
        &["-H", "x-amz-bucket-object-lock-enabled: true"],
    );
    assert!(
        status.contains("200") || text.contains("BucketAlreadyOwnedByYou"),
        "{text}"
    );
    let ns = env.namespace("bucket-lock");
    let prefix = format!("bucket/{ns}");
    let creds = creds_file(
        &std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}")),
        SOURCE,
    );
    let creds_arg = format!("--object-store-credentials={}", creds.display());
    let mut fleet = Fleet::start(env, &ns, &[HostSpec::source("src").args(&[&creds_arg])]).await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"locked in the bucket\n");
    let mut spec = serde_json::json!({
        "hosts": {"names": [fleet.name("src")]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    spec["target"] = object_store(&endpoint, LOCK_BUCKET, &prefix, "bucket-s3");
    spec["target"]["objectStore"]["immutableFor"] = "1h".into();
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    let target: zetaback::api::backup_policy::ObjectStoreTarget = serde_json::from_value(
        object_store(&endpoint, LOCK_BUCKET, &prefix, "unused")["objectStore"].clone(),
    )
    .expect("target");
    let admin = zetaback_objstore::connect(
        &target,
        &Credentials {
            access_key_id: ADMIN.0.into(),
            secret_access_key: ADMIN.1.into(),
        },
    )
    .expect("client");
    let keys = Keys::new(Some(&prefix));
    let stored = eventually("the locked full", Duration::from_secs(120), || async {
        let cat = catalogue::read(admin.as_ref(), &keys).await.ok()?;
        cat.backups.into_iter().next()
    })
    .await;
    let id: zetaback::store::StreamId = stored.manifest.id.parse().expect("id");
    let until = jiff::Timestamp::from_second(id.ts() + 3600).expect("date");
    for key in [
        keys.stream(&stored.manifest.host, &stored.manifest.dataset, &id, false),
        keys.manifest(&stored.manifest.host, &stored.manifest.dataset, &id, false),
    ] {
        let key = key.expect("key").to_string().replace('+', "%2B");
        let url = format!("{endpoint}/{LOCK_BUCKET}/{key}");
        let (_, head) = admin_curl("HEAD", &url, &["-I"]);
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("x-amz-object-lock-mode: compliance")
                && lower.contains(
                    &format!(
                        "x-amz-object-lock-retain-until-date: {}",
                        until.strftime("%Y-%m-%dT%H:%M:%S")
                    )
                    .to_ascii_lowercase()
                ),
            "{key} is not locked until {until}: {head}"
        );
        let version = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-amz-version-id:")
                    .then(|| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
                    .flatten()
            })
            .expect("a version id");
        // The admin key deletes the locked version: refused by the server.
        let (status, text) = admin_curl("DELETE", &format!("{url}?versionId={version}"), &[]);
        println!("DELETE {key}?versionId={version} with the admin key: {status}");
        assert!(
            status.contains("403") && text.contains("AccessDenied"),
            "the locked version was deleted: {text}"
        );
    }
    fleet.shutdown().await;
}

/// A bulk Restore (`source.datasets`) whose backups are in a bucket: its names and patterns are
/// expanded against the source host's backups in the bucket (read by the controller with the
/// policy's Secret), every dataset is checked before anything starts, and each child Restore
/// restores its dataset from the bucket with the destination's own GetObject-only key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_bulk_restore_expands_from_the_bucket_and_restores_every_dataset() {
    use zetaback::api::Restore;
    use zetaback::api::restore::RestorePhase;
    use zetaback_e2e::fleet::{create_restore, mounted, restore_finished, sums};

    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let ns = env.namespace("bucket-bulk");
    let prefix = format!("bucket/{ns}");
    let dir = std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    let src_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("src"), SOURCE).display()
    );
    let dst_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("dst"), DESTINATION).display()
    );
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src").args(&[&src_arg]),
            HostSpec::source("dst").args(&[&dst_arg]),
        ],
    )
    .await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let data = fleet.create_dataset("src", "data");
    let logs = fleet.create_dataset("src", "logs");
    fleet.write_file(&data, "a.bin", &zetaback_e2e::fleet::noise(11, 200_000));
    fleet.write_file(&logs, "l.txt", b"a log line\n");
    let originals = [sums(&mounted(&data)), sums(&mounted(&logs))];
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let pd = fleet.host("dst").pool.clone();
    let mut spec = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data", "*/logs"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    spec["target"] = object_store(&endpoint, BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("p", "src", &[&data, &logs], spec).await;
    eventually(
        "both fulls in the bucket",
        Duration::from_secs(120),
        || async { (in_bucket(&endpoint, &prefix).await.len() == 2).then_some(()) },
    )
    .await;

    // One name and one pattern, both matched against the bucket's backups of the source.
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let base = format!("{pd}/bulk");
    create_restore(
        &restores,
        "bulk",
        serde_json::json!({"source": {"host": src, "datasets": [data, "*/logs"]},
            "destination": {"host": dst, "dataset": base}}),
    )
    .await;
    let r = restore_finished(&restores, "bulk", Duration::from_secs(240)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(
        (st.phase, st.verified),
        (RestorePhase::Succeeded, Some(true)),
        "{st:?}"
    );
    let rows: Vec<(String, String)> = st
        .datasets
        .iter()
        .map(|r| (r.source.clone(), r.destination.clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (data.clone(), format!("{base}/{data}")),
            (logs.clone(), format!("{base}/{logs}")),
        ]
    );
    for (row, original) in st.datasets.iter().zip(&originals) {
        let child = restores.get(&row.restore).await.expect("child");
        let cs = child.status.clone().expect("child status");
        assert_eq!(
            cs.object_store.as_ref().map(|b| b.bucket.as_str()),
            Some(BUCKET),
            "the child restored from the bucket: {cs:?}"
        );
        assert_eq!(
            &sums(&mounted(&row.destination)),
            original,
            "{} differs from {}",
            row.destination,
            row.source
        );
        println!(
            "{}: restored from {} into {}, every file's sha256 equal",
            row.source,
            cs.store_host.unwrap_or_default(),
            row.destination
        );
    }

    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}

/// The snapshots of `ds` and the datasets under `root`, as `zfs list` shows them.
fn zfs_names(kind: &str, of: &str) -> Vec<String> {
    zetaback_e2e::fleet::zfs(&["list", "-H", "-o", "name", "-t", kind, "-r", of])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", needle])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A Restore from the bucket whose agent is SIGKILLed mid-receive (the full applied, the
/// incremental streaming: the bucket is reached through a relay slowed to 512 KiB/s for that)
/// is started again by the agent when it comes back and ends Succeeded and verified, every
/// file's sha256 equal to the original's, the destination holding exactly the chain's
/// snapshots, no other dataset and no `zfs receive` left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_restore_cut_short_by_an_agent_kill_is_started_again_and_succeeds_verified() {
    use zetaback::api::Restore;
    use zetaback::api::restore::RestorePhase;
    use zetaback_e2e::fleet::{create_restore, dataset_exists, mounted, restore_finished, sums};

    let env = Env::get();
    let endpoint = s3_endpoint(env);
    let upstream: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("SeaweedFS address");
    let relay = zetaback_e2e::relay::Relay::start(upstream).await;
    let ns = env.namespace("bucket-cut");
    let prefix = format!("bucket/{ns}");
    let dir = std::path::PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    let src_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("src"), SOURCE).display()
    );
    let dst_arg = format!(
        "--object-store-credentials={}",
        creds_file(&dir.join("dst"), DESTINATION).display()
    );
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src").args(&[&src_arg]),
            HostSpec::source("dst").args(&[&dst_arg]),
        ],
    )
    .await;
    key_secret(&fleet.client, &ns, "bucket-s3", ADMIN).await;
    fleet.start_controller(|_| {}).await;
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"version 1\n");
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let pd = fleet.host("dst").pool.clone();
    // Every request goes through the relay: the policy's endpoint is what the Restore's
    // status names and the destination reads.
    let mut spec = serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
    });
    spec["target"] = object_store(&relay.url(), BUCKET, &prefix, "bucket-s3");
    fleet.create_policy("p", "src", &[&dataset], spec).await;
    eventually(
        "the full in the bucket",
        Duration::from_secs(120),
        || async { (in_bucket(&endpoint, &prefix).await.len() == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // 4 MiB of noise in the incremental: ≥ 8 s through the slowed relay.
    fleet.write_file(
        &dataset,
        "big.bin",
        &zetaback_e2e::fleet::noise(17, 4 << 20),
    );
    fleet.write_file(&dataset, "a.txt", b"version 2\n");
    let original = sums(&mounted(&dataset));
    fleet.backup_incremental_now("p", "src", &dataset).await;
    let stored = eventually(
        "the incremental in the bucket",
        Duration::from_secs(120),
        || async {
            let b = in_bucket(&endpoint, &prefix).await;
            (b.len() == 2).then_some(b)
        },
    )
    .await;
    let ids: Vec<String> = stored.iter().map(|b| b.manifest.id.clone()).collect();
    let snaps: Vec<String> = stored.iter().map(|b| b.manifest.snapshot.clone()).collect();

    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let into = format!("{pd}/restored/cut");
    let (first_snap, last_snap) = (
        format!("{into}@{}", snaps[0]),
        format!("{into}@{}", snaps[1]),
    );
    relay.limit(512 * 1024);
    create_restore(
        &restores,
        "cut",
        serde_json::json!({"source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": into}}),
    )
    .await;
    eventually(
        "the full applied, the incremental streaming",
        Duration::from_secs(180),
        || async {
            let r = restores.get("cut").await.ok()?;
            let st = r.status.clone().unwrap_or_default();
            assert!(
                matches!(st.phase, RestorePhase::Pending | RestorePhase::Running),
                "the restore ended before it could be cut short: {st:?}"
            );
            dataset_exists(&first_snap).then_some(())
        },
    )
    .await;
    fleet.kill("dst");
    let before = restores.get("cut").await.expect("restore").status;
    println!("killed {dst}'s agent mid-receive: {before:?}");
    assert!(
        !dataset_exists(&last_snap),
        "the incremental cannot have been applied yet"
    );
    relay.limit(0);
    fleet.restart("dst");

    let r = restore_finished(&restores, "cut", Duration::from_secs(240)).await;
    let st = r.status.clone().expect("status");
    assert_eq!(
        (st.phase, st.verified),
        (RestorePhase::Succeeded, Some(true)),
        "{st:?}"
    );
    assert_eq!(st.chain, ids, "the whole chain");
    assert!(st.pieces.iter().all(|p| p.verified == Some(true)), "{st:?}");
    assert_eq!(sums(&mounted(&into)), original, "the restore differs");
    // Nothing left of the cut-short attempt: exactly the chain's snapshots, no other dataset
    // (a partial receive), no receive still running.
    assert_eq!(
        zfs_names("snapshot", &into),
        [first_snap.clone(), last_snap.clone()]
    );
    assert_eq!(
        zfs_names("filesystem", &format!("{pd}/restored")),
        [format!("{pd}/restored"), into.clone()]
    );
    assert_eq!(
        processes_with(&format!("receive.*{into}")),
        Vec::<String>::new()
    );

    fleet.shutdown().await;
    empty_prefix(&endpoint, &prefix).await;
}
