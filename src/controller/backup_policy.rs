//! The BackupPolicy reconciler: gathers the inputs (ZfsHosts' reports, the backup host's
//! catalogue, this policy's BackupJobs), asks the pure [`crate::policy`] module what is due,
//! what expired and who violates, then creates BackupJobs, runs retention through the backup
//! host's agent, and writes a compact status. It requeues at the next deadline.
//!
//! [`plan`] is the pure part (no I/O): everything else here only fetches and applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sha2::Digest;
use tracing::{info, warn};

use super::conditions::{self, Wanted};
use super::store_client::{KnownBackup, StoreView};
use super::{Context, Error, Reconciled, status};
use crate::api::backup_policy::{
    BACKUP_NOW_ANNOTATION, BACKUP_NOW_REQUEST_ANNOTATION, BackupNowRequest, DatasetVerification,
    MAX_LISTED_VERIFICATIONS, QuarantinedBackup, VERIFY_NOW_ANNOTATION, VerifyNowRequest,
    Violation, ViolationReason, parse_backup_now,
};
use crate::api::condition::{COMPLIANT, OVERLAPPING, READY};
use crate::api::{
    BackupJob, BackupJobSpec, BackupPolicy, BackupPolicyStatus, BackupType, JobPhase, ZfsHost,
};
use crate::policy::{self, DatasetState, HostState, JobState, PolicyRules};
use crate::selection::{PolicyMatcher, labels_match};
use crate::tenancy;
use crate::wire::VerifyRequest;

/// The label that ties a BackupJob to its policy.
pub const POLICY_LABEL: &str = "zetaback.io/policy";
/// At most this many violations are listed in status (`violators` counts all).
pub const MAX_LISTED_VIOLATIONS: usize = 50;
/// How soon a passed deadline that is held (host unreachable, retry backoff) is looked at.
pub const HELD_RETRY: Duration = Duration::from_secs(15);
/// Re-evaluate at least this often, even when nothing is due (hosts may stop reporting).
pub const MAX_REQUEUE: Duration = Duration::from_secs(60);
/// How soon a due backup that waits for a slot is looked at again when no event of this
/// policy's own jobs would wake it: the target's slots are held by other policies' jobs, or a
/// `backup-now` request still has datasets to start.
pub const SLOT_RETRY: Duration = Duration::from_secs(5);

/// Everything [`plan`] looks at.
pub struct Inputs<'a> {
    pub policy: &'a BackupPolicy,
    pub rules: &'a PolicyRules,
    pub hosts: &'a [Arc<ZfsHost>],
    pub jobs: &'a [Arc<BackupJob>],
    /// The backup host's catalogue (for the policy's hosts); `None` when it could not be read.
    pub catalogue: Option<&'a StoreView>,
    /// A host whose agent has not reported for this long is unreachable.
    pub host_stale_after: Duration,
    /// The `backup-now` requests not yet acted on (queued: each is honoured).
    pub backup_now: &'a [BackupNowRequest],
    /// BackupJobs of other policies in flight (Pending or Running) into this policy's target
    /// host: `concurrency.perTarget` counts them too.
    pub target_in_flight_elsewhere: u32,
    pub now: Timestamp,
}

/// What to do and what to report.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<BackupJob>,
    /// (source host, dataset, backup id)
    pub delete: Vec<(String, String, String)>,
    pub archive: Vec<(String, String, String)>,
    pub status: BackupPolicyStatus,
    /// Violations as (host, dataset, reason): for events on start and end.
    pub violators: Vec<(String, String, ViolationReason)>,
    /// The earliest deadline still in the future (stable between reconciles, so an unchanged
    /// world writes no status).
    pub next_due: Option<Timestamp>,
    /// When to look again: the next future deadline, a slow retry of a held one, or the
    /// moment a reachable host would turn unreachable if its agent stopped reporting.
    pub wake_at: Option<Timestamp>,
    /// Set when the catalogue could not be read.
    pub store_problem: Option<String>,
    /// The newest stored backup of each covered dataset that has one: (host, dataset, when).
    pub last_backups: Vec<(String, String, Timestamp)>,
    /// Covered datasets that other policies also store backups of: (host, dataset, the other
    /// policies as `<namespace>/<name>`). Each policy keeps, and expires, only its own.
    pub overlaps: Vec<(String, String, Vec<String>)>,
    /// Stored backups due to be re-read by the store (`spec.verify`), one request per dataset.
    pub verify: Vec<VerifyRequest>,
    /// Quarantined backups of the covered datasets.
    pub quarantined: usize,
    /// The covered datasets, (host, dataset).
    pub covered: Vec<(String, String)>,
}

fn host_state(host: &ZfsHost, now: Timestamp, stale_after: Duration) -> HostState {
    if host.spec.paused {
        return HostState::Paused;
    }
    let seen = host
        .status
        .as_ref()
        .and_then(|s| s.last_seen.as_ref())
        .map(|t| t.0);
    let stale = jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::MAX);
    match seen {
        Some(t) if now.duration_since(t) <= stale => HostState::Reachable,
        Some(t) => HostState::Unreachable { since: t },
        None => HostState::Unreachable {
            since: host.creation_timestamp().map(|t| t.0).unwrap_or(now),
        },
    }
}

/// What a selected host reports, for [`policy::host_violation`]; `datasets` counts the
/// reported datasets the policy covers.
fn host_report(host: &ZfsHost, datasets: usize) -> policy::HostReport {
    if host.spec.paused {
        return policy::HostReport::Paused;
    }
    match host.status.as_ref().and_then(|s| s.last_seen.as_ref()) {
        Some(t) => policy::HostReport::Reported {
            last_seen: t.0,
            datasets,
        },
        None => policy::HostReport::NeverReported {
            created: host.creation_timestamp().map(|t| t.0),
        },
    }
}

/// The backup the newest succeeded job of one dataset says it stored.
fn last_recorded<'a>(jobs: &[&'a BackupJob]) -> Option<policy::RecordedBackup<'a>> {
    jobs.iter()
        .filter_map(|j| {
            let st = j.status.as_ref()?;
            (st.phase == JobPhase::Succeeded).then_some(())?;
            let started = st
                .started_at
                .as_ref()
                .map(|t| t.0)
                .or_else(|| j.creation_timestamp().map(|t| t.0))?;
            Some(policy::RecordedBackup {
                id: st.backup_id.as_deref()?,
                kind: j.spec.backup_type,
                started,
            })
        })
        .max_by_key(|r| r.started)
}

/// One job as the history logic sees it.
fn job_record(j: &BackupJob) -> policy::JobRecord {
    let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let outcome = match phase {
        JobPhase::Pending | JobPhase::Running => policy::Outcome::InFlight,
        JobPhase::Succeeded => policy::Outcome::Succeeded,
        JobPhase::Failed => policy::Outcome::Failed,
    };
    let at = j
        .status
        .as_ref()
        .and_then(|s| s.finished_at.as_ref().map(|t| t.0))
        .or_else(|| j.creation_timestamp().map(|t| t.0))
        .unwrap_or(Timestamp::MIN);
    policy::JobRecord { outcome, at }
}

/// The `requestedAt` of the `backup-now` request that forced this job, if one did.
pub fn forced_by(job: &BackupJob) -> Option<Timestamp> {
    job.annotations()
        .get(BACKUP_NOW_REQUEST_ANNOTATION)?
        .parse()
        .ok()
}

/// Whether a `backup-now` request is done for one dataset: a job it forced exists (created,
/// running or finished), or the store holds a backup of the asked kind (any kind when it
/// named none) taken at or after the request.
fn backup_now_done(
    request: &BackupNowRequest,
    jobs: &[&BackupJob],
    catalogue: &policy::DatasetBackups,
) -> bool {
    // A job forced by this request or a later one (requests of one dataset are merged into
    // one job, annotated with the newest) of the asked kind.
    let forced = jobs.iter().any(|j| {
        forced_by(j).is_some_and(|at| at >= request.requested_at)
            && (request.backup_type != Some(BackupType::Full)
                || j.spec.backup_type == BackupType::Full)
    });
    let newest = match request.backup_type {
        Some(BackupType::Full) => catalogue.newest_full(),
        _ => catalogue.newest(),
    };
    forced || newest.is_some_and(|b| b.created >= request.requested_at)
}

fn job_state(jobs: &[&BackupJob]) -> JobState {
    let records: Vec<policy::JobRecord> = jobs.iter().map(|j| job_record(j)).collect();
    JobState::from_history(&records)
}

/// The finished jobs of a policy that its `jobHistory` no longer keeps (per dataset; never
/// one in flight): their names and uids.
pub fn jobs_to_prune(
    policy: &BackupPolicy,
    jobs: &[Arc<BackupJob>],
) -> Vec<(String, Option<String>)> {
    let limits = policy::HistoryLimits {
        successful: policy.spec.job_history.successful,
        failed: policy.spec.job_history.failed,
    };
    let mut by_dataset: HashMap<(&str, &str), Vec<&BackupJob>> = HashMap::new();
    for j in jobs {
        by_dataset
            .entry((j.spec.host.as_str(), j.spec.dataset.as_str()))
            .or_default()
            .push(j);
    }
    let mut out = Vec::new();
    for list in by_dataset.values() {
        let records: Vec<policy::JobRecord> = list.iter().map(|j| job_record(j)).collect();
        for i in policy::prune_history(&records, limits) {
            let j = list[i];
            // Only jobs the apiserver has (a job we just created has no uid yet).
            if let Some(uid) = j.metadata.uid.clone() {
                out.push((j.name_any(), Some(uid)));
            }
        }
    }
    out.sort();
    out
}

/// Jobs the controller created or deleted that its watch has not shown yet, per policy: a
/// reconcile reads the watch cache, so without these a job created a moment ago would look
/// absent (and be created again under a new name), or a deleted one present.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: std::sync::Mutex<HashMap<(String, String), Expected>>,
}

#[derive(Debug, Default)]
struct Expected {
    created: HashMap<String, (Arc<BackupJob>, std::time::Instant)>,
    deleted: HashMap<String, std::time::Instant>,
}

