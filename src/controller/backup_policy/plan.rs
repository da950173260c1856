//! The pure part of the BackupPolicy reconciler: from the gathered inputs (the selected
//! ZfsHosts' reports, the backup host's catalogue, the policy's BackupJobs) to a [`Plan`] —
//! which BackupJobs to create, which stored backups to delete, archive or verify, who
//! violates, the status and its conditions, and when to look again. No I/O: the reconciler in
//! `mod.rs` gathers and applies.
//!
//! [`plan`] walks the selected hosts ([`plan_host`]) and their covered datasets
//! ([`plan_dataset`]), asks [`crate::policy`] what is due, expired and violating, starts the
//! due backups the concurrency caps allow ([`policy::Slots`]), then writes the status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use sha2::Digest;
use tracing::warn;

use super::super::conditions::Wanted;
use super::super::store_client::StoreView;
use super::{HELD_RETRY, MAX_LISTED_VIOLATIONS, MAX_REQUEUE, POLICY_LABEL, SLOT_RETRY};
use crate::api::backup_policy::{
    BACKUP_NOW_ANNOTATION, BACKUP_NOW_REQUEST_ANNOTATION, BackupNowRequest, DatasetVerification,
    MAX_LISTED_NEWEST_STORED, MAX_LISTED_VERIFICATIONS, QuarantinedBackup, StoredBackupSeen,
    VERIFY_NOW_ANNOTATION, VerifyNowRequest, Violation, ViolationReason, parse_backup_now,
};
use crate::api::condition::{COMPLIANT, OVERLAPPING, READY};
use crate::api::zfs_host::DatasetStatus;
use crate::api::{
    BackupJob, BackupJobSpec, BackupPolicy, BackupPolicyStatus, BackupType, JobPhase, ZfsHost,
};
use crate::policy::{self, DatasetState, HostState, JobState, PolicyRules};
use crate::selection::{self, HostLabels, PolicyMatcher};
use crate::wire::VerifyRequest;

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

/// The newest backup seen in the store, as remembered in the status.
fn seen_record(r: &StoredBackupSeen) -> policy::RecordedBackup<'_> {
    policy::RecordedBackup {
        id: &r.id,
        kind: r.backup_type,
        started: r.created.0,
    }
}

