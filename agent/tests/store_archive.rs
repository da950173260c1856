//! Archiving is crash-safe (issue 14, item 9): the agent stopped at any point of an archive
//! (a fake fault: the store stops there as if killed, since a real kill cannot be timed
//! between two renames) leaves the backup in the catalogue, and the retry, or the start-up
//! recovery, finishes the move. No ZFS needed.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::zfs_stream_bytes;
use zetaback_agent::filestore::{BackupKey, FakeFault, FileStore, StreamMeta};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{Layout, StreamId};

fn key() -> BackupKey {
    BackupKey {
        host: "db-1".into(),
        dataset: "tank/db".into(),
        id: StreamId::Full { ts: 1_700_000_000 },
    }
}

async fn store_one(store: &FileStore) -> Vec<u8> {
    let data = zfs_stream_bytes(3 * 1024 * 1024 + 5, 7, false);
    let mut pending = store.begin(key()).await.expect("begin");
    for chunk in data.chunks(100_000) {
        pending
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    pending
        .commit(StreamMeta {
            snapshot: "zb-1700000000".into(),
            base_snapshot: None,
            compression: Compression::None,
            policy: None,
            raw: false,
        })
        .await
        .expect("commit");
    data
}

/// The backup is listed exactly once (live or archived) and reads back whole.
async fn listed_once(root: &Path, data: &[u8]) -> bool {
    let cat = zetaback_core::store::scan(root).expect("scan");
    assert_eq!(cat.backups.len(), 1, "listed once: {cat:?}");
    let (mut f, m) = FileStore::new(root).open(&key()).await.expect("open");
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut f, &mut back)
        .await
        .expect("read");
    assert!(back == data, "the stream reads back whole");
    assert_eq!(m.bytes, data.len() as u64);
    cat.backups[0].archived
}

/// Files of the live and archive dataset directories.
fn leftovers(root: &Path) -> (Vec<String>, Vec<String>) {
    let layout = Layout::new(root);
    let list = |archived| {
        let dir = layout
            .dataset_dir("db-1", "tank/db", archived)
            .expect("dir");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (list(false), list(true))
}

#[tokio::test]
async fn an_archive_cut_short_keeps_the_backup_and_the_retry_finishes_it() {
    for fault in [
        FakeFault::ArchiveBeforeManifestMove,
        FakeFault::ArchiveAfterManifestMove,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let data = store_one(&FileStore::new(root)).await;
        let crashing = FileStore::new(root).with_fake_fault(fault);
        let err = crashing
            .archive(&key())
            .await
            .expect_err("the fake fault stops it");
        assert!(err.to_string().contains("fake fault"), "{fault:?}: {err}");
        // Killed there: the catalogue still has the backup.
        listed_once(root, &data).await;
        // The agent restarts (recovery), and the controller retries the archive.
        let restarted = FileStore::new(root);
        restarted.recover().await.expect("recover");
        listed_once(root, &data).await;
        restarted
            .archive(&key())
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: the retry failed: {e}"));
        assert!(listed_once(root, &data).await, "{fault:?}: archived");
        let (live, archived) = leftovers(root);
        assert!(
            live.is_empty(),
            "{fault:?}: left in the live area: {live:?}"
        );
        assert_eq!(
            archived,
            ["1700000000.full", "1700000000.full.json"],
            "{fault:?}"
        );
        // And again: idempotent.
        restarted.archive(&key()).await.expect("archive again");
        assert!(listed_once(root, &data).await);
    }
}

/// What the agent before this fix left when killed between its two renames (the stream in
/// the archive area, the manifest still live): start-up recovery finishes the move.
#[tokio::test]
async fn start_up_finishes_a_move_cut_short_by_an_older_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = store_one(&FileStore::new(root)).await;
    let layout = Layout::new(root);
    let k = key();
    let live = layout
        .stream_path(&k.host, &k.dataset, &k.id, false)
        .expect("path");
    let archived = layout
        .stream_path(&k.host, &k.dataset, &k.id, true)
        .expect("path");
    std::fs::create_dir_all(archived.parent().expect("dir")).expect("mkdir");
    std::fs::rename(&live, &archived).expect("move the stream only");
    let store = FileStore::new(root);
    store.recover().await.expect("recover");
    assert!(listed_once(root, &data).await, "archived after recovery");
    let (live, archived) = leftovers(root);
    assert!(live.is_empty(), "{live:?}");
    assert_eq!(archived, ["1700000000.full", "1700000000.full.json"]);
}
