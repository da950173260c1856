//! The job runner and host discovery against a real kube-apiserver (e2e/scripts/env.sh up,
//! CRDs installed) and real zfs-fuse pools: three agent processes (a target, and two source
//! agents serving the same host that race for every job); and a runner that starts after its
//! job was created, next to another host's job it must never touch. Likewise the Restore
//! runner: it reads only the Restores whose destination is its host.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use zetaback_agent::restore::{RestoreRunner, RestoreRunnerConfig};
use zetaback_agent::zfs::{Capabilities, Zfs};
use zetaback_core::api::backup_policy::{Compression, Target};
use zetaback_core::api::restore::{RestoreDestination, RestorePhase, RestoreSource};
use zetaback_core::api::{
    BackupJob, BackupJobSpec, BackupJobStatus, BackupType, DatasetPattern, DatasetSelector,
    JobPhase, Restore, RestoreSpec, RestoreStatus, ZfsHost, ZfsHostSpec,
};

fn kubeconfig() -> String {
    let out = Command::new(repo_root().join("e2e/scripts/env.sh"))
        .arg("up")
        .output()
        .expect("run e2e/scripts/env.sh up");
    assert!(
        out.status.success(),
        "e2e/scripts/env.sh up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("kubeconfig path")
        .trim()
        .to_owned()
}

async fn client(path: &str) -> Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(kubeconfig: &str, tokens: &Tokens, host: &str, node: &str, extra: &[&str]) -> Proc {
    let port = free_port();
    let child = Command::new(agent_bin())
        .env("ZETABACK_INSECURE_PLAINTEXT", "true")
        .args([
            "--host-name",
            host,
            "--node-name",
            node,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            &tokens.source.display().to_string(),
            "--kubeconfig",
            kubeconfig,
            "--status-interval",
            "1",
            "--last-seen-every",
            "5",
            "--idle-timeout",
            "5",
            "--concurrency",
            "2",
        ])
        .args(&tokens.kube_args)
        .args(extra)
        .env("RUST_LOG", "info,kube=warn")
        .spawn()
        .expect("spawn agent");
    Proc(child)
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn job(
    name: &str,
    host: &str,
    ds: &str,
    snap: &str,
    base: Option<&str>,
    target: Target,
) -> BackupJob {
    BackupJob::new(
        name,
        BackupJobSpec {
            policy: "test".into(),
            host: host.into(),
            dataset: ds.into(),
            backup_type: if base.is_some() {
                BackupType::Incremental
            } else {
                BackupType::Full
            },
            base_snapshot: base.map(str::to_owned),
            snapshot: snap.into(),
            target,
            compression: Compression::Zstd,
            intermediates: false,
        },
    )
}

async fn finished(jobs: &Api<BackupJob>, name: &str) -> BackupJobStatus {
    wait_for(&format!("job {name} to finish"), async || {
        let j = jobs.get(name).await.ok()?;
        let s = j.status?;
        matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_claims_runs_and_recovers_jobs() {
    let kc = kubeconfig();
    let client = client(&kc).await;
    let pid = std::process::id();
    let (src_host, dst_host, ns) = (
        format!("src-{pid}"),
        format!("backup-{pid}"),
        format!("zbt-{pid}"),
    );
    let pool = Pool::new("rk");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 11, 6, 100_000);
    let store = tempfile::tempdir().expect("store");
    let mut tokens = Tokens::new();
    // The hosts' node (a Node object of this test's own): its agents' tokens name it.
    let hosts_node = format!("rk-node-{pid}");

    let (namespaces, hosts) =
        namespace_and_hosts(&client, &ns, &src_host, &dst_host, &pool.name, &hosts_node).await;
    kube_identity::kube_identities(&client, &ns, &hosts_node, &mut tokens).await;
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);

    let store_root = store.path().display().to_string();
    let _target = agent(
        &kc,
        &tokens,
        &dst_host,
        "node-b",
        &["--store-root", &store_root],
    );
    let mut a = agent(&kc, &tokens, &src_host, "node-a", &[]);
    let _b = agent(&kc, &tokens, &src_host, "node-a2", &[]);

    // Discovery: the target publishes its endpoint, the source its datasets.
    wait_for("target endpoint", async || {
        hosts.get(&dst_host).await.ok()?.status?.agent_endpoint
    })
    .await;
    let status = wait_for("source datasets", async || {
        let s = hosts.get(&src_host).await.ok()?.status?;
        s.datasets.iter().any(|d| d.name == ds).then_some(s)
    })
    .await;
    assert!(
        status.zfs_capabilities.contains(&"holds".to_owned()),
        "{status:?}"
    );
    assert!(status.agent_version.is_some() && status.last_seen.is_some());
    assert!(status.pools.iter().any(|p| p.name == pool.name));

    let target = Target {
        host: Some(dst_host.as_str().into()),
        path: Some(store_root.clone()),
        dataset: None,
        object_store: None,
    };
    // A full, then an incremental; two agents race for each, one runs it.
    jobs.create(
        &PostParams::default(),
        &job("full", &src_host, &ds, "zetaback-1", None, target.clone()),
    )
    .await
    .expect("create job");
    let full = finished(&jobs, "full").await;
    assert_eq!(full.phase, JobPhase::Succeeded, "{full:?}");
    assert_eq!(full.attempts, 1, "claimed once: {full:?}");
    // zfs-fuse has no `zfs send -nP`: no estimate and no ETA, the bytes sent all the same.
    assert_eq!(
        (full.estimated_bytes, full.eta_seconds),
        (None, None),
        "{full:?}"
    );
    assert!(full.bytes_sent.is_some_and(|b| b > 0), "{full:?}");
    assert!(
        full.claimed_by
            .as_deref()
            .is_some_and(|c| c.starts_with(&src_host))
    );
    next_second();
    jobs.create(
        &PostParams::default(),
        &job(
            "incr",
            &src_host,
            &ds,
            "zetaback-2",
            Some("zetaback-1"),
            target.clone(),
        ),
    )
    .await
    .expect("create job");
    let incr = finished(&jobs, "incr").await;
    assert_eq!(incr.phase, JobPhase::Succeeded, "{incr:?}");
    assert_eq!(incr.attempts, 1);

    // The store agrees with the jobs' statuses.
    let cat = zetaback_core::store::scan(store.path()).expect("scan");
    assert_eq!(cat.backups.len(), 2, "{cat:?}");
    for (st, b) in [(&full, &cat.backups[0]), (&incr, &cat.backups[1])] {
        assert_eq!(st.backup_id.as_deref(), Some(b.manifest.id.as_str()));
        assert_eq!(st.sha256, b.manifest.sha256);
        assert_eq!(st.bytes, Some(b.manifest.bytes));
    }
    // The host status names our newest snapshot (the next base).
    wait_for("latest snapshot in status", async || {
        let s = hosts.get(&src_host).await.ok()?.status?;
        s.datasets
            .iter()
            .any(|d| d.name == ds && d.latest_snapshot.as_deref() == Some("zetaback-2"))
            .then_some(())
    })
    .await;

    // A job whose target has no agent fails with a message.
    let nowhere = Target {
        host: Some("nowhere".into()),
        path: Some("/x".into()),
        dataset: None,
        object_store: None,
    };
    jobs.create(
        &PostParams::default(),
        &job("bad", &src_host, &ds, "zetaback-3", None, nowhere),
    )
    .await
    .expect("create job");
    let bad = finished(&jobs, "bad").await;
    assert_eq!(bad.phase, JobPhase::Failed);
    assert!(
        bad.message
            .as_deref()
            .is_some_and(|m| m.contains("nowhere")),
        "{bad:?}"
    );

    // Restart safety: a job left Running by node-a (killed mid-job) is failed cleanly when
    // node-a's agent starts again.
    drop(_b);
    let _ = a.0.kill();
    let _ = a.0.wait();
    let mut orphan = jobs
        .create(
            &PostParams::default(),
            &job("orphan", &src_host, &ds, "zetaback-4", None, target.clone()),
        )
        .await
        .expect("create job");
    orphan.status = Some(BackupJobStatus {
        phase: JobPhase::Running,
        claimed_by: Some(format!("{src_host}@node-a")),
        attempts: 1,
        ..Default::default()
    });
    jobs.replace_status("orphan", &PostParams::default(), &orphan)
        .await
        .expect("mark running");
    a = agent(&kc, &tokens, &src_host, "node-a", &[]);
    let o = finished(&jobs, "orphan").await;
    assert_eq!(o.phase, JobPhase::Failed);
    assert!(
        o.message
            .as_deref()
            .is_some_and(|m| m.contains("interrupted")),
        "{o:?}"
    );
    drop(a);

    kube_identity::delete_node(&client, &ns, &hosts_node).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    for h in [&src_host, &dst_host] {
        let _ = hosts.delete(h, &DeleteParams::default()).await;
    }
}

/// Regression test of a69ba9d: a BackupJob for the agent's host created before the agent (and
/// so its runner) started is claimed and run, not left until some later event. And a job for
/// another host, created before it, is never touched: the runner watches its own host's jobs
/// only (`spec.host` is a selectable field of the CRD; the watch carries the field selector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_runs_jobs_created_before_it_started_and_only_its_hosts() {
    let kc = kubeconfig();
    let client = client(&kc).await;
    let pid = std::process::id();
    let (src_host, dst_host, other_host, ns) = (
        format!("early-{pid}"),
        format!("early-backup-{pid}"),
        format!("early-other-{pid}"),
        format!("zbe-{pid}"),
    );
    let pool = Pool::prefixed("hc", "early", "256M");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 12, 4, 50_000);
    let store = tempfile::tempdir().expect("store");
    let mut tokens = Tokens::new();
    let hosts_node = format!("early-node-{pid}");

    let (namespaces, hosts) =
        namespace_and_hosts(&client, &ns, &src_host, &dst_host, &pool.name, &hosts_node).await;
    kube_identity::kube_identities(&client, &ns, &hosts_node, &mut tokens).await;
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);

    // The apiserver serves BackupJobs with spec.host selectable (the CRDs from crds/).
    let all_jobs: Api<BackupJob> = Api::all(client.clone());
    all_jobs
        .list_metadata(&ListParams::default().fields(&format!("spec.host={src_host}")))
        .await
        .expect("spec.host is a selectable field of BackupJob");

    let store_root = store.path().display().to_string();
    let _target = agent(
        &kc,
        &tokens,
        &dst_host,
        "node-f",
        &["--store-root", &store_root],
    );
    wait_for("target endpoint", async || {
        hosts.get(&dst_host).await.ok()?.status?.agent_endpoint
    })
    .await;
    let target = Target {
        host: Some(dst_host.as_str().into()),
        path: Some(store_root.clone()),
        dataset: None,
        object_store: None,
    };

    // Both jobs exist before the source agent starts; the other host's first.
    let other = jobs
        .create(
            &PostParams::default(),
            &job(
                "other",
                &other_host,
                &ds,
                "zetaback-1",
                None,
                target.clone(),
            ),
        )
        .await
        .expect("create job");
    jobs.create(
        &PostParams::default(),
        &job("early", &src_host, &ds, "zetaback-1", None, target.clone()),
    )
    .await
    .expect("create job");

    let source = agent(&kc, &tokens, &src_host, "node-e", &[]);
    let early = finished(&jobs, "early").await;
    assert_eq!(early.phase, JobPhase::Succeeded, "{early:?}");
    assert_eq!(early.attempts, 1, "{early:?}");
    assert!(
        early
            .claimed_by
            .as_deref()
            .is_some_and(|c| c.starts_with(&src_host)),
        "{early:?}"
    );
    let cat = zetaback_core::store::scan(store.path()).expect("scan");
    assert_eq!(cat.backups.len(), 1, "{cat:?}");
    assert_eq!(
        early.backup_id.as_deref(),
        Some(cat.backups[0].manifest.id.as_str())
    );

    // The agent listed (and ran) the jobs that existed when it started: the other host's job,
    // older than ours, was there too and is exactly as it was created.
    drop(source);
    let after = jobs.get("other").await.expect("other job");
    assert!(after.status.is_none(), "{:?}", after.status);
    assert_eq!(
        after.metadata.resource_version, other.metadata.resource_version,
        "the other host's job was never written"
    );
    let mine = jobs
        .list_metadata(&ListParams::default().fields(&format!("spec.host={src_host}")))
        .await
        .expect("list by host");
    let names: Vec<String> = mine
        .items
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["early".to_owned()],
        "the field selector selects by host"
    );

    kube_identity::delete_node(&client, &ns, &hosts_node).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    for h in [&src_host, &dst_host] {
        let _ = hosts.delete(h, &DeleteParams::default()).await;
    }
}