/// Remembers `r` as the newest backup of `host`/`dataset` seen in the store.
fn remember_seen(tally: &mut Tally, host: &str, dataset: &str, r: Option<policy::Remembered>) {
    if let Some(r) = r
        && tally.newest_stored.len() < MAX_LISTED_NEWEST_STORED
    {
        tally.newest_stored.push(StoredBackupSeen {
            host: host.to_owned(),
            dataset: dataset.to_owned(),
            id: r.id,
            backup_type: r.kind,
            created: Time(r.created),
        });
    }
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
pub(super) fn backup_now_done(
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

/// Whether the policy covers this host (by name or label selector): the one rule in
/// [`selection::covers_host`], the CLI's reports apply it too.
pub fn selects_host(policy: &BackupPolicy, host: &ZfsHost) -> bool {
    selection::covers_host(&policy.spec.hosts, &host.name_any(), host.labels())
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

/// What stays the same for every dataset of one plan: read once from the policy.
struct Settings {
    matcher: PolicyMatcher,
    /// `<namespace>/<name>`: the policy acts only on its own backups (the manifest names the
    /// policy that made each).
    owner: String,
    covered_since: Option<Timestamp>,
    verify: Option<(jiff::SignedDuration, u64)>,
    verify_now: Option<VerifyNowRequest>,
    rpo: Option<jiff::SignedDuration>,
    /// The newest backup of each dataset seen in the store at the last evaluation
    /// (`status.newestStored`), by (host, dataset).
    seen: HashMap<(String, String), StoredBackupSeen>,
}

impl Settings {
    fn of(policy: &BackupPolicy) -> Result<Self, crate::selection::PatternError> {
        let spec = &policy.spec;
        Ok(Settings {
            matcher: PolicyMatcher::new(&spec.datasets)?,
            owner: format!(
                "{}/{}",
                policy.namespace().unwrap_or_default(),
                policy.name_any()
            ),
            covered_since: policy.creation_timestamp().map(|t| t.0),
            verify: verify_settings(policy),
            verify_now: pending_verify_now(policy),
            rpo: spec
                .objectives
                .as_ref()
                .and_then(|o| o.rpo.as_ref())
                .and_then(|d| d.duration().ok())
                .and_then(|d| jiff::SignedDuration::try_from(d).ok()),
            seen: policy
                .status
                .iter()
                .flat_map(|s| &s.newest_stored)
                .map(|r| ((r.host.clone(), r.dataset.clone()), r.clone()))
                .collect(),
        })
    }
}

/// What the walk over the hosts and datasets collects before the caps and the status.
#[derive(Default)]
struct Tally {
    out: Plan,
    violations: Vec<Violation>,
    verification: Vec<DatasetVerification>,
    /// Due backups, started oldest-due first once every dataset was looked at (so the caps
    /// never starve a dataset that sorts late).
    candidates: Vec<Candidate>,
    /// Datasets the pending `backup-now` request selected that still wait for their job (a
    /// job in flight, the host unreachable, or no free slot): while any does, the request is
    /// not recorded as handled.
    request_waiting: usize,
    dataset_count: i32,
    last_backup: Option<Timestamp>,
    bytes_stored: u64,
    /// What `status.newestStored` will say.
    newest_stored: Vec<StoredBackupSeen>,
}

impl Tally {
    /// Records a violation of one dataset (or, with an empty `dataset`, of a whole host).
    fn violation(
        &mut self,
        host: &str,
        dataset: &str,
        reason: ViolationReason,
        since: Option<Timestamp>,
        message: String,
    ) {
        self.out
            .violators
            .push((host.to_owned(), dataset.to_owned(), reason));
        self.violations.push(Violation {
            host: host.to_owned(),
            dataset: dataset.to_owned(),
            reason,
            since: since.map(Time),
            message: Some(message),
        });
    }

    /// Records the violation of a host as a whole (see [`policy::host_violation`]), if it has
    /// one: the violation's dataset is empty.
    fn host_level(
        &mut self,
        host: &str,
        report: policy::HostReport,
        now: Timestamp,
        stale_after: Duration,
    ) {
        let stale =
            jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::MAX);
        if let Some(f) = policy::host_violation(report, now, stale) {
            self.violation(host, "", f.reason, f.since, f.message);
        }
    }

    fn wake_at(&mut self, at: Timestamp) {
        self.out.wake_at = Some(self.out.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The pure decision for one policy: gather → the datasets one by one → the caps → the status.
pub fn plan(inputs: &Inputs<'_>) -> Result<Plan, crate::selection::PatternError> {
    let policy = inputs.policy;
    let settings = Settings::of(policy)?;
    let mut tally = Tally::default();

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

    // A covered (named) host with no ZfsHost: nothing is known of its datasets.
    let known: Vec<String> = hosts.iter().map(|h| h.name_any()).collect();
    let covered = selection::covered_host_names(
        &policy.spec.hosts,
        hosts.iter().zip(&known).map(|(h, name)| HostLabels {
            name,
            labels: h.labels(),
        }),
    );
    for name in &covered {
        if !known.contains(name) {
            tally.host_level(
                name,
                policy::HostReport::Missing,
                inputs.now,
                inputs.host_stale_after,
            );
        }
    }
    for host in &hosts {
        plan_host(inputs, &settings, host, &jobs_by_dataset, &mut tally);
    }
    start_under_the_caps(inputs, &mut tally);
    Ok(finish(inputs, &settings, hosts.len(), tally))
}

/// Looks at every dataset of one selected host that the policy covers.
fn plan_host(
    inputs: &Inputs<'_>,
    settings: &Settings,
    host: &ZfsHost,
    jobs_by_dataset: &HashMap<(&str, &str), Vec<&BackupJob>>,
    tally: &mut Tally,
) {
    let now = inputs.now;
    let host_name = host.name_any();
    let state = host_state(host, now, inputs.host_stale_after);
    if state == HostState::Reachable {
        let seen = host
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0);
        if let Some(stale_at) = seen.and_then(|t| t.checked_add(inputs.host_stale_after).ok()) {
            tally.wake_at(stale_at);
        }
    }
    let datasets = host
        .status
        .as_ref()
        .map(|s| s.datasets.as_slice())
        .unwrap_or(&[]);
    let mut covered = 0usize;
    for ds in datasets
        .iter()
        .filter(|d| !d.excluded && settings.matcher.matches(&d.name, d.class.as_deref()))
    {
        covered += 1;
        let jobs = jobs_by_dataset
            .get(&(host_name.as_str(), ds.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        plan_dataset(inputs, settings, (&host_name, state), ds, jobs, tally);
    }
    tally.host_level(
        &host_name,
        host_report(host, covered),
        now,
        inputs.host_stale_after,
    );
}

/// Looks at one covered dataset: its violations, its verification, when to look again, a
/// due backup (a candidate for the caps) and its retention.
fn plan_dataset(
    inputs: &Inputs<'_>,
    settings: &Settings,
    (host_name, state): (&str, HostState),
    ds: &DatasetStatus,
    jobs: &[&BackupJob],
    tally: &mut Tally,
) {
    let now = inputs.now;
    let empty = StoreView::default();
    let catalogue = inputs.catalogue.unwrap_or(&empty);
    tally.dataset_count += 1;
    tally
        .out
        .covered
        .push((host_name.to_owned(), ds.name.clone()));
    let others = catalogue.other_owners(host_name, &ds.name, &settings.owner);
    if !others.is_empty() {
        tally
            .out
            .overlaps
            .push((host_name.to_owned(), ds.name.clone(), others));
    }
    let seen = settings
        .seen
        .get(&(host_name.to_owned(), ds.name.clone()))
        .map(seen_record);
    let cat = match catalogue.owned_by(host_name, &ds.name, &settings.owner) {
        Ok(c) => c,
        Err(e) => {
            remember_seen(
                tally,
                host_name,
                &ds.name,
                policy::remember(None, None, false, seen),
            );
            // Nothing is scheduled or deleted on a store that does not add up, and the
            // dataset is a violator: its backups cannot be vouched for.
            warn!(host = %host_name, dataset = %ds.name, error = %e, "inconsistent catalogue; skipped");
            tally.violation(
                host_name,
                &ds.name,
                ViolationReason::ChainBroken,
                None,
                format!("the stored backups cannot be read as a catalogue: {e}"),
            );
            return;
        }
    };
    tally.bytes_stored += cat.bytes();
    // The last backup (status, metrics) is the newest one that restores: a stored
    // incremental whose base is gone is no backup.
    if let Some(newest) = cat.newest_restorable() {
        tally.last_backup = Some(
            tally
                .last_backup
                .map_or(newest.created, |t| t.max(newest.created)),
        );
        tally
            .out
            .last_backups
            .push((host_name.to_owned(), ds.name.clone(), newest.created));
    }
    let (request, forced) = pending_requests(inputs.backup_now, host_name, &ds.name, jobs, cat);
    let dstate = DatasetState {
        catalogue: cat,
        source_snapshots: &ds.snapshots,
        host: state,
        jobs: job_state(jobs),
        covered_since: settings.covered_since,
        forced,
        last_recorded: policy::expected_backup(last_recorded(jobs), seen),
    };
    let mut p = policy::evaluate(inputs.rules, &dstate, now);
    let missing = p
        .violations
        .iter()
        .any(|f| f.reason == ViolationReason::BackupMissing);
    // A paused host's datasets are not evaluated: what was remembered stays.
    let remembered = policy::remember(
        inputs
            .catalogue
            .filter(|_| state != HostState::Paused)
            .map(|_| cat),
        dstate.last_recorded,
        missing,
        seen,
    );
    remember_seen(tally, host_name, &ds.name, remembered);
    if let Some(rpo) = settings.rpo
        && state != HostState::Paused
        && let Some(f) = policy::rpo_violation(cat, rpo, settings.covered_since, now)
    {
        p.violations.push(f);
    }
    for f in &p.violations {
        tally.violation(host_name, &ds.name, f.reason, f.since, f.message.clone());
    }
    if inputs.catalogue.is_none() {
        return; // without the store's view nothing is scheduled or deleted
    }
    let asked = settings
        .verify_now
        .as_ref()
        .filter(|r| r.selects(host_name, &ds.name))
        .map(|r| r.requested_at);
    if let Some(v) = verify_dataset(
        &mut tally.out,
        (settings.verify, asked),
        host_name,
        &ds.name,
        cat,
        now,
    ) {
        tally.verification.push(v);
    }
    schedule(tally, (host_name, state), &ds.name, p.due, request, now);
    for id in p.retention.delete {
        tally
            .out
            .delete
            .push((host_name.to_owned(), ds.name.clone(), id));
    }
    for id in p.retention.archive {
        tally
            .out
            .archive
            .push((host_name.to_owned(), ds.name.clone(), id));
    }
}

/// The `backup-now` requests still pending for one dataset: the newest one's `requestedAt`
/// and the kind they force. A request forces each dataset it selects until that dataset's job
/// exists. The requests pending for one dataset are merged into one job: a full if any asks
/// for one, marked with the newest request (which marks the older ones done too).
fn pending_requests(
    backup_now: &[BackupNowRequest],
    host_name: &str,
    dataset: &str,
    jobs: &[&BackupJob],
    cat: &policy::DatasetBackups,
) -> (Option<Timestamp>, Option<BackupType>) {
    let requests: Vec<&BackupNowRequest> = backup_now
        .iter()
        .filter(|r| r.host.as_deref().is_none_or(|h| h == host_name))
        .filter(|r| r.dataset.as_deref().is_none_or(|d| d == dataset))
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
    (request, forced)
}

/// What is due for one dataset: when to look at it again, and a due backup as a candidate for
/// the caps (or a `backup-now` request left waiting).
fn schedule(
    tally: &mut Tally,
    (host_name, state): (&str, HostState),
    dataset: &str,
    due_plan: policy::DuePlan,
    request: Option<Timestamp>,
    now: Timestamp,
) {
    // When to look at this dataset again. A job created now, one in flight, or one
    // waiting for a free slot is woken by the BackupJob watch; a future deadline by
    // its timer; a deadline that passed but is held (host unreachable, backoff) by a
    // slow poll, not a busy one.
    let mut wake = None;
    if due_plan.next_due > now {
        tally.out.next_due = Some(
            tally
                .out
                .next_due
                .map_or(due_plan.next_due, |t| t.min(due_plan.next_due)),
        );
        wake = Some(due_plan.next_due);
    } else if due_plan.due.is_none() && due_plan.held != Some(policy::Hold::JobInFlight) {
        wake = now.checked_add(HELD_RETRY).ok();
    }
    if let Some(w) = wake {
        tally.wake_at(w);
    }
    match due_plan.due {
        Some(due) => {
            let since = match due.reason {
                // Never backed up, or asked for: before anything merely due again.
                policy::DueReason::NoFull
                | policy::DueReason::Forced
                | policy::DueReason::Quarantined { .. } => Timestamp::MIN,
                _ => due_plan.next_due,
            };
            tally.candidates.push(Candidate {
                since,
                host: host_name.to_owned(),
                dataset: dataset.to_owned(),
                due,
                request,
            });
        }
        // A paused host gets no jobs: a request does not wait for it. Any other hold
        // (a job in flight, the host unreachable) ends, and the request is done then.
        None if request.is_some() && state != HostState::Paused => tally.request_waiting += 1,
        None => {}
    }
}

/// Starts the due backups, oldest-due first, while the policy's caps ([`policy::Slots`])
/// leave room; the others wait.
fn start_under_the_caps(inputs: &Inputs<'_>, tally: &mut Tally) {
    let spec = &inputs.policy.spec;
    let own_in_flight = inputs.jobs.iter().filter(|j| {
        let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
        matches!(phase, JobPhase::Pending | JobPhase::Running)
    });
    let mut slots = policy::Slots::new(
        spec.concurrency.per_host,
        spec.concurrency.per_target,
        own_in_flight.map(|j| j.spec.host.0.as_str()),
        inputs.target_in_flight_elsewhere,
    );
    let mut candidates = std::mem::take(&mut tally.candidates);
    candidates.sort_by(|a, b| (a.since, &a.host, &a.dataset).cmp(&(b.since, &b.host, &b.dataset)));
    // Whether a due backup waits for a slot that no event of this policy's jobs frees.
    let mut wake_soon = false;
    for c in candidates {
        if let policy::Admission::Wait { held_elsewhere } = slots.admit(&c.host) {
            if c.request.is_some() {
                tally.request_waiting += 1;
                wake_soon = true;
            }
            // The target's slots are (partly) held by other policies' jobs, whose changes do
            // not trigger this policy.
            wake_soon |= held_elsewhere;
            continue;
        }
        let mut job = new_job(inputs.policy, &c.host, &c.dataset, &c.due, inputs.now);
        if let Some(at) = c.request {
            job.annotations_mut()
                .insert(BACKUP_NOW_REQUEST_ANNOTATION.to_owned(), at.to_string());
        }
        tally.out.create.push(job);
    }
    if wake_soon
        && inputs.catalogue.is_some()
        && let Ok(soon) = inputs.now.checked_add(SLOT_RETRY)
    {
        tally.wake_at(soon);
    }
}

/// The plan with its status: violators counted per dataset, the listed ones capped, the
/// requests marked handled when they are.
fn finish(inputs: &Inputs<'_>, settings: &Settings, hosts: usize, tally: Tally) -> Plan {
    let policy = inputs.policy;
    let Tally {
        mut out,
        mut violations,
        mut verification,
        request_waiting,
        dataset_count,
        last_backup,
        bytes_stored,
        newest_stored,
        ..
    } = tally;
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
        hosts: i32::try_from(hosts).unwrap_or(i32::MAX),
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
        verify_now_handled: match (&settings.verify_now, inputs.catalogue) {
            (Some(r), Some(_)) => Some(Time(r.requested_at)),
            _ => policy
                .status
                .as_ref()
                .and_then(|s| s.verify_now_handled.clone()),
        },
        verification,
        drill_now_handled: None, // set by drill::merge_into
        recovery: Vec::new(),
        newest_stored,
        conditions: Vec::new(),
    };
    if inputs.catalogue.is_none() {
        out.store_problem = Some("the backup host's catalogue could not be read".into());
    }
    out
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

/// The `backup-now` requests on the policy not yet acted on, oldest first (an unreadable
/// annotation is logged and ignored).
pub(super) fn pending_backup_now(policy: &BackupPolicy) -> Vec<BackupNowRequest> {
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

pub(super) fn new_job(
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

/// The policy's conditions: Ready (the store was read), Compliant (no violator) and, when
/// datasets are shared with another policy or were, Overlapping.
pub(super) fn wanted_conditions(plan: &Plan, policy: &BackupPolicy) -> Vec<Wanted<'static>> {
    let generation = policy.meta().generation;
    let mut out = vec![
        ready_condition(plan, generation),
        compliant_condition(plan, generation),
    ];
    out.extend(overlapping_condition(plan, policy, generation));
    out
}

/// Ready: whether the store's catalogue could be read.
fn ready_condition(plan: &Plan, generation: Option<i64>) -> Wanted<'static> {
    match &plan.store_problem {
        Some(problem) => Wanted {
            type_: READY,
            status: false,
            reason: "StoreUnreachable",
            message: problem.clone(),
            observed_generation: generation,
        },
        None => Wanted {
            type_: READY,
            status: true,
            reason: "Reconciled",
            message: format!(
                "{} hosts, {} datasets",
                plan.status.hosts, plan.status.datasets
            ),
            observed_generation: generation,
        },
    }
}

/// Compliant: no violator, the store read, and something selected.
fn compliant_condition(plan: &Plan, generation: Option<i64>) -> Wanted<'static> {
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
    Wanted {
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
    }
}

/// Overlapping: shared datasets are reported (and the condition cleared once none is left);
/// `None` when none is shared and none was.
fn overlapping_condition(
    plan: &Plan,
    policy: &BackupPolicy,
    generation: Option<i64>,
) -> Option<Wanted<'static>> {
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
        return Some(Wanted {
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
    None
}
