//! The OpenZFS tier: the agent's OpenZFS paths against real, in-kernel OpenZFS (2.3.2, Linux
//! 6.12) in a QEMU VM (e2e/scripts/openzfs-vm.sh; `e2e/test.sh openzfs` boots it). The agent
//! binary under test runs inside the VM; a file store on zfs-fuse runs on this host, which
//! the guest reaches at 10.0.2.2 (QEMU user-mode networking). A VM that cannot boot fails
//! every test here loudly.
//!
//! In the VM: pool `zbvm` on the first virtio disk (sources and restores), pool `zbrep` on the
//! second (replicas), and one target agent (`--replica-root zbrep/r`, port 7790, forwarded
//! to 127.0.0.1:$ZETABACK_VM_AGENT_PORT). Each test uses datasets named after itself and its
//! process id, and destroys them.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use zetaback_agent::transfer::{self, Endpoint, SourceDone, Upload};
use zetaback_agent::zfs::Capabilities;

/// The hold tag the agent puts on the base of the last backup (what a user sees in
/// `zfs holds`; spelled out here, not imported, so a change to it shows as a failure).
const BASE_HOLD_TAG: &str = "zetaback-base";
use zetaback_core::api::backup_policy::Compression;

struct Vm {
    env: BTreeMap<String, String>,
}

static VM: OnceLock<Vm> = OnceLock::new();

/// Boots the VM (or finds it up) with this build's agent, and prepares its pools and the
/// target agent. Panics when it cannot.
fn vm() -> &'static Vm {
    VM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/openzfs-vm.sh"))
            .arg("up")
            .env("ZETABACK_VM_AGENT_BIN", agent_bin())
            .output()
            .expect("run e2e/scripts/openzfs-vm.sh up");
        assert!(
            out.status.success(),
            "the OpenZFS VM did not come up (e2e/scripts/openzfs-vm.sh up):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let vm = Vm { env };
        vm.sh(
            "set -e
            zpool list zbvm >/dev/null 2>&1 || zpool create -f -o cachefile=none -m /zbvm zbvm /dev/vdb
            zpool list zbrep >/dev/null 2>&1 || zpool create -f -o cachefile=none -m /zbrep zbrep /dev/vdc
            zfs list zbrep/r >/dev/null 2>&1 || zfs create zbrep/r
            # The identities of agent/tests/common's Tokens: src-1's agent and the controller.
            echo test-src-1-token > /root/zb-token
            echo '[{\"token\": \"test-src-1-token\", \"hosts\": [\"src-1\"]}, {\"token\": \"test-controller-token\", \"role\": \"controller\"}]' > /root/zb-identities.json
            mkdir -p /var/lib/zb-store
            # One target agent per test run, of this build (up copied it in).
            if [ -f /run/zb-target.pid ]; then kill $(cat /run/zb-target.pid) 2>/dev/null || true; sleep 1; fi
            RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true setsid nohup /usr/local/bin/zetaback-agent --no-kube --host-name backup-vm \
              --listen 0.0.0.0:7790 --store-root /var/lib/zb-store --replica-root zbrep/r \
              --identities-file /root/zb-identities.json --idle-timeout 10 \
              > /var/log/zb-target.log 2>&1 < /dev/null &
            echo $! > /run/zb-target.pid
            for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/7790) 2>/dev/null && exit 0; sleep 0.2; done
            echo 'the target agent in the VM does not listen' >&2; tail -n 20 /var/log/zb-target.log >&2; exit 1",
        );
        vm
    })
}

