//! What is due: the next backup to take for one dataset, and when.

use jiff::{SignedDuration, Timestamp};

use super::catalogue::{ChainError, DatasetBackups};
use super::{BackupKind, DatasetState, HostState, PolicyRules, add};
use crate::api::backup_policy::IncrementalBase;

/// The stored backup an incremental is taken against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRef {
    /// The base backup's id in the store.
    pub backup: String,
    /// Its snapshot on the source (short name), for `zfs send -i`.
    pub snapshot: String,
}

/// Why a backup is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DueReason {
    /// Asked for explicitly (CLI `backup --full` / `--incremental`).
    Forced,
    /// The dataset has no full backup.
    NoFull,
    /// The newest full is at least `full.every` old.
    FullEvery,
    /// The newest backup is at least `incremental.every` old.
    IncrementalEvery,
    /// An incremental was wanted but its base snapshot no longer exists on the source, so a
    /// full is taken instead.
    BaseSnapshotGone { snapshot: String },
    /// An incremental was wanted but its base backup cannot be restored (a backup of its
    /// chain is missing from the store), so a full is taken instead.
    BaseChainBroken { missing: String },
    /// A stored backup was found corrupt and quarantined, and no good full was stored after
    /// it: a full, at once, so the dataset's chain heals.
    Quarantined { backup: String },
}

/// A backup to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueBackup {
    pub kind: BackupKind,
    /// For an incremental, what it is taken against; `None` for a full.
    pub base: Option<BaseRef>,
    pub reason: DueReason,
}

/// Why a due backup is not started now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The policy has `suspend: true` (a forced backup still runs).
    PolicySuspended,
    /// The host is paused (Zetaback's `offline`).
    HostPaused,
    /// The host's agent is not reporting.
    HostUnreachable,
    /// A job for this dataset is already pending or running.
    JobInFlight,
    /// The last jobs failed; the next try waits until this time (then `next_due` is it too).
    RetryBackoff { until: Timestamp },
}

/// The scheduling answer for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePlan {
    /// The backup to start now, if any.
    pub due: Option<DueBackup>,
    /// Set when a backup is due but must not start now (then `due` is `None`).
    pub held: Option<Hold>,
    /// When the next backup is (or became) due: at or before `now` when one is due now,
    /// otherwise the earliest of "newest full + full.every" and "newest backup +
    /// incremental.every"; under [`Hold::RetryBackoff`], the end of the backoff. The
    /// controller requeues at this time (other holds end with a watch event).
    pub next_due: Timestamp,
}

