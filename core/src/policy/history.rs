//! BackupJob history: what a dataset's jobs say about it ([`JobState::from_history`]) and
//! which finished jobs may be deleted ([`prune_history`]).
//!
//! BackupJobs are history, not the record (the store is): a policy keeps the newest
//! `successful` succeeded and `failed` failed jobs per dataset, as CronJob's history limits.
//! Two things are never deleted, whatever the limits say:
//! * a job that is Pending or Running;
//! * a failed job of the *current* run of failures (newer than the newest success), up to
//!   [`FAILURE_RUN_KEPT`]: the retry backoff counts that run and `LastJobFailed` dates from
//!   its start, so pruning it would shorten the backoff and move the date.
//!
//! Property: for any history whose current failure run is at most [`FAILURE_RUN_KEPT`] long,
//! `JobState::from_history(kept) == JobState::from_history(all)` (tested below), so pruning
//! never changes a scheduling or violation decision.

use jiff::Timestamp;

use super::JobState;

/// A failure run up to this long is kept whole (30 s doubling reaches the backoff's one-hour
/// cap after 8 failures, see [`super::retry_backoff`]).
pub const FAILURE_RUN_KEPT: u32 = 8;

/// Where one job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pending or Running.
    InFlight,
    Succeeded,
    Failed,
}

/// One job of one dataset: its outcome and when it finished (for a job without a finish
/// time: when it was created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRecord {
    pub outcome: Outcome,
    pub at: Timestamp,
}

/// How many finished jobs to keep per dataset (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub successful: u32,
    pub failed: u32,
}

/// Positions of finished jobs, newest first (ties: the later position first, so the order is
/// total and the same for [`prune_history`] and [`JobState::from_history`]).
fn finished_newest_first(jobs: &[JobRecord]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].outcome != Outcome::InFlight)
        .collect();
    idx.sort_by(|&a, &b| jobs[b].at.cmp(&jobs[a].at).then(b.cmp(&a)));
    idx
}

/// The positions in `jobs` (one dataset's jobs) that may be deleted under `limits`, in no
/// particular order. Never an in-flight job, never the newest finished job, never a failed
/// job of the current failure run within [`FAILURE_RUN_KEPT`].
pub fn prune_history(jobs: &[JobRecord], limits: HistoryLimits) -> Vec<usize> {
    let successful = limits.successful.max(1);
    let failed = limits.failed.max(1);
    let (mut s, mut f) = (0u32, 0u32);
    let mut in_current_run = true;
    let mut out = Vec::new();
    for i in finished_newest_first(jobs) {
        match jobs[i].outcome {
            Outcome::InFlight => {}
            Outcome::Succeeded => {
                s += 1;
                in_current_run = false;
                if s > successful {
                    out.push(i);
                }
            }
            Outcome::Failed => {
                f += 1;
                let protected = in_current_run && f <= FAILURE_RUN_KEPT;
                if f > failed && !protected {
                    out.push(i);
                }
            }
        }
    }
    out
}

