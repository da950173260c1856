//! Restores: read a chain (the full, then each incremental up to the chosen backup) from the
//! target agent that stores it and `zfs receive` each piece, in order, into a dataset.
//!
//! **Verified before applied.** Each piece's stored bytes are hashed as they arrive, and the
//! last [`HOLD_BACK`] bytes are held back from `zfs receive` until the whole piece's sha256
//! matched the manifest's. A zfs stream ends with an END record, and a zstd frame's last
//! block decodes only once all of it arrived, so a receive that never got the tail cannot
//! commit: on a mismatch the receive is killed and ZFS discards what it had. A dataset the
//! restore created itself is destroyed again when a later piece fails, so a failed restore
//! leaves the destination as it found it.
//!
//! [`RestoreRunner`] runs `Restore` objects: it watches Restores whose destination is this
//! agent's host and that the controller resolved (a chain, phase Pending), claims one with
//! optimistic concurrency (a status update carrying the resourceVersion read, with
//! `claimedBy`), runs it in a tracing span, reports `bytesDone` at most once a second, and
//! records the outcome. A restore left Running by this agent (a crash or kill) is failed at
//! start-up with a message.
//!
//! Only this host's Restores are read: `spec.destination.host` is a selectable field of the
//! Restore CRD, so the watch and the start-up list of orphans carry the field selector
//! `spec.destination.host=<host>` ([`destination_selector`]) and the apiserver sends no other
//! host's Restores. A bulk Restore's parent names the same destination host as its children
//! but never gets a chain (the controller runs it), so the agent has nothing to do with it
//! either way. Against a CRD installed before it had the field (the apiserver refuses the
//! selector), the runner reads every Restore and filters here, with a warning.
//!
//! Files: `apply.rs` (applying a chain, no Kubernetes), `runner.rs` (the Restore runner).

mod apply;
mod coalesce;
mod runner;
mod status_patch;

pub use apply::*;
pub use coalesce::Coalesce;
pub use runner::*;
pub use status_patch::{RestoreStatusPatch, StatusPatch};

use zetaback_core::policy;

use crate::transfer::TransferError;
use crate::zfs::{Busy, ZfsError};

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{0}")]
    Store(#[from] zetaback_core::store::StoreError),
    #[error("restore into {0}: the dataset exists (use force to replace it)")]
    Exists(String),
    #[error(
        "restore into {dataset}: the dataset has snapshots of its own (e.g. {dataset}@{example}) that ZFS cannot overwrite with a full stream; destroy them or restore to a new dataset (nothing was changed)"
    )]
    DestinationHasSnapshots { dataset: String, example: String },
    #[error(
        "restore into {dataset}: the dataset has child datasets (e.g. {child}) that replacing it would destroy; restore to a new dataset (nothing was changed)"
    )]
    DestinationHasChildren { dataset: String, child: String },
    #[error("feeding the stream into zfs receive failed: {0}")]
    Copy(String),
    #[error(
        "backup {id}: checksum mismatch (stored bytes hash to {got}, the manifest says {expected}); nothing of it was applied"
    )]
    ChecksumMismatch {
        id: String,
        got: String,
        expected: String,
    },
    #[error("backup {id}: {message}; nothing of it was applied")]
    Refused { id: String, message: String },
    #[error("backup {id} is not stored on the backup host ({message})")]
    PieceMissing { id: String, message: String },
    #[error("after receiving {id}, snapshot {dataset}@{snapshot} is not there")]
    SnapshotMissing {
        id: String,
        dataset: String,
        snapshot: String,
    },
    #[error("drill into {dataset} refused before anything was received: {why}")]
    NotScratch { dataset: String, why: String },
    #[error("{0}")]
    Chain(#[from] policy::ChainError),
    #[error("the stored backups are inconsistent: {0}")]
    Catalogue(#[from] policy::CatalogueError),
    #[error("the backup host is unreachable: {0}")]
    Unreachable(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the restore was ended elsewhere (the controller's drill timeout) before anything was received"
    )]
    Ended,
}

impl RestoreError {
    /// ZFS refused the receive because the destination is busy: a receive into it that was
    /// cut short (its agent killed) is still being wound down — zfs-fuse's daemon finishes
    /// it after the killed `zfs` client is gone — or another receive runs there now.
    pub fn destination_busy(&self) -> bool {
        match self {
            RestoreError::Zfs(z) => z.is_busy(),
            _ => false,
        }
    }

    /// The `Ready=False` reason written to the Restore.
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::ChecksumMismatch { .. } => "ChecksumMismatch",
            RestoreError::Exists(_)
            | RestoreError::DestinationHasSnapshots { .. }
            | RestoreError::DestinationHasChildren { .. } => "DestinationExists",
            RestoreError::PieceMissing { .. }
            | RestoreError::Catalogue(_)
            | RestoreError::Chain(
                policy::ChainError::ChainBroken { .. } | policy::ChainError::Quarantined { .. },
            ) => "ChainBroken",
            RestoreError::Chain(_) => "NotFound",
            RestoreError::Unreachable(_) | RestoreError::Transfer(_) => "StoreUnreachable",
            RestoreError::SnapshotMissing { .. } => "SnapshotMissing",
            RestoreError::Refused { .. } => "StreamRefused",
            RestoreError::NotScratch { .. } => "NotScratch",
            RestoreError::Zfs(_) | RestoreError::Copy(_) => "ReceiveFailed",
            RestoreError::Store(_) | RestoreError::Kube(_) => "Failed",
            RestoreError::Ended => "Ended",
        }
    }
}

