//! More restores end to end, on real parts (the local kube-apiserver, zfs-fuse pools, real
//! `zetaback-agent` processes for a source, a backup host and a destination, the controller
//! in-process), after a chained policy stored a full and two incrementals of a dataset whose
//! files change in between:
//!
//! - **a point in time** through the CLI (`--at`): the newest backup at or before the time,
//!   exactly at a backup's time and between two backups, restored onto the source host itself;
//!   a time before the first backup is refused (NotFound) without touching anything;
//! - **from the archive area**: with the full and the first incremental moved to the archive
//!   by the store's admin API, a restore without `includeArchive` is refused and one with
//!   `--include-archive` applies the archived and the live pieces;
//! - **a crash of the destination agent mid-restore** (SIGKILL once the first piece is
//!   applied and while the second streams): the Restore stays unfinished while the agent is
//!   down, is failed with reason `Interrupted` when it comes back, the destination never holds
//!   the restored point, and a new Restore with `force` then succeeds, continuing after the
//!   pieces the interrupted one had received.
//!
//! Restores to another host are in `restore.rs`. Every restored file's sha256 equals the
//! original's at that backup (the sums are taken when each backup was stored; zfs-fuse has
//! no `.zfs/snapshot` directory to read them back from).

use std::time::Duration;

use kube::api::Api;
use zetaback::api::Restore;
use zetaback::api::restore::RestorePhase;
use zetaback_e2e::fleet::{
    Chain, Fleet, create_restore, dataset_exists, mounted, noise, restore_finished, restore_reason,
    sums,
};
use zetaback_e2e::{Env, eventually};

async fn finished(api: &Api<Restore>, name: &str) -> Restore {
    restore_finished(api, name, Duration::from_secs(300)).await
}

