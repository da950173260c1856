//! Helpers for tests on real ZFS (zfs-fuse file-backed pools via e2e/scripts/zfs.sh).
//! A missing zfs-fuse fails the test loudly; nothing is skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// `zfs create` a child dataset and return (name, mountpoint).
    pub fn create(&self, child: &str) -> (String, PathBuf) {
        let ds = format!("{}/{child}", self.name);
        zfs(&["create", "-p", &ds]);
        (ds, self.mountpoint.join(child))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/scripts/zfs.sh"))
            .args(["destroy", &self.name])
            .output();
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
