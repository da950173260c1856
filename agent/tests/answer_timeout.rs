//! A target slow to answer once it has the whole stream (issue 16's finding): real agents on
//! a real zfs-fuse pool (the source dataset and the file store both on it), the source
//! (`zetaback-agent backup`) sending through a relay on loopback.
//!
//! Fault injection, named so: the relay (`AnswerHoldingRelay`) passes every byte the source
//! sends at once, but holds back the target's answer on a connection that carried a stream —
//! for a few seconds (what a target fsyncing a large file, or a `zfs receive` committing, looks
//! like to the sender), or for ever (an answer lost). The store itself answers at once: what
//! it stored is real. Before the fix the source's "no progress" watchdog counted that wait and
//! failed a backup the target had stored (`no progress for 5s (link down or target stuck)`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use zetaback_core::store::scan;

/// Bytes from the source after which a connection counts as carrying a stream (a catalogue
/// request is a few hundred bytes).
const STREAM_BYTES: u64 = 64 * 1024;

/// Fault injection: a loopback relay to `target` that holds back the answer on connections
/// that carried a stream, by `hold` (`None`: never passes it on).
struct AnswerHoldingRelay {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl AnswerHoldingRelay {
    fn start(target: &str, hold: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking");
                        let server = TcpStream::connect(&target).expect("connect to the target");
                        relay(client, server, hold);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for AnswerHoldingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways on two threads; the answer of a connection that carried a stream is held.
fn relay(client: TcpStream, server: TcpStream, hold: Option<Duration>) {
    let up = Arc::new(AtomicU64::new(0));
    let (mut c_in, mut s_out) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let counted = up.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = c_in.read(&mut buf) {
            if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                break;
            }
            counted.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut held = false;
        while let Ok(n) = s_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            if up.load(Ordering::Relaxed) > STREAM_BYTES {
                match hold {
                    None => continue, // the answer is lost
                    Some(d) if !held => {
                        std::thread::sleep(d);
                        held = true;
                    }
                    Some(_) => {}
                }
            }
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Write);
    });
}

/// The source's idle timeout here: the wait for the answer must not count against it.
const IDLE_SECS: &str = "5";

/// A source pool with a dataset of ~2 MB of files and a file store on a dataset of the same
/// zfs-fuse pool, served by a target agent.
struct Setup {
    _target: TargetAgent,
    tokens: Tokens,
    target_addr: String,
    ds: String,
    store: std::path::PathBuf,
    _pool: Pool,
}

impl Setup {
    fn start(tag: &str) -> Self {
        let pool = Pool::prefixed("zbcoldci", tag, "192M");
        let (ds, dir) = pool.create("data");
        let (_, store) = pool.create("store");
        write_files(&dir, 16, 4, 512 * 1024);
        let tokens = Tokens::new();
        let target_addr = format!("127.0.0.1:{}", free_port());
        // A small test pool: no free-space reserve.
        let target = TargetAgent::start_with(
            &tokens,
            &target_addr,
            &store,
            None,
            None,
            &["--store-min-free-bytes", "0"],
        );
        Self {
            _target: target,
            tokens,
            target_addr,
            ds,
            store,
            _pool: pool,
        }
    }

    /// `zetaback-agent backup` of the dataset to the file store through `via`.
    fn backup(&self, via: &str, snapshot: &str, env: &[(&str, &str)]) -> std::process::Output {
        let mut c = Command::new(agent_bin());
        c.env("ZETABACK_INSECURE_PLAINTEXT", "true")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .args([
                "backup",
                "--host-name",
                "src-1",
                "--token-file",
                &self.tokens.source.display().to_string(),
                "--target",
                via,
                "--dataset",
                &self.ds,
                "--snapshot",
                snapshot,
                "--idle-timeout",
                IDLE_SECS,
                "--target-path",
                &self.store.display().to_string(),
            ])
            .stdin(std::process::Stdio::null());
        c.output().expect("run zetaback-agent backup")
    }
}

/// The store's backups of `dataset` (read from its directory): (id, sha256, bytes).
fn stored(store: &Path, dataset: &str) -> Vec<(String, String, u64)> {
    let cat = scan(store).expect("scan the store");
    assert!(
        cat.problems.is_empty(),
        "store problems: {:?}",
        cat.problems
    );
    cat.backups
        .iter()
        .filter(|b| b.manifest.dataset == dataset)
        .map(|b| {
            (
                b.manifest.id.clone(),
                b.manifest.sha256.clone().expect("a stored stream's sha256"),
                b.manifest.bytes,
            )
        })
        .collect()
}

/// The backup succeeded, and the one backup stored is the one it reports.
fn assert_stored_once(s: &Setup, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "the backup failed although the target stores it:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    let backups = stored(&s.store, &s.ds);
    assert_eq!(backups.len(), 1, "exactly one backup stored: {backups:?}");
    let (id, sha256, bytes) = &backups[0];
    assert_eq!(outcome["backupId"].as_str(), Some(id.as_str()), "{outcome}");
    assert_eq!(
        outcome["sha256"].as_str(),
        Some(sha256.as_str()),
        "{outcome}"
    );
    assert_eq!(outcome["bytes"].as_u64(), Some(*bytes), "{outcome}");
    assert!(*bytes > 1_000_000, "the stream carried the files: {bytes}");
}

#[test]
fn a_target_slow_to_answer_after_the_whole_stream_is_waited_for() {
    let s = Setup::start("slow");
    // The answer comes 8 s after the target sent it: longer than the idle timeout (5 s),
    // well within the answer timeout (its default, 600 s).
    let relay = AnswerHoldingRelay::start(&s.target_addr, Some(Duration::from_secs(8)));
    let out = s.backup(&relay.addr, "zb-slow-1", &[]);
    assert_stored_once(&s, &out);
}

#[test]
fn an_answer_that_never_comes_is_looked_up_and_the_stored_backup_accepted() {
    let s = Setup::start("lost");
    // The answer is lost; after the answer timeout (3 s) the source asks the target's
    // catalogue (a small request, passed by the relay) and finds its backup there.
    let relay = AnswerHoldingRelay::start(&s.target_addr, None);
    let out = s.backup(
        &relay.addr,
        "zb-lost-1",
        &[("ZETABACK_ANSWER_TIMEOUT", "3")],
    );
    assert_stored_once(&s, &out);
    // Nothing was sent twice: the only stream in the store's directory is that backup's.
    let dir = s
        .store
        .join("src-1")
        .join(zetaback_core::store::escape_dataset(&s.ds).expect("escape"));
    let streams: Vec<String> = list(&dir)
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert_eq!(streams.len(), 1, "{streams:?}");
}
