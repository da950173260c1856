//! The OpenZFS VM (`e2e/scripts/openzfs-vm.sh`: real in-kernel OpenZFS under QEMU) seen from
//! an end-to-end test: boots it (or finds it up) with this build's agent, runs shell scripts
//! in the guest over ssh, copies files in, and opens reverse tunnels.
//!
//! Why tunnels: the local control plane and the fleet's agents listen on this host's loopback
//! and publish those addresses (the apiserver's serving certificate names 127.0.0.1, a store's
//! `status.agentEndpoint` is `127.0.0.1:<port>`), while QEMU's user-mode networking shows the
//! guest this host only as 10.0.2.2. A [`Tunnel`] (`ssh -R`) makes the guest's
//! `127.0.0.1:<port>` lead to this host's, so the guest's agent reaches the apiserver and the
//! stores at the very addresses everyone else uses, with the apiserver's certificate checked.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::text;

/// The pool on the guest's first virtio disk (sources and restores), as the openzfs tier's
/// other tests use it.
pub const SOURCE_POOL: &str = "zbvm";

/// A running OpenZFS VM.
pub struct Vm {
    env: BTreeMap<String, String>,
}

impl Vm {
    /// Boots the VM (or finds it up: `openzfs-vm.sh up` is idempotent) with `agent` copied
    /// in as /usr/local/bin/zetaback-agent, and creates pool [`SOURCE_POOL`] if missing.
    /// Panics when it cannot: a VM that cannot boot fails the test loudly.
    pub fn up(root: &Path, agent: &Path) -> Vm {
        let out = Command::new("bash")
            .arg(root.join("e2e/scripts/openzfs-vm.sh"))
            .arg("up")
            .env("ZETABACK_VM_AGENT_BIN", agent)
            .output()
            .expect("run e2e/scripts/openzfs-vm.sh up");
        assert!(
            out.status.success(),
            "the OpenZFS VM did not come up (e2e/scripts/openzfs-vm.sh up):\n{}",
            text(&out.stderr)
        );
        let env = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let vm = Vm { env };
        vm.sh(&format!(
            "zpool list {SOURCE_POOL} >/dev/null 2>&1 || zpool create -f -o cachefile=none -m /{SOURCE_POOL} {SOURCE_POOL} /dev/vdb"
        ));
        vm
    }

    /// `ssh … root@127.0.0.1` to the guest, without a command yet.
    pub fn ssh(&self) -> Command {
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
            "-o",
            "ServerAliveInterval=15",
            "root@127.0.0.1",
        ]);
        c
    }

    /// Runs a shell script in the guest.
    pub fn run(&self, script: &str) -> Output {
        self.ssh()
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .expect("ssh to the VM")
    }

    /// Runs a shell script in the guest; panics when it fails. Returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the VM: {script}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Writes `contents` to `path` in the guest (mode 0600).
    pub fn write(&self, path: &str, contents: &[u8]) {
        let mut child = self
            .ssh()
            .arg(format!(
                "umask 077 && cat > {path}.tmp && mv {path}.tmp {path}"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh to the VM");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(contents).expect("write to the VM");
        }
        let out = child.wait_with_output().expect("ssh to the VM");
        assert!(
            out.status.success(),
            "writing {path} in the VM: {}",
            text(&out.stderr)
        );
    }

    /// sha256 of every file under a directory in the guest, by relative path.
    pub fn checksums(&self, dir: &str) -> String {
        self.sh(&format!(
            "cd {dir} && find . -type f | LC_ALL=C sort | xargs -r sha256sum"
        ))
    }

    /// Makes each of `ports` on the guest's loopback lead to the same port on this host's
    /// loopback, until the tunnel is dropped. Waits until the guest can connect through it.
    pub fn tunnel(&self, ports: &[u16]) -> Tunnel {
        let mut ssh = self.ssh();
        ssh.args(["-N", "-o", "ExitOnForwardFailure=yes"]);
        for p in ports {
            ssh.args(["-R", &format!("127.0.0.1:{p}:127.0.0.1:{p}")]);
        }
        let child = ssh
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ssh -R to the VM");
        let mut tunnel = Tunnel(child);
        let start = Instant::now();
        for p in ports {
            loop {
                let probe = self.run(&format!("(exec 3<>/dev/tcp/127.0.0.1/{p}) 2>/dev/null"));
                if probe.status.success() {
                    break;
                }
                assert!(
                    matches!(tunnel.0.try_wait(), Ok(None)),
                    "ssh -R to the VM exited (port {p} taken in the guest?)"
                );
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the guest's 127.0.0.1:{p} does not lead to this host's within 60 s"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        tunnel
    }
}

/// An `ssh -R` session ([`Vm::tunnel`]); dropping it closes the tunnel.
pub struct Tunnel(Child);

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
