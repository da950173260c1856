//! Two agents on real zfs-fuse pools: the source (`zetaback-agent backup`, what a BackupJob
//! runs) and the target (`zetaback-agent --no-kube`, a separate process on its own port).
//! A full and two incrementals of a dataset with real files, to a file store and to a replica
//! pool; restores and the replica compare equal, file by file, by sha256. Fault injection:
//! kill the source, kill the target, cut the link (network namespace): no partial stream is
//! ever a backup, and the next run succeeds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use zetaback_core::store::scan;

/// `zetaback-agent restore` of `dataset`'s backup `backup` into `into`; panics if it fails.
fn restore(tokens: &Tokens, from: &str, dataset: &str, backup: &str, into: &str) {
    let out = restore_cmd(tokens, from, dataset, backup, into)
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
}

/// `zetaback-agent backup` of `dataset@snapshot` to the file store at `store`.
fn store_backup_cmd(
    tokens: &Tokens,
    addr: &str,
    dataset: &str,
    snapshot: &str,
    store: &Path,
) -> Command {
    let mut c = backup_cmd(tokens, addr, dataset, snapshot);
    c.args(["--target-path", &store.display().to_string()]);
    c
}

/// What most tests here start from: a source pool with dataset `data`, a destination pool
/// with dataset `replicas`, a file store, and a target agent (on a free loopback port)
/// storing files there and receiving replicas under `replicas`.
struct TwoPools {
    // Fields drop in this order: the agent stops before its store and pools go.
    _target: TargetAgent,
    tokens: Tokens,
    store: tempfile::TempDir,
    addr: String,
    /// `<src pool>/data` and where it is mounted.
    ds: String,
    dir: PathBuf,
    /// The replica root on the destination pool.
    replicas: String,
    src: Pool,
    dst: Pool,
}

impl TwoPools {
    fn start() -> Self {
        let src = Pool::new("src");
        let dst = Pool::new("dst");
        let (ds, dir) = src.create("data");
        let (replicas, _) = dst.create("replicas");
        let store = tempfile::tempdir().expect("store");
        let tokens = Tokens::new();
        let addr = format!("127.0.0.1:{}", free_port());
        let target = TargetAgent::start(&tokens, &addr, store.path(), Some(&replicas), None);
        Self {
            _target: target,
            tokens,
            store,
            addr,
            ds,
            dir,
            replicas,
            src,
            dst,
        }
    }

    /// A backup of `dataset@snapshot` (against `base`, with more `args`) to the file store.
    fn to_store(
        &self,
        dataset: &str,
        snapshot: &str,
        base: Option<&str>,
        args: &[&str],
    ) -> serde_json::Value {
        let mut c = store_backup_cmd(
            &self.tokens,
            &self.addr,
            dataset,
            snapshot,
            self.store.path(),
        );
        if let Some(b) = base {
            c.args(["--base-snapshot", b]);
        }
        c.args(args);
        run_backup(c)
    }

    /// A backup of `dataset@snapshot` (against `base`, with more `args`) into the replica
    /// root.
    fn to_replica(
        &self,
        dataset: &str,
        snapshot: &str,
        base: Option<&str>,
        args: &[&str],
    ) -> serde_json::Value {
        let mut c = backup_cmd(&self.tokens, &self.addr, dataset, snapshot);
        c.args(["--target-dataset", &self.replicas]);
        if let Some(b) = base {
            c.args(["--base-snapshot", b]);
        }
        c.args(args);
        run_backup(c)
    }

    /// A backup of `data@snapshot` into the replica root: a full uncompressed, an incremental
    /// (against `base`) zstd-compressed, so that the target decompresses into `zfs receive`.
    fn replicate(&self, snapshot: &str, base: Option<&str>) -> serde_json::Value {
        let compression = if base.is_some() { ZSTD } else { &[] };
        self.to_replica(&self.ds, snapshot, base, compression)
    }
}

/// Stream compression in transit and at rest (the default is none).
const ZSTD: &[&str] = &["--compression", "zstd"];
/// Keep the sent snapshots on the source (a later backup's base, or one in between).
const KEEP: &[&str] = &["--keep-snapshots"];