fn status(r: &Restore) -> zetaback::api::RestoreStatus {
    r.status.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_by_time_from_the_archive_and_after_a_crash() {
    let env = Env::get();
    let mut fleet = Fleet::source_store_dest(env, "rsmore", "1G").await;
    let ns = fleet.ns.clone();
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let (ps, pd) = (
        fleet.host("src").pool.clone(),
        fleet.host("dst").pool.clone(),
    );

    // A full and two incrementals (chained, uncompressed, so the streams are as big as the
    // changes). Version 2 adds a big file (the first incremental is the long piece the crash
    // case interrupts); version 3 changes a little.
    let Chain {
        dataset,
        backups,
        ids,
        originals,
    } = fleet
        .chained_backups("none", |ds, v| {
            match v {
                1 => fleet.write_file(ds, "a.bin", &noise(1, 8_000_000)),
                2 => fleet.write_file(ds, "big.bin", &noise(2, 48_000_000)),
                _ => {
                    let mut a = noise(1, 8_000_000);
                    a[1_000_000..1_100_000].copy_from_slice(&noise(3, 100_000));
                    fleet.write_file(ds, "a.bin", &a);
                }
            }
            fleet.write_file(ds, "b.txt", format!("version {v}\n").as_bytes());
            if v > 1 {
                fleet.write_file(ds, &format!("dir/new-{v}.txt"), b"added\n");
            }
        })
        .await;
    assert!(originals[0] != originals[1] && originals[1] != originals[2]);
    let created: Vec<jiff::Timestamp> = backups.iter().map(|b| b.manifest.created).collect();
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let store = fleet.store_client();
    let bak_ep = fleet.host("bak").endpoint();

    // (a) A point in time through the CLI, onto the source host itself.
    // Exactly the first incremental's time: it is "at or before", so it is included.
    let at = created[1].to_string();
    let at_ds = format!("{ps}/restored/at-exact");
    let to = format!("{src}/{at_ds}");
    let (code, out) = fleet
        .restore_with_cli(
            "at-exact",
            &["--host", &src, "--dataset", &dataset, "--at", &at],
            &to,
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let st = status(&finished(&restores, "at-exact").await);
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true), "{st:?}");
    assert_eq!(st.chain, ids[..2], "full + first incremental");
    assert_eq!(
        sums(&mounted(&at_ds)),
        originals[1],
        "--at {at} restored other files"
    );

    // Between the first incremental and the second: still the first incremental.
    let between = (created[1] + jiff::SignedDuration::from_secs(1)).to_string();
    assert!(between.as_str() < created[2].to_string().as_str());
    let between_ds = format!("{ps}/restored/at-between");
    let to = format!("{src}/{between_ds}");
    let (code, out) = fleet
        .restore_with_cli(
            "at-between",
            &["--host", &src, "--dataset", &dataset, "--at", &between],
            &to,
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let st = status(&finished(&restores, "at-between").await);
    assert_eq!(st.chain, ids[..2], "{st:?}");
    assert_eq!(sums(&mounted(&between_ds)), originals[1]);

    // Before the full: nothing to restore, refused before anything is sent.
    let before = (created[0] - jiff::SignedDuration::from_secs(3600)).to_string();
    let before_ds = format!("{ps}/restored/at-before");
    let to = format!("{src}/{before_ds}");
    let (code, out) = fleet
        .restore_with_cli(
            "at-before",
            &["--host", &src, "--dataset", &dataset, "--at", &before],
            &to,
        )
        .await;
    assert_eq!(code, 1, "{out}");
    let r = finished(&restores, "at-before").await;
    assert_eq!(status(&r).phase, RestorePhase::Failed);
    assert_eq!(restore_reason(&r), "NotFound", "{:?}", r.status);
    assert!(status(&r).claimed_by.is_none(), "no agent ran it");
    assert!(!dataset_exists(&before_ds));

    // (b) The archive area: the full and the first incremental move there.
    for id in &ids[..2] {
        store
            .archive(&bak_ep, &src, &dataset, id)
            .await
            .expect("archive");
    }
    let escaped = zetaback::store::escape_dataset(&dataset).expect("escape");
    let store_root = fleet.store_root("bak");
    for id in &ids[..2] {
        let archived = store_root
            .join(".archive")
            .join(&src)
            .join(&escaped)
            .join(id);
        assert!(
            archived.is_file(),
            "{} is not in the archive",
            archived.display()
        );
        assert!(!store_root.join(&src).join(&escaped).join(id).exists());
    }
    let c = store.catalogue(&bak_ep, &src).await.expect("catalogue");
    let flags: Vec<(String, bool)> = c
        .of(&src, &dataset)
        .map(|b| (b.manifest.id.clone(), b.archived))
        .collect();
    println!("after archiving: {flags:?}");
    assert_eq!(
        flags,
        [
            (ids[0].clone(), true),
            (ids[1].clone(), true),
            (ids[2].clone(), false)
        ]
    );
    // Without includeArchive the live incremental has no base: refused, nothing sent.
    let live_ds = format!("{pd}/restored/live-only");
    create_restore(
        &restores,
        "live-only",
        serde_json::json!({"source": {"host": src, "dataset": dataset},
            "destination": {"host": dst, "dataset": live_ds}}),
    )
    .await;
    let r = finished(&restores, "live-only").await;
    assert_eq!(status(&r).phase, RestorePhase::Failed);
    assert_eq!(restore_reason(&r), "ChainBroken", "{:?}", r.status);
    assert!(status(&r).claimed_by.is_none());
    assert!(!dataset_exists(&live_ds));
    // With it: the archived full and incremental, then the live one.
    let archive_ds = format!("{pd}/restored/from-archive");
    let to = format!("{dst}/{archive_ds}");
    let (code, out) = fleet
        .restore_with_cli(
            "from-archive",
            &["--host", &src, "--dataset", &dataset, "--include-archive"],
            &to,
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let st = status(&finished(&restores, "from-archive").await);
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true));
    assert_eq!(st.chain, ids, "{st:?}");
    assert_eq!(
        sums(&mounted(&archive_ds)),
        originals[2],
        "archive restore differs"
    );
    // An archived point by id.
    let archived_ds = format!("{pd}/restored/archived-point");
    create_restore(
        &restores,
        "archived-point",
        serde_json::json!({"source": {"host": src, "dataset": dataset, "backup": ids[1],
                "includeArchive": true},
            "destination": {"host": dst, "dataset": archived_ds}}),
    )
    .await;
    let st = status(&finished(&restores, "archived-point").await);
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids[..2]);
    assert_eq!(sums(&mounted(&archived_ds)), originals[1]);

    // (c) SIGKILL the destination agent mid-restore. Once the first piece is applied (its
    // snapshot exists on the destination) the backup host is frozen (SIGSTOP) so the second
    // piece cannot finish before the kill; it runs again right after.
    let killed_ds = format!("{pd}/restored/killed");
    let first_snap = format!("{killed_ds}@{}", backups[0].manifest.snapshot);
    let last_snap = format!("{killed_ds}@{}", backups[2].manifest.snapshot);
    create_restore(
        &restores,
        "killed",
        serde_json::json!({"source": {"host": src, "dataset": dataset, "includeArchive": true},
            "destination": {"host": dst, "dataset": killed_ds}}),
    )
    .await;
    eventually(
        "the first piece is applied",
        Duration::from_secs(180),
        || async {
            let r = restores.get("killed").await.ok()?;
            let phase = status(&r).phase;
            assert!(
                matches!(phase, RestorePhase::Pending | RestorePhase::Running),
                "the restore ended before it could be interrupted: {:?}",
                r.status
            );
            dataset_exists(&first_snap).then_some(())
        },
    )
    .await;
    fleet.pause("bak");
    let before_kill = status(&restores.get("killed").await.expect("restore"));
    fleet.kill("dst");
    fleet.resume("bak");
    println!(
        "killed {dst}'s agent during restore 'killed': phase={:?} bytesDone={:?} of {:?}",
        before_kill.phase, before_kill.bytes_done, before_kill.bytes
    );
    assert_eq!(before_kill.phase, RestorePhase::Running, "{before_kill:?}");
    assert!(
        before_kill.bytes_done < before_kill.bytes,
        "mid-restore: {before_kill:?}"
    );
    assert!(
        !dataset_exists(&last_snap),
        "the restore cannot have completed"
    );
    // Nobody ends it while the agent is down (the destination's agent owns it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = status(&restores.get("killed").await.expect("restore"));
    assert_eq!(down.phase, RestorePhase::Running, "{down:?}");

    fleet.restart("dst");
    let r = finished(&restores, "killed").await;
    let st = status(&r);
    assert_eq!(st.phase, RestorePhase::Failed, "{st:?}");
    assert_eq!(restore_reason(&r), "Interrupted", "{st:?}");
    assert_ne!(st.verified, Some(true), "{st:?}");
    let message = st.message.clone().unwrap_or_default();
    assert!(message.contains("interrupted"), "{message}");
    assert!(
        !dataset_exists(&last_snap),
        "a failed restore must not leave the restored point behind"
    );
    let partial = dataset_exists(&killed_ds);
    println!("after the restart: {killed_ds} exists: {partial}; message: {message}");

    // A new Restore into the same destination (force: it holds the partial restore); the
    // agent continues after the pieces already there (ZFS checks the incremental's base).
    create_restore(
        &restores,
        "killed-again",
        serde_json::json!({"source": {"host": src, "dataset": dataset, "includeArchive": true},
            "destination": {"host": dst, "dataset": killed_ds}, "force": true}),
    )
    .await;
    let st = status(&finished(&restores, "killed-again").await);
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true));
    assert_eq!(st.chain, ids);
    assert_eq!(
        sums(&mounted(&killed_ds)),
        originals[2],
        "restore after the crash differs"
    );
    if partial {
        assert!(
            st.bytes_done < st.bytes,
            "the pieces already received are not sent again: {st:?}"
        );
    }

    let table = env.kubectl(&["get", "restores", "-n", &ns]);
    println!(
        "kubectl get restores:\n{}",
        zetaback_e2e::text(&table.stdout)
    );
    fleet.shutdown().await;
}
