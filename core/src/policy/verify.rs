//! Verification of stored backups (`spec.verify`), the pure part: which backups are due to be
//! re-read, when the next one is, when a dataset was last verified in full, and whether a
//! quarantined backup still needs healing (a full newer than it).
//!
//! Each stored backup is due once per `every`, counted from its last verification or, never
//! verified, from its creation (a stream was hashed as it was written; re-reading it at once
//! proves little). A quarantined backup is never due again: its quarantine is sticky.

use jiff::{SignedDuration, Timestamp};

use super::catalogue::{BackupRecord, DatasetBackups};
use super::{BackupKind, add};

/// What verification is due for one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyPlan {
    /// Ids of the backups to re-read now, oldest first.
    pub due: Vec<String>,
    /// When the next backup not due now becomes due (`None` when no other backup is stored).
    pub next_due: Option<Timestamp>,
    /// Every stored backup that is not quarantined was verified at or after this time;
    /// `None` while one of them never was (or none is stored).
    pub last_verified: Option<Timestamp>,
}

/// When a backup is next due to be verified.
fn due_at(r: &BackupRecord, every: SignedDuration) -> Timestamp {
    add(r.verified_at.unwrap_or(r.created), every)
}

/// Plans the verification of one dataset's stored backups at `now` (see the module docs).
pub fn plan_verify(cat: &DatasetBackups, every: SignedDuration, now: Timestamp) -> VerifyPlan {
    let mut plan = VerifyPlan::default();
    let mut all_verified = true;
    let mut oldest_check: Option<Timestamp> = None;
    for r in cat.records().iter().filter(|r| !r.quarantined) {
        let at = due_at(r, every);
        if at <= now {
            plan.due.push(r.id.clone());
        } else {
            plan.next_due = Some(plan.next_due.map_or(at, |t| t.min(at)));
        }
        match r.verified_at {
            Some(v) => oldest_check = Some(oldest_check.map_or(v, |t| t.min(v))),
            None => all_verified = false,
        }
    }
    plan.last_verified = if all_verified { oldest_check } else { None };
    plan
}

/// Plans an on-demand verification (`kubectl zetaback verify`) asked for at `requested`:
/// every backup stored before `requested` that is not quarantined and was not verified at or
/// after `requested` is due now (so a request is done once, and backups stored later wait
/// for their period). `next_due` is unset; `last_verified` as for [`plan_verify`].
pub fn plan_verify_now(cat: &DatasetBackups, requested: Timestamp) -> VerifyPlan {
    let mut plan = plan_verify(cat, SignedDuration::MAX, Timestamp::MIN);
    plan.next_due = None;
    plan.due = cat
        .records()
        .iter()
        .filter(|r| {
            !r.quarantined && r.created <= requested && r.verified_at.is_none_or(|v| v < requested)
        })
        .map(|r| r.id.clone())
        .collect();
    plan
}

/// The whole verification plan of one dataset: the periodic one (`every`, with `spec.verify`)
/// and an on-demand request asked at `asked`, together (a backup due by either is due), and
/// the `notVerifiedSince` of the store request: backups verified good at or after it are
/// skipped by the store (so a request repeated before its results arrive reads nothing twice).
/// `None` when neither applies.
pub fn plan_verification(
    cat: &DatasetBackups,
    every: Option<SignedDuration>,
    asked: Option<Timestamp>,
    now: Timestamp,
) -> Option<(VerifyPlan, Option<Timestamp>)> {
    let periodic = every.map(|e| (plan_verify(cat, e, now), now.checked_sub(e).ok()));
    let on_demand = asked.map(|at| (plan_verify_now(cat, at), Some(at)));
    match (periodic, on_demand) {
        (None, None) => None,
        (Some(p), None) => Some(p),
        (None, Some(d)) => Some(d),
        (Some((p, p_since)), Some((d, d_since))) => {
            let due: Vec<String> = cat
                .records()
                .iter()
                .map(|r| &r.id)
                .filter(|id| p.due.contains(id) || d.due.contains(id))
                .cloned()
                .collect();
            let plan = VerifyPlan {
                due,
                next_due: p.next_due,
                last_verified: p.last_verified,
            };
            Some((plan, p_since.max(d_since)))
        }
    }
}

