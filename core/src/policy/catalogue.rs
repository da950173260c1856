//! One dataset's backups ([`DatasetBackups`]): the stored backups of one dataset (live and
//! archived), as rebuilt from the store's manifests (the store's whole listing is
//! [`crate::store::Catalogue`]), and the restore-chain resolver.
//!
//! A backup is either a *full* (a complete `zfs send` stream, restorable on its own) or an
//! *incremental* (`zfs send -i base`), which can only be applied on top of its base. Following
//! `base` links from any backup therefore leads to a full: that path, reversed, is the backup's
//! *chain*, the list of streams a restore receives in order.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use super::BackupKind;
use crate::store::{StoredBackup, StreamId};

/// One stored backup, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// The backup's id in the store (its manifest name), unique per dataset.
    pub id: String,
    pub kind: BackupKind,
    /// When the snapshot was taken.
    pub created: Timestamp,
    /// The short name (after `@`) of the snapshot this stream ends at.
    pub snapshot: String,
    /// For an incremental: the id of the backup it was taken against. `None` for a full.
    pub base: Option<String>,
    /// Stored size.
    pub bytes: u64,
    /// True when the backup lives in the archive area.
    pub archived: bool,
    /// True when verification found its stored stream no longer matching its manifest
    /// (`spec.verify`): it is never restored from and never the newest backup, and every
    /// backup whose chain needs it is unrestorable.
    pub quarantined: bool,
    /// When its stored stream was last verified (whatever the result), if ever.
    pub verified_at: Option<Timestamp>,
}

/// Why a set of records is not a usable catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("backup id {0:?} appears more than once")]
    DuplicateId(String),
    #[error("full backup {id:?} names a base ({base:?}); a full has none")]
    FullWithBase { id: String, base: String },
    #[error("incremental backup {id:?} names no base")]
    IncrementalWithoutBase { id: String },
    #[error("backup {id:?} is not newer than its base {base:?}")]
    BaseNotOlder { id: String, base: String },
    #[error("stored backup {id:?} has no valid stream id: {reason}")]
    InvalidStreamId { id: String, reason: String },
}

/// Why no restore chain could be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the dataset has no backups")]
    Empty,
    #[error("no backup with id {0:?}")]
    NotFound(String),
    #[error("no backup at or before {0}")]
    NothingAt(Timestamp),
    /// `backup` cannot be restored because a backup of its chain, `missing`, is not stored.
    #[error(
        "backup {backup:?} cannot be restored: its chain needs {missing:?}, which is not stored"
    )]
    ChainBroken { backup: String, missing: String },
    /// `backup` cannot be restored because a backup of its chain, `corrupt`, is quarantined
    /// (its stored stream no longer matches its manifest).
    #[error(
        "backup {backup:?} cannot be restored: its chain needs {corrupt:?}, which is quarantined (its stored stream no longer matches its manifest)"
    )]
    Quarantined { backup: String, corrupt: String },
}

impl ChainError {
    /// True when a stored backup exists but its chain cannot be applied (a piece missing or
    /// quarantined), as opposed to no such backup at all.
    pub fn is_broken(&self) -> bool {
        matches!(
            self,
            ChainError::ChainBroken { .. } | ChainError::Quarantined { .. }
        )
    }
}

/// What to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The newest backup.
    Latest,
    /// The newest backup created at or before this time. If that one's chain is broken the
    /// answer is [`ChainError::ChainBroken`], never silently an older backup.
    At(Timestamp),
    /// This backup.
    Id(String),
}

/// The backups of one dataset, checked and ordered oldest first (by creation, then id): what
/// the policy decides on and a restore chain is resolved from.
///
/// Invariants established by [`DatasetBackups::new`]: ids are unique, fulls have no base,
/// incrementals have one, and a base that is present is strictly older than its dependent (so
/// dependencies never form a cycle). A base that is *absent* is allowed: it describes a store
/// where a manifest was lost; such backups are reported as unrestorable, never a panic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetBackups {
    records: Vec<BackupRecord>,
    index: HashMap<String, usize>,
    /// `bases[i]`: the position of record `i`'s base, if it is stored.
    bases: Vec<Option<usize>>,
}