/// A Restore of `src-host:tank/data` into `dest_host:dataset`, with the status `status`
/// written as the controller (or an agent) would have.
async fn restore_with_status(
    api: &Api<Restore>,
    name: &str,
    dest_host: &str,
    dataset: &str,
    status: RestoreStatus,
) -> Restore {
    let r = Restore::new(
        name,
        RestoreSpec {
            source: RestoreSource {
                host: "src-host".into(),
                dataset: Some("tank/data".into()),
                datasets: vec![],
                at: None,
                backup: None,
                include_archive: false,
            },
            destination: RestoreDestination {
                host: dest_host.into(),
                dataset: dataset.into(),
            },
            force: false,
            verify: true,
            drill: false,
        },
    );
    api.create(&PostParams::default(), &r)
        .await
        .expect("create restore");
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("restore status")
}

/// The Restore runner reads only the Restores whose destination is its host
/// (`spec.destination.host` is a selectable field of the CRD; its start-up list of orphans
/// and its watch carry the field selector). Restores for another destination host, created
/// before the agent started, one resolved and waiting, one Running under this agent's very
/// id, are never written (status and resourceVersion unchanged), while this host's
/// waiting Restore is claimed and run and its orphan failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_runner_reads_only_its_hosts_restores() {
    let kc = kubeconfig();
    let client = client(&kc).await;
    let pid = std::process::id();
    let (host, other_host, node, ns) = (
        format!("rdest-{pid}"),
        format!("rdest-other-{pid}"),
        "node-r",
        format!("zbr-{pid}"),
    );
    let agent_id = format!("{host}@{node}");
    let mut tokens = Tokens::new();

    let namespaces = create_namespace(&client, &ns).await;
    // The agent started below runs with a real identity (it never calls a store here).
    let hosts_node = format!("rdest-node-{pid}");
    kube_identity::kube_identities(&client, &ns, &hosts_node, &mut tokens).await;
    let hosts = create_hosts(&client, node, &[(&host, "nothing".to_owned())]).await;

    // The apiserver serves Restores with spec.destination.host selectable (the CRDs from
    // crds/), and the runner finds that out and reads by it.
    let runner = RestoreRunner::new(
        client.clone(),
        Zfs::new("zfs", "zpool", Capabilities::none()),
        RestoreRunnerConfig {
            host_name: host.clone(),
            agent_id: agent_id.clone(),
            token: zetaback_agent::auth::TokenFile::new(&tokens.source),
            idle_timeout: Duration::from_secs(5),
            progress_every: Duration::from_secs(1),
            zstd_window_log_max: zetaback_agent::limits::DEFAULT_ZSTD_WINDOW_LOG_MAX,
            tls: None,
            object_store_credentials: None,
        },
    );
    assert_eq!(
        runner.host_selector().await.expect("probe"),
        Some(format!("spec.destination.host={host}")),
        "the runner selects its Restores by destination host"
    );

    // A resolved chain whose backup host cannot be reached (nothing listens on port 1): the
    // agent that claims it fails it. Its destination pool does not exist either.
    let waiting = RestoreStatus {
        phase: RestorePhase::Pending,
        chain: vec!["20261126T000000Z.full".into()],
        store_endpoint: Some("127.0.0.1:1".into()),
        message: Some("chain resolved; waiting for the destination agent".into()),
        ..RestoreStatus::default()
    };
    let running = RestoreStatus {
        phase: RestorePhase::Running,
        chain: vec!["20261126T000000Z.full".into()],
        store_endpoint: Some("127.0.0.1:1".into()),
        claimed_by: Some(agent_id.clone()),
        ..RestoreStatus::default()
    };
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns);
    let dataset = format!("hdnone{pid}/restored");
    let others = [
        restore_with_status(
            &restores,
            "other-waiting",
            &other_host,
            &dataset,
            waiting.clone(),
        )
        .await,
        restore_with_status(
            &restores,
            "other-running",
            &other_host,
            &dataset,
            running.clone(),
        )
        .await,
    ];
    restore_with_status(&restores, "mine-waiting", &host, &dataset, waiting).await;
    restore_with_status(&restores, "mine-running", &host, &dataset, running).await;

    let source = agent(&kc, &tokens, &host, node, &[]);
    for name in ["mine-waiting", "mine-running"] {
        let st = wait_for(name, async || {
            let st = restores.get(name).await.ok()?.status?;
            (st.phase == RestorePhase::Failed).then_some(st)
        })
        .await;
        assert_eq!(st.claimed_by.as_deref(), Some(agent_id.as_str()), "{st:?}");
        assert!(st.finished_at.is_some(), "{st:?}");
    }
    assert!(
        restores
            .get("mine-running")
            .await
            .expect("mine-running")
            .status
            .and_then(|s| s.message)
            .is_some_and(|m| m.starts_with("interrupted")),
        "this host's orphan was failed as interrupted"
    );

    // The other host's Restores are exactly as they were written.
    drop(source);
    for before in &others {
        let name = before.metadata.name.as_deref().expect("name");
        let after = restores.get(name).await.expect("other restore");
        assert_eq!(after.status, before.status, "{name}");
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "{name}: the other host's Restore was never written"
        );
    }
    let mine = restores
        .list_metadata(&ListParams::default().fields(&format!("spec.destination.host={host}")))
        .await
        .expect("list by destination host");
    let mut names: Vec<String> = mine
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["mine-running".to_owned(), "mine-waiting".to_owned()],
        "the field selector selects by destination host"
    );

    kube_identity::delete_node(&client, &ns, &hosts_node).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = hosts.delete(&host, &DeleteParams::default()).await;
}