#[test]
fn full_and_two_incrementals_to_file_store_and_replica() {
    let pools = TwoPools::start();
    let TwoPools {
        ds,
        dir,
        replicas,
        store,
        tokens,
        addr,
        dst,
        ..
    } = &pools;

    // Full.
    write_files(dir, 1, 8, 200_000);
    let state1 = checksums(dir);
    let full = pools.to_store(ds, "zetaback-1", None, ZSTD);
    let full_id = full["backupId"].as_str().expect("id").to_owned();
    assert!(full_id.ends_with(".full"), "{full}");
    let r = pools.replicate("zetaback-1", None);
    assert!(r["replica"].as_str().is_some(), "{r}");

    // First incremental (against the full).
    next_second();
    write_files(dir, 2, 4, 100_000);
    std::fs::remove_file(dir.join("f1-0.bin")).expect("rm");
    let state2 = checksums(dir);
    let inc1 = pools.to_store(ds, "zetaback-2", Some("zetaback-1"), &[]);
    let inc1_id = inc1["backupId"].as_str().expect("id").to_owned();
    pools.replicate("zetaback-2", Some("zetaback-1"));

    // Second incremental: to the store against the last full (Zetaback), to the replica
    // chained against the previous one.
    next_second();
    write_files(dir, 3, 4, 150_000);
    let state3 = checksums(dir);
    let inc2 = pools.to_store(ds, "zetaback-3", Some("zetaback-1"), ZSTD);
    let inc2_id = inc2["backupId"].as_str().expect("id").to_owned();
    assert!(inc2_id.contains(".incremental."), "{inc2}");
    pools.replicate("zetaback-3", Some("zetaback-2"));

    // The store: three backups, each manifest matching its stream.
    let cat = scan(store.path()).expect("scan");
    assert!(cat.problems.is_empty(), "{:?}", cat.problems);
    let ids: Vec<&str> = cat.backups.iter().map(|b| b.manifest.id.as_str()).collect();
    assert_eq!(ids, [full_id.as_str(), inc1_id.as_str(), inc2_id.as_str()]);
    for b in &cat.backups {
        let p = store
            .path()
            .join("src-1")
            .join(zetaback_core::store::escape_dataset(ds).expect("escape"))
            .join(&b.manifest.id);
        assert_eq!(
            Some(sha256_file(&p)),
            b.manifest.sha256,
            "{}",
            b.manifest.id
        );
    }
    assert_eq!(
        cat.backups[0].manifest.sha256.as_deref(),
        Some(full["sha256"].as_str().expect("sha"))
    );

    // The replica has every file of the source, byte for byte.
    let replica = format!("{replicas}/src-1/{ds}");
    assert_eq!(checksums(&mountpoint(&replica)), state3);

    // Restores from the file store: the latest (full + its incremental) and an earlier point.
    let restored = format!("{}/restored", dst.name);
    restore(tokens, addr, ds, &inc2_id, &restored);
    assert_eq!(checksums(&mountpoint(&restored)), state3);
    let restored2 = format!("{}/restored2", dst.name);
    restore(tokens, addr, ds, &inc1_id, &restored2);
    assert_eq!(checksums(&mountpoint(&restored2)), state2);
    let restored1 = format!("{}/restored1", dst.name);
    restore(tokens, addr, ds, &full_id, &restored1);
    assert_eq!(checksums(&mountpoint(&restored1)), state1);

    // Snapshots no longer needed as a base were destroyed (only ours).
    let snaps = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", ds]);
    assert!(!snaps.contains("zetaback-1"), "{snaps}");
    assert!(
        snaps.contains("zetaback-2") && snaps.contains("zetaback-3"),
        "{snaps}"
    );
}

/// A dataset large enough that a rate-limited transfer is still running when a fault hits.
fn big_dataset(pool: &Pool) -> (String, std::path::PathBuf) {
    let (ds, dir) = pool.create("big");
    write_files(&dir, 7, 16, 1_500_000);
    (ds, dir)
}

