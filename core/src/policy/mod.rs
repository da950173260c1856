//! Pure backup-policy logic: given a [`BackupPolicySpec`], the catalogue of stored backups of
//! one dataset, what the source host reports and the current time, decide
//!
//! * **what is due** ([`plan_due`]): a full, an incremental (against the last full, Zetaback's
//!   differential model, or against the previous backup, chained), or nothing, and when the
//!   next backup becomes due (so the controller can requeue on a timer);
//! * **what has expired and what moves to the archive** ([`plan_retention`]);
//! * **who violates the policy and why** ([`violations`]);
//! * **which backups a restore applies** ([`DatasetBackups::restore_chain`]);
//! * **which stored backups are due to be verified**, and whether a quarantined one still
//!   needs healing ([`plan_verify`], [`unhealed_quarantine`]);
//! * **which due backups start now under the concurrency caps** ([`Slots`]);
//! * **which finished BackupJobs may go** ([`prune_history`]) and what the kept ones say
//!   ([`JobState::from_history`]).
//!
//! Everything here is a plain function of its inputs: no I/O, no clock, no Kubernetes client.
//! The controller gathers the inputs (ZfsHost status, the catalogue rebuilt from the store's
//! manifests, BackupJob outcomes), calls [`evaluate`] (or the individual functions) and acts on
//! the answer. That keeps the rules testable exhaustively: see the property tests in
//! `proptests.rs`, which replay random histories and check the invariants listed on
//! [`plan_retention`] and [`plan_due`].
//!
//! Time is [`jiff::Timestamp`]; every duration is a [`SignedDuration`]. A backup's *age* is
//! `now - created` (negative ages, from clock skew, count as zero).

mod archive;
mod caps;
mod catalogue;
mod drill;
mod history;
mod objectives;
mod pieces;
mod retention;
mod schedule;
mod seen;
mod verify;
mod violations;

#[cfg(test)]
mod proptests;

use jiff::{SignedDuration, Timestamp};

use crate::api::backup_policy::BackupPolicySpec;
use crate::duration::{DurationError, Retention, format_duration};

pub use crate::api::backup_job::BackupType as BackupKind;
pub use crate::api::backup_policy::{IncrementalBase, ViolationReason};
pub use caps::{Admission, Slots};
pub use catalogue::{BackupRecord, CatalogueError, ChainError, DatasetBackups, RestoreTarget};
pub use drill::{
    DEFAULT_DRILL_TIMEOUT, DrillOutcome, DrillPlan, DrillRules, DrillStart, DrillState,
    DrillSubject, PastDrill, drill_now_handled, plan_drills,
};
pub use history::{FAILURE_RUN_KEPT, HistoryLimits, JobRecord, Outcome, prune_history};
pub use objectives::{rpo_now, rpo_violation};
pub use pieces::{PiecesError, restore_pieces};
pub use retention::{RetentionPlan, plan_retention, retained_by_rule};
pub use schedule::{
    BaseRef, DueBackup, DuePlan, DueReason, Hold, next_backup, plan_due, retry_backoff,
};
pub use seen::{Remembered, expected_backup, remember};
pub use verify::{
    VerifyPlan, plan_verification, plan_verify, plan_verify_now, unhealed_quarantine,
};
pub use violations::{Finding, HostReport, host_violation, violations};

/// How often one kind of backup is due and how long it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cadence {
    /// A backup of this kind is due when the newest one is at least this old.
    pub every: SignedDuration,
    /// Which backups of this kind are kept (see [`retained_by_rule`] for the exact rule).
    pub keep: Retention,
}

/// When backups move to the archive area and how long they are kept there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRules {
    /// Backups at least this old move to the archive (see [`plan_retention`]).
    pub after: SignedDuration,
    /// Which archived backups are kept, counted from the backup's creation like every age
    /// here (applied to fulls and incrementals separately).
    pub keep: Retention,
}

