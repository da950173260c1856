//! Which live backups move to the archive area.
//!
//! The rule: a live backup at least `archive.after` old moves to the archive, unless a backup
//! that stays live depends on it (directly or through a chain) or it depends on a backup that
//! stays live. In other words, backups move together with their dependency group, and after
//! a move neither area has a backup whose base is in the other area (unless the catalogue
//! already had one). The newest backup and the newest full never move.
//!
//! What stays live is: the protected backups, every live backup that its kind keep retains
//! and that is not yet old enough for the archive, and everything those depend on. What is
//! old enough and not needed by anything staying moves (and may then be deleted from the
//! archive by `archive.keep`; see [`super::plan_retention`]). Everything else live is for
//! deletion.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::catalogue::DatasetBackups;
use super::{ArchiveRules, age};

/// Live backups split into those staying live and those moving to the archive.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// Live backups that stay live (closed under dependencies).
    pub stay: BTreeSet<usize>,
    /// Live backups that move to the archive.
    pub moving: BTreeSet<usize>,
}

/// Splits the live backups; `kind_kept[i]` says whether record `i`'s kind keep retains it,
/// `protected` lists the newest backup and the newest full.
pub(super) fn partition(
    cat: &DatasetBackups,
    rules: Option<&ArchiveRules>,
    now: Timestamp,
    kind_kept: &[bool],
    protected: &[usize],
) -> Split {
    let records = cat.records();
    let old = |i: usize| match rules {
        Some(a) => !records[i].archived && age(now, records[i].created) >= a.after,
        None => false,
    };
    let seeds = (0..records.len())
        .filter(|&i| !records[i].archived && kind_kept[i] && !old(i))
        .chain(protected.iter().copied().filter(|&i| !records[i].archived));
    let mut stay: BTreeSet<usize> = cat
        .closure(seeds)
        .into_iter()
        .filter(|&i| !records[i].archived)
        .collect();
    let mut moving = BTreeSet::new();
    // Oldest first, so a base is decided before its dependents.
    let candidates: Vec<usize> = (0..records.len())
        .filter(|&i| old(i) && !stay.contains(&i))
        .collect();
    for i in candidates {
        let base_stays = cat
            .base_of(i)
            .is_some_and(|b| !records[b].archived && !moving.contains(&b));
        if base_stays {
            stay.insert(i);
        } else {
            moving.insert(i);
        }
    }
    Split { stay, moving }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Retention;
    use crate::policy::catalogue::tests::{cat, full, inc, ts};
    use jiff::SignedDuration;

    const D: i64 = 86_400;

    fn rules(after_days: i64) -> ArchiveRules {
        ArchiveRules {
            after: SignedDuration::from_secs(after_days * D),
            keep: Retention::Age(std::time::Duration::from_secs(1000 * D as u64)),
        }
    }

    fn names(c: &DatasetBackups, s: &BTreeSet<usize>) -> Vec<String> {
        s.iter().map(|&i| c.records()[i].id.clone()).collect()
    }

    /// One row of [`table`]: a dataset's backups, which of them their keep rule retains, when,
    /// and which backups must stay live and which move to the archive.
    struct Case {
        records: Vec<crate::policy::BackupRecord>,
        /// The ids the keep rule of their kind retains.
        kept: Vec<&'static str>,
        /// Now, in days.
        now_days: i64,
        stay: Vec<&'static str>,
        moving: Vec<&'static str>,
    }

    #[test]
    fn table() {
        let cases = [
            // Nothing old: kept ones stay, the rest is neither (deleted later).
            Case {
                records: vec![full("f", 0), inc("i", D, "f"), full("g", 2 * D)],
                kept: vec!["g"],
                now_days: 5,
                stay: vec!["g"],
                moving: vec![],
            },
            // Old group f+i moves whether or not its keep retained it.
            Case {
                records: vec![full("f", 0), inc("i", D, "f"), full("g", 40 * D)],
                kept: vec!["g"],
                now_days: 41,
                stay: vec!["g"],
                moving: vec!["f", "i"],
            },
            // A young kept incremental pins its old full live.
            Case {
                records: vec![full("f", 0), inc("i", 35 * D, "f"), full("g", 36 * D)],
                kept: vec!["i", "g"],
                now_days: 40,
                stay: vec!["f", "i", "g"],
                moving: vec![],
            },
            // An old incremental on a pinned full stays live too.
            Case {
                records: vec![
                    full("f", 0),
                    inc("a", D, "f"),
                    inc("b", 35 * D, "f"),
                    full("g", 36 * D),
                ],
                kept: vec!["b", "g"],
                now_days: 40,
                stay: vec!["f", "a", "b", "g"],
                moving: vec![],
            },
            // Dangling base: the orphan may move.
            Case {
                records: vec![inc("o", 0, "lost"), full("g", 36 * D)],
                kept: vec!["g"],
                now_days: 40,
                stay: vec!["g"],
                moving: vec!["o"],
            },
        ];
        for Case {
            records,
            kept,
            now_days,
            stay,
            moving,
        } in cases
        {
            let c = cat(records);
            let kind_kept: Vec<bool> = c
                .records()
                .iter()
                .map(|r| kept.contains(&r.id.as_str()))
                .collect();
            let n = c.len();
            let protected = vec![n - 1];
            let s = partition(
                &c,
                Some(&rules(30)),
                ts(now_days * D),
                &kind_kept,
                &protected,
            );
            assert_eq!(names(&c, &s.stay), stay, "stay");
            assert_eq!(names(&c, &s.moving), moving, "moving");
            let none = partition(&c, None, ts(now_days * D), &kind_kept, &protected);
            assert!(none.moving.is_empty());
        }
    }
}