fn store_dir(store: &Path, ds: &str) -> std::path::PathBuf {
    store
        .join("src-1")
        .join(zetaback_core::store::escape_dataset(ds).expect("escape"))
}

#[test]
fn killing_the_source_mid_stream_leaves_no_backup() {
    let src = Pool::new("ks");
    let (ds, dir) = big_dataset(&src);
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let _target = TargetAgent::start(&tokens, &addr, store.path(), None, None);
    let sdir = store_dir(store.path(), &ds);

    let mut c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    c.args(["--bandwidth-limit", "2000000"]);
    let mut source = c.spawn().expect("spawn source");
    wait_until("the target is writing the stream", || {
        temp_stream(&sdir).is_some_and(|(_, n)| n > 500_000)
    });
    source.kill().expect("kill -9 the source");
    let _ = source.wait();
    // The target notices the cut connection and discards the partial stream.
    wait_until("the partial stream is discarded", || {
        temp_stream(&sdir).is_none()
    });
    let cat = scan(store.path()).expect("scan");
    assert!(cat.backups.is_empty(), "no backup: {:?}", cat.backups);
    assert!(list(&sdir).is_empty(), "nothing left: {:?}", list(&sdir));

    // The next run succeeds (and reuses the snapshot the killed run took).
    let c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    let out = run_backup(c);
    let id = out["backupId"].as_str().expect("id");
    let restored = format!("{}/restored", src.name);
    restore(&tokens, &addr, &ds, id, &restored);
    assert_eq!(checksums(&mountpoint(&restored)), checksums(&dir));
}

#[test]
fn killing_the_target_mid_stream_leaves_no_backup() {
    let src = Pool::new("kt");
    let (ds, dir) = big_dataset(&src);
    let (replicas, _) = src.create("replicas");
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut target = TargetAgent::start(&tokens, &addr, store.path(), Some(&replicas), None);
    let sdir = store_dir(store.path(), &ds);

    let mut c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    c.args(["--bandwidth-limit", "2000000"]);
    let source = c.spawn().expect("spawn source");
    wait_until("the target is writing the stream", || {
        temp_stream(&sdir).is_some_and(|(_, n)| n > 500_000)
    });
    target.kill();
    let out = source.wait_with_output().expect("source ends");
    assert!(
        !out.status.success(),
        "the source must fail when the target dies"
    );
    // The dead target left its temporary file; it is not a backup.
    assert!(temp_stream(&sdir).is_some());
    assert!(scan(store.path()).expect("scan").backups.is_empty());
    // A restarted target removes it at start-up; the next run succeeds.
    target.restart();
    assert!(
        temp_stream(&sdir).is_none(),
        "stale temporary removed: {:?}",
        list(&sdir)
    );
    let c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    let id = run_backup(c)["backupId"].as_str().expect("id").to_owned();
    assert_eq!(scan(store.path()).expect("scan").backups.len(), 1);

    // The same in replica mode: a killed receive leaves no replica; the next run succeeds.
    let mut c = backup_cmd(&tokens, &addr, &ds, "zetaback-1");
    c.args([
        "--target-dataset",
        &replicas,
        "--bandwidth-limit",
        "2000000",
        "--keep-snapshots",
    ]);
    let source = c.spawn().expect("spawn source");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    target.kill();
    let out = source.wait_with_output().expect("source ends");
    assert!(!out.status.success());
    let replica = format!("{replicas}/src-1/{ds}");
    // zfs-fuse's daemon reads the stream itself from the killed `zfs receive`'s pipe and aborts
    // the receive (removing the dataset it was creating) only once it sees the pipe end: under
    // load that lands a little after the source gave up. Bounded wait; a replica that stays is
    // a failure.
    let mut listed = String::new();
    for _ in 0..120 {
        listed = zfs(&["list", "-H", "-o", "name", "-r", &replicas]);
        if !listed.lines().any(|l| l == replica) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        !listed.lines().any(|l| l == replica),
        "no partial replica 60 s after the receiving agent was killed: {listed}"
    );
    target.restart();
    let mut c = backup_cmd(&tokens, &addr, &ds, "zetaback-1");
    c.args(["--target-dataset", &replicas]);
    run_backup(c);
    assert_eq!(checksums(&mountpoint(&replica)), checksums(&dir));
    let restored = format!("{}/restored", src.name);
    restore(&tokens, &addr, &ds, &id, &restored);
    assert_eq!(checksums(&mountpoint(&restored)), checksums(&dir));
}

