//! Monitoring that cannot lie, against the real apiserver and the controller:
//!
//! * a policy whose hosts never reported (a ZfsHost without status, a named host that does not
//!   exist) is not Compliant, and `kubectl zetaback violators` is CRITICAL about it;
//! * `violators` is UNKNOWN when it finds no policy, and UNKNOWN with the age once the
//!   controller stopped refreshing the status;
//! * two `kubectl zetaback backup` requests made before the controller looked are both honoured,
//!   and requests made at the same instant all join the queue;
//! * a stored backup deleted on the backup host behind the controller's back turns into a
//!   violation (real agents and zfs-fuse).
//!
//! The first three use a stand-in store (`zetaback_e2e::stub_store`) for the backup host's
//! catalogue; the last runs real agents on real ZFS.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use zetaback::api::backup_policy::BACKUP_NOW_REQUEST_ANNOTATION;
use zetaback::api::{BackupJob, BackupPolicy, BackupPolicySpec, ZfsHost};
use zetaback::store::{Manifest, StoredBackup};
use zetaback_e2e::controller::InProcessController;
use zetaback_e2e::fleet::{Fleet, HostSpec, noise, zb};
use zetaback_e2e::stub_store::{delete_hosts, hosts_with_status, start_stub_store};
use zetaback_e2e::{Env, eventually, free_port, http_get, metric};

/// The controller of namespace `ns` alone, with the stand-in store's token; `configure` may
/// change the options further.
fn start_controller(
    client: kube::Client,
    ns: &str,
    configure: impl FnOnce(&mut zetaback::controller::Options),
) -> InProcessController {
    let mut options = zetaback::controller::Options {
        store_token: Some("admin-token".into()),
        watch_namespace: Some(ns.to_owned()),
        ..zetaback::controller::Options::new(ns, "only", ([127, 0, 0, 1], free_port()).into())
    };
    configure(&mut options);
    InProcessController::start(client, options)
}

/// Weekly fulls and daily incrementals of `hosts` (by name) into the files of host `bak`.
fn policy(name: &str, hosts: &[&str], bak: &str, per_host: u32) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": hosts},
        "full": {"every": "7d", "keep": "30d"},
        "incremental": {"every": "1d", "keep": "14d"},
        "target": {"host": bak, "path": "/var/lib/zetaback"},
        "concurrency": {"perHost": per_host, "perTarget": 8}
    }))
    .expect("spec");
    BackupPolicy::new(name, spec)
}

/// A full of `host:dataset` stored at `at` (seconds), as the stand-in store lists it.
fn stored_full(host: &str, dataset: &str, at: i64) -> StoredBackup {
    StoredBackup {
        manifest: Manifest {
            version: 1,
            id: format!("{at}.full"),
            host: host.into(),
            dataset: dataset.into(),
            snapshot: format!("zetaback-{at}"),
            base_snapshot: None,
            backup_type: zetaback::api::BackupType::Full,
            bytes: 1000,
            sha256: Some("0".repeat(64)),
            compression: zetaback::api::backup_policy::Compression::None,
            created: jiff::Timestamp::from_second(at).expect("ts"),
            policy: None,
            xxh3: None,
            raw: false,
        },
        archived: false,
        verification: None,
    }
}

/// Deletes the test's namespace (what it made there goes with it).
async fn delete_namespace(client: &kube::Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = api.delete(ns, &Default::default()).await;
}

/// (reason, host, dataset) of every violation the policy's status lists.
async fn violations(api: &Api<BackupPolicy>, name: &str) -> Option<Vec<(String, String, String)>> {
    let st = api.get(name).await.ok()?.status?;
    Some(
        st.violations
            .iter()
            .map(|v| (format!("{:?}", v.reason), v.host.clone(), v.dataset.clone()))
            .collect(),
    )
}

