//! Pure helpers for standard conditions: set one, keeping `lastTransitionTime` unless the
//! status actually flipped, and compare condition lists without timestamps (so the
//! controller writes status only when something a person would see changed); and
//! [`status_changed`], that comparison for a whole status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{BackupPolicyStatus, FallbackRouteStatus, RestoreStatus};

/// A condition to set, without timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

fn status_text(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Returns `current` with `wanted` set: the existing entry of that type is updated in place;
/// its `lastTransitionTime` moves to `now` only when the status changes.
pub fn set(current: &[Condition], wanted: &Wanted<'_>, now: Time) -> Vec<Condition> {
    let mut out: Vec<Condition> = current.to_vec();
    let status = status_text(wanted.status).to_owned();
    match out.iter_mut().find(|c| c.type_ == wanted.type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = wanted.reason.to_owned();
            c.message = wanted.message.clone();
            c.observed_generation = wanted.observed_generation;
        }
        None => out.push(Condition {
            type_: wanted.type_.to_owned(),
            status,
            reason: wanted.reason.to_owned(),
            message: wanted.message.clone(),
            observed_generation: wanted.observed_generation,
            last_transition_time: now,
        }),
    }
    out
}

/// True when both lists say the same thing, ignoring `lastTransitionTime`.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    let mut ka: Vec<_> = a.iter().map(key).collect();
    let mut kb: Vec<_> = b.iter().map(key).collect();
    ka.sort();
    kb.sort();
    ka == kb
}

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

impl WithConditions for RestoreStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    /// `finishedAt`: a refusal found again is not a new status.
    fn copy_times_from(&mut self, from: &Self) {
        self.finished_at.clone_from(&from.finished_at);
    }
}

/// The status of condition `type_`, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
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

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = set(&[], &wanted(true, "a"), t(10));
        assert_eq!(first[0].last_transition_time, t(10));
        let same_status = set(&first, &wanted(true, "b"), t(20));
        assert_eq!(same_status[0].last_transition_time, t(10));
        assert_eq!(same_status[0].message, "b");
        let flipped = set(&same_status, &wanted(false, "b"), t(30));
        assert_eq!(flipped[0].last_transition_time, t(30));
        assert_eq!(flipped.len(), 1);
    }

    #[test]
    fn comparison_ignores_timestamps_only() {
        let a = set(&[], &wanted(true, "a"), t(10));
        let b = set(&[], &wanted(true, "a"), t(99));
        assert!(same(&a, &b));
        let c = set(&[], &wanted(true, "other"), t(10));
        assert!(!same(&a, &c));
        assert_eq!(is_true(&a, "Ready"), Some(true));
        assert_eq!(is_true(&a, "Compliant"), None);
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
        assert!(!status_changed(&policy, &stamped(BackupPolicyStatus::default(), "ok", 20)));
        assert!(status_changed(&policy, &stamped(BackupPolicyStatus::default(), "late", 10)));
        let violator = BackupPolicyStatus {
            violators: 1,
            ..BackupPolicyStatus::default()
        };
        assert!(status_changed(&policy, &stamped(violator, "ok", 10)));

        let route = stamped(FallbackRouteStatus::default(), "ok", 10);
        assert!(!status_changed(&route, &stamped(FallbackRouteStatus::default(), "ok", 99)));
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
}
