//! Restores end to end, on real parts: the local kube-apiserver, real ZFS (zfs-fuse
//! file-backed pools), three `zetaback-agent` processes (a source host, a backup host storing
//! files, a destination host) and the controller in-process.
//!
//! A chained policy (`incremental.against: previous`) takes a full and two incrementals of a
//! dataset whose files change in between; then: the newest point and a middle point (full +
//! one incremental) are restored to new datasets (under a missing parent) on the destination
//! host, and every restored file's sha256 equals the original's at that snapshot; one flipped
//! byte in a stored stream fails the restore with ChecksumMismatch and the destination does
//! not exist; with the middle incremental deleted, the restore reports ChainBroken before the
//! agent touches anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, PostParams};
use zetaback::api::restore::RestorePhase;
use zetaback::api::{BackupPolicy, BackupPolicySpec, Restore, ZfsHost, ZfsHostSpec};
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

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn dataset_exists(ds: &str) -> bool {
    Command::new("zfs")
        .args(["list", "-H", "-o", "name", ds])
        .output()
        .expect("zfs list")
        .status
        .success()
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

/// `sha256sum` of every file under `dir`, by relative path, sorted.
fn sums(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -type f | LC_ALL=C sort | xargs -r sha256sum")
        .arg("sh")
        .arg(dir)
        .output()
        .expect("sha256sum");
    assert!(
        out.status.success(),
        "sums of {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    let s = text(&out.stdout);
    assert!(!s.trim().is_empty(), "no files under {}", dir.display());
    s
}

/// Where a dataset is mounted (mounting it if needed).
fn mounted(ds: &str) -> PathBuf {
    if sh("zfs", &["get", "-H", "-o", "value", "mounted", ds]).trim() != "yes" {
        sh("zfs", &["mount", ds]);
    }
    PathBuf::from(sh("zfs", &["get", "-H", "-o", "value", "mountpoint", ds]).trim())
}

fn noise(seed: u32, len: usize) -> Vec<u8> {
    // xorshift64: incompressible, so the stored streams are larger than what the agent
    // holds back while verifying (1 MiB) and the hold-back really streams.
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `kubectl zetaback ARGS` in-process; (exit code, stdout).
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

async fn create_restore(api: &Api<Restore>, name: &str, spec: serde_json::Value) {
    let r = Restore::new(name, serde_json::from_value(spec).expect("restore spec"));
    api.create(&PostParams::default(), &r)
        .await
        .expect("create restore");
}

/// Waits for a Restore to end; returns it.
async fn finished(api: &Api<Restore>, name: &str) -> Restore {
    let r = eventually(
        &format!("restore {name} ends"),
        Duration::from_secs(180),
        || async {
            let r = api.get(name).await.ok()?;
            let phase = r.status.as_ref()?.phase;
            matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed).then_some(r)
        },
    )
    .await;
    let st = r.status.clone().unwrap_or_default();
    println!(
        "restore {name}: phase={:?} verified={:?} chain={:?} bytes={:?} bytesDone={:?} reason={:?}\n  message: {}",
        st.phase,
        st.verified,
        st.chain,
        st.bytes,
        st.bytes_done,
        st.conditions.first().map(|c| c.reason.clone()),
        st.message.unwrap_or_default()
    );
    r
}

fn reason(r: &Restore) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_are_verified_and_refused_when_they_cannot_work() {
    let env = Env::get();
    let ns = env.namespace("restore");
    let client = env.client().await;
    let dir = PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    let admin_token = dir.join("admin-token");
    std::fs::write(&token, "stream-token-for-e2e").expect("token");
    std::fs::write(&admin_token, "admin-token-for-e2e").expect("admin token");
    let store_root = dir.join("store");
    std::fs::create_dir_all(&store_root).expect("store");

    let tag = std::process::id() % 10_000;
    let (ps, pb, pd) = (
        format!("zbrs{tag}s"),
        format!("zbrs{tag}k"),
        format!("zbrs{tag}d"),
    );
    let src_mount = pool(env, &ps);
    pool(env, &pb);
    pool(env, &pd);
    let dataset = format!("{ps}/data");
    sh("zfs", &["create", &dataset]);
    let data_dir = src_mount.join("data");

    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let names = [
        format!("rs-{tag}-src"),
        format!("rs-{tag}-bak"),
        format!("rs-{tag}-dst"),
    ];
    let mut agents = Vec::new();
    let mut bak_port = 0;
    for (name, pool_name) in names.iter().zip([&ps, &pb, &pd]) {
        let host = ZfsHost::new(
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
            bak_port = port;
            args.push(format!("--store-root={}", store_root.display()));
            args.push(format!("--admin-token-file={}", admin_token.display()));
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(agent_binary())
            .args(&args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info,zetaback_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        agents.push(Proc(child));
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut options =
        zetaback::controller::Options::new(&ns, "restore", ([127, 0, 0, 1], free_port()).into());
    options.watch_namespace = Some(ns.clone());
    options.store_token = Some("admin-token-for-e2e".into());
    let controller = tokio::spawn(zetaback::controller::run(client.clone(), options, async {
        let _ = stopped.await;
    }));

    // Version 1 of the files, then a chained policy whose first full is due at once; the
    // incrementals come only on request.
    std::fs::write(data_dir.join("a.bin"), noise(1, 3_000_000)).expect("a");
    std::fs::write(data_dir.join("b.txt"), "version 1\n").expect("b");
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [names[0]]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h", "against": "previous"},
        "target": {"host": names[1], "path": store_root.display().to_string()},
        "compression": "zstd",
    }))
    .expect("policy spec");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("chained", spec))
        .await
        .expect("create policy");

    let store = StoreClient::new(Some("admin-token-for-e2e".into()));
    let bak_ep = format!("127.0.0.1:{bak_port}");
    let stored = |n: usize| {
        let (store, ep, host, dataset) = (
            store.clone(),
            bak_ep.clone(),
            names[0].clone(),
            dataset.clone(),
        );
        async move {
            let c = store.catalogue(&ep, &host).await.ok()?;
            let ids: Vec<String> = c
                .of(&host, &dataset)
                .map(|b| b.manifest.id.clone())
                .collect();
            (ids.len() >= n).then_some(ids)
        }
    };
    eventually("the full is stored", Duration::from_secs(120), || stored(1)).await;
    let mut originals = vec![sums(&data_dir)];

    // Two incrementals, each after a change to the files.
    for v in 2..=3u32 {
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct stream times
        let mut a = noise(1, 3_000_000);
        a[(v as usize) * 100_000..(v as usize) * 100_000 + 50_000]
            .copy_from_slice(&noise(v, 50_000));
        std::fs::write(data_dir.join("a.bin"), a).expect("a");
        std::fs::write(data_dir.join("b.txt"), format!("version {v}\n")).expect("b");
        std::fs::write(
            data_dir.join(format!("new-{v}.txt")),
            format!("added in {v}\n"),
        )
        .expect("new");
        let (code, out) = zb(
            &client,
            &ns,
            &[
                "backup",
                "chained",
                "--host",
                &names[0],
                "--dataset",
                &dataset,
                "--incremental",
            ],
        )
        .await;
        assert_eq!(code, 0, "backup-now: {out}");
        let n = v as usize;
        eventually(
            &format!("incremental {} is stored", v - 1),
            Duration::from_secs(120),
            || stored(n),
        )
        .await;
        originals.push(sums(&data_dir));
    }
    let ids = stored(3).await.expect("three backups");
    println!("stored backups of {}:{dataset}: {ids:?}", names[0]);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids[0].ends_with(".full")
            && ids[1].contains(".incremental.")
            && ids[2].contains(".incremental.")
    );
    // Chained: the second incremental is taken against the first.
    let first_inc_ts = ids[1].split('.').next().expect("ts");
    assert!(
        ids[2].ends_with(&format!(".incremental.{first_inc_ts}")),
        "{ids:?}"
    );

    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns);
    let source = |extra: serde_json::Value| {
        let mut s = serde_json::json!({"host": names[0], "dataset": dataset});
        if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        s
    };

    // 1. The newest point, to another host, under a parent that does not exist yet.
    let newest_ds = format!("{pd}/restored/newest");
    create_restore(
        &restores,
        "newest",
        serde_json::json!({"source": source(serde_json::json!({})),
            "destination": {"host": names[2], "dataset": newest_ds}}),
    )
    .await;
    let r = finished(&restores, "newest").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true));
    assert_eq!(st.chain, ids, "the whole chain, in order");
    assert!(st.pieces.iter().all(|p| p.verified == Some(true)), "{st:?}");
    assert_eq!(st.bytes_done, st.bytes);
    assert_eq!(
        sums(&mounted(&newest_ds)),
        originals[2],
        "newest restore differs"
    );

    // 2. A middle point: the full and the first incremental (by id), through the CLI.
    let middle_ds = format!("{pd}/restored/middle");
    let to = format!("{}/{middle_ds}", names[2]);
    let (code, out) = zb(
        &client,
        &ns,
        &[
            "restore",
            "--host",
            &names[0],
            "--dataset",
            &dataset,
            "--backup",
            &ids[1],
            "--to",
            &to,
            "--name",
            "middle",
            "--wait",
        ],
    )
    .await;
    println!(
        "kubectl zetaback restore --backup {} --to {to} --wait (exit {code}):\n{out}",
        ids[1]
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Succeeded") && out.contains("verified=true"),
        "{out}"
    );
    let r = finished(&restores, "middle").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids[..2], "full + first incremental");
    assert_eq!(
        sums(&mounted(&middle_ds)),
        originals[1],
        "middle restore differs"
    );
    assert_ne!(originals[1], originals[2]);

    // An existing destination is refused without force.
    create_restore(
        &restores,
        "exists",
        serde_json::json!({"source": source(serde_json::json!({})),
            "destination": {"host": names[2], "dataset": newest_ds}}),
    )
    .await;
    let r = finished(&restores, "exists").await;
    assert_eq!(reason(&r), "DestinationExists");

    // 3. One flipped byte in the stored full: ChecksumMismatch, the destination is untouched.
    let escaped = zetaback::store::escape_dataset(&dataset).expect("escape");
    let full_path = store_root.join(&names[0]).join(&escaped).join(&ids[0]);
    let original_full = std::fs::read(&full_path).expect("stored full");
    let mut corrupt = original_full.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x01;
    std::fs::write(&full_path, &corrupt).expect("corrupt");
    let corrupt_ds = format!("{pd}/restored/corrupt");
    let to = format!("{}/{corrupt_ds}", names[2]);
    let (code, out) = zb(
        &client,
        &ns,
        &[
            "restore",
            "--host",
            &names[0],
            "--dataset",
            &dataset,
            "--to",
            &to,
            "--name",
            "corrupt",
            "--wait",
        ],
    )
    .await;
    println!("kubectl zetaback restore --to {to} --wait (exit {code}):\n{out}");
    assert_eq!(code, 1, "a failed restore exits 1: {out}");
    assert!(out.contains("ChecksumMismatch"), "{out}");
    let r = finished(&restores, "corrupt").await;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(RestorePhase::Failed)
    );
    assert_eq!(reason(&r), "ChecksumMismatch", "{:?}", r.status);
    assert!(!dataset_exists(&corrupt_ds), "{corrupt_ds} must not exist");
    std::fs::write(&full_path, &original_full).expect("repair");

    // 4. The middle incremental deleted: ChainBroken, reported by the controller before the
    //    destination agent claims anything.
    store
        .delete(&bak_ep, &names[0], &dataset, &ids[1])
        .await
        .expect("delete the middle incremental");
    let broken_ds = format!("{pd}/restored/broken");
    create_restore(
        &restores,
        "broken",
        serde_json::json!({"source": source(serde_json::json!({"backup": ids[2]})),
            "destination": {"host": names[2], "dataset": broken_ds}}),
    )
    .await;
    let r = finished(&restores, "broken").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Failed);
    assert_eq!(reason(&r), "ChainBroken", "{st:?}");
    assert!(
        st.claimed_by.is_none() && st.chain.is_empty(),
        "nothing was sent: {st:?}"
    );
    assert!(!dataset_exists(&broken_ds));

    let table = env.kubectl(&["get", "restores", "-n", &ns]);
    println!("kubectl get restores:\n{}", text(&table.stdout));

    let _ = stop.send(());
    let _ = controller.await;
    drop(agents);
    for p in [&ps, &pb, &pd] {
        let _ = Command::new(env.root.join("e2e/scripts/zfs.sh"))
            .args(["destroy", p])
            .output();
    }
}
