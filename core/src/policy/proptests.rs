//! Property tests over random histories and random policies.
//!
//! Two kinds of history:
//! * **arbitrary**: any sequence of fulls and incrementals, each incremental against a random
//!   earlier backup (covers chains, fans and mixtures), with random archived flags closed
//!   under dependencies and, optionally, lost manifests (dangling bases);
//! * **simulated**: a dataset driven by the policy itself over many reconciles: take what
//!   [`next_backup`] says is due (jobs may fail), destroy random old source snapshots, apply
//!   [`plan_retention`], and check the invariants after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::duration::RetentionBin;

const MIN: i64 = 60;
const H: i64 = 3600;
const D: i64 = 86_400;
const T0: i64 = 1_700_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

fn duration_secs() -> impl Strategy<Value = i64> {
    prop_oneof![
        (1i64..120).prop_map(|m| m * MIN),
        (1i64..48).prop_map(|h| h * H),
        (1i64..30).prop_map(|d| d * D)
    ]
}

fn retention() -> impl Strategy<Value = Retention> {
    prop_oneof![
        duration_secs().prop_map(|s| Retention::Age(Duration::from_secs(s as u64))),
        prop::collection::vec((1u32..8, duration_secs()), 1..4).prop_map(|bins| {
            Retention::Grid(
                bins.into_iter()
                    .map(|(count, s)| RetentionBin {
                        count,
                        interval: Duration::from_secs(s as u64),
                    })
                    .collect(),
            )
        }),
    ]
}

fn rules() -> impl Strategy<Value = PolicyRules> {
    (
        duration_secs(),
        duration_secs(),
        retention(),
        retention(),
        any::<bool>(),
        prop::option::of((duration_secs(), retention())),
        duration_secs(),
    )
        .prop_map(|(a, b, full_keep, inc_keep, chained, archive, grace)| {
            let (inc_every, full_every) = (a.min(b), a.max(b) + MIN);
            PolicyRules {
                full: Cadence {
                    every: secs(full_every),
                    keep: full_keep,
                },
                incremental: Cadence {
                    every: secs(inc_every),
                    keep: inc_keep,
                },
                against: if chained {
                    IncrementalBase::Previous
                } else {
                    IncrementalBase::LastFull
                },
                archive: archive.map(|(after, keep)| ArchiveRules {
                    after: secs(after),
                    keep,
                }),
                grace: secs(grace),
                suspend: false,
            }
        })
}

/// One generated backup: seconds after the previous one, full or not, which earlier backup
/// an incremental is against (an index modulo the count so far), archived, manifest lost.
type Step = (i64, bool, usize, bool, bool);

fn arbitrary_history(lost: bool) -> impl Strategy<Value = Vec<BackupRecord>> {
    prop::collection::vec(
        (
            1i64..3 * D,
            prop::bool::weighted(0.3),
            any::<usize>(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
        ),
        0..40,
    )
    .prop_map(move |steps: Vec<Step>| {
        let mut out: Vec<BackupRecord> = Vec::new();
        let mut t = T0;
        for (n, (gap, is_full, pick, archived, _)) in steps.iter().enumerate() {
            t += gap;
            let full = *is_full || out.is_empty();
            out.push(BackupRecord {
                id: format!("b{n:03}"),
                kind: if full {
                    BackupKind::Full
                } else {
                    BackupKind::Incremental
                },
                created: ts(t),
                snapshot: format!("s{n:03}"),
                base: if full {
                    None
                } else {
                    Some(out[pick % out.len()].id.clone())
                },
                bytes: 1,
                archived: *archived,
                quarantined: false,
                verified_at: None,
            });
        }
        // Archived flags closed under dependencies (a consistent store).
        for i in (0..out.len()).rev() {
            if out[i].archived
                && let Some(base) = out[i].base.clone()
                && let Some(b) = out.iter_mut().find(|r| r.id == base)
            {
                b.archived = true;
            }
        }
        if lost {
            let drop: BTreeSet<String> = steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.4)
                .map(|(n, _)| format!("b{n:03}"))
                .collect();
            out.retain(|r| !drop.contains(&r.id));
        }
        out
    })
}

