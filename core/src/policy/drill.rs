//! Restore drills (`spec.drill`), the pure part: which datasets are drilled now and from
//! which backup, what each dataset's drill record says (last drill, last good drill, measured
//! RTO, next drill), which violations follow (`DrillFailed`, `NoDrillWithin`, `RtoMissed`),
//! and which finished drills are old enough to forget.
//!
//! The drills themselves are Restores (the controller creates them, an agent runs them); this
//! module only reads what they recorded.

use jiff::{SignedDuration, Timestamp};

use super::violations::Finding;
use super::{add, show};
use crate::api::backup_policy::ViolationReason;

/// A policy's drill settings, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillRules {
    /// How often each dataset is drilled.
    pub every: SignedDuration,
    /// How late a drill may be before `NoDrillWithin` (the policy's grace).
    pub grace: SignedDuration,
    /// Drills running at once, at most.
    pub per_run: usize,
    /// Every `older_every`-th drill of a dataset restores its oldest restorable backup (0:
    /// never).
    pub older_every: u32,
    /// Finished drills kept per dataset (at least 1).
    pub keep: usize,
    /// The recovery time objective, if any.
    pub rto: Option<SignedDuration>,
    /// A drill running longer than this is ended as failed ([`DEFAULT_DRILL_TIMEOUT`] unless
    /// the policy says otherwise).
    pub timeout: SignedDuration,
}

/// How long a drill may run when the policy sets no `drill.timeout`.
pub const DEFAULT_DRILL_TIMEOUT: SignedDuration = SignedDuration::from_hours(6);

/// How a drill ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillOutcome {
    Running,
    Succeeded,
    Failed,
}

/// One drill, as its Restore recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastDrill {
    /// The Restore's name.
    pub restore: String,
    /// The backup it restores.
    pub backup: String,
    /// When the drill started (its Restore was created).
    pub started: Timestamp,
    /// When the restore was verified (a successful drill).
    pub verified: Option<Timestamp>,
    /// When it ended, well or not.
    pub finished: Option<Timestamp>,
    pub outcome: DrillOutcome,
    /// Why it failed, or what it did.
    pub message: String,
    /// The `requestedAt` of the newest `drill-now` request it answers, if it was asked for.
    pub requested: Option<Timestamp>,
    /// Its number among the drills of its dataset (1, 2, …), if recorded.
    pub number: Option<u64>,
}

impl PastDrill {
    /// The measured recovery time: from the start to the verified end (successful drills).
    pub fn rto(&self) -> Option<SignedDuration> {
        match (self.outcome, self.verified) {
            (DrillOutcome::Succeeded, Some(v)) => Some(v.duration_since(self.started)),
            _ => None,
        }
    }
}

/// A covered dataset, as the drill schedule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillSubject {
    pub host: String,
    pub dataset: String,
    /// The ids of its restorable backups, oldest first (empty: nothing to drill).
    pub restorable: Vec<String>,
    /// Since when the policy covers the dataset (its creation), if known.
    pub covered_since: Option<Timestamp>,
    /// Its drills, in any order.
    pub drills: Vec<PastDrill>,
    /// The `requestedAt` of the `drill-now` requests selecting it that are not yet handled
    /// (a drill answering one is due at once, before scheduled ones).
    pub requests: Vec<Timestamp>,
}

/// A drill to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillStart {
    /// The index of the subject in the input.
    pub subject: usize,
    /// The backup to restore.
    pub backup: String,
    /// True when it is an older chain than the newest (every `older_every`-th drill).
    pub older: bool,
    /// The newest `drill-now` request it answers (recorded on its Restore).
    pub requested: Option<Timestamp>,
    /// Its number among the drills of the dataset (recorded on its Restore).
    pub number: u64,
}

/// What the drill records say of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillState {
    /// The newest drill, running or finished.
    pub last: Option<PastDrill>,
    /// The newest successful drill.
    pub last_good: Option<PastDrill>,
    /// When its next drill is due (`None`: it has nothing restorable to drill).
    pub next_due: Option<Timestamp>,
    pub findings: Vec<Finding>,
    /// The newest `drill-now` request answered by one of its drills, counting those this
    /// plan starts.
    pub answered: Option<Timestamp>,
}

