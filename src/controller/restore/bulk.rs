//! A bulk Restore (`source.datasets`), pure: its names and patterns expanded against the
//! datasets that have backups ([`expand`]), every destination and chain checked before anything
//! starts ([`plan_bulk`]), and each step of following the children one at a time
//! ([`bulk_step`], [`bulk_status`], [`child_restore`]). The reconciler in `mod.rs` lists the
//! children and creates the next one.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use sha2::Digest;

use super::super::conditions::{self, Wanted};
use super::reason;
use crate::api::condition::READY;
use crate::api::restore::{BULK_PARENT_LABEL, BulkDataset, RestorePhase};
use crate::api::{DatasetPattern, DatasetSelector, Restore, RestoreSpec, RestoreStatus, ZfsHost};

use super::resolve::{Refusal, StoreAnswer, check_destination, resolve};

/// Whether a pattern holds a glob character (otherwise it names one dataset).
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// The datasets of `host` that have backups in the reachable answers (live ones, or archived
/// too with `include_archive`), and the stores that did not answer.
pub fn datasets_with_backups(
    answers: &[StoreAnswer],
    host: &str,
    include_archive: bool,
) -> (BTreeSet<String>, Vec<String>) {
    let mut found = BTreeSet::new();
    let mut unreachable = Vec::new();
    for a in answers {
        match (&a.endpoint, &a.catalogue) {
            (Some(_), Ok(cat)) => found.extend(
                cat.backups
                    .iter()
                    .filter(|b| b.manifest.host == host && (include_archive || !b.archived))
                    .map(|b| b.manifest.dataset.clone()),
            ),
            (_, Err(e)) => unreachable.push(format!("{}: {e}", a.host)),
            (None, Ok(_)) => unreachable.push(format!("{}: no agent endpoint", a.host)),
        }
    }
    (found, unreachable)
}

/// The datasets a bulk restore names, from those that have backups: sorted (a parent before
/// its children), distinct. Every name and pattern must match at least one (pure).
pub fn expand(
    patterns: &[DatasetPattern],
    available: &BTreeSet<String>,
) -> Result<Vec<String>, Refusal> {
    let mut chosen = BTreeSet::new();
    let mut unmatched = Vec::new();
    for p in patterns {
        let before = chosen.len();
        let mut any = false;
        if is_glob(p.as_str()) {
            let matcher = crate::selection::DatasetMatcher::new(&DatasetSelector {
                include: vec![p.clone()],
                exclude: Vec::new(),
            })
            .map_err(|e| Refusal::new(reason::NOT_FOUND, e.to_string()))?;
            for d in available.iter().filter(|d| matcher.matches(d)) {
                any = true;
                chosen.insert(d.clone());
            }
        } else if available.contains(p.as_str()) {
            any = true;
            chosen.insert(p.as_str().to_owned());
        }
        if !any && chosen.len() == before {
            unmatched.push(p.as_str().to_owned());
        }
    }
    if !unmatched.is_empty() {
        const SHOWN: usize = 20;
        let mut have = available
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if available.is_empty() {
            have = "none".into();
        } else if available.len() > SHOWN {
            have.push_str(&format!(" and {} more", available.len() - SHOWN));
        }
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!(
                "{} match(es) no dataset with backups (datasets with backups: {have})",
                unmatched.join(", ")
            ),
        ));
    }
    Ok(chosen.into_iter().collect())
}

/// The child Restore's name for one dataset of bulk Restore `parent` (deterministic).
pub fn child_name(parent: &str, dataset: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(dataset.as_bytes()));
    format!("{parent}-{}", &digest[..8])
}

/// Where a bulk restore puts `dataset`: `<base>/<dataset>`.
pub fn bulk_destination(base: &str, dataset: &str) -> String {
    format!("{base}/{dataset}")
}

/// The spec of the child that restores `dataset` of a bulk restore: one dataset, the same
/// host, point in time, archive search, force and verify, into `<base>/<dataset>`.
pub fn child_spec(parent: &RestoreSpec, dataset: &str) -> RestoreSpec {
    let mut spec = parent.clone();
    spec.source.dataset = Some(dataset.into());
    spec.source.datasets = Vec::new();
    spec.source.backup = None;
    spec.destination.dataset = bulk_destination(parent.destination.dataset.as_str(), dataset)
        .as_str()
        .into();
    spec
}

