//! The cluster tier: zetaback as Kubernetes workloads on a real local multi-node cluster
//! (`e2e/scripts/cluster.sh`: two nodes, each in its own network and mount namespace, running
//! containerd, kubelet, kube-proxy and the CNI bridge; CoreDNS), installed with `helm install`
//! from `charts/zetaback` and the images `e2e/scripts/image.sh build` made, nothing started by
//! hand: every pod is Running and Ready, the agent DaemonSet has a pod on each node, a
//! BackupPolicy backs a dataset of node 1 up to the store of node 2 through the pods, and a
//! Restore brings it back on node 1 with every file's checksum equal to the source's.
//!
//! Pools: each node's pool (`zbnode1`, `zbnode2`, made by `cluster.sh up`) lives on the
//! machine's shared zfs-fuse daemon, whose socket (`/var/run/zfs/zfs_socket`, a path socket, so
//! reachable from any network namespace) the agent pods mount; each ZfsHost includes only its
//! own node's pool.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use zetaback_e2e::fleet::{mounted, noise, sums};
use zetaback_e2e::text;

const NS: &str = "zetaback-system";
const RELEASE: &str = "zetaback";
/// Node 1's pool, made by `cluster.sh up` (before the node starts: see there).
const POOL: &str = "zbnode1";
/// How long pods, backups and restores may take on this (loaded, 2-core) machine.
const LIMIT: Duration = Duration::from_secs(300);
/// The agents' outgoing bandwidth per backup stream (chart value `agent.bandwidthLimit`,
/// bytes per second): slow enough that the mid-transfer test's stream of
/// [`BIG_BYTES`] takes about 10 s, so the source agent pod is deleted while it flows.
const BANDWIDTH_LIMIT: u64 = 4 << 20;
/// The file of the dataset whose backup is cut by deleting the source agent pod.
const BIG_BYTES: usize = 40 << 20;

struct Cluster {
    root: PathBuf,
    kubeconfig: PathBuf,
    bin: PathBuf,
    run: PathBuf,
}

fn script(root: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(root.join("e2e/scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

impl Cluster {
    /// `cluster.sh up` (idempotent) and `cluster.sh images` (the newest image build into
    /// every node); panics with the reason when either fails.
    fn up() -> Cluster {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("e2e has a parent")
            .to_path_buf();
        let up = script(&root, "cluster.sh", &["up"]);
        assert!(
            up.status.success(),
            "cluster.sh up failed: {}",
            text(&up.stderr)
        );
        let kubeconfig = PathBuf::from(text(&up.stdout).trim());
        let images = script(&root, "cluster.sh", &["images"]);
        assert!(
            images.status.success(),
            "cluster.sh images failed: {}",
            text(&images.stderr)
        );
        let bin = script(&root, "build-tools.sh", &[]);
        assert!(
            bin.status.success(),
            "build-tools.sh: {}",
            text(&bin.stderr)
        );
        let run = kubeconfig.parent().expect("run dir").to_path_buf();
        Cluster {
            root,
            kubeconfig,
            bin: PathBuf::from(text(&bin.stdout).trim()),
            run,
        }
    }

    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.bin.join(name))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.run.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.run.join("helm/config"))
            .env("HELM_DATA_HOME", self.run.join("helm/data"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        let input = child.stdin.take();
        if let (Some(mut input), Some(s)) = (input, stdin) {
            input.write_all(s.as_bytes()).expect("stdin");
        }
        child.wait_with_output().expect("wait")
    }

    /// `kubectl ARGS`, its stdout; panics when it fails.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.tool("kubectl", args, None);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn apply(&self, yaml: &str) {
        let out = self.tool("kubectl", &["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            text(&out.stderr)
        );
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut argv = args.to_vec();
        argv.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&argv)).expect("kubectl -o json")
    }
}

/// Polls `check` every second until it returns `Some`, or panics with `what` (and `show()`).
fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
    show: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}\n{}", show());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every pod of the cluster: (namespace, name, node, phase, all containers ready).
