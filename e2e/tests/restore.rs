//! Restores end to end, on real parts: the local kube-apiserver, real ZFS (zfs-fuse
//! file-backed pools), three `zetaback-agent` processes (a source host, a backup host storing
//! files, a destination host) and the controller in-process.
//!
//! A chained policy (`incremental.against: previous`) takes a full and two incrementals of a
//! dataset whose files change in between; then: the newest point and a middle point (full +
//! one incremental) are restored to new datasets (under a missing parent) on the destination
//! host, and every restored file's sha256 equals the original's at that snapshot; one flipped
//! byte in a stored stream fails the restore with ChecksumMismatch and the destination does
//! not exist; with the middle incremental deleted, the restore reports ChainBroken before the
//! agent touches anything.

use std::time::Duration;

use kube::api::Api;
use zetaback::api::Restore;
use zetaback::api::restore::RestorePhase;
use zetaback_e2e::fleet::{
    Chain, DEFAULT_POOL_SIZE, Fleet, create_restore, dataset_exists, mounted, noise,
    restore_finished, restore_reason as reason, sums,
};
use zetaback_e2e::{Env, text};

async fn finished(api: &Api<Restore>, name: &str) -> Restore {
    restore_finished(api, name, Duration::from_secs(180)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_are_verified_and_refused_when_they_cannot_work() {
    let env = Env::get();
    let fleet = Fleet::source_store_dest(env, "restore", DEFAULT_POOL_SIZE).await;
    let ns = fleet.ns.clone();
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let pd = fleet.host("dst").pool.clone();
    let store_root = fleet.store_root("bak");

    // A full and two incrementals (chained, zstd); each version changes a different part of
    // a.bin, rewrites b.txt and adds a file.
    let Chain {
        dataset,
        ids,
        originals,
        ..
    } = fleet
        .chained_backups("zstd", |ds, v| {
            let mut a = noise(1, 3_000_000);
            if v > 1 {
                let at = (v as usize) * 100_000;
                a[at..at + 50_000].copy_from_slice(&noise(v, 50_000));
                let added = format!("added in {v}\n");
                fleet.write_file(ds, &format!("new-{v}.txt"), added.as_bytes());
            }
            fleet.write_file(ds, "a.bin", &a);
            fleet.write_file(ds, "b.txt", format!("version {v}\n").as_bytes());
        })
        .await;
    assert!(
        ids[0].ends_with(".full")
            && ids[1].contains(".incremental.")
            && ids[2].contains(".incremental.")
    );
    // Chained: the second incremental is taken against the first.
    let first_inc_ts = ids[1].split('.').next().expect("ts");
    assert!(
        ids[2].ends_with(&format!(".incremental.{first_inc_ts}")),
        "{ids:?}"
    );

    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let source = |extra: serde_json::Value| {
        let mut s = serde_json::json!({"host": src, "dataset": dataset});
        if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        s
    };

    // 1. The newest point, to another host, under a parent that does not exist yet.
    let newest_ds = format!("{pd}/restored/newest");
    create_restore(
        &restores,
        "newest",
        serde_json::json!({"source": source(serde_json::json!({})),
            "destination": {"host": dst, "dataset": newest_ds}}),
    )
    .await;
    let r = finished(&restores, "newest").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true));
    assert_eq!(st.chain, ids, "the whole chain, in order");
    assert!(st.pieces.iter().all(|p| p.verified == Some(true)), "{st:?}");
    assert_eq!(st.bytes_done, st.bytes);
    assert_eq!(
        sums(&mounted(&newest_ds)),
        originals[2],
        "newest restore differs"
    );

    // 2. A middle point: the full and the first incremental (by id), through the CLI.
    let middle_ds = format!("{pd}/restored/middle");
    let to = format!("{dst}/{middle_ds}");
    let (code, out) = fleet
        .restore_with_cli(
            "middle",
            &["--host", &src, "--dataset", &dataset, "--backup", &ids[1]],
            &to,
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Succeeded") && out.contains("verified=true"),
        "{out}"
    );
    let r = finished(&restores, "middle").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.chain, ids[..2], "full + first incremental");
    assert_eq!(
        sums(&mounted(&middle_ds)),
        originals[1],
        "middle restore differs"
    );
    assert_ne!(originals[1], originals[2]);

    // An existing destination is refused without force.
    create_restore(
        &restores,
        "exists",
        serde_json::json!({"source": source(serde_json::json!({})),
            "destination": {"host": dst, "dataset": newest_ds}}),
    )
    .await;
    let r = finished(&restores, "exists").await;
    assert_eq!(reason(&r), "DestinationExists");

    // 3. One flipped byte in the stored full: ChecksumMismatch, the destination is untouched.
    let escaped = zetaback::store::escape_dataset(&dataset).expect("escape");
    let full_path = store_root.join(&src).join(&escaped).join(&ids[0]);
    let original_full = std::fs::read(&full_path).expect("stored full");
    let mut corrupt = original_full.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x01;
    std::fs::write(&full_path, &corrupt).expect("corrupt");
    let corrupt_ds = format!("{pd}/restored/corrupt");
    let to = format!("{dst}/{corrupt_ds}");
    let (code, out) = fleet
        .restore_with_cli("corrupt", &["--host", &src, "--dataset", &dataset], &to)
        .await;
    assert_eq!(code, 1, "a failed restore exits 1: {out}");
    assert!(out.contains("ChecksumMismatch"), "{out}");
    let r = finished(&restores, "corrupt").await;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(RestorePhase::Failed)
    );
    assert_eq!(reason(&r), "ChecksumMismatch", "{:?}", r.status);
    assert!(!dataset_exists(&corrupt_ds), "{corrupt_ds} must not exist");
    std::fs::write(&full_path, &original_full).expect("repair");

    // 4. The middle incremental deleted: ChainBroken, reported by the controller before the
    //    destination agent claims anything.
    fleet
        .store_client()
        .delete(&fleet.host("bak").endpoint(), &src, &dataset, &ids[1])
        .await
        .expect("delete the middle incremental");
    let broken_ds = format!("{pd}/restored/broken");
    create_restore(
        &restores,
        "broken",
        serde_json::json!({"source": source(serde_json::json!({"backup": ids[2]})),
            "destination": {"host": dst, "dataset": broken_ds}}),
    )
    .await;
    let r = finished(&restores, "broken").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, RestorePhase::Failed);
    assert_eq!(reason(&r), "ChainBroken", "{st:?}");
    assert!(
        st.claimed_by.is_none() && st.chain.is_empty(),
        "nothing was sent: {st:?}"
    );
    assert!(!dataset_exists(&broken_ds));

    let table = env.kubectl(&["get", "restores", "-n", &ns]);
    println!("kubectl get restores:\n{}", text(&table.stdout));

    fleet.shutdown().await;
}
