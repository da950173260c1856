//! The agent re-checks a BackupJob's dataset against its own ZfsHost's include/exclude before
//! it runs the job (on real parts: the local apiserver, zfs-fuse pools, real agents): a job
//! naming a dataset the host excludes fails with a sentence and nothing is sent; a job for an
//! offered dataset of the same host is stored.

use std::time::Duration;

use kube::api::{Api, PostParams};
use zetaback::api::{BackupJob, BackupJobSpec, JobPhase};
use zetaback_e2e::fleet::{Fleet, HostSpec};
use zetaback_e2e::{Env, eventually, text};

/// Creates a full BackupJob of `dataset` on `src` into `bak`'s file store.
async fn create_job(fleet: &Fleet, jobs: &Api<BackupJob>, name: &str, dataset: &str, ts: i64) {
    let spec: BackupJobSpec = serde_json::from_value(serde_json::json!({
        "policy": "hand-made", "host": fleet.name("src"), "dataset": dataset, "type": "full",
        "snapshot": format!("zb-{ts}"),
        "target": {"host": fleet.name("bak"), "path": fleet.store_root("bak").display().to_string()}
    }))
    .expect("job spec");
    jobs.create(&PostParams::default(), &BackupJob::new(name, spec))
        .await
        .expect("create job");
}

/// Waits for a job to end; (phase, message).
async fn finished(jobs: &Api<BackupJob>, name: &str) -> (JobPhase, String) {
    eventually(
        &format!("job {name} ends"),
        Duration::from_secs(120),
        || async {
            let st = jobs.get(name).await.ok()?.status?;
            matches!(st.phase, JobPhase::Succeeded | JobPhase::Failed)
                .then(|| (st.phase, st.message.unwrap_or_default()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_an_excluded_dataset_is_refused_by_the_agent() {
    let env = Env::get();
    let ns = env.namespace("tenancy-dscheck");
    let fleet = Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    let pool = fleet.host("src").pool.clone();
    let secret = fleet.create_dataset("src", "secret");
    let open = fleet.create_dataset("src", "open");
    fleet.write_file(&secret, "key", b"not to be sent");
    fleet.write_file(&open, "a.txt", b"may be sent");
    // The host offers its pool but the secret dataset.
    let patch = serde_json::json!({"spec": {"datasets": {
        "include": [format!("{pool}/**")], "exclude": [secret.clone()]
    }}})
    .to_string();
    let out = env.kubectl(&[
        "patch",
        "zfshost",
        &fleet.name("src"),
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    assert!(out.status.success(), "patch: {}", text(&out.stderr));

    let jobs: Api<BackupJob> = Api::namespaced(fleet.client.clone(), &ns);
    let ts = jiff::Timestamp::now().as_second();
    create_job(&fleet, &jobs, "excluded", &secret, ts).await;
    let (phase, message) = finished(&jobs, "excluded").await;
    println!("excluded: {phase:?}: {message}");
    assert_eq!(
        phase,
        JobPhase::Failed,
        "the agent ran a job for a dataset its host excludes"
    );
    assert!(message.contains("not offered by host"), "{message}");
    assert_eq!(
        fleet
            .stored_backups("bak", "src", &secret)
            .await
            .map(|b| b.len()),
        Some(0),
        "the excluded dataset was sent"
    );

    create_job(&fleet, &jobs, "offered", &open, ts + 1).await;
    let (phase, message) = finished(&jobs, "offered").await;
    assert_eq!(phase, JobPhase::Succeeded, "{message}");
    fleet.shutdown().await;
}
