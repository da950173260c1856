//! A node's agent writes its own ZfsHost's status, so a compromised node controls that text.
//! The controller lists every ZfsHost in one watch; one it could not decode used to fail the
//! whole listing, so after a restart or a failover the controller never started reconciling
//! anything (no backups anywhere, while its leader metric said all was well). Now: sizes the
//! controller reads as unsigned numbers are refused at admission when negative, with a
//! sentence, and a policy is still reconciled while such a host is offered to the apiserver.
//! (The controller's own tolerance of undecodable hosts — for objects stored before the schema
//! said so, or written by a newer agent — is tested in `controller::readable_watch`.)
//! The same for the status of a node's BackupJobs, which its agent writes too.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use zetaback::api::{BackupJob, BackupPolicy, BackupPolicySpec, ZfsHost};
use zetaback_e2e::controller::InProcessController;
use zetaback_e2e::{Env, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_status_the_controller_cannot_read_is_refused_and_stalls_nothing() {
    let env = Env::get();
    let ns = env.namespace("badhost");
    let client = env.client().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let name = format!("{ns}-h");
    let host: ZfsHost = serde_json::from_value(serde_json::json!({
        "apiVersion": "zetaback.io/v1alpha1",
        "kind": "ZfsHost",
        "metadata": {"name": name, "labels": {"e2e": ns}},
        "spec": {"nodeName": name, "datasets": {"include": ["tank/**"]}}
    }))
    .expect("host");
    hosts
        .create(&PostParams::default(), &host)
        .await
        .expect("create ZfsHost");

    // What a compromised agent writes: sizes the controller reads as u64, negative.
    let status = serde_json::json!({"status": {
        "pools": [{"name": "tank", "health": "ONLINE", "sizeBytes": -1, "freeBytes": -1}],
        "datasets": [{"name": "tank/db", "usedBytes": -5}]
    }});
    let written = hosts
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
    let refused = match &written {
        Err(kube::Error::Api(s)) => s.message.clone(),
        other => format!("accepted: {other:?}"),
    };
    // Whatever admission said, the controller must keep working.
    let reconciled = a_controller_reconciles_a_policy(&client, &ns).await;
    let _ = hosts.delete(&name, &Default::default()).await;
    assert!(
        reconciled,
        "the controller reconciled nothing while host {name} had the status written"
    );
    assert!(
        refused.contains("should be greater than or equal to 0"),
        "a negative size must be refused with a sentence: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_status_the_controller_cannot_read_is_refused_and_stalls_nothing() {
    let env = Env::get();
    let ns = env.namespace("badjob");
    let client = env.client().await;
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    let job: BackupJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "zetaback.io/v1alpha1",
        "kind": "BackupJob",
        "metadata": {"name": "j-1", "labels": {"zetaback.io/policy": "p"}},
        "spec": {"policy": "p", "host": "db-1", "dataset": "tank/db", "type": "full",
                 "snapshot": "zetaback-1700000000",
                 "target": {"host": "backup-1", "path": "/var/lib/zetaback"}}
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create BackupJob");
    // What a compromised agent writes into its own node's job: a claim count the controller
    // reads as u32, negative. (Before: accepted, and every controller replica's BackupJob
    // listing failed with `invalid value: integer -1, expected u32`: nothing reconciled.)
    let status = serde_json::json!({"status": {"phase": "Running", "attempts": -1}});
    let written = jobs
        .patch_status("j-1", &PatchParams::default(), &Patch::Merge(&status))
        .await;
    let refused = match &written {
        Err(kube::Error::Api(s)) => s.message.clone(),
        other => format!("accepted: {other:?}"),
    };
    let reconciled = a_controller_reconciles_a_policy(&client, &ns).await;
    let _ = jobs.delete("j-1", &Default::default()).await;
    assert!(
        reconciled,
        "the controller reconciled nothing while job {ns}/j-1 had the status written"
    );
    assert!(
        refused.contains("should be greater than or equal to 0"),
        "a negative claim count must be refused with a sentence: {refused}"
    );
}

/// Starts a controller watching `ns` and reports whether it reconciles a policy there within
/// 90 s (naming a host that does not exist, so nothing else is needed). Polled by hand (not
/// `eventually`, which panics): the caller must delete its bad object either way, or it would
/// stall every other controller sharing this apiserver.
async fn a_controller_reconciles_a_policy(client: &kube::Client, ns: &str) -> bool {
    let ctl = InProcessController::start(
        client.clone(),
        zetaback::controller::Options {
            watch_namespace: Some(ns.to_string()),
            ..zetaback::controller::Options::new(
                ns,
                "badobject",
                ([127, 0, 0, 1], free_port()).into(),
            )
        },
    );
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": ["db-1"]},
        "full": {"every": "7d", "keep": "14d"},
        "incremental": {"every": "1d", "keep": "3d"},
        "target": {"host": "backup-1", "path": "/var/lib/zetaback"}
    }))
    .expect("spec");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("p", spec))
        .await
        .expect("create policy");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut reconciled = false;
    while !reconciled && tokio::time::Instant::now() < deadline {
        reconciled = policies
            .get("p")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "Ready"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = ctl.stop().await;
    reconciled
}
