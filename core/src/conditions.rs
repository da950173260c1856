//! Pure helpers for standard conditions: set one, keeping `lastTransitionTime` unless the
//! status actually flipped, and compare condition lists without timestamps (so the
//! controller writes status only when something a person would see changed); and
//! [`status_changed`], that comparison for a whole status.

mod changed;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use changed::{WithConditions, status_changed};

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
}