/// A network namespace with a veth pair to the root namespace; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 250;
        let name = format!("zbt{}", std::process::id());
        let host_if = format!("zbh{}", std::process::id());
        let ns_if = format!("zbn{}", std::process::id());
        let (host_ip, ns_ip) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn cutting_the_link_mid_stream_leaves_no_backup() {
    let src = Pool::new("cl");
    let (ds, dir) = big_dataset(&src);
    let store = tempfile::tempdir().expect("store");
    let tokens = Tokens::new();
    let ns = Netns::new();
    let addr = format!("{}:7790", ns.ns_ip);
    let target = TargetAgent::start(&tokens, &addr, store.path(), None, Some(&ns.name));
    let sdir = store_dir(store.path(), &ds);
    assert!(!ns.host_ip.is_empty());

    let mut c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    c.args(["--bandwidth-limit", "2000000"]);
    c.stderr(std::process::Stdio::piped());
    let source = c.spawn().expect("spawn source");
    wait_until("the target is writing the stream", || {
        temp_stream(&sdir).is_some_and(|(_, n)| n > 500_000)
    });
    ns.link(false);
    // No reset crosses a cut link: both sides give up after their idle timeout
    // (common::IDLE_TIMEOUT_SECS).
    let out = source.wait_with_output().expect("source ends");
    assert!(
        !out.status.success(),
        "the source must fail when the link is cut"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no progress"), "{stderr}");
    wait_until("the target discards the stalled stream", || {
        temp_stream(&sdir).is_none()
    });
    assert!(scan(store.path()).expect("scan").backups.is_empty());
    ns.link(true);

    let c = store_backup_cmd(&tokens, &addr, &ds, "zetaback-1", store.path());
    let id = run_backup(c)["backupId"].as_str().expect("id").to_owned();
    let restored = format!("{}/restored", src.name);
    restore(&tokens, &addr, &ds, &id, &restored);
    assert_eq!(checksums(&mountpoint(&restored)), checksums(&dir));
    drop(target);
}

/// `GET /v1/catalogue` from an agent as the controller (plain HTTP/1.0 over a real socket).
fn get_catalogue(tokens: &Tokens, addr: &str) -> zetaback_core::store::Catalogue {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(&tokens.admin).expect("token");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /v1/catalogue HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .expect("request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("response");
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}\n{body}"
    );
    serde_json::from_str(body).expect("catalogue JSON")
}

