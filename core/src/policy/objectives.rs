//! Recovery objectives (`spec.objectives`): the recovery point a dataset has now (the age of
//! its newest restorable backup) against the policy's RPO.

use jiff::{SignedDuration, Timestamp};

use super::catalogue::DatasetBackups;
use super::violations::Finding;
use super::{add, age, show};
use crate::api::backup_policy::ViolationReason;

/// The recovery point now: how old the newest restorable backup is (`None`: there is none).
pub fn rpo_now(cat: &DatasetBackups, now: Timestamp) -> Option<SignedDuration> {
    cat.newest_restorable().map(|r| age(now, r.created))
}

/// `RpoMissed` when the newest restorable backup is older than `rpo` at `now`; with none,
/// when the dataset has been covered (since `covered_since`) for longer than `rpo`, or at
/// once when that is unknown. `since` is the moment the objective was first missed.
pub fn rpo_violation(
    cat: &DatasetBackups,
    rpo: SignedDuration,
    covered_since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Finding> {
    let newest = cat.newest_restorable();
    let Some(reference) = newest.map(|r| r.created).or(covered_since) else {
        return Some(Finding {
            reason: ViolationReason::RpoMissed,
            since: None,
            message: format!("no restorable backup; the RPO is {}", show(rpo)),
        });
    };
    let deadline = add(reference, rpo);
    (now > deadline).then(|| Finding {
        reason: ViolationReason::RpoMissed,
        since: Some(deadline),
        message: match newest {
            Some(r) => format!(
                "the newest restorable backup ({}) is {} old, over the RPO of {}",
                r.id,
                show(age(now, r.created)),
                show(rpo)
            ),
            None => format!(
                "no restorable backup since coverage began at {reference}, over the RPO of {}",
                show(rpo)
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};

    const H: i64 = 3600;

    #[test]
    fn rpo_table() {
        let rpo = SignedDuration::from_hours(26);
        let good = cat(vec![full("f", 0), inc("a", 10 * H, "f")]);
        let mut corrupt = full("f", 0);
        corrupt.quarantined = true;
        let broken = cat(vec![corrupt, inc("a", 10 * H, "f")]);
        let empty = DatasetBackups::default();
        // (catalogue, covered since, now, missed since)
        /// (catalogue, covered since, now, missed since: `Some(None)` = missed, since unknown)
        type Case<'a> = (&'a DatasetBackups, Option<i64>, i64, Option<Option<i64>>);
        let cases: Vec<Case> = vec![
            (&good, None, 36 * H, None), // exactly at the objective: met
            (&good, None, 36 * H + 1, Some(Some(36 * H))),
            (&good, Some(-100 * H), 20 * H, None),
            // A backup that cannot be restored is no recovery point.
            (&broken, Some(0), 26 * H, None),
            (&broken, Some(0), 26 * H + 1, Some(Some(26 * H))),
            (&broken, None, 1, Some(None)),
            (&empty, Some(5 * H), 30 * H, None),
            (&empty, Some(5 * H), 32 * H, Some(Some(31 * H))),
        ];
        for (c, covered, now, want) in cases {
            let got = rpo_violation(c, rpo, covered.map(ts), ts(now));
            assert_eq!(
                got.as_ref().map(|f| f.since.map(|t| t.as_second())),
                want,
                "{c:?} covered {covered:?} now {now}"
            );
            if let Some(f) = got {
                assert_eq!(f.reason, ViolationReason::RpoMissed);
            }
        }
        assert_eq!(
            rpo_now(&good, ts(11 * H)),
            Some(SignedDuration::from_hours(1))
        );
        assert_eq!(rpo_now(&broken, ts(11 * H)), None);
    }
}
