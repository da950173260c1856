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

use kube::api::{Api, PostParams};
use zetaback::api::restore::RestorePhase;
use zetaback::api::{BackupPolicy, BackupPolicySpec, Restore};
use zetaback_e2e::fleet::{
    Fleet, HostSpec, create_restore, dataset_exists, mounted, noise, restore_finished,
    restore_reason as reason, sums,
};
use zetaback_e2e::{Env, eventually, text};

async fn finished(api: &Api<Restore>, name: &str) -> Restore {
    restore_finished(api, name, Duration::from_secs(180)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_are_verified_and_refused_when_they_cannot_work() {
    let env = Env::get();
    let ns = env.namespace("restore");
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src"),
            HostSpec::store("bak"),
            HostSpec::source("dst"),
        ],
    )
    .await;
    fleet.start_controller(|_| {}).await;
    let client = fleet.client.clone();
    let names = [fleet.name("src"), fleet.name("bak"), fleet.name("dst")];
    let pd = fleet.host("dst").pool.clone();
    let store_root = fleet.store_root("bak");
    let dataset = fleet.create_dataset("src", "data");
    let data_dir = mounted(&dataset);

    // Version 1 of the files, then a chained policy whose first full is due at once; the
    // incrementals come only on request.
    std::fs::write(data_dir.join("a.bin"), noise(1, 3_000_000)).expect("a");
    std::fs::write(data_dir.join("b.txt"), "version 1\n").expect("b");
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": [names[0]]},
        "datasets": {"include": ["*/data"]},
        "full": {"every": "24h", "keep": "48h"},
        "incremental": {"every": "12h", "keep": "48h", "against": "previous"},
        "target": {"host": names[1], "path": store_root.display().to_string()},
        "compression": "zstd",
    }))
    .expect("policy spec");
    // The policy selects from the ZfsHost status (it is not triggered by its changes).
    fleet.wait_for_datasets("src", &[&dataset]).await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &BackupPolicy::new("chained", spec))
        .await
        .expect("create policy");

    let store = fleet.store_client();
    let bak_ep = fleet.host("bak").endpoint();
    let stored = |n: usize| {
        let (store, ep, host, dataset) = (
            store.clone(),
            bak_ep.clone(),
            names[0].clone(),
            dataset.clone(),
        );
        async move {
            let c = store.catalogue(&ep, &host).await.ok()?;
            let ids: Vec<String> = c
                .of(&host, &dataset)
                .map(|b| b.manifest.id.clone())
                .collect();
            (ids.len() >= n).then_some(ids)
        }
    };
    eventually("the full is stored", Duration::from_secs(120), || stored(1)).await;
    let mut originals = vec![sums(&data_dir)];

    // Two incrementals, each after a change to the files.
    for v in 2..=3u32 {
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct stream times
        let mut a = noise(1, 3_000_000);
        a[(v as usize) * 100_000..(v as usize) * 100_000 + 50_000]
            .copy_from_slice(&noise(v, 50_000));
        std::fs::write(data_dir.join("a.bin"), a).expect("a");
        std::fs::write(data_dir.join("b.txt"), format!("version {v}\n")).expect("b");
        std::fs::write(
            data_dir.join(format!("new-{v}.txt")),
            format!("added in {v}\n"),
        )
        .expect("new");
        let (code, out) = fleet
            .zb(&[
                "backup",
                "chained",
                "--host",
                &names[0],
                "--dataset",
                &dataset,
                "--incremental",
            ])
            .await;
        assert_eq!(code, 0, "backup-now: {out}");
        let n = v as usize;
        eventually(
            &format!("incremental {} is stored", v - 1),
            Duration::from_secs(120),
            || stored(n),
        )
        .await;
        originals.push(sums(&data_dir));
    }
    let ids = stored(3).await.expect("three backups");
    println!("stored backups of {}:{dataset}: {ids:?}", names[0]);
    assert_eq!(ids.len(), 3, "{ids:?}");
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

    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns);
    let source = |extra: serde_json::Value| {
        let mut s = serde_json::json!({"host": names[0], "dataset": dataset});
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
            "destination": {"host": names[2], "dataset": newest_ds}}),
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
    let to = format!("{}/{middle_ds}", names[2]);
    let (code, out) = fleet
        .zb(&[
            "restore",
            "--host",
            &names[0],
            "--dataset",
            &dataset,
            "--backup",
            &ids[1],
            "--to",
            &to,
            "--name",
            "middle",
            "--wait",
        ])
        .await;
    println!(
        "kubectl zetaback restore --backup {} --to {to} --wait (exit {code}):\n{out}",
        ids[1]
    );
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
            "destination": {"host": names[2], "dataset": newest_ds}}),
    )
    .await;
    let r = finished(&restores, "exists").await;
    assert_eq!(reason(&r), "DestinationExists");

    // 3. One flipped byte in the stored full: ChecksumMismatch, the destination is untouched.
    let escaped = zetaback::store::escape_dataset(&dataset).expect("escape");
    let full_path = store_root.join(&names[0]).join(&escaped).join(&ids[0]);
    let original_full = std::fs::read(&full_path).expect("stored full");
    let mut corrupt = original_full.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x01;
    std::fs::write(&full_path, &corrupt).expect("corrupt");
    let corrupt_ds = format!("{pd}/restored/corrupt");
    let to = format!("{}/{corrupt_ds}", names[2]);
    let (code, out) = fleet
        .zb(&[
            "restore",
            "--host",
            &names[0],
            "--dataset",
            &dataset,
            "--to",
            &to,
            "--name",
            "corrupt",
            "--wait",
        ])
        .await;
    println!("kubectl zetaback restore --to {to} --wait (exit {code}):\n{out}");
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
    store
        .delete(&bak_ep, &names[0], &dataset, &ids[1])
        .await
        .expect("delete the middle incremental");
    let broken_ds = format!("{pd}/restored/broken");
    create_restore(
        &restores,
        "broken",
        serde_json::json!({"source": source(serde_json::json!({"backup": ids[2]})),
            "destination": {"host": names[2], "dataset": broken_ds}}),
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