/// An expectation the watch never confirms (the job was deleted at once, a lost event) is
/// dropped after this long.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Expected>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The policy's jobs as the controller knows them: the cached ones, less those it
    /// deleted, plus those it created that the cache does not show yet. Expectations the
    /// cache confirms (or that are older than [`EXPECTATION_TTL`]) are dropped.
    pub fn adjust(
        &self,
        namespace: &str,
        policy: &str,
        mut cached: Vec<Arc<BackupJob>>,
    ) -> Vec<Arc<BackupJob>> {
        let mut all = self.lock();
        let key = (namespace.to_owned(), policy.to_owned());
        let Some(e) = all.get_mut(&key) else {
            return cached;
        };
        let names: std::collections::HashSet<String> =
            cached.iter().map(|j| j.name_any()).collect();
        e.created
            .retain(|name, (_, at)| !names.contains(name) && at.elapsed() < EXPECTATION_TTL);
        e.deleted
            .retain(|name, at| names.contains(name) && at.elapsed() < EXPECTATION_TTL);
        cached.retain(|j| !e.deleted.contains_key(&j.name_any()));
        cached.extend(e.created.values().map(|(j, _)| j.clone()));
        if e.created.is_empty() && e.deleted.is_empty() {
            all.remove(&key);
        }
        cached
    }

    /// How many jobs of policies other than `namespace/policy` are in flight into the backup
    /// host `target`: those in `cached` (the watch cache's jobs of other policies at that
    /// target) plus those other policies created that the cache does not show yet.
    pub fn in_flight_elsewhere(
        &self,
        namespace: &str,
        policy: &str,
        target: &str,
        cached: &[Arc<BackupJob>],
    ) -> u32 {
        let seen: std::collections::HashSet<(Option<&str>, String)> = cached
            .iter()
            .map(|j| (j.metadata.namespace.as_deref(), j.name_any()))
            .collect();
        let mut n = cached.iter().filter(|j| in_flight(j)).count();
        let all = self.lock();
        for ((ns, p), e) in all.iter() {
            if ns == namespace && p == policy {
                continue;
            }
            n += e
                .created
                .values()
                .filter(|(j, at)| {
                    at.elapsed() < EXPECTATION_TTL
                        && j.spec.target.key() == target
                        && in_flight(j)
                        && !seen.contains(&(j.metadata.namespace.as_deref(), j.name_any()))
                })
                .count();
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub fn created(&self, namespace: &str, policy: &str, job: BackupJob) {
        let mut all = self.lock();
        let e = all
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        e.created
            .insert(job.name_any(), (Arc::new(job), std::time::Instant::now()));
    }

    pub fn deleted(&self, namespace: &str, policy: &str, name: &str) {
        let mut all = self.lock();
        let e = all
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        e.deleted.insert(name.to_owned(), std::time::Instant::now());
    }
}

/// Whether a job belongs to the policy `namespace/policy`.
fn is_own_job(job: &BackupJob, namespace: &str, policy: &str) -> bool {
    job.metadata.namespace.as_deref() == Some(namespace)
        && job.labels().get(POLICY_LABEL).map(String::as_str) == Some(policy)
}

/// Whether a job is Pending or Running.
fn in_flight(job: &BackupJob) -> bool {
    matches!(
        job.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        JobPhase::Pending | JobPhase::Running
    )
}

fn short_hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    hex::encode(&digest[..4])
}

/// A deterministic job name: the same policy, dataset, kind and time give the same name, so
/// a second attempt to create it is refused by the apiserver instead of duplicating it.
pub fn job_name(
    policy: &str,
    host: &str,
    dataset: &str,
    kind: BackupType,
    at: Timestamp,
) -> String {
    let prefix: String = policy.chars().take(40).collect();
    let k = match kind {
        BackupType::Full => "full",
        BackupType::Incremental => "incr",
    };
    format!(
        "{}-{}-{k}-{}",
        prefix.trim_end_matches(['-', '.']),
        short_hash(&format!("{host}/{dataset}")),
        at.as_second()
    )
}

/// Whether the policy covers this host (by name or label selector).
pub fn selects_host(policy: &BackupPolicy, host: &ZfsHost) -> bool {
    match (&policy.spec.hosts.names, &policy.spec.hosts.selector) {
        (Some(names), _) => names.iter().any(|n| n.as_str() == host.name_any()),
        (None, Some(sel)) => labels_match(sel, host.labels()),
        (None, None) => false,
    }
}

/// A due backup of one dataset, waiting for the caps.
struct Candidate {
    /// Since when it is due (`Timestamp::MIN` for a first full or a forced one).
    since: Timestamp,
    host: String,
    dataset: String,
    due: policy::DueBackup,
    /// The `requestedAt` of the `backup-now` request that forces it, if one does.
    request: Option<Timestamp>,
}

/// The pure decision for one policy.
pub fn plan(inputs: &Inputs<'_>) -> Result<Plan, crate::selection::PatternError> {
    let policy = inputs.policy;
    let spec = &policy.spec;
    let now = inputs.now;
    let matcher = PolicyMatcher::new(&spec.datasets)?;
    let mut out = Plan::default();

    let hosts: Vec<&ZfsHost> = inputs
        .hosts
        .iter()
        .map(Arc::as_ref)
        .filter(|h| selects_host(policy, h))
        .collect();

    let mut jobs_by_dataset: HashMap<(&str, &str), Vec<&BackupJob>> = HashMap::new();
    for j in inputs.jobs {
        jobs_by_dataset
            .entry((j.spec.host.0.as_str(), j.spec.dataset.0.as_str()))
            .or_default()
            .push(j);
    }
    let mut in_flight_per_host: BTreeMap<String, u32> = BTreeMap::new();
    for j in inputs.jobs {
        let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if matches!(phase, JobPhase::Pending | JobPhase::Running) {
            *in_flight_per_host.entry(j.spec.host.0.clone()).or_default() += 1;
        }
    }
    let own_in_flight: u32 = in_flight_per_host.values().sum();
    let mut in_flight_target = own_in_flight.saturating_add(inputs.target_in_flight_elsewhere);
    let covered_since = policy.creation_timestamp().map(|t| t.0);
    let empty = StoreView::default();
    let catalogue = inputs.catalogue.unwrap_or(&empty);
    // The policy acts only on its own backups (the manifest names the policy that made each).
    let owner = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    // Due backups, started oldest-due first once every dataset was looked at (so the caps
    // never starve a dataset that sorts late).
    let mut candidates: Vec<Candidate> = Vec::new();
    // Datasets the pending `backup-now` request selected that still wait for their job (a
    // job in flight, the host unreachable, or no free slot): while any does, the request is
    // not recorded as handled.
    let mut request_waiting = 0usize;

    let mut dataset_count = 0;
    let mut violations: Vec<Violation> = Vec::new();
    let mut last_backup: Option<Timestamp> = None;
    let mut bytes_stored: u64 = 0;
    let verify = verify_settings(policy);
    let rpo = spec
        .objectives
        .as_ref()
        .and_then(|o| o.rpo.as_ref())
        .and_then(|d| d.duration().ok())
        .and_then(|d| jiff::SignedDuration::try_from(d).ok());
    let verify_now = pending_verify_now(policy);
    let mut verification: Vec<DatasetVerification> = Vec::new();

    // A named host with no ZfsHost: nothing is known of its datasets.
    for name in spec.hosts.names.iter().flatten() {
        if !hosts.iter().any(|h| h.name_any() == name.as_str()) {
            host_level(
                &mut violations,
                &mut out,
                name.as_str(),
                policy::HostReport::Missing,
                now,
                inputs.host_stale_after,
            );
        }
    }
    for host in &hosts {
        let host_name = host.name_any();
        let state = host_state(host, now, inputs.host_stale_after);
        let mut covered = 0usize;
        if state == HostState::Reachable {
            let seen = host
                .status
                .as_ref()
                .and_then(|s| s.last_seen.as_ref())
                .map(|t| t.0);
            if let Some(stale_at) = seen.and_then(|t| t.checked_add(inputs.host_stale_after).ok()) {
                out.wake_at = Some(out.wake_at.map_or(stale_at, |w| w.min(stale_at)));
            }
        }
        let datasets = host
            .status
            .as_ref()
            .map(|s| s.datasets.as_slice())
            .unwrap_or(&[]);
        for ds in datasets
            .iter()
            .filter(|d| !d.excluded && matcher.matches(&d.name, d.class.as_deref()))
        {
            dataset_count += 1;
            covered += 1;
            out.covered.push((host_name.clone(), ds.name.clone()));
            let others = catalogue.other_owners(&host_name, &ds.name, &owner);
            if !others.is_empty() {
                out.overlaps
                    .push((host_name.clone(), ds.name.clone(), others));
            }
            let cat = match catalogue.owned_by(&host_name, &ds.name, &owner) {
                Ok(c) => c,
                Err(e) => {
                    // Nothing is scheduled or deleted on a store that does not add up, and the
                    // dataset is a violator: its backups cannot be vouched for.
                    warn!(host = %host_name, dataset = %ds.name, error = %e, "inconsistent catalogue; skipped");
                    out.violators.push((
                        host_name.clone(),
                        ds.name.clone(),
                        ViolationReason::ChainBroken,
                    ));
                    violations.push(Violation {
                        host: host_name.clone(),
                        dataset: ds.name.clone(),
                        reason: ViolationReason::ChainBroken,
                        since: None,
                        message: Some(format!(
                            "the stored backups cannot be read as a catalogue: {e}"
                        )),
                    });
                    continue;
                }
            };
            bytes_stored += cat.bytes();
            // The last backup (status, metrics) is the newest one that restores: a stored
            // incremental whose base is gone is no backup.
            if let Some(newest) = cat.newest_restorable() {
                last_backup = Some(last_backup.map_or(newest.created, |t| t.max(newest.created)));
                out.last_backups
                    .push((host_name.clone(), ds.name.clone(), newest.created));
            }
            let jobs = jobs_by_dataset
                .get(&(host_name.as_str(), ds.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            // A request forces each dataset it selects until that dataset's job exists. The
            // requests pending for one dataset are merged into one job: a full if any asks for
            // one, marked with the newest request (which marks the older ones done too).
            let requests: Vec<&BackupNowRequest> = inputs
                .backup_now
                .iter()
                .filter(|r| r.host.as_deref().is_none_or(|h| h == host_name))
                .filter(|r| r.dataset.as_deref().is_none_or(|d| d == ds.name))
                .filter(|r| !backup_now_done(r, jobs, cat))
                .collect();
            let request = requests.iter().map(|r| r.requested_at).max();
            let forced = request.map(|_| {
                if requests
                    .iter()
                    .any(|r| r.backup_type == Some(BackupType::Full))
                {
                    BackupType::Full
                } else {
                    BackupType::Incremental
                }
            });
            let dstate = DatasetState {
                catalogue: cat,
                source_snapshots: &ds.snapshots,
                host: state,
                jobs: job_state(jobs),
                covered_since,
                forced,
                last_recorded: last_recorded(jobs),
            };
            let mut p = policy::evaluate(inputs.rules, &dstate, now);
            if let Some(rpo) = rpo
                && state != HostState::Paused
                && let Some(f) = policy::rpo_violation(cat, rpo, covered_since, now)
            {
                p.violations.push(f);
            }
            for f in &p.violations {
                out.violators
                    .push((host_name.clone(), ds.name.clone(), f.reason));
                violations.push(Violation {
                    host: host_name.clone(),
                    dataset: ds.name.clone(),
                    reason: f.reason,
                    since: f.since.map(Time),
                    message: Some(f.message.clone()),
                });
            }
            if inputs.catalogue.is_none() {
                continue; // without the store's view nothing is scheduled or deleted
            }
            let asked = verify_now
                .as_ref()
                .filter(|r| r.selects(&host_name, &ds.name))
                .map(|r| r.requested_at);
            if let Some(v) =
                verify_dataset(&mut out, (verify, asked), &host_name, &ds.name, cat, now)
            {
                verification.push(v);
            }
            // When to look at this dataset again. A job created now, one in flight, or one
            // waiting for a free slot is woken by the BackupJob watch; a future deadline by
            // its timer; a deadline that passed but is held (host unreachable, backoff) by a
            // slow poll, not a busy one.
            let mut wake = None;
            if p.due.next_due > now {
                out.next_due = Some(
                    out.next_due
                        .map_or(p.due.next_due, |t| t.min(p.due.next_due)),
                );
                wake = Some(p.due.next_due);
            } else if p.due.due.is_none() && p.due.held != Some(policy::Hold::JobInFlight) {
                wake = now.checked_add(HELD_RETRY).ok();
            }
            if let Some(w) = wake {
                out.wake_at = Some(out.wake_at.map_or(w, |t| t.min(w)));
            }
            match p.due.due {
                Some(due) => {
                    let since = match due.reason {
                        // Never backed up, or asked for: before anything merely due again.
                        policy::DueReason::NoFull
                        | policy::DueReason::Forced
                        | policy::DueReason::Quarantined { .. } => Timestamp::MIN,
                        _ => p.due.next_due,
                    };
                    candidates.push(Candidate {
                        since,
                        host: host_name.clone(),
                        dataset: ds.name.clone(),
                        due,
                        request,
                    });
                }
                // A paused host gets no jobs: a request does not wait for it. Any other hold
                // (a job in flight, the host unreachable) ends, and the request is done then.
                None if request.is_some() && state != HostState::Paused => request_waiting += 1,
                None => {}
            }
            for id in p.retention.delete {
                out.delete.push((host_name.clone(), ds.name.clone(), id));
            }
            for id in p.retention.archive {
                out.archive.push((host_name.clone(), ds.name.clone(), id));
            }
        }
        host_level(
            &mut violations,
            &mut out,
            &host_name,
            host_report(host, covered),
            now,
            inputs.host_stale_after,
        );
    }

    candidates.sort_by(|a, b| (a.since, &a.host, &a.dataset).cmp(&(b.since, &b.host, &b.dataset)));
    // Whether a due backup waits for a slot that no event of this policy's jobs frees.
    let mut wake_soon = false;
    for c in candidates {
        let per_host = in_flight_per_host.entry(c.host.clone()).or_default();
        let target_full = in_flight_target >= spec.concurrency.per_target;
        if target_full || *per_host >= spec.concurrency.per_host {
            if c.request.is_some() {
                request_waiting += 1;
                wake_soon = true;
            }
            // The target's slots are (partly) held by other policies' jobs, whose changes do
            // not trigger this policy.
            if target_full && inputs.target_in_flight_elsewhere > 0 {
                wake_soon = true;
            }
            continue;
        }
        *per_host += 1;
        in_flight_target += 1;
        let mut job = new_job(policy, &c.host, &c.dataset, &c.due, now);
        if let Some(at) = c.request {
            job.annotations_mut()
                .insert(BACKUP_NOW_REQUEST_ANNOTATION.to_owned(), at.to_string());
        }
        out.create.push(job);
    }
    if wake_soon
        && inputs.catalogue.is_some()
        && let Ok(soon) = now.checked_add(SLOT_RETRY)
    {
        out.wake_at = Some(out.wake_at.map_or(soon, |w| w.min(soon)));
    }

    // A dataset is one violator however many reasons it has.
    let mut violator_keys: Vec<(&str, &str)> = violations
        .iter()
        .map(|v| (v.host.as_str(), v.dataset.as_str()))
        .collect();
    violator_keys.dedup();
    let violator_count = violator_keys.len();
    violations.truncate(MAX_LISTED_VIOLATIONS);
    // Datasets with quarantined backups first.
    verification.sort_by(|a, b| {
        (a.quarantined.is_empty(), &a.host, &a.dataset).cmp(&(
            b.quarantined.is_empty(),
            &b.host,
            &b.dataset,
        ))
    });
    verification.truncate(MAX_LISTED_VERIFICATIONS);
    out.status = BackupPolicyStatus {
        observed_generation: policy.meta().generation,
        hosts: i32::try_from(hosts.len()).unwrap_or(i32::MAX),
        datasets: dataset_count,
        violators: i32::try_from(violator_count).unwrap_or(i32::MAX),
        violations,
        last_backup: last_backup.map(Time),
        next_due: out.next_due.map(Time),
        bytes_stored: inputs.catalogue.map(|_| bytes_stored),
        // Handled once every dataset the request selected has its job.
        backup_now_handled: match (
            inputs.backup_now.iter().map(|r| r.requested_at).max(),
            inputs.catalogue,
        ) {
            (Some(newest), Some(_)) if request_waiting == 0 => Some(Time(newest)),
            _ => policy
                .status
                .as_ref()
                .and_then(|s| s.backup_now_handled.clone()),
        },
        last_evaluated: None,
        // Acted on once the store was asked (only with its catalogue read).
        verify_now_handled: match (&verify_now, inputs.catalogue) {
            (Some(r), Some(_)) => Some(Time(r.requested_at)),
            _ => policy
                .status
                .as_ref()
                .and_then(|s| s.verify_now_handled.clone()),
        },
        verification,
        recovery: Vec::new(),
        conditions: Vec::new(),
    };
    if inputs.catalogue.is_none() {
        out.store_problem = Some("the backup host's catalogue could not be read".into());
    }
    Ok(out)
}

/// The policy's verification period and rate (`spec.verify`), if it has one that parses
/// (the schema and [`crate::api::BackupPolicySpec::check`] make sure it does).
fn verify_settings(policy: &BackupPolicy) -> Option<(jiff::SignedDuration, u64)> {
    let (every, rate) = policy.spec.verify.as_ref()?.parsed().ok()?;
    Some((jiff::SignedDuration::try_from(every).ok()?, rate))
}

/// The policy's `verify-now` request, if any (an unreadable one is logged and ignored).
fn pending_verify_now(policy: &BackupPolicy) -> Option<VerifyNowRequest> {
    let text = policy.annotations().get(VERIFY_NOW_ANNOTATION)?;
    match serde_json::from_str(text) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable {VERIFY_NOW_ANNOTATION} annotation");
            None
        }
    }
}