impl Busy for RestoreError {
    fn is_busy(&self) -> bool {
        self.destination_busy()
    }
}

/// What a restore applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub chain: Vec<String>,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use zetaback_core::api::backup_policy::Compression;
    use zetaback_core::api::restore::{RESTORE_ATTEMPTS, RestorePhase, RestorePiece};
    use zetaback_core::api::{Restore, RestoreStatus};
    use zetaback_core::store::Catalogue;

    use super::*;

    #[test]
    fn hold_back_keeps_the_tail() {
        let mut h = HoldBack::new(10);
        assert!(h.push(Bytes::from_static(b"12345")).is_empty());
        assert!(h.push(Bytes::from_static(b"67890")).is_empty());
        // 15 bytes: the first chunk may go, 10 stay.
        let out = h.push(Bytes::from_static(b"abcde"));
        assert_eq!(out, [Bytes::from_static(b"12345")]);
        assert_eq!(h.held(), 10);
        // A big chunk: everything before it goes; it stays (it holds the tail).
        let out = h.push(Bytes::from(vec![0u8; 50]));
        assert_eq!(out.len(), 2);
        assert_eq!(h.held(), 50);
        assert_eq!(h.release().len(), 1);
        let mut none = HoldBack::new(0);
        assert_eq!(none.push(Bytes::from_static(b"x")).len(), 1);
    }

    #[test]
    fn only_a_receive_zfs_calls_busy_is_a_busy_destination() {
        let failed = |stderr: &str| {
            RestoreError::Zfs(crate::zfs::ZfsError::Failed {
                command: crate::zfs::CommandLine(vec![
                    "zfs".into(),
                    "receive".into(),
                    "tank/r".into(),
                ]),
                status: "exit status: 1".into(),
                stderr: stderr.into(),
            })
        };
        assert!(failed("cannot receive new filesystem stream: dataset is busy").destination_busy());
        assert!(
            !failed("cannot receive new filesystem stream: destination exists").destination_busy()
        );
        assert!(!RestoreError::Exists("tank/r".into()).destination_busy());
        assert!(!RestoreError::Copy("dataset is busy".into()).destination_busy());
    }

    #[test]
    fn parents() {
        assert_eq!(parent_to_create("tank/a/b/c"), Some("tank/a/b"));
        assert_eq!(parent_to_create("tank/a"), None);
        assert_eq!(parent_to_create("tank"), None);
    }

    fn restore(host: &str, status: Option<RestoreStatus>) -> Restore {
        let mut r = Restore::new(
            "r",
            serde_json::from_value(serde_json::json!({
                "source": {"host": "src", "dataset": "tank/a"},
                "destination": {"host": host, "dataset": "tank/b"},
            }))
            .expect("spec"),
        );
        r.status = status;
        r
    }

    #[test]
    fn claimable_and_orphaned() {
        let resolved = RestoreStatus {
            chain: vec!["1.full".into()],
            ..Default::default()
        };
        assert!(is_claimable(&restore("h", Some(resolved.clone())), "h"));
        assert!(!is_claimable(&restore("x", Some(resolved.clone())), "h"));
        assert!(!is_claimable(&restore("h", None), "h"), "not resolved yet");
        let running = RestoreStatus {
            phase: RestorePhase::Running,
            claimed_by: Some("h@n".into()),
            ..resolved
        };
        assert!(!is_claimable(&restore("h", Some(running.clone())), "h"));
        assert!(is_orphaned(
            &restore("h", Some(running.clone())),
            "h",
            "h@n"
        ));
        assert!(!is_orphaned(&restore("h", Some(running)), "h", "other"));
    }

    #[test]
    fn a_bucket_restore_left_running_is_claimed_again_while_it_has_attempts_left() {
        let bucket: zetaback_core::api::backup_policy::ObjectStoreTarget =
            serde_json::from_value(serde_json::json!({
                "bucket": "b", "region": "us-east-1", "credentialsSecret": {"name": "s"},
            }))
            .expect("target");
        let left = |attempts: Option<u32>, object_store, drill| {
            let mut r = restore(
                "h",
                Some(RestoreStatus {
                    phase: RestorePhase::Running,
                    claimed_by: Some("h@n".into()),
                    chain: vec!["1.full".into()],
                    attempts,
                    object_store,
                    created_destination: Some(true),
                    ..Default::default()
                }),
            );
            r.spec.drill = drill;
            r
        };
        use runner::AfterRestart::{ClaimAgain, Fail};
        let b = Some(bucket);
        assert_eq!(
            runner::after_restart(&left(Some(1), b.clone(), false)),
            ClaimAgain
        );
        // Written before attempts were counted: the first.
        assert_eq!(
            runner::after_restart(&left(None, b.clone(), false)),
            ClaimAgain
        );
        assert_eq!(
            runner::after_restart(&left(Some(RESTORE_ATTEMPTS - 1), b.clone(), false)),
            ClaimAgain
        );
        assert_eq!(
            runner::after_restart(&left(Some(RESTORE_ATTEMPTS), b.clone(), false)),
            Fail,
            "no attempts left"
        );
        assert_eq!(
            runner::after_restart(&left(Some(1), None, false)),
            Fail,
            "a file store's"
        );
        assert_eq!(
            runner::after_restart(&left(Some(1), b.clone(), true)),
            Fail,
            "a drill"
        );
        assert_eq!(runner::after_restart(&restore("h", None)), Fail);

        // Claimable again: Pending, no one's.
        let patch = serde_json::to_value(runner::claim_again_patch(&left(Some(1), b, false)))
            .expect("patch");
        let st = &patch["status"];
        assert_eq!(st["phase"], "Pending");
        assert_eq!(st["claimedBy"], serde_json::Value::Null);
        assert_eq!(st["bytesDone"], 0);
        assert_eq!(st["conditions"][0]["reason"], "Retrying");
        // A merge patch: the chain, the pieces and `createdDestination` stay as they are.
        assert!(st.get("chain").is_none() && st.get("createdDestination").is_none());
    }

    #[test]
    fn only_the_claiming_agent_writes_a_running_restores_outcome() {
        let running = RestoreStatus {
            phase: RestorePhase::Running,
            claimed_by: Some("h@n".into()),
            ..Default::default()
        };
        assert!(runner::still_ours(
            &restore("h", Some(running.clone())),
            "h@n"
        ));
        assert!(!runner::still_ours(
            &restore("h", Some(running.clone())),
            "h@other"
        ));
        // Ended by the controller (drill timeout): no longer the agent's, whoever claimed it.
        let ended = RestoreStatus {
            phase: RestorePhase::Failed,
            ..running.clone()
        };
        assert!(!runner::still_ours(&restore("h", Some(ended)), "h@n"));
        assert!(!runner::still_ours(&restore("h", None), "h@n"));
    }

    #[test]
    fn an_ended_drill_with_its_scratch_marked_created_is_left_to_clean_up() {
        let drill = |host: &str, phase, scratch: Option<bool>| {
            let mut r = restore(
                host,
                Some(RestoreStatus {
                    phase,
                    scratch_destroyed: scratch,
                    ..Default::default()
                }),
            );
            r.spec.drill = true;
            r
        };
        use RestorePhase::{Failed, Pending, Running, Succeeded};
        assert!(runner::scratch_left(&drill("h", Failed, Some(false)), "h"));
        assert!(runner::scratch_left(
            &drill("h", Succeeded, Some(false)),
            "h"
        ));
        // Still running (its agent cleans up), already gone, never created, another host's.
        assert!(!runner::scratch_left(
            &drill("h", Running, Some(false)),
            "h"
        ));
        assert!(!runner::scratch_left(
            &drill("h", Pending, Some(false)),
            "h"
        ));
        assert!(!runner::scratch_left(&drill("h", Failed, Some(true)), "h"));
        assert!(!runner::scratch_left(&drill("h", Failed, None), "h"));
        assert!(!runner::scratch_left(&drill("x", Failed, Some(false)), "h"));
        // Not a drill: never.
        let mut plain = drill("h", Failed, Some(false));
        plain.spec.drill = false;
        assert!(!runner::scratch_left(&plain, "h"));
    }

    fn stored(id: &str, base: Option<&str>, archived: bool) -> zetaback_core::store::StoredBackup {
        let sid: zetaback_core::store::StreamId = id.parse().expect("id");
        zetaback_core::store::StoredBackup {
            manifest: zetaback_core::store::Manifest {
                version: zetaback_core::store::MANIFEST_VERSION,
                id: id.to_owned(),
                host: "h".into(),
                dataset: "tank/a".into(),
                snapshot: format!("zetaback-{}", sid.ts()),
                base_snapshot: base.map(str::to_owned),
                backup_type: sid.backup_type(),
                bytes: 10,
                sha256: Some(format!("{:064x}", sid.ts() * 2 + i64::from(archived))),
                compression: Compression::None,
                created: jiff::Timestamp::from_second(sid.ts()).expect("ts"),
                policy: None,
                xxh3: None,
                raw: false,
            },
            archived,
            verification: None,
        }
    }

    #[test]
    fn chain_pieces_follow_the_policy_catalogue() {
        let cat = Catalogue {
            backups: vec![
                stored("100.full", None, true),
                stored("100.full", None, false),
                stored("200.incremental.100", Some("zetaback-100"), true),
                stored("300.incremental.200", Some("zetaback-200"), false),
                stored("400.incremental.100", Some("zetaback-100"), false),
            ],
            problems: vec![],
        };
        let pieces = chain_pieces(&cat, "h", "tank/a", "300.incremental.200").expect("chain");
        let ids: Vec<_> = pieces.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["100.full", "200.incremental.100", "300.incremental.200"]
        );
        assert_eq!(pieces[1].snapshot, "zetaback-200");
        // The live copy's checksum when a backup is in both areas; the archived one else.
        assert_eq!(pieces[0].sha256, Some(format!("{:064x}", 200)));
        assert_eq!(pieces[1].sha256, Some(format!("{:064x}", 401)));
        let pieces = chain_pieces(&cat, "h", "tank/a", "400.incremental.100").expect("chain");
        assert_eq!(pieces.len(), 2);

        let broken = Catalogue {
            backups: vec![
                stored("100.full", None, false),
                stored("300.incremental.200", Some("zetaback-200"), false),
            ],
            problems: vec![],
        };
        let e = chain_pieces(&broken, "h", "tank/a", "300.incremental.200").expect_err("broken");
        assert_eq!(e.reason(), "ChainBroken", "{e}");
        let e = chain_pieces(&broken, "h", "tank/a", "999.full").expect_err("missing");
        assert_eq!(e.reason(), "NotFound", "{e}");
    }

    #[test]
    fn outcome_reasons() {
        let e = RestoreError::ChecksumMismatch {
            id: "1.full".into(),
            got: "a".into(),
            expected: "b".into(),
        };
        let p = serde_json::to_value(outcome_patch(
            &RestoreStatus::default(),
            &Err(e),
            &[],
            "h:tank/b",
        ))
        .unwrap();
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(p["status"]["conditions"][0]["reason"], "ChecksumMismatch");
        let ok = Restored {
            chain: vec!["1.full".into()],
            bytes: 3,
        };
        let piece = RestorePiece {
            id: "1.full".into(),
            verified: Some(true),
            ..Default::default()
        };
        let p = serde_json::to_value(outcome_patch(
            &RestoreStatus::default(),
            &Ok(ok),
            &[piece],
            "h:tank/b",
        ))
        .unwrap();
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(p["status"]["verified"], true);
    }
}
