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
mod tests {
    use super::*;
    use crate::api::backup_policy::IncrementalBase;
    use crate::duration::Retention;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};
    use crate::policy::{
        BackupKind, BackupRecord, Cadence, DatasetBackups, JobState, RecordedBackup,
    };

    const D: i64 = 86_400;
    const G: i64 = 900;
    use ViolationReason::{
        BackupMissing, ChainBroken, HostNotReporting, HostUnreachable, LastJobFailed,
        NoBackupWithin, NoFullWithin,
    };

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
            let c: DatasetBackups = cat(records);
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
                last_recorded: None,
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
            last_recorded: None,
        };
        let f = violations(&rules(), &state, ts(8 * D));
        assert_eq!(
            f[0].message,
            "no full backup since 1970-01-01T00:00:00Z (full.every 1w + grace 15m)"
        );
    }

    fn state<'a>(c: &'a DatasetBackups, recorded: Option<RecordedBackup<'a>>) -> DatasetState<'a> {
        DatasetState {
            catalogue: c,
            source_snapshots: &[],
            host: HostState::Reachable,
            jobs: JobState::default(),
            covered_since: Some(ts(0)),
            forced: None,
            last_recorded: recorded,
        }
    }

    fn reasons(f: &[Finding]) -> Vec<(ViolationReason, Option<Timestamp>)> {
        f.iter().map(|f| (f.reason, f.since)).collect()
    }

    #[test]
    fn an_unrestorable_newest_backup_is_a_violation_and_not_a_backup() {
        // The full under both incrementals is gone: nothing here restores.
        let c = cat(vec![inc("a", D, "f"), inc("b", 2 * D, "f")]);
        let f = violations(&rules(), &state(&c, None), ts(2 * D + 10));
        assert_eq!(
            reasons(&f),
            vec![
                (ChainBroken, Some(ts(2 * D))),
                // No full since coverage began (day 0) is not late yet; no *restorable*
                // backup since day 0 is.
                (NoBackupWithin, Some(ts(D + G))),
            ]
        );
        assert_eq!(
            f[0].message,
            "the newest backup b cannot be restored: its chain needs f, which is not stored"
        );
        // With the full in place the same backups comply.
        let c = cat(vec![full("f", 0), inc("a", D, "f"), inc("b", 2 * D, "f")]);
        assert!(violations(&rules(), &state(&c, None), ts(2 * D + 10)).is_empty());
    }

    #[test]
    fn a_recorded_backup_the_store_lost_is_a_violation_until_it_expires() {
        let recorded = |id: &'static str, started| RecordedBackup {
            id,
            kind: BackupKind::Full,
            started: ts(started),
        };
        let c = cat(vec![full("f", 0)]);
        // The job stored "g" on day 2; the store has only the older "f".
        let f = violations(&rules(), &state(&c, Some(recorded("g", 2 * D))), ts(3 * D));
        assert_eq!(
            reasons(&f),
            vec![(BackupMissing, None), (NoBackupWithin, Some(ts(D + G)))]
        );
        assert!(f[0].message.contains("backup g"), "{}", f[0].message);
        // Stored: fine. Something newer stored: fine (retention may have replaced it).
        let with_g = cat(vec![full("f", 0), full("g", 2 * D + 5)]);
        assert!(
            violations(
                &rules(),
                &state(&with_g, Some(recorded("g", 2 * D))),
                ts(3 * D)
            )
            .is_empty()
        );
        let newer = cat(vec![full("h", 2 * D + 60)]);
        assert!(
            violations(
                &rules(),
                &state(&newer, Some(recorded("g", 2 * D))),
                ts(3 * D)
            )
            .is_empty()
        );
        // Past its keep (30 d) retention would have deleted it: not a loss (just late).
        let f = violations(&rules(), &state(&c, Some(recorded("g", 2 * D))), ts(33 * D));
        assert!(
            !reasons(&f).iter().any(|(r, _)| *r == BackupMissing),
            "{f:?}"
        );
        // The only backup lost, on a policy covering the dataset since just now: still seen.
        let empty = cat(vec![]);
        let mut st = state(&empty, Some(recorded("g", 2 * D)));
        st.covered_since = Some(ts(2 * D - 10));
        let f = violations(&rules(), &st, ts(2 * D + 60));
        assert_eq!(reasons(&f), vec![(BackupMissing, None)]);
    }

    #[test]
    fn hosts_that_do_not_report_make_their_datasets_unknown() {
        let stale = SignedDuration::from_secs(90);
        let now = ts(10_000);
        let cases = [
            (HostReport::Missing, Some(None)),
            (HostReport::Paused, None),
            (
                HostReport::NeverReported {
                    created: Some(ts(5)),
                },
                Some(Some(ts(5))),
            ),
            (HostReport::NeverReported { created: None }, Some(None)),
            // Reported recently: its datasets (none or some) are what it said.
            (
                HostReport::Reported {
                    last_seen: ts(10_000 - 90),
                    datasets: 0,
                },
                None,
            ),
            // Stale, listing none of the policy's datasets: unknown.
            (
                HostReport::Reported {
                    last_seen: ts(10_000 - 91),
                    datasets: 0,
                },
                Some(Some(ts(10_000 - 91))),
            ),
            // Stale with datasets: each of those is HostUnreachable instead.
            (
                HostReport::Reported {
                    last_seen: ts(10),
                    datasets: 2,
                },
                None,
            ),
        ];
        for (report, want) in cases {
            let got = host_violation(report, now, stale);
            assert_eq!(got.as_ref().map(|f| f.since), want, "{report:?}");
            if let Some(f) = got {
                assert_eq!(f.reason, HostNotReporting);
                assert!(
                    f.message.ends_with("so its datasets are unknown"),
                    "{}",
                    f.message
                );
            }
        }
    }
}
