//! Who violates the policy, and since when.

use jiff::Timestamp;

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
/// * `NoFullWithin` when `now` is past `newest full + full.every + grace`; with no full at
///   all, past `covered_since + full.every + grace` (or at once, `since: None`, when
///   `covered_since` is unknown). `since` is that deadline.
/// * `NoBackupWithin`, the same with the newest backup of any kind and `incremental.every`.
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
            cat.newest(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::IncrementalBase;
    use crate::duration::Retention;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};
    use crate::policy::{BackupRecord, Cadence, Catalogue, JobState};
    use jiff::SignedDuration;

    const D: i64 = 86_400;
    const G: i64 = 900;
    use ViolationReason::{HostUnreachable, LastJobFailed, NoBackupWithin, NoFullWithin};

    fn rules() -> PolicyRules {
        let keep = Retention::Age(std::time::Duration::from_secs(30 * D as u64));
        PolicyRules {
            full: Cadence {
                every: SignedDuration::from_secs(7 * D),
                keep: keep.clone(),
            },
            incremental: Cadence {
                every: SignedDuration::from_secs(D),
                keep,
            },
            against: IncrementalBase::LastFull,
            archive: None,
            grace: SignedDuration::from_secs(G),
            suspend: true,
        }
    }

    #[test]
    fn table() {
        let hist = || vec![full("f", 0), inc("a", D, "f"), inc("b", 6 * D, "f")];
        // (name, records, host, failing_since, covered_since, now, want)
        type Case = (
            &'static str,
            Vec<BackupRecord>,
            HostState,
            Option<i64>,
            Option<i64>,
            i64,
            Vec<(ViolationReason, Option<i64>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "fresh",
                hist(),
                HostState::Reachable,
                None,
                None,
                6 * D + 1,
                vec![],
            ),
            (
                "at the deadline",
                hist(),
                HostState::Reachable,
                None,
                None,
                7 * D + G,
                vec![],
            ),
            (
                "past both deadlines",
                hist(),
                HostState::Reachable,
                None,
                None,
                7 * D + G + 1,
                vec![
                    (NoFullWithin, Some(7 * D + G)),
                    (NoBackupWithin, Some(7 * D + G)),
                ],
            ),
            (
                "incremental late only",
                vec![full("f", 0)],
                HostState::Reachable,
                None,
                None,
                2 * D,
                vec![(NoBackupWithin, Some(D + G))],
            ),
            (
                "paused hides everything",
                vec![],
                HostState::Paused,
                Some(5),
                None,
                100 * D,
                vec![],
            ),
            (
                "unreachable and failing",
                hist(),
                HostState::Unreachable { since: ts(6 * D) },
                Some(6 * D + 5),
                None,
                6 * D + 10,
                vec![
                    (HostUnreachable, Some(6 * D)),
                    (LastJobFailed, Some(6 * D + 5)),
                ],
            ),
            (
                "never backed up, coverage unknown",
                vec![],
                HostState::Reachable,
                None,
                None,
                0,
                vec![(NoFullWithin, None), (NoBackupWithin, None)],
            ),
            (
                "never backed up, newly covered",
                vec![],
                HostState::Reachable,
                None,
                Some(0),
                D,
                vec![],
            ),
            (
                "never backed up, covered long ago",
                vec![],
                HostState::Reachable,
                None,
                Some(0),
                D + G + 1,
                vec![(NoBackupWithin, Some(D + G))],
            ),
            (
                "a stale full is not excused by recent coverage",
                vec![full("f", 0)],
                HostState::Reachable,
                None,
                Some(30 * D),
                30 * D,
                vec![
                    (NoFullWithin, Some(7 * D + G)),
                    (NoBackupWithin, Some(D + G)),
                ],
            ),
        ];
        for (name, records, host, failing, covered, now, want) in cases {
            let c: Catalogue = cat(records);
            let state = DatasetState {
                catalogue: &c,
                source_snapshots: &[],
                host,
                jobs: JobState {
                    failing_since: failing.map(ts),
                    ..JobState::default()
                },
                covered_since: covered.map(ts),
                forced: None,
            };
            let got: Vec<_> = violations(&rules(), &state, ts(now))
                .into_iter()
                .map(|f| {
                    assert!(!f.message.is_empty());
                    (f.reason, f.since)
                })
                .collect();
            let want: Vec<_> = want.into_iter().map(|(r, s)| (r, s.map(ts))).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn messages_read_well() {
        let c = cat(vec![full("f", 0)]);
        let state = DatasetState {
            catalogue: &c,
            source_snapshots: &[],
            host: HostState::Reachable,
            jobs: JobState::default(),
            covered_since: None,
            forced: None,
        };
        let f = violations(&rules(), &state, ts(8 * D));
        assert_eq!(
            f[0].message,
            "no full backup since 1970-01-01T00:00:00Z (full.every 1w + grace 15m)"
        );
    }
}