/// The newest quarantined backup that is not yet healed: no full backup that is not itself
/// quarantined was created after it. While there is one, the dataset's next backup is a full
/// (due at once) and the dataset is a `Corrupt` violator.
pub fn unhealed_quarantine(cat: &DatasetBackups) -> Option<&BackupRecord> {
    let q = cat.quarantined().last()?;
    let healed = cat
        .records()
        .iter()
        .any(|r| r.kind == BackupKind::Full && !r.quarantined && r.created > q.created);
    (!healed).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};

    const D: i64 = 86_400;

    fn q(mut r: BackupRecord, at: i64) -> BackupRecord {
        r.quarantined = true;
        r.verified_at = Some(ts(at));
        r
    }

    fn checked(mut r: BackupRecord, at: i64) -> BackupRecord {
        r.verified_at = Some(ts(at));
        r
    }

    #[test]
    fn due_once_per_period_from_creation_or_last_check() {
        let every = SignedDuration::from_secs(7 * D);
        let c = cat(vec![
            checked(full("f", 0), 8 * D),         // checked at 8d: due at 15d
            inc("a", D, "f"),                     // never checked: due at 8d
            checked(inc("b", 2 * D, "a"), 3 * D), // due at 10d
            q(inc("x", 3 * D, "b"), 4 * D),       // quarantined: never due
        ]);
        let p = plan_verify(&c, every, ts(9 * D));
        assert_eq!(p.due, ["a"]);
        assert_eq!(p.next_due, Some(ts(10 * D)));
        assert_eq!(p.last_verified, None, "a was never verified");
        let p = plan_verify(&c, every, ts(10 * D));
        assert_eq!(p.due, ["a", "b"], "exactly at the deadline counts");
        assert_eq!(p.next_due, Some(ts(15 * D)));
        let p = plan_verify(&c, every, ts(20 * D));
        assert_eq!(p.due, ["f", "a", "b"]);
        assert_eq!(p.next_due, None);
    }

    #[test]
    fn last_verified_is_the_oldest_check_once_all_were_checked() {
        let every = SignedDuration::from_secs(7 * D);
        let c = cat(vec![
            checked(full("f", 0), 5 * D),
            checked(inc("a", D, "f"), 4 * D),
            q(inc("x", 2 * D, "a"), 3 * D),
        ]);
        assert_eq!(
            plan_verify(&c, every, ts(6 * D)).last_verified,
            Some(ts(4 * D))
        );
        assert_eq!(
            plan_verify(&DatasetBackups::default(), every, ts(1)),
            VerifyPlan::default()
        );
    }

    #[test]
    fn on_demand_verification_reads_everything_not_checked_since_the_request() {
        let c = cat(vec![
            checked(full("f", 0), 50),
            checked(inc("a", 10, "f"), 100),
            inc("b", 20, "a"),
            q(inc("x", 30, "b"), 40),
            inc("later", 200, "b"),
        ]);
        let p = plan_verify_now(&c, ts(100));
        assert_eq!(p.due, ["f", "b"], "a was checked at the request's time");
        assert_eq!(p.next_due, None);
        assert_eq!(p.last_verified, None, "b never was");
        assert_eq!(
            plan_verify_now(&c, ts(25)).due,
            ["b"],
            "only what was stored by then"
        );
        assert_eq!(plan_verify_now(&c, ts(300)).due, ["f", "a", "b", "later"]);
    }

    /// An on-demand request that was handled does not stop the periodic schedule (before the
    /// fix the request's plan replaced the periodic one, and nothing was verified again after
    /// `kubectl zetaback verify` while its annotation stayed).
    #[test]
    fn periodic_and_on_demand_plans_combine() {
        let every = SignedDuration::from_secs(7 * D);
        let c = cat(vec![
            checked(full("f", 0), 2 * D),      // periodic due at 9d
            checked(inc("a", D, "f"), 20 * D), // checked after the request
            inc("b", 2 * D, "a"),              // never checked: periodic due at 9d
        ]);
        // The request at 3d was handled (f and a re-read... a at 20d), now is 21d.
        let (p, since) =
            plan_verification(&c, Some(every), Some(ts(3 * D)), ts(21 * D)).expect("a plan");
        assert_eq!(p.due, ["f", "b"], "periodic dues still come");
        assert_eq!(since, Some(ts(14 * D)));
        assert_eq!(p.next_due, Some(ts(27 * D)));
        // Only the request: what it covers.
        let (p, since) = plan_verification(&c, None, Some(ts(3 * D)), ts(21 * D)).expect("plan");
        assert_eq!(p.due, ["f", "b"]);
        assert_eq!(since, Some(ts(3 * D)));
        let (p, _) = plan_verification(&c, None, Some(ts(D)), ts(21 * D)).expect("plan");
        assert!(
            p.due.is_empty(),
            "f and a were checked after a request at 1d; b is newer"
        );
        // Both: a request at 25d adds a to what is due periodically.
        let (p, since) =
            plan_verification(&c, Some(every), Some(ts(25 * D)), ts(21 * D)).expect("plan");
        assert_eq!(p.due, ["f", "a", "b"]);
        assert_eq!(since, Some(ts(25 * D)));
        assert!(plan_verification(&c, None, None, ts(21 * D)).is_none());
    }

    #[test]
    fn a_quarantine_heals_with_a_newer_good_full() {
        let cases: Vec<(Vec<BackupRecord>, Option<&str>)> = vec![
            (vec![full("f", 0), inc("a", 10, "f")], None),
            (vec![q(full("f", 0), 50), inc("a", 10, "f")], Some("f")),
            (vec![full("f", 0), q(inc("a", 10, "f"), 50)], Some("a")),
            // A good full after the corrupt incremental heals it.
            (
                vec![full("f", 0), q(inc("a", 10, "f"), 50), full("g", 20)],
                None,
            ),
            // A full older than the corrupt backup does not.
            (
                vec![full("f", 0), full("g", 5), q(inc("a", 10, "g"), 50)],
                Some("a"),
            ),
            // A newer full that is itself corrupt does not; the newest quarantine is named.
            (
                vec![full("f", 0), q(inc("a", 10, "f"), 50), q(full("g", 20), 60)],
                Some("g"),
            ),
            // Two quarantines, healed only past the newer one.
            (
                vec![q(full("f", 0), 50), full("g", 20), q(inc("b", 30, "g"), 60)],
                Some("b"),
            ),
            (
                vec![q(full("f", 0), 50), q(inc("b", 30, "f"), 60), full("h", 40)],
                None,
            ),
        ];
        for (records, want) in cases {
            let c = cat(records.clone());
            assert_eq!(
                unhealed_quarantine(&c).map(|r| r.id.as_str()),
                want,
                "{records:?}"
            );
        }
    }
}
