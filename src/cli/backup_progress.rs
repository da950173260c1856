//! `kubectl zetaback backup --wait`: follows the BackupJobs the controller makes for a
//! backup-now request, one progress bar per job, until the controller handled the request and
//! every job ended. A bar's total is the agent's `zfs send -nP` estimate
//! (`status.estimatedBytes`) and its position the stream bytes sent so far
//! (`status.bytesSent`), with the agent's ETA; a host that cannot estimate (zfs-fuse) shows
//! bytes without a total and no ETA. [`job_bar`] and [`request_done`] are the pure part.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use kube::ResourceExt;

use super::cluster::Cluster;
use super::error::CliError;
use crate::api::{BackupJob, BackupPolicy, JobPhase};

/// What one job's bar shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobBar {
    /// The estimated stream size; None: no total (the bar is a byte counter).
    pub length: Option<u64>,
    pub position: u64,
    pub message: String,
    pub finished: bool,
}

/// The bar of one job, from its status (pure).
pub fn job_bar(job: &BackupJob) -> JobBar {
    let st = job.status.clone().unwrap_or_default();
    let position = st.bytes_sent.unwrap_or(0);
    let message = match st.phase {
        JobPhase::Pending => "waiting for the source agent".to_owned(),
        JobPhase::Running => match (st.estimated_bytes, st.eta_seconds) {
            (Some(_), Some(eta)) => format!("sending, ETA {}", eta_text(eta)),
            (Some(_), None) => "sending".to_owned(),
            (None, _) => "sending (no size estimate on this host: no ETA)".to_owned(),
        },
        JobPhase::Succeeded => format!("done: {}", st.backup_id.as_deref().unwrap_or("stored")),
        JobPhase::Failed => format!("FAILED: {}", st.message.as_deref().unwrap_or("")),
    };
    JobBar {
        length: st.estimated_bytes,
        position,
        message,
        finished: matches!(st.phase, JobPhase::Succeeded | JobPhase::Failed),
    }
}

/// `1h02m03s`, `2m05s`, `7s`.
pub fn eta_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// Whether a job was made for a request of `requested_at` (whole seconds) or later.
pub fn is_of_request(job: &BackupJob, requested_at: Timestamp) -> bool {
    job.metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| t.0 >= requested_at)
}

/// Whether following is over: the controller handled the request (made every job it
/// selected) and each of those jobs ended.
pub fn request_done(policy: &BackupPolicy, jobs: &[&BackupJob], requested_at: Timestamp) -> bool {
    let handled = policy
        .status
        .as_ref()
        .and_then(|s| s.backup_now_handled.as_ref())
        .is_some_and(|t| t.0 >= requested_at);
    handled && jobs.iter().all(|j| job_bar(j).finished)
}

const POLL: Duration = Duration::from_millis(500);

/// Follows the jobs of the request made at `requested_at` on policy `ns/name`; the exit code
/// is 0 when every one succeeded, 1 when one failed.
pub async fn follow(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    requested_at: Timestamp,
) -> Result<u8, CliError> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let with_total =
        style("  {prefix} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")?;
    let without_total = style("  {prefix} {spinner} {bytes} {binary_bytes_per_sec} {msg}")?;
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let failed = loop {
        let policy = cluster.policy(ns, name).await?;
        let all = cluster.jobs(&policy).await?;
        let jobs: Vec<&BackupJob> = all
            .iter()
            .filter(|j| is_of_request(j, requested_at))
            .collect();
        for job in &jobs {
            let shown = job_bar(job);
            let bar = bars.entry(job.name_any()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_prefix(format!("{} {}", job.spec.host, job.spec.dataset.0));
                b
            });
            match shown.length {
                Some(total) => {
                    bar.set_style(with_total.clone());
                    bar.set_length(total.max(shown.position));
                }
                None => bar.set_style(without_total.clone()),
            }
            bar.set_position(shown.position);
            bar.set_message(shown.message);
            bar.tick();
        }
        if request_done(&policy, &jobs, requested_at) {
            break jobs.iter().any(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == JobPhase::Failed)
            });
        }
        tokio::time::sleep(POLL).await;
    };
    for bar in bars.values() {
        bar.finish();
    }
    Ok(u8::from(failed))
}

