//! Backup policies end to end, on real parts: the local kube-apiserver, real ZFS (zfs-fuse
//! file-backed pools), three `zetaback-agent` processes (two source hosts with three datasets
//! each, one backup host storing files), and the controller. A policy with intervals of
//! seconds runs fulls, incrementals and retention over several cycles; stopping one host's
//! agent turns its datasets into violators, and restarting it clears them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use zetaback::api::{BackupJob, BackupPolicy, BackupPolicySpec, ZfsHost, ZfsHostSpec};
use zetaback::controller::store_client::StoreClient;
use zetaback_e2e::{Env, eventually, free_port, text};

/// A process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_binary() -> PathBuf {
    // target/debug/deps/<test> → target/debug/zetaback-agent
    let exe = std::env::current_exe().expect("test path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("zetaback-agent"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as e2e/test.sh does)",
        bin.display()
    );
    bin
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
}

fn pool(env: &Env, name: &str) -> PathBuf {
    let script = env.root.join("e2e/scripts/zfs.sh");
    let _ = Command::new(&script).args(["destroy", name]).output();
    let out = Command::new(&script)
        .args(["pool", name, "256M"])
        .output()
        .expect("zfs.sh");
    assert!(
        out.status.success(),
        "zfs.sh pool {name}: {}",
        text(&out.stderr)
    );
    PathBuf::from(text(&out.stdout).trim())
}

struct Agent {
    host: String,
    port: u16,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl Agent {
    fn start(&mut self, env: &Env, dir: &Path) {
        let log = std::fs::File::create(dir.join(format!("{}.log", self.host))).expect("log");
        let child = Command::new(agent_binary())
            .args(&self.args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info,zetaback_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.proc = Some(Proc(child));
    }
    fn stop(&mut self) {
        self.proc = None;
    }
}

/// Runs `kubectl zetaback ARGS` in-process against the namespace; (exit code, stdout).
async fn zb(client: &kube::Client, ns: &str, args: &[&str]) -> (u8, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input: &[u8] = b"";
    let mut io = zetaback::cli::Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive: false,
    };
    let argv: Vec<String> = std::iter::once("kubectl-zetaback")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let code = zetaback::cli::run(
        argv,
        zetaback::cli::Connect::Client {
            client: client.clone(),
            namespace: ns.to_owned(),
        },
        &mut io,
    )
    .await;
    eprint!("{}", text(&err));
    (code, text(&out))
}

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
    let client = env.client().await;
    let dir = PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    let admin_token = dir.join("admin-token");
    std::fs::write(&token, "stream-token-for-e2e").expect("token");
    std::fs::write(&admin_token, "admin-token-for-e2e").expect("admin token");
    let store_root = dir.join("store");
    std::fs::create_dir_all(&store_root).expect("store");

