//! Backup policies end to end, on real parts: the local kube-apiserver, real ZFS (zfs-fuse
//! file-backed pools), three `zetaback-agent` processes (two source hosts with three datasets
//! each, one backup host storing files), and the controller. A policy with intervals of
//! seconds runs fulls, incrementals and retention over several cycles; stopping one host's
//! agent turns its datasets into violators, and restarting it clears them.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use zetaback::api::{BackupJob, BackupPolicy, BackupPolicySpec};
use zetaback_e2e::fleet::{Fleet, HostSpec, noise};
use zetaback_e2e::{Env, eventually, text};

async fn violators(api: &Api<BackupPolicy>, name: &str) -> Option<(i32, Vec<String>)> {
    let st = api.get(name).await.ok()?.status?;
    let reasons = st
        .violations
        .iter()
        .map(|v| format!("{}:{}:{:?}", v.host, v.dataset, v.reason))
        .collect();
    Some((st.violators, reasons))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_runs_cycles_and_reports_violators() {
    let env = Env::get();
    let ns = env.namespace("flow");
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src1"),
            HostSpec::source("src2"),
            HostSpec::store("bak"),
        ],
    )
    .await;
    let client = fleet.client.clone();
    let names = [fleet.name("src1"), fleet.name("src2"), fleet.name("bak")];
    let (p1, p2) = (
        fleet.host("src1").pool.clone(),
        fleet.host("src2").pool.clone(),
    );
    let store_root = fleet.store_root("bak");

    // Real files: three datasets on each source.
    for src in ["src1", "src2"] {
        for ds in ["a", "b", "c"] {
            let dataset = fleet.create_dataset(src, &format!("db/{ds}"));
            fleet.write_file(&dataset, "data.bin", &noise(7, 200_000));
        }
    }

    // The controller, with a short reachability window so a stopped agent shows quickly.
    fleet
        .start_controller(|o| o.host_stale_after = Duration::from_secs(8))
        .await;

    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [names[0], names[1]]},
        "datasets": {"include": ["*/db/*"]},
        "full": {"every": "60s", "keep": "2m"},
        "incremental": {"every": "15s", "keep": "40s"},
        "target": {"host": names[2], "path": store_root.display().to_string()},
        "grace": "30s",
        "concurrency": {"perHost": 3, "perTarget": 6},
        // Keep every finished job: the retention check below compares jobs made with backups stored.
        "jobHistory": {"successful": 100, "failed": 100}
    }))
    .expect("spec");
    // The policy selects from the ZfsHost status (it is not triggered by its changes).
    for (src, pool) in [("src1", &p1), ("src2", &p2)] {
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|d| format!("{pool}/db/{d}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        fleet.wait_for_datasets(src, &names).await;
    }
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("fleet", spec))
        .await
        .expect("create policy");

    let store = fleet.store_client();
    let bak_endpoint = fleet.host("bak").endpoint();
    let count = |kind: &'static str| {
        let store = store.clone();
        let ep = bak_endpoint.clone();
        let names = names.clone();
        async move {
            let mut n = 0;
            for h in &names[..2] {
                let c = store.catalogue(&ep, h).await.ok()?;
                n += c
                    .backups
                    .iter()
                    .filter(|b| format!("{:?}", b.manifest.backup_type).eq_ignore_ascii_case(kind))
                    .count();
            }
            Some(n)
        }
    };

    // Every dataset gets a full, and the policy reports compliance.
    eventually(
        "a full of all six datasets",
        Duration::from_secs(120),
        || async { (count("full").await? >= 6).then_some(()) },
    )
    .await;
    eventually(
        "compliant with 6 datasets",
        Duration::from_secs(60),
        || async {
            let st = policies.get("fleet").await.ok()?.status?;
            (st.datasets == 6 && st.violators == 0).then_some(())
        },
    )
    .await;
    let table = env.kubectl(&["get", "backuppolicies", "-n", &ns]);
    println!(
        "kubectl get backuppolicies (after the fulls):\n{}",
        text(&table.stdout)
    );

    // Incrementals follow, against the full.
    eventually(
        "incrementals of every dataset",
        Duration::from_secs(90),
        || async { (count("incremental").await? >= 6).then_some(()) },
    )
    .await;

    // Stop one host's agent: its three datasets become violators (HostUnreachable).
    fleet.kill("src2");
    let seen = std::sync::Mutex::new(None::<(i32, Vec<String>)>);
    let (n, reasons) = eventually(
        "src2's datasets become violators",
        Duration::from_secs(60),
        || async {
            let v = violators(&policies, "fleet").await;
            // What the status says while waiting, when it changes (for a failure's log).
            if let Some(v) = &v
                && let Ok(mut last) = seen.lock()
                && last.as_ref() != Some(v)
            {
                eprintln!("policy status: {} violators {:?}", v.0, v.1);
                *last = Some(v.clone());
            }
            v.filter(|(n, _)| *n == 3)
        },
    )
    .await;
    println!("violators after stopping {}: {n} {reasons:?}", names[1]);
    assert!(
        reasons
            .iter()
            .all(|r| r.contains(&names[1]) && r.contains("HostUnreachable")),
        "{reasons:?}"
    );
    let table = env.kubectl(&["get", "backuppolicies", "-n", &ns]);
    println!(
        "kubectl get backuppolicies (one agent stopped):\n{}",
        text(&table.stdout)
    );
    let (code, out) = fleet.zb(&["violators"]).await;
    println!("kubectl zetaback violators (exit {code}):\n{out}");
    assert_eq!(code, 1, "a stopped agent is a WARNING: {out}");
    assert!(out.starts_with("ZETABACK WARNING - 3 violators"), "{out}");

    // Restart it: the violations clear.
    fleet.restart("src2");
    eventually("violators clear", Duration::from_secs(60), || async {
        violators(&policies, "fleet").await.filter(|(n, _)| *n == 0)
    })
    .await;

    let (code, out) = fleet.zb(&["violators"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ZETABACK OK"), "{out}");
    let token_arg = fleet.admin_token_arg();
    let (code, out) = fleet.zb(&["list", &token_arg]).await;
    println!("kubectl zetaback list:\n{out}");
    assert_eq!(code, 0);
    assert!(
        out.contains(".full") && out.contains(".incremental."),
        "{out}"
    );

    // backup-now: a forced full of one dataset appears as a job and lands in the store.
    let dataset_a = format!("{p1}/db/a");
    let (code, out) = fleet
        .zb(&[
            "backup",
            "fleet",
            "--host",
            &names[0],
            "--dataset",
            &dataset_a,
            "--full",
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let requested = policies
        .get("fleet")
        .await
        .expect("policy")
        .metadata
        .annotations
        .unwrap_or_default()[zetaback::api::backup_policy::BACKUP_NOW_ANNOTATION]
        .clone();
    // The annotation is the queue of requests; this one is the newest.
    let requested = zetaback::api::backup_policy::parse_backup_now(&requested)
        .expect("request")
        .pop()
        .expect("one request");
    eventually(
        "the controller acts on the request",
        Duration::from_secs(30),
        || async {
            let handled = policies
                .get("fleet")
                .await
                .ok()?
                .status?
                .backup_now_handled?;
            (handled.0 == requested.requested_at).then_some(())
        },
    )
    .await;
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    eventually(
        "a forced full of that dataset succeeds",
        Duration::from_secs(60),
        || async {
            let list = jobs.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|j| {
                    j.spec.dataset.as_str() == dataset_a
                        && j.spec.backup_type == zetaback::api::BackupType::Full
                        && j.creation_timestamp()
                            .is_some_and(|t| t.0 >= requested.requested_at)
                        && j.status
                            .as_ref()
                            .is_some_and(|s| s.phase == zetaback::api::JobPhase::Succeeded)
                })
                .then_some(())
        },
    )
    .await;

    // Retention ran: more backups were made than are stored, and everything stored is
    // restorable (its chain is complete).
    eventually(
        "retention deleted expired incrementals",
        Duration::from_secs(90),
        || async {
            let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
            let made = jobs
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|j| {
                    j.status
                        .as_ref()
                        .is_some_and(|s| s.phase == zetaback::api::JobPhase::Succeeded)
                })
                .count();
            let stored = count("full").await? + count("incremental").await?;
            (made > stored).then_some(())
        },
    )
    .await;
    for h in &names[..2] {
        let c = store.catalogue(&bak_endpoint, h).await.expect("catalogue");
        for ds in ["a", "b", "c"] {
            let pool_name = if h == &names[0] { &p1 } else { &p2 };
            let dataset = format!("{pool_name}/db/{ds}");
            let cat = zetaback::policy::DatasetBackups::from_store(c.of(h, &dataset))
                .expect("consistent");
            for r in cat.records() {
                assert!(
                    cat.is_restorable(&r.id),
                    "{h}:{dataset} {} is stored without its base",
                    r.id
                );
            }
        }
    }

    fleet.shutdown().await;
}
