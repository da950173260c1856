//! The controller against the real apiserver: status is written once per spec change (a status
//! write does not trigger a reconcile loop), invalid specs are reported, with two replicas
//! exactly one leads and the other takes over when it steps down, a leader that loses its Lease
//! stands by and leads again, a ZfsHost's new dataset triggers its policy, and policies sharing
//! a backup host share its perTarget slots.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use zetaback::api::{BackupPolicy, BackupPolicySpec};
use zetaback_e2e::controller::InProcessController;
use zetaback_e2e::stub_store::{delete_hosts, hosts_with_status, start_stub_store};
use zetaback_e2e::{Env, eventually, free_port, http_get, metric};

fn policy(name: &str, full_keep: &str) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": ["db-1"]},
        "full": {"every": "7d", "keep": full_keep},
        "incremental": {"every": "1d", "keep": "14d"},
        "target": {"host": "backup-1", "path": "/var/lib/zetaback"}
    }))
    .expect("spec");
    BackupPolicy::new(name, spec)
}

async fn start_controller(client: kube::Client, ns: &str, identity: &str) -> InProcessController {
    let options = zetaback::controller::Options {
        watch_namespace: Some(ns.to_owned()),
        ..zetaback::controller::Options::new(ns, identity, ([127, 0, 0, 1], free_port()).into())
    };
    InProcessController::start(client, options)
}

/// The only controller of namespace `ns`, with the store agents' admin token
/// (`admin-token`), as the backup-flow tests run it.
async fn start_with_store_token(client: kube::Client, ns: &str) -> InProcessController {
    let options = zetaback::controller::Options {
        store_token: Some("admin-token".into()),
        watch_namespace: Some(ns.to_owned()),
        ..zetaback::controller::Options::new(ns, "only", ([127, 0, 0, 1], free_port()).into())
    };
    InProcessController::start(client, options)
}

async fn metrics_of(port: u16) -> String {
    eventually("metrics endpoint", Duration::from_secs(20), || async {
        http_get(port, "/metrics").await.ok()
    })
    .await
}

