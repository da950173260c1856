//! The base of the next incremental, kept on the source. After a backup succeeds the agent
//! holds the snapshot it sent (hold tag [`BASE_HOLD_TAG`]: a held snapshot cannot be
//! destroyed by mistake) and, on OpenZFS, bookmarks it (`dataset#name`): a bookmark is tiny,
//! and an incremental can still be sent from it after the snapshot itself was destroyed. The
//! hold on the previous base is released then, since nothing will be sent from it again.
//!
//! [`resolve`] finds a job's base: the snapshot if it is still there, else its bookmark.

use tracing::{info, warn};

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

/// The snapshots among `refs` (`zfs get userrefs`: name, number of holds) that may carry
/// the base hold and are not `keep`: those with any hold. (`zfs holds` would name the tags,
/// but zfs-fuse's is broken; a release of a tag that is not there is harmless.)
pub fn release_candidates(refs: &[(String, u64)], keep: &str) -> Vec<String> {
    let mut out: Vec<String> = refs
        .iter()
        .filter(|(name, n)| *n > 0 && name != keep)
        .map(|(name, _)| name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a failed `zfs hold` says the tag is already there (OpenZFS and zfs-fuse both say
/// "tag already exists").
pub fn hold_already_there(e: &ZfsError) -> bool {
    e.stderr().is_some_and(|s| s.contains("tag already exists"))
}

/// Whether a failed `zfs release` says the tag was not there ("no such tag").
pub fn hold_not_there(e: &ZfsError) -> bool {
    e.stderr().is_some_and(|s| s.contains("no such tag"))
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
    let keep = snap.full_name();
    match zfs
        .hold_tagged(BASE_HOLD_TAG, dataset, &snap.name, false)
        .await
    {
        Ok(()) => {
            info!(snapshot = %keep, tag = BASE_HOLD_TAG, "held the base of the next incremental")
        }
        Err(e) if hold_already_there(&e) => {}
        Err(e) => warn!(error = %e, "could not hold {keep}"),
    }
    let others: Vec<String> = match zfs.inventory(Some(dataset)).await {
        Ok(inv) => inv
            .snapshots_of(dataset)
            .filter(|s| s.managed && s.name != snap.name)
            .map(|s| s.name.clone())
            .collect(),
        Err(e) => {
            warn!(error = %e, "could not list the snapshots of {dataset} to move the base hold");
            return;
        }
    };
    let refs = match zfs.userrefs(dataset, &others).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "could not read the holds on {dataset}'s snapshots");
            return;
        }
    };
    for old in release_candidates(&refs, &keep) {
        let Some((_, name)) = old.split_once('@') else {
            continue;
        };
        match zfs.hold_tagged(BASE_HOLD_TAG, dataset, name, true).await {
            Ok(()) => {
                info!(snapshot = %old, "released the hold on a base a newer backup replaced")
            }
            Err(e) if hold_not_there(&e) => {}
            Err(e) => warn!(error = %e, "could not release the base hold on {old}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn releases_on_every_other_held_snapshot() {
        let r = refs(&[
            ("t/db@zb-1", 1),
            ("t/db@zb-2", 2),
            ("t/db@zb-3", 1),
            ("t/db@zb-4", 0),
        ]);
        assert_eq!(
            release_candidates(&r, "t/db@zb-3"),
            ["t/db@zb-1", "t/db@zb-2"]
        );
        assert!(release_candidates(&[], "t/db@zb-1").is_empty());
        assert!(release_candidates(&refs(&[("t/db@zb-1", 1)]), "t/db@zb-1").is_empty());
    }

    fn failed(stderr: &str) -> ZfsError {
        ZfsError::Failed {
            command: crate::zfs::CommandLine(vec!["hold".into()]),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        }
    }

    /// The messages of zfs-fuse (seen on this host) and OpenZFS 2.3.
    #[test]
    fn a_hold_already_there_and_a_release_of_none_are_recognised() {
        assert!(hold_already_there(&failed(
            "cannot hold 'p@a': tag already exists on this dataset"
        )));
        assert!(hold_already_there(&failed(
            "cannot hold snapshot 'p@a': tag already exists on this dataset"
        )));
        assert!(!hold_already_there(&failed(
            "cannot hold 'p@a': dataset does not exist"
        )));
        assert!(hold_not_there(&failed(
            "cannot release 'zetaback-base' from 'p@a': no such tag on this dataset"
        )));
        assert!(!hold_not_there(&failed(
            "cannot release: permission denied"
        )));
        assert!(!hold_not_there(&ZfsError::Unsupported { feature: "holds" }));
    }
}