impl Vm {
    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-i",
            &self.env["ZETABACK_VM_SSH_KEY"],
            "-p",
            &self.env["ZETABACK_VM_SSH_PORT"],
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "root@127.0.0.1",
        ]);
        c
    }

    /// Runs a shell script in the guest.
    fn run(&self, script: &str) -> Output {
        self.ssh()
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .expect("ssh to the VM")
    }

    /// Runs a shell script in the guest; panics when it fails. Returns stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the VM: {script}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The target agent in the VM, as this host reaches it.
    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.env["ZETABACK_VM_AGENT_PORT"])
    }

    /// `zfs get -H -o value PROPS dataset`, one value per property.
    fn props(&self, dataset: &str, props: &str) -> Vec<String> {
        self.sh(&format!("zfs get -H -o value {props} {dataset}"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Datasets in the VM destroyed (recursively) on drop.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(vm) = VM.get() {
            for ds in &self.0 {
                // The agent holds the base of the last backup: released first, or the
                // destroy fails.
                let _ = vm.run(&format!(
                    "zfs list {ds} >/dev/null 2>&1 || exit 0
                    zfs list -H -o name -t snapshot -r {ds} | while read -r s; do zfs release {BASE_HOLD_TAG} \"$s\" 2>/dev/null; done
                    zfs destroy -r -f {ds}"
                ));
            }
        }
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// A store agent on this host, its root on a zfs-fuse dataset, listening on loopback (the
/// guest reaches it at 10.0.2.2).
struct HostStore {
    _pool: Pool,
    root: std::path::PathBuf,
    _tokens: Tokens,
    agent: TargetAgent,
    port: u16,
}

impl HostStore {
    fn start(tag: &str) -> Self {
        let pool = Pool::prefixed("openzfs", tag, "256M");
        let (_, root) = pool.create("store");
        let tokens = Tokens::new();
        let port = free_port();
        // The test pool is small: no free-space reserve.
        let agent = TargetAgent::start_with(
            &tokens,
            &format!("127.0.0.1:{port}"),
            &root,
            None,
            None,
            &["--store-min-free-bytes", "0"],
        );
        Self {
            _pool: pool,
            root,
            _tokens: tokens,
            agent,
            port,
        }
    }

    /// The address the guest uses.
    fn addr_for_guest(&self) -> String {
        format!("10.0.2.2:{}", self.port)
    }
}

/// `zetaback-agent backup` in the VM (host name `src-1`); returns its output.
fn backup_in_vm(vm: &Vm, target: &str, dataset: &str, snapshot: &str, extra: &str) -> Output {
    vm.run(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true zetaback-agent backup --host-name src-1 --token-file /root/zb-token \
         --target {target} --dataset {dataset} --snapshot {snapshot} {extra}"
    ))
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "backup in the VM failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backup prints JSON")
}

/// sha256 of every file under a directory in the VM, by relative path.
fn checksums_in_vm(vm: &Vm, dir: &str) -> String {
    vm.sh(&format!(
        "cd {dir} && find . -type f | LC_ALL=C sort | xargs -r sha256sum"
    ))
}

#[test]
fn capabilities_detected_on_real_openzfs() {
    let vm = vm();
    // `zfs` alone prints its usage (what the agent reads at start-up) and exits 2.
    let usage = vm.sh("zfs 2>&1 || true");
    let caps = Capabilities::from_usage(&usage);
    assert_eq!(
        caps,
        Capabilities::all(),
        "detected {:?} from the real usage",
        caps.names()
    );
    assert!(vm.sh("zfs version").starts_with("zfs-2.3.2"));
}

#[test]
fn backup_to_a_zfs_fuse_store_and_restore_back() {
    let vm = vm();
    let store = HostStore::start("vbr");
    let ds = format!("zbvm/{}", unique("br"));
    let into = format!("zbvm/{}", unique("brback"));
    let _cleanup = Cleanup(vec![ds.clone(), into.clone()]);
    vm.sh(&format!(
        "set -e; zfs create {ds}; mkdir /{ds}/sub
         head -c 3000000 /dev/urandom > /{ds}/a; head -c 70000 /dev/urandom > /{ds}/sub/b; echo hello > /{ds}/c"
    ));
    let before = checksums_in_vm(vm, &format!("/{ds}"));
    let out = backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-1",
        &format!("--target-path {}", store.root.display()),
    );
    let outcome = json_of(&out);
    let id = outcome["backupId"].as_str().expect("backupId").to_owned();
    assert!(
        !list(&store.root).is_empty(),
        "nothing stored on the host's zfs-fuse store"
    );
    let restore = vm.run(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true zetaback-agent restore --token-file /root/zb-token --from {} --host src-1 \
         --dataset {ds} --backup {id} --into {into}/copy",
        store.addr_for_guest()
    ));
    assert!(
        restore.status.success(),
        "restore in the VM failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    // Received inert: unmounted, noauto, nosuid, nodev; the mountpoint inherited.
    let copy = format!("{into}/copy");
    assert_eq!(
        vm.props(&copy, "mounted,canmount,setuid,devices"),
        ["no", "noauto", "off", "off"]
    );
    assert_eq!(
        vm.props(&copy, "mountpoint"),
        [format!("/{copy}")],
        "the mountpoint is not the inherited one"
    );
    vm.sh(&format!("zfs mount {copy}"));
    assert_eq!(checksums_in_vm(vm, &format!("/{copy}")), before);
}

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

