//! Restore drills on the destination host (a Restore with `spec.drill`): the scratch guard
//! that runs before a drill receives anything, the check of the restored snapshots after it,
//! and the clean-up of the scratch dataset.
//!
//! A drill may only create a new dataset directly under a scratch root: a dataset the host's
//! administrator marked with the user property `zetaback.io:scratch=on` (set on the root
//! itself, not inherited). Whatever a Restore object says, a drill therefore never touches a
//! source dataset or any dataset that is not scratch, and the clean-up destroys only the
//! dataset the drill itself created.

use tracing::{info, warn};
use zetaback_core::api::restore::SCRATCH_PROPERTY;

use crate::restore::RestoreError;
use crate::zfs::{Busy, Patience, Zfs, ZfsError, retry_while_busy};

/// The scratch root a drill into `into` needs: its parent (`None` for a pool or a pool's
/// direct child, which are never scratch).
pub fn scratch_root(into: &str) -> Option<&str> {
    let (parent, _) = into.rsplit_once('/')?;
    parent.contains('/').then_some(parent)
}

/// Refuses a drill destination that is not a new dataset directly under a scratch root.
pub async fn check_destination(zfs: &Zfs, into: &str) -> Result<(), RestoreError> {
    let refuse = |why: String| RestoreError::NotScratch {
        dataset: into.to_owned(),
        why,
    };
    let Some(root) = scratch_root(into) else {
        return Err(refuse(
            "a drill restores into a new dataset under a scratch root (pool/root/name)".into(),
        ));
    };
    if !zfs.dataset_exists(root).await? {
        return Err(refuse(format!("the scratch root {root} does not exist")));
    }
    let mark = zfs.local_property(root, SCRATCH_PROPERTY).await?;
    if mark.as_deref() != Some("on") {
        return Err(refuse(format!(
            "{root} is not marked as a scratch root (zfs set {SCRATCH_PROPERTY}=on {root} on this host allows drills under it)"
        )));
    }
    if zfs.dataset_exists(into).await? {
        return Err(refuse(format!(
            "{into} exists already; a drill only creates"
        )));
    }
    Ok(())
}

/// Checks that every snapshot the chain restored is on the scratch dataset.
pub async fn check_restored(
    zfs: &Zfs,
    into: &str,
    pieces: &[(String, String)],
) -> Result<(), RestoreError> {
    for (id, snapshot) in pieces {
        if zfs.snapshot_info(into, snapshot).await.is_err() {
            return Err(RestoreError::SnapshotMissing {
                id: id.clone(),
                dataset: into.to_owned(),
                snapshot: snapshot.clone(),
            });
        }
    }
    Ok(())
}

/// How often the clean-up tries a destroy that ZFS calls busy (zfs-fuse does for a moment
/// after a receive mounted the dataset), and how long it waits between tries.
const DESTROY: Patience = Patience::tries(10, std::time::Duration::from_secs(1));

/// Why the clean-up failed.
#[derive(Debug, thiserror::Error)]
enum CleanUpError {
    #[error("could not look for the drill's scratch dataset: {0}")]
    Look(ZfsError),
    #[error("could not destroy the drill's scratch dataset: {0}")]
    Destroy(ZfsError),
}

impl Busy for CleanUpError {
    fn is_busy(&self) -> bool {
        // Only the destroy is tried again (as before: a failed look ends the clean-up).
        matches!(self, CleanUpError::Destroy(e) if e.is_busy())
    }
}

/// Destroys the scratch dataset a drill created (if it exists); true when it is gone.
pub async fn clean_up(zfs: &Zfs, into: &str) -> bool {
    let gone = retry_while_busy(
        "destroying the drill's scratch dataset",
        into,
        DESTROY,
        move || async move {
            if !zfs.dataset_exists(into).await.map_err(CleanUpError::Look)? {
                return Ok(());
            }
            zfs.destroy_restored(into)
                .await
                .map_err(CleanUpError::Destroy)?;
            info!(dataset = %into, "drill scratch dataset destroyed");
            Ok::<(), CleanUpError>(())
        },
    )
    .await;
    match gone {
        Ok(()) => true,
        Err(e) => {
            warn!(dataset = %into, error = %e, "the drill's scratch dataset is left");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_root_is_the_parent_below_a_pool() {
        assert_eq!(scratch_root("tank/drills/d1"), Some("tank/drills"));
        assert_eq!(scratch_root("tank/a/b/d1"), Some("tank/a/b"));
        assert_eq!(scratch_root("tank/d1"), None);
        assert_eq!(scratch_root("tank"), None);
    }

    #[test]
    fn the_clean_up_tries_again_only_a_destroy_zfs_calls_busy() {
        let failed = |args: &[&str], stderr: &str| ZfsError::Failed {
            command: crate::zfs::CommandLine(args.iter().map(|a| (*a).to_owned()).collect()),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let destroy = ["zfs", "destroy", "-r", "tank/drills/busy"];
        assert!(
            CleanUpError::Destroy(failed(
                &destroy,
                "cannot destroy 'tank/drills/busy': dataset is busy"
            ))
            .is_busy()
        );
        assert!(
            CleanUpError::Destroy(failed(
                &destroy,
                "umount: /run/zetaback/zfs/tank/drills/busy: target is busy.\ncannot unmount '/run/zetaback/zfs/tank/drills/busy': umount failed: umount child process failed"
            ))
            .is_busy()
        );
        // Its name no longer makes any failure "busy" (the whole message was matched before).
        assert!(
            !CleanUpError::Destroy(failed(
                &destroy,
                "cannot destroy 'tank/drills/busy': permission denied"
            ))
            .is_busy()
        );
        assert!(
            !CleanUpError::Look(failed(
                &["zfs", "list", "-H", "-o", "name", "tank/drills/busy"],
                "dataset is busy"
            ))
            .is_busy()
        );
    }
}