impl DatasetBackups {
    /// Checks the records and orders them oldest first.
    pub fn new(mut records: Vec<BackupRecord>) -> Result<Self, CatalogueError> {
        records.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        let mut index = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if index.insert(r.id.clone(), i).is_some() {
                return Err(CatalogueError::DuplicateId(r.id.clone()));
            }
        }
        let mut bases = Vec::with_capacity(records.len());
        for r in &records {
            match (r.kind, &r.base) {
                (BackupKind::Full, Some(base)) => {
                    return Err(CatalogueError::FullWithBase {
                        id: r.id.clone(),
                        base: base.clone(),
                    });
                }
                (BackupKind::Incremental, None) => {
                    return Err(CatalogueError::IncrementalWithoutBase { id: r.id.clone() });
                }
                (_, None) => bases.push(None),
                (_, Some(base)) => {
                    let b = index.get(base).copied();
                    if let Some(b) = b
                        && records[b].created >= r.created
                    {
                        return Err(CatalogueError::BaseNotOlder {
                            id: r.id.clone(),
                            base: base.clone(),
                        });
                    }
                    bases.push(b);
                }
            }
        }
        Ok(DatasetBackups {
            records,
            index,
            bases,
        })
    }

    /// Builds one dataset's catalogue from the store's scan, e.g. from
    /// `store::Catalogue::of(host, dataset)`.
    ///
    /// The store names an incremental `<ts>.incremental.<base-ts>`: its base is the stored
    /// backup whose stream time is `<base-ts>`. When none is stored, the base is recorded as
    /// `<base-ts>.*` (so the chain is reported broken and names what is missing). A backup
    /// found in both areas (a move to the archive that was interrupted) counts once, as live,
    /// so the next plan moves it again.
    pub fn from_store<'a>(
        backups: impl IntoIterator<Item = &'a StoredBackup>,
    ) -> Result<Self, CatalogueError> {
        let mut parsed: Vec<(StreamId, &StoredBackup)> = Vec::new();
        for b in backups {
            let sid = b
                .manifest
                .stream_id()
                .map_err(|e| CatalogueError::InvalidStreamId {
                    id: b.manifest.id.clone(),
                    reason: e.to_string(),
                })?;
            match parsed
                .iter_mut()
                .find(|(_, o)| o.manifest.id == b.manifest.id)
            {
                Some(slot) if slot.1.archived && !b.archived => slot.1 = b,
                Some(_) => {}
                None => parsed.push((sid, b)),
            }
        }
        let by_ts: HashMap<i64, &str> = parsed
            .iter()
            .map(|(sid, b)| (sid.ts(), b.manifest.id.as_str()))
            .collect();
        let records = parsed
            .iter()
            .map(|(sid, b)| BackupRecord {
                id: b.manifest.id.clone(),
                kind: sid.backup_type(),
                created: b.manifest.created,
                snapshot: b.manifest.snapshot.clone(),
                base: sid.base_ts().map(|t| match by_ts.get(&t) {
                    Some(id) => (*id).to_owned(),
                    None => format!("{t}.*"),
                }),
                bytes: b.manifest.bytes,
                archived: b.archived,
                quarantined: b.verification.as_ref().is_some_and(|v| v.quarantined()),
                verified_at: b.verification.as_ref().map(|v| v.verified_at),
            })
            .collect();
        DatasetBackups::new(records)
    }

    /// The records, oldest first.
    pub fn records(&self) -> &[BackupRecord] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The backup with this id.
    pub fn get(&self, id: &str) -> Option<&BackupRecord> {
        self.index.get(id).map(|&i| &self.records[i])
    }

    /// The newest backup of any kind, live or archived, that is not quarantined.
    pub fn newest(&self) -> Option<&BackupRecord> {
        self.records.iter().rev().find(|r| !r.quarantined)
    }

    /// The quarantined backups, oldest first.
    pub fn quarantined(&self) -> impl Iterator<Item = &BackupRecord> {
        self.records.iter().filter(|r| r.quarantined)
    }

    /// The ids of the stored backups whose chain needs backup `id` (not `id` itself), oldest
    /// first.
    pub fn dependents(&self, id: &str) -> Vec<&str> {
        let Some(&target) = self.index.get(id) else {
            return Vec::new();
        };
        (0..self.records.len())
            .filter(|&i| i != target && self.closure([i]).contains(&target))
            .map(|i| self.records[i].id.as_str())
            .collect()
    }

    /// The newest backup whose whole chain is stored (what a restore of "the latest" can
    /// bring back), live or archived.
    pub fn newest_restorable(&self) -> Option<&BackupRecord> {
        self.records
            .iter()
            .rev()
            .find(|r| self.is_restorable(&r.id))
    }

    /// The newest full backup, live or archived, that is not quarantined.
    pub fn newest_full(&self) -> Option<&BackupRecord> {
        self.records
            .iter()
            .rev()
            .find(|r| r.kind == BackupKind::Full && !r.quarantined)
    }

    /// Total stored bytes (live and archived).
    pub fn bytes(&self) -> u64 {
        self.records.iter().map(|r| r.bytes).sum()
    }

    /// The chain of backup `id`: its full first, then each incremental up to `id` itself.
    pub fn chain(&self, id: &str) -> Result<Vec<&BackupRecord>, ChainError> {
        let i = *self
            .index
            .get(id)
            .ok_or_else(|| ChainError::NotFound(id.to_owned()))?;
        let chain = self.chain_positions(i)?;
        Ok(chain.into_iter().map(|p| &self.records[p]).collect())
    }

    /// True when every backup of `id`'s chain is stored.
    pub fn is_restorable(&self, id: &str) -> bool {
        self.chain(id).is_ok()
    }

    /// The backups to apply, in order (a full, then incrementals), to restore `target`.
    pub fn restore_chain(&self, target: &RestoreTarget) -> Result<Vec<&BackupRecord>, ChainError> {
        let id = match target {
            RestoreTarget::Latest => &self.newest().ok_or(ChainError::Empty)?.id,
            RestoreTarget::At(at) => {
                if self.records.is_empty() {
                    return Err(ChainError::Empty);
                }
                &self
                    .records
                    .iter()
                    .rev()
                    .find(|r| r.created <= *at)
                    .ok_or(ChainError::NothingAt(*at))?
                    .id
            }
            RestoreTarget::Id(id) => id,
        };
        self.chain(id)
    }

    pub(super) fn chain_positions(&self, i: usize) -> Result<Vec<usize>, ChainError> {
        let mut chain = vec![i];
        let mut at = i;
        // Bases are strictly older, so this walk ends within `len` steps.
        while let Some(base) = &self.records[at].base {
            match self.bases[at] {
                Some(b) => {
                    chain.push(b);
                    at = b;
                }
                None => {
                    return Err(ChainError::ChainBroken {
                        backup: self.records[i].id.clone(),
                        missing: base.clone(),
                    });
                }
            }
        }
        chain.reverse();
        if let Some(&q) = chain.iter().find(|&&p| self.records[p].quarantined) {
            return Err(ChainError::Quarantined {
                backup: self.records[i].id.clone(),
                corrupt: self.records[q].id.clone(),
            });
        }
        Ok(chain)
    }

    /// The position of record `i`'s base, if stored.
    pub(super) fn base_of(&self, i: usize) -> Option<usize> {
        self.bases[i]
    }

    /// The positions in `seeds` and every stored backup they depend on, transitively.
    pub(super) fn closure(&self, seeds: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for s in seeds {
            let mut at = Some(s);
            while let Some(i) = at {
                if !out.insert(i) {
                    break;
                }
                at = self.bases[i];
            }
        }
        out
    }

    /// Position of a record by id.
    #[cfg(test)]
    pub(super) fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    pub fn full(id: &str, at: i64) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            kind: BackupKind::Full,
            created: ts(at),
            snapshot: format!("s{id}"),
            base: None,
            bytes: 100,
            archived: false,
            quarantined: false,
            verified_at: None,
        }
    }

    pub fn inc(id: &str, at: i64, base: &str) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            kind: BackupKind::Incremental,
            created: ts(at),
            snapshot: format!("s{id}"),
            base: Some(base.into()),
            bytes: 10,
            archived: false,
            quarantined: false,
            verified_at: None,
        }
    }

    pub fn cat(records: Vec<BackupRecord>) -> DatasetBackups {
        DatasetBackups::new(records).unwrap()
    }

    fn ids(chain: &[&BackupRecord]) -> Vec<String> {
        chain.iter().map(|r| r.id.clone()).collect()
    }

    #[test]
    fn refuses_malformed_records() {
        let mut f_with_base = full("f", 1);
        f_with_base.base = Some("x".into());
        let mut i_without = inc("i", 2, "f");
        i_without.base = None;
        let cases = [
            (
                vec![full("a", 1), full("a", 2)],
                CatalogueError::DuplicateId("a".into()),
            ),
            (
                vec![f_with_base],
                CatalogueError::FullWithBase {
                    id: "f".into(),
                    base: "x".into(),
                },
            ),
            (
                vec![full("f", 1), i_without],
                CatalogueError::IncrementalWithoutBase { id: "i".into() },
            ),
            (
                vec![full("f", 5), inc("i", 5, "f")],
                CatalogueError::BaseNotOlder {
                    id: "i".into(),
                    base: "f".into(),
                },
            ),
            (
                vec![full("f", 9), inc("i", 5, "f")],
                CatalogueError::BaseNotOlder {
                    id: "i".into(),
                    base: "f".into(),
                },
            ),
        ];
        for (records, want) in cases {
            assert_eq!(DatasetBackups::new(records), Err(want));
        }
    }

    #[test]
    fn orders_oldest_first_and_finds_newest() {
        let c = cat(vec![
            inc("i2", 30, "i1"),
            full("f", 10),
            inc("i1", 20, "f"),
            full("g", 25),
        ]);
        let order: Vec<_> = c.records().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(order, ["f", "i1", "g", "i2"]);
        assert_eq!(c.newest().map(|r| r.id.as_str()), Some("i2"));
        assert_eq!(c.newest_full().map(|r| r.id.as_str()), Some("g"));
        assert_eq!(c.bytes(), 220);
        assert_eq!(c.len(), 4);
        assert!(!c.is_empty());
        assert!(DatasetBackups::default().newest().is_none());
    }

    #[test]
    fn restore_chains() {
        // Chained (f <- a <- b) and differential (g <- c, g <- d) histories side by side.
        let c = cat(vec![
            full("f", 10),
            inc("a", 20, "f"),
            inc("b", 30, "a"),
            full("g", 40),
            inc("c", 50, "g"),
            inc("d", 60, "g"),
            inc("lost", 70, "gone"),
        ]);
        let cases: Vec<(RestoreTarget, Result<Vec<&str>, ChainError>)> = vec![
            (RestoreTarget::Id("b".into()), Ok(vec!["f", "a", "b"])),
            (RestoreTarget::Id("f".into()), Ok(vec!["f"])),
            (RestoreTarget::Id("d".into()), Ok(vec!["g", "d"])),
            (RestoreTarget::At(ts(35)), Ok(vec!["f", "a", "b"])),
            (RestoreTarget::At(ts(50)), Ok(vec!["g", "c"])),
            (RestoreTarget::At(ts(65)), Ok(vec!["g", "d"])),
            (RestoreTarget::At(ts(9)), Err(ChainError::NothingAt(ts(9)))),
            (
                RestoreTarget::Id("nope".into()),
                Err(ChainError::NotFound("nope".into())),
            ),
            (
                RestoreTarget::Latest,
                Err(ChainError::ChainBroken {
                    backup: "lost".into(),
                    missing: "gone".into(),
                }),
            ),
            (
                RestoreTarget::At(ts(1000)),
                Err(ChainError::ChainBroken {
                    backup: "lost".into(),
                    missing: "gone".into(),
                }),
            ),
        ];
        for (target, want) in cases {
            let got = c.restore_chain(&target).map(|ch| ids(&ch));
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{target:?}");
        }
        assert!(c.is_restorable("b"));
        assert!(!c.is_restorable("lost"));
        let empty = DatasetBackups::default();
        assert_eq!(
            empty.restore_chain(&RestoreTarget::Latest),
            Err(ChainError::Empty)
        );
        assert_eq!(
            empty.restore_chain(&RestoreTarget::At(ts(1))),
            Err(ChainError::Empty)
        );
    }

    #[test]
    fn broken_in_the_middle_names_the_missing_link() {
        let c = cat(vec![inc("b", 30, "a"), inc("c", 40, "b")]);
        assert_eq!(
            c.chain("c").map(|ch| ids(&ch)),
            Err(ChainError::ChainBroken {
                backup: "c".into(),
                missing: "a".into()
            })
        );
    }

    fn stored(id: &str, snapshot: &str, archived: bool) -> StoredBackup {
        let sid: StreamId = id.parse().unwrap();
        StoredBackup {
            manifest: crate::store::Manifest {
                version: crate::store::MANIFEST_VERSION,
                id: id.into(),
                host: "h".into(),
                dataset: "tank/db".into(),
                snapshot: snapshot.into(),
                base_snapshot: sid.base_ts().map(|t| format!("z{t}")),
                backup_type: sid.backup_type(),
                bytes: 7,
                sha256: Some("0".repeat(64)),
                compression: crate::api::backup_policy::Compression::Zstd,
                created: ts(sid.ts()),
                policy: None,
                xxh3: None,
                raw: false,
            },
            archived,
            verification: None,
        }
    }

    #[test]
    fn from_store_links_bases_by_time() {
        let scan = vec![
            stored("100.full", "z100", true),
            stored("200.incremental.100", "z200", false),
            stored("300.incremental.200", "z300", false),
            stored("400.incremental.350", "z400", false),
            stored("200.incremental.100", "z200", true),
        ];
        let c = DatasetBackups::from_store(&scan).unwrap();
        assert_eq!(c.len(), 4);
        let b = |id: &str| c.get(id).unwrap();
        assert_eq!(
            b("300.incremental.200").base.as_deref(),
            Some("200.incremental.100")
        );
        assert!(!b("200.incremental.100").archived, "live copy wins");
        assert!(b("100.full").archived);
        assert_eq!(b("100.full").kind, BackupKind::Full);
        assert_eq!(b("300.incremental.200").snapshot, "z300");
        assert_eq!(
            c.chain("300.incremental.200").map(|ch| ids(&ch)),
            Ok(vec![
                "100.full".to_owned(),
                "200.incremental.100".to_owned(),
                "300.incremental.200".to_owned()
            ])
        );
        assert_eq!(
            c.chain("400.incremental.350").map(|ch| ids(&ch)),
            Err(ChainError::ChainBroken {
                backup: "400.incremental.350".into(),
                missing: "350.*".into()
            })
        );
        let mut bad = stored("100.full", "z", false);
        bad.manifest.id = "nonsense".into();
        assert!(matches!(
            DatasetBackups::from_store([&bad]),
            Err(CatalogueError::InvalidStreamId { .. })
        ));
    }

    #[test]
    fn closure_follows_bases() {
        let c = cat(vec![
            full("f", 10),
            inc("a", 20, "f"),
            inc("b", 30, "a"),
            full("g", 40),
        ]);
        let b = c.position("b").unwrap();
        let got: Vec<_> = c
            .closure([b])
            .into_iter()
            .map(|i| c.records()[i].id.as_str())
            .collect();
        assert_eq!(got, ["f", "a", "b"]);
        assert_eq!(c.base_of(b), c.position("a"));
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::tests::{cat, full, inc};
    use super::*;

    fn q(mut r: BackupRecord) -> BackupRecord {
        r.quarantined = true;
        r
    }

    #[test]
    fn a_quarantined_backup_breaks_its_dependents_and_is_never_newest() {
        let c = cat(vec![
            full("f", 10),
            q(inc("a", 20, "f")),
            inc("b", 30, "a"),
            inc("d", 35, "f"),
            q(full("g", 40)),
        ]);
        assert_eq!(c.newest().map(|r| r.id.as_str()), Some("d"));
        assert_eq!(c.newest_full().map(|r| r.id.as_str()), Some("f"));
        assert_eq!(c.newest_restorable().map(|r| r.id.as_str()), Some("d"));
        assert_eq!(
            c.chain("b").map(|ch| ch.len()),
            Err(ChainError::Quarantined {
                backup: "b".into(),
                corrupt: "a".into()
            })
        );
        assert!(c.chain("b").unwrap_err().is_broken());
        assert_eq!(
            c.restore_chain(&RestoreTarget::Id("g".into()))
                .map(|ch| ch.len()),
            Err(ChainError::Quarantined {
                backup: "g".into(),
                corrupt: "g".into()
            })
        );
        // "Latest" never reaches the quarantined full: it restores d.
        let latest = c.restore_chain(&RestoreTarget::Latest).expect("latest");
        assert_eq!(
            latest.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["f", "d"]
        );
        assert_eq!(c.dependents("a"), ["b"]);
        assert_eq!(c.dependents("f"), ["a", "b", "d"]);
        assert!(c.dependents("g").is_empty());
        assert!(c.dependents("nope").is_empty());
        let ids: Vec<_> = c.quarantined().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "g"]);
        assert!(!ChainError::Empty.is_broken());
    }
}