/// The rate of an on-demand verification of a policy without `spec.verify`.
const DEFAULT_VERIFY_RATE: u64 = 50 * 1024 * 1024;

/// Plans the verification of one dataset (a store request when backups are due, the next
/// deadline as a wake-up) and its status entry: with `spec.verify`, when a `verify-now`
/// request asked at `asked` covers it, or when it has quarantined backups (found before
/// `verify` was removed).
fn verify_dataset(
    out: &mut Plan,
    (verify, asked): (Option<(jiff::SignedDuration, u64)>, Option<Timestamp>),
    host: &str,
    dataset: &str,
    cat: &policy::DatasetBackups,
    now: Timestamp,
) -> Option<DatasetVerification> {
    let quarantined: Vec<QuarantinedBackup> = cat
        .quarantined()
        .map(|q| QuarantinedBackup {
            backup: q.id.clone(),
            found: q.verified_at.map(Time),
            problem: "its stored stream no longer matches its manifest (sha256 or size)".into(),
            dependents: cat
                .dependents(&q.id)
                .into_iter()
                .take(100)
                .map(str::to_owned)
                .collect(),
        })
        .collect();
    out.quarantined += quarantined.len();
    let mut entry = DatasetVerification {
        host: host.to_owned(),
        dataset: dataset.to_owned(),
        last_verified: None,
        next_verify: None,
        quarantined: quarantined.into_iter().rev().take(20).collect(),
        pending: 0,
    };
    let every = verify.map(|(every, _)| every);
    let Some((vp, since)) = policy::plan_verification(cat, every, asked, now) else {
        return (!entry.quarantined.is_empty()).then_some(entry);
    };
    let rate = verify.map_or(DEFAULT_VERIFY_RATE, |(_, rate)| rate);
    // What a `verify-now` request waits for: its own backups, not the periodic ones (which,
    // with a short period, are due again before the results are seen).
    let pending = match asked {
        Some(at) => policy::plan_verify_now(cat, at).due.len(),
        None => vp.due.len(),
    };
    entry.pending = u32::try_from(pending).unwrap_or(u32::MAX);
    entry.last_verified = vp.last_verified.map(Time);
    entry.next_verify = if vp.due.is_empty() {
        vp.next_due.map(Time)
    } else {
        Some(Time(now))
    };
    if let Some(next) = vp.next_due {
        out.wake_at = Some(out.wake_at.map_or(next, |w| w.min(next)));
    }
    if !vp.due.is_empty() {
        out.verify.push(VerifyRequest {
            host: host.to_owned(),
            dataset: dataset.to_owned(),
            ids: vp.due,
            rate,
            not_verified_since: since,
        });
        // Results reach the catalogue within its revalidation period: look again then.
        if let Ok(soon) = now.checked_add(VERIFY_RECHECK) {
            out.wake_at = Some(out.wake_at.map_or(soon, |w| w.min(soon)));
        }
    }
    Some(entry)
}

/// How soon a policy that asked its store to verify looks for the results.
pub const VERIFY_RECHECK: Duration = Duration::from_secs(30);

/// Records the violation of a host as a whole (see [`policy::host_violation`]), if it has one:
/// the violation's dataset is empty.
fn host_level(
    violations: &mut Vec<Violation>,
    out: &mut Plan,
    host: &str,
    report: policy::HostReport,
    now: Timestamp,
    stale_after: Duration,
) {
    let stale = jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::MAX);
    if let Some(f) = policy::host_violation(report, now, stale) {
        out.violators
            .push((host.to_owned(), String::new(), f.reason));
        violations.push(Violation {
            host: host.to_owned(),
            dataset: String::new(),
            reason: f.reason,
            since: f.since.map(Time),
            message: Some(f.message),
        });
    }
}

/// How long to wait before looking again: until `wake_at` (at least 1 s, so a deadline that
/// has passed — a due backup held by a job in flight — is looked at again soon, not hammered),
/// and never more than [`MAX_REQUEUE`].
pub fn requeue_after(wake_at: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(at) = wake_at else {
        return MAX_REQUEUE;
    };
    let secs = at.duration_since(now).as_secs_f64();
    Duration::from_secs_f64(secs.clamp(1.0, MAX_REQUEUE.as_secs_f64()))
}

/// Whether `status.lastEvaluated` must be refreshed: missing, or `heartbeat` old (or from the
/// future: a clock that went back).
pub fn heartbeat_due(last: Option<&Time>, now: Timestamp, heartbeat: Duration) -> bool {
    let Some(last) = last else { return true };
    let age = now.duration_since(last.0);
    age.is_negative() || age.unsigned_abs() >= heartbeat
}

/// Violations that started and ended between two statuses, as (host, dataset, reason).
pub fn violation_changes<'a>(
    before: &'a [Violation],
    after: &'a [Violation],
) -> (Vec<&'a Violation>, Vec<&'a Violation>) {
    let key = |v: &Violation| (v.host.clone(), v.dataset.clone(), v.reason);
    let old: std::collections::HashSet<_> = before.iter().map(key).collect();
    let new: std::collections::HashSet<_> = after.iter().map(key).collect();
    let started = after.iter().filter(|v| !old.contains(&key(v))).collect();
    let ended = before.iter().filter(|v| !new.contains(&key(v))).collect();
    (started, ended)
}

/// Emits a Warning event when a violation starts and a Normal one when it ends (best effort:
/// a failed event is logged, never fails the reconcile).
async fn publish_violation_events(
    ctx: &Context,
    policy: &BackupPolicy,
    before: &[Violation],
    after: &[Violation],
) {
    use kube::runtime::events::{Event, EventType};
    let (started, ended) = violation_changes(before, after);
    let reference = policy.object_ref(&());
    let events = started
        .into_iter()
        .map(|v| (EventType::Warning, "ViolationStarted", v))
        .chain(
            ended
                .into_iter()
                .map(|v| (EventType::Normal, "ViolationEnded", v)),
        );
    for (type_, reason, v) in events {
        let note = format!(
            "{}:{} {:?}{}",
            v.host,
            v.dataset,
            v.reason,
            v.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Evaluate".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "could not publish event {reason}");
        }
    }
}

