//! The backup a dataset's store must still hold, for `BackupMissing`
//! ([`super::violations`]): the newer of what the dataset's newest succeeded BackupJob says it
//! stored and the newest backup the controller saw in the store's catalogue before (remembered
//! in the policy's status, `status.newestStored`). BackupJobs are garbage-collected and can be
//! deleted; the remembered one is not, so a backup deleted behind the controller's back stays a
//! violation after its job is gone, and a deleted job never makes a dataset a violator.

use jiff::Timestamp;

use super::{BackupKind, DatasetBackups, RecordedBackup};

/// The backup the store must still hold (unless retention let it go): the newer of the two
/// records. A remembered backup's `started` is its snapshot's creation.
pub fn expected_backup<'a>(
    from_job: Option<RecordedBackup<'a>>,
    seen: Option<RecordedBackup<'a>>,
) -> Option<RecordedBackup<'a>> {
    match (from_job, seen) {
        (Some(j), Some(s)) if s.started > j.started => Some(s),
        (Some(j), _) => Some(j),
        (None, s) => s,
    }
}

/// A backup to remember, owned (written to the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub id: String,
    pub kind: BackupKind,
    pub created: Timestamp,
}

impl Remembered {
    fn of(r: RecordedBackup<'_>) -> Self {
        Self {
            id: r.id.to_owned(),
            kind: r.kind,
            created: r.started,
        }
    }
}

/// What to remember after this evaluation:
/// - no catalogue (it could not be read, or the host is paused): what was remembered;
/// - the expected backup is missing (`BackupMissing` found): that one, until something newer
///   is stored or retention would have let it go;
/// - else the newest backup in the catalogue (none when it holds none).
pub fn remember(
    catalogue: Option<&DatasetBackups>,
    expected: Option<RecordedBackup<'_>>,
    missing: bool,
    before: Option<RecordedBackup<'_>>,
) -> Option<Remembered> {
    let Some(cat) = catalogue else {
        return before.map(Remembered::of);
    };
    if missing {
        return expected.map(Remembered::of);
    }
    cat.newest().map(|n| Remembered {
        id: n.id.clone(),
        kind: n.kind,
        created: n.created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, kind: BackupKind, at: i64) -> RecordedBackup<'_> {
        RecordedBackup {
            id,
            kind,
            started: Timestamp::from_second(at).expect("ts"),
        }
    }

    #[test]
    fn the_newer_record_is_expected() {
        let job = rec("1.full", BackupKind::Full, 10);
        let seen = rec("2.incremental.1", BackupKind::Incremental, 20);
        assert_eq!(expected_backup(Some(job), Some(seen)), Some(seen));
        assert_eq!(expected_backup(Some(seen), Some(job)), Some(seen));
        assert_eq!(expected_backup(None, Some(seen)), Some(seen));
        assert_eq!(expected_backup(Some(job), None), Some(job));
        assert_eq!(expected_backup(None, None), None);
        // The same time: the job's record (it names what the job stored).
        let same = rec("other", BackupKind::Full, 10);
        assert_eq!(expected_backup(Some(job), Some(same)), Some(job));
    }

    #[test]
    fn what_is_remembered() {
        let empty = DatasetBackups::default();
        let before = rec("1.full", BackupKind::Full, 10);
        let expected = rec("2.incremental.1", BackupKind::Incremental, 20);
        // No catalogue: nothing learnt, the old record stays.
        assert_eq!(
            remember(None, Some(expected), false, Some(before)),
            Some(Remembered::of(before))
        );
        assert_eq!(remember(None, Some(expected), true, None), None);
        // Missing: the missing one, whatever the catalogue's newest.
        assert_eq!(
            remember(Some(&empty), Some(expected), true, Some(before)),
            Some(Remembered::of(expected))
        );
        // Otherwise the catalogue's newest: none in an empty one.
        assert_eq!(
            remember(Some(&empty), Some(expected), false, Some(before)),
            None
        );
    }
}