async fn ready_generation(api: &Api<BackupPolicy>, name: &str) -> Option<(i64, String, String)> {
    let p = api.get(name).await.ok()?;
    let st = p.status?;
    let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((st.observed_generation?, c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_once_per_spec_change() {
    let env = Env::get();
    let ns = env.namespace("ctl-writes");
    let client = env.client().await;
    let ctl = start_controller(client.clone(), &ns, "only").await;
    let api: Api<BackupPolicy> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &policy("p1", "30d"))
        .await
        .expect("create");
    let seen = eventually("observedGeneration 1", Duration::from_secs(60), || {
        ready_generation(&api, "p1")
    })
    .await;
    // No ZfsHost "backup-1" exists, so the policy cannot read its store: Ready=False says so.
    assert_eq!(seen, (1, "False".into(), "StoreUnreachable".into()));
    // Give a would-be loop time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = metrics_of(ctl.port).await;
    let writes = metric(
        &m,
        "zetaback_controller_status_writes_total{kind=\"BackupPolicy\"}",
    );
    let reconciles = metric(
        &m,
        "zetaback_controller_reconciles_total{kind=\"BackupPolicy\",result=\"ok\"}",
    );
    println!("after create: status writes {writes:?}, reconciles {reconciles:?}");
    assert_eq!(writes, Some(1.0), "one status write for one change");
    assert_eq!(reconciles, Some(1.0), "one reconcile for one change");

    // A spec change: one more reconcile, one more write.
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"incremental": {"every": "12h"}}})),
    )
    .await
    .expect("patch spec");
    eventually("observedGeneration 2", Duration::from_secs(30), || async {
        ready_generation(&api, "p1").await.filter(|s| s.0 == 2)
    })
    .await;
    // A label change does not change the generation: no reconcile, no write.
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "db"}}})),
    )
    .await
    .expect("patch labels");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = metrics_of(ctl.port).await;
    let writes = metric(
        &m,
        "zetaback_controller_status_writes_total{kind=\"BackupPolicy\"}",
    );
    let reconciles = metric(
        &m,
        "zetaback_controller_reconciles_total{kind=\"BackupPolicy\",result=\"ok\"}",
    );
    println!("after spec + label change: status writes {writes:?}, reconciles {reconciles:?}");
    assert_eq!(writes, Some(2.0));
    assert_eq!(reconciles, Some(2.0));

    ctl.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_schema_cannot_judge_is_reported_not_ready() {
    let env = Env::get();
    let ns = env.namespace("ctl-invalid");
    let client = env.client().await;
    let ctl = start_controller(client.clone(), &ns, "only").await;
    let api: Api<BackupPolicy> = Api::namespaced(client, &ns);
    // A retention grid spanning 2 days for fulls due every 7 days: the CRD's CEL rules check
    // plain ages only, the controller checks grids.
    api.create(&PostParams::default(), &policy("short-grid", "2x1d"))
        .await
        .expect("the apiserver accepts it");
    let (gen_, status, reason) = eventually("a verdict", Duration::from_secs(60), || {
        ready_generation(&api, "short-grid")
    })
    .await;
    assert_eq!(
        (gen_, status.as_str(), reason.as_str()),
        (1, "False", "InvalidSpec")
    );
    let p = api.get("short-grid").await.expect("get");
    let message = &p.status.expect("status").conditions[0].message;
    assert!(
        message.contains("full.keep spans less than full.every"),
        "{message}"
    );
    let _ = ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_leads_and_the_other_takes_over() {
    let env = Env::get();
    let ns = env.namespace("ctl-leader");
    let client = env.client().await;
    let mut a = start_controller(client.clone(), &ns, "replica-a").await;
    let mut b = start_controller(client.clone(), &ns, "replica-b").await;
    let leaders = eventually("exactly one leader", Duration::from_secs(60), || async {
        let la = metric(
            &http_get(a.port, "/metrics").await.ok()?,
            "zetaback_controller_leader",
        )?;
        let lb = metric(
            &http_get(b.port, "/metrics").await.ok()?,
            "zetaback_controller_leader",
        )?;
        (la + lb == 1.0).then_some((la, lb))
    })
    .await;
    // Stay stable: still exactly one after a few renewals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let la = metric(
        &http_get(a.port, "/metrics").await.expect("a"),
        "zetaback_controller_leader",
    );
    let lb = metric(
        &http_get(b.port, "/metrics").await.expect("b"),
        "zetaback_controller_leader",
    );
    assert_eq!(
        (la, lb),
        (Some(leaders.0), Some(leaders.1)),
        "leadership must not flap"
    );
    let (leader, follower) = if leaders.0 == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("before", "30d"))
        .await
        .expect("create");
    eventually("leader reconciles", Duration::from_secs(30), || {
        ready_generation(&api, "before")
    })
    .await;

    // The leader steps down (releasing the Lease); the follower takes over.
    leader.request_stop();
    let _ = (&mut leader.task).await;
    let port = follower.port;
    eventually(
        "the follower leads",
        Duration::from_secs(40),
        || async move {
            let l = metric(
                &http_get(port, "/metrics").await.ok()?,
                "zetaback_controller_leader",
            )?;
            (l == 1.0).then_some(())
        },
    )
    .await;
    api.create(&PostParams::default(), &policy("after", "30d"))
        .await
        .expect("create");
    eventually("new leader reconciles", Duration::from_secs(30), || {
        ready_generation(&api, "after")
    })
    .await;
    follower.request_stop();
    let _ = (&mut follower.task).await;
}

async fn leader_metric(port: u16) -> Option<f64> {
    metric(
        &http_get(port, "/metrics").await.ok()?,
        "zetaback_controller_leader",
    )
}