/// The `backup-now` requests on the policy not yet acted on, oldest first (an unreadable
/// annotation is logged and ignored).
fn pending_backup_now(policy: &BackupPolicy) -> Vec<BackupNowRequest> {
    let Some(text) = policy.annotations().get(BACKUP_NOW_ANNOTATION) else {
        return Vec::new();
    };
    let mut requests = match parse_backup_now(text) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable {BACKUP_NOW_ANNOTATION} annotation");
            return Vec::new();
        }
    };
    let handled = policy
        .status
        .as_ref()
        .and_then(|s| s.backup_now_handled.as_ref())
        .map(|t| t.0);
    requests.retain(|r| handled.is_none_or(|h| h < r.requested_at));
    requests.sort_by_key(|r| r.requested_at);
    requests
}

fn new_job(
    policy: &BackupPolicy,
    host: &str,
    dataset: &str,
    due: &policy::DueBackup,
    now: Timestamp,
) -> BackupJob {
    let name = job_name(&policy.name_any(), host, dataset, due.kind, now);
    let mut job = BackupJob::new(
        &name,
        BackupJobSpec {
            policy: policy.name_any().as_str().into(),
            host: host.into(),
            dataset: dataset.into(),
            backup_type: due.kind,
            base_snapshot: due.base.as_ref().map(|b| b.snapshot.clone()),
            snapshot: format!("zetaback-{}", now.as_second()),
            target: policy.spec.target.clone(),
            compression: policy.spec.compression,
            intermediates: false,
        },
    );
    job.metadata.namespace = policy.namespace();
    job.metadata.labels = Some(
        [(POLICY_LABEL.to_string(), policy.name_any())]
            .into_iter()
            .collect(),
    );
    job.metadata.owner_references = policy.controller_owner_ref(&()).map(|o| vec![o]);
    job
}

fn wanted_conditions(plan: &Plan, policy: &BackupPolicy) -> Vec<Wanted<'static>> {
    let generation = policy.meta().generation;
    let mut out = Vec::new();
    match &plan.store_problem {
        Some(problem) => out.push(Wanted {
            type_: READY,
            status: false,
            reason: "StoreUnreachable",
            message: problem.clone(),
            observed_generation: generation,
        }),
        None => out.push(Wanted {
            type_: READY,
            status: true,
            reason: "Reconciled",
            message: format!(
                "{} hosts, {} datasets",
                plan.status.hosts, plan.status.datasets
            ),
            observed_generation: generation,
        }),
    }
    let v = plan.status.violators;
    // Hosts nothing is known of (their violation names no dataset).
    let mut silent: Vec<&str> = plan
        .violators
        .iter()
        .filter(|(_, d, r)| d.is_empty() && *r == ViolationReason::HostNotReporting)
        .map(|(h, _, _)| h.as_str())
        .collect();
    silent.dedup();
    let datasets = usize::try_from(v).unwrap_or(0).saturating_sub(silent.len());
    let mut message = match datasets {
        0 if silent.is_empty() => "every dataset is backed up within its policy".to_owned(),
        0 => String::new(),
        1 => "1 dataset is not backed up within the policy".to_owned(),
        n => format!("{n} datasets are not backed up within the policy"),
    };
    if !silent.is_empty() {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(&format!(
            "the datasets of {} unknown: no report from {}",
            if silent.len() == 1 {
                "1 host are"
            } else {
                "these hosts are"
            },
            silent.join(", ")
        ));
    }
    // A policy that selects nothing protects nothing: not compliant (a selector typo would
    // otherwise read as "every dataset is backed up").
    let nothing_selected = v == 0 && (plan.status.hosts == 0 || plan.status.datasets == 0);
    if nothing_selected {
        message = if plan.status.hosts == 0 {
            "the policy selects no ZfsHost, so nothing is backed up (check spec.hosts)".to_owned()
        } else {
            "the selected hosts report no dataset this policy covers, so nothing is backed up \
             (check spec.datasets and the hosts' include/exclude)"
                .to_owned()
        };
    }
    // Without the store's catalogue nothing can be vouched for: no backup is known.
    if let Some(problem) = &plan.store_problem {
        message = format!("compliance is unknown: {problem}");
    }
    out.push(Wanted {
        type_: COMPLIANT,
        status: v == 0 && plan.store_problem.is_none() && !nothing_selected,
        reason: match (v, datasets) {
            _ if plan.store_problem.is_some() => "StoreUnreachable",
            _ if nothing_selected && plan.status.hosts == 0 => "NoHostsSelected",
            _ if nothing_selected => "NoDatasetsSelected",
            (0, _) => "AllBackedUp",
            (_, 0) => "HostNotReporting",
            _ => "Violators",
        },
        message,
        observed_generation: generation,
    });
    // Shared datasets are reported (and the condition cleared once none is left).
    let had = policy
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == OVERLAPPING));
    if !plan.overlaps.is_empty() || had {
        let shared: Vec<String> = plan
            .overlaps
            .iter()
            .map(|(h, d, others)| format!("{h}:{d} (also {})", others.join(", ")))
            .collect();
        out.push(Wanted {
            type_: OVERLAPPING,
            status: !shared.is_empty(),
            reason: if shared.is_empty() {
                "NoSharedDatasets"
            } else {
                "SharedDatasets"
            },
            message: if shared.is_empty() {
                "no other policy stores backups of this policy's datasets".to_owned()
            } else {
                format!(
                    "other policies also back up {}; each keeps and expires only its own backups",
                    shared.join("; ")
                )
            },
            observed_generation: generation,
        });
    }
    out
}

/// Which ZfsHost changes re-evaluate the policies that select the host (or store on it): a
/// change of what a policy reads from it (labels, spec, agent endpoint, the datasets with
/// their class, exclusion and snapshots), or a report after a gap longer than the staleness
/// limit (the host is back online). A heartbeat that only moves `lastSeen` (or sizes) does
/// not: the policy's own timers cover a host that stops reporting.
#[derive(Debug, Default)]
pub struct HostTriggers {
    seen: HashMap<String, (u64, Option<Timestamp>)>,
}

impl HostTriggers {
    /// What of a host a policy's decision depends on, hashed.
    pub fn fingerprint(host: &ZfsHost) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.metadata.generation.hash(&mut h);
        host.metadata.labels.hash(&mut h);
        host.spec.paused.hash(&mut h);
        if let Some(st) = &host.status {
            st.agent_endpoint.hash(&mut h);
            for d in &st.datasets {
                (&d.name, &d.class, d.excluded, &d.snapshots).hash(&mut h);
            }
        }
        h.finish()
    }

    /// Whether this change of `host` should trigger the policies that use it (and remembers
    /// it as the last one seen).
    pub fn changed(&mut self, host: &ZfsHost, stale_after: Duration) -> bool {
        let print = Self::fingerprint(host);
        let seen = host
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0);
        let stale =
            jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::MAX);
        let trigger = match self.seen.get(&host.name_any()) {
            None => true,
            Some((before, before_seen)) => {
                *before != print
                    || match (before_seen, seen) {
                        (None, Some(_)) => true,
                        (Some(a), Some(b)) => b.duration_since(*a) > stale,
                        _ => false,
                    }
            }
        };
        self.seen.insert(host.name_any(), (print, seen));
        trigger
    }

    /// Forgets the hosts `exists` denies (deleted ZfsHosts: the watch's subscription shows no
    /// deletions), once more are remembered than the `known` hosts plus [`FORGET_SLACK`], so
    /// a fleet whose hosts come and go does not grow this forever.
    pub fn forget_deleted(&mut self, known: usize, exists: impl Fn(&str) -> bool) {
        if self.seen.len() > known + FORGET_SLACK {
            self.seen.retain(|name, _| exists(name));
        }
    }

    /// How many hosts are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no host is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// How many deleted hosts [`HostTriggers`] may remember before it forgets them.
const FORGET_SLACK: usize = 64;

/// The policies (from the controller's own cache) that select `host` or store on it.
fn policies_using(
    policies: &kube::runtime::reflector::Store<kube::core::DeserializeGuard<BackupPolicy>>,
    host: &ZfsHost,
) -> Vec<kube::runtime::reflector::ObjectRef<kube::core::DeserializeGuard<BackupPolicy>>> {
    let name = host.name_any();
    policies
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|p| selects_host(p, host) || p.spec.target.host_name() == name)
        .map(|p| object_ref(&p.name_any(), p.namespace().as_deref()))
        .collect()
}

