//! [`status_changed`]: the one rule for "did the status change, ignoring timestamps", for
//! every status with standard conditions ([`WithConditions`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::same;
use crate::api::{BackupPolicyStatus, FallbackRouteStatus, RestoreStatus, ZfsHostStatus};

/// A status with standard conditions, as [`status_changed`] compares it.
pub trait WithConditions: Clone + PartialEq {
    /// Its conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// Copies from `from` the fields that only say *when* (other than the conditions'
    /// `lastTransitionTime`), so they do not count as a change. None by default.
    fn copy_times_from(&mut self, _from: &Self) {}
}

/// Whether `next` says something `current` does not: a field other than a time differs, or
/// the conditions differ in more than their `lastTransitionTime` or order ([`same`]). The
/// one rule for "write the status only when a person would see a change".
pub fn status_changed<S: WithConditions>(current: &S, next: &S) -> bool {
    let (mut current, mut next) = (current.clone(), next.clone());
    next.copy_times_from(&current);
    let current_conditions = std::mem::take(current.conditions_mut());
    let next_conditions = std::mem::take(next.conditions_mut());
    current != next || !same(&current_conditions, &next_conditions)
}

impl WithConditions for BackupPolicyStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl WithConditions for FallbackRouteStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl WithConditions for ZfsHostStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    /// `lastSeen`: the agent refreshes it on its own period, not as a change.
    fn copy_times_from(&mut self, from: &Self) {
        self.last_seen.clone_from(&from.last_seen);
    }
}

impl WithConditions for RestoreStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    /// `finishedAt`: a refusal found again is not a new status.
    fn copy_times_from(&mut self, from: &Self) {
        self.finished_at.clone_from(&from.finished_at);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::conditions::{Wanted, set};

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn wanted(status: bool, message: &str) -> Wanted<'static> {
        Wanted {
            type_: "Ready",
            status,
            reason: "Test",
            message: message.into(),
            observed_generation: Some(1),
        }
    }

    /// `status` with its Ready condition set at time `at`.
    fn stamped<S: WithConditions>(mut status: S, message: &str, at: i64) -> S {
        let conditions = set(status.conditions_mut(), &wanted(true, message), t(at));
        *status.conditions_mut() = conditions;
        status
    }

    #[test]
    fn a_status_changes_with_its_fields_and_conditions_not_with_their_times() {
        let policy = stamped(BackupPolicyStatus::default(), "ok", 10);
        assert!(!status_changed(
            &policy,
            &stamped(BackupPolicyStatus::default(), "ok", 20)
        ));
        assert!(status_changed(
            &policy,
            &stamped(BackupPolicyStatus::default(), "late", 10)
        ));
        let violator = BackupPolicyStatus {
            violators: 1,
            ..BackupPolicyStatus::default()
        };
        assert!(status_changed(&policy, &stamped(violator, "ok", 10)));

        let route = stamped(FallbackRouteStatus::default(), "ok", 10);
        assert!(!status_changed(
            &route,
            &stamped(FallbackRouteStatus::default(), "ok", 99)
        ));
        let scaled = FallbackRouteStatus {
            ready_replicas: 2,
            ..FallbackRouteStatus::default()
        };
        assert!(status_changed(&route, &stamped(scaled, "ok", 10)));
    }

    #[test]
    fn a_restore_ending_again_at_another_time_is_no_change_but_a_new_start_is() {
        let ended = |finished: i64, started: i64| {
            stamped(
                RestoreStatus {
                    finished_at: Some(t(finished)),
                    started_at: Some(t(started)),
                    ..RestoreStatus::default()
                },
                "refused",
                finished,
            )
        };
        assert!(!status_changed(&ended(100, 1), &ended(200, 1)));
        assert!(status_changed(&ended(100, 1), &ended(100, 2)));
        let unfinished = RestoreStatus {
            finished_at: None,
            ..ended(100, 1)
        };
        assert!(!status_changed(&ended(100, 1), &unfinished));
    }

    #[test]
    fn a_host_seen_again_is_no_change_but_a_new_dataset_count_is() {
        let seen = |at: i64, datasets: i32| {
            stamped(
                ZfsHostStatus {
                    last_seen: Some(t(at)),
                    dataset_count: Some(datasets),
                    ..ZfsHostStatus::default()
                },
                "reporting",
                at,
            )
        };
        assert!(!status_changed(&seen(100, 2), &seen(200, 2)));
        assert!(status_changed(&seen(100, 2), &seen(200, 3)));
        assert!(status_changed(&ZfsHostStatus::default(), &seen(100, 2)));
    }
}
