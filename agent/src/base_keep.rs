//! The base of the next incremental, kept on the source. After a backup succeeds the agent
//! holds the snapshot it sent (hold tag [`BASE_HOLD_TAG`]: a held snapshot cannot be
//! destroyed by mistake) and, on OpenZFS, bookmarks it (`dataset#name`): a bookmark is tiny,
//! and an incremental can still be sent from it after the snapshot itself was destroyed. The
//! hold on the previous base is released then, since nothing will be sent from it again.
//!
//! [`resolve`] finds a job's base: the snapshot if it is still there, else its bookmark.

use tracing::{info, warn};

use crate::zfs::bookmarks::Hold;
use crate::zfs::{Capability, SnapshotInfo, Zfs, ZfsError};

/// The hold tag on the base of the last backup (`zfs holds` shows it to users; distinct from
/// the `zetaback` tag held only while a send runs).
pub const BASE_HOLD_TAG: &str = "zetaback-base";

/// What an incremental is sent from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The snapshot, or (when `bookmark`) what its bookmark keeps of it: dataset, name and
    /// creation time (no sizes, not marked as zetaback's).
    pub info: SnapshotInfo,
    /// The snapshot is gone: send from the bookmark `dataset#name`.
    pub bookmark: bool,
}

/// The base `dataset@name` of a job, or its bookmark `dataset#name` when the snapshot was
/// destroyed (on OpenZFS). Fails with the snapshot's error when neither exists.
pub async fn resolve(zfs: &Zfs, dataset: &str, name: &str) -> Result<Base, ZfsError> {
    let missing = match zfs.snapshot_info(dataset, name).await {
        Ok(info) => {
            return Ok(Base {
                info,
                bookmark: false,
            });
        }
        Err(e) => e,
    };
    if !zfs.capabilities().has(Capability::Bookmarks) {
        return Err(missing);
    }
    match zfs.bookmark_creation(dataset, name).await {
        Ok(creation) => {
            info!(bookmark = %format!("{dataset}#{name}"), "the base snapshot is gone: sending the incremental from its bookmark");
            Ok(Base {
                info: SnapshotInfo {
                    dataset: dataset.to_owned(),
                    name: name.to_owned(),
                    creation,
                    used: 0,
                    referenced: 0,
                    managed: false,
                },
                bookmark: true,
            })
        }
        Err(_) => Err(missing),
    }
}

/// The snapshots (`dataset@name`) whose base hold is to be released when `keep` becomes the
/// base: every other one holding [`BASE_HOLD_TAG`].
pub fn holds_to_release(holds: &[Hold], keep: &str) -> Vec<String> {
    let mut out: Vec<String> = holds
        .iter()
        .filter(|h| h.tag == BASE_HOLD_TAG && h.snapshot != keep)
        .map(|h| h.snapshot.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `keep` already has the base hold.
pub fn already_held(holds: &[Hold], keep: &str) -> bool {
    holds
        .iter()
        .any(|h| h.tag == BASE_HOLD_TAG && h.snapshot == keep)
}

/// Makes `snap` (just backed up) the kept base of `dataset`: holds it, bookmarks it (OpenZFS),
/// and releases the base hold on every other snapshot of the dataset zetaback made. Failures
/// are logged, not returned: the backup itself succeeded.
pub async fn keep_as_base(zfs: &Zfs, dataset: &str, snap: &SnapshotInfo) {
    let caps = zfs.capabilities();
    if caps.has(Capability::Bookmarks) && zfs.bookmark_creation(dataset, &snap.name).await.is_err()
    {
        match zfs.bookmark(dataset, &snap.name).await {
            Ok(()) => {
                info!(bookmark = %format!("{dataset}#{}", snap.name), "bookmarked the new base")
            }
            Err(e) => warn!(error = %e, "could not bookmark {}", snap.full_name()),
        }
    }
    if !caps.has(Capability::Holds) {
        return;
    }
    let ours: Vec<String> = match zfs.inventory(Some(dataset)).await {
        Ok(inv) => inv
            .snapshots_of(dataset)
            .filter(|s| s.managed || s.name == snap.name)
            .map(|s| s.name.clone())
            .collect(),
        Err(e) => {
            warn!(error = %e, "could not list the snapshots of {dataset} to move the base hold");
            return;
        }
    };
    let holds = match zfs.holds_on(dataset, &ours).await {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "could not list the holds on {dataset}'s snapshots");
            return;
        }
    };
    let keep = snap.full_name();
    if !already_held(&holds, &keep) {
        match zfs
            .hold_tagged(BASE_HOLD_TAG, dataset, &snap.name, false)
            .await
        {
            Ok(()) => {
                info!(snapshot = %keep, tag = BASE_HOLD_TAG, "held the base of the next incremental")
            }
            Err(e) => warn!(error = %e, "could not hold {keep}"),
        }
    }
    for old in holds_to_release(&holds, &keep) {
        let Some((_, name)) = old.split_once('@') else {
            continue;
        };
        match zfs.hold_tagged(BASE_HOLD_TAG, dataset, name, true).await {
            Ok(()) => info!(snapshot = %old, "released the hold on a base a newer backup replaced"),
            Err(e) => warn!(error = %e, "could not release the base hold on {old}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(snapshot: &str, tag: &str) -> Hold {
        Hold {
            snapshot: snapshot.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn releases_every_other_base_hold_and_only_ours() {
        let holds = [
            hold("t/db@zb-1", BASE_HOLD_TAG),
            hold("t/db@zb-2", BASE_HOLD_TAG),
            hold("t/db@zb-2", "zetaback"),
            hold("t/db@zb-3", BASE_HOLD_TAG),
            hold("t/db@zb-1", "someone-else"),
        ];
        assert_eq!(
            holds_to_release(&holds, "t/db@zb-3"),
            ["t/db@zb-1", "t/db@zb-2"]
        );
        assert!(already_held(&holds, "t/db@zb-3"));
        assert!(!already_held(&holds, "t/db@zb-4"));
        // The send's own `zetaback` hold is never the base hold.
        assert!(!already_held(&[hold("t/db@zb-4", "zetaback")], "t/db@zb-4"));
        assert!(holds_to_release(&[], "t/db@zb-1").is_empty());
        assert!(holds_to_release(&[hold("t/db@zb-1", BASE_HOLD_TAG)], "t/db@zb-1").is_empty());
    }
}
