//! Helpers for tests on real ZFS (zfs-fuse file-backed pools via e2e/scripts/zfs.sh).
//! A missing zfs-fuse fails the test loudly; nothing is skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `--idle-timeout` of the test agents: short enough that a cut link is noticed in a test,
/// long enough that zfs-fuse (one daemon serving every test at once) stalling a stream for a
/// few seconds under load is not taken for a dead peer (3 s failed `agents_zfs` at load ~15).
pub const IDLE_TIMEOUT_SECS: &str = "8";

pub mod kube_identity;
pub mod raw_put;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn zfs_sh(args: &[&str]) -> String {
    let out = Command::new(repo_root().join("e2e/scripts/zfs.sh"))
        .args(args)
        .output()
        .expect("run e2e/scripts/zfs.sh");
    assert!(
        out.status.success(),
        "e2e/scripts/zfs.sh {args:?} failed (is zfs-fuse installed? apt-get install zfs-fuse): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A file-backed pool, destroyed on drop.
pub struct Pool {
    pub name: String,
    pub mountpoint: PathBuf,
}

impl Pool {
    pub fn new(tag: &str) -> Self {
        Self::with_size(tag, "256M")
    }

    pub fn with_size(tag: &str, size: &str) -> Self {
        let name = format!(
            "zbt{tag}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        zfs_sh(&["destroy", &name]);
        let mountpoint = PathBuf::from(zfs_sh(&["pool", &name, size]));
        Self { name, mountpoint }
    }

    /// A pool named `<prefix><tag><pid>x<n>` (a prefix other than the default `zbt`).
    pub fn prefixed(prefix: &str, tag: &str, size: &str) -> Self {
        let name = format!(
            "{prefix}{tag}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        zfs_sh(&["destroy", &name]);
        let mountpoint = PathBuf::from(zfs_sh(&["pool", &name, size]));
        Self { name, mountpoint }
    }

    /// `zfs create` a child dataset (through `zfs.sh dataset`, one creation at a time) and
    /// return (name, mountpoint).
    pub fn create(&self, child: &str) -> (String, PathBuf) {
        let ds = format!("{}/{child}", self.name);
        zfs_sh(&["dataset", &ds]);
        (ds, self.mountpoint.join(child))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // zfs-fuse reports a pool busy for a moment after receives and unmounts: retry.
        for _ in 0..40 {
            let _ = Command::new(repo_root().join("e2e/scripts/zfs.sh"))
                .args(["destroy", &self.name])
                .output();
            let listed = Command::new("zpool")
                .args(["list", "-H", &self.name])
                .output()
                .is_ok_and(|o| o.status.success());
            if !listed {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        eprintln!("could not destroy test pool {}", self.name);
    }
}

/// Runs `zfs args` and returns stdout; panics on failure.
pub fn zfs(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().expect("run zfs");
    assert!(
        out.status.success(),
        "zfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `n` files of pseudo-random content (deterministic per seed) under `dir`.
pub fn write_files(dir: &Path, seed: u64, n: usize, size: usize) {
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in 0..n {
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(size);
        let path = if i % 2 == 0 {
            dir.join(format!("f{seed}-{i}.bin"))
        } else {
            dir.join("sub").join(format!("g{seed}-{i}.bin"))
        };
        std::fs::write(path, &data).expect("write file");
    }
}

/// sha256 of every regular file under `dir`, by relative path (`.zfs` excluded).
pub fn checksums(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n == ".zfs") {
                    continue;
                }
                stack.push(p);
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read");
                let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                out.insert(rel, hex::encode(Sha256::digest(&data)));
            }
        }
    }
    out
}

/// The zfs mountpoint of a dataset.
pub fn mountpoint(dataset: &str) -> PathBuf {
    PathBuf::from(zfs(&["get", "-H", "-o", "value", "mountpoint", dataset]).trim())
}

/// The agent binary under test.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zetaback-agent")
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The callers of a store agent started without Kubernetes: the source host `src-1`'s agent
/// and the controller, each with a token of its own, and the store's identities file naming
/// them (`--identities-file`; in Kubernetes the store asks the apiserver instead).
pub struct Tokens {
    pub dir: tempfile::TempDir,
    /// The token of host `src-1`'s agent.
    pub source: PathBuf,
    /// The controller's token.
    pub admin: PathBuf,
    /// The store's table of both.
    pub identities: PathBuf,
    /// With Kubernetes ([`kube_identity::kube_identities`]): the agents' arguments naming the
    /// ServiceAccounts their stores accept (tokens checked by TokenReview).
    pub kube_args: Vec<String>,
}

impl Tokens {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("token");
        let admin = dir.path().join("controller-token");
        let identities = dir.path().join("identities.json");
        std::fs::write(&source, "test-src-1-token\n").expect("token");
        std::fs::write(&admin, "test-controller-token\n").expect("token");
        std::fs::write(
            &identities,
            r#"[{"token": "test-src-1-token", "hosts": ["src-1"]},
                {"token": "test-controller-token", "role": "controller"}]"#,
        )
        .expect("identities");
        Self {
            dir,
            source,
            admin,
            identities,
            kube_args: Vec::new(),
        }
    }
}

/// A target agent process (`zetaback-agent --no-kube`), killed on drop.
pub struct TargetAgent {
    pub child: std::process::Child,
    pub addr: String,
    args: Vec<String>,
    netns: Option<String>,
}

impl TargetAgent {
    pub fn start(
        tokens: &Tokens,
        addr: &str,
        store_root: &Path,
        replica_root: Option<&str>,
        netns: Option<&str>,
    ) -> Self {
        Self::start_with(tokens, addr, store_root, replica_root, netns, &[])
    }

    /// As [`TargetAgent::start`], with more arguments.
    pub fn start_with(
        tokens: &Tokens,
        addr: &str,
        store_root: &Path,
        replica_root: Option<&str>,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "--no-kube".to_owned(),
            "--host-name".into(),
            "backup-1".into(),
            "--listen".into(),
            addr.into(),
            "--store-root".into(),
            store_root.display().to_string(),
            "--identities-file".into(),
            tokens.identities.display().to_string(),
            "--idle-timeout".into(),
            IDLE_TIMEOUT_SECS.into(),
        ];
        if let Some(r) = replica_root {
            args.push("--replica-root".into());
            args.push(r.into());
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut t = Self {
            child: spawn_agent(&args, netns),
            addr: addr.to_owned(),
            args,
            netns: netns.map(str::to_owned),
        };
        t.wait_ready();
        t
    }

    fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("target agent exited early: {status}");
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("target agent did not listen on {}", self.addr);
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_agent(&self.args, self.netns.as_deref());
        self.wait_ready();
    }
}

impl Drop for TargetAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_agent(args: &[String], netns: Option<&str>) -> std::process::Child {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, agent_bin()]);
            c
        }
        None => Command::new(agent_bin()),
    };
    // These tests run without TLS (tests/hostile_tls.rs and tests/tls.rs cover it): the
    // plaintext mode is explicit, unless the test gives the agent its certificate.
    if args.iter().any(|a| a == "--tls-cert") {
        cmd.env_remove("ZETABACK_INSECURE_PLAINTEXT");
    } else {
        cmd.env("ZETABACK_INSECURE_PLAINTEXT", "true");
    }
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn zetaback-agent")
}

