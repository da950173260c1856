//! A node's agent writes its own ZfsHost's status, so a compromised node controls that text.
//! The controller lists every ZfsHost in one watch; one it could not decode used to fail the
//! whole listing, so after a restart or a failover the controller never started reconciling
//! anything (no backups anywhere, while its leader metric said all was well). Now: sizes the
//! controller reads as unsigned numbers are refused at admission when negative, with a
//! sentence, and a policy is still reconciled while such a host is offered to the apiserver.
//! (The controller's own tolerance of undecodable hosts — for objects stored before the schema
//! said so, or written by a newer agent — is tested in `controller::host_watch`.)

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use zetaback::api::{BackupPolicy, BackupPolicySpec, ZfsHost};
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
    // Whatever admission said, the controller must keep working: start one and have it
    // reconcile a policy (naming a host that does not exist, so nothing else is needed).
    let ctl = InProcessController::start(
        client.clone(),
        zetaback::controller::Options {
            watch_namespace: Some(ns.clone()),
            ..zetaback::controller::Options::new(
                &ns,
                "badhost",
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
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("p", spec))
        .await
        .expect("create policy");
    // Polled by hand (not `eventually`, which panics): the host must be deleted either way, or
    // it would stall every other controller sharing this apiserver.
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
    let _ = hosts.delete(&name, &Default::default()).await;
    let _ = ctl.stop().await;
    assert!(
        reconciled,
        "the controller reconciled nothing while host {name} had the status written"
    );
    assert!(
        refused.contains("should be greater than or equal to 0"),
        "a negative size must be refused with a sentence: {refused}"
    );
}
