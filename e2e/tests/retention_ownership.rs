//! Retention deletes only the backups its own policy made, on real parts (the local
//! apiserver, zfs-fuse, real agents, the controller): two policies back up the same dataset to
//! the same store with different `keep`. The store's manifests record the policy that made each
//! backup (sent by the source from its BackupJob); the short-lived policy's retention expires
//! its own backups and never the long-lived policy's, and both report the shared dataset.

use std::time::Duration;

use kube::api::{Api, ListParams};
use zetaback::api::{BackupJob, BackupPolicy, JobPhase};
use zetaback_e2e::fleet::{Fleet, HostSpec};
use zetaback_e2e::{Env, eventually};

/// The backup ids the policy's succeeded BackupJobs stored, oldest first.
async fn job_backups(jobs: &Api<BackupJob>, policy: &str) -> Vec<String> {
    let list = jobs
        .list(&ListParams::default().labels(&format!("zetaback.io/policy={policy}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut ids: Vec<String> = list
        .into_iter()
        .filter_map(|j| {
            let st = j.status?;
            (st.phase == JobPhase::Succeeded).then_some(st.backup_id)?
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_policies_each_keep_their_own_backups() {
    let env = Env::get();
    let ns = env.namespace("tenancy-owner");
    let mut fleet =
        Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    fleet.start_controller(|_| {}).await;
    let jobs: Api<BackupJob> = Api::namespaced(fleet.client.clone(), &ns);
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"shared dataset");

    // The long-lived policy: one full now, kept 48 h.
    let long = fleet.policy_spec("src", "bak", "*/data");
    fleet.create_policy("long", "src", &[&dataset], long).await;
    let kept = eventually(
        "the long-lived policy's full",
        Duration::from_secs(120),
        || async { job_backups(&jobs, "long").await.into_iter().next() },
    )
    .await;
    println!("long-lived policy stored {kept}");

    // The short-lived policy over the same dataset: fulls every 20 s, kept 40 s.
    let mut short = fleet.policy_spec("src", "bak", "*/data");
    short["full"] = serde_json::json!({"every": "20s", "keep": "40s"});
    short["incremental"] = serde_json::json!({"every": "10s", "keep": "40s"});
    short["jobHistory"] = serde_json::json!({"successful": 100, "failed": 100});
    fleet
        .create_policy("short", "src", &[&dataset], short)
        .await;
    let first_short = eventually(
        "the short-lived policy's first backup",
        Duration::from_secs(120),
        || async { job_backups(&jobs, "short").await.into_iter().next() },
    )
    .await;
    println!("short-lived policy stored {first_short} first");

    // The short-lived policy's retention runs: its first backup expires.
    eventually(
        "the short-lived policy's first backup expired",
        Duration::from_secs(240),
        || async {
            let stored = fleet.stored_backups("bak", "src", &dataset).await?;
            (!stored.iter().any(|b| b.manifest.id == first_short)).then_some(())
        },
    )
    .await;
    let stored = fleet
        .stored_backups("bak", "src", &dataset)
        .await
        .expect("the store answers");
    let listed: Vec<(String, Option<String>)> = stored
        .iter()
        .map(|b| (b.manifest.id.clone(), b.manifest.policy.clone()))
        .collect();
    println!("stored after the short-lived policy's retention: {listed:?}");
    let long_backup = stored
        .iter()
        .find(|b| b.manifest.id == kept)
        .unwrap_or_else(|| {
            panic!("the long-lived policy's {kept} was deleted by the other policy's retention: {listed:?}")
        });
    assert_eq!(
        long_backup.manifest.policy.as_deref(),
        Some(format!("{ns}/long").as_str()),
        "the manifest records the policy that made it"
    );
    assert!(
        stored
            .iter()
            .filter(|b| b.manifest.id != kept)
            .all(|b| b.manifest.policy.as_deref() == Some(format!("{ns}/short").as_str())),
        "every other backup is the short-lived policy's: {listed:?}"
    );

    // Both policies report the shared dataset.
    for (name, other) in [("long", "short"), ("short", "long")] {
        let message = eventually(
            &format!("{name} reports the overlap"),
            Duration::from_secs(60),
            || async {
                let st = policies.get(name).await.ok()?.status?;
                st.conditions
                    .iter()
                    .find(|c| c.type_ == "Overlapping" && c.status == "True")
                    .map(|c| c.message.clone())
            },
        )
        .await;
        assert!(
            message.contains(&format!("{ns}/{other}")) && message.contains(&dataset),
            "{message}"
        );
    }
    fleet.shutdown().await;
}