/// The parts of a [`BackupPolicySpec`] the policy logic needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRules {
    pub full: Cadence,
    pub incremental: Cadence,
    /// What an incremental is taken against: the newest full or the newest backup.
    pub against: IncrementalBase,
    pub archive: Option<ArchiveRules>,
    /// How late a backup may be before its dataset is a violator.
    pub grace: SignedDuration,
    /// A suspended policy schedules nothing (violations are still reported).
    pub suspend: bool,
}

/// Why a policy spec cannot be turned into [`PolicyRules`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {source}")]
    Invalid {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("incremental.every ({incremental}) must be shorter than full.every ({full})")]
    IncrementalNotShorter { incremental: String, full: String },
    #[error(
        "{what}.keep spans {keep}, less than {what}.every ({every}): a backup must be kept until the next one is due"
    )]
    KeepShorterThanEvery {
        what: &'static str,
        keep: String,
        every: String,
    },
    #[error(
        "archive.keep spans {keep}, not beyond archive.after ({after}): archived backups would be deleted as soon as they arrive"
    )]
    ArchiveKeepNotBeyondAfter { keep: String, after: String },
}

impl PolicyRules {
    /// Parses and cross-checks the durations and retention rules of a spec.
    pub fn from_spec(spec: &BackupPolicySpec) -> Result<Self, PolicyError> {
        let dur = |field, text: &crate::api::common::DurationString| {
            text.duration()
                .map_err(|source| PolicyError::Invalid { field, source })
        };
        let ret = |field, text: &crate::api::common::RetentionString| {
            text.retention()
                .map_err(|source| PolicyError::Invalid { field, source })
        };
        let full_every = dur("full.every", &spec.full.every)?;
        let full_keep = ret("full.keep", &spec.full.keep)?;
        let inc_every = dur("incremental.every", &spec.incremental.every)?;
        let inc_keep = ret("incremental.keep", &spec.incremental.keep)?;
        let grace = dur("grace", &spec.grace)?;
        if inc_every >= full_every {
            return Err(PolicyError::IncrementalNotShorter {
                incremental: format_duration(inc_every),
                full: format_duration(full_every),
            });
        }
        for (what, every, keep) in [
            ("full", full_every, &full_keep),
            ("incremental", inc_every, &inc_keep),
        ] {
            if keep.span() < every {
                return Err(PolicyError::KeepShorterThanEvery {
                    what,
                    keep: format_duration(keep.span()),
                    every: format_duration(every),
                });
            }
        }
        let archive = match &spec.archive {
            None => None,
            // A replica target keeps backups as received snapshots, which have no archive
            // area: admission refuses `archive` there; a policy stored before that rule
            // existed is still backed up and expired, and its `archive` ignored.
            Some(_) if spec.target.dataset.is_some() => None,
            Some(a) => {
                let after = dur("archive.after", &a.after)?;
                let keep = ret("archive.keep", &a.keep)?;
                if keep.span() <= after {
                    return Err(PolicyError::ArchiveKeepNotBeyondAfter {
                        keep: format_duration(keep.span()),
                        after: format_duration(after),
                    });
                }
                Some(ArchiveRules {
                    after: sd(after),
                    keep,
                })
            }
        };
        Ok(PolicyRules {
            full: Cadence {
                every: sd(full_every),
                keep: full_keep,
            },
            incremental: Cadence {
                every: sd(inc_every),
                keep: inc_keep,
            },
            against: spec.incremental.against,
            archive,
            grace: sd(grace),
            suspend: spec.suspend,
        })
    }

    /// The cadence of one kind of backup.
    pub fn cadence(&self, kind: BackupKind) -> &Cadence {
        match kind {
            BackupKind::Full => &self.full,
            BackupKind::Incremental => &self.incremental,
        }
    }
}

