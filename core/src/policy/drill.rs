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
mod tests;