/// Checks the invariants of a retention plan; returns an error message on failure.
fn check_retention(
    rules: &PolicyRules,
    cat: &DatasetBackups,
    now: Timestamp,
    p: &RetentionPlan,
) -> Result<(), TestCaseError> {
    let ids = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    let (keep, moved, deleted) = (ids(&p.keep), ids(&p.archive), ids(&p.delete));
    // A partition of the catalogue.
    prop_assert_eq!(keep.len() + moved.len() + deleted.len(), cat.len());
    prop_assert!(
        keep.is_disjoint(&moved) && keep.is_disjoint(&deleted) && moved.is_disjoint(&deleted)
    );
    let survives = |id: &str| keep.contains(id) || moved.contains(id);
    // Newest backup and newest full are never deleted, nor moved.
    if let Some(n) = cat.newest() {
        prop_assert!(keep.contains(&n.id), "newest {} not kept", n.id);
    }
    if let Some(f) = cat.newest_full() {
        prop_assert!(keep.contains(&f.id), "newest full {} not kept", f.id);
    }
    for r in cat.records() {
        let surv = survives(&r.id);
        // Every surviving backup's stored base survives too (its chain stays complete).
        if surv
            && let Some(base) = &r.base
            && cat.get(base).is_some()
        {
            prop_assert!(
                survives(base),
                "{} kept but its base {} deleted",
                r.id,
                base
            );
        }
        // Nothing is deleted while its kind keep (or, in the archive, archive keep) holds it.
        if !surv {
            let same_kind: Vec<&BackupRecord> =
                cat.records().iter().filter(|o| o.kind == r.kind).collect();
            let times: Vec<Timestamp> = same_kind.iter().map(|o| o.created).collect();
            let kept = retained_by_rule(&rules.cadence(r.kind).keep, &times, now);
            let pos = same_kind.iter().position(|o| o.id == r.id).unwrap();
            prop_assert!(!kept[pos], "{} deleted before its keep time", r.id);
            if let Retention::Age(keep) = rules.cadence(r.kind).keep {
                prop_assert!(
                    now.duration_since(r.created) >= SignedDuration::try_from(keep).unwrap()
                );
            }
            // In the archive, archive.keep holds it too.
            if let Some(a) = &rules.archive
                && (r.archived || moved.contains(&r.id))
            {
                let in_archive: Vec<&BackupRecord> = same_kind
                    .iter()
                    .copied()
                    .filter(|o| o.archived || moved.contains(&o.id))
                    .collect();
                let times: Vec<Timestamp> = in_archive.iter().map(|o| o.created).collect();
                let kept = retained_by_rule(&a.keep, &times, now);
                let pos = in_archive.iter().position(|o| o.id == r.id).unwrap();
                prop_assert!(!kept[pos], "archived {} deleted before archive.keep", r.id);
            }
            if r.archived {
                prop_assert!(
                    rules.archive.is_some(),
                    "archived {} deleted without archive rules",
                    r.id
                );
            }
        }
        // Moves: only live, old enough, and never splitting a dependency.
        if moved.contains(&r.id) {
            prop_assert!(!r.archived);
            let after = rules.archive.as_ref().map(|a| a.after).unwrap();
            prop_assert!(
                now.duration_since(r.created) >= after,
                "{} moved too young",
                r.id
            );
            if let Some(base) = &r.base
                && let Some(b) = cat.get(base)
            {
                prop_assert!(
                    b.archived || moved.contains(base),
                    "{} moved without its base {}",
                    r.id,
                    base
                );
            }
        }
        // A backup that stays live never depends on one that moved.
        if keep.contains(&r.id)
            && !r.archived
            && let Some(base) = &r.base
        {
            prop_assert!(
                !moved.contains(base),
                "{} stays live but its base {} moved",
                r.id,
                base
            );
        }
    }
    // Unrestorable = surviving backups with a broken chain, exactly.
    let broken: BTreeSet<String> = cat
        .records()
        .iter()
        .filter(|r| survives(&r.id) && !cat.is_restorable(&r.id))
        .map(|r| r.id.clone())
        .collect();
    prop_assert_eq!(ids(&p.unrestorable), broken);
    // Deletions newest first.
    let del_times: Vec<Timestamp> = p
        .delete
        .iter()
        .map(|id| cat.get(id).unwrap().created)
        .collect();
    prop_assert!(del_times.windows(2).all(|w| w[0] >= w[1]));
    Ok(())
}