/// The decision for one policy's drills.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrillPlan {
    pub start: Vec<DrillStart>,
    /// One entry per subject, in input order.
    pub states: Vec<DrillState>,
    /// Finished drills' Restores to delete (beyond `keep` per dataset; the last good one is
    /// always kept).
    pub prune: Vec<String>,
    /// The earliest future moment something changes (a drill or a deadline is due).
    pub wake_at: Option<Timestamp>,
    /// Drills (Restore names) still running past the timeout: counted as failed here, to be
    /// ended as failed by the controller.
    pub timed_out: Vec<String>,
}

/// `d` as the plan sees it at `now`: a drill running past `timeout` has failed.
fn with_timeout(d: &PastDrill, timeout: SignedDuration, now: Timestamp) -> (PastDrill, bool) {
    let deadline = add(d.started, timeout);
    if d.outcome == DrillOutcome::Running && now > deadline {
        let mut failed = d.clone();
        failed.outcome = DrillOutcome::Failed;
        failed.finished = Some(deadline);
        failed.message = format!("the drill did not finish within {}", show(timeout));
        (failed, true)
    } else {
        (d.clone(), false)
    }
}

fn earliest(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides the drills of one policy at `now`.
pub fn plan_drills(rules: &DrillRules, subjects: &[DrillSubject], now: Timestamp) -> DrillPlan {
    let mut plan = DrillPlan::default();
    // Drills past the timeout have failed (and free their slot).
    let subjects: Vec<DrillSubject> = subjects
        .iter()
        .map(|s| {
            let mut s = s.clone();
            for d in &mut s.drills {
                let (seen, timed_out) = with_timeout(d, rules.timeout, now);
                if timed_out {
                    plan.timed_out.push(d.restore.clone());
                } else if d.outcome == DrillOutcome::Running {
                    plan.wake_at = earliest(plan.wake_at, add(d.started, rules.timeout));
                }
                *d = seen;
            }
            s
        })
        .collect();
    let running = subjects
        .iter()
        .flat_map(|s| &s.drills)
        .filter(|d| d.outcome == DrillOutcome::Running)
        .count();
    // Due subjects: (not asked for, when their last drill started or MIN when never drilled,
    // index): those a `drill-now` request waits for first.
    let mut due: Vec<(bool, Timestamp, usize, Option<Timestamp>)> = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let mut drills: Vec<&PastDrill> = s.drills.iter().collect();
        drills.sort_by(|a, b| (b.started, &b.restore).cmp(&(a.started, &a.restore)));
        let last = drills.first().copied();
        let last_good = drills
            .iter()
            .find(|d| d.outcome == DrillOutcome::Succeeded)
            .copied();
        let last_finished = drills
            .iter()
            .find(|d| d.outcome != DrillOutcome::Running)
            .copied();
        let mut findings = Vec::new();
        if let Some(f) = last_finished.filter(|d| d.outcome == DrillOutcome::Failed) {
            findings.push(Finding {
                reason: ViolationReason::DrillFailed,
                since: f.finished.or(Some(f.started)),
                message: format!(
                    "restore drill {} of backup {} failed: {}",
                    f.restore, f.backup, f.message
                ),
            });
        }
        // No successful drill within every + grace of the last good one (or of coverage).
        let reference = last_good
            .and_then(|d| d.verified.or(d.finished))
            .or(s.covered_since);
        match reference {
            Some(t) => {
                let deadline = add(add(t, rules.every), rules.grace);
                if now > deadline {
                    findings.push(Finding {
                        reason: ViolationReason::NoDrillWithin,
                        since: Some(deadline),
                        message: match last_good {
                            Some(g) => format!(
                                "the last successful restore drill ({}) is older than {} (+ grace {})",
                                g.restore,
                                show(rules.every),
                                show(rules.grace)
                            ),
                            None => format!(
                                "no restore drill succeeded within {} (+ grace {}) of coverage",
                                show(rules.every),
                                show(rules.grace)
                            ),
                        },
                    });
                } else {
                    plan.wake_at = earliest(plan.wake_at, deadline);
                }
            }
            None => findings.push(Finding {
                reason: ViolationReason::NoDrillWithin,
                since: None,
                message: "no restore drill has succeeded".into(),
            }),
        }
        if let (Some(rto), Some(good)) = (rules.rto, last_good)
            && let Some(took) = good.rto()
            && took > rto
        {
            findings.push(Finding {
                reason: ViolationReason::RtoMissed,
                since: good.verified,
                message: format!(
                    "the last successful restore drill ({}) took {}, over the RTO of {}",
                    good.restore,
                    show(took),
                    show(rto)
                ),
            });
        }
        let next_due = if s.restorable.is_empty() {
            None
        } else {
            Some(last.map_or(now, |d| add(d.started, rules.every).max(now)))
        };
        let busy = last.is_some_and(|d| d.outcome == DrillOutcome::Running);
        let answered = drills.iter().filter_map(|d| d.requested).max();
        let asked = s
            .requests
            .iter()
            .copied()
            .filter(|r| answered.is_none_or(|a| *r > a))
            .max();
        if let Some(t) = next_due
            && !busy
        {
            let last_started = last.map_or(Timestamp::MIN, |d| d.started);
            if t <= now || asked.is_some() {
                due.push((asked.is_none(), last_started, i, asked));
            } else {
                plan.wake_at = earliest(plan.wake_at, t);
            }
        }
        // History: the newest `keep` finished drills, and the last good one, stay.
        let mut kept = 0usize;
        for d in drills.iter().filter(|d| d.outcome != DrillOutcome::Running) {
            let is_last_good = last_good.is_some_and(|g| g.restore == d.restore);
            if kept < rules.keep.max(1) || is_last_good {
                kept += 1;
            } else {
                plan.prune.push(d.restore.clone());
            }
        }
        plan.states.push(DrillState {
            last: last.cloned(),
            last_good: last_good.cloned(),
            next_due,
            findings,
            answered,
        });
    }
    due.sort();
    let slots = rules.per_run.saturating_sub(running);
    for (_, _, i, asked) in due.into_iter().take(slots) {
        let s = &subjects[i];
        let n = drill_number(&s.drills);
        let older = rules.older_every > 0
            && s.restorable.len() > 1
            && n.is_multiple_of(u64::from(rules.older_every));
        let backup = if older {
            s.restorable.first()
        } else {
            s.restorable.last()
        };
        if let Some(backup) = backup {
            plan.start.push(DrillStart {
                subject: i,
                backup: backup.clone(),
                older,
                requested: asked,
                number: n,
            });
            if asked.is_some() {
                plan.states[i].answered = asked;
            }
        }
    }
    plan
}

