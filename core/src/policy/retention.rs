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
mod tests;