/// A stream made with `zfs send -p` in the VM from a dataset whose mountpoint is /etc
/// (created unmounted, so the VM's /etc is untouched): the stream carries mountpoint=/etc.
fn etc_stream(vm: &Vm, ds: &str) -> Vec<u8> {
    vm.sh(&format!(
        "set -e; zfs create -u -o mountpoint=/etc -o setuid=on -o devices=on {ds}; zfs snapshot {ds}@zb-1700000000"
    ));
    let out = vm
        .ssh()
        .arg(format!("zfs send -p {ds}@zb-1700000000"))
        .stdin(Stdio::null())
        .output()
        .expect("ssh zfs send -p");
    assert!(out.status.success(), "zfs send -p failed");
    out.stdout
}

fn upload_spec(dataset: &str, receive_into: Option<String>) -> Upload {
    Upload {
        host: "src-1".into(),
        dataset: dataset.into(),
        id: "1700000000.full".parse().expect("id"),
        snapshot: "zb-1700000000".into(),
        base_snapshot: None,
        compression: Compression::None,
        receive_into,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(60),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}

/// No ZFS file system is mounted on the VM's /etc, and /etc is still the real one.
fn etc_untouched(vm: &Vm) {
    let mounts = vm.sh("cat /proc/mounts");
    assert!(
        !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/etc")),
        "something is mounted on /etc: {mounts}"
    );
    vm.sh("test -s /etc/passwd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_stream_carrying_mountpoint_etc_lands_unmounted() {
    let vm = vm();
    let store = HostStore::start("vet");
    let src = format!("zbvm/{}", unique("etc"));
    let into = format!("zbvm/{}", unique("etcback"));
    let _cleanup = Cleanup(vec![src.clone(), into.clone()]);
    let stream = etc_stream(vm, &src);
    // What a malicious source does: upload it as its backup.
    transfer::upload(
        &transfer::client(),
        &Endpoint::new(&store.agent.addr, "test-src-1-token"),
        &upload_spec(&src, None),
        Cursor::new(stream),
        ok_done(),
    )
    .await
    .expect("the file store takes the stream");
    let restore = vm.run(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true zetaback-agent restore --token-file /root/zb-token --from {} --host src-1 \
         --dataset {src} --backup 1700000000.full --into {into}/copy",
        store.addr_for_guest()
    ));
    etc_untouched(vm);
    assert!(
        restore.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let copy = format!("{into}/copy");
    assert_eq!(
        vm.props(&copy, "mounted,mountpoint,canmount,setuid,devices"),
        [
            "no".to_owned(),
            format!("/{into}/copy"),
            "noauto".into(),
            "off".into(),
            "off".into()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_of_a_stream_carrying_mountpoint_etc_lands_unmounted_and_readonly() {
    let vm = vm();
    let src = format!("zbvm/{}", unique("etcr"));
    let _cleanup = Cleanup(vec![src.clone(), format!("zbrep/r/src-1/{src}")]);
    let stream = etc_stream(vm, &src);
    let put = transfer::upload(
        &transfer::client(),
        &Endpoint::new(&vm.target(), "test-src-1-token"),
        &upload_spec(&src, Some("zbrep/r".into())),
        Cursor::new(stream),
        ok_done(),
    )
    .await;
    etc_untouched(vm);
    let put = put.expect("the replica is received");
    let replica = put.response.replica.expect("a replica");
    assert_eq!(
        vm.props(
            &replica,
            "mounted,mountpoint,canmount,setuid,devices,readonly"
        ),
        [
            "no".to_owned(),
            format!("/{replica}"),
            "noauto".into(),
            "off".into(),
            "off".into(),
            "on".into()
        ]
    );
    // The parents the target made for it are not mounted either.
    assert_eq!(vm.props("zbrep/r/src-1", "mounted,canmount"), ["no", "off"]);
}

/// Starts a replica backup of `snapshot` at a crawl and kills the source agent (SIGKILL) once
/// the target's `zfs receive` has read more than a megabyte: the target keeps a partial
/// receive and its resume token. Returns the token.
fn interrupted_replica_backup(vm: &Vm, ds: &str, snapshot: &str) -> String {
    vm.sh(&format!(
        "set -e
        RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true setsid nohup zetaback-agent backup --host-name src-1 \
          --token-file /root/zb-token --target 127.0.0.1:7790 --dataset {ds} --snapshot {snapshot} \
          --target-dataset zbrep/r --bandwidth-limit 400000 --idle-timeout 30 \
          > /var/log/zb-slow-source.log 2>&1 < /dev/null &
        src=$!
        for i in $(seq 1 600); do
          recv=$(pgrep -f '[z]fs receive.*zbrep/r/src-1/{ds}' | head -n1)
          if [ -n \"$recv\" ] && [ \"$(awk '/^rchar/ {{print $2}}' /proc/$recv/io 2>/dev/null || echo 0)\" -gt 1000000 ]; then
            kill -9 $src; exit 0
          fi
          kill -0 $src 2>/dev/null || {{ echo 'the slow source ended by itself' >&2; cat /var/log/zb-slow-source.log >&2; exit 1; }}
          sleep 0.2
        done
        kill -9 $src; echo 'the receive never got a megabyte' >&2; exit 1"
    ));
    let replica = format!("zbrep/r/src-1/{ds}");
    let mut token = String::new();
    for _ in 0..40 {
        token = vm
            .sh(&format!(
                "zfs get -H -p -o value receive_resume_token {replica} 2>/dev/null || true"
            ))
            .trim()
            .to_owned();
        if token.len() > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        token.len() > 1,
        "no resume token on {replica} after the interrupted transfer"
    );
    token
}

#[test]
fn an_interrupted_transfer_resumes_from_its_token() {
    let vm = vm();
    let ds = format!("zbvm/{}", unique("res"));
    let _cleanup = Cleanup(vec![ds.clone(), format!("zbrep/r/src-1/{ds}")]);
    vm.sh(&format!(
        "set -e; zfs create -o compression=off {ds}; head -c 12000000 /dev/urandom > /{ds}/big"
    ));
    let token = interrupted_replica_backup(vm, &ds, "zb-1");
    let decoded = vm.sh(&format!("zfs send -nvt {token} 2>&1"));
    assert!(
        decoded.contains(&format!("toname = {ds}@zb-1")),
        "{decoded}"
    );
    let full: u64 = vm
        .sh(&format!(
            "zfs send -nP {ds}@zb-1 | awk '$1 == \"size\" {{print $2}}'"
        ))
        .trim()
        .parse()
        .expect("send -nP size");
    let out = backup_in_vm(
        vm,
        "127.0.0.1:7790",
        &ds,
        "zb-1",
        "--target-dataset zbrep/r",
    );
    let outcome = json_of(&out);
    let resent = outcome["bytes"].as_u64().expect("bytes");
    eprintln!("resume: re-sent {resent} bytes of a {full}-byte stream");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming an interrupted transfer"),
        "the second attempt did not resume"
    );
    assert!(
        resent < full,
        "re-sent {resent} bytes, the whole stream is {full}"
    );
    assert_remainder_estimate(&outcome, resent, full);
    let replica = format!("zbrep/r/src-1/{ds}@zb-1");
    assert_eq!(
        vm.sh(&format!("zfs get -H -p -o value guid {replica}")),
        vm.sh(&format!("zfs get -H -p -o value guid {ds}@zb-1")),
        "the replica is not the source's snapshot"
    );
}

#[test]
fn a_resume_token_naming_another_snapshot_is_refused() {
    let vm = vm();
    let ds = format!("zbvm/{}", unique("tok"));
    let _cleanup = Cleanup(vec![ds.clone(), format!("zbrep/r/src-1/{ds}")]);
    vm.sh(&format!(
        "set -e; zfs create -o compression=off {ds}; head -c 12000000 /dev/urandom > /{ds}/big"
    ));
    // The target now holds a token for @zb-1; the next job sends @zb-2, and the target
    // answers with @zb-1's token (as a forging target would answer with any).
    let token = interrupted_replica_backup(vm, &ds, "zb-1");
    vm.sh(&format!("echo more > /{ds}/more"));
    let out = backup_in_vm(
        vm,
        "127.0.0.1:7790",
        &ds,
        "zb-2",
        // The target discards the partial receive (`receive -A`) before it reads the new
        // stream: slow under emulation, so a longer idle timeout than the default 30 s.
        "--target-dataset zbrep/r --idle-timeout 180",
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcome = json_of(&out);
    assert!(
        stderr.contains("refusing the target's resume token"),
        "the token for @zb-1 was not refused: {stderr}"
    );
    assert!(!token.is_empty());
    let replica = format!("zbrep/r/src-1/{ds}");
    assert_eq!(
        vm.sh(&format!("zfs get -H -p -o value guid {replica}@zb-2")),
        vm.sh(&format!("zfs get -H -p -o value guid {ds}@zb-2")),
        "the replica does not hold the job's snapshot: {outcome}"
    );
    assert!(
        !vm.run(&format!("zfs list {replica}@zb-1")).status.success(),
        "the target got the snapshot its token named"
    );
}

/// `zfs holds -H` of `ds@snap` in the VM: its hold tags.
fn holds(vm: &Vm, ds: &str, snap: &str) -> Vec<String> {
    vm.sh(&format!("zfs holds -H {ds}@{snap}"))
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_base_of_the_last_backup_stays_held_until_a_newer_backup_replaces_it() {
    let vm = vm();
    let store = HostStore::start("vhold");
    let ds = format!("zbvm/{}", unique("hold"));
    let _cleanup = Cleanup(vec![ds.clone()]);
    let to_store = format!("--target-path {}", store.root.display());
    vm.sh(&format!(
        "set -e; zfs create {ds}; head -c 200000 /dev/urandom > /{ds}/a"
    ));
    json_of(&backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-1",
        &to_store,
    ));
    assert_eq!(
        holds(vm, &ds, "zb-1"),
        [BASE_HOLD_TAG],
        "the base of the next incremental is not held after the backup"
    );
    let destroy = vm.run(&format!("zfs destroy {ds}@zb-1"));
    assert!(
        !destroy.status.success(),
        "the held base of the next incremental could be destroyed"
    );
    vm.sh(&format!("echo more > /{ds}/b"));
    json_of(&backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-2",
        &format!("{to_store} --base-snapshot zb-1"),
    ));
    assert_eq!(
        holds(vm, &ds, "zb-2"),
        [BASE_HOLD_TAG],
        "the newer backup's snapshot is not held"
    );
    assert!(
        holds(vm, &ds, "zb-1").is_empty(),
        "the old base is still held after a newer backup replaced it: {:?}",
        holds(vm, &ds, "zb-1")
    );
    // Released: the user (or the agent's pruning) can destroy it now.
    vm.sh(&format!("zfs destroy {ds}@zb-1"));
}

#[test]
fn an_incremental_is_sent_from_the_bookmark_after_its_base_snapshot_was_destroyed() {
    let vm = vm();
    let store = HostStore::start("vbook");
    let ds = format!("zbvm/{}", unique("book"));
    let into = format!("zbvm/{}", unique("bookback"));
    let _cleanup = Cleanup(vec![ds.clone(), into.clone()]);
    let to_store = format!("--target-path {}", store.root.display());
    vm.sh(&format!(
        "set -e; zfs create {ds}; head -c 300000 /dev/urandom > /{ds}/a"
    ));
    json_of(&backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-1",
        &to_store,
    ));
    // The source's own retention (or a user) destroys the base snapshot.
    vm.sh(&format!(
        "set -e; zfs release {BASE_HOLD_TAG} {ds}@zb-1 2>/dev/null || true; zfs destroy {ds}@zb-1
         head -c 100000 /dev/urandom > /{ds}/b"
    ));
    let before = checksums_in_vm(vm, &format!("/{ds}"));
    let out = backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-2",
        &format!("{to_store} --base-snapshot zb-1"),
    );
    let outcome = json_of(&out);
    let id = outcome["backupId"].as_str().expect("backupId").to_owned();
    assert!(
        id.contains(".incremental."),
        "not stored as an incremental: {id}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{ds}#zb-1")),
        "the log does not say the bookmark was the base"
    );
    // The chain (the full, then the incremental sent from the bookmark) restores the data.
    let restore = vm.run(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true zetaback-agent restore --token-file /root/zb-token --from {} --host src-1 \
         --dataset {ds} --backup {id} --into {into}/copy",
        store.addr_for_guest()
    ));
    assert!(
        restore.status.success(),
        "restore of the chain failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let copy = format!("{into}/copy");
    vm.sh(&format!("zfs mount {copy}"));
    assert_eq!(checksums_in_vm(vm, &format!("/{copy}")), before);
}

/// The stored files (not manifests, not temporary files) under a store directory, recursively.
fn stored_streams(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the store").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            out.extend(stored_streams(&path));
        } else if !name.ends_with(".json") && !name.starts_with('.') {
            out.push(path);
        }
    }
    out
}

