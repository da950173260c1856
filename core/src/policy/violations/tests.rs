use super::*;
use crate::api::backup_policy::IncrementalBase;
use crate::duration::Retention;
use crate::policy::catalogue::tests::{cat, full, inc, ts};
use crate::policy::{BackupKind, BackupRecord, Cadence, DatasetBackups, JobState, RecordedBackup};

const D: i64 = 86_400;
const G: i64 = 900;
use ViolationReason::{
    BackupMissing, ChainBroken, HostNotReporting, HostUnreachable, LastJobFailed, NoBackupWithin,
    NoFullWithin,
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
    struct Case {
        name: &'static str,
        records: Vec<BackupRecord>,
        host: HostState,
        failing_since: Option<i64>,
        covered_since: Option<i64>,
        now: i64,
        /// (reason, since)
        want: Vec<(ViolationReason, Option<i64>)>,
    }
    let cases: Vec<Case> = vec![
        Case {
            name: "fresh",
            records: hist(),
            host: HostState::Reachable,
            failing_since: None,
            covered_since: None,
            now: 6 * D + 1,
            want: vec![],
        },
        Case {
            name: "at the deadline",
            records: hist(),
            host: HostState::Reachable,
            failing_since: None,
            covered_since: None,
            now: 7 * D + G,
            want: vec![],
        },
        Case {
            name: "past both deadlines",
            records: hist(),
            host: HostState::Reachable,
            failing_since: None,
            covered_since: None,
            now: 7 * D + G + 1,
            want: vec![
                (NoFullWithin, Some(7 * D + G)),
                (NoBackupWithin, Some(7 * D + G)),
            ],
        },
        Case {
            name: "incremental late only",
            records: vec![full("f", 0)],
            host: HostState::Reachable,
            failing_since: None,
            covered_since: None,
            now: 2 * D,
            want: vec![(NoBackupWithin, Some(D + G))],
        },
        Case {
            name: "paused hides everything",
            records: vec![],
            host: HostState::Paused,
            failing_since: Some(5),
            covered_since: None,
            now: 100 * D,
            want: vec![],
        },
        Case {
            name: "unreachable and failing",
            records: hist(),
            host: HostState::Unreachable { since: ts(6 * D) },
            failing_since: Some(6 * D + 5),
            covered_since: None,
            now: 6 * D + 10,
            want: vec![
                (HostUnreachable, Some(6 * D)),
                (LastJobFailed, Some(6 * D + 5)),
            ],
        },
        Case {
            name: "never backed up, coverage unknown",
            records: vec![],
            host: HostState::Reachable,
            failing_since: None,
            covered_since: None,
            now: 0,
            want: vec![(NoFullWithin, None), (NoBackupWithin, None)],
        },
        Case {
            name: "never backed up, newly covered",
            records: vec![],
            host: HostState::Reachable,
            failing_since: None,
            covered_since: Some(0),
            now: D,
            want: vec![],
        },
        Case {
            name: "never backed up, covered long ago",
            records: vec![],
            host: HostState::Reachable,
            failing_since: None,
            covered_since: Some(0),
            now: D + G + 1,
            want: vec![(NoBackupWithin, Some(D + G))],
        },
        Case {
            name: "a stale full is not excused by recent coverage",
            records: vec![full("f", 0)],
            host: HostState::Reachable,
            failing_since: None,
            covered_since: Some(30 * D),
            now: 30 * D,
            want: vec![
                (NoFullWithin, Some(7 * D + G)),
                (NoBackupWithin, Some(D + G)),
            ],
        },
    ];
    for Case {
        name,
        records,
        host,
        failing_since: failing,
        covered_since: covered,
        now,
        want,
    } in cases
    {
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