/// A leader whose Lease another holder takes (as after renewals failed while the apiserver was
/// away) stops reconciling, stands by, and leads again once the Lease is free: it does not
/// exit, since in this harness, as for a single replica, nothing would start it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stands_by_and_leads_again() {
    use k8s_openapi::api::coordination::v1::Lease;
    let env = Env::get();
    let ns = env.namespace("ctl-relead");
    let client = env.client().await;
    let ctl = start_controller(client.clone(), &ns, "replica-a").await;
    let port = ctl.port;
    eventually("replica-a leads", Duration::from_secs(40), || async move {
        (leader_metric(port).await? == 1.0).then_some(())
    })
    .await;

    // Another holder takes the Lease for 30 s; replica-a sees it at its next renewal.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    leases
        .patch(
            zetaback::controller::leader::LEASE_NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {
                "holderIdentity": "another-replica",
                "acquireTime": now,
                "renewTime": now,
                "leaseDurationSeconds": 30,
            }})),
        )
        .await
        .expect("take the lease");
    eventually(
        "replica-a stands by",
        Duration::from_secs(20),
        || async move { (leader_metric(port).await? == 0.0).then_some(()) },
    )
    .await;
    assert!(
        !ctl.task.is_finished(),
        "the controller must stand by, not exit"
    );

    // While standing by it reconciles nothing.
    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("while-standing-by", "30d"))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = leases
        .get(zetaback::controller::leader::LEASE_NAME)
        .await
        .expect("lease");
    let holder = held.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("another-replica"), "still taken");
    let standing_by = api.get("while-standing-by").await.expect("get");
    assert!(
        standing_by.status.is_none(),
        "a standby replica wrote status: {:?}",
        standing_by.status
    );

    // Once the other holder's Lease expires, replica-a leads again and catches up.
    eventually(
        "replica-a leads again",
        Duration::from_secs(60),
        || async move { (leader_metric(port).await? == 1.0).then_some(()) },
    )
    .await;
    eventually("the new term reconciles", Duration::from_secs(30), || {
        ready_generation(&api, "while-standing-by")
    })
    .await;
    ctl.stop_cleanly().await;
}

fn dataset(name: &str, class: Option<&str>, snapshots: &[String]) -> serde_json::Value {
    serde_json::json!({"name": name, "class": class, "snapshots": snapshots})
}