/// `zetaback-agent backup ...` as a child process (the source side).
pub fn backup_cmd(tokens: &Tokens, target: &str, dataset: &str, snapshot: &str) -> Command {
    let mut c = Command::new(agent_bin());
    c.env("ZETABACK_INSECURE_PLAINTEXT", "true");
    c.args([
        "backup",
        "--host-name",
        "src-1",
        "--token-file",
        &tokens.source.display().to_string(),
        "--target",
        target,
        "--dataset",
        dataset,
        "--snapshot",
        snapshot,
        "--idle-timeout",
        IDLE_TIMEOUT_SECS,
    ])
    .env("RUST_LOG", "info")
    .stdin(std::process::Stdio::null());
    c
}

/// Runs a backup to completion; returns its JSON outcome.
pub fn run_backup(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run backup");
    assert!(
        out.status.success(),
        "backup failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backup prints JSON")
}

/// Files of a directory (names), sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (bounded) for a condition; panics with `what` if it never holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// A temporary file of a stream being written, with its size.
pub fn temp_stream(dir: &Path) -> Option<(String, u64)> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(".tmp-")
            .then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
    })
}

/// Snapshot creation times have one-second resolution: make the next one distinct.
pub fn next_second() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// `zetaback-agent restore` of `dataset`'s backup `backup` (host `src-1`) from the store agent
/// at `from` into `into`.
pub fn restore_cmd(
    tokens: &Tokens,
    from: &str,
    dataset: &str,
    backup: &str,
    into: &str,
) -> Command {
    let mut c = Command::new(agent_bin());
    c.env("ZETABACK_INSECURE_PLAINTEXT", "true");
    c.args([
        "restore",
        "--token-file",
        &tokens.source.display().to_string(),
        "--from",
        from,
        "--host",
        "src-1",
        "--dataset",
        dataset,
        "--backup",
        backup,
        "--into",
        into,
    ]);
    c
}

