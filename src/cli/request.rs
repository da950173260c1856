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
use serde::{Deserialize, Serialize};

use crate::api::BackupType;

/// The annotation `backup` sets.
pub const BACKUP_NOW_ANNOTATION: &str = "zetaback.io/backup-now";
/// The annotation `expunge` and `archive` set.
pub const RECONCILE_NOW_ANNOTATION: &str = "zetaback.io/reconcile-now";

/// The value of [`BACKUP_NOW_ANNOTATION`]. Unset fields are written as `null`: all hosts, all
/// datasets, the kind the policy finds due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupNowRequest {
    pub host: Option<String>,
    pub dataset: Option<String>,
    #[serde(rename = "type")]
    pub backup_type: Option<BackupType>,
    pub requested_at: Timestamp,
}

/// `t` without its fraction of a second.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

impl BackupNowRequest {
    pub fn new(
        host: Option<String>,
        dataset: Option<String>,
        backup_type: Option<BackupType>,
        now: Timestamp,
    ) -> Self {
        Self {
            host,
            dataset,
            backup_type,
            requested_at: whole_seconds(now),
        }
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// What is asked for, in words: `a full backup of db-1:tank/pg`.
    pub fn describe(&self) -> String {
        let kind = match self.backup_type {
            Some(BackupType::Full) => "a full backup",
            Some(BackupType::Incremental) => "an incremental backup",
            None => "a backup (the kind the policy finds due)",
        };
        let what = match (&self.host, &self.dataset) {
            (Some(h), Some(d)) => format!("{h}:{d}"),
            (Some(h), None) => format!("every dataset of {h}"),
            (None, Some(d)) => format!("{d} on every host"),
            (None, None) => "every dataset".into(),
        };
        format!("{kind} of {what}")
    }
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
        let r = BackupNowRequest::new(Some("db-1".into()), None, Some(BackupType::Full), now);
        assert_eq!(
            r.to_annotation().expect("json"),
            r#"{"host":"db-1","dataset":null,"type":"full","requestedAt":"2023-11-14T22:13:20Z"}"#
        );
        let r = BackupNowRequest::new(None, Some("tank/pg".into()), None, now);
        assert_eq!(
            r.to_annotation().expect("json"),
            r#"{"host":null,"dataset":"tank/pg","type":null,"requestedAt":"2023-11-14T22:13:20Z"}"#
        );
        let back: BackupNowRequest =
            serde_json::from_str(&r.to_annotation().expect("json")).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn the_controller_types_read_it() {
        let r = BackupNowRequest::new(
            Some("db-1".into()),
            Some("tank/pg".into()),
            Some(BackupType::Incremental),
            Timestamp::from_second(1_700_000_000).expect("ts"),
        );
        let v: serde_json::Value =
            serde_json::from_str(&r.to_annotation().expect("json")).expect("parse");
        assert_eq!(v["type"], "incremental");
        assert_eq!(v["requestedAt"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn descriptions() {
        let now = Timestamp::from_second(0).expect("ts");
        let d = |h: Option<&str>, ds: Option<&str>, t| {
            BackupNowRequest::new(h.map(Into::into), ds.map(Into::into), t, now).describe()
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
