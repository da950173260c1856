//! The job runner: watches BackupJobs whose `spec.host` is this agent's ZfsHost, claims one
//! with optimistic concurrency (a status update carrying the resourceVersion it read, with
//! `claimedBy` set: a 409 means another agent got it), runs it ([`crate::job`]) in a tracing
//! span, and records the outcome. One job per dataset at a time, at most `concurrency` at once.
//!
//! Restart safety: at start-up, a job still `Running` and claimed by this agent was cut short
//! by a crash or kill; it is failed with a message (zfs-fuse has no resumable send, and the
//! target discarded the partial stream), so the controller schedules a retry. A retry that
//! names the same snapshot reuses it (it is marked as ours).
//!
//! Only this host's jobs are read: `spec.host` is a selectable field of the BackupJob CRD, so
//! the watch (and the start-up list of orphans) carries the field selector `spec.host=<host>`
//! and the apiserver sends no other host's jobs. Against a CRD installed before it had the field (the apiserver refuses the
//! selector), the runner falls back to watching every job and filtering here, with a warning.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, info_span, warn};
use zetaback_core::api::{BackupJob, BackupJobStatus, JobPhase, ZfsHost};

use crate::claim;
use crate::job::{self, JobError, JobOutcome, JobSettings};
use crate::job_progress::{self, JobProgress, ProgressReport};
use crate::transfer::Endpoint;
use crate::zfs::Zfs;

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This agent's ZfsHost.
    pub host_name: String,
    /// Written to `status.claimedBy`; stable across restarts of this agent.
    pub agent_id: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// This agent's own token for target agents (read again for every job).
    pub token: crate::auth::TokenFile,
    pub settings: JobSettings,
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("the BackupJob watch ended")]
    WatchEnded,
}

/// The field selector of this host's jobs (`spec.host=<host>`, the value escaped as the
/// apiserver's field selector parser expects).
pub fn host_field_selector(host: &str) -> String {
    crate::claim::field_selector("spec.host", host)
}

/// Whether a job is for this host and waiting to be claimed.
pub fn is_claimable(job: &BackupJob, host: &str) -> bool {
    job.spec.host.0 == host
        && job
            .status
            .as_ref()
            .is_none_or(|s| s.phase == JobPhase::Pending)
        && job.metadata.deletion_timestamp.is_none()
}

/// Whether a job was left running by this agent (a restart cut it short).
pub fn is_orphaned(job: &BackupJob, host: &str, agent_id: &str) -> bool {
    job.spec.host.0 == host
        && job.status.as_ref().is_some_and(|s| {
            s.phase == JobPhase::Running && s.claimed_by.as_deref() == Some(agent_id)
        })
}

/// The status that claims a job.
pub fn claimed_status(job: &BackupJob, agent_id: &str, now: jiff::Timestamp) -> BackupJobStatus {
    let mut s = job.status.clone().unwrap_or_default();
    s.phase = JobPhase::Running;
    s.claimed_by = Some(agent_id.to_owned());
    s.started_at = Some(Time(now));
    s.finished_at = None;
    s.attempts += 1;
    s.observed_generation = job.metadata.generation;
    s.message = Some(format!("running on {agent_id}"));
    s
}

/// The runner.
pub struct Runner {
    client: Client,
    zfs: Zfs,
    cfg: RunnerConfig,
    /// Notified after each job (the ZfsHost status lists our snapshots).
    pub job_finished: Arc<Notify>,
}

impl Runner {
    pub fn new(client: Client, zfs: Zfs, cfg: RunnerConfig) -> Self {
        Self {
            client,
            zfs,
            cfg,
            job_finished: Arc::new(Notify::new()),
        }
    }

    /// Fails the jobs this agent left running before a restart.
    pub async fn recover(&self) -> Result<usize, RunnerError> {
        let (list, _) = claim::scoped(self.host_selector().await?.as_deref());
        self.recover_listed(&list).await
    }

    async fn recover_listed(&self, list: &ListParams) -> Result<usize, RunnerError> {
        let (host, agent) = (&self.cfg.host_name, &self.cfg.agent_id);
        let failed = claim::fail_orphans_listed::<BackupJob, _>(
            &self.client,
            list,
            |job| is_orphaned(job, host, agent),
            |_| {
                serde_json::json!({"status": {
                    "phase": JobPhase::Failed,
                    "finishedAt": Time(jiff::Timestamp::now()),
                    "message": "interrupted: the agent restarted while this job ran; the partial stream was discarded (a replica on a host with resumable receive resumes on the retry), the controller retries",
                }})
            },
        )
        .await?;
        for job in &failed {
            warn!(%job, "failed a job interrupted by a restart");
        }
        Ok(failed.len())
    }