/// What the controller knows about the source host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// The agent reports; backups run.
    Reachable,
    /// `spec.paused` (Zetaback's `offline`): listed, but gets no jobs and is never a violator.
    Paused,
    /// The agent has not reported since this time (the controller decides the threshold).
    Unreachable { since: Timestamp },
}

/// What the controller knows about the dataset's backup jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobState {
    /// A job for this dataset is pending or running (only one at a time per dataset).
    pub in_flight: bool,
    /// When the current run of failed jobs began (the first failure after the last success);
    /// `None` when the last finished job succeeded or there is none.
    pub failing_since: Option<Timestamp>,
    /// How many jobs have failed in a row (0 after a success).
    pub consecutive_failures: u32,
    /// When the most recent failed job finished; with `consecutive_failures` it sets the
    /// retry backoff (see [`retry_backoff`]).
    pub last_failure: Option<Timestamp>,
}

/// Everything about one dataset that the policy logic looks at.
#[derive(Debug, Clone, Copy)]
pub struct DatasetState<'a> {
    /// The stored backups of this dataset, live and archived.
    pub catalogue: &'a DatasetBackups,
    /// Short names (after `@`) of the snapshots that still exist on the source dataset.
    pub source_snapshots: &'a [String],
    pub host: HostState,
    pub jobs: JobState,
    /// Since when the dataset has been covered by the policy (first seen); the deadline for a
    /// first full is `covered_since + grace`. `None` when unknown: a dataset without any full
    /// is then a violator at once.
    pub covered_since: Option<Timestamp>,
    /// A forced backup asked for by the CLI (`backup --full` / `--incremental`).
    pub forced: Option<BackupKind>,
    /// The backup the dataset's newest succeeded BackupJob says it stored, if such a job is
    /// kept: the store must still hold it (or something newer) unless retention let it go.
    pub last_recorded: Option<RecordedBackup<'a>>,
}

/// A backup a succeeded BackupJob says it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedBackup<'a> {
    /// The backup's id in the store.
    pub id: &'a str,
    pub kind: BackupKind,
    /// When its job started (the snapshot is at least this new).
    pub started: Timestamp,
}

/// All the answers for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetPlan {
    pub due: DuePlan,
    pub retention: RetentionPlan,
    /// Empty when the dataset complies (always empty for a paused host).
    pub violations: Vec<Finding>,
}

/// Runs [`plan_due`], [`plan_retention`] and [`violations`] for one dataset.
pub fn evaluate(rules: &PolicyRules, state: &DatasetState<'_>, now: Timestamp) -> DatasetPlan {
    DatasetPlan {
        due: plan_due(rules, state, now),
        retention: plan_retention(rules, state.catalogue, now),
        violations: violations(rules, state, now),
    }
}