/// Applies a retention plan to a catalogue.
fn apply(cat: &DatasetBackups, p: &RetentionPlan) -> DatasetBackups {
    let deleted: BTreeSet<&String> = p.delete.iter().collect();
    let moved: BTreeSet<&String> = p.archive.iter().collect();
    let records = cat
        .records()
        .iter()
        .filter(|r| !deleted.contains(&r.id))
        .map(|r| BackupRecord {
            archived: r.archived || moved.contains(&r.id),
            ..r.clone()
        })
        .collect();
    DatasetBackups::new(records).unwrap()
}

fn overdue(rules: &PolicyRules, cat: &DatasetBackups, now: Timestamp) -> (bool, bool) {
    let late = |r: Option<&BackupRecord>, every| match r {
        None => true,
        Some(r) => now > r.created + every + rules.grace,
    };
    // Only a restorable backup counts as one (an incremental whose chain is broken restores
    // nothing).
    let newest_restorable = cat
        .records()
        .iter()
        .rev()
        .find(|r| cat.chain(&r.id).is_ok());
    (
        late(cat.newest_full(), rules.full.every),
        late(newest_restorable, rules.incremental.every),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every kept backup is restorable; nothing is deleted before its keep time; the newest
    /// backup and the newest full are never deleted; moves never split a chain.
    #[test]
    fn retention_invariants(rules in rules(), history in arbitrary_history(false), at in 0i64..90 * D) {
        let cat = DatasetBackups::new(history).unwrap();
        let now = cat.newest().map_or(ts(T0), |r| r.created) + secs(at);
        let p = plan_retention(&rules, &cat, now);
        check_retention(&rules, &cat, now, &p)?;
        let after = apply(&cat, &p);
        for r in after.records() {
            prop_assert!(after.is_restorable(&r.id), "{} unrestorable after retention", r.id);
        }
        // Idempotent: planning again at the same `now` changes nothing more.
        let again = plan_retention(&rules, &after, now);
        prop_assert!(again.delete.is_empty(), "second run deletes {:?}", again.delete);
        prop_assert!(again.archive.is_empty(), "second run moves {:?}", again.archive);
        check_retention(&rules, &after, now, &again)?;
    }

    /// Lost manifests: nothing panics, invariants that can hold still hold, and the broken
    /// chains are reported.
    #[test]
    fn retention_with_lost_manifests(rules in rules(), history in arbitrary_history(true), at in 0i64..60 * D) {
        let cat = DatasetBackups::new(history).unwrap();
        let now = cat.newest().map_or(ts(T0), |r| r.created) + secs(at);
        let p = plan_retention(&rules, &cat, now);
        check_retention(&rules, &cat, now, &p)?;
    }

    /// Due never schedules an incremental whose base is missing (from the store or from the
    /// source), and always schedules a full when there is none.
    #[test]
    fn due_respects_bases(
        rules in rules(),
        history in arbitrary_history(true),
        keep_snap in prop::collection::vec(any::<bool>(), 40),
        forced in prop::option::of(prop_oneof![Just(BackupKind::Full), Just(BackupKind::Incremental)]),
        at in 0i64..20 * D,
    ) {
        let cat = DatasetBackups::new(history).unwrap();
        let now = cat.newest().map_or(ts(T0), |r| r.created) + secs(at);
        let snaps: Vec<String> = cat.records().iter().enumerate().filter(|(i, _)| keep_snap[*i % 40]).map(|(_, r)| r.snapshot.clone()).collect();
        let p = next_backup(&rules, &cat, &snaps, forced, now);
        if let Some(d) = &p.due {
            prop_assert!(p.next_due <= now);
            match d.kind {
                BackupKind::Incremental => {
                    let base = d.base.as_ref().unwrap();
                    let rec = cat.get(&base.backup).unwrap();
                    prop_assert!(snaps.contains(&base.snapshot));
                    prop_assert_eq!(&rec.snapshot, &base.snapshot);
                    prop_assert!(cat.is_restorable(&base.backup));
                    let want = match rules.against {
                        IncrementalBase::LastFull => cat.newest_full(),
                        IncrementalBase::Previous => cat.newest(),
                    };
                    prop_assert_eq!(Some(&base.backup), want.map(|r| &r.id));
                    prop_assert!(forced != Some(BackupKind::Full));
                }
                BackupKind::Full => prop_assert!(d.base.is_none()),
            }
        } else {
            prop_assert!(p.next_due > now);
            prop_assert!(forced.is_none());
        }
        if cat.newest_full().is_none() {
            prop_assert_eq!(p.due.map(|d| d.kind), Some(BackupKind::Full));
        }
    }

    /// An overdue dataset (beyond grace) is always a violator, and a violator is overdue,
    /// failing or unreachable; paused hosts never violate.
    #[test]
    fn overdue_is_violator(
        rules in rules(),
        history in arbitrary_history(true),
        at in 0i64..40 * D,
        host in 0u8..3,
        failing in prop::option::of(0i64..D),
    ) {
        let cat = DatasetBackups::new(history).unwrap();
        let now = cat.newest().map_or(ts(T0), |r| r.created) + secs(at);
        let host = match host {
            0 => HostState::Reachable,
            1 => HostState::Paused,
            _ => HostState::Unreachable { since: now - secs(H) },
        };
        let state = DatasetState {
            catalogue: &cat,
            source_snapshots: &[],
            host,
            jobs: JobState { failing_since: failing.map(|s| now - secs(s)), ..JobState::default() },
            covered_since: None,
            forced: None,
            last_recorded: None,
        };
        let v = violations(&rules, &state, now);
        let reasons: BTreeSet<_> = v.iter().map(|f| format!("{:?}", f.reason)).collect();
        let (full_late, any_late) = overdue(&rules, &cat, now);
        if host == HostState::Paused {
            prop_assert!(v.is_empty());
        } else {
            prop_assert_eq!(reasons.contains("NoFullWithin"), full_late);
            prop_assert_eq!(reasons.contains("NoBackupWithin"), any_late);
            prop_assert_eq!(reasons.contains("LastJobFailed"), failing.is_some());
            prop_assert_eq!(reasons.contains("HostUnreachable"), matches!(host, HostState::Unreachable { .. }));
            prop_assert_eq!(
                reasons.contains("ChainBroken"),
                cat.newest().is_some_and(|n| !cat.is_restorable(&n.id))
            );
            prop_assert!(!reasons.contains("BackupMissing"), "no job recorded a backup");
            for f in &v {
                if let Some(since) = f.since { prop_assert!(since <= now); }
            }
        }
    }

    /// A backup a succeeded job recorded is `BackupMissing` exactly when the store lacks it,
    /// holds nothing newer, and the keep rules (or the archive's) would still keep it.
    #[test]
    fn a_recorded_backup_is_missing_only_when_lost(
        rules in rules(),
        history in arbitrary_history(true),
        recorded in any::<prop::sample::Index>(),
        present in any::<bool>(),
        started_after in 0i64..3 * D,
        at in 0i64..40 * D,
    ) {
        let cat = DatasetBackups::new(history).unwrap();
        let newest = cat.newest().map_or(ts(T0), |r| r.created);
        // Either a stored backup, or one that is not stored, taken after everything stored.
        let (id, kind, started) = match cat.records() {
            records if present && !records.is_empty() => {
                let r = &records[recorded.index(records.len())];
                (r.id.clone(), r.kind, r.created - secs(1))
            }
            _ => ("lost".to_owned(), BackupKind::Full, newest + secs(started_after + 1)),
        };
        let now = started + secs(at);
        let state = DatasetState {
            catalogue: &cat,
            source_snapshots: &[],
            host: HostState::Reachable,
            jobs: JobState::default(),
            covered_since: Some(ts(T0)),
            forced: None,
            last_recorded: Some(RecordedBackup { id: &id, kind, started }),
        };
        let missing = violations(&rules, &state, now)
            .iter()
            .any(|f| f.reason == ViolationReason::BackupMissing);
        let kept = retained_by_rule(&rules.cadence(kind).keep, &[started], now)[0]
            || rules.archive.as_ref().is_some_and(|a| retained_by_rule(&a.keep, &[started], now)[0]);
        let stored = cat.get(&id).is_some();
        prop_assert_eq!(missing, !stored && kept, "id {} stored {} kept {}", id, stored, kept);
    }

    /// The whole loop: a dataset driven by the policy for many reconciles, with failing jobs
    /// and snapshots destroyed on the source. After every step: every stored backup is
    /// restorable, newest backup and full exist; and when every job succeeds and reconciles
    /// come at least every `grace`, the dataset never becomes a late violator.
    #[test]
    fn simulated_history(
        rules in rules(),
        steps in prop::collection::vec((1i64..=100, prop::bool::weighted(0.85), prop::bool::weighted(0.1), prop::option::of(prop_oneof![Just(BackupKind::Full), Just(BackupKind::Incremental)])), 1..120),
    ) {
        let mut cat = DatasetBackups::default();
        let mut source: Vec<String> = Vec::new();
        let mut now = ts(T0);
        let mut n = 0;
        let mut all_ok = true;
        let mut ever: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut jobs = JobState::default();
        for (pct, ok, destroy, forced) in steps {
            // Reconcile interval: up to the grace period.
            now += secs((rules.grace.as_secs() * pct / 100).max(1));
            let state = DatasetState {
                catalogue: &cat,
                source_snapshots: &source,
                host: HostState::Reachable,
                jobs,
                covered_since: Some(ts(T0)),
                forced,
                last_recorded: None,
            };
            let late = violations(&rules, &state, now)
                .iter()
                .any(|f| matches!(f.reason, ViolationReason::NoFullWithin | ViolationReason::NoBackupWithin));
            if all_ok {
                prop_assert!(!late, "late at {} with every job succeeding", now);
            }
            let plan = plan_due(&rules, &state, now);
            if let Some(Hold::RetryBackoff { until }) = plan.held {
                prop_assert!(until > now && plan.next_due == until);
                prop_assert!(jobs.consecutive_failures > 0);
            }
            if let Some(due) = plan.due {
                all_ok &= ok;
                if !ok {
                    jobs.failing_since = jobs.failing_since.or(Some(now));
                    jobs.consecutive_failures += 1;
                    jobs.last_failure = Some(now);
                } else {
                    jobs = JobState::default();
                    let id = format!("b{n:04}");
                    let snapshot = format!("s{n:04}");
                    n += 1;
                    let mut records = cat.records().to_vec();
                    records.push(BackupRecord {
                        id: id.clone(),
                        kind: due.kind,
                        created: now,
                        snapshot: snapshot.clone(),
                        base: due.base.map(|b| b.backup),
                        bytes: 1,
                        archived: false,
                        quarantined: false,
                        verified_at: None,
                    });
                    ever.insert(id, now);
                    cat = DatasetBackups::new(records).unwrap();
                    source.push(snapshot);
                }
            }
            if destroy && !source.is_empty() {
                source.remove(0);
            }
            let p = plan_retention(&rules, &cat, now);
            check_retention(&rules, &cat, now, &p)?;
            prop_assert!(p.unrestorable.is_empty());
            cat = apply(&cat, &p);
            for r in cat.records() {
                prop_assert!(cat.is_restorable(&r.id));
            }
            if n > 0 {
                let newest = ever.values().max().copied();
                prop_assert_eq!(cat.newest().map(|r| r.created), newest);
            }
        }
    }

    /// The grid rule: at most `count` per bin, spaced at least `interval`, nothing beyond the
    /// span, and every dropped backup has a kept one less than `interval` older in its bin.
    #[test]
    fn grid_rule(bins in prop::collection::vec((1u32..6, duration_secs()), 1..4), ages in prop::collection::vec(0i64..40 * D, 0..60)) {
        let rule = Retention::Grid(bins.iter().map(|&(count, s)| RetentionBin { count, interval: Duration::from_secs(s as u64) }).collect());
        let now = ts(T0 + 100 * D);
        let times: Vec<Timestamp> = ages.iter().map(|a| now - secs(*a)).collect();
        let kept = retained_by_rule(&rule, &times, now);
        let mut lower = 0i64;
        for &(count, interval) in &bins {
            let upper = lower + i64::from(count) * interval;
            let in_bin: Vec<usize> = (0..ages.len()).filter(|&i| ages[i] >= lower && ages[i] < upper).collect();
            let mut kept_ages: Vec<i64> = in_bin.iter().filter(|&&i| kept[i]).map(|&i| ages[i]).collect();
            kept_ages.sort();
            prop_assert!(kept_ages.len() <= count as usize);
            prop_assert!(kept_ages.windows(2).all(|w| w[1] - w[0] >= interval));
            for &i in &in_bin {
                if !kept[i] {
                    prop_assert!(kept_ages.iter().any(|&k| k > ages[i] && k - ages[i] < interval), "age {} dropped without cover", ages[i]);
                }
            }
            lower = upper;
        }
        for (i, a) in ages.iter().enumerate() {
            if *a >= lower { prop_assert!(!kept[i]); }
        }
    }

    /// Age rule: kept exactly while younger than the age.
    #[test]
    fn age_rule_expires_at_exactly_its_age(keep in duration_secs(), ages in prop::collection::vec(-H..40 * D, 0..30)) {
        let now = ts(T0);
        // Always include the boundary: exactly `keep` old expires.
        let ages: Vec<i64> = ages.into_iter().chain([keep - 1, keep]).collect();
        let times: Vec<Timestamp> = ages.iter().map(|a| now - secs(*a)).collect();
        let kept = retained_by_rule(&Retention::Age(Duration::from_secs(keep as u64)), &times, now);
        for (a, k) in ages.iter().zip(kept) {
            prop_assert_eq!(k, *a < keep);
        }
    }

    /// The restore chain starts with a full, follows bases, and ends at the asked backup.
    #[test]
    fn restore_chain_shape(history in arbitrary_history(true), pick in any::<usize>()) {
        let cat = DatasetBackups::new(history).unwrap();
        if cat.is_empty() { return Ok(()); }
        let target = &cat.records()[pick % cat.len()];
        match cat.restore_chain(&RestoreTarget::Id(target.id.clone())) {
            Ok(chain) => {
                prop_assert_eq!(chain[0].kind, BackupKind::Full);
                prop_assert_eq!(&chain.last().unwrap().id, &target.id);
                for w in chain.windows(2) {
                    prop_assert_eq!(w[1].base.as_ref(), Some(&w[0].id));
                }
            }
            Err(ChainError::ChainBroken { backup, missing }) => {
                prop_assert_eq!(backup, target.id.clone());
                prop_assert!(cat.get(&missing).is_none());
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

/// An arbitrary history (with lost manifests) in which some backups were found corrupt.
fn quarantined_history() -> impl Strategy<Value = Vec<BackupRecord>> {
    (
        arbitrary_history(true),
        prop::collection::vec(prop::bool::weighted(0.15), 40),
    )
        .prop_map(|(mut history, marks)| {
            for (i, r) in history.iter_mut().enumerate() {
                if marks[i % 40] {
                    r.quarantined = true;
                    r.verified_at = Some(r.created + secs(H));
                }
            }
            history
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A quarantined backup is never restored from, never the newest, never a base; while it
    /// is not healed by a newer good full the next backup is a full and the dataset `Corrupt`.
    #[test]
    fn quarantine_invariants(
        rules in rules(),
        history in quarantined_history(),
        forced in prop::option::of(prop_oneof![Just(BackupKind::Full), Just(BackupKind::Incremental)]),
        at in 0i64..20 * D,
        verify_every in duration_secs(),
    ) {
        let cat = DatasetBackups::new(history).unwrap();
        let now = cat.records().last().map_or(ts(T0), |r| r.created) + secs(at);
        prop_assert!(cat.newest().is_none_or(|r| !r.quarantined));
        prop_assert!(cat.newest_full().is_none_or(|r| !r.quarantined));
        for r in cat.records() {
            match cat.chain(&r.id) {
                Ok(chain) => prop_assert!(chain.iter().all(|c| !c.quarantined)),
                Err(ChainError::Quarantined { backup, corrupt }) => {
                    prop_assert_eq!(&backup, &r.id);
                    prop_assert!(cat.get(&corrupt).is_some_and(|c| c.quarantined));
                    prop_assert!(corrupt == r.id || cat.dependents(&corrupt).contains(&r.id.as_str()));
                }
                Err(ChainError::ChainBroken { missing, .. }) => prop_assert!(cat.get(&missing).is_none()),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        for q in cat.quarantined() {
            for d in cat.dependents(&q.id) {
                prop_assert!(!cat.is_restorable(d), "{d} depends on quarantined {}", q.id);
            }
        }
        if let Ok(chain) = cat.restore_chain(&RestoreTarget::Latest) {
            prop_assert!(chain.iter().all(|c| !c.quarantined));
        }
        let snaps: Vec<String> = cat.records().iter().map(|r| r.snapshot.clone()).collect();
        let p = next_backup(&rules, &cat, &snaps, forced, now);
        let unhealed = unhealed_quarantine(&cat);
        if unhealed.is_some() {
            prop_assert_eq!(p.due.as_ref().map(|d| d.kind), Some(BackupKind::Full));
        }
        if let Some(d) = &p.due && d.kind == BackupKind::Incremental {
            let base = d.base.as_ref().unwrap();
            prop_assert!(cat.is_restorable(&base.backup));
        }
        let state = DatasetState {
            catalogue: &cat,
            source_snapshots: &snaps,
            host: HostState::Reachable,
            jobs: JobState::default(),
            covered_since: None,
            forced: None,
            last_recorded: None,
        };
        let corrupt = violations(&rules, &state, now).iter().any(|f| f.reason == ViolationReason::Corrupt);
        prop_assert_eq!(corrupt, unhealed.is_some());
        let v = plan_verify(&cat, secs(verify_every), now);
        for r in cat.records() {
            let due_at = r.verified_at.unwrap_or(r.created) + secs(verify_every);
            prop_assert_eq!(v.due.contains(&r.id), !r.quarantined && due_at <= now, "{}", r.id);
            if !r.quarantined && due_at > now {
                prop_assert!(v.next_due.is_some_and(|n| n <= due_at));
            }
        }
    }
}