/// The reference to object `name` in namespace `ns` (cluster-scoped without one).
fn object_ref<K>(name: &str, ns: Option<&str>) -> kube::runtime::reflector::ObjectRef<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    let r = kube::runtime::reflector::ObjectRef::new(name);
    match ns {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// Takes a shared watch's subscription out of its slot in the context (each is taken once, by
/// the controller it triggers).
fn take_subscription<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// A ZfsHost's change that matters ([`HostTriggers`]) re-evaluates the policies that select
/// the host or store on it, so a new dataset or a host back online gets its backup at once
/// instead of at the next timed requeue.
fn watch_hosts(
    controller: kube::runtime::Controller<kube::core::DeserializeGuard<BackupPolicy>>,
    ctx: &Context,
) -> kube::runtime::Controller<kube::core::DeserializeGuard<BackupPolicy>> {
    use futures::StreamExt;
    let Some(events) = take_subscription(&ctx.host_events) else {
        warn!("the ZfsHost subscription was taken already; host changes will not trigger");
        return controller;
    };
    let stale_after = ctx.host_stale_after;
    let mut triggers = HostTriggers::default();
    let hosts = ctx.hosts.clone();
    let changed = events.filter(move |host| {
        let trigger = triggers.changed(host, stale_after);
        triggers.forget_deleted(hosts.len(), |name| {
            hosts
                .get(&kube::runtime::reflector::ObjectRef::new(name))
                .is_some()
        });
        futures::future::ready(trigger)
    });
    let policies = controller.store();
    controller.watches_shared_stream(changed, move |host: Arc<ZfsHost>| {
        policies_using(&policies, &host)
    })
}

impl Reconciled for BackupPolicy {
    const KIND: &'static str = "BackupPolicy";

    /// A BackupJob's change (created, finished, failed) re-evaluates its policy at once. The
    /// trigger comes from the shared job watch after the change reached the job cache, so the
    /// reconcile it starts reads the job as the event showed it. A ZfsHost's change that
    /// matters re-evaluates the policies using the host (see [`HostTriggers`]).
    fn also_watch(
        controller: kube::runtime::Controller<kube::core::DeserializeGuard<Self>>,
        ctx: &Context,
        _namespace: Option<&str>,
    ) -> kube::runtime::Controller<kube::core::DeserializeGuard<Self>> {
        let controller = watch_hosts(controller, ctx);
        let Some(events) = take_subscription(&ctx.job_events) else {
            warn!("the BackupJob subscription was taken already; job changes will not trigger");
            return controller;
        };
        controller.watches_shared_stream(events, |job: Arc<BackupJob>| {
            let policy = job.labels().get(POLICY_LABEL).cloned();
            let ns = job.namespace();
            policy
                .into_iter()
                .map(move |name| object_ref(&name, ns.as_deref()))
        })
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let ns = obj.namespace().ok_or(Error::MissingMeta(Self::KIND))?;
        let name = obj.name_any();
        let current = obj.status.clone().unwrap_or_default();
        let rules = match obj
            .spec
            .check()
            .and_then(|()| PolicyRules::from_spec(&obj.spec).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(why) => {
                super::spec_check::record(
                    &ctx,
                    obj.as_ref(),
                    Self::KIND,
                    (current.observed_generation, &current.conditions),
                    Err(why),
                )
                .await?;
                return Ok(Action::await_change());
            }
        };
        // ZfsHosts and BackupJobs come from shared watch caches: no API read per reconcile.
        let all_hosts = ctx.hosts.state();
        let hosts: Vec<Arc<ZfsHost>> = all_hosts
            .iter()
            .filter(|h| selects_host(&obj, h))
            .cloned()
            .collect();
        // This policy's jobs, and the other policies' jobs into the same backup host (they
        // share its `perTarget` slots).
        let target_key = obj.spec.target.key();
        let target = target_key.as_str();
        let (cached, elsewhere): (Vec<Arc<BackupJob>>, Vec<Arc<BackupJob>>) = ctx
            .jobs
            .state()
            .into_iter()
            .filter(|j| j.spec.target.key() == target || is_own_job(j, &ns, &name))
            .partition(|j| is_own_job(j, &ns, &name));
        let jobs = ctx.expected.adjust(&ns, &name, cached);
        let target_in_flight_elsewhere = ctx
            .expected
            .in_flight_elsewhere(&ns, &name, target, &elsewhere);
        let target_host = all_hosts
            .iter()
            .find(|h| h.name_any() == obj.spec.target.host_name());
        // Tenancy: every host the policy would back up, and its backup host, must serve the
        // policy's namespace; otherwise it is refused and touches nothing (no job, no
        // retention, no archive).
        let uses = hosts
            .iter()
            .map(|h| {
                (
                    h.metadata.name.as_deref().unwrap_or_default(),
                    &h.spec,
                    "backed up",
                )
            })
            .chain(target_host.map(|h| {
                (
                    h.metadata.name.as_deref().unwrap_or_default(),
                    &h.spec,
                    "the backup target",
                )
            }));
        if let Some(why) = tenancy::namespace_refusal(&ns, &ctx.operator_namespace, uses) {
            warn!(reason = tenancy::FORBIDDEN, message = %why, "policy refused");
            super::spec_check::refuse(
                &ctx,
                obj.as_ref(),
                Self::KIND,
                (current.observed_generation, &current.conditions),
                tenancy::FORBIDDEN,
                why,
            )
            .await?;
            return Ok(Action::requeue(ctx.status_heartbeat));
        }
        // `node@address`: over TLS the store must prove it is the node the ZfsHost's spec names.
        let endpoint = target_host.and_then(|h| super::store_tls::endpoint_of(h));
        // The store's view from the shared catalogue cache: hosts whose newest backups a
        // succeeded job names but the cache lacks are read again (jobs were read first, so a
        // job that succeeded is never "succeeded but missing").
        let known: Vec<KnownBackup> = jobs
            .iter()
            .filter_map(|j| {
                let st = j.status.as_ref()?;
                (st.phase == JobPhase::Succeeded).then_some(())?;
                Some((
                    j.spec.host.0.clone(),
                    j.spec.dataset.0.clone(),
                    st.backup_id.clone()?,
                ))
            })
            .collect();
        let host_names: Vec<String> = hosts.iter().map(|h| h.name_any()).collect();
        let read_started = std::time::Instant::now();
        let store_read: Result<StoreView, String> =
            match (&obj.spec.target.object_store, &endpoint, target_host) {
                // An object store: the bucket is the catalogue (no backup host).
                (Some(os), _, _) => super::object_store::view(&ctx.client, &ns, os).await,
                (None, Some(ep), _) => ctx
                    .catalogues
                    .view(&ctx.store, ep, &host_names, &known)
                    .await
                    .map_err(|e| e.to_string()),
                (None, None, None) => Err(format!(
                    "backup host {} does not exist (no ZfsHost of that name)",
                    obj.spec.target.host_name()
                )),
                (None, None, Some(_)) => Err(format!(
                    "backup host {} has no agent endpoint yet (is its agent running?)",
                    obj.spec.target.host_name()
                )),
            };
        ctx.metrics
            .observe_store_read(read_started.elapsed().as_secs_f64());
        let catalogue = store_read.as_ref().ok();
        let backup_now = pending_backup_now(&obj);
        let mut plan = plan(&Inputs {
            policy: &obj,
            rules: &rules,
            hosts: &hosts,
            jobs: &jobs,
            catalogue,
            host_stale_after: ctx.host_stale_after,
            backup_now: &backup_now,
            target_in_flight_elsewhere,
            now,
        })
        .map_err(|e| Error::Undecodable {
            kind: Self::KIND,
            name: name.clone(),
            message: e.to_string(),
        })?;
        if let Err(e) = &store_read {
            plan.store_problem = Some(e.clone());
        }
        // Restore drills and per-dataset recovery status (`spec.drill`, `status.recovery`).
        let drill_restores = match &obj.spec.drill {
            Some(_) => super::drill::list(&ctx, &ns, &name).await?,
            None => Vec::new(),
        };
        let drills = super::drill::plan(&super::drill::Inputs {
            policy: &obj,
            catalogue,
            covered: &plan.covered,
            restores: &drill_restores,
            now,
        });
        super::drill::merge_into(&mut plan, &drills);
        let prune = jobs_to_prune(&obj, &jobs);

        let mut status = plan.status.clone();
        let stamp = Time(now);
        let mut conds = current.conditions.clone();
        for w in wanted_conditions(&plan, &obj) {
            conds = conditions::set(&conds, &w, stamp.clone());
        }
        status.conditions = conds;
        // The heartbeat stamp is no change: compared without it.
        let mut unstamped = current.clone();
        unstamped.last_evaluated = None;
        let changed = conditions::status_changed(&unstamped, &status);
        // Written with every change, and at least every heartbeat without one: a monitor
        // tells a live controller's unchanged answer from a dead one's last.
        let beat = heartbeat_due(current.last_evaluated.as_ref(), now, ctx.status_heartbeat);
        let status_changed = changed || beat;
        status.last_evaluated = Some(Time(now));

        ctx.metrics.observe_decide(started.elapsed().as_secs_f64());
        // The writes are independent of each other: run them at once.
        let job_api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
        let creates = futures::future::join_all(plan.create.iter().map(|job| {
            let (api, ctx, ns, name) = (&job_api, &ctx, &ns, &name);
            async move {
                match api.create(&PostParams::default(), job).await {
                    Ok(created) => {
                        info!(job = %job.name_any(), host = %job.spec.host, dataset = %job.spec.dataset,
                            kind = ?job.spec.backup_type, "backup job created");
                        ctx.expected.created(ns, name, created);
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(source) => Err(Error::Write {
                        what: format!("BackupJob {}", job.name_any()),
                        source,
                    }),
                }
            }
        }));
        let deletes = futures::future::join_all(prune.iter().map(|(job, uid)| {
            let (api, ctx, ns, name) = (&job_api, &ctx, &ns, &name);
            async move {
                let params = kube::api::DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(job, &params).await {
                    Ok(_) => ctx.expected.deleted(ns, name, job),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        ctx.expected.deleted(ns, name, job)
                    }
                    // History is best effort: the next reconcile tries again.
                    Err(e) => warn!(%job, error = %e, "deleting an old BackupJob failed"),
                }
            }
        }));
        let store_ops = async {
            if let Some(os) = &obj.spec.target.object_store {
                super::object_store::archive(&ctx.client, &ns, os, &plan.archive).await;
                super::object_store::delete_expired(&ctx.client, &ns, os, &plan.delete).await;
                return;
            }
            let Some(ep) = &endpoint else { return };
            for (host, dataset, id) in &plan.archive {
                match ctx.store.archive(ep, host, dataset, id).await {
                    Ok(()) => ctx.catalogues.invalidate(ep, host).await,
                    Err(e) => {
                        warn!(%host, %dataset, %id, error = %e, "archiving failed; will retry")
                    }
                }
            }
            for req in &plan.verify {
                match ctx.store.verify(ep, req).await {
                    Ok(st) => {
                        info!(host = %req.host, dataset = %req.dataset, backups = req.ids.len(),
                        queued = st.queued, "verification requested")
                    }
                    Err(e) => warn!(host = %req.host, dataset = %req.dataset, error = %e,
                        "requesting verification failed; will retry"),
                }
            }
            for (host, dataset, id) in &plan.delete {
                match ctx.store.delete(ep, host, dataset, id).await {
                    Ok(()) => {
                        info!(%host, %dataset, %id, "expired backup deleted");
                        ctx.catalogues.invalidate(ep, host).await;
                    }
                    Err(e) => {
                        warn!(%host, %dataset, %id, error = %e, "deleting failed; will retry")
                    }
                }
            }
        };
        let status_write = async {
            if status_changed {
                status::apply(&ctx, obj.as_ref(), Self::KIND, &status).await
            } else {
                Ok(())
            }
        };
        let events =
            publish_violation_events(&ctx, &obj, &current.violations, &plan.status.violations);
        let (created, _, _, written, _) =
            tokio::join!(creates, deletes, store_ops, status_write, events);

        ctx.metrics
            .set_violators(&ns, &name, i64::from(plan.status.violators));
        if catalogue.is_some() {
            ctx.metrics.set_quarantined(
                &ns,
                &name,
                i64::try_from(plan.quarantined).unwrap_or(i64::MAX),
            );
        }
        ctx.metrics.set_policy_backups(
            &ns,
            &name,
            target,
            plan.status.bytes_stored,
            &plan.last_backups,
        );
        for r in created {
            r?;
        }
        written?;
        super::drill::apply(&ctx, &ns, &drills).await?;
        // Wake up for the next heartbeat at the latest.
        let heartbeat_at = if status_changed {
            now.checked_add(ctx.status_heartbeat).ok()
        } else {
            current
                .last_evaluated
                .as_ref()
                .and_then(|t| t.0.checked_add(ctx.status_heartbeat).ok())
        };
        let wake_at = match (plan.wake_at, heartbeat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait = requeue_after(wake_at, now);
        Ok(Action::requeue(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
    use crate::api::{BackupPolicySpec, common::DatasetSelector};
    use crate::store::{self, Manifest, StoredBackup};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn policy() -> BackupPolicy {
        let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "hosts": {"selector": {"matchLabels": {"tier": "db"}}},
            "datasets": {"include": ["tank/**"], "exclude": ["tank/tmp"]},
            "full": {"every": "7d", "keep": "30d"},
            "incremental": {"every": "1d", "keep": "14d"},
            "target": {"host": "backup-1", "path": "/store"},
            "grace": "1h",
            "concurrency": {"perHost": 1, "perTarget": 10}
        }))
        .unwrap();
        let mut p = BackupPolicy::new("db", spec);
        p.metadata.namespace = Some("ops".into());
        p.metadata.generation = Some(3);
        p.metadata.uid = Some("uid-1".into());
        p.metadata.creation_timestamp = Some(Time(ts(0)));
        p
    }

    fn host(name: &str, tier: &str, last_seen: i64, datasets: &[&str]) -> Arc<ZfsHost> {
        let mut h = ZfsHost::new(
            name,
            ZfsHostSpec {
                node_name: name.into(),
                datasets: DatasetSelector::default(),
                paused: false,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        h.metadata.labels = Some(
            [("tier".to_string(), tier.to_string())]
                .into_iter()
                .collect(),
        );
        h.status = Some(ZfsHostStatus {
            last_seen: Some(Time(ts(last_seen))),
            datasets: datasets
                .iter()
                .map(|d| DatasetStatus {
                    name: (*d).into(),
                    used_bytes: None,
                    latest_snapshot: None,
                    snapshots: vec!["zetaback-100".into()],
                    class: None,
                    excluded: false,
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(h)
    }

    fn full(host: &str, dataset: &str, at: i64) -> StoredBackup {
        StoredBackup {
            manifest: Manifest {
                version: 1,
                id: format!("{at}.full"),
                host: host.into(),
                dataset: dataset.into(),
                snapshot: format!("zetaback-{at}"),
                base_snapshot: None,
                backup_type: BackupType::Full,
                bytes: 1000,
                sha256: "0".repeat(64),
                compression: crate::api::backup_policy::Compression::None,
                created: ts(at),
                policy: None,
            },
            archived: false,
            verification: None,
        }
    }

    fn run(hosts: &[Arc<ZfsHost>], catalogue: Option<&store::Catalogue>, now: i64) -> Plan {
        run_with(hosts, catalogue, now, None)
    }

    /// The test policy with `request` in its backup-now annotation.
    fn policy_requesting(request: &BackupNowRequest) -> BackupPolicy {
        let mut pol = policy();
        pol.metadata.annotations = Some(
            [(
                BACKUP_NOW_ANNOTATION.to_string(),
                serde_json::to_string(request).unwrap(),
            )]
            .into_iter()
            .collect(),
        );
        pol
    }

    fn run_with(
        hosts: &[Arc<ZfsHost>],
        catalogue: Option<&store::Catalogue>,
        now: i64,
        backup_now: Option<&BackupNowRequest>,
    ) -> Plan {
        decide(&policy(), hosts, catalogue, now, backup_now, &[], 0)
    }

    fn decide(
        p: &BackupPolicy,
        hosts: &[Arc<ZfsHost>],
        catalogue: Option<&store::Catalogue>,
        now: i64,
        backup_now: Option<&BackupNowRequest>,
        jobs: &[Arc<BackupJob>],
        target_in_flight_elsewhere: u32,
    ) -> Plan {
        let rules = PolicyRules::from_spec(&p.spec).unwrap();
        let view = catalogue.map(StoreView::from_store);
        plan(&Inputs {
            policy: p,
            rules: &rules,
            hosts,
            jobs,
            catalogue: view.as_ref(),
            host_stale_after: Duration::from_secs(60),
            backup_now: backup_now.map(std::slice::from_ref).unwrap_or(&[]),
            target_in_flight_elsewhere,
            now: ts(now),
        })
        .unwrap()
    }

    /// `job` as the watch shows it once created at `at`, in `phase`.
    fn as_seen(job: &BackupJob, at: i64, phase: JobPhase) -> Arc<BackupJob> {
        let mut j = job.clone();
        j.metadata.creation_timestamp = Some(Time(ts(at)));
        j.metadata.uid = Some(format!("uid-{}", j.name_any()));
        j.status = Some(crate::api::BackupJobStatus {
            phase,
            finished_at: matches!(phase, JobPhase::Succeeded | JobPhase::Failed)
                .then(|| Time(ts(at + 1))),
            ..Default::default()
        });
        Arc::new(j)
    }

    #[test]
    fn a_backup_now_request_is_handled_only_once_every_dataset_got_its_job() {
        // perHost 1 and three datasets forced: one job per decide, and the request stays
        // pending (looked at again soon) until the last one started.
        let hosts = [host("db-1", "db", 5000, &["tank/a", "tank/b", "tank/c"])];
        let cat = store::Catalogue {
            backups: ["tank/a", "tank/b", "tank/c"]
                .iter()
                .map(|d| full("db-1", d, 100))
                .collect(),
            problems: vec![],
        };
        let request = BackupNowRequest {
            host: None,
            dataset: None,
            backup_type: Some(BackupType::Full),
            requested_at: ts(4000),
        };
        let mut pol = policy_requesting(&request);
        let mut jobs: Vec<Arc<BackupJob>> = Vec::new();
        let mut started = Vec::new();
        for round in 0..3 {
            let now = 5000 + 10 * round;
            let pending = pending_backup_now(&pol).pop();
            assert_eq!(pending.as_ref(), Some(&request), "round {round}");
            let p = decide(&pol, &hosts, Some(&cat), now, pending.as_ref(), &jobs, 0);
            assert_eq!(p.create.len(), 1, "round {round}: one job (perHost 1)");
            let job = &p.create[0];
            assert_eq!(job.spec.backup_type, BackupType::Full);
            assert_eq!(forced_by(job), Some(ts(4000)));
            started.push(job.spec.dataset.0.clone());
            if round < 2 {
                assert_eq!(p.status.backup_now_handled, None, "round {round}");
                assert_eq!(p.wake_at, Some(ts(now) + SLOT_RETRY), "round {round}");
                // While the job runs, nothing else starts and the request stays pending.
                let running = [jobs.clone(), vec![as_seen(job, now, JobPhase::Running)]].concat();
                let q = decide(
                    &pol,
                    &hosts,
                    Some(&cat),
                    now + 1,
                    pending.as_ref(),
                    &running,
                    0,
                );
                assert!(q.create.is_empty(), "round {round}");
                assert_eq!(q.status.backup_now_handled, None, "round {round}");
            } else {
                assert_eq!(p.status.backup_now_handled, Some(Time(ts(4000))));
            }
            pol.status = Some(p.status.clone());
            // The job succeeds (the store's view does not show the backup yet).
            jobs.push(as_seen(job, now, JobPhase::Succeeded));
        }
        assert_eq!(started, ["tank/a", "tank/b", "tank/c"]);
        assert_eq!(pending_backup_now(&pol), vec![], "handled");
        let p = decide(&pol, &hosts, Some(&cat), 5040, None, &jobs, 0);
        assert!(p.create.is_empty(), "nothing is forced twice");
    }

    /// The test policy naming its hosts instead of selecting them by label.
    fn policy_naming(hosts: &[&str]) -> BackupPolicy {
        let mut pol = policy();
        pol.spec.hosts = serde_json::from_value(serde_json::json!({ "names": hosts })).unwrap();
        pol
    }

    #[test]
    fn hosts_that_never_reported_make_the_policy_not_compliant() {
        // db-1 exists but its agent never reported; ghost does not exist at all.
        let mut silent = (*host("db-1", "db", 0, &[])).clone();
        silent.status = None;
        silent.metadata.creation_timestamp = Some(Time(ts(50)));
        let pol = policy_naming(&["db-1", "ghost"]);
        let cat = store::Catalogue::default();
        let p = decide(&pol, &[Arc::new(silent)], Some(&cat), 1000, None, &[], 0);
        assert_eq!(p.status.datasets, 0);
        assert_eq!(p.status.violators, 2, "{:?}", p.status.violations);
        let got: Vec<(&str, &str, ViolationReason, Option<Time>)> = p
            .status
            .violations
            .iter()
            .map(|v| {
                (
                    v.host.as_str(),
                    v.dataset.as_str(),
                    v.reason,
                    v.since.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("ghost", "", ViolationReason::HostNotReporting, None),
                (
                    "db-1",
                    "",
                    ViolationReason::HostNotReporting,
                    Some(Time(ts(50)))
                ),
            ]
        );
        let conds = wanted_conditions(&p, &pol);
        let compliant = conds.iter().find(|c| c.type_ == COMPLIANT).unwrap();
        assert!(!compliant.status);
        assert_eq!(compliant.reason, "HostNotReporting");
        assert_eq!(
            compliant.message,
            "the datasets of these hosts are unknown: no report from ghost, db-1"
        );
        // A stale report that listed none of the policy's datasets: unknown as well; a fresh
        // one that lists none: no violator, but nothing is protected: not compliant.
        let stale = host("db-1", "db", 100, &["rpool/other"]);
        let pol = policy_naming(&["db-1"]);
        let p = decide(
            &pol,
            std::slice::from_ref(&stale),
            Some(&cat),
            1000,
            None,
            &[],
            0,
        );
        assert_eq!(p.status.violators, 1);
        assert_eq!(
            p.status.violations[0].reason,
            ViolationReason::HostNotReporting
        );
        let p = decide(&pol, &[stale], Some(&cat), 120, None, &[], 0);
        assert_eq!(p.status.violators, 0);
        let conds = wanted_conditions(&p, &pol);
        let compliant = conds.iter().find(|c| c.type_ == COMPLIANT).unwrap();
        assert!(!compliant.status);
        assert_eq!(compliant.reason, "NoDatasetsSelected");
        // A label selector that matches no host at all: the same, with its own reason.
        let none = decide(
            &policy(),
            &[host("web-1", "web", 100, &["tank/www"])],
            Some(&cat),
            120,
            None,
            &[],
            0,
        );
        assert_eq!(none.status.hosts, 0);
        let conds = wanted_conditions(&none, &pol);
        let compliant = conds.iter().find(|c| c.type_ == COMPLIANT).unwrap();
        assert!(!compliant.status);
        assert_eq!(compliant.reason, "NoHostsSelected");
        assert!(
            compliant.message.contains("selects no ZfsHost"),
            "{}",
            compliant.message
        );
    }

    #[test]
    fn a_backup_lost_from_the_store_is_a_violation() {
        // The newest succeeded job stored 4000.full; the store no longer has it.
        let hosts = [host("db-1", "db", 5000, &["tank/a"])];
        let pol = policy();
        let job = new_job(
            &pol,
            "db-1",
            "tank/a",
            &policy::DueBackup {
                kind: BackupType::Full,
                base: None,
                reason: policy::DueReason::NoFull,
            },
            ts(4000),
        );
        let mut done = (*as_seen(&job, 4000, JobPhase::Succeeded)).clone();
        if let Some(st) = done.status.as_mut() {
            st.backup_id = Some("4000.full".into());
            st.started_at = Some(Time(ts(4000)));
        }
        let jobs = [Arc::new(done)];
        let stored = store::Catalogue {
            backups: vec![full("db-1", "tank/a", 4000)],
            problems: vec![],
        };
        let p = decide(&pol, &hosts, Some(&stored), 5000, None, &jobs, 0);
        assert_eq!(p.status.violators, 0, "{:?}", p.status.violations);
        let lost = store::Catalogue::default();
        let p = decide(&pol, &hosts, Some(&lost), 5000, None, &jobs, 0);
        assert_eq!(p.status.violators, 1);
        assert_eq!(
            p.status.violations[0].reason,
            ViolationReason::BackupMissing
        );
        assert!(
            wanted_conditions(&p, &pol)
                .iter()
                .any(|c| c.type_ == COMPLIANT && !c.status)
        );
        // And a new full is due at once.
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn a_store_that_does_not_add_up_is_a_violation_not_a_skipped_dataset() {
        let hosts = [host("db-1", "db", 5000, &["tank/a"])];
        let mut junk = full("db-1", "tank/a", 4000);
        junk.manifest.id = "not-a-stream-id".into();
        let cat = store::Catalogue {
            backups: vec![junk],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), 5000);
        assert_eq!(p.status.datasets, 1);
        assert_eq!(p.status.violators, 1, "{:?}", p.status.violations);
        assert_eq!(p.status.violations[0].reason, ViolationReason::ChainBroken);
        assert!(
            p.create.is_empty() && p.delete.is_empty(),
            "nothing acts on it"
        );
    }

    #[test]
    fn an_incremental_without_its_full_is_no_last_backup() {
        let hosts = [host("db-1", "db", 5000, &["tank/a"])];
        let mut orphan = full("db-1", "tank/a", 4000);
        orphan.manifest.id = "4000.incremental.100".into();
        orphan.manifest.backup_type = BackupType::Incremental;
        orphan.manifest.base_snapshot = Some("zetaback-100".into());
        let cat = store::Catalogue {
            backups: vec![orphan],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), 5000);
        assert_eq!(p.status.last_backup, None, "it restores nothing");
        assert!(p.last_backups.is_empty(), "nor does the metric count it");
        assert_eq!(p.status.violations[0].reason, ViolationReason::ChainBroken);
    }

    #[test]
    fn queued_backup_now_requests_are_each_honoured() {
        let hosts = [host("db-1", "db", 5000, &["tank/a", "tank/b", "tank/c"])];
        let cat = store::Catalogue {
            backups: ["tank/a", "tank/b", "tank/c"]
                .iter()
                .map(|d| full("db-1", d, 4900))
                .collect(),
            problems: vec![],
        };
        let ask = |dataset: &str, kind, at| BackupNowRequest {
            host: Some("db-1".into()),
            dataset: Some(dataset.into()),
            backup_type: kind,
            requested_at: ts(at),
        };
        // Two requests queued before the controller looked (and a third for tank/a that an
        // incremental would satisfy, merged into the full asked for first).
        let queue = vec![
            ask("tank/a", Some(BackupType::Full), 4950),
            ask("tank/b", Some(BackupType::Full), 4951),
            ask("tank/a", None, 4951),
        ];
        let mut pol = policy();
        pol.spec.concurrency.per_host = 4;
        pol.metadata.annotations = Some(
            [(
                BACKUP_NOW_ANNOTATION.to_string(),
                serde_json::to_string(&queue).unwrap(),
            )]
            .into_iter()
            .collect(),
        );
        let pending = pending_backup_now(&pol);
        assert_eq!(pending.len(), 3);
        let rules = PolicyRules::from_spec(&pol.spec).unwrap();
        let view = StoreView::from_store(&cat);
        let p = plan(&Inputs {
            policy: &pol,
            rules: &rules,
            hosts: &hosts,
            jobs: &[],
            catalogue: Some(&view),
            host_stale_after: Duration::from_secs(60),
            backup_now: &pending,
            target_in_flight_elsewhere: 0,
            now: ts(5000),
        })
        .unwrap();
        let mut made: Vec<(String, BackupType, Option<Timestamp>)> = p
            .create
            .iter()
            .map(|j| (j.spec.dataset.0.clone(), j.spec.backup_type, forced_by(j)))
            .collect();
        made.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            made,
            vec![
                ("tank/a".into(), BackupType::Full, Some(ts(4951))),
                ("tank/b".into(), BackupType::Full, Some(ts(4951))),
            ]
        );
        assert_eq!(p.status.backup_now_handled, Some(Time(ts(4951))));
        // Once the jobs exist every request is done, and none is forced again.
        let jobs: Vec<Arc<BackupJob>> = p
            .create
            .iter()
            .map(|j| as_seen(j, 5000, JobPhase::Running))
            .collect();
        for r in &pending {
            let of: Vec<&BackupJob> = jobs
                .iter()
                .map(Arc::as_ref)
                .filter(|j| Some(j.spec.dataset.as_str()) == r.dataset.as_deref())
                .collect();
            let c = view
                .dataset("db-1", r.dataset.as_deref().unwrap())
                .as_ref()
                .unwrap();
            assert!(backup_now_done(r, &of, c), "{r:?}");
        }
        // The single-object form written before requests queued is still read.
        let mut old = policy();
        old.metadata.annotations = Some(
            [(
                BACKUP_NOW_ANNOTATION.to_string(),
                serde_json::to_string(&queue[1]).unwrap(),
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(pending_backup_now(&old), vec![queue[1].clone()]);
    }

    #[test]
    fn the_heartbeat_is_due_when_missing_old_or_from_the_future() {
        let beat = Duration::from_secs(300);
        assert!(heartbeat_due(None, ts(1000), beat));
        assert!(!heartbeat_due(Some(&Time(ts(1000))), ts(1299), beat));
        assert!(heartbeat_due(Some(&Time(ts(1000))), ts(1300), beat));
        assert!(heartbeat_due(Some(&Time(ts(2000))), ts(1000), beat));
    }

    #[test]
    fn a_backup_now_request_is_done_by_a_newer_backup_and_skips_paused_hosts() {
        let hosts = [host("db-1", "db", 5000, &["tank/a", "tank/b"])];
        let request = BackupNowRequest {
            host: None,
            dataset: None,
            backup_type: Some(BackupType::Full),
            requested_at: ts(4000),
        };
        // tank/a has a full taken after the request: only tank/b is forced, and that is all.
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/a", 4500), full("db-1", "tank/b", 100)],
            problems: vec![],
        };
        let p = run_with(&hosts, Some(&cat), 5000, Some(&request));
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].spec.dataset.as_str(), "tank/b");
        assert_eq!(p.status.backup_now_handled, Some(Time(ts(4000))));
        // A paused host gets no job, so the request does not wait for it.
        let mut paused = (*hosts[0]).clone();
        paused.spec.paused = true;
        let p = run_with(&[Arc::new(paused)], Some(&cat), 5000, Some(&request));
        assert!(p.create.is_empty());
        assert_eq!(p.status.backup_now_handled, Some(Time(ts(4000))));
        // An unreachable one does: its backup is taken when it is back.
        let gone = [host("db-1", "db", 100, &["tank/a", "tank/b"])];
        let p = run_with(&gone, Some(&cat), 5000, Some(&request));
        assert!(p.create.is_empty());
        assert_eq!(p.status.backup_now_handled, None);
    }

    #[test]
    fn per_target_counts_every_policys_jobs_into_the_target() {
        // Three datasets never backed up, perHost 4, perTarget 2.
        let mut pol = policy();
        pol.spec.concurrency.per_host = 4;
        pol.spec.concurrency.per_target = 2;
        let hosts = [host("db-1", "db", 1000, &["tank/a", "tank/b", "tank/c"])];
        let cat = store::Catalogue::default();
        let created = |elsewhere| {
            decide(&pol, &hosts, Some(&cat), 1000, None, &[], elsewhere)
                .create
                .len()
        };
        assert_eq!(created(0), 2);
        assert_eq!(created(1), 1, "one slot is another policy's");
        let p = decide(&pol, &hosts, Some(&cat), 1000, None, &[], 2);
        assert!(p.create.is_empty(), "the target is full");
        // Another policy's job ending does not trigger this one: look again soon.
        assert_eq!(p.wake_at, Some(ts(1000) + SLOT_RETRY));
        // This policy's own job in flight counts as well.
        let mine = new_job(
            &pol,
            "db-1",
            "tank/a",
            &policy::DueBackup {
                kind: BackupType::Full,
                base: None,
                reason: policy::DueReason::NoFull,
            },
            ts(900),
        );
        let jobs = [as_seen(&mine, 900, JobPhase::Running)];
        let p = decide(&pol, &hosts, Some(&cat), 1000, None, &jobs, 1);
        assert!(p.create.is_empty());
    }

    #[test]
    fn jobs_of_other_policies_in_flight_into_the_target_are_counted_once() {
        let e = Expectations::default();
        let pol = policy();
        let mk = |policy: &str, name: &str, target: &str, phase: Option<JobPhase>| {
            let mut j = new_job(
                &pol,
                "db-1",
                "tank/a",
                &policy::DueBackup {
                    kind: BackupType::Full,
                    base: None,
                    reason: policy::DueReason::NoFull,
                },
                ts(1),
            );
            j.metadata.name = Some(name.into());
            j.spec.policy = policy.into();
            j.spec.target.host = Some(target.into());
            j.status = phase.map(|phase| crate::api::BackupJobStatus {
                phase,
                ..Default::default()
            });
            j
        };
        // In the cache: other's two jobs at backup-1, one running, one done.
        let cached = vec![
            Arc::new(mk("other", "o1", "backup-1", Some(JobPhase::Running))),
            Arc::new(mk("other", "o2", "backup-1", Some(JobPhase::Succeeded))),
        ];
        // Created, not in the cache yet: o3 (counts), o1 (in the cache already), one into
        // another target, and this policy's own (counted by the policy itself).
        e.created("ops", "other", mk("other", "o3", "backup-1", None));
        e.created("ops", "other", mk("other", "o1", "backup-1", None));
        e.created("ops", "third", mk("third", "t1", "backup-2", None));
        e.created("ops", "db", mk("db", "d1", "backup-1", None));
        assert_eq!(e.in_flight_elsewhere("ops", "db", "backup-1", &cached), 2);
    }

    #[test]
    fn host_changes_trigger_policies_only_when_they_matter() {
        let stale = Duration::from_secs(60);
        let mut t = HostTriggers::default();
        let h = host("db-1", "db", 1000, &["tank/a"]);
        assert!(t.changed(&h, stale), "first seen");
        // A heartbeat: lastSeen moves, sizes change.
        let mut beat = (*host("db-1", "db", 1030, &["tank/a"])).clone();
        if let Some(st) = beat.status.as_mut() {
            st.datasets[0].used_bytes = Some(12345);
        }
        assert!(!t.changed(&beat, stale), "a heartbeat");
        assert!(
            t.changed(&host("db-1", "db", 1040, &["tank/a", "tank/b"]), stale),
            "a new dataset"
        );
        assert!(!t.changed(&host("db-1", "db", 1090, &["tank/a", "tank/b"]), stale));
        assert!(
            t.changed(&host("db-1", "db", 1200, &["tank/a", "tank/b"]), stale),
            "back after a gap"
        );
        assert!(
            t.changed(&host("db-1", "web", 1210, &["tank/a", "tank/b"]), stale),
            "labels"
        );
        let mut snap = (*host("db-1", "web", 1220, &["tank/a", "tank/b"])).clone();
        if let Some(st) = snap.status.as_mut() {
            st.datasets[0].snapshots.push("zetaback-200".into());
        }
        assert!(
            t.changed(&snap, stale),
            "a new snapshot (a new incremental base)"
        );
        assert!(
            t.changed(&host("db-2", "web", 1220, &["tank/a"]), stale),
            "another host"
        );
    }

    #[test]
    fn host_triggers_forget_deleted_hosts_beyond_the_slack() {
        let stale = Duration::from_secs(60);
        let mut t = HostTriggers::default();
        for i in 0..FORGET_SLACK + 2 {
            t.changed(&host(&format!("h{i}"), "db", 1000, &["tank/a"]), stale);
        }
        let only_h0 = |name: &str| name == "h0";
        // Within the slack over the known hosts nothing is forgotten.
        t.forget_deleted(2, only_h0);
        assert_eq!(t.len(), FORGET_SLACK + 2);
        // Beyond it the deleted ones go, the existing one stays (and is not new again).
        t.forget_deleted(1, only_h0);
        assert_eq!(t.len(), 1);
        assert!(!t.changed(&host("h0", "db", 1001, &["tank/a"]), stale));
        assert!(t.changed(&host("h1", "db", 1001, &["tank/a"]), stale));
    }

    #[test]
    fn selects_hosts_by_label_and_datasets_by_pattern() {
        let hosts = [
            host(
                "db-1",
                "db",
                1000,
                &["tank", "tank/pg", "tank/tmp", "rpool/root"],
            ),
            host("web-1", "web", 1000, &["tank/www"]),
        ];
        let cat = store::Catalogue::default();
        let p = run(&hosts, Some(&cat), 1000);
        assert_eq!(p.status.hosts, 1);
        assert_eq!(
            p.status.datasets, 2,
            "tank and tank/pg; not tank/tmp, rpool/root or web-1"
        );
        // No backups at all: a full is due for each, but one job per host at a time.
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].spec.backup_type, BackupType::Full);
        assert_eq!(p.create[0].metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(p.create[0].spec.snapshot, "zetaback-1000");
    }

    #[test]
    fn an_unreachable_host_makes_violators_and_gets_no_jobs() {
        let hosts = [host("db-1", "db", 0, &["tank/pg"])];
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/pg", 10)],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), 3600);
        assert!(p.create.is_empty());
        assert_eq!(p.status.violators, 1);
        assert_eq!(
            p.status.violations[0].reason,
            ViolationReason::HostUnreachable
        );
        assert_eq!(p.status.last_backup, Some(Time(ts(10))));
        assert_eq!(p.status.bytes_stored, Some(1000));
        let conds = wanted_conditions(&p, &policy());
        assert!(conds.iter().any(|c| c.type_ == COMPLIANT && !c.status));
    }

    #[test]
    fn a_fresh_full_complies_and_nothing_is_due_until_the_incremental() {
        let hosts = [host("db-1", "db", 5000, &["tank/pg"])];
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/pg", 100)],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), 5000);
        assert!(p.create.is_empty());
        assert_eq!(p.status.violators, 0);
        assert_eq!(p.next_due, Some(ts(100 + 86_400)));
        // A day later (the agent still reporting) an incremental against that full is due.
        let hosts = [host("db-1", "db", 100 + 86_400, &["tank/pg"])];
        let later = run(&hosts, Some(&cat), 100 + 86_400);
        assert_eq!(later.create.len(), 1);
        assert_eq!(later.create[0].spec.backup_type, BackupType::Incremental);
        assert_eq!(
            later.create[0].spec.base_snapshot.as_deref(),
            Some("zetaback-100")
        );
    }

    #[test]
    fn backup_now_forces_only_the_named_dataset_and_is_recorded() {
        let hosts = [host("db-1", "db", 5000, &["tank/pg", "tank/www"])];
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/pg", 100), full("db-1", "tank/www", 100)],
            problems: vec![],
        };
        let request = BackupNowRequest {
            host: Some("db-1".into()),
            dataset: Some("tank/www".into()),
            backup_type: Some(BackupType::Full),
            requested_at: ts(4000),
        };
        let p = run_with(&hosts, Some(&cat), 5000, Some(&request));
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].spec.dataset.as_str(), "tank/www");
        assert_eq!(p.create[0].spec.backup_type, BackupType::Full);
        assert_eq!(p.status.backup_now_handled, Some(Time(ts(4000))));
        // Once recorded as handled, the same request is not pending any more.
        let mut pol = policy_requesting(&request);
        assert_eq!(pending_backup_now(&pol), vec![request.clone()]);
        pol.status = Some(p.status.clone());
        assert_eq!(pending_backup_now(&pol), vec![]);
    }

    #[test]
    fn without_the_catalogue_nothing_is_scheduled() {
        let hosts = [host("db-1", "db", 1000, &["tank/pg"])];
        let p = run(&hosts, None, 1000);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert!(p.store_problem.is_some());
        assert_eq!(p.status.bytes_stored, None);
        // Nor is the policy called compliant: no backup is known.
        let conds = wanted_conditions(&p, &policy());
        let compliant = conds.iter().find(|c| c.type_ == COMPLIANT).unwrap();
        assert!(!compliant.status, "{compliant:?}");
        assert_eq!(compliant.reason, "StoreUnreachable");
        assert!(compliant.message.starts_with("compliance is unknown: "));
    }

    #[test]
    fn requeue_waits_for_the_next_deadline_within_bounds() {
        assert_eq!(requeue_after(None, ts(100)), MAX_REQUEUE);
        assert_eq!(
            requeue_after(Some(ts(90)), ts(100)),
            Duration::from_secs(1),
            "past deadline"
        );
        assert_eq!(
            requeue_after(Some(ts(115)), ts(100)),
            Duration::from_secs(15)
        );
        assert_eq!(requeue_after(Some(ts(100_000)), ts(100)), MAX_REQUEUE);
    }

    #[test]
    fn a_reachable_host_is_looked_at_again_when_it_could_turn_stale() {
        let hosts = [host("db-1", "db", 990, &["tank/pg"])];
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/pg", 900)],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), 1000);
        assert_eq!(p.wake_at, Some(ts(990 + 60)), "lastSeen + host_stale_after");
    }

    #[test]
    fn a_held_due_backup_neither_moves_the_status_nor_polls_fast() {
        // No full yet and the host unreachable: the full is due but held.
        let hosts = [host("db-1", "db", 0, &["tank/pg"])];
        let cat = store::Catalogue::default();
        let a = run(&hosts, Some(&cat), 1000);
        let b = run(&hosts, Some(&cat), 1001);
        assert!(a.create.is_empty());
        assert_eq!(
            a.status, b.status,
            "nothing changed, so the status must not either"
        );
        assert_eq!(a.wake_at, Some(ts(1000) + HELD_RETRY));
        // Reachable, due now: a job is created and the job's watch event wakes us; the status
        // names no past deadline.
        let hosts = [host("db-1", "db", 1000, &["tank/pg"])];
        let p = run(&hosts, Some(&cat), 1000);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.status.next_due, None);
        assert_eq!(
            p.wake_at,
            Some(ts(1000 + 60)),
            "only the host's staleness deadline"
        );
    }

    #[test]
    fn under_the_caps_the_longest_due_goes_first() {
        // One job per host at a time (perHost 1). tank/a sorts first but its incremental is
        // due since 136 400; tank/b's since 86 410: tank/b goes first.
        let now = 200_000;
        let hosts = [host("db-1", "db", now, &["tank/a", "tank/b"])];
        let cat = store::Catalogue {
            backups: vec![full("db-1", "tank/a", 50_000), full("db-1", "tank/b", 10)],
            problems: vec![],
        };
        let p = run(&hosts, Some(&cat), now);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].spec.dataset.as_str(), "tank/b");
        // A dataset never backed up goes before both.
        let hosts = [host("db-1", "db", now, &["tank/a", "tank/b", "tank/c"])];
        let p = run(&hosts, Some(&cat), now);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].spec.dataset.as_str(), "tank/c");
        assert_eq!(p.create[0].spec.backup_type, BackupType::Full);
    }

    #[test]
    fn history_is_pruned_per_dataset_and_never_in_flight() {
        let pol = policy();
        let job = |name: &str, ds: &str, phase: Option<JobPhase>, at: i64| {
            let mut j = new_job(
                &pol,
                "db-1",
                ds,
                &policy::DueBackup {
                    kind: BackupType::Full,
                    base: None,
                    reason: policy::DueReason::NoFull,
                },
                ts(at),
            );
            j.metadata.name = Some(name.into());
            j.metadata.uid = Some(format!("uid-{name}"));
            j.metadata.creation_timestamp = Some(Time(ts(at)));
            j.status = phase.map(|phase| crate::api::BackupJobStatus {
                phase,
                finished_at: Some(Time(ts(at + 1))),
                ..Default::default()
            });
            Arc::new(j)
        };
        let jobs = vec![
            job("a1", "tank/a", Some(JobPhase::Succeeded), 10),
            job("a2", "tank/a", Some(JobPhase::Succeeded), 20),
            job("a3", "tank/a", Some(JobPhase::Running), 5),
            job("a4", "tank/a", None, 1),
            job("b1", "tank/b", Some(JobPhase::Succeeded), 10),
            job("b2", "tank/b", Some(JobPhase::Failed), 30),
            job("b3", "tank/b", Some(JobPhase::Failed), 5),
        ];
        let names: Vec<String> = jobs_to_prune(&pol, &jobs)
            .into_iter()
            .map(|(n, uid)| {
                assert_eq!(uid, Some(format!("uid-{n}")));
                n
            })
            .collect();
        // Defaults keep 1 succeeded and 1 failed per dataset; b2 is the current failure run.
        assert_eq!(names, vec!["a1".to_string(), "b3".to_string()]);
    }

    #[test]
    fn expectations_cover_the_watch_lag_and_end_when_it_catches_up() {
        let e = Expectations::default();
        let mk = |name: &str| {
            let mut j = BackupJob::new(
                name,
                new_job(
                    &policy(),
                    "db-1",
                    "tank/a",
                    &policy::DueBackup {
                        kind: BackupType::Full,
                        base: None,
                        reason: policy::DueReason::NoFull,
                    },
                    ts(1),
                )
                .spec,
            );
            j.metadata.namespace = Some("ops".into());
            j
        };
        e.created("ops", "db", mk("new"));
        e.deleted("ops", "db", "old");
        // The cache shows neither change yet: the new job is added, the old one hidden.
        let seen = e.adjust("ops", "db", vec![Arc::new(mk("old")), Arc::new(mk("x"))]);
        let names: Vec<String> = seen.iter().map(|j| j.name_any()).collect();
        assert_eq!(names, vec!["x".to_string(), "new".to_string()]);
        // Another policy is not affected.
        assert_eq!(e.adjust("ops", "other", vec![Arc::new(mk("old"))]).len(), 1);
        // The cache caught up: the expectations end.
        let seen = e.adjust("ops", "db", vec![Arc::new(mk("new")), Arc::new(mk("x"))]);
        assert_eq!(seen.len(), 2);
        assert!(e.lock().is_empty());
    }

    #[test]
    fn job_names_are_deterministic_and_valid() {
        let a = job_name(
            "databases",
            "db-1",
            "tank/pg",
            BackupType::Full,
            ts(1_700_000_000),
        );
        let b = job_name(
            "databases",
            "db-1",
            "tank/pg",
            BackupType::Full,
            ts(1_700_000_000),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            job_name(
                "databases",
                "db-1",
                "tank/web",
                BackupType::Full,
                ts(1_700_000_000)
            )
        );
        let re = regex::Regex::new(crate::names::OBJECT_NAME_PATTERN).unwrap();
        assert!(re.is_match(&a), "{a}");
        assert!(job_name(&"x".repeat(250), "h", "d", BackupType::Incremental, ts(1)).len() < 80);
    }
}
