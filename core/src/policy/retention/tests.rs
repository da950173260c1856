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
