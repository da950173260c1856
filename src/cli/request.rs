//! The requests the CLI leaves on a BackupPolicy for the controller (which alone creates jobs
//! and deletes or moves backups). Pure.
//!
//! * `zetaback.io/backup-now`: a JSON list of requests
//!   `{"host":H|null,"dataset":D|null,"type":"full"|"incremental"|null,"requestedAt":"<RFC 3339>"}`,
//!   oldest first. A new request joins the queue ([`enqueue`]), written only if the policy did
//!   not change since it was read, so two requests never overwrite each other. The controller
//!   honours every request once (it records `status.backupNowHandled`, the newest request it
//!   finished); handled requests are dropped from the queue by the next one.
//! * `zetaback.io/reconcile-now`: an RFC 3339 time; the controller re-evaluates the policy and
//!   applies retention and archiving.
//!
//! Times are whole seconds: `status.backupNowHandled` is a `metav1.Time`, which keeps seconds
//! only, so a request with a fraction would never compare as handled.

use jiff::Timestamp;

use crate::api::BackupType;
pub use crate::api::backup_policy::{
    BACKUP_NOW_ANNOTATION, BackupNowRequest, RECONCILE_NOW_ANNOTATION, parse_backup_now,
};

/// At most this many requests wait on one policy (the annotation stays small).
pub const MAX_QUEUED: usize = 32;

/// Why a request cannot join the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error(
        "{0} backup requests already wait for the controller on this policy (is it running?); nothing was requested"
    )]
    Full(usize),
}

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

/// The queue after adding `request` to the current annotation value `existing`: requests the
/// controller handled (at or before `handled`) leave, an unreadable value is replaced (the
/// controller ignores it too), and a request equal to one still waiting (same host, dataset and
/// kind) is not added twice: the waiting one asks for the same backup.
pub fn enqueue(
    existing: Option<&str>,
    handled: Option<Timestamp>,
    request: BackupNowRequest,
) -> Result<Vec<BackupNowRequest>, QueueError> {
    let mut queue = existing
        .and_then(|v| parse_backup_now(v).ok())
        .unwrap_or_default();
    queue.retain(|r| handled.is_none_or(|h| r.requested_at > h));
    let same = |r: &BackupNowRequest| {
        (&r.host, &r.dataset, r.backup_type)
            == (&request.host, &request.dataset, request.backup_type)
    };
    if !queue.iter().any(same) {
        if queue.len() >= MAX_QUEUED {
            return Err(QueueError::Full(queue.len()));
        }
        queue.push(request);
    }
    queue.sort_by_key(|r| r.requested_at);
    Ok(queue)
}

/// The annotation value: the queue as a JSON list.
pub fn to_annotation(queue: &[BackupNowRequest]) -> Result<String, serde_json::Error> {
    serde_json::to_string(queue)
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
            to_annotation(std::slice::from_ref(&r)).expect("json"),
            r#"[{"host":"db-1","dataset":null,"type":"full","requestedAt":"2023-11-14T22:13:20Z"}]"#
        );
        let r2 = backup_now(None, Some("tank/pg".into()), None, now);
        let both = [r, r2];
        assert_eq!(
            to_annotation(&both).expect("json"),
            r#"[{"host":"db-1","dataset":null,"type":"full","requestedAt":"2023-11-14T22:13:20Z"},{"host":null,"dataset":"tank/pg","type":null,"requestedAt":"2023-11-14T22:13:20Z"}]"#
        );
        let back = parse_backup_now(&to_annotation(&both).expect("json")).expect("parse");
        assert_eq!(back, both);
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
            serde_json::from_str(&to_annotation(&[r]).expect("json")).expect("parse");
        assert_eq!(v[0]["type"], "incremental");
        assert_eq!(v[0]["requestedAt"], "2023-11-14T22:13:20Z");
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

    #[test]
    fn requests_queue_up_and_never_replace_each_other() {
        let at = |s| Timestamp::from_second(s).expect("ts");
        let a = backup_now(
            Some("db-1".into()),
            Some("tank/a".into()),
            Some(BackupType::Full),
            at(100),
        );
        let b = backup_now(Some("db-1".into()), Some("tank/b".into()), None, at(100));
        // The first request on a policy; then a second one while the first still waits.
        let q = enqueue(None, None, a.clone()).expect("queue");
        assert_eq!(q, vec![a.clone()]);
        let text = to_annotation(&q).expect("json");
        let q = enqueue(Some(&text), None, b.clone()).expect("queue");
        assert_eq!(q, vec![a.clone(), b.clone()]);
        // The same request again is the one already waiting.
        let text = to_annotation(&q).expect("json");
        let again = backup_now(
            Some("db-1".into()),
            Some("tank/a".into()),
            Some(BackupType::Full),
            at(101),
        );
        assert_eq!(enqueue(Some(&text), None, again.clone()).expect("queue"), q);
        // Handled requests leave; then the same request is new again.
        assert_eq!(
            enqueue(Some(&text), Some(at(100)), again.clone()).expect("queue"),
            vec![again.clone()]
        );
        // The single-object form of older CLIs is read as a queue of one.
        let old = serde_json::to_string(&a).expect("json");
        assert_eq!(
            enqueue(Some(&old), None, b.clone()).expect("queue"),
            vec![a, b.clone()]
        );
        // Junk is replaced; a full queue refuses.
        assert_eq!(
            enqueue(Some("{junk"), None, b.clone()).expect("queue"),
            vec![b.clone()]
        );
        let many: Vec<BackupNowRequest> = (0..MAX_QUEUED)
            .map(|i| backup_now(None, Some(format!("tank/{i}")), None, at(100)))
            .collect();
        let text = to_annotation(&many).expect("json");
        assert_eq!(
            enqueue(Some(&text), None, b),
            Err(QueueError::Full(MAX_QUEUED))
        );
    }
}