/// Creates namespace `ns` and two ZfsHosts on node `node`: `src_host` covering every dataset
/// of `pool`, and `dst_host` (the backup host) covering none.
async fn namespace_and_hosts(
    client: &kube::Client,
    ns: &str,
    src_host: &str,
    dst_host: &str,
    pool: &str,
    node: &str,
) -> (Api<Namespace>, Api<ZfsHost>) {
    let namespaces = create_namespace(client, ns).await;
    let hosts = create_hosts(
        client,
        node,
        &[
            (src_host, format!("{pool}/**")),
            (dst_host, "nothing".to_owned()),
        ],
    )
    .await;
    (namespaces, hosts)
}

async fn create_namespace(client: &kube::Client, ns: &str) -> Api<Namespace> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.to_owned());
    namespaces
        .create(&PostParams::default(), &n)
        .await
        .expect("namespace");
    namespaces
}

/// Creates ZfsHosts on node `node`, each with its dataset include pattern.
async fn create_hosts(
    client: &kube::Client,
    node: &str,
    hosts_and_patterns: &[(&str, String)],
) -> Api<ZfsHost> {
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    for (name, include) in hosts_and_patterns {
        let h = ZfsHost::new(
            name,
            ZfsHostSpec {
                node_name: node.into(),
                datasets: DatasetSelector {
                    include: vec![DatasetPattern(include.clone())],
                    exclude: vec![],
                },
                paused: false,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        hosts
            .create(&PostParams::default(), &h)
            .await
            .expect("zfshost");
    }
    hosts
}