fn pods(c: &Cluster) -> Vec<(String, String, String, String, bool)> {
    let list = c.json(&["get", "pods", "-A"]);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            let ready = p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true));
            (
                s(&p["metadata"]["namespace"]),
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["phase"]),
                ready,
            )
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn zfs_sh(c: &Cluster, args: &[&str]) -> String {
    let out = script(&c.root, "zfs.sh", args);
    assert!(
        out.status.success(),
        "zfs.sh {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn helm_installed_pods_back_up_node1_to_node2_and_restore() {
    let c = Cluster::up();
    let start = Instant::now();

    // A fresh dataset in node 1's pool.
    let dataset = format!("{POOL}/data");
    let restored = format!("{POOL}/restored");
    destroy_datasets(&[&dataset, &restored]);
    zfs_sh(&c, &["dataset", &dataset]);
    let data = mounted(&dataset);
    for (i, len) in [(1u32, 300_000usize), (2, 70_000), (3, 1)] {
        std::fs::create_dir_all(data.join("sub")).expect("mkdir");
        std::fs::write(data.join(format!("sub/file{i}")), noise(i, len)).expect("write");
    }
    let original = sums(&data);
    // Node 2's store starts without this host's backups (a cluster kept from an earlier run,
    // ZETABACK_KEEP_CLUSTER=1, still has them).
    let _ = std::fs::remove_dir_all(c.run.join("node2/store/zb-node1"));

    // helm install, nothing by hand: the chart's CRDs, RBAC, controller Deployment, agent
    // DaemonSet (zfs-fuse flavour: the node's daemon socket mounted in), with the settings
    // `cluster.sh install` gives (shared with the demo).
    let _ = c.tool("helm", &["uninstall", RELEASE, "-n", NS, "--wait"], None);
    // What an earlier run that failed left (a kept cluster): its objects would answer for this
    // run's (a Restore already Succeeded). Fails harmlessly before the CRDs exist.
    let _ = c.tool(
        "kubectl",
        &[
            "delete",
            "restore,backuppolicy,fallbackroute",
            "-n",
            NS,
            "--all",
            "--wait=true",
        ],
        None,
    );
    let install = script(
        &c.root,
        "cluster.sh",
        &[
            "install",
            "--set",
            &format!("agent.bandwidthLimit={BANDWIDTH_LIMIT}"),
        ],
    );
    assert!(
        install.status.success(),
        "cluster.sh install: {}",
        text(&install.stderr)
    );

    // Each node's ZfsHost: its own pool only; restores land in node 1's pool.
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: ZfsHost
metadata: {{name: zb-node1}}
spec: {{nodeName: zb-node1, datasets: {{include: ["{POOL}/**"]}}, restoreRoots: ["{POOL}"]}}
---
apiVersion: zetaback.io/v1alpha1
kind: ZfsHost
metadata: {{name: zb-node2}}
spec: {{nodeName: zb-node2, datasets: {{include: ["zbnode2/**"]}}}}
"#
    ));

    // Every pod Running and Ready: two controllers, an agent on each node, CoreDNS.
    let show_pods = || {
        let out = c.tool("kubectl", &["get", "pods", "-A", "-o", "wide"], None);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    };
    eventually(
        "every pod Running and Ready, an agent on each node, two controllers",
        LIMIT,
        || {
            let ps = pods(&c);
            let all = !ps.is_empty() && ps.iter().all(|p| p.3 == "Running" && p.4);
            let mut agent_nodes: Vec<&str> = ps
                .iter()
                .filter(|p| p.0 == NS && p.1.starts_with("zetaback-agent-"))
                .map(|p| p.2.as_str())
                .collect();
            agent_nodes.sort();
            let controllers = ps
                .iter()
                .filter(|p| p.0 == NS && p.1.starts_with("zetaback-controller-"))
                .count();
            (all && agent_nodes == ["zb-node1", "zb-node2"] && controllers == 2).then_some(())
        },
        show_pods,
    );
    println!(
        "== pods Running and Ready {}s after the install",
        start.elapsed().as_secs()
    );
    println!("{}", show_pods());

    println!("== pod start → Ready: {}", start_to_ready(&c).join(", "));

    // Each controller pod's /readyz (what its readiness probe asks) names its lease state: the
    // Lease holder leads with synced caches, the other stands by.
    readyz_names_the_lease_state(&c);

    // Each agent found its node's pool from inside its pod and published its endpoint.
    eventually(
        "the ZfsHosts' status: node 1's dataset, both endpoints",
        LIMIT,
        || {
            let h1 = c.json(&["get", "zfshost", "zb-node1"]);
            let h2 = c.json(&["get", "zfshost", "zb-node2"]);
            let has_data = h1["status"]["datasets"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == dataset.as_str()));
            let ep = |h: &serde_json::Value| {
                h["status"]["agentEndpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("10.244."))
            };
            (has_data && ep(&h1) && ep(&h2)).then_some(())
        },
        || c.kubectl(&["get", "zfshost", "-o", "yaml"]),
    );

    assert_mutual_tls(&c);

    // A BackupPolicy: node 1's dataset to the file store of node 2's agent.
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: BackupPolicy
metadata: {{name: cluster-backup, namespace: {NS}}}
spec:
  hosts: {{names: [zb-node1]}}
  datasets: {{include: ["{dataset}"]}}
  full: {{every: 24h, keep: 48h}}
  incremental: {{every: 12h, keep: 48h}}
  target: {{host: zb-node2, path: /var/lib/zetaback}}
"#
    ));
    // The stream crossed into node 2's store (its hostPath, per node), not node 1's.
    let node2_store = c.run.join("node2/store");
    let node1_store = c.run.join("node1/store");
    let stored = eventually(
        "a full backup stored on node 2",
        LIMIT,
        || {
            let files = files_under(&node2_store);
            files
                .iter()
                .any(|f| f.to_string_lossy().contains(".full"))
                .then_some(files)
        },
        || {
            format!(
                "{}\n{}\n{}",
                c.kubectl(&["get", "backuppolicy,backupjob", "-A", "-o", "yaml"]),
                c.kubectl(&[
                    "logs",
                    "-n",
                    NS,
                    "-l",
                    "app.kubernetes.io/component=agent",
                    "--tail=30",
                    "--prefix"
                ]),
                c.kubectl(&[
                    "logs",
                    "-n",
                    NS,
                    "-l",
                    "app.kubernetes.io/component=controller",
                    "--tail=30",
                    "--prefix"
                ]),
            )
        },
    );
    println!("== stored on node 2: {stored:?}");
    assert!(
        files_under(&node1_store).is_empty(),
        "node 1's store holds files: {:?}",
        files_under(&node1_store)
    );

    // A Restore back onto node 1, under another name; every file's checksum equal.
    absent_from_status(&c, &restored);
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: Restore
metadata: {{name: cluster-restore, namespace: {NS}}}
spec:
  source: {{host: zb-node1, dataset: "{dataset}"}}
  destination: {{host: zb-node1, dataset: "{restored}"}}