/// Selection by class, BackupJob history retention and the backup metrics, against the real
/// apiserver: a policy selecting classes `gold` and "" (no class) covers tank/a (gold) and
/// tank/c (no class) but never tank/b (silver); the test completes each job as an agent would
/// (manifest in the store, then status Succeeded); the controller keeps one succeeded job per
/// dataset (`jobHistory` default) and its /metrics agree with the API and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_job_history_and_backup_metrics() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use zetaback::api::{BackupJob, BackupType, JobPhase, ZfsHost};

    let env = Env::get();
    let ns = env.namespace("ctl-metrics");
    let client = env.client().await;
    let (stub, endpoint, server) = start_stub_store().await;

    // Two ZfsHosts (cluster-scoped, named after the namespace): a source and the backup host.
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (src, bak) = (format!("{ns}-src"), format!("{ns}-bak"));
    let snapshots: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> = Default::default();
    let report = {
        let (hosts, src, bak, endpoint, snapshots) = (
            hosts.clone(),
            src.clone(),
            bak.clone(),
            endpoint.clone(),
            snapshots.clone(),
        );
        move || {
            let (hosts, src, bak, endpoint, snapshots) = (
                hosts.clone(),
                src.clone(),
                bak.clone(),
                endpoint.clone(),
                snapshots.clone(),
            );
            async move {
                let snaps = snapshots.lock().expect("lock").clone();
                let s = |d: &str| snaps.get(d).cloned().unwrap_or_default();
                let now = jiff::Timestamp::now();
                for (name, datasets) in [
                    (
                        &src,
                        vec![
                            dataset("tank/a", Some("gold"), &s("tank/a")),
                            dataset("tank/b", Some("silver"), &s("tank/b")),
                            dataset("tank/c", None, &s("tank/c")),
                        ],
                    ),
                    (&bak, vec![]),
                ] {
                    let status = serde_json::json!({"status": {
                        "lastSeen": now, "agentEndpoint": endpoint, "datasets": datasets}});
                    hosts
                        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .expect("host status");
                }
            }
        }
    };
    for name in [&src, &bak] {
        let host: ZfsHost = serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost",
            "metadata": {"name": name}, "spec": {"nodeName": name}
        }))
        .expect("host");
        hosts
            .create(&PostParams::default(), &host)
            .await
            .expect("create host");
    }
    report().await;

    let ctl = start_with_store_token(client.clone(), &ns).await;

    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [src]},
        "datasets": {"include": ["tank/**"], "classes": ["gold", ""]},
        "full": {"every": "1h", "keep": "1d"},
        "incremental": {"every": "3s", "keep": "1h"},
        "target": {"host": bak, "path": "/var/lib/zetaback"},
        "concurrency": {"perHost": 2, "perTarget": 4}
    }))
    .expect("spec");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("classes", spec))
        .await
        .expect("create policy");

    // The agent's part: complete every Pending job (the store first, then the job), and
    // report the new snapshot, until told to stop.
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    let seen: Arc<std::sync::Mutex<BTreeMap<String, u32>>> = Default::default();
    let completing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let completer = {
        let (jobs, stub, seen, completing, snapshots) = (
            jobs.clone(),
            stub.clone(),
            seen.clone(),
            completing.clone(),
            snapshots.clone(),
        );
        let report = report.clone();
        tokio::spawn(async move {
            let mut done = BTreeSet::new();
            while completing.load(Relaxed) {
                let list = jobs
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let mut changed = false;
                for job in list {
                    let name = job.metadata.name.clone().unwrap_or_default();
                    let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
                    if phase != JobPhase::Pending || !done.insert(name.clone()) {
                        continue;
                    }
                    let ds = job.spec.dataset.0.clone();
                    *seen.lock().expect("lock").entry(ds.clone()).or_default() += 1;
                    let ts: i64 = job
                        .spec
                        .snapshot
                        .rsplit('-')
                        .next()
                        .and_then(|t| t.parse().ok())
                        .expect("snapshot zetaback-<ts>");
                    let base_ts = job
                        .spec
                        .base_snapshot
                        .as_deref()
                        .and_then(|b| b.rsplit('-').next())
                        .and_then(|t| t.parse::<i64>().ok());
                    let id = match (job.spec.backup_type, base_ts) {
                        (BackupType::Incremental, Some(b)) => format!("{ts}.incremental.{b}"),
                        _ => format!("{ts}.full"),
                    };
                    let bytes = 1000 + u64::try_from(ts % 1000).expect("positive");
                    stub.backups
                        .lock()
                        .expect("lock")
                        .push(zetaback::store::StoredBackup {
                            manifest: zetaback::store::Manifest {
                                version: zetaback::store::MANIFEST_VERSION,
                                id: id.clone(),
                                host: job.spec.host.0.clone(),
                                dataset: ds.clone(),
                                snapshot: job.spec.snapshot.clone(),
                                base_snapshot: job.spec.base_snapshot.clone(),
                                backup_type: job.spec.backup_type,
                                bytes,
                                sha256: Some("0".repeat(64)),
                                compression: job.spec.compression,
                                created: jiff::Timestamp::from_second(ts).expect("ts"),
                                policy: None,
                                xxh3: None,
                                raw: false,
                            },
                            archived: false,
                            verification: None,
                        });
                    snapshots
                        .lock()
                        .expect("lock")
                        .entry(ds)
                        .or_default()
                        .push(job.spec.snapshot.clone());
                    changed = true;
                    let status = serde_json::json!({"status": {
                        "phase": "Succeeded", "bytes": bytes, "backupId": id,
                        "sha256": "0".repeat(64), "finishedAt": jiff::Timestamp::now(),
                        "attempts": 1}});
                    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .expect("job status");
                }
                if changed {
                    report().await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // Several backups of each covered dataset.
    eventually(
        "4 jobs for tank/a and tank/c",
        Duration::from_secs(90),
        || async {
            let s = seen.lock().expect("lock").clone();
            (s.get("tank/a").copied().unwrap_or(0) >= 4
                && s.get("tank/c").copied().unwrap_or(0) >= 4)
                .then_some(())
        },
    )
    .await;
    completing.store(false, Relaxed);
    completer.await.expect("completer");
    let seen = seen.lock().expect("lock").clone();
    println!("jobs completed per dataset: {seen:?}");
    assert!(
        !seen.contains_key("tank/b"),
        "tank/b is silver: never backed up"
    );

    // History: one succeeded job per dataset is kept (jobHistory.successful defaults to 1).
    let kept = eventually(
        "history pruned to 1 per dataset",
        Duration::from_secs(30),
        || async {
            let list = jobs.list(&Default::default()).await.ok()?.items;
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for j in &list {
                if j.status.as_ref().map(|s| s.phase) == Some(JobPhase::Succeeded) {
                    *per.entry(j.spec.dataset.0.clone()).or_default() += 1;
                }
            }
            (per.values().all(|&n| n == 1) && per.len() == 2).then_some((per, list.len()))
        },
    )
    .await;
    println!("BackupJobs left: {kept:?}");

    let status = policies
        .get("classes")
        .await
        .expect("policy")
        .status
        .expect("status");
    assert_eq!(status.datasets, 2, "tank/a (gold) and tank/c (no class)");
    let stored: u64 = stub
        .backups
        .lock()
        .expect("lock")
        .iter()
        .map(|b| b.manifest.bytes)
        .sum();

    // Metrics agree with the API and the store.
    let m = eventually("metrics settle", Duration::from_secs(30), || async {
        let m = http_get(ctl.port, "/metrics").await.ok()?;
        let succeeded = metric(
            &m,
            &format!(
                "zetaback_controller_backup_jobs{{namespace=\"{ns}\",policy=\"classes\",phase=\"Succeeded\"}}"
            ),
        );
        let bytes = metric(
            &m,
            &format!(
                "zetaback_controller_bytes_stored{{namespace=\"{ns}\",policy=\"classes\",target=\"{bak}\"}}"
            ),
        );
        (succeeded == Some(2.0) && bytes == Some(stored as f64)).then_some(m)
    })
    .await;
    let pending = metric(
        &m,
        &format!(
            "zetaback_controller_backup_jobs{{namespace=\"{ns}\",policy=\"classes\",phase=\"Pending\"}}"
        ),
    );
    assert_eq!(pending, Some(0.0), "no job is left pending");
    let since = |ds: &str| {
        metric(
            &m,
            &format!(
                "zetaback_controller_seconds_since_last_backup{{namespace=\"{ns}\",policy=\"classes\",host=\"{src}\",dataset=\"{ds}\"}}"
            ),
        )
    };
    for ds in ["tank/a", "tank/c"] {
        let age = since(ds).unwrap_or_else(|| panic!("no seconds_since_last_backup for {ds}"));
        assert!(
            (0.0..60.0).contains(&age),
            "{ds}: {age} s since its newest backup"
        );
    }
    assert_eq!(since("tank/b"), None, "tank/b is not covered");
    assert_eq!(status.bytes_stored, Some(stored));
    // The catalogue was read whole once (plus a revalidation at most), then per host.
    let (whole, per_host) = (
        stub.whole_reads.load(Relaxed),
        stub.host_reads.load(Relaxed),
    );
    println!(
        "catalogue reads: whole {whole}, ?host= {per_host}, 304 {}",
        stub.not_modified.load(Relaxed)
    );
    assert!(
        whole <= 3,
        "the whole catalogue is not re-read per reconcile"
    );
    assert!(per_host >= 1, "new backups are read per host");

    ctl.stop_cleanly().await;
    server.abort();
    delete_hosts(&hosts, &[&src, &bak]).await;
}

/// Policy `name`: weekly fulls and daily incrementals of host `src` to the file store of host
/// `bak`, with these concurrency caps.
fn weekly_policy(name: &str, src: &str, bak: &str, per_host: u32, per_target: u32) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [src]},
        "full": {"every": "7d", "keep": "30d"},
        "incremental": {"every": "1d", "keep": "14d"},
        "target": {"host": bak, "path": "/var/lib/zetaback"},
        "concurrency": {"perHost": per_host, "perTarget": per_target}
    }))
    .expect("spec");
    BackupPolicy::new(name, spec)
}