/// `DMU_BACKUP_FEATURE_RAW` (OpenZFS include/sys/zfs_ioctl.h): the stream's blocks are sent
/// as they are on disk, still encrypted.
const FEATURE_RAW: u64 = 1 << 24;
/// `DMU_BACKUP_MAGIC`, in a stream's DRR_BEGIN record.
const BACKUP_MAGIC: u64 = 0x2F5B_ACBAC;

/// The feature flags of a stream's first record (DRR_BEGIN: `drr_type` 0, `drr_magic` at
/// byte 8, `drr_versioninfo` at byte 16 holding the flags in bits 2..32), in the sender's byte
/// order (the VM is x86-64: little-endian).
fn begin_feature_flags(stream: &[u8]) -> u64 {
    let word = |at: usize| u64::from_le_bytes(stream[at..at + 8].try_into().expect("8 bytes"));
    assert!(
        stream.len() > 24,
        "the stored stream is {} bytes",
        stream.len()
    );
    assert_eq!(
        u32::from_le_bytes(stream[0..4].try_into().expect("4 bytes")),
        0,
        "the stored stream does not begin with DRR_BEGIN (is it compressed?)"
    );
    assert_eq!(word(8), BACKUP_MAGIC, "no DMU_BACKUP_MAGIC in DRR_BEGIN");
    (word(16) >> 2) & ((1 << 30) - 1)
}

