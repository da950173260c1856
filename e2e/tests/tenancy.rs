//! Tenancy on real parts (the local apiserver, zfs-fuse pools, real agents, the controller): a
//! ZfsHost serves only the namespaces its `spec.allowedNamespaces` lists (by default only the
//! operator's own), and Restores land only under its `spec.restoreRoots`. A BackupPolicy or a
//! Restore from a namespace the hosts do not serve gets `Ready=False`, reason `Forbidden`, and
//! touches nothing; once the hosts list the namespace, the same policy backs up; a Restore
//! outside the destination's restore roots is refused, one under them restores.

use std::time::Duration;

use kube::api::{Api, ListParams};
use zetaback::api::restore::RestorePhase;
use zetaback::api::{BackupJob, BackupPolicy, Restore};
use zetaback_e2e::fleet::{
    Fleet, HostSpec, create_restore, dataset_exists, restore_finished, restore_reason,
};
use zetaback_e2e::{Env, eventually, text};

/// The policy's `Ready` condition as (reason, message).
async fn policy_ready(api: &Api<BackupPolicy>, name: &str) -> Option<(String, String)> {
    let st = api.get(name).await.ok()?.status?;
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// Merge-patches a ZfsHost's spec with `kubectl`.
fn patch_host(env: &Env, host: &str, spec: serde_json::Value) {
    let patch = serde_json::json!({ "spec": spec }).to_string();
    let out = env.kubectl(&["patch", "zfshost", host, "--type", "merge", "-p", &patch]);
    assert!(out.status.success(), "patch {host}: {}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_a_host_does_not_serve_can_neither_back_it_up_nor_restore_to_it() {
    let env = Env::get();
    let ns = env.namespace("tenancy-ns");
    // The operator's own namespace (its Lease's), not the tenant's.
    let ops = env.namespace("tenancy-ops");
    // The controller publishes its restore grants' key in its own (the Lease's) namespace: the
    // store that checks grants is told where.
    let grant_key = format!("{ops}/zetaback-grant-key");
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src"),
            HostSpec::store("bak").args(&["--grant-key-configmap", &grant_key]),
            HostSpec::source("dst"),
        ],
    )
    .await;
    fleet
        .start_controller(|o| o.lease_namespace = ops.clone())
        .await;
    let client = fleet.client.clone();
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    let (src, bak, dst) = (fleet.name("src"), fleet.name("bak"), fleet.name("dst"));
    let dst_pool = fleet.host("dst").pool.clone();

    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"tenant data");
    let spec = fleet.policy_spec("src", "bak", "*/data");
    fleet.create_policy("p", "src", &[&dataset], spec).await;

    // The hosts serve only the operator's namespace: the tenant's policy is refused.
    let (reason, message) = eventually(
        "the tenant's policy refused",
        Duration::from_secs(60),
        || async {
            policy_ready(&policies, "p")
                .await
                .filter(|(r, _)| r != "Accepted")
        },
    )
    .await;
    println!("policy: {reason}: {message}");
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(
        message.contains(&src) && message.contains(&bak) && message.contains(&ops),
        "the refusal names the hosts and whom they serve: {message}"
    );
    // ... and touched nothing: no job, nothing stored.
    let made = jobs.list(&ListParams::default()).await.expect("list jobs");
    assert!(
        made.items.is_empty(),
        "a refused policy made jobs: {:?}",
        made.items
            .iter()
            .map(|j| j.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        fleet
            .stored_backups("bak", "src", &dataset)
            .await
            .map(|b| b.len()),
        Some(0),
        "a refused policy stored backups"
    );

    // A Restore from the source host the namespace may not use: refused, nothing created.
    let into = format!("{dst_pool}/restored");
    create_restore(
        &restores,
        "not-served",
        serde_json::json!({
            "source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": into},
        }),
    )
    .await;
    let r = restore_finished(&restores, "not-served", Duration::from_secs(60)).await;
    assert_eq!(restore_reason(&r), "Forbidden");
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(RestorePhase::Failed)
    );
    assert!(!dataset_exists(&into), "a refused restore created {into}");

    // The hosts serve the namespace now: the same policy backs up.
    for host in [&src, &bak, &dst] {
        patch_host(env, host, serde_json::json!({"allowedNamespaces": [ns]}));
    }
    fleet.wait_for_backups("bak", "src", &dataset, 1).await;
    let (reason, _) = eventually("the policy accepted", Duration::from_secs(60), || async {
        policy_ready(&policies, "p")
            .await
            .filter(|(r, _)| r != "Forbidden")
    })
    .await;
    assert_eq!(reason, "Reconciled");

    // Restores land only under the destination's restore roots.
    let root = format!("{dst_pool}/restore");
    patch_host(env, &dst, serde_json::json!({"restoreRoots": [root]}));
    let outside = format!("{dst_pool}/etc");
    create_restore(
        &restores,
        "outside-roots",
        serde_json::json!({
            "source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": outside},
        }),
    )
    .await;
    let r = restore_finished(&restores, "outside-roots", Duration::from_secs(60)).await;
    assert_eq!(restore_reason(&r), "Forbidden");
    let message = r.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("not under a restore root") && message.contains(&root),
        "{message}"
    );
    assert!(
        !dataset_exists(&outside),
        "a refused restore created {outside}"
    );

    let inside = format!("{root}/data");
    create_restore(
        &restores,
        "inside-roots",
        serde_json::json!({
            "source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": inside},
        }),
    )
    .await;
    let r = restore_finished(&restores, "inside-roots", Duration::from_secs(120)).await;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(RestorePhase::Succeeded),
        "{}",
        restore_reason(&r)
    );
    assert!(dataset_exists(&inside));

    fleet.shutdown().await;
    env.kubectl(&["delete", "namespace", &ops, "--wait=false"]);
}