    /// Tries to claim a job; `None` if someone else got it (409) or it is no longer pending.
    pub async fn claim(&self, job: &BackupJob) -> Result<Option<BackupJob>, RunnerError> {
        if !is_claimable(job, &self.cfg.host_name) {
            return Ok(None);
        }
        let api: Api<BackupJob> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let mut claimed = job.clone();
        claimed.status = Some(claimed_status(
            job,
            &self.cfg.agent_id,
            jiff::Timestamp::now(),
        ));
        Ok(claim::claim(&api, &claimed).await?)
    }

    /// Re-checks the job's dataset against this host's ZfsHost include/exclude
    /// ([`job::check_offered`]).
    async fn check_offered(&self, dataset: &str) -> Result<(), JobError> {
        let name = &self.cfg.host_name;
        let host = Api::<ZfsHost>::all(self.client.clone())
            .get(name)
            .await
            .map_err(|e| JobError::Invalid(format!("own ZfsHost {name}: {e}")))?;
        job::check_offered(name, &host.spec.datasets, dataset)
    }

    async fn endpoint(&self, target_host: &str) -> Result<Endpoint, JobError> {
        let hosts: Api<ZfsHost> = Api::all(self.client.clone());
        let host = hosts
            .get(target_host)
            .await
            .map_err(|e| JobError::Invalid(format!("target ZfsHost {target_host}: {e}")))?;
        let ep = host.status.and_then(|s| s.agent_endpoint).ok_or_else(|| {
            JobError::Invalid(format!(
                "target ZfsHost {target_host} has no status.agentEndpoint (is its agent running?)"
            ))
        })?;
        let token = self
            .cfg
            .token
            .read()
            .map_err(|e| JobError::Invalid(format!("this agent's token: {e}")))?;
        let endpoint = Endpoint::new(&ep, token);
        match &self.cfg.settings.tls {
            None => Ok(endpoint),
            // The target must prove it is the node its ZfsHost's spec names (agents cannot
            // write specs; a forged `status.agentEndpoint` only changes where we connect).
            Some(tls) => {
                let peer = zetaback_core::peer_tls::PeerIdentity::node(&host.spec.node_name)
                    .map_err(|e| JobError::Invalid(format!("target ZfsHost {target_host}: {e}")))?;
                endpoint
                    .over_tls(tls, peer)
                    .map_err(|e| JobError::Invalid(e.to_string()))
            }
        }
    }

    /// Runs a claimed job and records the outcome.
    pub async fn execute(&self, job: BackupJob) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        let checked = self.check_offered(&job.spec.dataset.0).await;
        // An object-store target has no backup host: the upload goes to the bucket.
        let endpoint = match (checked, &job.spec.target.object_store) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(_)) => Ok(Endpoint::new("object-store", String::new())),
            (Ok(()), None) => self.endpoint(job.spec.target.host_name()).await,
        };
        let api: Api<BackupJob> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let progress = JobProgress::new();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let reporter = tokio::spawn(report_progress(
            api.clone(),
            job.name_any(),
            progress.clone(),
            stopped,
        ));
        let result = match endpoint {
            Ok(ep) => {
                // The store records the policy that made the backup: retention deletes only
                // its own policy's backups.
                let policy = format!(
                    "{}/{}",
                    job.namespace().unwrap_or_default(),
                    job.spec.policy
                );
                job::run_with_progress(
                    &self.zfs,
                    &self.cfg.host_name,
                    &job.spec,
                    Some(&policy),
                    &ep,
                    &self.cfg.settings,
                    &progress,
                )
                .await
            }
            Err(e) => Err(e),
        };
        // The last progress patch lands before the outcome's, never after it.
        let _ = stop.send(());
        let _ = reporter.await;
        let now = Time(jiff::Timestamp::now());
        let patch = match &result {
            Ok(JobOutcome {
                backup_id,
                bytes,
                sha256,
                bytes_per_second,
                replica,
                estimated_bytes,
                stream_bytes,
            }) => {
                info!(%backup_id, bytes, sha256 = sha256.as_deref().unwrap_or("none (a replica)"), bytes_per_second, secs = started.elapsed().as_secs_f64(), "backup succeeded");
                serde_json::json!({"status": {
                    "phase": JobPhase::Succeeded,
                    "bytes": bytes,
                    "bytesPerSecond": bytes_per_second,
                    "estimatedBytes": estimated_bytes,
                    "bytesSent": stream_bytes,
                    "etaSeconds": null,
                    "sha256": sha256,
                    "backupId": backup_id,
                    "finishedAt": now,
                    "message": match replica {
                        Some(r) => format!("received into {r}"),
                        None => format!("stored as {backup_id}"),
                    },
                }})
            }
            Err(e) => {
                warn!(error = %e, "backup failed");
                serde_json::json!({"status": {
                    "phase": JobPhase::Failed,
                    "finishedAt": now,
                    "bytesSent": progress.sent(),
                    "etaSeconds": null,
                    "message": truncate(&e.to_string(), 1024),
                }})
            }
        };
        api.patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        self.job_finished.notify_one();
        Ok(())
    }

    /// Watches and runs jobs ([`claim::watch_and_run`]) until the watch fails for good.
    pub async fn run(self: Arc<Self>) -> Result<(), RunnerError> {
        // One probe for both the orphan list and the watch.
        let (list, config) = claim::scoped(self.host_selector().await?.as_deref());
        let n = self.recover_listed(&list).await?;
        if n > 0 {
            info!(failed = n, "failed jobs interrupted by a restart");
        }
        claim::watch_and_run(self.clone(), self.client.clone(), config).await;
        Err(RunnerError::WatchEnded)
    }

    /// The field selector of this host's jobs when the CRD has `spec.host` as a selectable
    /// field (a one-item list tells); `None` otherwise: then every job is read (and filtered
    /// here).
    async fn host_selector(&self) -> Result<Option<String>, RunnerError> {
        let fields = host_field_selector(&self.cfg.host_name);
        Ok(crate::claim::selectable::<BackupJob>(&self.client, &fields).await?)
    }
}