#[test]
fn replicas_carry_a_manifest_and_are_in_the_catalogue() {
    let pools = TwoPools::start();
    let TwoPools {
        ds,
        dir,
        replicas,
        tokens,
        addr,
        ..
    } = &pools;
    assert!(get_catalogue(tokens, addr).backups.is_empty());

    write_files(dir, 1, 4, 100_000);
    let full = pools.replicate("zetaback-1", None);
    next_second();
    write_files(dir, 2, 2, 100_000);
    let inc = pools.replicate("zetaback-2", Some("zetaback-1"));

    let cat = get_catalogue(tokens, addr);
    assert!(cat.problems.is_empty(), "{:?}", cat.problems);
    let got: Vec<_> = cat
        .backups
        .iter()
        .map(|b| {
            let m = &b.manifest;
            (
                m.id.as_str(),
                m.host.as_str(),
                m.dataset.as_str(),
                m.snapshot.as_str(),
                m.base_snapshot.as_deref(),
                m.sha256.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                full["backupId"].as_str().expect("id"),
                "src-1",
                ds.as_str(),
                "zetaback-1",
                None,
                None,
            ),
            (
                inc["backupId"].as_str().expect("id"),
                "src-1",
                ds.as_str(),
                "zetaback-2",
                Some("zetaback-1"),
                None,
            ),
        ]
    );
    // A replica records no sha256 (`zfs receive` checked the stream), only the transit
    // check's xxh3, and the job reports none.
    assert!(
        full["sha256"].is_null() && inc["sha256"].is_null(),
        "{full} {inc}"
    );
    assert!(
        cat.backups
            .iter()
            .all(|b| b.manifest.xxh3.as_ref().is_some_and(|x| x.len() == 32)),
        "{:?}",
        cat.backups
    );
    assert_eq!(
        cat.backups[1].manifest.compression,
        zetaback_core::api::backup_policy::Compression::Zstd
    );
    // The manifest lives on the received snapshot itself.
    let prop = zfs(&[
        "get",
        "-H",
        "-o",
        "value",
        "zetaback.io:manifest",
        &format!("{replicas}/src-1/{ds}@zetaback-1"),
    ]);
    let m = zetaback_core::store::Manifest::from_json(prop.trim().as_bytes()).expect("manifest");
    assert_eq!(m, cat.backups[0].manifest);

    // A manifest that does not match where it sits is reported, not listed.
    let mut wrong = m.clone();
    wrong.snapshot = "zetaback-9".into();
    zfs(&[
        "set",
        &format!(
            "zetaback.io:manifest={}",
            serde_json::to_string(&wrong).expect("json")
        ),
        &format!("{replicas}/src-1/{ds}@zetaback-1"),
    ]);
    // Changed behind the agent's back: its cached catalogue sees it within
    // --catalogue-max-age (10 s by default).
    wait_until("the catalogue sees the changed manifest", || {
        !get_catalogue(tokens, addr).problems.is_empty()
    });
    let cat = get_catalogue(tokens, addr);
    assert_eq!(cat.backups.len(), 1, "{:?}", cat.backups);
    assert_eq!(cat.problems.len(), 1, "{:?}", cat.problems);
    assert!(
        cat.problems[0].contains("does not match"),
        "{:?}",
        cat.problems
    );

    // Retention deletes a replica backup with the admin token: its snapshot goes.
    let escaped = zetaback_core::store::escape_dataset(ds).expect("escape");
    let inc_id = inc["backupId"].as_str().expect("id");
    let path = format!("/v1/streams/src-1/{escaped}/{inc_id}");
    let (status, _) = http(tokens, addr, &format!("DELETE {path}"), &[]);
    assert_eq!(status, 403, "the source token may not delete");
    let (status, body) = http_as(&tokens.admin, addr, &format!("DELETE {path}"), &[]);
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        snapshots_of(&format!("{replicas}/src-1/{ds}")),
        ["zetaback-1"]
    );
    assert!(get_catalogue(tokens, addr).backups.is_empty());
    let (status, _) = http_as(&tokens.admin, addr, &format!("DELETE {path}"), &[]);
    assert_eq!(status, 404);
}

/// Snapshots of a dataset (short names), oldest first.
fn snapshots_of(dataset: &str) -> Vec<String> {
    zfs(&[
        "list", "-H", "-r", "-t", "snapshot", "-o", "name", "-s", "creation", dataset,
    ])
    .lines()
    .filter_map(|l| l.split_once('@'))
    .filter(|(ds, _)| *ds == dataset)
    .map(|(_, s)| s.to_owned())
    .collect()
}

