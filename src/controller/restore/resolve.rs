//! Resolving one Restore, pure: which backup host holds the source's backups and which chain
//! of pieces a Restore applies ([`resolve`]), the refusals found before anything is sent
//! ([`check_destination`], [`check_tenancy`]), and the status either leads to
//! ([`next_status`]). The reconciler in `mod.rs` asks the stores and writes the status.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::super::conditions::{self, Wanted};
use super::reason;
use crate::api::condition::READY;
use crate::api::restore::{RestorePhase, RestorePiece};
use crate::api::{BackupPolicy, RestoreSpec, RestoreStatus, ZfsHost};
use crate::policy::{ChainError, DatasetBackups, PiecesError, RestoreTarget, restore_pieces};
use crate::store;

/// Why a Restore is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub(super) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// One backup host asked for the source's catalogue: its name, endpoint, and answer.
#[derive(Debug, Clone)]
pub struct StoreAnswer {
    pub host: String,
    pub endpoint: Option<String>,
    pub catalogue: Result<store::Catalogue, String>,
}

/// A resolved restore: where the pieces are, and which, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub store_host: String,
    pub store_endpoint: String,
    pub pieces: Vec<RestorePiece>,
}

impl Resolved {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.bytes).sum()
    }
}

fn target_of(spec: &RestoreSpec) -> RestoreTarget {
    match (&spec.source.backup, &spec.source.at) {
        (Some(id), _) => RestoreTarget::Id(id.clone()),
        (None, Some(at)) => RestoreTarget::At(at.0),
        (None, None) => RestoreTarget::Latest,
    }
}

fn chain_refusal(e: &ChainError, what: &str) -> Refusal {
    match e {
        e if e.is_broken() => Refusal::new(reason::CHAIN_BROKEN, format!("{what}: {e}")),
        _ => Refusal::new(reason::NOT_FOUND, format!("{what}: {e}")),
    }
}

/// Picks the store holding the source's backups and resolves the chain (pure).
///
/// The store with the newest backup of the dataset wins; a store that did not answer makes
/// the answer `StoreUnreachable` only when no reachable store has backups of the dataset.
pub fn resolve(spec: &RestoreSpec, answers: &[StoreAnswer]) -> Result<Resolved, Refusal> {
    let (host, dataset) = (spec.source.host.as_str(), spec.source.dataset_name());
    let what = format!("{host}:{dataset}");
    if answers.is_empty() {
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!(
                "no BackupPolicy in this namespace stores backups in files or a bucket, so no backups of {what} can be found"
            ),
        ));
    }
    let mut unreachable = Vec::new();
    let mut best: Option<(&StoreAnswer, &store::Catalogue, DatasetBackups)> = None;
    for a in answers {
        let (Some(_), Ok(stored)) = (&a.endpoint, &a.catalogue) else {
            let why = match &a.catalogue {
                Err(e) => e.clone(),
                Ok(_) => "no agent endpoint".into(),
            };
            unreachable.push(format!("{}: {why}", a.host));
            continue;
        };
        let backups = stored
            .of(host, dataset)
            .filter(|b| spec.source.include_archive || !b.archived);
        let cat = DatasetBackups::from_store(backups).map_err(|e| {
            Refusal::new(
                reason::CHAIN_BROKEN,
                format!("the backups of {what} on {} are inconsistent: {e}", a.host),
            )
        })?;
        let newest = cat.newest().map(|r| r.created);
        if newest.is_some()
            && best
                .as_ref()
                .is_none_or(|(_, _, b)| b.newest().map(|r| r.created) < newest)
        {
            best = Some((a, stored, cat));
        }
    }
    let Some((answer, stored, cat)) = best else {
        if !unreachable.is_empty() {
            return Err(Refusal::new(
                reason::STORE_UNREACHABLE,
                format!(
                    "no reachable backup host has backups of {what}; unreachable: {}",
                    unreachable.join("; ")
                ),
            ));
        }
        let area = if spec.source.include_archive {
            "live or archived"
        } else {
            "live (set includeArchive to search the archive)"
        };
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!("no {area} backups of {what} are stored"),
        ));
    };
    let pieces =
        restore_pieces(&cat, stored, host, dataset, &target_of(spec)).map_err(|e| match e {
            PiecesError::Chain(e) => chain_refusal(&e, &what),
            PiecesError::NoManifest { .. } | PiecesError::NoSha256 { .. } => {
                Refusal::new(reason::NOT_FOUND, format!("{what}: {e}"))
            }
        })?;
    Ok(Resolved {
        store_host: answer.host.clone(),
        store_endpoint: answer.endpoint.clone().unwrap_or_default(),
        pieces,
    })
}

