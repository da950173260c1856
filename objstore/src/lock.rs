//! S3 Object Lock for `target.objectStore.immutableFor`: every object of a backup (its stream
//! and its manifest) is written in COMPLIANCE mode, retained until the backup's time (its id's
//! timestamp, the snapshot's) plus `immutableFor`; nobody, the controller's keys included, can
//! delete that version earlier. The bucket must have been created with Object Lock enabled
//! (which turns versioning on).
//!
//! The retain-until date follows from the backup's id alone ([`locked_until`]), so the
//! controller knows it without asking the server, and retention and archive never try to
//! delete or move a backup before then ([`deletable`], pure). On a versioned bucket, a DELETE
//! without a version id (what retention sends) only adds a delete marker: the locked version
//! stays, billed, until a lifecycle rule expires noncurrent versions
//! (`NoncurrentVersionExpiration`) once their lock has passed; document that rule with the
//! bucket.

use http::{HeaderMap, HeaderName, HeaderValue};
use zetaback_core::store::StreamId;

/// When the objects of backup `id` stop being locked: its time plus `immutable_for`
/// (seconds since the epoch; `None` when that overflows).
pub fn locked_until(id: &StreamId, immutable_for: std::time::Duration) -> Option<i64> {
    i64::try_from(immutable_for.as_secs())
        .ok()
        .and_then(|d| id.ts().checked_add(d))
}

/// Whether backup `id` may be deleted (or moved, which deletes the original) at `now`
/// (seconds): always without a lock, else only once its lock has passed.
pub fn deletable(id: &StreamId, immutable_for: Option<std::time::Duration>, now: i64) -> bool {
    match immutable_for {
        None => true,
        Some(d) => locked_until(id, d).is_some_and(|until| now >= until),
    }
}

/// The request headers that write an object locked until `until` (seconds): COMPLIANCE mode.
pub fn headers(until: i64) -> Option<HeaderMap> {
    let date = jiff::Timestamp::from_second(until).ok()?;
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static("x-amz-object-lock-mode"),
        HeaderValue::from_static("COMPLIANCE"),
    );
    h.insert(
        HeaderName::from_static("x-amz-object-lock-retain-until-date"),
        HeaderValue::from_str(&date.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).ok()?,
    );
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_locked_backup_is_deletable_only_from_its_lock_date_on() {
        let full: StreamId = "1700000000.full".parse().unwrap();
        let inc: StreamId = "1700000600.incremental.1700000000".parse().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(locked_until(&full, week), Some(1_700_604_800));
        // No lock: any time.
        assert!(deletable(&full, None, 0));
        // Locked: not a second early, from the date on.
        assert!(!deletable(&full, Some(week), 1_700_604_799));
        assert!(deletable(&full, Some(week), 1_700_604_800));
        // An incremental's lock counts from its own time, not its base's.
        assert!(!deletable(&inc, Some(week), 1_700_604_800));
        assert!(deletable(&inc, Some(week), 1_700_605_400));
        // An overflowing lock never ends.
        assert!(!deletable(
            &full,
            Some(Duration::from_secs(u64::MAX)),
            i64::MAX
        ));
    }

    #[test]
    fn lock_headers_say_compliance_until_the_date() {
        let h = headers(1_700_604_800).unwrap();
        assert_eq!(h["x-amz-object-lock-mode"], "COMPLIANCE");
        assert_eq!(
            h["x-amz-object-lock-retain-until-date"],
            "2023-11-21T22:13:20Z"
        );
    }
}
