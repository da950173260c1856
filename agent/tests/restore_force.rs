//! `force` restores onto existing datasets, on real zfs-fuse pools: a dataset without snapshots
//! of its own is replaced by the restored contents (`zfs receive -F`); one
//! with snapshots or child datasets of its own is refused before anything is sent, with a
//! message that says why, and is left exactly as it was. A restore that fails destroys the
//! empty parents it made for its new dataset, never one that was there before.

mod common;

use std::process::Output;

use common::*;

fn restore_force(tokens: &Tokens, from: &str, dataset: &str, backup: &str, into: &str) -> Output {
    restore_cmd(tokens, from, dataset, backup, into)
        .arg("--force")
        .output()
        .expect("run restore")
}

#[test]
fn force_replaces_a_dataset_without_snapshots_and_refuses_one_with_snapshots() {
    let src = Pool::with_size("fsrc", "256M");
    let dst = Pool::with_size("fdst", "256M");
    let tokens = Tokens::new();
    let store = tempfile::tempdir().expect("store dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let _target = TargetAgent::start(&tokens, &addr, store.path(), None, None);

    let (ds, dir) = src.create("data");
    write_files(&dir, 7, 4, 100_000);
    let wanted = checksums(&dir);
    let mut cmd = backup_cmd(&tokens, &addr, &ds, "zetaback-1");
    cmd.args(["--target-path", &store.path().display().to_string()]);
    let full = run_backup(cmd);
    let full_id = full["backupId"].as_str().expect("backup id").to_owned();

    // An existing dataset with other files and no snapshots: replaced.
    let (plain, plain_dir) = dst.create("plain");
    write_files(&plain_dir, 99, 2, 10_000);
    let out = restore_force(&tokens, &addr, &ds, &full_id, &plain);
    assert!(
        out.status.success(),
        "force restore onto a dataset without snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksums(&mountpoint(&plain)), wanted);
    let snaps = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", &plain]);
    assert_eq!(
        snaps.trim(),
        format!("{plain}@zetaback-1"),
        "the restored snapshot"
    );

    // An existing dataset with a snapshot of its own: refused up front, untouched.
    let (mine, mine_dir) = dst.create("mine");
    write_files(&mine_dir, 42, 2, 10_000);
    zfs(&["snapshot", &format!("{mine}@keep")]);
    let before = checksums(&mine_dir);
    let out = restore_force(&tokens, &addr, &ds, &full_id, &mine);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must be refused");
    assert!(
        stderr.contains(&format!("{mine}@keep")) && stderr.contains("snapshots of its own"),
        "the message names the snapshot and the reason: {stderr}"
    );
    assert_eq!(checksums(&mine_dir), before, "contents untouched");
    let snaps = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", &mine]);
    assert_eq!(snaps.trim(), format!("{mine}@keep"), "snapshots untouched");

    // An existing dataset with a child dataset: refused, child untouched.
    let (tree, _) = dst.create("tree");
    let (child, child_dir) = dst.create("tree/child");
    write_files(&child_dir, 5, 1, 10_000);
    let out = restore_force(&tokens, &addr, &ds, &full_id, &tree);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must be refused");
    assert!(
        stderr.contains(&child) && stderr.contains("child datasets"),
        "the message names the child: {stderr}"
    );
    assert_eq!(checksums(&child_dir).len(), 1, "child untouched");
}

/// A restore into a new dataset under parents that do not exist makes them (`canmount=off`);
/// when it fails, the ones it made are destroyed again (they are empty), and a parent that was
/// there before is kept.
#[test]
fn a_failed_restore_leaves_no_empty_parent_it_made() {
    let src = Pool::prefixed("replica14", "rsrc", "256M");
    let dst = Pool::prefixed("replica14", "rdst", "256M");
    let tokens = Tokens::new();
    let store = tempfile::tempdir().expect("store dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let _target = TargetAgent::start(&tokens, &addr, store.path(), None, None);
    let (ds, dir) = src.create("data");
    write_files(&dir, 11, 4, 100_000);
    let mut cmd = backup_cmd(&tokens, &addr, &ds, "zetaback-1");
    cmd.args(["--target-path", &store.path().display().to_string()]);
    let full = run_backup(cmd);
    let full_id = full["backupId"].as_str().expect("backup id").to_owned();
    // One byte flipped behind the store's back: the restore cannot succeed.
    let stream = store
        .path()
        .join("src-1")
        .join(ds.replace('/', "+"))
        .join(&full_id);
    let mut bytes = std::fs::read(&stream).expect("stored stream");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stream, &bytes).expect("corrupt it");

    let (kept, _) = dst.create("kept");
    let into = format!("{kept}/a/b/data");
    let out = restore_cmd(&tokens, &addr, &ds, &full_id, &into)
        .output()
        .expect("run restore");
    assert!(
        !out.status.success(),
        "a corrupt backup restored: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left: Vec<String> = zfs(&["list", "-H", "-r", "-t", "all", "-o", "name", &kept])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        left,
        vec![kept.clone()],
        "after the failed restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A restore whose `zfs receive` stops reading early ends with the receive's own error; it does
/// not hang. The store serves a self-consistent but wrong backup, as a compromised store or
/// source could: the full's file replaced by a large incremental stream and its manifest's
/// sha256 and size rewritten to match, so the checksum passes and the receive of an incremental
/// into a new dataset refuses it after its first records. Before the fix the restore's feeder
/// waited forever on a full channel that the stopped writer no longer read.
#[test]
fn a_restore_whose_receive_stops_reading_early_fails_instead_of_hanging() {
    use sha2::Digest;
    let src = Pool::with_size("esrc", "256M");
    let dst = Pool::with_size("edst", "256M");
    let tokens = Tokens::new();
    let store = tempfile::tempdir().expect("store dir");
    let addr = format!("127.0.0.1:{}", free_port());
    // Every catalogue read scans the store: the files change behind the agent's back below.
    let _target = TargetAgent::start_with(
        &tokens,
        &addr,
        store.path(),
        None,
        None,
        &["--catalogue-max-age", "0"],
    );
    let (ds, dir) = src.create("data");
    write_files(&dir, 13, 1, 100_000);
    let store_path = store.path().display().to_string();
    let mut cmd = backup_cmd(&tokens, &addr, &ds, "zetaback-1");
    cmd.args(["--target-path", &store_path]);
    let full = run_backup(cmd);
    next_second();
    // Far more than the channel, the held-back tail and the pipe hold (a few MiB).
    write_files(&dir, 14, 24, 1_000_000);
    let mut cmd = backup_cmd(&tokens, &addr, &ds, "zetaback-2");
    cmd.args([
        "--target-path",
        &store_path,
        "--base-snapshot",
        "zetaback-1",
    ]);
    let incr = run_backup(cmd);
    let id = |b: &serde_json::Value| b["backupId"].as_str().expect("backup id").to_owned();
    let (full_id, incr_id) = (id(&full), id(&incr));
    let stored = store.path().join("src-1").join(ds.replace('/', "+"));
    let incr_bytes = std::fs::read(stored.join(&incr_id)).expect("the incremental's file");
    assert!(incr_bytes.len() > 16 << 20, "{} bytes", incr_bytes.len());
    let manifest_path = stored.join(format!("{full_id}.json"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("the full's manifest"))
            .expect("manifest JSON");
    manifest["sha256"] = hex::encode(sha2::Sha256::digest(&incr_bytes)).into();
    manifest["bytes"] = incr_bytes.len().into();
    manifest["xxh3"] = serde_json::Value::Null;
    std::fs::write(stored.join(&full_id), &incr_bytes).expect("replace the full's file");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("JSON"))
        .expect("rewrite the full's manifest");

    let into = format!("{}/restored", dst.name);
    let mut child = restore_cmd(&tokens, &addr, &ds, &full_id, &into)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run restore");
    let mut ended = None;
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().expect("wait for the restore") {
            ended = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if ended.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("restore output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = ended.unwrap_or_else(|| {
        panic!("the restore hung (the receive had stopped reading; killed after 120 s): {stderr}")
    });
    assert!(
        !status.success(),
        "the swapped full restored: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("restore of the swapped full: {stderr}");
    assert!(
        !stderr.contains("checksum mismatch"),
        "the checksum matched the file; the receive is what refused it: {stderr}"
    );
    assert!(
        zfs(&["list", "-H", "-o", "name", "-r", &dst.name])
            .lines()
            .all(|l| l != into),
        "{into} was left behind"
    );
}