/// The Compliant condition's (status, reason, message).
async fn compliant(api: &Api<BackupPolicy>, name: &str) -> Option<(String, String, String)> {
    let st = api.get(name).await.ok()?.status?;
    let c = st.conditions.iter().find(|c| c.type_ == "Compliant")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_hosts_never_reported_is_not_compliant() {
    let env = Env::get();
    let ns = env.namespace("monitor-silent");
    let client = env.client().await;
    let (_, endpoint, server) = start_stub_store().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (silent, ghost, bak) = (
        format!("{ns}-silent"),
        format!("{ns}-ghost"),
        format!("{ns}-bak"),
    );
    let now = jiff::Timestamp::now();
    // The backup host reports (so the policy is Ready); `silent` exists, its agent never ran.
    hosts_with_status(
        &hosts,
        &[(
            bak.as_str(),
            serde_json::json!({"lastSeen": now, "agentEndpoint": endpoint}),
        )],
    )
    .await;
    let never: ZfsHost = serde_json::from_value(serde_json::json!({
        "apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost",
        "metadata": {"name": silent}, "spec": {"nodeName": silent}
    }))
    .expect("host");
    hosts
        .create(&PostParams::default(), &never)
        .await
        .expect("create silent host");
    let ctl = start_controller(client.clone(), &ns, |_| {});
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(
            &PostParams::default(),
            &policy("silent", &[&silent, &ghost], &bak, 1),
        )
        .await
        .expect("create policy");

    let seen = eventually(
        "both hosts reported as not reporting",
        Duration::from_secs(60),
        || async {
            let v = violations(&policies, "silent").await?;
            (v.len() == 2).then_some(v)
        },
    )
    .await;
    println!("violations: {seen:?}");
    for host in [&silent, &ghost] {
        assert!(
            seen.iter()
                .any(|(r, h, d)| r == "HostNotReporting" && h == host && d.is_empty()),
            "{host}: {seen:?}"
        );
    }
    let st = policies
        .get("silent")
        .await
        .expect("policy")
        .status
        .expect("status");
    assert_eq!((st.datasets, st.violators), (0, 2));
    let (status, reason, message) = compliant(&policies, "silent").await.expect("Compliant");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "HostNotReporting")
    );
    assert!(
        message.contains(&silent) && message.contains(&ghost),
        "{message}"
    );
    let table = env.kubectl(&["get", "backuppolicies", "-n", &ns]);
    println!("{}", zetaback_e2e::text(&table.stdout));

    let (code, out) = zb(&client, &ns, &["violators"]).await;
    println!("kubectl zetaback violators (exit {code}):\n{out}");
    assert_eq!(code, 2, "{out}");
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("ZETABACK CRITICAL - 2 violators: ")
            && line.contains(&format!("{silent} (HostNotReporting)")),
        "{line}"
    );

    // The silent host's agent reports (no dataset of the policy's): its violation ends; the
    // host that does not exist stays unknown.
    hosts
        .patch_status(
            &silent,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"lastSeen": jiff::Timestamp::now()}})),
        )
        .await
        .expect("report");
    let left = eventually(
        "only the ghost is left",
        Duration::from_secs(60),
        || async {
            let v = violations(&policies, "silent").await?;
            (v.len() == 1).then_some(v)
        },
    )
    .await;
    assert_eq!(left[0].0, "HostNotReporting");
    assert_eq!(left[0].1, ghost);

    ctl.stop_cleanly().await;
    server.abort();
    delete_hosts(&hosts, &[&silent, &bak]).await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violators_is_unknown_without_policies_and_once_the_controller_stopped() {
    let env = Env::get();
    let ns = env.namespace("monitor-stale");
    let client = env.client().await;

    // No policy in the namespace (a mistyped -n): UNKNOWN, not OK.
    let (code, out) = zb(&client, &ns, &["violators"]).await;
    println!("no policies (exit {code}):\n{out}");
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with(&format!(
            "ZETABACK UNKNOWN - no BackupPolicy found in namespace {ns}"
        )),
        "{out}"
    );
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.ends_with(" | violators=0;;;0 policies=0;;;0")),
        "{out}"
    );

    // A compliant policy, with a controller that refreshes its status every 2 s.
    let (stub, endpoint, server) = start_stub_store().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (src, bak) = (format!("{ns}-src"), format!("{ns}-bak"));
    let now = jiff::Timestamp::now();
    stub.backups
        .lock()
        .expect("lock")
        .push(stored_full(&src, "tank/a", now.as_second() - 60));
    hosts_with_status(
        &hosts,
        &[
            (
                src.as_str(),
                serde_json::json!({"lastSeen": now, "datasets": [{"name": "tank/a"}]}),
            ),
            (
                bak.as_str(),
                serde_json::json!({"lastSeen": now, "agentEndpoint": endpoint}),
            ),
        ],
    )
    .await;
    let ctl = start_controller(client.clone(), &ns, |o| {
        o.status_heartbeat = Duration::from_secs(2);
        // The hosts' reports are not refreshed here: keep them reachable.
        o.host_stale_after = Duration::from_secs(3600);
    });
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy("fresh", &[&src], &bak, 1))
        .await
        .expect("create policy");
    let first = eventually("a compliant status", Duration::from_secs(60), || async {
        let st = policies.get("fresh").await.ok()?.status?;
        let ok = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Compliant" && c.status == "True");
        (ok && st.datasets == 1).then_some(st.last_evaluated?)
    })
    .await;
    // The heartbeat moves lastEvaluated although nothing else changes.
    eventually(
        "lastEvaluated refreshed",
        Duration::from_secs(30),
        || async {
            let st = policies.get("fresh").await.ok()?.status?;
            (st.last_evaluated?.0 > first.0).then_some(())
        },
    )
    .await;
    let (code, out) = zb(&client, &ns, &["violators", "--max-status-age", "15s"]).await;
    println!("controller running (exit {code}):\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ZETABACK OK - 0 violators in 1 policy | violators=0;;;0 policies=1;;;0 stale=0;;;0 status_age="),
        "{out}"
    );

    // The controller stops: the status keeps its last answer, and violators says how old it is.
    ctl.stop_cleanly().await;
    let out = eventually(
        "UNKNOWN once the status is too old",
        Duration::from_secs(60),
        || async {
            let (code, out) = zb(&client, &ns, &["violators", "--max-status-age", "15s"]).await;
            (code == 3).then_some(out)
        },
    )
    .await;
    println!("controller stopped:\n{out}");
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("ZETABACK UNKNOWN - status of 1 policy not refreshed for ")
            && line.contains("(allowed 15s; is the controller running?): fresh; last known: 0 violators in 1 policy | ")
            && line.contains(" stale=1;;;0 "),
        "{line}"
    );

    server.abort();
    delete_hosts(&hosts, &[&src, &bak]).await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_backup_now_requests_are_all_honoured() {
    let env = Env::get();
    let ns = env.namespace("monitor-backupnow");
    let client = env.client().await;
    let (stub, endpoint, server) = start_stub_store().await;
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let (src, bak) = (format!("{ns}-src"), format!("{ns}-bak"));
    let now = jiff::Timestamp::now();
    // Both datasets have a fresh full: nothing is due but what is asked for.
    for ds in ["tank/a", "tank/b"] {
        stub.backups
            .lock()
            .expect("lock")
            .push(stored_full(&src, ds, now.as_second() - 60));
    }
    hosts_with_status(
        &hosts,
        &[
            (
                src.as_str(),
                serde_json::json!({"lastSeen": now, "datasets": [{"name": "tank/a"}, {"name": "tank/b"}]}),
            ),
            (
                bak.as_str(),
                serde_json::json!({"lastSeen": now, "agentEndpoint": endpoint}),
            ),
        ],
    )
    .await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy("asked", &[&src], &bak, 4))
        .await
        .expect("create policy");

    // Two requests before the controller looks (it is not running yet): a full of tank/a,
    // then one of tank/b, as two operators (or two scripts) would ask.
    for ds in ["tank/a", "tank/b"] {
        let (code, out) = zb(
            &client,
            &ns,
            &["backup", "asked", "--host", &src, "--dataset", ds, "--full"],
        )
        .await;
        assert_eq!(code, 0, "{out}");
    }
    let p = policies.get("asked").await.expect("policy");
    println!(
        "backup-now annotation: {:?}",
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("zetaback.io/backup-now"))
    );

    let ctl = start_controller(client.clone(), &ns, |o| {
        o.host_stale_after = Duration::from_secs(3600);
    });
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    let mut forced = eventually(
        "a forced full of each dataset",
        Duration::from_secs(60),
        || async {
            let list = jobs.list(&ListParams::default()).await.ok()?.items;
            let forced: Vec<(String, String)> = list
                .iter()
                .filter(|j| {
                    j.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(BACKUP_NOW_REQUEST_ANNOTATION))
                })
                .map(|j| {
                    (
                        j.spec.dataset.0.clone(),
                        format!("{:?}", j.spec.backup_type),
                    )
                })
                .collect();
            (forced.len() >= 2).then_some(forced)
        },
    )
    .await;
    forced.sort();
    assert_eq!(
        forced,
        vec![
            ("tank/a".to_owned(), "Full".to_owned()),
            ("tank/b".to_owned(), "Full".to_owned())
        ]
    );
    // Both handled: nothing more is forced.
    eventually(
        "the requests are recorded as handled",
        Duration::from_secs(30),
        || async { policies.get("asked").await.ok()?.status?.backup_now_handled },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        jobs.list(&ListParams::default())
            .await
            .expect("jobs")
            .items
            .len(),
        2,
        "one job per dataset"
    );

    ctl.stop_cleanly().await;
    server.abort();
    delete_hosts(&hosts, &[&src, &bak]).await;
    delete_namespace(&client, &ns).await;
}

