//! The OpenZFS VM as a ZfsHost of the fleet (issue 16, Build 3): the agent inside the VM
//! (`e2e/scripts/openzfs-vm.sh`: real in-kernel OpenZFS 2.3.2) serves a ZfsHost of the local
//! control plane; the controller (in-process on this host) runs a BackupPolicy whose source is
//! a dataset in the VM and whose target is a zfs-fuse file store served by an agent on this
//! host; a full and an incremental are stored and verified, then a Restore through the
//! controller brings them back into the VM's pool, and the files are compared by sha256 in the
//! guest.
//!
//! The VM's agent has a node's identity, as the chart gives it: a Node object and a Pod of the
//! agents' ServiceAccount on it (no kubelet runs it: the objects are what tokens are bound
//! to), the chart's own agent RBAC and ValidatingAdmissionPolicy, and two tokens minted with
//! TokenRequest bound to that pod: one for the apiserver (in the guest's kubeconfig, with the
//! apiserver's CA: the server certificate is checked) and one for the stores' audience. No
//! admin credential enters the VM. Between the agents the fleet runs without TLS
//! (`ZETABACK_INSECURE_PLAINTEXT`, as every fleet test; mutual TLS is tested by hostile_tls*).
//!
//! Networking: the guest reaches this host's loopback through `ssh -R` tunnels
//! ([`zetaback_e2e::openzfs_vm::Vm::tunnel`]), so the apiserver and the store are at the same
//! addresses for the guest as for everyone else.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use zetaback::api::restore::RestorePhase;
use zetaback::api::{BackupPolicy, Restore, ZfsHost, ZfsHostSpec};
use zetaback::store::StoredBackup;
use zetaback_agent::zfs::Capabilities;
use zetaback_e2e::fleet::{Fleet, HostSpec, agent_binary, create_restore, restore_finished};
use zetaback_e2e::openzfs_vm::{SOURCE_POOL, Vm};
use zetaback_e2e::{Env, eventually, identity, text};

const POLICY: &str = "openzfs";
/// How long a backup or the restore may take under emulation.
const LIMIT: Duration = Duration::from_secs(300);

/// `helm template` of the chart's agent RBAC and admission policy, release `release`.
fn agent_rbac(env: &Env, release: &str) -> String {
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        release,
        &chart.to_string_lossy(),
        "--namespace",
        release,
        "--kube-version",
        "1.37.2",
        "--show-only",
        "templates/rbac-agent.yaml",
        "--show-only",
        "templates/admission-agent.yaml",
    ]);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
}

