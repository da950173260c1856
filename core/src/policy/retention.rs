//! What has expired: the `keep` rules, dependency protection, and the full retention plan
//! (what stays, what moves to the archive, what is deleted).

use jiff::{SignedDuration, Timestamp};

use super::catalogue::DatasetBackups;
use super::{BackupKind, PolicyRules, age, archive, sd};
use crate::duration::Retention;

/// Which of `times` (creation times of backups of one kind, in any order) a `keep` rule keeps
/// at `now`; `result[i]` answers for `times[i]`.
///
/// * **Age** (`14d`): a backup is kept while it is younger than the age (`now - created <
///   age`); it expires at exactly `created + age`.
/// * **Grid** (`24x1h,14x1d`): the bins lay out consecutive age ranges going back from `now`:
///   bin *j* covers ages `[S(j-1), S(j))` where `S(j)` is the sum of `count × interval` of bins
///   1..=j (here: 0–24h, then 24h–15d). Within each bin, walk its backups from oldest to
///   newest and keep one if it is the first, or at least `interval` newer than the last one
///   kept in that bin. Backups older than the whole grid are not kept.
///
///   Consequences, each checked by tests: a bin never keeps more than `count` backups; kept
///   backups in a bin are at least `interval` apart; every backup the grid drops has a kept
///   backup in its bin less than `interval` older than itself (nothing the grid asks for is
///   missing); and, as time passes, a backup kept as the oldest of a bin stays kept until it
///   leaves that bin (walking from the oldest is what makes the choice stable, as in zrepl).
///   `24x1h` keeps hourly backups for a day, as Zetaback's `3600,24` bin did.
pub fn retained_by_rule(rule: &Retention, times: &[Timestamp], now: Timestamp) -> Vec<bool> {
    match rule {
        Retention::Age(keep) => {
            let keep = sd(*keep);
            times.iter().map(|t| age(now, *t) < keep).collect()
        }
        Retention::Grid(bins) => {
            let mut kept = vec![false; times.len()];
            let mut order: Vec<usize> = (0..times.len()).collect();
            // Oldest first; ties keep input order (stable sort).
            order.sort_by_key(|&i| times[i]);
            let mut lower = SignedDuration::ZERO;
            for bin in bins {
                let interval = sd(bin.interval);
                let span = interval
                    .checked_mul(i32::try_from(bin.count).unwrap_or(i32::MAX))
                    .unwrap_or(SignedDuration::MAX);
                let upper = lower.checked_add(span).unwrap_or(SignedDuration::MAX);
                let mut last: Option<Timestamp> = None;
                let mut count = 0u32;
                for &i in &order {
                    let a = age(now, times[i]);
                    if a < lower || a >= upper || count >= bin.count {
                        continue;
                    }
                    let far_enough = match last {
                        None => true,
                        Some(l) => times[i].duration_since(l) >= interval,
                    };
                    if far_enough {
                        kept[i] = true;
                        last = Some(times[i]);
                        count += 1;
                    }
                }
                lower = upper;
            }
            kept
        }
    }
}

/// The retention decision for one dataset. Every list holds backup ids, oldest first, except
/// `delete`, which is newest first so that an interrupted run never leaves a dependent
/// without its base while the dependent still exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Backups that stay where they are (live or archived).
    pub keep: Vec<String>,
    /// Live backups to move to the archive area (bases before dependents).
    pub archive: Vec<String>,
    /// Backups to delete, from whichever area the record says they are in.
    pub delete: Vec<String>,
    /// Kept or moved backups whose chain is incomplete (a base's manifest is missing from the
    /// store): they cannot be restored; the controller should warn. They are not deleted
    /// early because of it.
    pub unrestorable: Vec<String>,
}