    // Real pools: two sources with three datasets each holding real files, one backup host.
    let tag = std::process::id() % 10_000;
    let (p1, p2, pb) = (
        format!("zbflow{tag}a"),
        format!("zbflow{tag}b"),
        format!("zbflow{tag}k"),
    );
    for p in [&p1, &p2] {
        let mount = pool(env, p);
        sh("zfs", &["create", &format!("{p}/db")]);
        for ds in ["a", "b", "c"] {
            sh("zfs", &["create", &format!("{p}/db/{ds}")]);
            let data: Vec<u8> = (0..200_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(mount.join("db").join(ds).join("data.bin"), data).expect("write data");
        }
    }
    pool(env, &pb);

    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let names = [
        format!("flow-{tag}-src1"),
        format!("flow-{tag}-src2"),
        format!("flow-{tag}-bak"),
    ];
    let pools = [&p1, &p2, &pb];
    let mut agents = Vec::new();
    for (name, pool_name) in names.iter().zip(pools) {
        let mut host = ZfsHost::new(
            name,
            ZfsHostSpec {
                node_name: name.clone(),
                datasets: serde_json::from_value(
                    serde_json::json!({"include": [format!("{pool_name}/**")]}),
                )
                .expect("selector"),
                paused: false,
            },
        );
        host.metadata.labels = Some([("e2e".to_string(), ns.clone())].into_iter().collect());
        let _ = hosts.delete(name, &Default::default()).await;
        eventually("old host gone", Duration::from_secs(20), || async {
            hosts
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        })
        .await;
        hosts
            .create(&PostParams::default(), &host)
            .await
            .expect("create host");
        let port = free_port();
        let mut args = vec![
            format!("--host-name={name}"),
            format!("--node-name={name}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--token-file={}", token.display()),
            "--status-interval=1".into(),
            "--last-seen-every=2".into(),
        ];
        if name.ends_with("-bak") {
            args.push(format!("--store-root={}", store_root.display()));
            args.push(format!("--admin-token-file={}", admin_token.display()));
        }
        let mut agent = Agent {
            host: name.clone(),
            port,
            args,
            proc: None,
        };
        agent.start(env, &dir);
        agents.push(agent);
    }

    // The controller, with a short reachability window so a stopped agent shows quickly.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut options =
        zetaback::controller::Options::new(&ns, "flow", ([127, 0, 0, 1], free_port()).into());
    options.watch_namespace = Some(ns.clone());
    options.store_token = Some("admin-token-for-e2e".into());
    options.host_stale_after = Duration::from_secs(8);
    let controller = tokio::spawn(zetaback::controller::run(client.clone(), options, async {
        let _ = stopped.await;
    }));

    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [names[0], names[1]]},
        "datasets": {"include": ["*/db/*"]},
        "full": {"every": "60s", "keep": "2m"},
        "incremental": {"every": "15s", "keep": "40s"},
        "target": {"host": names[2], "path": store_root.display().to_string()},
        "grace": "10s",
        "concurrency": {"perHost": 3, "perTarget": 6}
    }))
    .expect("spec");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("fleet", spec))
        .await
        .expect("create policy");

    let store = StoreClient::new(Some("admin-token-for-e2e".into()));
    let bak_endpoint = format!("127.0.0.1:{}", agents[2].port);
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
    agents[1].stop();
    let (n, reasons) = eventually(
        "src2's datasets become violators",
        Duration::from_secs(60),
        || async { violators(&policies, "fleet").await.filter(|(n, _)| *n == 3) },
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
    let (code, out) = zb(&client, &ns, &["violators"]).await;
    println!("kubectl zetaback violators (exit {code}):\n{out}");
    assert_eq!(code, 1, "a stopped agent is a WARNING: {out}");
    assert!(out.starts_with("ZETABACK WARNING - 3 violators"), "{out}");

    // Restart it: the violations clear.
    agents[1].start(env, &dir);
    eventually("violators clear", Duration::from_secs(60), || async {
        violators(&policies, "fleet").await.filter(|(n, _)| *n == 0)
    })
    .await;

    let (code, out) = zb(&client, &ns, &["violators"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ZETABACK OK"), "{out}");
    let token_arg = format!("--token-file={}", admin_token.display());
    let (code, out) = zb(&client, &ns, &["list", &token_arg]).await;
    println!("kubectl zetaback list:\n{out}");
    assert_eq!(code, 0);
    assert!(
        out.contains(".full") && out.contains(".incremental."),
        "{out}"
    );

    // backup-now: a forced full of one dataset appears as a job and lands in the store.
    let dataset_a = format!("{p1}/db/a");
    let (code, out) = zb(
        &client,
        &ns,
        &[
            "backup",
            "fleet",
            "--host",
            &names[0],
            "--dataset",
            &dataset_a,
            "--full",
        ],
    )
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
    let requested: zetaback::api::backup_policy::BackupNowRequest =
        serde_json::from_str(&requested).expect("request");
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
            let cat =
                zetaback::policy::Catalogue::from_store(c.of(h, &dataset)).expect("consistent");
            for r in cat.records() {
                assert!(
                    cat.is_restorable(&r.id),
                    "{h}:{dataset} {} is stored without its base",
                    r.id
                );
            }
        }
    }

    let _ = stop.send(());
    let _ = controller.await;
    drop(agents);
    for p in [&p1, &p2, &pb] {
        let _ = Command::new(env.root.join("e2e/scripts/zfs.sh"))
            .args(["destroy", p])
            .output();
    }
}