"#
    ));
    let phase = eventually(
        "the Restore finished",
        LIMIT,
        || {
            let r = c.json(&["get", "restore", "-n", NS, "cluster-restore"]);
            let phase = r["status"]["phase"].as_str().unwrap_or_default().to_owned();
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
        || c.kubectl(&["get", "restore", "-n", NS, "-o", "yaml"]),
    );
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        c.kubectl(&["get", "restore", "-n", NS, "-o", "yaml"])
    );
    assert_eq!(
        sums(&mounted(&restored)),
        original,
        "the restored files differ"
    );
    println!(
        "== backup on node 2 and restore on node 1 through the pods: checksums equal ({}s)",
        start.elapsed().as_secs()
    );

    // Cluster DNS: a Service name resolves inside a pod on node 2 (CoreDNS runs on one node,
    // reached through its Service address, i.e. kube-proxy's rules and the route between nodes).
    let agent2 = pods(&c)
        .into_iter()
        .find(|p| p.0 == NS && p.1.starts_with("zetaback-agent-") && p.2 == "zb-node2")
        .map(|p| p.1)
        .expect("the agent pod on node 2");
    let resolved = c.kubectl(&[
        "exec",
        "-n",
        NS,
        &agent2,
        "--",
        "getent",
        "hosts",
        "kubernetes.default.svc.cluster.local",
    ]);
    assert!(
        resolved.starts_with("10.96.0.1 "),
        "kubernetes.default.svc.cluster.local from a pod on node 2: {resolved:?}"
    );

    // Leader failover: kill the leading controller pod (no graceful release); the other
    // replica takes the Lease, and a new Restore is served by it.
    let holder = |c: &Cluster| {
        c.json(&["get", "lease", "-n", NS, "zetaback-controller"])["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let leader = holder(&c);
    assert!(
        leader.starts_with("zetaback-controller-"),
        "lease holder {leader:?}"
    );
    let killed = Instant::now();
    c.kubectl(&[
        "delete",
        "pod",
        "-n",
        NS,
        &leader,
        "--grace-period=0",
        "--force",
    ]);
    // Another live controller pod holds the Lease: the standby, or the Deployment's
    // replacement pod if it asked first once the dead leader's lease expired.
    let new_leader = eventually(
        "another controller pod leads",
        LIMIT,
        || {
            let h = holder(&c);
            let live = pods(&c)
                .iter()
                .any(|p| p.0 == NS && p.1 == h && p.3 == "Running");
            (h != leader && live).then_some(h)
        },
        || c.kubectl(&["get", "lease", "-n", NS, "-o", "yaml"]),
    );
    println!(
        "== leader failover: {new_leader} leads {:.1}s after {leader} was killed (lease 15s)",
        killed.elapsed().as_secs_f64()
    );
    let again = format!("{POOL}/restored-again");
    destroy_datasets(&[&again]);
    absent_from_status(&c, &again);
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: Restore
metadata: {{name: cluster-restore-again, namespace: {NS}}}
spec:
  source: {{host: zb-node1, dataset: "{dataset}"}}
  destination: {{host: zb-node1, dataset: "{again}"}}
"#
    ));
    let phase = eventually(
        "the Restore after the failover finished",
        LIMIT,
        || {
            let r = c.json(&["get", "restore", "-n", NS, "cluster-restore-again"]);
            let phase = r["status"]["phase"].as_str().unwrap_or_default().to_owned();
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
        || c.kubectl(&["get", "restore", "-n", NS, "-o", "yaml"]),
    );
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        c.kubectl(&["get", "restore", "-n", NS, "-o", "yaml"])
    );
    assert_eq!(
        sums(&mounted(&again)),
        original,
        "the files restored after the failover differ"
    );

    // The source agent pod deleted while its backup streams to node 2: the job ends Failed
    // with the reason, nothing partial is a backup, and the next backup is stored whole.
    agent_pod_deleted_mid_transfer(&c, &node2_store);
    // What the pods used so far (backups, restores, the failover): e2e/scripts/pod-resources.sh.
    println!(
        "== controller and agent pods' resources after backups, restores, failover and the agent pod's deletion:\n{}",
        pod_resources(&c, "app.kubernetes.io/name=zetaback")
    );

    // A FallbackRoute: the proxy Deployment the controller generates becomes Ready on the
    // cluster and serves, through its Service, a client in node 1's network namespace with the
    // answer of a real nginx running in node 2's network namespace.
    let served = fallback_route_serves(&c);
    println!("== FallbackRoute through its Service from node 1's namespace: {served:?}");

    // helm upgrade with a changed value rolls every pod out, and the new pods back up.
    helm_upgrade_rolls_out_and_backs_up(&c, &node2_store);

    println!("{}", c.kubectl(&["get", "zetaback", "-A"]));
    println!("{}", show_pods());
    let summary = zetaback_cli(&c, &["summary", "-A"]);
    assert!(
        summary.status.success(),
        "kubectl zetaback summary: {}",
        text(&summary.stderr)
    );
    println!("{}", text(&summary.stdout));

    // helm uninstall: the workloads go, every stored backup stays on node 2's disk.
    let kept = sums(&node2_store);
    assert!(
        kept.contains(".full."),
        "node 2's store before the uninstall: {kept}"
    );
    let un = c.tool("helm", &["uninstall", RELEASE, "-n", NS, "--wait"], None);
    assert!(un.status.success(), "helm uninstall: {}", text(&un.stderr));
    eventually(
        "no controller or agent pod left after helm uninstall",
        LIMIT,
        || release_pods(&c).is_empty().then_some(()),
        show_pods,
    );
    assert_eq!(
        sums(&node2_store),
        kept,
        "node 2's store changed across helm uninstall"
    );
    println!(
        "== helm uninstall: every stored file kept, sha256 equal ({} files)",
        kept.lines().count()
    );

    // Clean up what this test made (the cluster itself stays for the tier's other tests;
    // `cluster.sh down` removes it).
    c.kubectl(&[
        "delete",
        "restore,backuppolicy",
        "-n",
        NS,
        "--all",
        "--wait=true",
    ]);
    c.kubectl(&["delete", "zfshost", "zb-node1", "zb-node2"]);
    destroy_datasets(&[&dataset, &restored, &again]);
}