/// The BackupJobs as the shared claim loop drives them: at most `concurrency` at once, one per
/// dataset.
impl claim::Worker for Runner {
    type Object = BackupJob;
    type Error = RunnerError;
    const KIND: &'static str = "BackupJob";

    fn capacity(&self) -> usize {
        self.cfg.concurrency
    }

    fn claimable(&self, job: &BackupJob) -> bool {
        is_claimable(job, &self.cfg.host_name)
    }

    fn lock(&self, job: &BackupJob) -> String {
        job.spec.dataset.0.clone()
    }

    async fn try_claim(&self, job: &BackupJob) -> Result<Option<BackupJob>, RunnerError> {
        self.claim(job).await
    }

    fn span(&self, job: &BackupJob) -> tracing::Span {
        info_span!("backup_job", job = %claim::key(job), dataset = %job.spec.dataset.0, r#type = ?job.spec.backup_type, snapshot = %job.spec.snapshot)
    }

    async fn run_claimed(self: Arc<Self>, job: BackupJob) -> Result<(), RunnerError> {
        self.execute(job).await
    }
}

/// How often a running job's progress is written to its status.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Writes the job's progress (`estimatedBytes`, `bytesSent`, `etaSeconds`) to its status
/// every [`PROGRESS_EVERY`] while it moves, until `stop`. A failed write is logged and tried
/// again at the next tick: progress is advisory.
async fn report_progress(
    api: Api<BackupJob>,
    name: String,
    progress: JobProgress,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let report = progress.report();
        if last == Some(report) || report == ProgressReport::default() {
            continue;
        }
        let patch = serde_json::json!({ "status": job_progress::status_fields(&report) });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => last = Some(report),
            Err(e) => warn!(error = %e, "could not write the job's progress"),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use zetaback_core::api::backup_policy::{Compression, Target};
    use zetaback_core::api::{BackupJobSpec, BackupType};

    fn job(host: &str, status: Option<BackupJobStatus>) -> BackupJob {
        let mut j = BackupJob::new(
            "j1",
            BackupJobSpec {
                policy: "p".into(),
                host: host.into(),
                dataset: "tank/db".into(),
                backup_type: BackupType::Full,
                base_snapshot: None,
                snapshot: "zetaback-1".into(),
                target: Target {
                    host: Some("backup-1".into()),
                    path: Some("/srv".into()),
                    dataset: None,
                    object_store: None,
                },
                compression: Compression::None,
                intermediates: false,
            },
        );
        j.status = status;
        j
    }

    #[test]
    fn the_field_selector_names_this_host() {
        assert_eq!(
            host_field_selector("db-1.example"),
            "spec.host=db-1.example"
        );
        assert_eq!(host_field_selector("a,b=c\\"), "spec.host=a\\,b\\=c\\\\");
    }

    #[test]
    fn claimable_and_orphaned() {
        assert!(is_claimable(&job("h1", None), "h1"));
        assert!(!is_claimable(&job("h2", None), "h1"));
        let running = BackupJobStatus {
            phase: JobPhase::Running,
            claimed_by: Some("h1@node".into()),
            ..Default::default()
        };
        assert!(!is_claimable(&job("h1", Some(running.clone())), "h1"));
        assert!(is_orphaned(
            &job("h1", Some(running.clone())),
            "h1",
            "h1@node"
        ));
        assert!(!is_orphaned(&job("h1", Some(running)), "h1", "other"));
    }

    #[test]
    fn claiming_counts_attempts() {
        let j = job(
            "h1",
            Some(BackupJobStatus {
                attempts: 2,
                ..Default::default()
            }),
        );
        let s = claimed_status(&j, "h1@node", jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, JobPhase::Running);
        assert_eq!(s.attempts, 3);
        assert_eq!(s.claimed_by.as_deref(), Some("h1@node"));
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