/// Decides what is kept, archived and deleted.
///
/// The rule, in order:
/// 1. **Kind keep.** `full.keep` is applied to all full backups and `incremental.keep` to all
///    incrementals (live and archived together), with [`retained_by_rule`].
/// 2. **Protected.** The newest backup and the newest full (and, through step 5, everything
///    they depend on) are never deleted and never moved to the archive.
/// 3. **Archive** (only with `archive` rules; see `archive.rs`): a live backup at least
///    `archive.after` old moves to the archive instead of being deleted, unless a backup that
///    stays live depends on it. A backup moves only together with its bases, so neither area
///    ever depends on a backup that left it. The archive takes precedence over deletion: the
///    example policy `full.keep: 30d` with `archive.after: 30d` archives fulls at 30 days.
/// 4. **Archive keep.** In the archive (already archived plus moving), a backup is kept if
///    `archive.keep` keeps it (fulls and incrementals ranked separately) *or* its kind keep
///    still does: the archive extends, never shortens, how long a backup is kept. Without
///    `archive` rules, archived backups are left alone (never deleted).
/// 5. **Dependencies.** Everything a kept backup depends on is kept, transitively (the whole
///    chain, for chained incrementals; the full, for differential ones).
/// 6. Everything else is deleted.
///
/// Invariants (property-tested): every kept backup is restorable when the catalogue had no
/// missing bases; a backup is deleted only when its kind keep and (when archived) the archive
/// keep no longer keep it; the newest backup and the newest full are never deleted.
pub fn plan_retention(rules: &PolicyRules, cat: &DatasetBackups, now: Timestamp) -> RetentionPlan {
    let records = cat.records();
    let n = records.len();
    let kind_kept = by_kind(cat, now, |k| &rules.cadence(k).keep, |_| true);

    let mut protected = Vec::new();
    if n > 0 {
        protected.push(n - 1);
    }
    if let Some(f) = records.iter().rposition(|r| r.kind == BackupKind::Full) {
        protected.push(f);
    }

    let split = archive::partition(cat, rules.archive.as_ref(), now, &kind_kept, &protected);

    // In the archive area (already archived or moving now): which does the rule keep?
    let in_archive = |i: usize| records[i].archived || split.moving.contains(&i);
    let archive_kept = match &rules.archive {
        Some(a) => by_kind(cat, now, |_| &a.keep, in_archive),
        None => vec![false; n],
    };
    let mut seeds: Vec<usize> = split.stay.iter().copied().collect();
    seeds.extend(protected.iter().copied());
    for i in 0..n {
        if in_archive(i) && (kind_kept[i] || archive_kept[i] || rules.archive.is_none()) {
            seeds.push(i);
        }
    }
    let kept = cat.closure(seeds);

    let mut plan = RetentionPlan::default();
    for (i, r) in records.iter().enumerate() {
        if !kept.contains(&i) {
            plan.delete.push(r.id.clone());
            continue;
        }
        if split.moving.contains(&i) {
            plan.archive.push(r.id.clone());
        } else {
            plan.keep.push(r.id.clone());
        }
        if cat.chain_positions(i).is_err() {
            plan.unrestorable.push(r.id.clone());
        }
    }
    plan.delete.reverse();
    plan
}