/// Expands a bulk restore and checks that every dataset can be restored: its destination
/// (absent unless `force`, a valid length) and its chain. One refusal names every dataset
/// that cannot be restored, and then nothing is started (pure).
pub fn plan_bulk(
    name: &str,
    spec: &RestoreSpec,
    answers: &[StoreAnswer],
    dest: Option<&ZfsHost>,
) -> Result<Vec<BulkDataset>, Refusal> {
    let host = spec.source.host.as_str();
    let (available, unreachable) =
        datasets_with_backups(answers, host, spec.source.include_archive);
    if answers.is_empty() {
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!(
                "no BackupPolicy in this namespace stores backups in files or a bucket, so no backups of {host} can be found"
            ),
        ));
    }
    if available.is_empty() && !unreachable.is_empty() {
        return Err(Refusal::new(
            reason::STORE_UNREACHABLE,
            format!(
                "no reachable backup host has backups of {host}; unreachable: {}",
                unreachable.join("; ")
            ),
        ));
    }
    let datasets = expand(&spec.source.datasets, &available)
        .map_err(|r| Refusal::new(r.reason, format!("on {host}: {}", r.message)))?;
    let mut rows = Vec::new();
    let mut refused: Vec<(String, Refusal)> = Vec::new();
    for d in &datasets {
        let child = child_spec(spec, d);
        let dest_name = child.destination.dataset.as_str().to_owned();
        let outcome = if dest_name.len() > 255 {
            Err(Refusal::new(
                reason::NOT_FOUND,
                format!("{dest_name} is longer than a ZFS dataset name may be (255)"),
            ))
        } else {
            check_destination(&child, dest).and_then(|()| resolve(&child, answers))
        };
        match outcome {
            Ok(r) => rows.push(BulkDataset {
                source: d.clone(),
                destination: dest_name,
                restore: child_name(name, d),
                phase: RestorePhase::Pending,
                bytes: Some(r.bytes()),
                bytes_done: Some(0),
                message: Some(format!(
                    "{} piece(s) from {}, waiting for its turn",
                    r.pieces.len(),
                    r.store_host
                )),
                verified: None,
            }),
            Err(e) => refused.push((d.clone(), e)),
        }
    }
    if let Some((_, first)) = refused.first() {
        // A missing destination host is the same answer for every dataset: say it once.
        if dest.is_none() {
            return Err(first.clone());
        }
        let reason = if refused.iter().all(|(_, r)| r.reason == first.reason) {
            first.reason
        } else {
            reason::NOT_FOUND
        };
        let why: Vec<String> = refused
            .iter()
            .map(|(d, r)| format!("{d}: {} ({})", r.message, r.reason))
            .collect();
        return Err(Refusal::new(
            reason,
            format!(
                "{} of {} datasets cannot be restored, so none was started: {}",
                refused.len(),
                datasets.len(),
                why.join("; ")
            ),
        ));
    }
    Ok(rows)
}

/// What a bulk Restore looks like given its children, and which child to start next.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkStep {
    pub rows: Vec<BulkDataset>,
    pub phase: RestorePhase,
    pub verified: Option<bool>,
    pub message: String,
    pub reason: &'static str,
    /// The row whose child Restore should be created now.
    pub start: Option<usize>,
}

pub(super) fn is_final(phase: RestorePhase) -> bool {
    matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed)
}

fn ready_reason(st: &RestoreStatus) -> Option<&str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