fn style(template: &str) -> Result<ProgressStyle, CliError> {
    Ok(ProgressStyle::with_template(template)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .progress_chars("=> "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupJobStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(status: BackupJobStatus, created: i64) -> BackupJob {
        let spec: crate::api::BackupJobSpec = serde_json::from_value(serde_json::json!({
            "policy": "p", "host": "h1", "dataset": "tank/db", "type": "full",
            "snapshot": "zb-1", "target": {"host": "b", "path": "/s"}
        }))
        .expect("job spec");
        let mut j = BackupJob::new("j", spec);
        j.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("ts")));
        j.status = Some(status);
        j
    }

    #[test]
    fn a_running_job_with_an_estimate_has_a_total_and_an_eta() {
        let b = job_bar(&job(
            BackupJobStatus {
                phase: JobPhase::Running,
                estimated_bytes: Some(1000),
                bytes_sent: Some(250),
                eta_seconds: Some(125),
                ..Default::default()
            },
            0,
        ));
        assert_eq!(
            b,
            JobBar {
                length: Some(1000),
                position: 250,
                message: "sending, ETA 2m05s".into(),
                finished: false
            }
        );
    }

    #[test]
    fn without_an_estimate_there_is_no_total_and_no_eta() {
        let b = job_bar(&job(
            BackupJobStatus {
                phase: JobPhase::Running,
                bytes_sent: Some(77),
                ..Default::default()
            },
            0,
        ));
        assert_eq!(b.length, None);
        assert_eq!(b.position, 77);
        assert!(b.message.contains("no ETA"), "{}", b.message);
    }

    #[test]
    fn ended_jobs_are_finished() {
        let ok = job_bar(&job(
            BackupJobStatus {
                phase: JobPhase::Succeeded,
                backup_id: Some("1.full".into()),
                ..Default::default()
            },
            0,
        ));
        assert!(ok.finished && ok.message == "done: 1.full");
        let failed = job_bar(&job(
            BackupJobStatus {
                phase: JobPhase::Failed,
                message: Some("boom".into()),
                ..Default::default()
            },
            0,
        ));
        assert!(failed.finished && failed.message == "FAILED: boom");
        assert!(!job_bar(&job(BackupJobStatus::default(), 0)).finished);
    }

    #[test]
    fn eta_texts() {
        assert_eq!(eta_text(0), "0s");
        assert_eq!(eta_text(59), "59s");
        assert_eq!(eta_text(60), "1m00s");
        assert_eq!(eta_text(3723), "1h02m03s");
    }

    #[test]
    fn only_jobs_of_the_request_count_and_done_needs_the_controller() {
        let at = Timestamp::from_second(100).expect("ts");
        let old = job(BackupJobStatus::default(), 99);
        let new = job(
            BackupJobStatus {
                phase: JobPhase::Succeeded,
                ..Default::default()
            },
            100,
        );
        assert!(!is_of_request(&old, at));
        assert!(is_of_request(&new, at));
        let spec: crate::api::BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "hosts": {"names": ["h1"]},
            "datasets": {"include": ["tank/**"]},
            "full": {"every": "7d", "keep": "14d"},
            "incremental": {"every": "1d", "keep": "3d"},
            "target": {"host": "b", "path": "/s"}
        }))
        .expect("policy spec");
        let mut policy = BackupPolicy::new("p", spec);
        assert!(!request_done(&policy, &[&new], at), "not handled yet");
        policy.status = Some(crate::api::BackupPolicyStatus {
            backup_now_handled: Some(Time(at)),
            ..Default::default()
        });
        assert!(request_done(&policy, &[&new], at));
        let running = job(
            BackupJobStatus {
                phase: JobPhase::Running,
                ..Default::default()
            },
            101,
        );
        assert!(!request_done(&policy, &[&new, &running], at));
    }
}