async fn jobs_of(
    jobs: &Api<zetaback::api::BackupJob>,
    policy: &str,
) -> Vec<zetaback::api::BackupJob> {
    let lp = kube::api::ListParams::default().labels(&format!("zetaback.io/policy={policy}"));
    jobs.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

/// A ZfsHost's change that matters triggers the policies selecting it: a dataset that appears
/// in the host's report gets its first full without waiting for the policy's timed requeue
/// (60 s at most, and nothing else would wake the policy here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dataset_in_a_host_report_is_backed_up_at_once() {
    use zetaback::api::ZfsHost;

    let env = Env::get();
    let ns = env.namespace("ctl-newds");
    let client = env.client().await;
    let (_, endpoint, server) = start_stub_store().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (src, bak) = (format!("{ns}-src"), format!("{ns}-bak"));
    let now = jiff::Timestamp::now();
    hosts_with_status(
        &hosts,
        &[
            (
                src.as_str(),
                serde_json::json!({"lastSeen": now, "datasets": [dataset("tank/a", None, &[])]}),
            ),
            (
                bak.as_str(),
                serde_json::json!({"lastSeen": now, "agentEndpoint": endpoint}),
            ),
        ],
    )
    .await;
    let ctl = start_with_store_token(client.clone(), &ns).await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(
            &PostParams::default(),
            &weekly_policy("newds", &src, &bak, 4, 4),
        )
        .await
        .expect("create policy");
    let jobs: Api<zetaback::api::BackupJob> = Api::namespaced(client.clone(), &ns);
    eventually("tank/a's first full", Duration::from_secs(30), || async {
        let list = jobs_of(&jobs, "newds").await;
        list.iter()
            .any(|j| j.spec.dataset.as_str() == "tank/a")
            .then_some(())
    })
    .await;
    eventually(
        "status counts 1 dataset",
        Duration::from_secs(30),
        || async {
            let st = policies.get("newds").await.ok()?.status?;
            (st.datasets == 1).then_some(())
        },
    )
    .await;
    // Let the reconciles the job's creation started finish (not an assertion).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The agent reports a new dataset: its full starts well before the 60 s requeue.
    let report = serde_json::json!({"status": {"lastSeen": jiff::Timestamp::now(),
        "datasets": [dataset("tank/a", None, &[]), dataset("tank/b", None, &[])]}});
    hosts
        .patch_status(&src, &PatchParams::default(), &Patch::Merge(&report))
        .await
        .expect("host status");
    eventually(
        "tank/b's first full, triggered by the report",
        Duration::from_secs(20),
        || async {
            let list = jobs_of(&jobs, "newds").await;
            list.iter()
                .any(|j| j.spec.dataset.as_str() == "tank/b")
                .then_some(())
        },
    )
    .await;

    ctl.stop_cleanly().await;
    server.abort();
    delete_hosts(&hosts, &[&src, &bak]).await;
}