/// `DMU_BACKUP_MAGIC`, the magic number in the first record (DRR_BEGIN) of a ZFS send stream.
pub const ZFS_STREAM_MAGIC: u64 = 0x2_F5BA_CBAC;
/// `drr_versioninfo` of a plain, not raw, single-dataset stream (`DMU_SUBSTREAM`, no
/// `DMU_BACKUP_FEATURE_RAW`): the store checks the sender's raw claim against it.
pub const PLAIN_VERSIONINFO: u64 = 1;

/// `n` bytes that begin like a ZFS send stream (a DRR_BEGIN record head: type 0, a payload
/// length, the magic, a plain stream's versioninfo, in little- or big-endian order as the sending host wrote it), followed
/// by pseudo-random bytes (deterministic per seed). What the store checks is only the head;
/// real streams from `zfs send` are sent by the tests on zfs-fuse.
pub fn zfs_stream_bytes(n: usize, seed: u64, big_endian: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(24);
    if big_endian {
        head.extend_from_slice(&0u32.to_be_bytes());
        head.extend_from_slice(&0u32.to_be_bytes());
        head.extend_from_slice(&ZFS_STREAM_MAGIC.to_be_bytes());
        head.extend_from_slice(&PLAIN_VERSIONINFO.to_be_bytes());
    } else {
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&ZFS_STREAM_MAGIC.to_le_bytes());
        head.extend_from_slice(&PLAIN_VERSIONINFO.to_le_bytes());
    }
    let mut x = seed | 1;
    let mut out: Vec<u8> = head.into_iter().take(n).collect();
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// A zstd frame holding `content` in raw blocks whose header asks for a window of
/// `2^window_log` bytes (not single-segment: the decoder must allocate the window).
pub fn zstd_frame_with_window(window_log: u8, content: &[u8]) -> Vec<u8> {
    assert!((10..=31).contains(&window_log));
    let mut f = Vec::new();
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    f.push(0x00); // frame header descriptor: no content size, not single segment, no checksum
    f.push((window_log - 10) << 3); // window descriptor: exponent, mantissa 0
    let blocks: Vec<&[u8]> = content.chunks(100_000).collect();
    for (i, block) in blocks.iter().enumerate() {
        let last = u32::from(i + 1 == blocks.len());
        let header = ((block.len() as u32) << 3) | last; // block type 0: raw
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(block);
    }
    if blocks.is_empty() {
        f.extend_from_slice(&1u32.to_le_bytes()[..3]); // an empty last raw block
    }
    f
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted on drop (a small file
/// system whose free space is exact: for disk-full tests).
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs (tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.dir.path())
            .output()
            .expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().expect("number"));
        it.next().expect("blocks") * it.next().expect("block size")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}