/// Refuses a destination dataset the destination host reports, unless `force` (pure).
pub fn check_destination(spec: &RestoreSpec, dest: Option<&ZfsHost>) -> Result<(), Refusal> {
    let name = spec.destination.host.as_str();
    let Some(dest) = dest else {
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!("destination host {name} does not exist (no ZfsHost of that name)"),
        ));
    };
    let ds = spec.destination.dataset.as_str();
    let exists = dest
        .status
        .as_ref()
        .is_some_and(|s| s.datasets.iter().any(|d| d.name == ds));
    if exists && !spec.force {
        return Err(Refusal::new(
            reason::DESTINATION_EXISTS,
            format!("{name}:{ds} exists; set force: true to replace it"),
        ));
    }
    Ok(())
}

/// Refuses a Restore whose namespace may not use its source host (whose backups it reads) or
/// its destination host, or whose destination lies outside the destination's restore roots
/// (pure). A source host that no longer exists serves only the operator's namespace; a missing
/// destination is left to [`check_destination`].
pub fn check_tenancy(
    spec: &RestoreSpec,
    hosts: &[ZfsHost],
    namespace: &str,
    operator_namespace: &str,
) -> Result<(), Refusal> {
    let find = |name: &str| hosts.iter().find(|h| h.name_any() == name);
    let source_name = spec.source.host.as_str();
    let gone = crate::api::ZfsHostSpec::on_node("");
    let source = find(source_name).map_or(&gone, |h| &h.spec);
    let dest = find(spec.destination.host.as_str());
    let mut uses = vec![(source_name, source, "the source of the backups")];
    if let Some(d) = dest {
        uses.push((spec.destination.host.as_str(), &d.spec, "the destination"));
    }
    if let Some(why) = crate::tenancy::namespace_refusal(namespace, operator_namespace, uses) {
        return Err(Refusal::new(reason::FORBIDDEN, why));
    }
    if let Some(d) = dest
        && let Some(why) = crate::tenancy::restore_root_refusal(
            spec.destination.host.as_str(),
            &d.spec,
            spec.destination.dataset.as_str(),
        )
    {
        return Err(Refusal::new(reason::FORBIDDEN, why));
    }
    Ok(())
}

/// The file-store backup hosts named by these policies, sorted and distinct.
pub fn store_hosts<'a>(policies: impl IntoIterator<Item = &'a BackupPolicy>) -> Vec<String> {
    policies
        .into_iter()
        .filter(|p| p.spec.target.path.is_some())
        .map(|p| p.spec.target.host_name().to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The status a resolution (or a refusal) leads to, from the current one.
pub fn next_status(
    current: &RestoreStatus,
    generation: Option<i64>,
    outcome: &Result<Resolved, Refusal>,
    now: Time,
) -> RestoreStatus {
    let mut s = current.clone();
    s.observed_generation = generation;
    let wanted = match outcome {
        Ok(r) => {
            s.phase = RestorePhase::Pending;
            s.chain = r.pieces.iter().map(|p| p.id.clone()).collect();
            s.bytes = Some(r.bytes());
            s.bytes_done = Some(0);
            s.pieces = r.pieces.clone();
            s.store_host = Some(r.store_host.clone());
            s.store_endpoint = Some(r.store_endpoint.clone());
            s.message = Some(format!(
                "{} piece(s) from {}, waiting for the destination agent",
                r.pieces.len(),
                r.store_host
            ));
            Wanted {
                type_: READY,
                status: false,
                reason: reason::RESOLVED,
                message: "chain resolved; waiting for the destination agent".into(),
                observed_generation: generation,
            }
        }
        Err(refusal) => {
            s.phase = RestorePhase::Failed;
            s.verified = Some(false);
            s.message = Some(refusal.message.clone());
            s.finished_at = Some(now.clone());
            Wanted {
                type_: READY,
                status: false,
                reason: refusal.reason,
                message: refusal.message.clone(),
                observed_generation: generation,
            }
        }
    };
    s.conditions = conditions::set(&current.conditions, &wanted, now);
    s
}

/// Whether the controller still has to resolve this Restore.
pub fn needs_resolving(status: Option<&RestoreStatus>) -> bool {
    status.is_none_or(|s| s.phase == RestorePhase::Pending && s.chain.is_empty())
}