/// Applies `rule(kind)` to the backups of each kind among those `included`.
fn by_kind<'r>(
    cat: &DatasetBackups,
    now: Timestamp,
    rule: impl Fn(BackupKind) -> &'r Retention,
    included: impl Fn(usize) -> bool,
) -> Vec<bool> {
    let records = cat.records();
    let mut out = vec![false; records.len()];
    for kind in [BackupKind::Full, BackupKind::Incremental] {
        let members: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].kind == kind && included(i))
            .collect();
        let times: Vec<Timestamp> = members.iter().map(|&i| records[i].created).collect();
        for (&i, keep) in members
            .iter()
            .zip(retained_by_rule(rule(kind), &times, now))
        {
            out[i] = keep;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::IncrementalBase;
    use crate::duration::RetentionBin;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};
    use crate::policy::{ArchiveRules, BackupRecord, Cadence};
    use std::time::Duration;

    const H: i64 = 3600;
    const D: i64 = 86_400;

    fn grid(bins: &[(u32, i64)]) -> Retention {
        Retention::Grid(
            bins.iter()
                .map(|&(count, secs)| RetentionBin {
                    count,
                    interval: Duration::from_secs(secs as u64),
                })
                .collect(),
        )
    }

    fn age_rule(secs: i64) -> Retention {
        Retention::Age(Duration::from_secs(secs as u64))
    }

    fn rules(full_keep: Retention, inc_keep: Retention) -> PolicyRules {
        PolicyRules {
            full: Cadence {
                every: SignedDuration::from_secs(7 * D),
                keep: full_keep,
            },
            incremental: Cadence {
                every: SignedDuration::from_secs(D),
                keep: inc_keep,
            },
            against: IncrementalBase::LastFull,
            archive: None,
            grace: SignedDuration::from_secs(900),
            suspend: false,
        }
    }

    fn kept_ages(rule: &Retention, ages: &[i64], now: i64) -> Vec<i64> {
        let times: Vec<_> = ages.iter().map(|a| ts(now - a)).collect();
        let kept = retained_by_rule(rule, &times, ts(now));
        let mut out: Vec<i64> = ages
            .iter()
            .zip(kept)
            .filter(|(_, k)| *k)
            .map(|(a, _)| *a)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn rule_table() {
        let now = 100 * D;
        let hourly_for_2d: Vec<i64> = (0..48).map(|h| h * H).collect();
        let cases: Vec<(&str, Retention, Vec<i64>, Vec<i64>)> = vec![
            // Age: strictly younger than the age is kept; exactly the age expires.
            (
                "age",
                age_rule(D),
                vec![0, H, D - 1, D, D + 1],
                vec![0, H, D - 1],
            ),
            ("age future", age_rule(D), vec![-H], vec![-H]),
            ("age empty", age_rule(D), vec![], vec![]),
            // 6x1h over hourly backups: the six newest hours (ages 0..6h), all kept.
            (
                "grid hourly",
                grid(&[(6, H)]),
                hourly_for_2d.clone(),
                vec![0, H, 2 * H, 3 * H, 4 * H, 5 * H],
            ),
            // 2x1d over hourly backups spanning 2 days: the oldest of the bin (47h), then the
            // first one at least a day newer (23h).
            (
                "grid daily",
                grid(&[(2, D)]),
                hourly_for_2d.clone(),
                vec![23 * H, 47 * H],
            ),
            // 3x1h then 1x1d: bin 1 = ages [0,3h), bin 2 = [3h,27h) keeps its oldest (26h).
            (
                "grid two bins",
                grid(&[(3, H), (1, D)]),
                hourly_for_2d.clone(),
                vec![0, H, 2 * H, 26 * H],
            ),
            // Sparse backups: 24x1h keeps only what lies within the first 24 hours.
            ("grid sparse", grid(&[(24, H)]), vec![0, D, 2 * D], vec![0]),
            // From the oldest (200m): 70m is 130m newer (kept), 50m and 20m are within an
            // hour of 70m (dropped), 10s is 69m newer than 70m (kept).
            (
                "grid thinning",
                grid(&[(4, H)]),
                vec![10, 20 * 60, 50 * 60, 70 * 60, 200 * 60],
                vec![10, 70 * 60, 200 * 60],
            ),
            // Exactly the interval apart counts as far enough.
            ("grid exact", grid(&[(2, H)]), vec![0, H], vec![0, H]),
            ("grid beyond", grid(&[(2, H)]), vec![2 * H, 3 * H], vec![]),
        ];
        for (name, rule, ages, want) in cases {
            assert_eq!(kept_ages(&rule, &ages, now), want, "{name}");
        }
    }

    fn plan_ids(p: &[String]) -> Vec<&str> {
        p.iter().map(String::as_str).collect()
    }

    #[test]
    fn plain_ages_with_protection() {
        // Fulls kept 10d, incrementals 3d (differential). Now = day 20.
        let c = cat(vec![
            full("f0", 0),
            inc("i0", D, "f0"),
            full("f1", 7 * D),
            inc("i1", 8 * D, "f1"),
            inc("i2", 18 * D, "f1"),
            inc("i3", 19 * D, "f1"),
        ]);
        let p = plan_retention(&rules(age_rule(10 * D), age_rule(3 * D)), &c, ts(20 * D));
        // f1 is 13 days old (past its keep) but is the newest full and the base of i2/i3.
        assert_eq!(plan_ids(&p.keep), ["f1", "i2", "i3"]);
        assert_eq!(plan_ids(&p.delete), ["i1", "i0", "f0"]);
        assert!(p.archive.is_empty() && p.unrestorable.is_empty());
    }

    #[test]
    fn chained_incrementals_keep_their_whole_chain() {
        let c = cat(vec![
            full("f", 0),
            inc("a", D, "f"),
            inc("b", 2 * D, "a"),
            inc("c", 3 * D, "b"),
        ]);
        // Incrementals kept 1.5 days: only c by rule, but c needs b, a and f.
        let p = plan_retention(&rules(age_rule(D), age_rule(D + D / 2)), &c, ts(4 * D));
        assert_eq!(plan_ids(&p.keep), ["f", "a", "b", "c"]);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn newest_backup_and_full_survive_everything() {
        let c = cat(vec![full("f", 0), inc("i", D, "f")]);
        let p = plan_retention(&rules(age_rule(H), age_rule(H)), &c, ts(365 * D));
        assert_eq!(plan_ids(&p.keep), ["f", "i"]);
        let c = cat(vec![full("f", 0), full("g", D)]);
        let p = plan_retention(&rules(age_rule(H), age_rule(H)), &c, ts(365 * D));
        assert_eq!(plan_ids(&p.keep), ["g"]);
        assert_eq!(plan_ids(&p.delete), ["f"]);
        let p = plan_retention(
            &rules(age_rule(H), age_rule(H)),
            &DatasetBackups::default(),
            ts(0),
        );
        assert_eq!(p, RetentionPlan::default());
    }

    #[test]
    fn broken_chains_are_reported_not_deleted_early() {
        let c = cat(vec![
            full("f", 0),
            inc("orphan", 5 * D, "lost"),
            inc("i", 6 * D, "f"),
        ]);
        let p = plan_retention(&rules(age_rule(30 * D), age_rule(30 * D)), &c, ts(7 * D));
        assert_eq!(plan_ids(&p.keep), ["f", "orphan", "i"]);
        assert_eq!(plan_ids(&p.unrestorable), ["orphan"]);
    }

    fn with_archive(mut r: PolicyRules, after: i64, keep: Retention) -> PolicyRules {
        r.archive = Some(ArchiveRules {
            after: SignedDuration::from_secs(after),
            keep,
        });
        r
    }

    fn archived(mut r: BackupRecord) -> BackupRecord {
        r.archived = true;
        r
    }

    #[test]
    fn archive_takes_precedence_over_deletion() {
        // full.keep 30d, archive after 30d keep 365d: fulls move at 30 days, not vanish.
        let r = with_archive(
            rules(age_rule(30 * D), age_rule(14 * D)),
            30 * D,
            age_rule(365 * D),
        );
        let c = cat(vec![
            full("f0", 0),
            inc("i0", D, "f0"),
            full("f1", 7 * D),
            inc("i1", 8 * D, "f1"),
            full("f5", 35 * D),
            inc("i5", 36 * D, "f5"),
        ]);
        let p = plan_retention(&r, &c, ts(40 * D));
        assert_eq!(plan_ids(&p.archive), ["f0", "i0", "f1", "i1"]);
        assert_eq!(plan_ids(&p.keep), ["f5", "i5"]);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn archive_keeps_groups_together() {
        // f (40d old) is past archive.after but i (20d) is not and stays live: f must stay too.
        let r = with_archive(
            rules(age_rule(60 * D), age_rule(60 * D)),
            30 * D,
            age_rule(365 * D),
        );
        let c = cat(vec![
            full("f", 0),
            inc("i", 20 * D, "f"),
            full("g", 30 * D),
            inc("j", 35 * D, "g"),
        ]);
        let p = plan_retention(&r, &c, ts(40 * D));
        assert!(p.archive.is_empty(), "{p:?}");
        // Ten days later i is 30 days old: f and i move together.
        let p = plan_retention(&r, &c, ts(50 * D));
        assert_eq!(plan_ids(&p.archive), ["f", "i"]);
        // An incremental on the newest full stays live with it, even when old.
        let c = cat(vec![full("g", 0), inc("j", D, "g")]);
        let p = plan_retention(&r, &c, ts(100 * D));
        assert_eq!(plan_ids(&p.keep), ["g", "j"]);
    }

    #[test]
    fn archive_old_incremental_on_a_staying_base_is_not_split_off() {
        // g is the newest full (protected, live); k is old, on g, and not the newest backup.
        let r = with_archive(rules(age_rule(D), age_rule(D)), 5 * D, age_rule(365 * D));
        let c = cat(vec![full("g", 0), inc("k", D, "g"), inc("m", 20 * D, "g")]);
        let p = plan_retention(&r, &c, ts(30 * D));
        // g is protected (newest full) so it stays live; k depends on g and must not move
        // alone into the archive: it stays live.
        assert_eq!(plan_ids(&p.keep), ["g", "k", "m"]);
        assert!(p.archive.is_empty());
    }

    #[test]
    fn archive_keep_deletes_only_what_both_rules_dropped() {
        let r = with_archive(
            rules(age_rule(30 * D), age_rule(14 * D)),
            30 * D,
            age_rule(365 * D),
        );
        let c = cat(vec![
            archived(full("old", 0)),
            archived(full("mid", 100 * D)),
            full("new", 400 * D),
        ]);
        let p = plan_retention(&r, &c, ts(401 * D));
        assert_eq!(plan_ids(&p.delete), ["old"]);
        assert_eq!(plan_ids(&p.keep), ["mid", "new"]);
        // A full kept 2 years by its own keep survives the archive's 1 year.
        let r2 = with_archive(
            rules(age_rule(730 * D), age_rule(14 * D)),
            30 * D,
            age_rule(365 * D),
        );
        let p = plan_retention(&r2, &c, ts(401 * D));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn moving_and_expiring_at_once_is_a_delete() {
        // Archive keeps 40d only; a 50-day-old live full goes straight to delete.
        let r = with_archive(
            rules(age_rule(10 * D), age_rule(D)),
            20 * D,
            age_rule(40 * D),
        );
        let c = cat(vec![full("f", 0), full("g", 30 * D), full("h", 49 * D)]);
        let p = plan_retention(&r, &c, ts(50 * D));
        assert_eq!(plan_ids(&p.delete), ["f"]);
        assert_eq!(plan_ids(&p.archive), ["g"]);
        assert_eq!(plan_ids(&p.keep), ["h"]);
    }

    #[test]
    fn without_archive_rules_archived_backups_are_left_alone() {
        let c = cat(vec![archived(full("a", 0)), full("b", 300 * D)]);
        let p = plan_retention(&rules(age_rule(D), age_rule(D)), &c, ts(301 * D));
        assert_eq!(plan_ids(&p.keep), ["a", "b"]);
    }

    #[test]
    fn grid_retention_over_a_month_of_daily_fulls() {
        // Fulls daily for 30 days, keep 7x1d,3x1w: 7 dailies + weekly representatives.
        let records: Vec<_> = (0..30).map(|d| full(&format!("f{d:02}"), d * D)).collect();
        let c = cat(records);
        let p = plan_retention(
            &rules(grid(&[(7, D), (3, 7 * D)]), age_rule(D)),
            &c,
            ts(29 * D + H),
        );
        // Ages 0..7d → f23..f29 (age of f22 is 7d+1h, outside bin 1). Bin 2 covers ages
        // [7d, 28d): f02..f22, walked from f02 in steps of 7 days: f02, f09, f16.
        assert_eq!(
            plan_ids(&p.keep),
            [
                "f02", "f09", "f16", "f23", "f24", "f25", "f26", "f27", "f28", "f29"
            ]
        );
    }
}