#[test]
fn intermediates_send_every_snapshot_in_between() {
    let pools = TwoPools::start();
    let TwoPools {
        ds,
        dir,
        replicas,
        src,
        ..
    } = &pools;
    write_files(dir, 1, 2, 50_000);
    pools.to_replica(ds, "zetaback-1", None, KEEP);
    // A snapshot in between that no backup sent (e.g. taken by hand or by another tool).
    next_second();
    write_files(dir, 2, 2, 50_000);
    zfs(&["snapshot", &format!("{ds}@between")]);
    next_second();
    write_files(dir, 3, 2, 50_000);
    let inc = pools.to_replica(
        ds,
        "zetaback-3",
        Some("zetaback-1"),
        &["--keep-snapshots", "--intermediates"],
    );
    let replica = format!("{replicas}/src-1/{ds}");
    assert_eq!(inc["replica"].as_str(), Some(replica.as_str()), "{inc}");
    assert_eq!(
        snapshots_of(&replica),
        ["zetaback-1", "between", "zetaback-3"],
        "zfs send -I brought the snapshot in between"
    );
    assert_eq!(checksums(&mountpoint(&replica)), checksums(dir));

    // Without --intermediates the same history gives the replica only the endpoints.
    let (ds2, dir2) = src.create("plain");
    write_files(&dir2, 1, 1, 10_000);
    pools.to_replica(&ds2, "zetaback-1", None, KEEP);
    next_second();
    zfs(&["snapshot", &format!("{ds2}@between")]);
    next_second();
    write_files(&dir2, 2, 1, 10_000);
    pools.to_replica(&ds2, "zetaback-3", Some("zetaback-1"), KEEP);
    assert_eq!(
        snapshots_of(&format!("{replicas}/src-1/{ds2}")),
        ["zetaback-1", "zetaback-3"]
    );
}

/// One HTTP/1.0 request with the source token; (status, body).
fn http(
    tokens: &Tokens,
    addr: &str,
    request_line: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    http_as(&tokens.source, addr, request_line, headers)
}

/// One HTTP/1.0 request with the token in `token_file`; (status, body).
fn http_as(
    token_file: &Path,
    addr: &str,
    request_line: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(token_file).expect("token");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!(
        "{request_line} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n",
        token.trim()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("response");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// zfs-fuse cannot resume: the target reports no token, and a stream that claims to resume is
/// refused before `zfs receive` runs (the OpenZFS side is unit-tested on recorded output); so
/// is a replica stream that announces a checksum the replica cannot record (sha256).
#[test]
fn resume_tokens_on_zfs_fuse_are_absent_and_claims_refused() {
    let pools = TwoPools::start();
    let TwoPools {
        ds,
        dir,
        replicas,
        tokens,
        addr,
        ..
    } = &pools;
    write_files(dir, 1, 1, 10_000);
    pools.to_replica(ds, "zetaback-1", None, &[]);
    let escaped = zetaback_core::store::escape_dataset(ds).expect("escape");
    let (status, body) = http(
        tokens,
        addr,
        &format!("GET /v1/resume-token/src-1/{escaped}?into={replicas}"),
        &[],
    );
    assert_eq!((status, body.as_str()), (200, r#"{"token":null}"#));
    let (status, _) = http(
        tokens,
        addr,
        &format!("GET /v1/resume-token/src-1/{escaped}?into=elsewhere"),
        &[],
    );
    assert_eq!(status, 403, "only configured replica roots");
    // The next incremental into the replica, with one more header.
    let put_incremental = |extra: (&str, &str)| {
        http(
            tokens,
            addr,
            &format!("PUT /v1/streams/src-1/{escaped}/1780000000.incremental.1700000000"),
            &[
                ("x-zetaback-snapshot", "zetaback-2"),
                ("x-zetaback-base-snapshot", "zetaback-1"),
                ("x-zetaback-receive-into", replicas),
                extra,
            ],
        )
    };
    let (status, body) = put_incremental(("x-zetaback-resume-token", "1-e604ea4bf-e0-789c63a2"));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("resume token"), "{body}");
    assert_eq!(
        snapshots_of(&format!("{replicas}/src-1/{ds}")),
        ["zetaback-1"],
        "nothing was received"
    );

    // A replica records no sha256 (`zfs receive` checks the stream): a stream that announces
    // a sha256 trailer is refused before a byte is read, not after the whole stream.
    let (status, body) = put_incremental(("trailer", "x-zetaback-sha256"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("checked in transit with x-zetaback-xxh3"),
        "{body}"
    );
    assert_eq!(
        snapshots_of(&format!("{replicas}/src-1/{ds}")),
        ["zetaback-1"],
        "nothing was received"
    );
}
