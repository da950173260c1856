//! Backup ids and the snapshots the source agent makes (issue 14, item 12), on real zfs-fuse:
//! an incremental taken in the same second as its base still gets an id of its own (later
//! than its base's), and a backup that fails leaves no snapshot it made behind.

mod common;

use std::process::Command;

use common::*;

/// The snapshots of `dataset` (short names), oldest first.
fn snapshots(dataset: &str) -> Vec<String> {
    zfs(&[
        "list", "-H", "-t", "snapshot", "-o", "name", "-s", "creation", "-r", dataset,
    ])
    .lines()
    .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_owned()))
    .collect()
}

/// A snapshot's creation time (seconds).
fn creation(dataset: &str, snapshot: &str) -> i64 {
    zfs(&[
        "get",
        "-H",
        "-p",
        "-o",
        "value",
        "creation",
        &format!("{dataset}@{snapshot}"),
    ])
    .trim()
    .parse()
    .expect("creation")
}

/// Sleeps until just after the wall clock turns to a new second.
fn start_of_a_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time");
    let rest = 1_000_000_000 - u64::from(now.subsec_nanos());
    std::thread::sleep(std::time::Duration::from_nanos(rest + 5_000_000));
}

struct Setup {
    _target: TargetAgent,
    tokens: Tokens,
    store: tempfile::TempDir,
    addr: String,
    ds: String,
    _pool: Pool,
}

fn setup(tag: &str) -> Setup {
    let pool = Pool::new(tag);
    let (ds, dir) = pool.create("data");
    write_files(&dir, 1, 4, 20_000);
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let target = TargetAgent::start(&tokens, &addr, store.path(), None, None);
    Setup {
        _target: target,
        tokens,
        store,
        addr,
        ds,
        _pool: pool,
    }
}

impl Setup {
    fn backup(&self, snapshot: &str, base: Option<&str>, target_path: Option<&str>) -> Command {
        let mut c = backup_cmd(&self.tokens, &self.addr, &self.ds, snapshot);
        let path = self.store.path().display().to_string();
        c.args(["--target-path", target_path.unwrap_or(&path)]);
        if let Some(b) = base {
            c.args(["--base-snapshot", b]);
        }
        c
    }
}

#[test]
fn an_incremental_in_the_same_second_as_its_base_gets_a_later_id() {
    let s = setup("agentsec");
    // Several tries, each at the start of a second: the base snapshot and the incremental's
    // own snapshot then fall in the same second (the agent takes its snapshot well within
    // a second of starting).
    for i in 0..4 {
        let base = format!("base-{i}");
        start_of_a_second();
        zfs(&["snapshot", &format!("{}@{base}", s.ds)]);
        let snap = format!("inc-{i}");
        let out = s.backup(&snap, Some(&base), None).output().expect("backup");
        assert!(
            out.status.success(),
            "try {i}: the incremental failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let id: zetaback_core::store::StreamId = outcome["backupId"]
            .as_str()
            .expect("id")
            .parse()
            .expect("a stream id");
        let base_ts = creation(&s.ds, &base);
        assert_eq!(id.base_ts(), Some(base_ts), "try {i}: {id}");
        assert!(id.ts() > base_ts, "try {i}: {id}");
        assert_eq!(
            id.ts(),
            creation(&s.ds, &snap),
            "try {i}: the id is the snapshot's time"
        );
    }
    let cat = zetaback_core::store::scan(s.store.path()).expect("scan");
    assert_eq!(cat.backups.len(), 4);
}

#[test]
fn a_failed_backup_leaves_no_snapshot_it_made() {
    let s = setup("agentleft");
    // The target refuses the stream (not its store path): the stream never became a backup.
    let out = s
        .backup("zetaback-1", None, Some("/not/the/store"))
        .output()
        .expect("backup");
    assert!(!out.status.success(), "the target should refuse");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stores backups under"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        snapshots(&s.ds),
        Vec::<String>::new(),
        "the refused snapshot is gone"
    );
    // The base of an incremental does not exist.
    let out = s
        .backup("zetaback-2", Some("no-such-base"), None)
        .output()
        .expect("backup");
    assert!(!out.status.success(), "no base, no incremental");
    assert_eq!(snapshots(&s.ds), Vec::<String>::new(), "nothing left");
    // A snapshot that is not zetaback's is never touched, failure or not.
    zfs(&["snapshot", &format!("{}@mine", s.ds)]);
    let out = s
        .backup("zetaback-3", Some("mine"), Some("/not/the/store"))
        .output()
        .expect("backup");
    assert!(!out.status.success());
    assert_eq!(snapshots(&s.ds), ["mine"]);
    // A backup that works keeps its snapshot (the next incremental's base).
    let out = s.backup("zetaback-4", None, None).output().expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshots(&s.ds), ["mine", "zetaback-4"]);
}