/// The controller's BackupPolicy reconciles so far (every result).
async fn reconciles(port: u16) -> f64 {
    let m = http_get(port, "/metrics").await.unwrap_or_default();
    m.lines()
        .filter(|l| {
            l.starts_with("zetaback_controller_reconciles_total{") && l.contains("BackupPolicy")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Removes the stream and manifest of backup `id` from a file store (`<root>/<host>/<dataset
/// escaped>/<id>` and `<id>.json`), as an operator or a failing disk would; the files removed.
fn delete_stored(root: &std::path::Path, host: &str, id: &str) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    let host_dir = root.join(host);
    for dir in std::fs::read_dir(&host_dir)
        .expect("host directory")
        .flatten()
    {
        for name in [id.to_owned(), format!("{id}.json")] {
            let path = dir.path().join(name);
            if path.exists() {
                std::fs::remove_file(&path).expect("remove");
                removed.push(path);
            }
        }
    }
    removed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_deleted_behind_the_controllers_back_becomes_a_violation() {
    let env = Env::get();
    let ns = env.namespace("monitor-lost");
    let mut fleet =
        Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "data.bin", &noise(3, 100_000));
    fleet.start_controller(|_| {}).await;
    let spec = fleet.policy_spec("src", "bak", "*/data");
    fleet.create_policy("lost", "src", &[&dataset], spec).await;
    let stored = fleet.wait_for_backups("bak", "src", &dataset, 1).await;
    let id = stored[0].manifest.id.clone();
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    // The controller has seen the backup in its copy of the catalogue (status.lastBackup).
    eventually(
        "compliant, with the first full as last backup",
        Duration::from_secs(90),
        || async {
            let st = policies.get("lost").await.ok()?.status?;
            let ok = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Compliant" && c.status == "True");
            (ok && st.last_backup.is_some()).then_some(())
        },
    )
    .await;

    // Suspended, the policy schedules nothing (so no new full hides the loss) but still
    // reports; then the backup disappears from the store.
    policies
        .patch(
            "lost",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend");
    let removed = delete_stored(&fleet.store_root("bak"), &fleet.name("src"), &id);
    println!("removed {removed:?}");
    assert_eq!(removed.len(), 2, "the stream and its manifest");

    let seen = eventually(
        "the loss shows in the status",
        Duration::from_secs(240),
        || async {
            let v = violations(&policies, "lost").await?;
            v.iter()
                .any(|(r, _, d)| r == "BackupMissing" && *d == dataset)
                .then_some(v)
        },
    )
    .await;
    println!("violations: {seen:?}");
    let (status, _, message) = compliant(&policies, "lost").await.expect("Compliant");
    assert_eq!(status, "False", "{message}");
    // The metrics say the same: one violator, and no last backup for the dataset.
    let port = fleet.controller_port().expect("the controller runs");
    let metrics = eventually("the metrics follow", Duration::from_secs(30), || async {
        let m = http_get(port, "/metrics").await.ok()?;
        let series = format!("zetaback_controller_violators{{namespace=\"{ns}\",policy=\"lost\"}}");
        (metric(&m, &series) == Some(1.0)).then_some(m)
    })
    .await;
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("zetaback_controller_seconds_since_last_backup")
                && l.contains(&dataset)
        ),
        "the lost backup is not a last backup"
    );
    let (code, out) = fleet.zb(&["violators"]).await;
    println!("kubectl zetaback violators (exit {code}):\n{out}");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("BackupMissing")),
        "{out}"
    );

    // The BackupJobs go (garbage-collected, or deleted by someone): the loss stays a
    // violation, from what the controller saw in the store, not from the job that stored it.
    let jobs: Api<BackupJob> = Api::namespaced(fleet.client.clone(), &ns);
    let before = reconciles(port).await;
    jobs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the BackupJobs");
    eventually("no BackupJob left", Duration::from_secs(30), || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let after = eventually(
        "two reconciles since the jobs went",
        Duration::from_secs(60),
        || async {
            let n = reconciles(port).await;
            (n >= before + 2.0).then_some(n)
        },
    )
    .await;
    let v = violations(&policies, "lost").await.expect("violations");
    println!("after the jobs went ({before} -> {after} reconciles): {v:?}");
    assert!(
        v.iter()
            .any(|(r, _, d)| r == "BackupMissing" && *d == dataset),
        "the loss was forgotten with its BackupJob: {v:?}"
    );

    let client = fleet.client.clone();
    fleet.shutdown().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backup_requests_all_join_the_queue() {
    let env = Env::get();
    let ns = env.namespace("monitor-concurrent");
    let client = env.client().await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    let host = format!("{ns}-src");
    policies
        .create(&PostParams::default(), &policy("asked", &[&host], "bak", 4))
        .await
        .expect("create policy");
    // Pairs of requests at once (no controller: every request stays pending). Both read the
    // same version of the policy; the write of the slower one is refused (409) and retried
    // on the new version, so neither is lost.
    let mut asked = Vec::new();
    for round in 0..4 {
        let (a, b) = (format!("tank/a{round}"), format!("tank/b{round}"));
        let one = [
            "backup",
            "asked",
            "--host",
            &host,
            "--dataset",
            &a,
            "--full",
        ];
        let two = [
            "backup",
            "asked",
            "--host",
            &host,
            "--dataset",
            &b,
            "--full",
        ];
        let ((c1, o1), (c2, o2)) = tokio::join!(zb(&client, &ns, &one), zb(&client, &ns, &two));
        assert_eq!((c1, c2), (0, 0), "{o1}\n{o2}");
        asked.extend([a, b]);
    }
    let p = policies.get("asked").await.expect("policy");
    let text = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("zetaback.io/backup-now"))
        .expect("the queue")
        .clone();
    let mut queued: Vec<String> = zetaback::api::backup_policy::parse_backup_now(&text)
        .expect("a queue")
        .into_iter()
        .filter_map(|r| r.dataset)
        .collect();
    queued.sort();
    asked.sort();
    assert_eq!(queued, asked, "every request is queued once");
    delete_namespace(&client, &ns).await;
}
