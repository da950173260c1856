//! The requests the CLI leaves on a BackupPolicy for the controller (which alone creates jobs
//! and deletes or moves backups). Pure.
//!
//! * `zetaback.io/backup-now`: JSON
//!   `{"host":H|null,"dataset":D|null,"type":"full"|"incremental"|null,"requestedAt":"<RFC 3339>"}`;
//!   the controller acts on a request once (it records `status.backupNowHandled`).
//! * `zetaback.io/reconcile-now`: an RFC 3339 time; the controller re-evaluates the policy and
//!   applies retention and archiving.
//!
//! Times are whole seconds: `status.backupNowHandled` is a `metav1.Time`, which keeps seconds
//! only, so a request with a fraction would never compare as handled.

use jiff::Timestamp;

use crate::api::BackupType;
pub use crate::api::backup_policy::{
    BACKUP_NOW_ANNOTATION, BackupNowRequest, RECONCILE_NOW_ANNOTATION,
};

/// `t` without its fraction of a second.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// A request for a backup now. Unset fields are written as `null`: all hosts, all datasets,
/// the kind the policy finds due.
pub fn backup_now(
    host: Option<String>,
    dataset: Option<String>,
    backup_type: Option<BackupType>,
    now: Timestamp,
) -> BackupNowRequest {
    BackupNowRequest {
        host,
        dataset,
        backup_type,
        requested_at: whole_seconds(now),
    }
}

/// The annotation value.
pub fn to_annotation(request: &BackupNowRequest) -> Result<String, serde_json::Error> {
    serde_json::to_string(request)
}

/// What is asked for, in words: `a full backup of db-1:tank/pg`.
pub fn describe(request: &BackupNowRequest) -> String {
    let kind = match request.backup_type {
        Some(BackupType::Full) => "a full backup",
        Some(BackupType::Incremental) => "an incremental backup",
        None => "a backup (the kind the policy finds due)",
    };
    let what = match (&request.host, &request.dataset) {
        (Some(h), Some(d)) => format!("{h}:{d}"),
        (Some(h), None) => format!("every dataset of {h}"),
        (None, Some(d)) => format!("{d} on every host"),
        (None, None) => "every dataset".into(),
    };
    format!("{kind} of {what}")
}

/// The value of [`RECONCILE_NOW_ANNOTATION`].
pub fn reconcile_now(now: Timestamp) -> String {
    whole_seconds(now).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_is_the_agreed_json() {
        let now = Timestamp::from_millisecond(1_700_000_000_999).expect("ts");
        let r = backup_now(Some("db-1".into()), None, Some(BackupType::Full), now);
        assert_eq!(
            to_annotation(&r).expect("json"),
            r#"{"host":"db-1","dataset":null,"type":"full","requestedAt":"2023-11-14T22:13:20Z"}"#
        );
        let r = backup_now(None, Some("tank/pg".into()), None, now);
        assert_eq!(
            to_annotation(&r).expect("json"),
            r#"{"host":null,"dataset":"tank/pg","type":null,"requestedAt":"2023-11-14T22:13:20Z"}"#
        );
        let back: BackupNowRequest =
            serde_json::from_str(&to_annotation(&r).expect("json")).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn fields_are_camel_case() {
        let r = backup_now(
            Some("db-1".into()),
            Some("tank/pg".into()),
            Some(BackupType::Incremental),
            Timestamp::from_second(1_700_000_000).expect("ts"),
        );
        let v: serde_json::Value =
            serde_json::from_str(&to_annotation(&r).expect("json")).expect("parse");
        assert_eq!(v["type"], "incremental");
        assert_eq!(v["requestedAt"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn descriptions() {
        let now = Timestamp::from_second(0).expect("ts");
        let d = |h: Option<&str>, ds: Option<&str>, t| {
            describe(&backup_now(h.map(Into::into), ds.map(Into::into), t, now))
        };
        assert_eq!(
            d(Some("db-1"), Some("tank/pg"), Some(BackupType::Full)),
            "a full backup of db-1:tank/pg"
        );
        assert_eq!(
            d(Some("db-1"), None, Some(BackupType::Incremental)),
            "an incremental backup of every dataset of db-1"
        );
        assert_eq!(
            d(None, None, None),
            "a backup (the kind the policy finds due) of every dataset"
        );
        assert_eq!(
            reconcile_now(Timestamp::from_millisecond(1_500).expect("ts")),
            "1970-01-01T00:00:01Z"
        );
    }
}
