//! Backups dated in the future are distrusted (issue 13, finding 2): a forged full with a
//! far-future id (`253402207199.full`) would stop its dataset's backups (nothing newer is ever
//! due), hide it from the violators and make retention delete every real backup. The store
//! refuses such an id when it arrives, and whoever reads a catalogue (the controller, the CLI)
//! ignores any it finds and reports it. "Future" allows for clock skew between hosts.

use super::{Catalogue, StoredBackup};

/// How far ahead of the reader's clock a backup's time may be (clocks of two hosts differ).
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 5 * 60;

/// Whether a backup taken at unix time `ts` is in the future for a clock that reads `now`.
pub fn is_future(ts: i64, now: jiff::Timestamp) -> bool {
    ts > now.as_second().saturating_add(MAX_CLOCK_SKEW_SECONDS)
}

/// Removes the backups dated in the future from `cat`, records each as a problem, and
/// returns them.
pub fn drop_future(cat: &mut Catalogue, now: jiff::Timestamp) -> Vec<StoredBackup> {
    let (future, kept): (Vec<StoredBackup>, Vec<StoredBackup>) = std::mem::take(&mut cat.backups)
        .into_iter()
        .partition(|b| is_future(b.manifest.created.as_second(), now));
    cat.backups = kept;
    for b in &future {
        let m = &b.manifest;
        cat.problems.push(format!(
            "backup {}/{}/{} is dated {} , in the future (more than {MAX_CLOCK_SKEW_SECONDS}s ahead of {now}): ignored",
            m.host, m.dataset, m.id, m.created
        ));
    }
    future
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Manifest;

    fn backup(ts: i64) -> StoredBackup {
        let json = format!(
            r#"{{"version":1,"id":"{ts}.full","host":"h","dataset":"tank/a","snapshot":"zb-{ts}","type":"full","bytes":1,"sha256":"{}","compression":"none","created":"{}"}}"#,
            "a".repeat(64),
            jiff::Timestamp::from_second(ts).expect("ts")
        );
        StoredBackup {
            manifest: Manifest::from_json(json.as_bytes()).expect("manifest"),
            archived: false,
            verification: None,
        }
    }

    #[test]
    fn the_skew_is_allowed_and_no_more() {
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("now");
        assert!(!is_future(1_700_000_000, now));
        assert!(!is_future(1_700_000_000 + MAX_CLOCK_SKEW_SECONDS, now));
        assert!(is_future(1_700_000_001 + MAX_CLOCK_SKEW_SECONDS, now));
        assert!(is_future(253_402_207_199, now));
        assert!(!is_future(0, now));
        assert!(is_future(i64::MAX, jiff::Timestamp::MAX));
    }

    #[test]
    fn future_backups_are_dropped_and_reported() {
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("now");
        let mut cat = Catalogue {
            backups: vec![
                backup(1_699_000_000),
                backup(253_402_207_199),
                backup(1_700_000_100),
            ],
            problems: vec![],
        };
        let dropped = drop_future(&mut cat, now);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].manifest.id, "253402207199.full");
        let kept: Vec<&str> = cat.backups.iter().map(|b| b.manifest.id.as_str()).collect();
        assert_eq!(kept, ["1699000000.full", "1700000100.full"]);
        assert_eq!(cat.problems.len(), 1);
        assert!(
            cat.problems[0].contains("h/tank/a/253402207199.full"),
            "{:?}",
            cat.problems
        );
    }
}