/// The number of a dataset's next drill: one more than the highest recorded on its drills
/// (`keep` prunes the older ones, so how many are listed is no count), or than how many are
/// listed when that is more (drills from before numbers were recorded).
pub fn drill_number(drills: &[PastDrill]) -> u64 {
    let listed = u64::try_from(drills.len()).unwrap_or(u64::MAX);
    let recorded = drills.iter().filter_map(|d| d.number).max().unwrap_or(0);
    recorded.max(listed).saturating_add(1)
}

/// The newest `drill-now` request handled together with every older one, if the oldest is:
/// a request is handled once each subject it selects that has something restorable has had a
/// drill started for it (or for a newer request) — `plan.states[i].answered`. `requests`
/// are the pending ones (after the last recorded watermark), in any order.
pub fn drill_now_handled(
    requests: &[crate::api::backup_policy::DrillNowRequest],
    subjects: &[DrillSubject],
    plan: &DrillPlan,
) -> Option<Timestamp> {
    let mut sorted: Vec<_> = requests.iter().collect();
    sorted.sort_by_key(|r| r.requested_at);
    let mut handled = None;
    for r in sorted {
        let done = subjects.iter().enumerate().all(|(i, s)| {
            !r.selects(&s.host, &s.dataset)
                || s.restorable.is_empty()
                || plan
                    .states
                    .get(i)
                    .and_then(|st| st.answered)
                    .is_some_and(|a| a >= r.requested_at)
        });
        if !done {
            break;
        }
        handled = Some(r.requested_at);
    }
    handled
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn rules() -> DrillRules {
        DrillRules {
            every: SignedDuration::from_secs(7 * D),
            grace: SignedDuration::from_secs(H),
            per_run: 1,
            older_every: 3,
            keep: 2,
            rto: Some(SignedDuration::from_secs(600)),
            timeout: DEFAULT_DRILL_TIMEOUT,
        }
    }

    fn drill(name: &str, started: i64, outcome: DrillOutcome, took: i64) -> PastDrill {
        let end = (outcome != DrillOutcome::Running).then(|| ts(started + took));
        PastDrill {
            restore: name.into(),
            backup: "b".into(),
            started: ts(started),
            verified: end.filter(|_| outcome == DrillOutcome::Succeeded),
            finished: end,
            outcome,
            message: "broken pipe".into(),
            requested: None,
            number: None,
        }
    }

    fn subject(name: &str, restorable: &[&str], drills: Vec<PastDrill>) -> DrillSubject {
        DrillSubject {
            host: "h".into(),
            dataset: name.into(),
            restorable: restorable.iter().map(|s| (*s).to_owned()).collect(),
            covered_since: Some(ts(0)),
            drills,
            requests: Vec::new(),
        }
    }

    fn reasons(s: &DrillState) -> Vec<ViolationReason> {
        s.findings.iter().map(|f| f.reason).collect()
    }

    #[test]
    fn a_never_drilled_dataset_is_drilled_at_once_from_its_newest_backup() {
        let p = plan_drills(&rules(), &[subject("a", &["1", "2"], vec![])], ts(H));
        assert_eq!(
            p.start,
            vec![DrillStart {
                subject: 0,
                backup: "2".into(),
                older: false,
                requested: None,
                number: 1,
            }]
        );
        assert_eq!(p.states[0].next_due, Some(ts(H)));
        assert!(p.states[0].findings.is_empty(), "{:?}", p.states[0]);
        // The NoDrillWithin deadline is the wake-up.
        assert_eq!(p.wake_at, Some(ts(7 * D + H)));
    }

    #[test]
    fn nothing_restorable_is_not_drilled_but_still_owes_a_drill() {
        let p = plan_drills(&rules(), &[subject("a", &[], vec![])], ts(8 * D));
        assert!(p.start.is_empty());
        assert_eq!(p.states[0].next_due, None);
        assert_eq!(reasons(&p.states[0]), vec![ViolationReason::NoDrillWithin]);
    }

    #[test]
    fn a_recent_drill_waits_for_its_period() {
        let good = drill("d1", D, DrillOutcome::Succeeded, 60);
        let p = plan_drills(&rules(), &[subject("a", &["1"], vec![good])], ts(2 * D));
        assert!(p.start.is_empty());
        assert_eq!(p.states[0].next_due, Some(ts(8 * D)));
        assert_eq!(p.wake_at, Some(ts(8 * D)));
        assert_eq!(
            p.states[0].last_good.as_ref().unwrap().rto(),
            Some(SignedDuration::from_secs(60))
        );
        // Due exactly at the period's end.
        let p = plan_drills(
            &rules(),
            &[subject(
                "a",
                &["1"],
                p.states[0].last.clone().into_iter().collect(),
            )],
            ts(8 * D),
        );
        assert_eq!(p.start.len(), 1);
    }

    #[test]
    fn a_failed_drill_is_a_violation_until_one_succeeds() {
        let failed = drill("d2", 8 * D, DrillOutcome::Failed, 30);
        let good = drill("d1", D, DrillOutcome::Succeeded, 60);
        let p = plan_drills(
            &rules(),
            &[subject("a", &["1"], vec![good.clone(), failed.clone()])],
            ts(8 * D + 60),
        );
        assert_eq!(reasons(&p.states[0]), vec![ViolationReason::DrillFailed]);
        assert!(p.states[0].findings[0].message.contains("d2"));
        assert!(p.states[0].findings[0].message.contains("broken pipe"));
        assert_eq!(p.states[0].findings[0].since, Some(ts(8 * D + 30)));
        // A new drill running does not end it; its success does.
        let running = drill("d3", 15 * D, DrillOutcome::Running, 0);
        let p = plan_drills(
            &rules(),
            &[subject(
                "a",
                &["1"],
                vec![good.clone(), failed.clone(), running],
            )],
            ts(15 * D + 1),
        );
        assert!(reasons(&p.states[0]).contains(&ViolationReason::DrillFailed));
        let ok = drill("d3", 15 * D, DrillOutcome::Succeeded, 50);
        let p = plan_drills(
            &rules(),
            &[subject("a", &["1"], vec![good, failed, ok])],
            ts(15 * D + 60),
        );
        assert!(
            p.states[0].findings.is_empty(),
            "{:?}",
            p.states[0].findings
        );
    }

    #[test]
    fn no_successful_drill_within_every_plus_grace() {
        let good = drill("d1", D, DrillOutcome::Succeeded, 60);
        let deadline = D + 60 + 7 * D + H;
        for (at, missed) in [
            (deadline - 1, false),
            (deadline, false),
            (deadline + 1, true),
        ] {
            let p = plan_drills(
                &rules(),
                &[subject("a", &["1"], vec![good.clone()])],
                ts(at),
            );
            assert_eq!(
                reasons(&p.states[0]).contains(&ViolationReason::NoDrillWithin),
                missed,
                "at {at}"
            );
        }
        // Without any drill, counted from coverage.
        let p = plan_drills(&rules(), &[subject("a", &["1"], vec![])], ts(7 * D + H + 1));
        assert_eq!(reasons(&p.states[0]), vec![ViolationReason::NoDrillWithin]);
        assert_eq!(p.states[0].findings[0].since, Some(ts(7 * D + H)));
        // Unknown coverage and no drill: missed.
        let mut s = subject("a", &["1"], vec![]);
        s.covered_since = None;
        let p = plan_drills(&rules(), &[s], ts(0));
        assert_eq!(reasons(&p.states[0]), vec![ViolationReason::NoDrillWithin]);
    }

    #[test]
    fn rto_is_the_last_good_drills_time_against_the_objective() {
        for (took, missed) in [(599, false), (600, false), (601, true)] {
            let p = plan_drills(
                &rules(),
                &[subject(
                    "a",
                    &["1"],
                    vec![drill("d", D, DrillOutcome::Succeeded, took)],
                )],
                ts(2 * D),
            );
            assert_eq!(
                reasons(&p.states[0]).contains(&ViolationReason::RtoMissed),
                missed,
                "took {took}"
            );
        }
        let mut r = rules();
        r.rto = None;
        let p = plan_drills(
            &r,
            &[subject(
                "a",
                &["1"],
                vec![drill("d", D, DrillOutcome::Succeeded, 9999)],
            )],
            ts(2 * D),
        );
        assert!(p.states[0].findings.is_empty());
        // A failed drill has no RTO.
        assert_eq!(drill("d", D, DrillOutcome::Failed, 5).rto(), None);
        assert_eq!(drill("d", D, DrillOutcome::Running, 5).rto(), None);
    }

    #[test]
    fn per_run_caps_drills_running_at_once_longest_undrilled_first() {
        let subjects = vec![
            subject(
                "a",
                &["1"],
                vec![drill("a1", 0, DrillOutcome::Succeeded, 1)],
            ),
            subject("b", &["1"], vec![]),
            subject(
                "c",
                &["1"],
                vec![drill("c1", D, DrillOutcome::Succeeded, 1)],
            ),
            subject("d", &["1"], vec![drill("d1", 0, DrillOutcome::Running, 0)]),
        ];
        let mut r = rules();
        r.timeout = SignedDuration::from_secs(30 * D);
        let at = ts(20 * D);
        let mut order = |per_run: usize| {
            r.per_run = per_run;
            plan_drills(&r, &subjects, at)
                .start
                .iter()
                .map(|s| s.subject)
                .collect::<Vec<_>>()
        };
        // d runs (for 20 days: past its period): it takes one slot and is not started again.
        assert_eq!(order(1), Vec::<usize>::new());
        assert_eq!(order(2), vec![1]);
        assert_eq!(order(3), vec![1, 0]);
        assert_eq!(order(4), vec![1, 0, 2]);
        assert_eq!(order(9), vec![1, 0, 2]);
    }

    #[test]
    fn every_nth_drill_restores_an_older_chain() {
        let history = |n: usize| -> Vec<PastDrill> {
            (0..n)
                .map(|i| {
                    drill(
                        &format!("d{i}"),
                        i as i64 * 8 * D,
                        DrillOutcome::Succeeded,
                        1,
                    )
                })
                .collect()
        };
        let mut picks = Vec::new();
        for n in 0..7 {
            let at = ts(n as i64 * 8 * D + 1);
            let p = plan_drills(
                &rules(),
                &[subject("a", &["old", "mid", "new"], history(n))],
                at,
            );
            picks.push(p.start[0].backup.clone());
            assert_eq!(p.start[0].older, p.start[0].backup == "old");
        }
        assert_eq!(picks, ["new", "new", "old", "new", "new", "old", "new"]);
        // One restorable backup: always it. older_every 0: never older.
        let p = plan_drills(&rules(), &[subject("a", &["only"], history(2))], ts(17 * D));
        assert_eq!(
            (p.start[0].backup.as_str(), p.start[0].older),
            ("only", false)
        );
        let mut r = rules();
        r.older_every = 0;
        let p = plan_drills(&r, &[subject("a", &["old", "new"], history(2))], ts(17 * D));
        assert_eq!(p.start[0].backup, "new");
    }

    #[test]
    fn the_older_every_rhythm_counts_drills_the_history_forgot() {
        // Each drill started is recorded with its number and succeeds; the plan's prune is
        // applied as the controller does (keep 2): the rhythm is every third drill all along.
        let mut history: Vec<PastDrill> = Vec::new();
        let mut picks = Vec::new();
        let mut numbers = Vec::new();
        for n in 0..9i64 {
            let at = ts(n * 8 * D + 1);
            let p = plan_drills(
                &rules(),
                &[subject("a", &["old", "mid", "new"], history.clone())],
                at,
            );
            history.retain(|d| !p.prune.contains(&d.restore));
            let start = &p.start[0];
            picks.push(start.backup.clone());
            numbers.push(start.number);
            let mut d = drill(&format!("d{n}"), n * 8 * D + 1, DrillOutcome::Succeeded, 1);
            d.number = Some(start.number);
            history.push(d);
        }
        assert!(history.len() <= 3, "{history:?}");
        assert_eq!(numbers, (1..=9).collect::<Vec<u64>>());
        assert_eq!(
            picks,
            [
                "new", "new", "old", "new", "new", "old", "new", "new", "old"
            ]
        );
        // Drills from before numbers were recorded count as listed.
        assert_eq!(drill_number(&[]), 1);
        let unnumbered = vec![drill("x", 0, DrillOutcome::Succeeded, 1); 2];
        assert_eq!(drill_number(&unnumbered), 3);
    }

    #[test]
    fn history_keeps_the_newest_and_the_last_good_drill() {
        let drills = vec![
            drill("d1", 0, DrillOutcome::Succeeded, 1),
            drill("d2", D, DrillOutcome::Failed, 1),
            drill("d3", 2 * D, DrillOutcome::Failed, 1),
            drill("d4", 3 * D, DrillOutcome::Failed, 1),
            drill("d5", 4 * D, DrillOutcome::Running, 0),
        ];
        let p = plan_drills(
            &rules(),
            &[subject("a", &["1"], drills.clone())],
            ts(4 * D + 1),
        );
        // keep 2: d4, d3; d1 is the last good one; d5 runs.
        assert_eq!(p.prune, vec!["d2".to_owned()]);
        let mut r = rules();
        r.keep = 1;
        let p = plan_drills(&r, &[subject("a", &["1"], drills)], ts(4 * D + 1));
        assert_eq!(p.prune, vec!["d3".to_owned(), "d2".to_owned()]);
    }

    fn request(dataset: Option<&str>, at: i64) -> crate::api::backup_policy::DrillNowRequest {
        crate::api::backup_policy::DrillNowRequest {
            host: None,
            dataset: dataset.map(Into::into),
            requested_at: ts(at),
        }
    }

    #[test]
    fn a_drill_now_request_starts_a_drill_at_once_first_and_is_answered_once() {
        // a drilled 1 day ago (not due for 6 more), b never drilled (due by schedule).
        let recent = drill("a1", D, DrillOutcome::Succeeded, 60);
        let mut a = subject("a", &["1"], vec![recent.clone()]);
        let b = subject("b", &["1"], vec![]);
        let at = ts(2 * D);
        // Unasked, only b is due.
        let p = plan_drills(&rules(), &[a.clone(), b.clone()], at);
        assert_eq!(p.start.iter().map(|s| s.subject).collect::<Vec<_>>(), [1]);
        assert_eq!(p.start[0].requested, None);
        // Asked for a: a goes first (one slot), marked with the request, and is answered.
        a.requests = vec![ts(2 * D - 5), ts(2 * D - 1)];
        let subjects = [a.clone(), b.clone()];
        let p = plan_drills(&rules(), &subjects, at);
        assert_eq!(p.start.len(), 1);
        assert_eq!(
            (p.start[0].subject, p.start[0].requested),
            (0, Some(ts(2 * D - 1)))
        );
        assert_eq!(p.states[0].answered, Some(ts(2 * D - 1)));
        assert_eq!(p.states[1].answered, None);
        let reqs = [request(Some("a"), 2 * D - 5), request(Some("a"), 2 * D - 1)];
        assert_eq!(drill_now_handled(&reqs, &subjects, &p), Some(ts(2 * D - 1)));
        // A request for every dataset waits for b too.
        let all = [request(Some("a"), 2 * D - 5), request(None, 2 * D - 1)];
        assert_eq!(drill_now_handled(&all, &subjects, &p), Some(ts(2 * D - 5)));
        // Once its drill runs, it is not started again; when it answered the request, the
        // request no longer makes the dataset due.
        let mut answering = drill("a2", 2 * D, DrillOutcome::Running, 0);
        answering.requested = Some(ts(2 * D - 1));
        a.drills = vec![recent.clone(), answering.clone()];
        let p = plan_drills(&rules(), &[a.clone()], ts(2 * D + 10));
        assert!(p.start.is_empty());
        assert_eq!(p.states[0].answered, Some(ts(2 * D - 1)));
        answering.outcome = DrillOutcome::Succeeded;
        answering.verified = Some(ts(2 * D + 20));
        answering.finished = Some(ts(2 * D + 20));
        a.drills = vec![recent.clone(), answering.clone()];
        let p = plan_drills(&rules(), &[a.clone()], ts(2 * D + 30));
        assert!(p.start.is_empty(), "{:?}", p.start);
        // A newer request makes it due again.
        a.requests.push(ts(2 * D + 25));
        let p = plan_drills(&rules(), &[a.clone()], ts(2 * D + 30));
        assert_eq!(p.start[0].requested, Some(ts(2 * D + 25)));
        // Nothing restorable: nothing to drill, the request is handled for it.
        let mut empty = subject("e", &[], vec![]);
        empty.requests = vec![ts(5)];
        let p = plan_drills(&rules(), std::slice::from_ref(&empty), ts(10));
        assert!(p.start.is_empty());
        assert_eq!(
            drill_now_handled(&[request(None, 5)], &[empty], &p),
            Some(ts(5))
        );
        // A busy slot (per_run 1, another drill running) defers the request.
        let mut c = subject("c", &["1"], vec![]);
        c.requests = vec![ts(5)];
        let running = subject("d", &["1"], vec![drill("d1", 0, DrillOutcome::Running, 0)]);
        let subjects = [c, running];
        let p = plan_drills(&rules(), &subjects, ts(10));
        assert!(p.start.is_empty());
        assert_eq!(
            drill_now_handled(&[request(Some("c"), 5)], &subjects, &p),
            None
        );
    }

    #[test]
    fn a_drill_running_past_the_timeout_fails_and_frees_its_slot() {
        let mut r = rules();
        r.timeout = SignedDuration::from_secs(H);
        let stuck = drill("a1", 0, DrillOutcome::Running, 0);
        let subjects = [
            subject("a", &["1"], vec![stuck.clone()]),
            subject("b", &["1"], vec![]),
        ];
        // Within the bound: it runs, holds the one slot, and the plan wakes at its deadline.
        for at in [H - 1, H] {
            let p = plan_drills(&r, &subjects, ts(at));
            assert!(p.timed_out.is_empty(), "at {at}");
            assert!(p.start.is_empty(), "at {at}: {:?}", p.start);
            assert_eq!(
                p.states[0].last.as_ref().unwrap().outcome,
                DrillOutcome::Running
            );
            assert!(p.wake_at.is_some_and(|w| w <= ts(H)), "{:?}", p.wake_at);
        }
        // Past it: failed (DrillFailed, saying why), to be ended, and b takes the slot.
        let p = plan_drills(&r, &subjects, ts(H + 1));
        assert_eq!(p.timed_out, vec!["a1".to_owned()]);
        let last = p.states[0].last.as_ref().unwrap();
        assert_eq!(last.outcome, DrillOutcome::Failed);
        assert_eq!(last.finished, Some(ts(H)));
        assert!(reasons(&p.states[0]).contains(&ViolationReason::DrillFailed));
        assert!(
            p.states[0].findings[0]
                .message
                .contains("did not finish within 1h"),
            "{:?}",
            p.states[0].findings
        );
        // b (never drilled) and a (its last drill failed, due again by its period: not yet)
        assert_eq!(p.start.iter().map(|s| s.subject).collect::<Vec<_>>(), [1]);
        // Finished drills are never timed out, however old.
        let done = drill("a0", 0, DrillOutcome::Succeeded, 2 * H);
        let p = plan_drills(&r, &[subject("a", &["1"], vec![done])], ts(30 * D));
        assert!(p.timed_out.is_empty());
    }
}
