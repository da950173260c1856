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
