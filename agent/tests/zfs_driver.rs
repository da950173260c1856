//! The ZFS driver on real zfs-fuse pools.

mod common;

use common::{Pool, checksums, mountpoint, write_files, zfs};
use zetaback_agent::zfs::{Capability, ReceiveRequest, SendBase, SendRequest, Zfs, ZfsError};

async fn pipe(zfs: &Zfs, send: SendRequest, recv: ReceiveRequest) -> Result<u64, ZfsError> {
    let mut s = zfs.send(&send)?;
    let mut r = zfs.receive(&recv)?;
    let mut out = s.take_stdout().expect("stdout");
    let copied = {
        let stdin = r.stdin().expect("stdin");
        tokio::io::copy(&mut out, stdin).await
    };
    r.finish().await?;
    s.wait().await?;
    Ok(copied.expect("copy"))
}

#[tokio::test]
async fn driver_on_zfs_fuse() {
    let pool = Pool::new("drv");
    let (ds, dir) = pool.create("data");
    write_files(&dir, 1, 6, 50_000);

    let z = Zfs::detect().await.expect("detect");
    // zfs-fuse: holds only (hold/release work; `zfs holds` does not, needs pyzfs).
    assert!(z.capabilities().has(Capability::Holds));
    assert!(!z.capabilities().has(Capability::ResumableSend));
    assert!(!z.capabilities().has(Capability::ParsableList));

    z.snapshot(&ds, "zb-1").await.expect("snapshot");
    zfs(&["snapshot", &format!("{ds}@manual")]);
    let inv = z.inventory(Some(&pool.name)).await.expect("inventory");
    assert!(inv.datasets.iter().any(|d| d.name == ds && d.used > 0));
    let snaps: Vec<_> = inv
        .snapshots_of(&ds)
        .map(|s| (s.name.clone(), s.managed))
        .collect();
    assert!(snaps.contains(&("zb-1".into(), true)), "{snaps:?}");
    assert!(snaps.contains(&("manual".into(), false)), "{snaps:?}");

    // Only our own snapshots are destroyed.
    let err = z.destroy_own_snapshot(&ds, "manual").await.unwrap_err();
    assert!(matches!(err, ZfsError::NotOurs { .. }), "{err}");
    // Names are validated before zfs sees them.
    assert!(matches!(
        z.snapshot(&ds, "-r").await,
        Err(ZfsError::Name(_))
    ));

    // Full send | receive into a new dataset.
    let target = format!("{}/copy", pool.name);
    let full = SendRequest {
        dataset: ds.clone(),
        snapshot: "zb-1".into(),
        ..Default::default()
    };
    let recv = ReceiveRequest {
        target: target.clone(),
        force: false,
        resumable: true,
        purpose: Default::default(),
    };
    let n = pipe(&z, full, recv.clone()).await.expect("full");
    assert!(n > 300_000, "{n}");
    // A replica must not change between receives (reading it would update atimes).
    z.protect_replica(&target).await.expect("readonly");
    assert_eq!(checksums(&dir).len(), 6);
    assert_eq!(checksums(&mountpoint(&target)), {
        // the source has changed since? no: compare against the snapshot contents
        checksums(&dir)
    });

    // Incremental with -i.
    write_files(&dir, 2, 4, 30_000);
    z.snapshot(&ds, "zb-2").await.expect("snapshot 2");
    let incr = SendRequest {
        dataset: ds.clone(),
        snapshot: "zb-2".into(),
        base: Some(SendBase {
            name: "zb-1".into(),
            intermediates: false,
            bookmark: false,
        }),
        ..Default::default()
    };
    pipe(&z, incr, recv.clone()).await.expect("incremental");
    assert_eq!(checksums(&mountpoint(&target)), checksums(&dir));

    // A failing command carries the command line and stderr.
    let bad = SendRequest {
        dataset: ds.clone(),
        snapshot: "nope".into(),
        ..Default::default()
    };
    let mut s = z.send(&bad).expect("spawn");
    let mut out = s.take_stdout().expect("stdout");
    let mut sink = tokio::io::sink();
    let _ = tokio::io::copy(&mut out, &mut sink).await;
    match s.wait().await {
        Err(ZfsError::Failed {
            command, stderr, ..
        }) => {
            assert!(command.to_string().contains("send"), "{command}");
            assert!(!stderr.is_empty());
        }
        other => panic!("expected Failed, got {other:?}"),
    }

    // Holds: a held snapshot cannot be destroyed, a released one can.
    z.hold(&ds, "zb-1", false).await.expect("hold");
    assert!(z.destroy_own_snapshot(&ds, "zb-1").await.is_err());
    z.hold(&ds, "zb-1", true).await.expect("release");
    z.destroy_own_snapshot(&ds, "zb-1")
        .await
        .expect("destroy our own");
    assert!(z.dataset_exists(&target).await.expect("exists"));
    assert!(
        !z.dataset_exists(&format!("{}/nope", pool.name))
            .await
            .expect("exists")
    );

    let pools = z.pools().await.expect("pools");
    let p = pools
        .iter()
        .find(|p| p.name == pool.name)
        .expect("our pool");
    assert_eq!(p.health, "ONLINE");
    assert!(p.size_bytes.unwrap_or(0) > 100_000_000);
}
