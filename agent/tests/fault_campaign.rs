//! A fault campaign (issue 14, item 13), on real zfs-fuse with real agent processes and no
//! Kubernetes: with a fixed seed, kill -9 the source agent or the store agent at a random
//! moment of a full backup, an incremental, an archive or a restore, restart what was killed,
//! and check after each kill point: no partial stream counted as a backup (every listed
//! stream hashes to its manifest), no broken chain (every incremental's base is listed), no
//! temporary or orphan file left once the operation was retried, and the retry succeeds.
//! Bounded: `ZETABACK_FAULT_POINTS` kill points (default 24), seed `ZETABACK_FAULT_SEED`.
//! The figures are printed (run with `--nocapture`). And a store whose disk fills up: a clear
//! refusal, nothing half-written counted, and the backup goes through once space is freed.
//! (The controller is not killed here: that needs the Kubernetes tier.)

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use zetaback_core::store::{Catalogue, StreamId, scan};

/// xorshift64: a fixed seed gives the same campaign every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).expect("read stream")))
}

/// Every file under `dir` (relative), sorted.
fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("under").display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// What a check found.
#[derive(Debug, Default)]
struct Findings {
    /// Listed backups whose stream does not hash to its manifest's sha256.
    partial_counted: usize,
    /// Incrementals whose base is not listed.
    broken_chains: usize,
    /// Temporary files, and streams without a manifest.
    orphans: Vec<String>,
}

/// Checks the store at `root` (the agent is up and settled).
fn check(root: &Path) -> (Catalogue, Findings) {
    let cat = scan(root).expect("scan");
    let layout = zetaback_core::store::Layout::new(root);
    let mut f = Findings::default();
    for b in &cat.backups {
        let m = &b.manifest;
        let id: StreamId = m.id.parse().expect("id");
        let stream = layout
            .stream_path(&m.host, &m.dataset, &id, b.archived)
            .expect("path");
        if Some(sha256_file(&stream)) != m.sha256 {
            f.partial_counted += 1;
        }
        if let Some(base) = id.base_ts() {
            let listed = cat.backups.iter().any(|o| {
                o.manifest.host == m.host
                    && o.manifest.dataset == m.dataset
                    && o.manifest
                        .id
                        .parse::<StreamId>()
                        .is_ok_and(|i| i.ts() == base)
            });
            if !listed {
                f.broken_chains += 1;
            }
        }
    }
    let files = all_files(root);
    for file in &files {
        let name = file.rsplit('/').next().unwrap_or(file);
        let temporary = name.starts_with(".tmp-");
        let stream_without_manifest =
            !name.ends_with(".json") && !files.contains(&format!("{file}.json"));
        if temporary || stream_without_manifest {
            f.orphans.push(file.clone());
        }
    }
    (cat, f)
}

fn admin_token(tokens: &Tokens) -> String {
    std::fs::read_to_string(&tokens.admin)
        .expect("token")
        .trim()
        .to_owned()
}

/// One HTTP/1.0 request with the admin token; the status (none if the agent went away).
fn admin_request(token: &str, addr: &str, method: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Full,
    Incremental,
    Archive,
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Source,
    Store,
}

/// The figures of a campaign.
#[derive(Debug, Default)]
struct Figures {
    kill_points: usize,
    killed_source: usize,
    killed_store: usize,
    interrupted: usize,
    finished_before_the_kill: usize,
    retries_succeeded: usize,
    partial_counted: usize,
    broken_chains: usize,
    orphans_left: usize,
}

struct Campaign {
    target: TargetAgent,
    tokens: Tokens,
    store: tempfile::TempDir,
    addr: String,
    ds: String,
    dir: std::path::PathBuf,
    pool: Pool,
    last_full: Option<String>,
}