/// What is due, ignoring holds (host state, suspension, jobs in flight).
///
/// The rule, in order:
/// 1. No full at all (quarantined fulls do not count): a **full** (`NoFull`).
/// 2. A quarantined backup with no good full after it ([`super::unhealed_quarantine`]): a
///    **full** at once (`Quarantined`), so the chain heals.
/// 3. Forced full: a **full** (`Forced`).
/// 4. The newest full is at least `full.every` old: a **full** (`FullEvery`).
/// 5. An incremental is wanted when forced or when the newest backup (of any kind) is at least
///    `incremental.every` old. Its base is the newest full (`against: lastFull`, Zetaback's
///    differential model: a restore needs at most two pieces) or the newest backup
///    (`against: previous`, chained). If the base's snapshot is gone from the source, or the
///    base itself cannot be restored (a piece missing or quarantined), a **full** is taken
///    instead (`BaseSnapshotGone`, `BaseChainBroken`, `Quarantined`); otherwise an
///    **incremental** (`Forced` or `IncrementalEvery`). The base is checked only when an
///    incremental is wanted, so a snapshot destroyed between backups causes a full at the next
///    incremental's time, not at once.
/// 6. Otherwise nothing.
///
/// Invariant (property-tested): an incremental is only ever scheduled against a stored,
/// restorable (so never quarantined) backup whose snapshot is in `source_snapshots`.
pub fn next_backup(
    rules: &PolicyRules,
    cat: &DatasetBackups,
    source_snapshots: &[String],
    forced: Option<BackupKind>,
    now: Timestamp,
) -> DuePlan {
    let plan = |kind, base, reason, next_due| DuePlan {
        due: Some(DueBackup { kind, base, reason }),
        held: None,
        next_due,
    };
    let full = |reason, next_due| plan(BackupKind::Full, None, reason, next_due);
    let (Some(last_full), Some(newest)) = (cat.newest_full(), cat.newest()) else {
        return full(DueReason::NoFull, now);
    };
    if let Some(q) = super::unhealed_quarantine(cat) {
        let backup = q.id.clone();
        return full(DueReason::Quarantined { backup }, now);
    }
    if forced == Some(BackupKind::Full) {
        return full(DueReason::Forced, now);
    }
    let full_deadline = add(last_full.created, rules.full.every);
    if now >= full_deadline {
        return full(DueReason::FullEvery, full_deadline);
    }
    let inc_deadline = add(newest.created, rules.incremental.every);
    let (reason, next_due) = if forced == Some(BackupKind::Incremental) {
        (DueReason::Forced, now)
    } else if now >= inc_deadline {
        (DueReason::IncrementalEvery, inc_deadline)
    } else {
        return DuePlan {
            due: None,
            held: None,
            next_due: full_deadline.min(inc_deadline),
        };
    };
    let base = match rules.against {
        IncrementalBase::LastFull => last_full,
        IncrementalBase::Previous => newest,
    };
    if !source_snapshots.contains(&base.snapshot) {
        let gone = DueReason::BaseSnapshotGone {
            snapshot: base.snapshot.clone(),
        };
        return full(gone, next_due);
    }
    match cat.chain(&base.id) {
        Err(ChainError::Quarantined { corrupt, .. }) => {
            return full(DueReason::Quarantined { backup: corrupt }, next_due);
        }
        Err(ChainError::ChainBroken { missing, .. }) => {
            return full(DueReason::BaseChainBroken { missing }, next_due);
        }
        _ => {}
    }
    let base = BaseRef {
        backup: base.id.clone(),
        snapshot: base.snapshot.clone(),
    };
    plan(BackupKind::Incremental, Some(base), reason, next_due)
}

/// How long to wait before retrying after `failures` jobs failed in a row: 30s, doubling per
/// failure, capped at one hour and at `incremental.every` (so a policy with second-scale
/// intervals retries at its own pace). Zero when nothing failed.
pub fn retry_backoff(rules: &PolicyRules, failures: u32) -> SignedDuration {
    if failures == 0 {
        return SignedDuration::ZERO;
    }
    let doubled = 30i64.saturating_mul(1i64 << (failures - 1).min(20));
    SignedDuration::from_secs(doubled)
        .min(SignedDuration::from_hours(1))
        .min(rules.incremental.every)
}

/// What is due for one dataset, with holds applied, in this order: nothing starts on a paused
/// or unreachable host, while a job for the dataset is in flight, (unless forced) under a
/// suspended policy, or (unless forced) before the retry backoff after failed jobs is over.
pub fn plan_due(rules: &PolicyRules, state: &DatasetState<'_>, now: Timestamp) -> DuePlan {
    let mut plan = next_backup(
        rules,
        state.catalogue,
        state.source_snapshots,
        state.forced,
        now,
    );
    if plan.due.is_none() {
        return plan;
    }
    let hold = match state.host {
        HostState::Paused => Some(Hold::HostPaused),
        HostState::Unreachable { .. } => Some(Hold::HostUnreachable),
        HostState::Reachable if state.jobs.in_flight => Some(Hold::JobInFlight),
        HostState::Reachable if rules.suspend && state.forced.is_none() => {
            Some(Hold::PolicySuspended)
        }
        HostState::Reachable => match state.jobs.last_failure {
            Some(at) if state.forced.is_none() => {
                let until = add(at, retry_backoff(rules, state.jobs.consecutive_failures));
                (now < until).then_some(Hold::RetryBackoff { until })
            }
            _ => None,
        },
    };
    if let Some(hold) = hold {
        plan.due = None;
        plan.held = Some(hold);
        if let Hold::RetryBackoff { until } = hold {
            plan.next_due = until;
        }
    }
    plan
}

#[cfg(test)]
mod tests;