impl JobState {
    /// What one dataset's jobs say: whether one is in flight, and the current run of failures
    /// (its length, when it began, when its newest failure finished).
    pub fn from_history(jobs: &[JobRecord]) -> Self {
        let in_flight = jobs.iter().any(|j| j.outcome == Outcome::InFlight);
        let order = finished_newest_first(jobs);
        let last_failure = order
            .first()
            .filter(|&&i| jobs[i].outcome == Outcome::Failed)
            .map(|&i| jobs[i].at);
        let mut failing_since = None;
        let mut consecutive_failures = 0;
        for i in order {
            if jobs[i].outcome != Outcome::Failed {
                break;
            }
            failing_since = Some(jobs[i].at);
            consecutive_failures += 1;
        }
        JobState {
            in_flight,
            failing_since,
            consecutive_failures,
            last_failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(outcome: Outcome, at: i64) -> JobRecord {
        JobRecord {
            outcome,
            at: Timestamp::from_second(1_700_000_000 + at).unwrap(),
        }
    }

    const LIMITS: HistoryLimits = HistoryLimits {
        successful: 1,
        failed: 1,
    };

    #[test]
    fn keeps_the_newest_of_each_and_everything_in_flight() {
        use Outcome::*;
        let jobs = [
            rec(Succeeded, 10),
            rec(Failed, 20),
            rec(Succeeded, 30),
            rec(InFlight, 5),
            rec(Succeeded, 40),
            rec(Failed, 35),
        ];
        let mut gone = prune_history(&jobs, LIMITS);
        gone.sort();
        // Newest success (40) and newest failure (35) stay, as does the job in flight.
        assert_eq!(gone, vec![0, 1, 2]);
        let two = HistoryLimits {
            successful: 2,
            failed: 2,
        };
        let mut gone = prune_history(&jobs, two);
        gone.sort();
        assert_eq!(gone, vec![0]);
    }

    #[test]
    fn a_current_failure_run_is_kept_up_to_its_cap() {
        use Outcome::*;
        let mut jobs = vec![rec(Succeeded, 0), rec(Failed, -10)];
        jobs.extend((1..=10).map(|k| rec(Failed, k * 10)));
        let gone = prune_history(&jobs, LIMITS);
        // 10 failures after the success: the newest 8 are kept, the 2 oldest of the run and
        // the failure before the success go; the success stays.
        let mut gone_at: Vec<i64> = gone
            .iter()
            .map(|&i| jobs[i].at.as_second() - 1_700_000_000)
            .collect();
        gone_at.sort();
        assert_eq!(gone_at, vec![-10, 10, 20]);
        let state = JobState::from_history(&jobs);
        assert_eq!(state.consecutive_failures, 10);
        assert!(!state.in_flight);
    }

    #[test]
    fn job_state_reads_the_current_run() {
        use Outcome::*;
        let s = JobState::from_history(&[rec(Failed, 1), rec(Succeeded, 2), rec(Failed, 3)]);
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(s.failing_since, Some(rec(Failed, 3).at));
        assert_eq!(s.last_failure, Some(rec(Failed, 3).at));
        let s = JobState::from_history(&[rec(Failed, 1), rec(Succeeded, 2), rec(InFlight, 3)]);
        assert_eq!(
            s,
            JobState {
                in_flight: true,
                ..Default::default()
            }
        );
        assert_eq!(JobState::from_history(&[]), JobState::default());
    }

    fn history() -> impl Strategy<Value = Vec<JobRecord>> {
        prop::collection::vec(
            (
                prop_oneof![
                    1 => Just(Outcome::InFlight),
                    4 => Just(Outcome::Succeeded),
                    3 => Just(Outcome::Failed)
                ],
                0i64..200,
            )
                .prop_map(|(o, t)| rec(o, t)),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn pruning_never_changes_the_decision_and_bounds_the_history(
            jobs in history(),
            successful in 1u32..4,
            failed in 1u32..4,
        ) {
            let limits = HistoryLimits { successful, failed };
            let gone = prune_history(&jobs, limits);
            let kept: Vec<JobRecord> = (0..jobs.len())
                .filter(|i| !gone.contains(i))
                .map(|i| jobs[i])
                .collect();
            // Nothing in flight is deleted.
            prop_assert!(gone.iter().all(|&i| jobs[i].outcome != Outcome::InFlight));
            // The decision is the same as long as the current run fits.
            let all = JobState::from_history(&jobs);
            if all.consecutive_failures <= FAILURE_RUN_KEPT {
                prop_assert_eq!(JobState::from_history(&kept), all);
            }
            // The history is bounded.
            let count = |o| kept.iter().filter(|j| j.outcome == o).count() as u32;
            prop_assert!(count(Outcome::Succeeded) <= successful);
            prop_assert!(count(Outcome::Failed) <= failed.max(FAILURE_RUN_KEPT));
            // Idempotent: pruning what is left deletes nothing more.
            prop_assert!(prune_history(&kept, limits).is_empty());
        }
    }
}