/// `concurrency.perTarget` counts every policy's jobs into the backup host: two policies
/// with perTarget 1 sending to the same host never have two jobs in flight there; the second
/// starts once the first's job finished (its event does not trigger the second policy, which
/// looks again soon on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_sharing_a_backup_host_share_its_per_target_slots() {
    use zetaback::api::{JobPhase, ZfsHost};

    let env = Env::get();
    let ns = env.namespace("ctl-target");
    let client = env.client().await;
    let (stub, endpoint, server) = start_stub_store().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (src1, src2, bak) = (
        format!("{ns}-src1"),
        format!("{ns}-src2"),
        format!("{ns}-bak"),
    );
    let now = jiff::Timestamp::now();
    hosts_with_status(
        &hosts,
        &[
            (
                src1.as_str(),
                serde_json::json!({"lastSeen": now, "datasets": [dataset("tank/a", None, &[])]}),
            ),
            (
                src2.as_str(),
                serde_json::json!({"lastSeen": now, "datasets": [dataset("tank/b", None, &[])]}),
            ),
            (
                bak.as_str(),
                serde_json::json!({"lastSeen": now, "agentEndpoint": endpoint}),
            ),
        ],
    )
    .await;
    let ctl = start_with_store_token(client.clone(), &ns).await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    let make = |name: &str, src: &str| weekly_policy(name, src, &bak, 1, 1);
    let jobs: Api<zetaback::api::BackupJob> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &make("first", &src1))
        .await
        .expect("create policy");
    let first = eventually(
        "the first policy's job",
        Duration::from_secs(30),
        || async { jobs_of(&jobs, "first").await.into_iter().next() },
    )
    .await;
    policies
        .create(&PostParams::default(), &make("second", &src2))
        .await
        .expect("create policy");
    eventually(
        "the second policy evaluated",
        Duration::from_secs(30),
        || async {
            let st = policies.get("second").await.ok()?.status?;
            (st.observed_generation == Some(1) && st.datasets == 1).then_some(())
        },
    )
    .await;
    assert!(
        jobs_of(&jobs, "second").await.is_empty(),
        "the backup host's one slot is the first policy's"
    );

    // The first job finishes (stored, then Succeeded): the second policy gets the slot.
    let name = first.metadata.name.clone().expect("name");
    let ts: i64 = first
        .spec
        .snapshot
        .rsplit('-')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("snapshot zetaback-<ts>");
    let id = format!("{ts}.full");
    stub.backups
        .lock()
        .expect("lock")
        .push(zetaback::store::StoredBackup {
            manifest: zetaback::store::Manifest {
                version: zetaback::store::MANIFEST_VERSION,
                id: id.clone(),
                host: src1.clone(),
                dataset: "tank/a".into(),
                snapshot: first.spec.snapshot.clone(),
                base_snapshot: None,
                backup_type: first.spec.backup_type,
                bytes: 1000,
                sha256: Some("0".repeat(64)),
                compression: first.spec.compression,
                created: jiff::Timestamp::from_second(ts).expect("ts"),
                policy: None,
                xxh3: None,
                raw: false,
            },
            archived: false,
            verification: None,
        });
    let status = serde_json::json!({"status": {
        "phase": "Succeeded", "bytes": 1000, "backupId": id,
        "sha256": "0".repeat(64), "finishedAt": jiff::Timestamp::now(), "attempts": 1}});
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("job status");
    eventually(
        "the second policy's job",
        Duration::from_secs(30),
        || async { jobs_of(&jobs, "second").await.into_iter().next() },
    )
    .await;
    let all = jobs.list(&Default::default()).await.expect("jobs").items;
    let in_flight = all
        .iter()
        .filter(|j| {
            j.status
                .as_ref()
                .is_none_or(|s| matches!(s.phase, JobPhase::Pending | JobPhase::Running))
        })
        .count();
    assert_eq!(
        in_flight, 1,
        "one job in flight into the backup host: {all:?}"
    );

    ctl.stop_cleanly().await;
    server.abort();
    delete_hosts(&hosts, &[&src1, &src2, &bak]).await;
}