/// What the test made outside the fleet, removed also when it fails: the agent in the VM (its
/// log printed on a failure), the datasets there, the chart's cluster-scoped objects, the VM's
/// ZfsHost, Node and agent Pod.
struct Cleanup<'a> {
    env: &'a Env,
    vm: &'a Vm,
    release: String,
    host: String,
    guest_dir: String,
    root_dataset: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let (dir, root) = (&self.guest_dir, &self.root_dataset);
        if std::thread::panicking() {
            let log = self.vm.run(&format!("tail -n 60 {dir}/agent.log"));
            eprintln!(
                "the VM's agent log (tail):\n{}{}",
                text(&log.stdout),
                text(&log.stderr)
            );
        }
        let _ = self.vm.run(&format!(
            "kill $(cat {dir}/agent.pid) 2>/dev/null; sleep 1
            rm -rf {dir}
            zfs list {root} >/dev/null 2>&1 || exit 0
            zfs list -H -o name -t snapshot -r {root} | while read -r s; do zfs release zetaback-base \"$s\" 2>/dev/null; done
            zfs destroy -r -f {root}"
        ));
        let label = format!("app.kubernetes.io/instance={}", self.release);
        self.env.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            &label,
            "--ignore-not-found",
        ]);
        self.env.kubectl(&[
            "delete",
            "zfshost,node",
            &self.host,
            "--ignore-not-found",
            "--wait=false",
        ]);
        // No kubelet finishes a graceful deletion of the agent's Pod.
        self.env.kubectl(&[
            "delete",
            "pod",
            "agent-vm",
            "-n",
            &self.release,
            "--grace-period=0",
            "--force",
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// The backups of `host`'s `dataset` the store lists (oldest first), `None` while it does not
/// answer.
async fn stored(fleet: &Fleet, host: &str, dataset: &str) -> Option<Vec<StoredBackup>> {
    let catalogue = fleet
        .store_client()
        .catalogue(&fleet.host("bak").endpoint(), host)
        .await
        .ok()?;
    Some(catalogue.of(host, dataset).cloned().collect())
}

async fn wait_for_backups(fleet: &Fleet, host: &str, dataset: &str, n: usize) -> Vec<StoredBackup> {
    eventually(
        &format!("{n} backup(s) of {host}:{dataset} stored"),
        LIMIT,
        || async { stored(fleet, host, dataset).await.filter(|b| b.len() >= n) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openzfs_vm_is_a_zfs_host_backed_up_and_restored_through_the_controller() {
    let start = Instant::now();
    let env = Env::get();
    let ns = env.namespace("ozfleet");
    let mut fleet = Fleet::start(env, &ns, &[HostSpec::store("bak")]).await;
    fleet.start_controller(|_| {}).await;
    let vm = Vm::up(&env.root, &agent_binary());
    let booted = start.elapsed();

    let host = format!("{ns}-vm");
    let root = format!("{SOURCE_POOL}/ozf{}", std::process::id());
    let dataset = format!("{root}/data");
    let guest_dir = format!("/root/ozf{}", std::process::id());
    let _cleanup = Cleanup {
        env,
        vm: &vm,
        release: ns.clone(),
        host: host.clone(),
        guest_dir: guest_dir.clone(),
        root_dataset: root.clone(),
    };

    // The node's identity, as the chart sets it up: its RBAC and admission policy, the Node,
    // the ZfsHost named after it, a Pod of the agents' ServiceAccount there and tokens bound to
    // that Pod.
    let applied = env.kubectl_stdin(&["apply", "-f", "-"], &agent_rbac(env, &ns));
    assert!(applied.status.success(), "apply: {}", text(&applied.stderr));
    identity::node(&fleet.client, &host, &ns).await;
    let mut zfs_host = ZfsHost::new(
        &host,
        ZfsHostSpec {
            node_name: host.clone(),
            datasets: serde_json::from_value(serde_json::json!({"include": [dataset]}))
                .expect("selector"),
            paused: false,
            allowed_namespaces: Vec::new(),
            restore_roots: vec![root.as_str().into()],
        },
    );
    zfs_host.metadata.labels = Some([("e2e".to_owned(), ns.clone())].into());
    let hosts: Api<ZfsHost> = Api::all(fleet.client.clone());
    hosts
        .create(&PostParams::default(), &zfs_host)
        .await
        .expect("create the VM's ZfsHost");
    let uid = identity::agent_pod(&fleet.client, &ns, "agent-vm", &host).await;
    let pod = Some(("agent-vm", uid.as_str()));
    let store_token = identity::mint(
        &fleet.client,
        &ns,
        identity::AGENT_SA,
        Some(identity::AUDIENCE),
        pod,
    )
    .await;
    let api_token = identity::mint(&fleet.client, &ns, identity::AGENT_SA, None, pod).await;

    // The guest's kubeconfig: the apiserver's address and CA, the pod-bound token, nothing
    // else.
    let admin = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    let cluster = admin.clusters[0].cluster.clone().expect("a cluster");
    let server = cluster.server.expect("a server");
    let ca = std::fs::read(cluster.certificate_authority.expect("a CA file")).expect("the CA");
    let api_port: u16 = server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {server}"));
    let store_port = fleet.host("bak").port;
    let _tunnel = vm.tunnel(&[api_port, store_port]);
    vm.sh(&format!("mkdir -p {guest_dir}"));
    vm.write(&format!("{guest_dir}/ca.crt"), &ca);
    vm.write(&format!("{guest_dir}/store.token"), store_token.as_bytes());
    vm.write(
        &format!("{guest_dir}/kubeconfig"),
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {{server: '{server}', certificate-authority: {guest_dir}/ca.crt}}
users:
- name: agent
  user: {{token: {api_token}}}
contexts:
- name: e2e
  context: {{cluster: e2e, user: agent}}
current-context: e2e
"
        )
        .as_bytes(),
    );

    // The source dataset, and the agent as the chart runs it (its stream API on the guest's
    // loopback: nothing calls it, it is a source).
    let guest_port = 20000 + std::process::id() % 10000;
    vm.sh(&format!(
        "set -e
        zfs create -p {dataset}; mkdir /{dataset}/sub
        head -c 3000000 /dev/urandom > /{dataset}/a; head -c 70000 /dev/urandom > /{dataset}/sub/b; echo one > /{dataset}/c
        cd {guest_dir}
        KUBECONFIG={guest_dir}/kubeconfig RUST_LOG=info,zetaback_agent=debug ZETABACK_INSECURE_PLAINTEXT=true \
          setsid nohup zetaback-agent --host-name={host} --node-name={host} --listen=127.0.0.1:{guest_port} \
          --status-interval=1 --last-seen-every=2 --token-file={guest_dir}/store.token \
          {} --grant-key-configmap={ns}/zetaback-grant-key > {guest_dir}/agent.log 2>&1 < /dev/null &
        echo $! > {guest_dir}/agent.pid",
        identity::store_args(&ns).join(" ")
    ));

    // Its ZfsHost status: written by the agent in the VM, with what real OpenZFS has.
    let status = eventually(
        "the VM's agent reports its dataset",
        Duration::from_secs(120),
        || async {
            let st = hosts.get(&host).await.ok()?.status?;
            st.datasets.iter().any(|d| d.name == dataset).then_some(st)
        },
    )
    .await;
    let registered = start.elapsed();
    assert_eq!(
        status.zfs_capabilities,
        Capabilities::all().names(),
        "the VM's ZfsHost does not report every OpenZFS 2.x capability"
    );
    let fuse = hosts
        .get(&fleet.name("bak"))
        .await
        .expect("the store's ZfsHost")
        .status
        .expect("its status");
    assert_ne!(
        fuse.zfs_capabilities, status.zfs_capabilities,
        "zfs-fuse and OpenZFS report the same capabilities: detection is not looking"
    );
    println!(
        "the VM's ZfsHost {host}: capabilities {:?} (zfs-fuse's: {:?}), pools {:?}",
        status.zfs_capabilities,
        fuse.zfs_capabilities,
        status.pools.iter().map(|p| &p.name).collect::<Vec<_>>()
    );

    // A full (due at once), then an incremental asked for through the CLI.
    let spec = serde_json::json!({
        "hosts": {"names": [host]},
        "datasets": {"include": [dataset]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h"},
        "target": {"host": fleet.name("bak"), "path": fleet.store_root("bak").display().to_string()},
        "verify": {"every": "1h"},
    });
    Api::<BackupPolicy>::namespaced(fleet.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &BackupPolicy::new(POLICY, serde_json::from_value(spec).expect("policy spec")),
        )
        .await
        .expect("create policy");
    let full = wait_for_backups(&fleet, &host, &dataset, 1).await[0]
        .manifest
        .clone();
    tokio::time::sleep(Duration::from_millis(2100)).await; // its own second
    vm.sh(&format!(
        "set -e; head -c 500000 /dev/urandom >> /{dataset}/a; echo two > /{dataset}/c; echo new > /{dataset}/sub/d"
    ));
    let after = vm.checksums(&format!("/{dataset}"));
    let (code, out) = fleet
        .zb(&[
            "backup",
            POLICY,
            "--host",
            &host,
            "--dataset",
            &dataset,
            "--incremental",
        ])
        .await;
    assert_eq!(code, 0, "backup --incremental: {out}");
    let backups = wait_for_backups(&fleet, &host, &dataset, 2).await;
    let incremental = backups[1].manifest.clone();
    assert_eq!(
        incremental.base_snapshot.as_deref(),
        Some(full.snapshot.as_str()),
        "the incremental is not against the full"
    );
    let ids: Vec<String> = backups.iter().map(|b| b.manifest.id.clone()).collect();
    assert!(
        ids.len() == 2 && ids[0].ends_with(".full") && ids[1].contains(".incremental."),
        "{ids:?}"
    );
    let backed_up = start.elapsed();

    // Both re-read by the store now and found as their manifests say.
    let (code, out) = fleet
        .zb(&["verify", POLICY, "--dataset", &dataset, "--timeout", "4m"])
        .await;
    assert_eq!(code, 0, "verify: {out}");
    assert!(
        out.starts_with("VERIFY OK - 1 dataset(s) verified, 0 quarantined"),
        "{out}"
    );
    let verified = stored(&fleet, &host, &dataset).await.expect("catalogue");
    assert!(
        verified.len() == 2
            && verified
                .iter()
                .all(|b| b.verification.as_ref().is_some_and(|v| v.ok)),
        "not both verified good: {:?}",
        verified
            .iter()
            .map(|b| (&b.manifest.id, &b.verification))
            .collect::<Vec<_>>()
    );
    let verified_at = start.elapsed();

    // Restored through the controller into the VM's pool, under a parent that does not
    // exist yet: lands inert (unmounted), files equal by sha256.
    let into = format!("{root}/restored/data");
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    create_restore(
        &restores,
        "back",
        serde_json::json!({"source": {"host": host, "dataset": dataset},
            "destination": {"host": host, "dataset": into}}),
    )
    .await;
    let r = restore_finished(&restores, "back", LIMIT).await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true), "{st:?}");
    assert_eq!(st.chain, ids, "the full and the incremental, in order");
    let props = vm.sh(&format!("zfs get -H -o value mounted,canmount {into}"));
    assert_eq!(
        props.lines().collect::<Vec<_>>(),
        ["no", "noauto"],
        "not received inert"
    );
    vm.sh(&format!("zfs mount {into}"));
    assert_eq!(
        vm.checksums(&format!("/{into}")),
        after,
        "the restored files differ from the dataset's at the incremental"
    );
    let restored = start.elapsed();
    println!(
        "openzfs fleet: VM up {:.0}s, ZfsHost reported {:.0}s, full+incremental stored {:.0}s, verified {:.0}s, restored {:.0}s (seconds since start)",
        booted.as_secs_f64(),
        registered.as_secs_f64(),
        backed_up.as_secs_f64(),
        verified_at.as_secs_f64(),
        restored.as_secs_f64()
    );
    drop(_tunnel);
    fleet.shutdown().await;
}
