//! Who violates the policy, and since when.

use jiff::{SignedDuration, Timestamp};

use super::catalogue::ChainError;
use super::retention::retained_by_rule;
use super::{DatasetState, HostState, PolicyRules, add, show};
use crate::api::backup_policy::ViolationReason;

/// One reason a dataset violates its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub reason: ViolationReason,
    /// Since when the reason holds; `None` when unknown (a dataset with no backups and no
    /// known `covered_since`).
    pub since: Option<Timestamp>,
    /// A one-line explanation for status and `kubectl zetaback violators`.
    pub message: String,
}

/// Why a dataset violates its policy; empty when it complies. A dataset is a *violator* when
/// this is not empty.
///
/// * A **paused** host's datasets never violate (Zetaback's `offline`).
/// * `HostUnreachable` since the host stopped reporting.
/// * `LastJobFailed` since the first failure after the last success (no grace: a failure is
///   news at once).
/// * `ChainBroken` when the newest stored backup cannot be restored (a backup of its chain is
///   not stored), since that backup's creation.
/// * `Corrupt` when a stored backup was quarantined by verification and no good full was
///   stored after it ([`super::unhealed_quarantine`]), since it was found.
/// * `BackupMissing` when the backup the newest succeeded job stored is not in the store, nothing
///   newer is, and the policy's `keep` rules (or the archive's) would still keep it: it was
///   lost behind the controller's back, not expired (`since` unknown).
/// * `NoFullWithin` when `now` is past `newest full + full.every + grace`; with no full at
///   all, past `covered_since + full.every + grace` (or at once, `since: None`, when
///   `covered_since` is unknown). `since` is that deadline.
/// * `NoBackupWithin`, the same with the newest *restorable* backup of any kind and
///   `incremental.every` (an incremental whose chain is broken restores nothing).
///
/// Exactly at the deadline a dataset still complies; one nanosecond later it does not. A
/// suspended policy still reports violations. Findings come in the order above.
pub fn violations(rules: &PolicyRules, state: &DatasetState<'_>, now: Timestamp) -> Vec<Finding> {
    let mut out = Vec::new();
    match state.host {
        HostState::Paused => return out,
        HostState::Unreachable { since } => out.push(Finding {
            reason: ViolationReason::HostUnreachable,
            since: Some(since),
            message: format!("the host's agent has not reported since {since}"),
        }),
        HostState::Reachable => {}
    }
    if let Some(since) = state.jobs.failing_since {
        out.push(Finding {
            reason: ViolationReason::LastJobFailed,
            since: Some(since),
            message: format!("backup jobs have failed since {since}"),
        });
    }
    let cat = state.catalogue;
    if let Some(newest) = cat.newest()
        && let Err(ChainError::ChainBroken { missing, .. }) = cat.chain(&newest.id)
    {
        out.push(Finding {
            reason: ViolationReason::ChainBroken,
            since: Some(newest.created),
            message: format!(
                "the newest backup {} cannot be restored: its chain needs {missing}, which is not stored",
                newest.id
            ),
        });
    }
    if let Some(q) = super::unhealed_quarantine(cat) {
        out.push(Finding {
            reason: ViolationReason::Corrupt,
            since: q.verified_at,
            message: format!(
                "backup {} is corrupt (its stored stream no longer matches its manifest) and quarantined; no good full backup was stored since",
                q.id
            ),
        });
    }
    if let Some(recorded) = state.last_recorded
        && cat.get(recorded.id).is_none()
        && cat.newest().is_none_or(|n| n.created < recorded.started)
        && still_kept(rules, recorded.kind, recorded.started, now)
    {
        out.push(Finding {
            reason: ViolationReason::BackupMissing,
            since: None,
            message: format!(
                "backup {} (stored by a job started {}) is no longer in the store, and the policy still keeps it",
                recorded.id, recorded.started
            ),
        });
    }
    let newest_restorable = cat.newest_restorable();
    let overdue = [
        (
            ViolationReason::NoFullWithin,
            "full backup",
            "full.every",
            cat.newest_full(),
            rules.full.every,
        ),
        (
            ViolationReason::NoBackupWithin,
            "backup",
            "incremental.every",
            newest_restorable,
            rules.incremental.every,
        ),
    ];
    for (reason, what, field, newest, every) in overdue {
        // Formatted only for a violator: this runs for every dataset on every reconcile.
        let window = || format!("{field} {} + grace {}", show(every), show(rules.grace));
        let reference = newest.map(|r| r.created).or(state.covered_since);
        let Some(reference) = reference else {
            out.push(Finding {
                reason,
                since: None,
                message: format!("no {what} yet"),
            });
            continue;
        };
        let deadline = add(add(reference, every), rules.grace);
        if now > deadline {
            let message = match newest {
                Some(r) => format!("no {what} since {} ({})", r.created, window()),
                None => format!(
                    "no {what} since coverage began at {reference} ({})",
                    window()
                ),
            };
            out.push(Finding {
                reason,
                since: Some(deadline),
                message,
            });
        }
    }
    out
}

/// Whether a backup of `kind` created at `created` would still be kept at `now` by the
/// policy's rules (live, or in the archive area).
fn still_kept(
    rules: &PolicyRules,
    kind: super::BackupKind,
    created: Timestamp,
    now: Timestamp,
) -> bool {
    let live = retained_by_rule(&rules.cadence(kind).keep, &[created], now);
    let archived = rules
        .archive
        .as_ref()
        .map(|a| retained_by_rule(&a.keep, &[created], now));
    live.first().copied().unwrap_or(false)
        || archived.is_some_and(|a| a.first().copied().unwrap_or(false))
}

/// What the controller knows about one host a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostReport {
    /// The policy names a ZfsHost that does not exist.
    Missing,
    /// `spec.paused`: never a violator.
    Paused,
    /// The ZfsHost exists (since `created`, when known) but its agent never reported.
    NeverReported { created: Option<Timestamp> },
    /// The agent last reported at `last_seen`, listing `datasets` datasets the policy covers.
    Reported {
        last_seen: Timestamp,
        datasets: usize,
    },
}

/// The violation of a host as a whole: `HostNotReporting` when nothing is known of its
/// datasets, because it does not exist, its agent never reported, or its last report is older
/// than `stale_after` and listed none of the policy's datasets (a stale host that listed
/// some makes each of those `HostUnreachable` instead, see [`violations`]). `None` otherwise.
/// There is no grace: until a host reports, the policy cannot vouch for any of its datasets.
pub fn host_violation(
    report: HostReport,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Option<Finding> {
    let (since, message) = match report {
        HostReport::Paused => return None,
        HostReport::Missing => (
            None,
            "no ZfsHost of this name exists, so its datasets are unknown".to_owned(),
        ),
        HostReport::NeverReported { created } => (
            created,
            "the host's agent has never reported, so its datasets are unknown".to_owned(),
        ),
        HostReport::Reported {
            last_seen,
            datasets: 0,
        } if now.duration_since(last_seen) > stale_after => (
            Some(last_seen),
            format!(
                "the host's agent has not reported since {last_seen}, so its datasets are unknown"
            ),
        ),
        HostReport::Reported { .. } => return None,
    };
    Some(Finding {
        reason: ViolationReason::HostNotReporting,
        since,
        message,
    })
}

#[cfg(test)]
mod tests;