/// Each release pod's seconds from its start (`status.startTime`) to its Ready condition.
fn start_to_ready(c: &Cluster) -> Vec<String> {
    let list = c.json(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/name=zetaback",
    ]);
    let time = |v: &serde_json::Value| v.as_str()?.parse::<jiff::Timestamp>().ok();
    let mut out = Vec::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let ready = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| time(&c["lastTransitionTime"]));
        if let (Some(start), Some(ready)) = (time(&p["status"]["startTime"]), ready) {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            out.push(format!("{name} {}s", ready.as_second() - start.as_second()));
        }
    }
    out
}

/// Asks every controller pod's `/readyz` (from the host, which routes to the pods): the Lease
/// holder answers 200 "leader: caches synced…", the other 200 "standby: …".
fn readyz_names_the_lease_state(c: &Cluster) {
    let answers = eventually(
        "one controller pod leading with synced caches, the other standing by (/readyz)",
        LIMIT,
        || {
            let holder = c.json(&["get", "lease", "-n", NS, "zetaback-controller"])["spec"]
                ["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let pods = c.json(&[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/component=controller",
            ]);
            let mut answers = Vec::new();
            for p in pods["items"].as_array()? {
                let name = p["metadata"]["name"].as_str()?.to_owned();
                let ip = p["status"]["podIP"].as_str()?;
                let out = Command::new("curl")
                    .args(["-sS", "--max-time", "5", "-w", " %{http_code}"])
                    .arg(format!("http://{ip}:8080/readyz"))
                    .output()
                    .ok()?;
                answers.push((name == holder, text(&out.stdout).trim().to_owned()));
            }
            let ok = answers.len() == 2
                && answers.iter().all(|(leads, a)| {
                    let want = if *leads {
                        "leader: caches synced"
                    } else {
                        "standby: "
                    };
                    a.starts_with(want) && a.ends_with(" 200")
                });
            ok.then_some(answers)
        },
        || c.kubectl(&["get", "lease,pods", "-n", NS, "-o", "wide"]),
    );
    println!("== controller /readyz: {answers:?}");
}

/// Waits until node 1's ZfsHost no longer lists `dataset` (the controller refuses a Restore
/// onto a dataset its host reports: after a `zfs destroy`, the agent's next status says so).
fn absent_from_status(c: &Cluster, dataset: &str) {
    eventually(
        &format!("zb-node1's status without {dataset}"),
        LIMIT,
        || {
            let h = c.json(&["get", "zfshost", "zb-node1"]);
            let listed = h["status"]["datasets"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == dataset));
            (!listed).then_some(())
        },
        || c.kubectl(&["get", "zfshost", "zb-node1", "-o", "yaml"]),
    );
}

/// A controller or agent pod of the release.
struct ReleasePod {
    uid: String,
    component: String,
    /// `RUST_LOG` of its container, as the chart set it.
    log_filter: String,
    running_and_ready: bool,
}

/// The release's controller and agent pods (terminating ones included).
fn release_pods(c: &Cluster) -> Vec<ReleasePod> {
    let list = c.json(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/name=zetaback",
    ]);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            let env = p["spec"]["containers"][0]["env"].as_array();
            let log_filter = env
                .and_then(|e| e.iter().find(|v| v["name"] == "RUST_LOG"))
                .map(|v| s(&v["value"]))
                .unwrap_or_default();
            let ready = p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true));
            ReleasePod {
                uid: s(&p["metadata"]["uid"]),
                component: s(&p["metadata"]["labels"]["app.kubernetes.io/component"]),
                log_filter,
                running_and_ready: ready
                    && p["status"]["phase"] == "Running"
                    && p["metadata"]["deletionTimestamp"].is_null(),
            }
        })
        .filter(|p| p.component == "controller" || p.component == "agent")
        .collect()
}

/// `kubectl-zetaback ARGS` (the built CLI, next to the test binary's directory) with the
/// cluster's kubeconfig and the chart's catalogue reader; the stores verified against the CA
/// the controller publishes once [`assert_mutual_tls`] saved it.
fn zetaback_cli(c: &Cluster, args: &[&str]) -> Output {
    let bin = zetaback_e2e::fleet::agent_binary().with_file_name("kubectl-zetaback");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .args(["--reader-service-account", &format!("{NS}/zetaback-reader")])
        .env("KUBECONFIG", &c.kubeconfig);
    let ca = c.run.join("zetaback-ca.crt");
    if ca.exists() {
        cmd.arg("--store-ca").arg(ca);
    }
    cmd.output().expect("kubectl-zetaback")
}

