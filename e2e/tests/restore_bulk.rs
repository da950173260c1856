//! Bulk restores from the command line, end to end on real parts: zfs-fuse pools, three
//! `zetaback-agent` processes (source, backup host storing files, destination), the local
//! kube-apiserver and the controller in-process.
//!
//! The source has `srv`, `srv/a`, `srv/a/nested` and `srv/b`, each backed up (a full each,
//! then an incremental of `srv/a` after its files changed). Then, through
//! `kubectl zetaback restore --dataset PATTERN ... --to HOST/BASE --wait`:
//! 1. A destination that exists refuses the whole bulk restore before anything starts
//!    (DestinationExists, no child Restore, no dataset created).
//! 2. `srv/a/**` and `srv/b` at the point in time before the incremental: three datasets under
//!    the base, parent before child, each equal (sha256 of every file) to the original at
//!    that time; the parent and its three children Succeeded verified.
//! 3. One flipped byte in `srv/b`'s stored full: the parent fails naming `srv/b`
//!    (ChecksumMismatch), `srv/a` is restored all the same, and `srv/b`'s destination does not
//!    exist.

use std::time::Duration;

use kube::api::{Api, ListParams};
use zetaback::api::Restore;
use zetaback::api::restore::{BULK_PARENT_LABEL, RestorePhase};
use zetaback_e2e::Env;
use zetaback_e2e::fleet::{
    DEFAULT_POOL_SIZE, Fleet, create_dataset, dataset_exists, mounted, noise, sums,
};

/// The sha256 lines of a dataset's own files (those of a mounted child dataset, `nested`,
/// left out).
fn own_sums(ds: &str) -> String {
    sums(&mounted(ds))
        .lines()
        .filter(|l| !l.contains("  ./nested/"))
        .map(|l| format!("{l}\n"))
        .collect()
}