#[test]
fn an_encrypted_dataset_is_sent_raw_and_the_store_never_sees_the_key() {
    let vm = vm();
    let store = HostStore::start("venc");
    let ds = format!("zbvm/{}", unique("enc"));
    let into = format!("zbvm/{}", unique("encback"));
    let _cleanup = Cleanup(vec![ds.clone(), into.clone()]);
    let passphrase = format!("zb-passphrase-{}", std::process::id());
    // Text the store must never see: were it sent decrypted, it would be in the stream
    // verbatim (no compression on the dataset, none in the transfer).
    let marker = format!("ZETABACK-PLAINTEXT-{}", std::process::id());
    vm.sh(&format!(
        "set -e
        echo {passphrase} | zfs create -o encryption=on -o keyformat=passphrase -o keylocation=prompt -o compression=off {ds}
        for i in $(seq 1 2000); do echo {marker}-$i; done > /{ds}/secret.txt
        head -c 500000 /dev/urandom > /{ds}/random"
    ));
    let before = checksums_in_vm(vm, &format!("/{ds}"));
    let out = backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-1",
        &format!("--target-path {} --compression none", store.root.display()),
    );
    let outcome = json_of(&out);
    let id = outcome["backupId"].as_str().expect("backupId").to_owned();
    let streams = stored_streams(&store.root);
    assert_eq!(streams.len(), 1, "stored: {streams:?}");
    let stream = std::fs::read(&streams[0]).expect("read the stored stream");
    let flags = begin_feature_flags(&stream);
    let plaintext = stream.windows(marker.len()).any(|w| w == marker.as_bytes());
    let key_in_stream = stream
        .windows(passphrase.len())
        .any(|w| w == passphrase.as_bytes());
    eprintln!(
        "encrypted backup: {} bytes stored, DRR_BEGIN feature flags {flags:#x}, plaintext in it: {plaintext}",
        stream.len()
    );
    assert!(
        flags & FEATURE_RAW != 0,
        "the stored stream is not raw (feature flags {flags:#x}): it was sent decrypted"
    );
    assert!(!plaintext, "the file's plaintext is in the stored stream");
    assert!(!key_in_stream, "the passphrase is in the stored stream");
    let mut manifest = streams[0].clone().into_os_string();
    manifest.push(".json");
    let manifest = std::fs::read_to_string(&manifest).expect("read the manifest");
    assert!(
        !manifest.contains(&passphrase) && !manifest.contains(&marker),
        "the manifest holds key material or plaintext: {manifest}"
    );
    let recorded = zetaback_core::store::Manifest::from_json(manifest.as_bytes())
        .expect("the manifest parses");
    assert!(
        recorded.raw,
        "the manifest does not record the raw send: {manifest}"
    );
    // The store checks that claim against the stream: this real raw stream sent again as not
    // raw (another backup id) is refused before anything is stored.
    let mut claimed_plain = upload_spec(&ds, None);
    claimed_plain.raw = false;
    let sent = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(transfer::upload(
            &transfer::client(),
            &Endpoint::new(&store.agent.addr, "test-src-1-token"),
            &claimed_plain,
            Cursor::new(stream.clone()),
            ok_done(),
        ));
    match sent {
        Err(transfer::TransferError::Rejected { status, message }) => {
            assert_eq!(status, http::StatusCode::BAD_REQUEST, "{message}");
            assert!(message.contains("DMU_BACKUP_FEATURE_RAW"), "{message}");
        }
        Err(e) => panic!("a raw stream sent as not raw: expected the refusal, got {e}"),
        Ok(done) => panic!(
            "the store took a raw stream sent as not raw: {}",
            done.response.backup_id
        ),
    }
    assert_eq!(
        stored_streams(&store.root).len(),
        1,
        "something more was stored"
    );
    // Restored, it is still encrypted and locked: the key was never part of the backup.
    let restore = vm.run(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true zetaback-agent restore --token-file /root/zb-token --from {} --host src-1 \
         --dataset {ds} --backup {id} --into {into}/copy",
        store.addr_for_guest()
    ));
    assert!(
        restore.status.success(),
        "restore of the raw stream failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let copy = format!("{into}/copy");
    assert_eq!(
        vm.props(&copy, "encryption,keystatus,mounted"),
        ["aes-256-gcm", "unavailable", "no"],
        "the restored copy is not the encrypted, locked dataset"
    );
    vm.sh(&format!(
        "echo {passphrase} | zfs load-key {copy} && zfs mount {copy}"
    ));
    assert_eq!(checksums_in_vm(vm, &format!("/{copy}")), before);
}