impl Campaign {
    fn backup_cmd(&self, snapshot: &str, base: Option<&str>) -> Command {
        let mut c = backup_cmd(&self.tokens, &self.addr, &self.ds, snapshot);
        c.args(["--target-path", &self.store.path().display().to_string()]);
        c.args(["--bandwidth-limit", "8000000"]);
        if let Some(b) = base {
            c.args(["--base-snapshot", b]);
        }
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    fn stored(&self, snapshot: &str) -> bool {
        scan(self.store.path())
            .expect("scan")
            .backups
            .iter()
            .any(|b| b.manifest.snapshot == snapshot && b.manifest.dataset == self.ds)
    }

    /// Starts `op` as a child process (archives: a request in a thread, as a child).
    fn start(&self, op: Op, i: usize) -> Option<(Child, String)> {
        match op {
            Op::Full | Op::Incremental => {
                let snap = format!("zetaback-{i}");
                let base = if op == Op::Incremental {
                    self.last_full.as_deref()
                } else {
                    None
                };
                let child = self.backup_cmd(&snap, base).spawn().expect("spawn backup");
                Some((child, snap))
            }
            Op::Restore => {
                let cat = scan(self.store.path()).expect("scan");
                let newest = cat
                    .backups
                    .iter()
                    .rev()
                    .find(|b| b.manifest.dataset == self.ds)?;
                let into = format!("{}/r{i}", self.pool.name);
                let child = restore_cmd(
                    &self.tokens,
                    &self.addr,
                    &self.ds,
                    &newest.manifest.id,
                    &into,
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn restore");
                Some((child, newest.manifest.id.clone()))
            }
            Op::Archive => None,
        }
    }
}

#[test]
fn kill_points_leave_no_partial_backup_and_every_retry_succeeds() {
    let points = env_u64("ZETABACK_FAULT_POINTS", 24) as usize;
    let seed = env_u64("ZETABACK_FAULT_SEED", 0x5EED_2026_0014);
    let mut rng = Rng(seed | 1);
    let pool = Pool::with_size("agentfault", "512M");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 1, 8, 500_000);
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let target = TargetAgent::start(&tokens, &addr, store.path(), None, None);
    let mut c = Campaign {
        target,
        tokens,
        store,
        addr,
        ds,
        dir,
        pool,
        last_full: None,
    };
    let mut fig = Figures::default();
    let started = Instant::now();
    for i in 0..points {
        let op = match rng.below(4) {
            _ if c.last_full.is_none() => Op::Full,
            0 => Op::Full,
            1 => Op::Incremental,
            2 => Op::Archive,
            _ => Op::Restore,
        };
        // An archive has no source process: the store is the victim.
        let victim = if op != Op::Archive && rng.below(2) == 0 {
            Victim::Source
        } else {
            Victim::Store
        };
        let delay = Duration::from_millis(20 + rng.below(1500));
        write_files(&c.dir.join(format!("more-{i}")), 100 + i as u64, 2, 200_000);
        let running = c.start(op, i);
        std::thread::sleep(delay);
        fig.kill_points += 1;
        match (victim, running) {
            (Victim::Source, Some((mut child, _))) => {
                let _ = child.kill();
                let _ = child.wait();
                fig.killed_source += 1;
            }
            (Victim::Store, running) => {
                if op == Op::Archive {
                    // The archive request races the kill.
                    let (token, addr) = (admin_token(&c.tokens), c.addr.clone());
                    let id = scan(c.store.path())
                        .expect("scan")
                        .backups
                        .iter()
                        .find(|b| !b.archived && b.manifest.dataset == c.ds)
                        .map(|b| b.manifest.id.clone());
                    let escaped = zetaback_core::store::escape_dataset(&c.ds).expect("escape");
                    let req = id.map(|id| {
                        std::thread::spawn(move || {
                            admin_request(
                                &token,
                                &addr,
                                "POST",
                                &format!("/v1/archive/src-1/{escaped}/{id}"),
                            )
                        })
                    });
                    std::thread::sleep(Duration::from_millis(rng.below(5)));
                    c.target.kill();
                    if let Some(r) = req {
                        let _ = r.join();
                    }
                } else {
                    c.target.kill();
                }
                fig.killed_store += 1;
                if let Some((mut child, _)) = running {
                    let _ = child.wait();
                }
                c.target.restart();
            }
            (Victim::Source, None) => {
                // Nothing was started (no backup to restore yet): the store is killed idle.
                c.target.kill();
                fig.killed_store += 1;
                c.target.restart();
            }
        }
        // The store settles (a killed source's partial stream is discarded when the target
        // notices), then the invariants.
        wait_until("no temporary file in the store", || {
            !all_files(c.store.path())
                .iter()
                .any(|f| f.contains(".tmp-"))
        });
        let (_, found) = check(c.store.path());
        fig.partial_counted += found.partial_counted;
        fig.broken_chains += found.broken_chains;
        // The retry (what the controller does next).
        let retried = match op {
            Op::Full | Op::Incremental => {
                let snap = format!("zetaback-{i}");
                if c.stored(&snap) {
                    fig.finished_before_the_kill += 1;
                    true
                } else {
                    fig.interrupted += 1;
                    let base = if op == Op::Incremental {
                        c.last_full.clone()
                    } else {
                        None
                    };
                    let ok = c
                        .backup_cmd(&snap, base.as_deref())
                        .status()
                        .expect("retry")
                        .success();
                    ok && c.stored(&snap)
                }
            }
            Op::Archive => {
                let cat = scan(c.store.path()).expect("scan");
                let escaped = zetaback_core::store::escape_dataset(&c.ds).expect("escape");
                cat.backups
                    .iter()
                    .filter(|b| !b.archived && b.manifest.dataset == c.ds)
                    .take(1)
                    .all(|b| {
                        admin_request(
                            &admin_token(&c.tokens),
                            &c.addr,
                            "POST",
                            &format!("/v1/archive/src-1/{escaped}/{}", b.manifest.id),
                        ) == Some(204)
                    })
            }
            Op::Restore => {
                let cat = scan(c.store.path()).expect("scan");
                let newest = cat
                    .backups
                    .iter()
                    .rev()
                    .find(|b| b.manifest.dataset == c.ds)
                    .expect("a backup");
                let into = format!("{}/r{i}", c.pool.name);
                let mut cmd = restore_cmd(&c.tokens, &c.addr, &c.ds, &newest.manifest.id, &into);
                cmd.arg("--force");
                let out = cmd.output().expect("restore");
                if !out.status.success() {
                    eprintln!(
                        "kill point {i}: the restore retry into {into} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    // What still holds the destination: zfs processes and the pool's datasets.
                    let ps = Command::new("ps")
                        .args(["-eo", "pid,ppid,stat,etime,args"])
                        .output();
                    if let Ok(ps) = ps {
                        for line in String::from_utf8_lossy(&ps.stdout).lines() {
                            if line.contains("zfs ") || line.contains("zetaback-agent") {
                                eprintln!("  process: {line}");
                            }
                        }
                    }
                    let list = Command::new("zfs")
                        .args([
                            "list",
                            "-H",
                            "-t",
                            "all",
                            "-r",
                            "-o",
                            "name,type",
                            &c.pool.name,
                        ])
                        .output();
                    if let Ok(list) = list {
                        eprintln!("  datasets:\n{}", String::from_utf8_lossy(&list.stdout));
                    }
                }
                let _ = Command::new("zfs").args(["destroy", "-r", &into]).output();
                out.status.success()
            }
        };
        if op == Op::Full && c.stored(&format!("zetaback-{i}")) {
            c.last_full = Some(format!("zetaback-{i}"));
        }
        if retried {
            fig.retries_succeeded += 1;
        }
        let (_, after) = check(c.store.path());
        fig.partial_counted += after.partial_counted;
        fig.broken_chains += after.broken_chains;
        fig.orphans_left += after.orphans.len();
        assert!(
            retried,
            "kill point {i}: {op:?}, killed {victim:?} after {delay:?}: the retry failed"
        );
        assert!(
            after.orphans.is_empty(),
            "kill point {i}: {op:?}, killed {victim:?}: left {:?}",
            after.orphans
        );
    }
    let (cat, _) = check(c.store.path());
    eprintln!(
        "fault campaign, seed {seed:#x}: {fig:?}; {} backups stored ({} archived) in {:.0?}",
        cat.backups.len(),
        cat.backups.iter().filter(|b| b.archived).count(),
        started.elapsed()
    );
    assert_eq!(fig.partial_counted, 0, "{fig:?}");
    assert_eq!(fig.broken_chains, 0, "{fig:?}");
    assert_eq!(fig.orphans_left, 0, "{fig:?}");
    assert_eq!(fig.retries_succeeded, fig.kill_points, "{fig:?}");
}

#[test]
fn a_full_disk_refuses_clearly_keeps_nothing_half_written_and_recovers() {
    let pool = Pool::with_size("agentfull", "256M");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 7, 5, 1_000_000); // about 5 MB, incompressible
    let fs = Tmpfs::new(12 * 1024 * 1024);
    let root = fs.path().join("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let _target = TargetAgent::start_with(
        &tokens,
        &addr,
        &root,
        None,
        None,
        &["--store-min-free-bytes", "0"],
    );
    let backup = |snap: &str| {
        let mut c = backup_cmd(&tokens, &addr, &ds, snap);
        c.args(["--target-path", &root.display().to_string()]);
        c.output().expect("backup")
    };
    for snap in ["zetaback-1", "zetaback-2"] {
        let out = backup(snap);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The third full does not fit.
    let out = backup("zetaback-3");
    assert!(
        !out.status.success(),
        "a third 5 MB stream on a 12 MiB disk"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the source said: {stderr}");
    assert!(
        stderr.contains("507") || stderr.contains("space") || stderr.contains("connection"),
        "{stderr}"
    );
    wait_until("the partial stream is discarded", || {
        !all_files(&root).iter().any(|f| f.contains(".tmp-"))
    });
    let (cat, found) = check(&root);
    assert_eq!(cat.backups.len(), 2, "{cat:?}");
    assert_eq!(found.partial_counted, 0);
    assert!(found.orphans.is_empty(), "{:?}", found.orphans);
    // Free space (retention deletes the oldest), and the backup goes through.
    let oldest = cat.backups[0].manifest.id.clone();
    let escaped = zetaback_core::store::escape_dataset(&ds).expect("escape");
    assert_eq!(
        admin_request(
            &admin_token(&tokens),
            &addr,
            "DELETE",
            &format!("/v1/streams/src-1/{escaped}/{oldest}")
        ),
        Some(204)
    );
    let out = backup("zetaback-3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cat, found) = check(&root);
    assert_eq!(cat.backups.len(), 2);
    assert_eq!(found.partial_counted, 0);
    assert!(found.orphans.is_empty(), "{:?}", found.orphans);
}