async fn children(api: &Api<Restore>, parent: &str) -> Vec<Restore> {
    api.list(&ListParams::default().labels(&format!("{BULK_PARENT_LABEL}={parent}")))
        .await
        .expect("children")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_restores_from_the_command_line() {
    let env = Env::get();
    let fleet = Fleet::source_store_dest(env, "restoreb", DEFAULT_POOL_SIZE).await;
    let client = fleet.client.clone();
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let dp = fleet.host("dst").pool.clone();
    let a = fleet.create_dataset("src", "srv/a");
    let nested = fleet.create_dataset("src", "srv/a/nested");
    let b = fleet.create_dataset("src", "srv/b");
    let srv = a.trim_end_matches("/a").to_owned();
    for (i, ds) in [&a, &nested, &b].into_iter().enumerate() {
        let seed = u32::try_from(i).expect("small") + 10;
        fleet.write_file(ds, "data.bin", &noise(seed, 400_000));
        fleet.write_file(ds, "etc/conf.txt", format!("{ds} v1\n").as_bytes());
    }
    fleet.write_file(&srv, "top.txt", b"the parent of a and b\n");

    let spec = fleet.policy_spec("src", "bak", "*/srv/**");
    fleet
        .create_policy("srv", "src", &[&srv, &a, &nested, &b], spec)
        .await;
    let mut at_fulls = None;
    for ds in [&srv, &a, &nested, &b] {
        let full = fleet.wait_for_backups("bak", "src", ds, 1).await;
        at_fulls = at_fulls.max(full.first().map(|f| f.manifest.created));
    }
    let at_fulls = at_fulls.expect("fulls");
    let v1: Vec<String> = [&a, &nested, &b].iter().map(|d| own_sums(d)).collect();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later stream time
    fleet.write_file(&a, "etc/conf.txt", format!("{a} v2\n").as_bytes());
    fleet.write_file(&a, "added.txt", b"after the full\n");
    fleet.backup_incremental_now("srv", "src", &a).await;
    fleet.wait_for_backups("bak", "src", &a, 2).await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), &fleet.ns);
    let pattern = format!("{srv}/**");

    // 1. An existing destination refuses everything before anything starts.
    let taken = format!("{dp}/r1/{b}");
    create_dataset(fleet.env, &taken);
    // The controller checks destinations against the ZfsHost status.
    fleet.wait_for_datasets("dst", &[&taken]).await;
    let to = format!("{dst}/{dp}/r1");
    let (code, out) = fleet
        .restore_with_cli("refused", &["--host", &src, "--dataset", &pattern], &to)
        .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("(DestinationExists)")
            && out.contains("cannot be restored, so none was started")
            && out.contains(&format!("{taken} exists")),
        "{out}"
    );
    assert!(children(&restores, "refused").await.is_empty());
    assert!(!dataset_exists(&format!("{dp}/r1/{a}")));

    // 2. srv/a/** and srv/b at the time of the fulls: three datasets, parent before child.
    let to = format!("{dst}/{dp}/r2");
    let at = zetaback::cli::table::time(at_fulls);
    let (code, out) = fleet
        .restore_with_cli(
            "at-fulls",
            &[
                "--host",
                &src,
                "--dataset",
                &format!("{a}/**"),
                "--dataset",
                &b,
                "--at",
                &at,
            ],
            &to,
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let parent = restores.get("at-fulls").await.expect("parent");
    let st = parent.status.clone().expect("status");
    assert_eq!(
        (st.phase, st.verified),
        (RestorePhase::Succeeded, Some(true)),
        "{st:?}"
    );
    let rows: Vec<(&str, &str)> = st
        .datasets
        .iter()
        .map(|r| (r.source.as_str(), r.destination.as_str()))
        .collect();
    let base = format!("{dp}/r2");
    assert_eq!(
        rows,
        [
            (a.as_str(), format!("{base}/{a}").as_str()),
            (nested.as_str(), format!("{base}/{nested}").as_str()),
            (b.as_str(), format!("{base}/{b}").as_str()),
        ]
    );
    let kids = children(&restores, "at-fulls").await;
    assert_eq!(kids.len(), 3);
    for k in &kids {
        let ks = k.status.clone().expect("child status");
        assert_eq!(
            (ks.phase, ks.verified, ks.chain.len()),
            (RestorePhase::Succeeded, Some(true), 1),
            "each at its full: {ks:?}"
        );
        assert_eq!(
            k.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.as_str()),
            Some("at-fulls")
        );
    }
    for (ds, original) in [&a, &nested, &b].iter().zip(&v1) {
        let restored = format!("{base}/{ds}");
        assert_eq!(&own_sums(&restored), original, "{restored}");
        println!("{restored}: every file's sha256 equals {ds}'s at {at}");
    }

    // 3. A corrupt stored stream fails its dataset only.
    let escaped = b.replace('/', "+");
    let dir = fleet.store_root("bak").join(&src).join(escaped);
    let full = std::fs::read_dir(&dir)
        .expect("store dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "full"))
        .expect("b's full");
    let mut bytes = std::fs::read(&full).expect("stored full");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&full, &bytes).expect("corrupt");
    let to = format!("{dst}/{dp}/r3");
    let (code, out) = fleet
        .restore_with_cli(
            "one-corrupt",
            &["--host", &src, "--dataset", &a, "--dataset", &b],
            &to,
        )
        .await;
    assert_eq!(code, 1, "{out}");
    let st = restores
        .get("one-corrupt")
        .await
        .expect("parent")
        .status
        .expect("status");
    assert_eq!(st.phase, RestorePhase::Failed, "{st:?}");
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with(&format!(
            "1 of 2 dataset(s) not restored: {b} (ChecksumMismatch"
        )),
        "{msg}"
    );
    assert_eq!(st.datasets[0].phase, RestorePhase::Succeeded);
    assert_eq!(st.datasets[1].phase, RestorePhase::Failed);
    let base = format!("{dp}/r3");
    assert_eq!(own_sums(&format!("{base}/{a}")), own_sums(&a));
    assert!(
        !dataset_exists(&format!("{base}/{b}")),
        "a corrupt piece never reaches the destination"
    );
    fleet.shutdown().await;
}