/// A std duration as a signed one (saturating; the API's durations are far below the limit).
fn sd(d: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `t + d`, saturating at the ends of the representable range.
fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// How old something created at `t` is at `now` (never negative).
fn age(now: Timestamp, t: Timestamp) -> SignedDuration {
    now.duration_since(t).max(SignedDuration::ZERO)
}

/// A duration for messages, in the API's `7d` form where it fits.
fn show(d: SignedDuration) -> String {
    match u64::try_from(d.as_secs()) {
        Ok(s) => format_duration(std::time::Duration::from_secs(s)),
        Err(_) => format!("{d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::{ArchiveSpec, BackupPolicySpec};

    fn spec(yaml: &str) -> BackupPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "hosts: {names: [h]}\ntarget: {host: b, path: /s}\n";

    #[test]
    fn from_spec_parses_everything() {
        let s = spec(&format!(
            "{BASE}full: {{every: 7d, keep: 30d}}\nincremental: {{every: 1d, keep: '24x1h,14x1d', against: previous}}\narchive: {{after: 30d, keep: 365d}}\ngrace: 1h\nsuspend: true\n"
        ));
        let r = PolicyRules::from_spec(&s).unwrap();
        assert_eq!(r.full.every, SignedDuration::from_hours(7 * 24));
        assert_eq!(r.incremental.every, SignedDuration::from_hours(24));
        assert!(matches!(r.incremental.keep, Retention::Grid(ref b) if b.len() == 2));
        assert_eq!(r.against, IncrementalBase::Previous);
        assert_eq!(
            r.archive.as_ref().map(|a| a.after),
            Some(SignedDuration::from_hours(30 * 24))
        );
        assert_eq!(r.grace, SignedDuration::from_hours(1));
        assert!(r.suspend);
        assert_eq!(r.cadence(BackupKind::Full).every, r.full.every);
    }

    #[test]
    fn archive_is_ignored_for_a_replica_target() {
        let s = spec(
            "hosts: {names: [h]}\ntarget: {host: b, dataset: tank/replicas}\nfull: {every: 7d, keep: 30d}\nincremental: {every: 1d, keep: 14d}\narchive: {after: 30d, keep: 365d}\n",
        );
        let r = PolicyRules::from_spec(&s).unwrap();
        assert!(r.archive.is_none(), "replicas have no archive area");
        assert_eq!(r.full.every, SignedDuration::from_hours(7 * 24));
    }

    #[test]
    fn from_spec_defaults() {
        let s = spec(&format!(
            "{BASE}full: {{every: 7d, keep: 30d}}\nincremental: {{every: 1d, keep: 14d}}\n"
        ));
        let r = PolicyRules::from_spec(&s).unwrap();
        assert_eq!(r.grace, SignedDuration::from_mins(15));
        assert_eq!(r.against, IncrementalBase::LastFull);
        assert!(r.archive.is_none());
        assert!(!r.suspend);
    }

    #[test]
    fn from_spec_refusals() {
        let base = spec(&format!(
            "{BASE}full: {{every: 7d, keep: 30d}}\nincremental: {{every: 1d, keep: 14d}}\n"
        ));
        type Edit = Box<dyn Fn(&mut BackupPolicySpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.full.every.0 = "7days".into()), "full.every"),
            (Box::new(|s| s.full.keep.0 = "0x1h".into()), "full.keep"),
            (
                Box::new(|s| s.incremental.every.0 = "".into()),
                "incremental.every",
            ),
            (
                Box::new(|s| s.incremental.keep.0 = "x".into()),
                "incremental.keep",
            ),
            (Box::new(|s| s.grace.0 = "-1m".into()), "grace"),
            (
                Box::new(|s| s.incremental.every.0 = "7d".into()),
                "must be shorter",
            ),
            (
                Box::new(|s| s.incremental.keep.0 = "12h".into()),
                "incremental.keep spans 12h",
            ),
            (
                Box::new(|s| s.full.keep.0 = "2x1d".into()),
                "full.keep spans 2d",
            ),
            (
                Box::new(|s| {
                    s.archive = Some(ArchiveSpec {
                        after: crate::api::common::DurationString("30d".into()),
                        keep: crate::api::common::RetentionString("30d".into()),
                    })
                }),
                "archive.keep spans 30d",
            ),
            (
                Box::new(|s| {
                    s.archive = Some(ArchiveSpec {
                        after: crate::api::common::DurationString("30x".into()),
                        keep: crate::api::common::RetentionString("365d".into()),
                    })
                }),
                "archive.after",
            ),
        ];
        for (edit, want) in cases {
            let mut s = base.clone();
            edit(&mut s);
            let err = PolicyRules::from_spec(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn time_helpers_saturate() {
        let t = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            add(Timestamp::MAX, SignedDuration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            add(Timestamp::MIN, SignedDuration::from_secs(-1)),
            Timestamp::MIN
        );
        assert_eq!(
            age(t, Timestamp::from_second(2_000).unwrap()),
            SignedDuration::ZERO
        );
        assert_eq!(show(SignedDuration::from_hours(48)), "2d");
        assert_eq!(sd(std::time::Duration::MAX), SignedDuration::MAX);
    }
}
