//! A restore's pieces: the chain one dataset's backups resolve for a restore target, each
//! piece with the sha256 its manifest recorded. The controller writes them to a Restore's
//! status; the agent's own `restore` subcommand resolves them with the same function.

use super::{ChainError, DatasetBackups, RestoreTarget};
use crate::api::restore::RestorePiece;
use crate::store;

/// Why a restore has no pieces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiecesError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// `backups` named a backup that `stored` has no manifest for (they were not built from
    /// the same listing).
    #[error("backup {id} has no manifest in the catalogue")]
    NoManifest { id: String },
    /// The manifest records no sha256 (a replica's): a restore could not verify the stream.
    #[error("backup {id} records no sha256, so a restore could not verify it")]
    NoSha256 { id: String },
}

/// The pieces that restore `target` from `backups`, the backups of `host:dataset` (all of
/// them, or only the live ones), in the order they are applied: a full, then each
/// incremental. Each piece carries the sha256 of its manifest in `stored` (the live copy's
/// when a backup is in both areas, see [`store::Catalogue::manifest`]); `verified` is unset.
pub fn restore_pieces(
    backups: &DatasetBackups,
    stored: &store::Catalogue,
    host: &str,
    dataset: &str,
    target: &RestoreTarget,
) -> Result<Vec<RestorePiece>, PiecesError> {
    backups
        .restore_chain(target)?
        .into_iter()
        .map(|r| {
            let manifest = stored
                .manifest(host, dataset, &r.id)
                .ok_or_else(|| PiecesError::NoManifest { id: r.id.clone() })?;
            Ok(RestorePiece {
                id: r.id.clone(),
                snapshot: r.snapshot.clone(),
                bytes: r.bytes,
                sha256: manifest
                    .sha256
                    .clone()
                    .ok_or_else(|| PiecesError::NoSha256 { id: r.id.clone() })?,
                verified: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::Compression;
    use crate::store::{MANIFEST_VERSION, Manifest, StoredBackup, StreamId};

    fn stored(id: &str, archived: bool, sha: &str) -> StoredBackup {
        let sid: StreamId = id.parse().expect("stream id");
        StoredBackup {
            manifest: Manifest {
                version: MANIFEST_VERSION,
                id: id.into(),
                host: "db-1".into(),
                dataset: "tank/db".into(),
                snapshot: format!("zetaback-{}", sid.ts()),
                base_snapshot: sid.base_ts().map(|t| format!("zetaback-{t}")),
                backup_type: sid.backup_type(),
                bytes: 10 * u64::try_from(sid.ts()).expect("positive"),
                sha256: Some(sha.into()),
                compression: Compression::None,
                created: jiff::Timestamp::from_second(sid.ts()).expect("time"),
                policy: None,
                xxh3: None,
                raw: false,
            },
            archived,
            verification: None,
        }
    }

    fn listing(backups: Vec<StoredBackup>) -> store::Catalogue {
        store::Catalogue {
            backups,
            problems: vec![],
        }
    }

    fn pieces(
        cat: &store::Catalogue,
        target: &RestoreTarget,
    ) -> Result<Vec<RestorePiece>, PiecesError> {
        let backups = DatasetBackups::from_store(cat.of("db-1", "tank/db")).expect("consistent");
        restore_pieces(&backups, cat, "db-1", "tank/db", target)
    }

    #[test]
    fn a_chain_becomes_its_pieces_in_order_with_the_live_manifests_checksum() {
        let cat = listing(vec![
            stored("100.full", true, "archived-full"),
            stored("200.incremental.100", true, "archived-copy"),
            stored("200.incremental.100", false, "live-copy"),
            stored("300.incremental.200", false, "newest"),
        ]);
        let got = pieces(&cat, &RestoreTarget::Latest).expect("pieces");
        let summary: Vec<(&str, &str, u64, &str)> = got
            .iter()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.snapshot.as_str(),
                    p.bytes,
                    p.sha256.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("100.full", "zetaback-100", 1000, "archived-full"),
                ("200.incremental.100", "zetaback-200", 2000, "live-copy"),
                ("300.incremental.200", "zetaback-300", 3000, "newest"),
            ]
        );
        assert!(got.iter().all(|p| p.verified.is_none()));
        let to_200 =
            pieces(&cat, &RestoreTarget::Id("200.incremental.100".into())).expect("pieces");
        assert_eq!(to_200.len(), 2);
    }

    #[test]
    fn a_broken_chain_or_a_missing_manifest_is_an_error() {
        let cat = listing(vec![stored("300.incremental.200", false, "x")]);
        assert!(matches!(
            pieces(&cat, &RestoreTarget::Latest),
            Err(PiecesError::Chain(ChainError::ChainBroken { .. }))
        ));
        let backups =
            DatasetBackups::from_store([&stored("100.full", false, "x")]).expect("consistent");
        assert_eq!(
            restore_pieces(
                &backups,
                &listing(vec![]),
                "db-1",
                "tank/db",
                &RestoreTarget::Latest
            ),
            Err(PiecesError::NoManifest {
                id: "100.full".into()
            })
        );
    }

    #[test]
    fn a_backup_without_a_sha256_is_not_restored_unverified() {
        let mut replica = stored("100.full", false, "x");
        replica.manifest.sha256 = None;
        replica.manifest.xxh3 = Some("0".repeat(32));
        let cat = listing(vec![replica]);
        assert_eq!(
            pieces(&cat, &RestoreTarget::Latest),
            Err(PiecesError::NoSha256 {
                id: "100.full".into()
            })
        );
    }
}
