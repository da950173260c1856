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
