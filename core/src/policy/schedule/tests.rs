use super::*;
use crate::duration::Retention;
use crate::policy::catalogue::tests::{cat, full, inc, ts};
use crate::policy::{BackupRecord, Cadence, JobState};

const H: i64 = 3600;
const D: i64 = 86_400;

fn rules(against: IncrementalBase) -> PolicyRules {
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
        against,
        archive: None,
        grace: SignedDuration::from_secs(900),
        suspend: false,
    }
}

fn quarantined(mut r: BackupRecord) -> BackupRecord {
    r.quarantined = true;
    r
}

fn snaps(c: &DatasetBackups) -> Vec<String> {
    c.records().iter().map(|r| r.snapshot.clone()).collect()
}

fn history() -> Vec<BackupRecord> {
    vec![full("f", 0), inc("a", D, "f"), inc("b", 2 * D, "a")]
}

type Want = Option<(BackupKind, Option<&'static str>, DueReason)>;

#[test]
fn table() {
    use BackupKind::{Full, Incremental};
    use IncrementalBase::{LastFull, Previous};
    let all = |_: &DatasetBackups| None::<Vec<String>>;
    type Snaps = fn(&DatasetBackups) -> Option<Vec<String>>;
    struct Case {
        name: &'static str,
        records: Vec<BackupRecord>,
        against: IncrementalBase,
        /// The source's snapshots (`None`: those of every stored backup).
        snapshots: Snaps,
        forced: Option<BackupKind>,
        now: i64,
        want: Want,
        next_due: i64,
    }
    let cases: Vec<Case> = vec![
        Case {
            name: "empty",
            records: vec![],
            against: LastFull,
            snapshots: all,
            forced: None,
            now: 5,
            want: Some((Full, None, DueReason::NoFull)),
            next_due: 5,
        },
        Case {
            name: "only incrementals",
            records: vec![inc("x", 0, "gone")],
            against: LastFull,
            snapshots: all,
            forced: Some(Incremental),
            now: 5,
            want: Some((Full, None, DueReason::NoFull)),
            next_due: 5,
        },
        Case {
            name: "not yet",
            records: history(),
            against: LastFull,
            snapshots: all,
            forced: None,
            now: 2 * D + H,
            want: None,
            next_due: 3 * D,
        },
        Case {
            name: "incremental differential",
            records: history(),
            against: LastFull,
            snapshots: all,
            forced: None,
            now: 3 * D,
            want: Some((Incremental, Some("f"), DueReason::IncrementalEvery)),
            next_due: 3 * D,
        },
        Case {
            name: "incremental chained",
            records: history(),
            against: Previous,
            snapshots: all,
            forced: None,
            now: 3 * D + 5,
            want: Some((Incremental, Some("b"), DueReason::IncrementalEvery)),
            next_due: 3 * D,
        },
        Case {
            name: "full every",
            records: history(),
            against: Previous,
            snapshots: all,
            forced: None,
            now: 7 * D,
            want: Some((Full, None, DueReason::FullEvery)),
            next_due: 7 * D,
        },
        Case {
            name: "forced full",
            records: history(),
            against: Previous,
            snapshots: all,
            forced: Some(Full),
            now: 2 * D + 1,
            want: Some((Full, None, DueReason::Forced)),
            next_due: 2 * D + 1,
        },
        Case {
            name: "forced incremental",
            records: history(),
            against: Previous,
            snapshots: all,
            forced: Some(Incremental),
            now: 2 * D + 1,
            want: Some((Incremental, Some("b"), DueReason::Forced)),
            next_due: 2 * D + 1,
        },
        Case {
            name: "base snapshot gone",
            records: history(),
            against: Previous,
            snapshots: |_| Some(vec!["sf".into(), "sa".into()]),
            forced: None,
            now: 3 * D,
            want: Some((
                Full,
                None,
                DueReason::BaseSnapshotGone {
                    snapshot: "sb".into(),
                },
            )),
            next_due: 3 * D,
        },
        Case {
            name: "base snapshot gone but not wanted yet",
            records: history(),
            against: Previous,
            snapshots: |_| Some(vec![]),
            forced: None,
            now: 2 * D + 1,
            want: None,
            next_due: 3 * D,
        },
        Case {
            name: "differential only needs the full's snapshot",
            records: history(),
            against: LastFull,
            snapshots: |_| Some(vec!["sf".into()]),
            forced: None,
            now: 3 * D,
            want: Some((Incremental, Some("f"), DueReason::IncrementalEvery)),
            next_due: 3 * D,
        },
        Case {
            name: "forced incremental without base",
            records: history(),
            against: LastFull,
            snapshots: |_| Some(vec!["sb".into()]),
            forced: Some(Incremental),
            now: 2 * D + 1,
            want: Some((
                Full,
                None,
                DueReason::BaseSnapshotGone {
                    snapshot: "sf".into(),
                },
            )),
            next_due: 2 * D + 1,
        },
        Case {
            name: "chained base unrestorable",
            records: vec![full("f", 0), inc("b", 2 * D, "lost")],
            against: Previous,
            snapshots: all,
            forced: None,
            now: 3 * D,
            want: Some((
                Full,
                None,
                DueReason::BaseChainBroken {
                    missing: "lost".into(),
                },
            )),
            next_due: 3 * D,
        },
        Case {
            name: "a quarantined incremental: a full at once, not at the next incremental's time",
            records: vec![full("f", 0), quarantined(inc("a", D, "f"))],
            against: LastFull,
            snapshots: all,
            forced: None,
            now: D + H,
            want: Some((Full, None, DueReason::Quarantined { backup: "a".into() })),
            next_due: D + H,
        },
        Case {
            name: "a quarantined full outranks a forced incremental",
            records: vec![
                full("f", 0),
                quarantined(full("g", D)),
                inc("a", 2 * D, "f"),
            ],
            against: LastFull,
            snapshots: all,
            forced: Some(Incremental),
            now: 2 * D + H,
            want: Some((Full, None, DueReason::Quarantined { backup: "g".into() })),
            next_due: 2 * D + H,
        },
        Case {
            name: "healed by a newer full: back to the normal schedule",
            records: vec![
                full("f", 0),
                quarantined(inc("a", D, "f")),
                full("g", 2 * D),
            ],
            against: Previous,
            snapshots: all,
            forced: None,
            now: 2 * D + H,
            want: None,
            next_due: 3 * D,
        },
        Case {
            name: "the only full quarantined counts as no full",
            records: vec![quarantined(full("f", 0))],
            against: LastFull,
            snapshots: all,
            forced: None,
            now: H,
            want: Some((Full, None, DueReason::NoFull)),
            next_due: H,
        },
        Case {
            name: "a newer full resets the incremental clock",
            records: vec![full("f", 0), inc("a", D, "f"), full("g", 2 * D + H)],
            against: LastFull,
            snapshots: all,
            forced: None,
            now: 3 * D,
            want: None,
            next_due: 3 * D + H,
        },
    ];
    for Case {
        name,
        records,
        against,
        snapshots: sn,
        forced,
        now,
        want,
        next_due,
    } in cases
    {
        let c = cat(records);
        let snapshots = sn(&c).unwrap_or_else(|| snaps(&c));
        let p = next_backup(&rules(against), &c, &snapshots, forced, ts(now));
        let got = p.due.map(|d| {
            let base = d.base.map(|b| b.backup);
            (d.kind, base, d.reason)
        });
        let want = want.map(|(k, b, r)| (k, b.map(String::from), r));
        assert_eq!(got, want, "{name}");
        assert_eq!(p.next_due, ts(next_due), "{name}: next_due");
        assert_eq!(p.held, None);
    }
}

#[test]
fn base_snapshot_in_the_ref() {
    let c = cat(history());
    let p = next_backup(
        &rules(IncrementalBase::Previous),
        &c,
        &snaps(&c),
        None,
        ts(3 * D),
    );
    let base = p.due.and_then(|d| d.base);
    assert_eq!(
        base,
        Some(BaseRef {
            backup: "b".into(),
            snapshot: "sb".into()
        })
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    let r = rules(IncrementalBase::LastFull);
    let got: Vec<i64> = [0, 1, 2, 3, 7, 8, 40, u32::MAX]
        .into_iter()
        .map(|n| retry_backoff(&r, n).as_secs())
        .collect();
    assert_eq!(got, [0, 30, 60, 120, 1920, 3600, 3600, 3600]);
    let mut fast = r.clone();
    fast.incremental.every = SignedDuration::from_secs(10);
    assert_eq!(retry_backoff(&fast, 1).as_secs(), 10);
}

#[test]
fn holds() {
    let c = cat(history());
    let s = snaps(&c);
    let state = |host, in_flight, forced| DatasetState {
        catalogue: &c,
        source_snapshots: &s,
        host,
        jobs: JobState {
            in_flight,
            ..JobState::default()
        },
        covered_since: None,
        forced,
        last_recorded: None,
    };
    let mut suspended = rules(IncrementalBase::LastFull);
    suspended.suspend = true;
    let normal = rules(IncrementalBase::LastFull);
    let gone = HostState::Unreachable { since: ts(0) };
    let cases = [
        (
            &normal,
            state(HostState::Reachable, false, None),
            None,
            true,
        ),
        (
            &normal,
            state(HostState::Paused, false, None),
            Some(Hold::HostPaused),
            false,
        ),
        (
            &normal,
            state(gone, false, None),
            Some(Hold::HostUnreachable),
            false,
        ),
        (
            &normal,
            state(HostState::Reachable, true, None),
            Some(Hold::JobInFlight),
            false,
        ),
        (
            &suspended,
            state(HostState::Reachable, false, None),
            Some(Hold::PolicySuspended),
            false,
        ),
        (
            &suspended,
            state(HostState::Reachable, false, Some(BackupKind::Full)),
            None,
            true,
        ),
        (
            &suspended,
            state(HostState::Paused, false, Some(BackupKind::Full)),
            Some(Hold::HostPaused),
            false,
        ),
    ];
    for (i, (r, st, held, runs)) in cases.into_iter().enumerate() {
        let p = plan_due(r, &st, ts(4 * D));
        assert_eq!(p.held, held, "case {i}");
        assert_eq!(p.due.is_some(), runs, "case {i}");
    }
    // Backoff: 3 failures → 2 minutes after the last one; forced backups skip it.
    let failing = |forced| DatasetState {
        jobs: JobState {
            in_flight: false,
            failing_since: Some(ts(4 * D - 600)),
            consecutive_failures: 3,
            last_failure: Some(ts(4 * D - 60)),
        },
        ..state(HostState::Reachable, false, forced)
    };
    let p = plan_due(&normal, &failing(None), ts(4 * D));
    let until = ts(4 * D + 60);
    assert_eq!(
        (p.due, p.held, p.next_due),
        (None, Some(Hold::RetryBackoff { until }), until)
    );
    assert!(plan_due(&normal, &failing(None), until).due.is_some());
    let forced = Some(BackupKind::Incremental);
    assert!(plan_due(&normal, &failing(forced), ts(4 * D)).due.is_some());
    // Nothing due: nothing held either.
    let p = plan_due(
        &normal,
        &state(HostState::Paused, false, None),
        ts(2 * D + 1),
    );
    assert_eq!((p.due, p.held, p.next_due), (None, None, ts(3 * D)));
}
