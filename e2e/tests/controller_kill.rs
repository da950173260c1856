//! A leading controller killed with SIGKILL in the middle of a backup (no step-down: its Lease is
//! neither released nor renewed, as when its node dies): the other replica, a separate
//! `zetaback-controller` process, leads once the Lease expires, and nothing the dead one was
//! doing is lost or done twice. The BackupJob it created finishes (the agent runs it without a
//! controller), a backup-now request queued while no replica led is honoured, every stored
//! backup was asked for exactly once, and the chain is whole.
//!
//! The takeover time is printed (`takeover after SIGKILL: N s`), not asserted: it is a figure
//! for the notes, bounded only by the test's generous wait.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use zetaback::api::{BackupJob, BackupPolicy, BackupType, JobPhase};
use zetaback_e2e::fleet::{Fleet, HostSpec, agent_binary, noise};
use zetaback_e2e::{Env, eventually, free_port, http_get, metric};

const POLICY: &str = "killed";
const LEADER: &str = "zetaback_controller_leader";

/// A `zetaback-controller` process; killed (SIGKILL) when dropped.
struct ControllerProcess {
    name: &'static str,
    port: u16,
    child: Option<Child>,
}

impl ControllerProcess {
    fn spawn(env: &Env, fleet: &Fleet, name: &'static str) -> Self {
        let bin = controller_binary();
        let token = fleet.dir.join("controller.token");
        std::fs::write(&token, &fleet.controller_token).expect("controller token file");
        let log = std::fs::File::create(fleet.dir.join(format!("controller-{name}.log")))
            .expect("controller log");
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "--lease-namespace",
                &fleet.ns,
                "--identity",
                name,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--watch-namespace",
                &fleet.ns,
                "--store-token-file",
                &token.to_string_lossy(),
            ])
            .env("KUBECONFIG", &env.kubeconfig)
            // The fleet's agents run without TLS, explicitly; so does this controller.
            .env("ZETABACK_INSECURE_PLAINTEXT", "true")
            .env("RUST_LOG", "info,zetaback=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
        Self {
            name,
            port,
            child: Some(child),
        }
    }

    async fn leads(&self) -> Option<bool> {
        let body = http_get(self.port, "/metrics").await.ok()?;
        Some(metric(&body, LEADER)? == 1.0)
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `zetaback-controller`, built beside the agent (`cargo build --workspace --bins`).
fn controller_binary() -> PathBuf {
    let bin = agent_binary()
        .parent()
        .map(|d| d.join("zetaback-controller"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as e2e/test.sh does)",
        bin.display()
    );
    bin
}

async fn jobs(fleet: &Fleet) -> Vec<BackupJob> {
    Api::<BackupJob>::namespaced(fleet.client.clone(), &fleet.ns)
        .list(&ListParams::default())
        .await
        .expect("list BackupJobs")
        .items
}

fn phase(job: &BackupJob) -> JobPhase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn write(mount: &Path, file: &str, seed: u32, len: usize) {
    std::fs::write(mount.join(file), noise(seed, len)).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_backup_loses_no_job_and_no_request() {
    let env = Env::get();
    let ns = env.namespace("ctlkill");
    // 1 MB/s out of the source: a 6 MB incremental is still being sent when its leader dies.
    let fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src").args(&["--bandwidth-limit", "1000000"]),
            HostSpec::store("bak"),
        ],
    )
    .await;
    let ds = fleet.create_dataset("src", "db/a");
    let mount = zetaback_e2e::fleet::mounted(&ds);
    write(&mount, "base.bin", 1, 500_000);

    let mut a = ControllerProcess::spawn(env, &fleet, "replica-a");
    let mut b = ControllerProcess::spawn(env, &fleet, "replica-b");
    let first_leader = eventually("exactly one leader", Duration::from_secs(90), || async {
        match (a.leads().await?, b.leads().await?) {
            (true, false) => Some("replica-a"),
            (false, true) => Some("replica-b"),
            _ => None,
        }
    })
    .await;
    let (leader, follower) = if first_leader == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    println!("{} leads", leader.name);

    fleet
        .create_policy(POLICY, "src", &[&ds], fleet.policy_spec("src", "bak", &ds))
        .await;
    let full = fleet.wait_for_backups("bak", "src", &ds, 1).await;
    assert_eq!(full[0].manifest.backup_type, BackupType::Full);

    // An incremental is asked for; once its job runs, the leader dies.
    tokio::time::sleep(Duration::from_millis(1100)).await; // its own second
    write(&mount, "more.bin", 2, 6_000_000);
    fleet.backup_incremental_now(POLICY, "src", &ds).await;
    let (running, snapshot) = eventually(
        "the incremental's BackupJob running",
        Duration::from_secs(120),
        || async {
            jobs(&fleet)
                .await
                .into_iter()
                .find(|j| {
                    j.spec.backup_type == BackupType::Incremental && phase(j) == JobPhase::Running
                })
                .and_then(|j| Some((j.metadata.name?, j.spec.snapshot)))
        },
    )
    .await;
    leader.kill();
    let killed_at = Instant::now();
    println!("SIGKILLed {} while {running} ran", leader.name);

    // While no replica leads, another incremental is asked for.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(&mount, "last.bin", 3, 200_000);
    fleet.backup_incremental_now(POLICY, "src", &ds).await;

    let port = follower.port;
    eventually(
        "the other replica leads",
        Duration::from_secs(120),
        || async move {
            let body = http_get(port, "/metrics").await.ok()?;
            (metric(&body, LEADER)? == 1.0).then_some(())
        },
    )
    .await;
    println!(
        "takeover after SIGKILL: {} s ({} leads)",
        killed_at.elapsed().as_secs(),
        follower.name
    );

    // The dead leader's job finished, and the request made while no one led was honoured.
    let backups = fleet.wait_for_backups("bak", "src", &ds, 3).await;
    // (Its BackupJob may already be pruned by the new leader: succeeded jobs are kept only
    // as the newest per dataset. What counts is its backup in the store.)
    assert!(
        backups.iter().any(|b| b.manifest.snapshot == snapshot),
        "the backup of {running} (snapshot {snapshot}) is not stored: {:?}",
        backups.iter().map(|b| &b.manifest.id).collect::<Vec<_>>()
    );
    // Asked for: one full, two incrementals. Nothing more appears once the requests are
    // handled (a request carried out twice would show up as a fourth backup or job).
    let handled = eventually(
        "both requests marked handled",
        Duration::from_secs(60),
        || async {
            let p = Api::<BackupPolicy>::namespaced(fleet.client.clone(), &fleet.ns)
                .get(POLICY)
                .await
                .ok()?;
            let pending = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("zetaback.io/backup-now"))
                .map(|v| v.to_owned());
            p.status?.backup_now_handled.map(|t| (t, pending))
        },
    )
    .await;
    println!(
        "requests handled up to {:?} (queue: {:?})",
        handled.0, handled.1
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = fleet
        .stored_backups("bak", "src", &ds)
        .await
        .expect("catalogue");
    let ids: Vec<String> = settled.iter().map(|b| b.manifest.id.clone()).collect();
    assert_eq!(ids.len(), 3, "stored: {ids:?}");
    let all_jobs = jobs(&fleet).await;
    let summary: Vec<String> = all_jobs
        .iter()
        .map(|j| {
            format!(
                "{} {:?} {:?}",
                j.metadata.name.clone().unwrap_or_default(),
                j.spec.backup_type,
                phase(j)
            )
        })
        .collect();
    // (Succeeded jobs are pruned to the newest per dataset: their count says nothing.)
    assert!(
        all_jobs.iter().all(|j| phase(j) == JobPhase::Succeeded),
        "a job left behind: {summary:?}"
    );
    // A whole chain: one full, then incrementals whose base is a stored backup.
    assert_eq!(settled[0].manifest.backup_type, BackupType::Full, "{ids:?}");
    for inc in &settled[1..] {
        assert_eq!(inc.manifest.backup_type, BackupType::Incremental, "{ids:?}");
        let base = inc.manifest.base_snapshot.as_deref();
        assert!(
            settled
                .iter()
                .any(|b| Some(b.manifest.snapshot.as_str()) == base),
            "{} is based on {base:?}, which is not stored: {ids:?}",
            inc.manifest.id
        );
    }
    follower.kill();
    fleet.shutdown().await;
}