/// How far `zfs send -nP`'s estimate may be from the stream actually stored: OpenZFS
/// estimates from the blocks' sizes, without the records' headers.
const ESTIMATE_TOLERANCE: f64 = 0.10;

#[test]
fn the_send_estimate_is_close_to_the_stream_actually_stored() {
    let vm = vm();
    let store = HostStore::start("vest");
    let ds = format!("zbvm/{}", unique("est"));
    let _cleanup = Cleanup(vec![ds.clone()]);
    vm.sh(&format!(
        "set -e; zfs create -o compression=off {ds}; mkdir /{ds}/d
         head -c 2000000 /dev/urandom > /{ds}/a
         for i in $(seq 1 40); do head -c 20000 /dev/urandom > /{ds}/d/f$i; done"
    ));
    let out = backup_in_vm(
        vm,
        &store.addr_for_guest(),
        &ds,
        "zb-1",
        &format!("--target-path {} --compression none", store.root.display()),
    );
    let outcome = json_of(&out);
    let estimate = outcome["estimatedBytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no estimate on OpenZFS: {outcome}"));
    let streams = stored_streams(&store.root);
    assert_eq!(streams.len(), 1, "stored: {streams:?}");
    let stored = std::fs::metadata(&streams[0]).expect("stored stream").len();
    let ratio = estimate as f64 / stored as f64;
    eprintln!(
        "estimate: zfs send -nP said {estimate} bytes, {stored} bytes stored (ratio {ratio:.4})"
    );
    assert!(
        (ratio - 1.0).abs() <= ESTIMATE_TOLERANCE,
        "the estimate {estimate} is not within {ESTIMATE_TOLERANCE} of the {stored} bytes stored"
    );
    assert_eq!(
        outcome["streamBytes"].as_u64(),
        Some(stored),
        "the bytes counted as sent are not the stored stream (no compression): {outcome}"
    );
}