/// Folds the children's status into the rows, decides the parent's phase, and picks the next
/// child to start: one at a time, in row order (pure).
pub fn bulk_step(spec: &RestoreSpec, rows: &[BulkDataset], children: &[Restore]) -> BulkStep {
    let mut rows = rows.to_vec();
    let mut active = false;
    for row in &mut rows {
        let Some(child) = children.iter().find(|c| c.name_any() == row.restore) else {
            continue;
        };
        let st = child.status.clone().unwrap_or_default();
        row.phase = st.phase;
        row.verified = st.verified;
        row.bytes = st.bytes.or(row.bytes);
        row.bytes_done = st.bytes_done.or(row.bytes_done);
        row.message = st
            .message
            .clone()
            .map(|m| match (st.phase, ready_reason(&st)) {
                (RestorePhase::Failed, Some(r)) => format!("{r}: {m}"),
                _ => m,
            });
        if !is_final(st.phase) {
            active = true;
        }
    }
    let exists = |row: &BulkDataset| children.iter().any(|c| c.name_any() == row.restore);
    let start = if active {
        None
    } else {
        rows.iter()
            .position(|r| r.phase == RestorePhase::Pending && !exists(r))
    };
    let ok = |r: &BulkDataset| {
        r.phase == RestorePhase::Succeeded && (!spec.verify || r.verified == Some(true))
    };
    let total = rows.len();
    let done = rows.iter().filter(|r| is_final(r.phase)).count();
    let succeeded = rows.iter().filter(|r| ok(r)).count();
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| is_final(r.phase) && !ok(r))
        .map(|r| {
            let why = match (&r.message, r.phase) {
                (Some(m), _) => m.clone(),
                (None, RestorePhase::Succeeded) => "succeeded but was not verified".into(),
                (None, _) => "failed".into(),
            };
            format!("{} ({why})", r.source)
        })
        .collect();
    let at = format!(
        "{}:{}",
        spec.destination.host.as_str(),
        spec.destination.dataset.as_str()
    );
    if done == total && total > 0 {
        if failed.is_empty() {
            let verified = if spec.verify { " and verified" } else { "" };
            return BulkStep {
                rows,
                phase: RestorePhase::Succeeded,
                verified: Some(spec.verify),
                message: format!("{total} dataset(s) restored{verified} under {at}"),
                reason: reason::SUCCEEDED,
                start: None,
            };
        }
        return BulkStep {
            rows,
            phase: RestorePhase::Failed,
            verified: Some(false),
            message: format!(
                "{} of {total} dataset(s) not restored: {}",
                failed.len(),
                failed.join("; ")
            ),
            reason: reason::DATASETS_FAILED,
            start: None,
        };
    }
    let current = rows
        .iter()
        .enumerate()
        .find(|(i, r)| (exists(r) && !is_final(r.phase)) || Some(*i) == start)
        .map(|(i, r)| format!("restoring {} ({} of {total})", r.source, i + 1))
        .unwrap_or_else(|| "waiting".into());
    let started = rows.iter().any(exists) || start.is_some();
    BulkStep {
        phase: if started {
            RestorePhase::Running
        } else {
            RestorePhase::Pending
        },
        verified: None,
        message: format!(
            "{current} under {at}; {succeeded} succeeded, {} failed",
            failed.len()
        ),
        reason: reason::RESTORING,
        start,
        rows,
    }
}

/// The parent's status after a step (pure but for `now`).
pub fn bulk_status(
    current: &RestoreStatus,
    generation: Option<i64>,
    step: &BulkStep,
    now: Time,
) -> RestoreStatus {
    let mut s = current.clone();
    s.observed_generation = generation;
    s.phase = step.phase;
    s.verified = step.verified;
    s.datasets = step.rows.clone();
    s.bytes = Some(step.rows.iter().filter_map(|r| r.bytes).sum());
    s.bytes_done = Some(step.rows.iter().filter_map(|r| r.bytes_done).sum());
    s.message = Some(step.message.clone());
    if s.started_at.is_none() && step.phase != RestorePhase::Pending {
        s.started_at = Some(now.clone());
    }
    if is_final(step.phase) && s.finished_at.is_none() {
        s.finished_at = Some(now.clone());
    }
    let wanted = Wanted {
        type_: READY,
        status: step.phase == RestorePhase::Succeeded,
        reason: step.reason,
        message: step.message.clone(),
        observed_generation: generation,
    };
    s.conditions = conditions::set(&current.conditions, &wanted, now);
    s
}

/// The child Restore for row `row` of bulk Restore `parent`.
pub fn child_restore(parent: &Restore, row: &BulkDataset) -> Restore {
    let mut child = Restore::new(&row.restore, child_spec(&parent.spec, &row.source));
    child.metadata.namespace = parent.namespace();
    child.metadata.labels = Some(
        [(BULK_PARENT_LABEL.to_owned(), parent.name_any())]
            .into_iter()
            .collect(),
    );
    child.metadata.owner_references = parent.controller_owner_ref(&()).map(|o| vec![o]);
    child
}