/// `e2e/scripts/pod-resources.sh` for the pods `selector` selects in the release namespace:
/// each container's peak and current memory and CPU seconds, read from its cgroup.
fn pod_resources(c: &Cluster, selector: &str) -> String {
    let out = Command::new(c.root.join("e2e/scripts/pod-resources.sh"))
        .args(["-n", NS, "-l", selector])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("pod-resources.sh");
    assert!(
        out.status.success(),
        "pod-resources.sh: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The release's agent pod on `node` (not terminating).
fn agent_pod_on(c: &Cluster, node: &str) -> Option<(String, String)> {
    let list = c.json(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/component=agent",
    ]);
    list["items"].as_array()?.iter().find_map(|p| {
        let live = p["metadata"]["deletionTimestamp"].is_null()
            && p["spec"]["nodeName"] == node
            && p["status"]["phase"] == "Running";
        live.then(|| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// The BackupJobs of policy `policy` in the release namespace.
fn policy_jobs(c: &Cluster, policy: &str) -> Vec<serde_json::Value> {
    c.json(&[
        "get",
        "backupjob",
        "-n",
        NS,
        "-l",
        &format!("zetaback.io/policy={policy}"),
    ])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Issue 12, Build 4: the source agent pod is deleted while its backup streams (rate-limited
/// by the chart's `agent.bandwidthLimit`) into node 2's store. The job must end, Failed with
/// its reason (the product's answer: the replacement pod fails what its predecessor left
/// Running, the controller retries), never stay Running; nothing of the cut stream may be a
/// backup (no stream or manifest in node 2's store, nothing in the catalogue); the next backup
/// must be stored whole: its stream's sha256 equal to its manifest's and the job's, and no
/// temporary file left beside it.
fn agent_pod_deleted_mid_transfer(c: &Cluster, store: &Path) {
    const POLICY: &str = "cluster-kill";
    let dataset = format!("{POOL}/big");
    destroy_datasets(&[&dataset]);
    zfs_sh(c, &["dataset", &dataset]);
    std::fs::write(mounted(&dataset).join("big.bin"), noise(12, BIG_BYTES)).expect("write");
    let dir = store.join("zb-node1").join(dataset.replace('/', "+"));
    let _ = std::fs::remove_dir_all(&dir);
    eventually(
        "node 1's status lists the big dataset",
        LIMIT,
        || {
            let h = c.json(&["get", "zfshost", "zb-node1"]);
            h["status"]["datasets"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == dataset.as_str()))
                .then_some(())
        },
        || c.kubectl(&["get", "zfshost", "zb-node1", "-o", "yaml"]),
    );
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: BackupPolicy
metadata: {{name: {POLICY}, namespace: {NS}}}
spec:
  hosts: {{names: [zb-node1]}}
  datasets: {{include: ["{dataset}"]}}
  full: {{every: 24h, keep: 48h}}
  incremental: {{every: 12h, keep: 48h}}
  compression: none
  target: {{host: zb-node2, path: /var/lib/zetaback}}
"#
    ));
    let show_jobs = || c.kubectl(&["get", "backupjob", "-n", NS, "-o", "yaml"]);
    // The full is streaming: its progress says bytes went out.
    let (job, sent) = eventually(
        "the full's job Running with bytesSent > 0",
        LIMIT,
        || {
            policy_jobs(c, POLICY).into_iter().find_map(|j| {
                let sent = j["status"]["bytesSent"].as_u64().unwrap_or(0);
                (j["status"]["phase"] == "Running" && sent > 0).then(|| {
                    (
                        j["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        sent,
                    )
                })
            })
        },
        show_jobs,
    );
    let (pod, uid) = agent_pod_on(c, "zb-node1").expect("node 1's agent pod");
    let deleted = Instant::now();
    c.kubectl(&["delete", "pod", "-n", NS, &pod, "--wait=false"]);
    println!("== deleted node 1's agent pod {pod} while job {job} ran ({sent} bytes sent)");
    // Nothing of the cut stream becomes a backup, at any moment: watched until the job ends.
    let visible = |dir: &Path| -> Vec<String> {
        files_under(dir)
            .iter()
            .map(|f| {
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| !n.starts_with(zetaback::store::layout::TEMP_PREFIX))
            .collect()
    };
    let (phase, message) = eventually(
        "the interrupted job ended",
        LIMIT,
        || {
            let seen = visible(&dir);
            assert!(
                seen.is_empty(),
                "node 2's store shows files of the interrupted stream: {seen:?}"
            );
            let j = c.json(&["get", "backupjob", "-n", NS, &job]);
            let phase = j["status"]["phase"].as_str().unwrap_or_default().to_owned();
            let message = j["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some((phase, message))
        },
        show_jobs,
    );
    let ended = deleted.elapsed().as_secs_f64();
    assert_eq!(
        phase, "Failed",
        "the job whose source pod was deleted mid-transfer: {message}"
    );
    assert!(!message.is_empty(), "the job failed without a reason");
    let (replacement, new_uid) = eventually(
        "a replacement agent pod on node 1",
        LIMIT,
        || agent_pod_on(c, "zb-node1").filter(|(_, u)| *u != uid),
        || c.kubectl(&["get", "pods", "-n", NS, "-o", "wide"]),
    );
    assert_ne!(new_uid, uid);
    let seen = visible(&dir);
    assert!(
        seen.is_empty(),
        "node 2's store after the job failed: {seen:?}"
    );
    // The catalogue (what `kubectl zetaback list` reads from node 2's store) lists nothing.
    let listed = zetaback_cli(c, &["list", "-n", NS, "-d", &dataset, "-o", "json"]);
    assert!(
        listed.status.success(),
        "kubectl zetaback list: {}",
        text(&listed.stderr)
    );
    assert!(
        !text(&listed.stderr).contains("unreachable"),
        "the catalogue was not read: {}",
        text(&listed.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list -o json");
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(0),
        "the catalogue lists a backup of the interrupted stream: {rows}"
    );
    println!(
        "== the job {phase} {ended:.1}s after the pod's deletion ({message:?}); replacement pod {replacement}; node 2's store and the catalogue show no backup of it"
    );

    // The next backup, asked for now (the controller would retry after its backoff anyway).
    let asked = Instant::now();
    let out = zetaback_cli(c, &["backup", POLICY, "-n", NS, "--full"]);
    assert!(
        out.status.success(),
        "kubectl zetaback backup: {}",
        text(&out.stderr)
    );
    let done = eventually(
        "a later job of the policy Succeeded",
        LIMIT,
        || {
            let jobs = policy_jobs(c, POLICY);
            if let Some(f) = jobs
                .iter()
                .find(|j| j["metadata"]["name"] != job.as_str() && j["status"]["phase"] == "Failed")
            {
                panic!("the next backup failed: {f}");
            }
            jobs.into_iter().find(|j| {
                j["metadata"]["name"] != job.as_str() && j["status"]["phase"] == "Succeeded"
            })
        },
        show_jobs,
    );
    let id = done["status"]["backupId"]
        .as_str()
        .expect("backupId")
        .to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{id}.json"))).expect("the manifest"),
    )
    .expect("manifest JSON");
    let stream = std::fs::read(dir.join(&id)).expect("the stream");
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&stream));
    assert_eq!(
        manifest["sha256"],
        sha.as_str(),
        "the stored stream's sha256"
    );
    assert_eq!(done["status"]["sha256"], sha.as_str(), "the job's sha256");
    assert_eq!(manifest["bytes"].as_u64(), Some(stream.len() as u64));
    assert!(
        stream.len() > BIG_BYTES,
        "the stream ({} bytes) carries the {BIG_BYTES}-byte file",
        stream.len()
    );
    // Nothing else beside it: the cut stream's temporary file is gone too.
    let mut names: Vec<String> = files_under(&dir)
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, [id.clone(), format!("{id}.json")], "node 2's store");
    println!(
        "== the next backup {id} stored {:.1}s after it was asked for: {} bytes, sha256 verified ({sha})",
        asked.elapsed().as_secs_f64(),
        stream.len()
    );
    c.kubectl(&["delete", "backuppolicy", "-n", NS, POLICY, "--wait=true"]);
    // Known (session 9, left open): on zfs-fuse the cut job's snapshot stays "dataset is busy"
    // for minutes after its send was cut, so the dataset may not be destroyable yet: reported,
    // left to `cluster.sh down`. Seen on zfs-fuse alone (session 10): the daemon writes the
    // stream itself (the client hands it its stdout), so SIGKILL of the `zfs send` client does not
    // end the send: the reader went on receiving (200 KB in 5 s after the kill), and a `zfs
    // destroy` asked meanwhile waited; killing client and reader together let the snapshot be
    // destroyed at once. Not found yet: what keeps the send's stream open after the pod's death.
    let snapshots = zetaback_e2e::fleet::run_output(
        "zfs",
        &["list", "-H", "-t", "snapshot", "-o", "name", "-r", &dataset],
    );
    for snapshot in text(&snapshots.stdout).lines() {
        let _ =
            zetaback_e2e::fleet::run_output("zfs", &["release", "zetaback-base", snapshot.trim()]);
    }
    let out = zetaback_e2e::fleet::run_output("zfs", &["destroy", "-r", &dataset]);
    if !out.status.success() {
        println!(
            "== NOT CLEANED (zfs-fuse): zfs destroy -r {dataset}: {}",
            text(&out.stderr).trim()
        );
    }
}

/// From a `kubectl get --watch -o json` stream: each pod's (uid, exit code) of its first
/// container once it terminated.
fn exit_codes(stream: &[u8]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for pod in serde_json::Deserializer::from_slice(stream).into_iter::<serde_json::Value>() {
        let Ok(pod) = pod else { break };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let code =
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64();
        if let Some(code) = code
            && !out.iter().any(|(u, _)| *u == uid)
        {
            out.push((uid, code));
        }
    }
    out
}

/// Backup manifests of incrementals in a store.
fn incrementals(store: &Path) -> usize {
    files_under(store)
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            name.contains(".incremental.") && name.ends_with(".json")
        })
        .count()
}

/// `helm upgrade` (cluster.sh install again) with the controller's and agents' log filter
/// changed: every controller and agent pod is replaced by one with the new value and becomes
/// Ready, and an incremental requested afterwards is stored by the new pods.
fn helm_upgrade_rolls_out_and_backs_up(c: &Cluster, store: &Path) {
    let before: Vec<String> = release_pods(c).into_iter().map(|p| p.uid).collect();
    // Every change of the agent pods while the DaemonSet rolls, to read how the old ones ended.
    let watched = c.run.join("agent-pods.watch.json");
    let mut watch = Command::new(c.bin.join("kubectl"))
        .args([
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/component=agent",
        ])
        .args(["--watch", "-o", "json"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(std::fs::File::create(&watched).expect("watch file"))
        .spawn()
        .expect("kubectl get --watch");
    let started = Instant::now();
    let up = script(
        &c.root,
        "cluster.sh",
        &[
            "install",
            "--set",
            "controller.logLevel=debug",
            "--set",
            "agent.logLevel=debug",
            "--set",
            &format!("agent.bandwidthLimit={BANDWIDTH_LIMIT}"),
        ],
    );
    assert!(
        up.status.success(),
        "cluster.sh install (upgrade): {}",
        text(&up.stderr)
    );
    eventually(
        "helm upgrade rolled out: every controller and agent pod new, RUST_LOG=debug, Ready",
        LIMIT,
        || {
            let ps = release_pods(c);
            let count = |what: &str| ps.iter().filter(|p| p.component == what).count();
            let rolled = ps.iter().all(|p| {
                !before.contains(&p.uid) && p.log_filter == "debug" && p.running_and_ready
            });
            (rolled && count("controller") == 2 && count("agent") == 2).then_some(())
        },
        || c.kubectl(&["get", "pods", "-A", "-o", "wide"]),
    );
    println!(
        "== helm upgrade (logLevel=debug): every controller and agent pod replaced and Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let _ = watch.kill();
    let _ = watch.wait();
    // The replaced agents stopped on the SIGTERM of their pod's deletion (exit 0), not killed
    // at the end of the grace period (137).
    let ended = exit_codes(&std::fs::read(&watched).expect("watch output"));
    let old_agents: Vec<_> = ended
        .iter()
        .filter(|(uid, _)| before.contains(uid))
        .collect();
    assert_eq!(
        old_agents.len(),
        2,
        "the two replaced agent pods' exits: {ended:?}"
    );
    assert!(
        old_agents.iter().all(|(_, code)| *code == 0),
        "the replaced agent pods' exit codes (137: SIGKILL after the grace period): {old_agents:?}"
    );
    let stored = incrementals(store);
    let asked = zetaback_cli(c, &["backup", "cluster-backup", "-n", NS, "--incremental"]);
    assert!(
        asked.status.success(),
        "kubectl zetaback backup: {}",
        text(&asked.stderr)
    );
    eventually(
        "an incremental stored by the upgraded pods",
        LIMIT,
        || (incrementals(store) > stored).then_some(()),
        || c.kubectl(&["get", "backupjob", "-n", NS, "-o", "yaml"]),
    );
    println!(
        "== after the upgrade: an incremental stored on node 2 ({:.1}s after the upgrade)",
        started.elapsed().as_secs_f64()
    );
}

/// A real nginx in node 2's network namespace (10.250.0.12:18080), stopped when dropped.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn fallback_route_serves(c: &Cluster) -> String {
    let web = c.run.join("web");
    std::fs::create_dir_all(web.join("root")).expect("web root");
    let body = "hello from nginx in node 2's namespace\n";
    std::fs::write(web.join("root/hello.txt"), body).expect("hello.txt");
    let w = web.display();
    std::fs::write(
        web.join("nginx.conf"),
        format!(
            "daemon off; worker_processes 1; pid {w}/nginx.pid; error_log {w}/error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {w}/body; proxy_temp_path {w}/proxy;\n\
             fastcgi_temp_path {w}/fcgi; uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;\n\
             server {{ listen 10.250.0.12:18080; root {w}/root; }} }}\n"
        ),
    )
    .expect("nginx.conf");
    let conf = web.join("nginx.conf");
    let _nginx = Nginx(
        Command::new("ip")
            .args(["netns", "exec", "zb-node2", "nginx", "-p"])
            .arg(&web)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("nginx"),
    );
    c.apply(&format!(
        r#"
apiVersion: zetaback.io/v1alpha1
kind: FallbackRoute
metadata: {{name: cluster-route, namespace: {NS}}}
spec:
  hosts: [route.zb.test]
  backends: [{{url: "http://10.250.0.12:18080"}}]
  replicas: 1
"#
    ));
    eventually(
        "the route's proxy Deployment Ready",
        LIMIT,
        || {
            let d = c.tool(
                "kubectl",
                &[
                    "get",
                    "deploy",
                    "-n",
                    NS,
                    "cluster-route-proxy",
                    "-o",
                    "json",
                ],
                None,
            );
            let d: serde_json::Value = serde_json::from_slice(&d.stdout).ok()?;
            (d["status"]["readyReplicas"] == 1).then_some(())
        },
        || {
            format!(
                "{}{}",
                c.kubectl(&["get", "fallbackroute,deploy,pods", "-n", NS, "-o", "wide"]),
                c.kubectl(&["get", "fallbackroute", "-n", NS, "-o", "yaml"])
            )
        },
    );
    let ip = c.json(&["get", "svc", "-n", NS, "cluster-route"])["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = format!("http://{ip}/hello.txt");
    let got = eventually(
        "the route's Service answers from node 1's namespace",
        LIMIT,
        || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    "zb-node1",
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                ])
                .args(["-H", "Host: route.zb.test", &url])
                .output()
                .ok()?;
            let text = text(&out.stdout);
            (out.status.success() && text == body).then_some(text)
        },
        || c.kubectl(&["logs", "-n", NS, "deploy/cluster-route-proxy", "--tail=20"]),
    );
    // Every pod, the route's proxy included, Running on the two nodes.
    println!("{}", c.kubectl(&["get", "pods", "-A", "-o", "wide"]));

    // A change of the route rolls its proxy Deployment out while a client in node 1's
    // namespace keeps asking, one request after another: no request fails.
    let (served, failed) = rollout_under_load(c, &url);
    println!("== proxy rollout under load: {served} requests served, {failed} failed");
    println!(
        "== the route's proxy pod's resources after the load loop:\n{}",
        pod_resources(c, "app.kubernetes.io/instance=cluster-route")
    );
    assert_eq!(failed, 0, "requests failed during the proxy rollout");
    c.kubectl(&[
        "delete",
        "fallbackroute",
        "-n",
        NS,
        "cluster-route",
        "--wait=true",
    ]);
    format!("{url} -> {}", got.trim())
}

/// Starts a bounded load loop in node 1's network namespace (curl after curl against `url`,
/// until a stop file appears or 180 s pass), changes the route so its proxy Deployment rolls
/// out, waits for the new pod to serve alone, stops the loop: (requests served, failed).
fn rollout_under_load(c: &Cluster, url: &str) -> (u64, u64) {
    let stop = c.run.join("load.stop");
    let _ = std::fs::remove_file(&stop);
    let script = format!(
        r#"ok=0; failed=0; end=$((SECONDS + 180))
while [ ! -e '{stop}' ] && [ $SECONDS -lt $end ]; do
  code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 -H 'Host: route.zb.test' '{url}')
  if [ "$code" = 200 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "$(date +%T.%N) $code" >&2; fi
done
echo "$ok $failed""#,
        stop = stop.display()
    );
    let load = Command::new("ip")
        .args(["netns", "exec", "zb-node1", "bash", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the load loop");
    let deploy = || c.json(&["get", "deploy", "-n", NS, "cluster-route-proxy"]);
    let before = deploy()["spec"]["template"]["metadata"]["annotations"].clone();
    let pods_before = c.kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=cluster-route",
        "-o",
        "name",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    c.kubectl(&[
        "patch",
        "fallbackroute",
        "-n",
        NS,
        "cluster-route",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"cache":{"ttl":"1m"}}}"#,
    ]);
    eventually(
        "the proxy Deployment rolled out: a new template, one updated replica, ready, alone",
        LIMIT,
        || {
            let d = deploy();
            let st = &d["status"];
            let rolled = d["spec"]["template"]["metadata"]["annotations"] != before
                && st["observedGeneration"] == d["metadata"]["generation"]
                && st["updatedReplicas"] == 1
                && st["readyReplicas"] == 1
                && st["replicas"] == 1;
            rolled.then_some(())
        },
        || c.kubectl(&["get", "deploy,rs,pods", "-n", NS, "-o", "wide"]),
    );
    // The old pod gone (it drains first), then a few more requests to the new one alone.
    eventually(
        "the old proxy pod gone",
        LIMIT,
        || {
            let now = c.kubectl(&[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/instance=cluster-route",
                "-o",
                "name",
            ]);
            (!pods_before.lines().any(|p| now.lines().any(|n| n == p))).then_some(())
        },
        || c.kubectl(&["get", "pods", "-n", NS, "-o", "wide"]),
    );
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").expect("stop file");
    let out = load.wait_with_output().expect("the load loop");
    let counts = text(&out.stdout);
    let mut n = counts.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (Some(Some(served)), Some(Some(failed))) = (n.next(), n.next()) else {
        panic!("the load loop's counts: {counts:?} {}", text(&out.stderr));
    };
    if failed > 0 {
        println!("failed requests (time, HTTP code):\n{}", text(&out.stderr));
    }
    assert!(served > 0, "no request served during the rollout");
    (served, failed)
}

/// `zfs destroy -r` of each dataset that exists, a few tries each (zfs-fuse reports a dataset
/// busy for a moment after a restore wrote it); panics if one stays. The agent holds the base
/// of the next incremental (`zetaback-base`): released first, as an operator retiring the
/// dataset would.
fn destroy_datasets(datasets: &[&str]) {
    for ds in datasets {
        for attempt in 1..=10 {
            if !zetaback_e2e::fleet::dataset_exists(ds) {
                break;
            }
            let snapshots = zetaback_e2e::fleet::run_output(
                "zfs",
                &["list", "-H", "-t", "snapshot", "-o", "name", "-r", ds],
            );
            for snapshot in text(&snapshots.stdout).lines() {
                // No hold on it: nothing to release.
                let _ = zetaback_e2e::fleet::run_output(
                    "zfs",
                    &["release", "zetaback-base", snapshot.trim()],
                );
            }
            let out = zetaback_e2e::fleet::run_output("zfs", &["destroy", "-r", ds]);
            if out.status.success() {
                break;
            }
            assert!(attempt < 10, "zfs destroy -r {ds}: {}", text(&out.stderr));
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Mutual TLS out of the box (tls.mode csr, issue 13): each agent's certificate was issued
/// through the CertificateSigningRequest API for its own node, from a token bound to that
/// node; node 2's agent serves a certificate naming `zb-node2.node.zetaback.io` that chains to
/// the CA the controller published, and does not answer plaintext HTTP.
fn assert_mutual_tls(c: &Cluster) {
    let csrs = c.json(&["get", "csr"]);
    for node in ["zb-node1", "zb-node2"] {
        let issued = csrs["items"].as_array().is_some_and(|items| {
            items.iter().any(|r| {
                r["spec"]["signerName"] == format!("zetaback.io/{NS}.{RELEASE}")
                    && r["spec"]["username"] == format!("system:serviceaccount:{NS}:zetaback-agent")
                    && r["spec"]["extra"]["authentication.kubernetes.io/node-name"][0] == node
                    && r["status"]["certificate"]
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
            })
        });
        assert!(
            issued,
            "no certificate issued to {node}'s agent through the CSR API\n{}",
            c.kubectl(&["get", "csr"])
        );
    }
    let ca = c.json(&["get", "configmap", "-n", NS, "zetaback-ca"])["data"]["ca.crt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        ca.contains("BEGIN CERTIFICATE"),
        "ConfigMap zetaback-ca: {ca:?}"
    );
    let ca_file = c.run.join("zetaback-ca.crt");
    std::fs::write(&ca_file, &ca).expect("write the CA");
    let endpoint = c.json(&["get", "zfshost", "zb-node2"])["status"]["agentEndpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (ip, port) = endpoint.split_once(':').expect("host:port");
    let curl = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                "zb-node1",
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .args(args)
            .output()
            .expect("curl")
    };
    let name = "zb-node2.node.zetaback.io";
    let verified = curl(&[
        "--cacert",
        &ca_file.to_string_lossy(),
        "--resolve",
        &format!("{name}:{port}:{ip}"),
        &format!("https://{name}:{port}/healthz"),
    ]);
    assert!(
        verified.status.success(),
        "node 2's agent over TLS, verified as {name} against the published CA: {}",
        text(&verified.stderr)
    );
    let plain = curl(&[&format!("http://{endpoint}/healthz")]);
    assert!(
        !plain.status.success(),
        "node 2's agent answered plaintext HTTP: {}",
        text(&plain.stdout)
    );
    println!(
        "== mutual TLS: both agents' certificates issued through the CSR API; node 2's agent verified as {name}; plaintext refused ({})",
        text(&plain.stderr).trim()
    );
}