/// A TCP relay on this host between the guest's source agent (which dials 10.0.2.2:port) and
/// the guest's target agent (forwarded to this host's loopback). [`Link::cut`] turns it into
/// a black hole: every connection stays open but nothing more moves either way, and no FIN
/// or RST is sent (a pulled cable, not a closed socket). New connections after
/// [`Link::restore`] flow again.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    fn start(to: String) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicU64::new(0));
        let (c, r) = (cut.clone(), relayed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(upstream) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                // A connection made while cut is held open and never served.
                for (mut from, mut into, count) in [
                    (conn.try_clone(), upstream.try_clone(), true),
                    (upstream.try_clone(), conn.try_clone(), false),
                ]
                .into_iter()
                .filter_map(|(a, b, n)| Some((a.ok()?, b.ok()?, n)))
                {
                    let (c, r) = (c.clone(), r.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = vec![0u8; 16384];
                        loop {
                            while c.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Read just before the cut: dropped, like bytes on the wire.
                            if c.load(Ordering::SeqCst) {
                                continue;
                            }
                            if into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if count {
                                r.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                        // Held open while cut: a cut link closes nothing.
                        while c.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { port, cut, relayed }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes relayed from the source to the target so far.
    fn relayed(&self) -> u64 {
        self.relayed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn a_transfer_cut_by_the_network_resumes_from_its_token() {
    let vm = vm();
    let ds = format!("zbvm/{}", unique("cut"));
    let replica = format!("zbrep/r/src-1/{ds}");
    let _cleanup = Cleanup(vec![ds.clone(), replica.clone()]);
    vm.sh(&format!(
        "set -e; zfs create -o compression=off {ds}; head -c 8000000 /dev/urandom > /{ds}/big"
    ));
    let full: u64 = vm
        .sh(&format!(
            "zfs snapshot {ds}@zb-1 && zfs set zetaback.io:managed=on {ds}@zb-1 && zfs send -nP {ds}@zb-1 | awk '$1 == \"size\" {{print $2}}'"
        ))
        .trim()
        .parse()
        .expect("send -nP size");
    let link = Link::start(vm.target());
    let via = format!("10.0.2.2:{}", link.port);
    // A slow source through the link; the link is cut once two megabytes of the stream
    // crossed it (counted here, at the link: what the guest has read lags behind, in socket
    // buffers). The source is not killed: it gives up on its own (no progress).
    vm.sh(&format!(
        "RUST_LOG=info ZETABACK_INSECURE_PLAINTEXT=true setsid nohup zetaback-agent backup --host-name src-1 \
          --token-file /root/zb-token --target {via} --dataset {ds} --snapshot zb-1 \
          --target-dataset zbrep/r --bandwidth-limit 400000 --idle-timeout 15 --answer-timeout 15 --compression none \
          > /var/log/zb-cut-source.log 2>&1 < /dev/null &
        echo $! > /run/zb-cut-source.pid"
    ));
    let waited = std::time::Instant::now();
    while link.relayed() < 2_000_000 {
        assert!(
            waited.elapsed() < Duration::from_secs(600),
            "two megabytes never crossed the link: {}",
            vm.sh("cat /var/log/zb-cut-source.log")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    link.cut();
    let before_cut = link.relayed();
    // The source ends by itself, failed; the target gives up its side and keeps the token.
    let source_log = vm.sh(
        "for i in $(seq 1 300); do kill -0 $(cat /run/zb-cut-source.pid) 2>/dev/null || break; sleep 0.5; done
         kill -0 $(cat /run/zb-cut-source.pid) 2>/dev/null && { echo 'the source never gave up' >&2; exit 1; }
         cat /var/log/zb-cut-source.log",
    );
    // Cut before its last byte left, the source fails on no progress; when the rest of the
    // stream fit in the guest's and user-mode networking's buffers after the cut, the whole
    // stream counts as sent and the answer timeout ends the wait (the catalogue lookup that
    // follows cannot reach the target either).
    assert!(
        source_log.contains("no progress for 15s")
            || source_log.contains("no answer 15s after the whole stream was sent"),
        "the source did not fail on the cut link: {source_log}"
    );
    // The target gives up its side (its idle timeout, 10 s) and keeps the partial receive.
    let token = vm
        .sh(&format!(
            "for i in $(seq 1 240); do
               t=$(zfs get -H -p -o value receive_resume_token {replica} 2>/dev/null || true)
               [ ${{#t}} -gt 1 ] && {{ echo \"$t\"; exit 0; }}
               sleep 0.5
             done"
        ))
        .trim()
        .to_owned();
    assert!(
        token.len() > 1,
        "no resume token on {replica} after the cut"
    );
    link.restore();
    let out = backup_in_vm(
        vm,
        &via,
        &ds,
        "zb-1",
        "--target-dataset zbrep/r --compression none",
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcome = json_of(&out);
    let resent = outcome["bytes"].as_u64().expect("bytes");
    eprintln!(
        "cut: {before_cut} bytes crossed the link before the cut; after it was restored, re-sent {resent} bytes of a {full}-byte stream"
    );
    assert!(
        stderr.contains("resuming an interrupted transfer"),
        "the attempt after the cut did not resume: {stderr}"
    );
    assert!(
        resent < full,
        "re-sent {resent} bytes, the whole stream is {full}"
    );
    assert_remainder_estimate(&outcome, resent, full);
    assert_eq!(
        vm.sh(&format!("zfs get -H -p -o value guid {replica}@zb-1")),
        vm.sh(&format!("zfs get -H -p -o value guid {ds}@zb-1")),
        "the replica is not the source's snapshot"
    );
}

/// The progress estimate of a resumed send is the remainder's (`zfs send -nP -t`, within 15 %
/// of what was re-sent), not the whole stream's.
fn assert_remainder_estimate(outcome: &serde_json::Value, resent: u64, full: u64) {
    let estimate = outcome["estimatedBytes"].as_u64().expect("estimatedBytes");
    eprintln!("resumed: estimated {estimate} bytes (zfs send -nP -t), re-sent {resent}");
    assert!(
        estimate.abs_diff(resent) * 100 <= resent * 15,
        "the resumed send's estimate {estimate} is not the remainder's ({resent} re-sent; the whole stream is {full})"
    );
}
