//! The Restore reconciler: resolves what a Restore applies, and refuses what cannot work.
//!
//! A new Restore (no chain yet, phase Pending) is resolved once: the controller finds the
//! backup host holding the source's backups (the file-store targets of the BackupPolicies in
//! the Restore's namespace, each asked for its catalogue), builds the dataset's catalogue
//! (live backups, plus the archive area with `includeArchive`), and resolves the chain (the
//! newest backup at or before `at`, the backup `backup`, or the newest). It writes the chain,
//! its pieces (id, snapshot, bytes, sha256), the total bytes and the store to status; the
//! destination host's agent then claims and runs it (agent/src/restore.rs).
//!
//! A Restore that cannot work is failed at once with a `Ready=False` condition whose reason
//! says why: `ChainBroken`, `NotFound`, `DestinationExists` or `StoreUnreachable`. After that
//! (or once a chain is written) the controller leaves the Restore alone: the agent owns it.
//!
//! A *bulk* Restore (`source.datasets`) is never run by an agent. The controller expands its
//! names and patterns against the datasets of the source host that have backups, checks
//! every destination (`<base>/<dataset>`) and resolves every chain first (if one cannot be
//! restored, nothing is started and the refusal names each dataset and why), writes one row
//! per dataset to `status.datasets`, and then creates one child Restore per dataset
//! (`<parent>-<8 hex of the dataset's sha256>`, owned by the parent, labelled
//! `zetaback.io/bulk-restore=<parent>`), one at a time in name order so a parent dataset is
//! received before its children. A failed child does not stop the others. The parent
//! follows its children (a watch on the label) and ends Succeeded when every child
//! succeeded verified, else Failed naming the failed datasets.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use sha2::Digest;
use tracing::{info, warn};

use super::conditions::{self, Wanted, status_changed};
use super::{Context, Error, Reconciled, status};
use crate::api::condition::READY;
use crate::api::restore::{BULK_PARENT_LABEL, BulkDataset, RestorePhase, RestorePiece};
use crate::api::{
    BackupPolicy, DatasetPattern, DatasetSelector, Restore, RestoreSpec, RestoreStatus, ZfsHost,
};
use crate::policy::{ChainError, DatasetBackups, PiecesError, RestoreTarget, restore_pieces};
use crate::store;

/// `Ready=False` reasons the controller gives.
pub mod reason {
    pub const RESOLVED: &str = "ChainResolved";
    pub const CHAIN_BROKEN: &str = "ChainBroken";
    pub const NOT_FOUND: &str = "NotFound";
    pub const DESTINATION_EXISTS: &str = "DestinationExists";
    pub const STORE_UNREACHABLE: &str = "StoreUnreachable";
    /// A bulk restore whose children are running (or about to).
    pub const RESTORING: &str = "Restoring";
    /// A bulk restore whose every dataset was restored (verified when asked).
    pub const SUCCEEDED: &str = "Succeeded";
    /// A bulk restore that ended with at least one dataset not restored.
    pub const DATASETS_FAILED: &str = "DatasetsFailed";
    /// The Restore's namespace may not use its source or destination host, or its
    /// destination is outside the destination host's restore roots.
    pub const FORBIDDEN: &str = crate::tenancy::FORBIDDEN;
}

/// Why a Restore is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
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
            PiecesError::NoManifest { .. } => {
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

async fn ask_stores(
    ctx: &Context,
    obj: &Restore,
    hosts: &[ZfsHost],
) -> Result<Vec<StoreAnswer>, Error> {
    let ns = obj.namespace().ok_or(Error::MissingMeta("Restore"))?;
    let policies = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: "BackupPolicies".into(),
            source,
        })?
        .items;
    let mut answers = Vec::new();
    for name in store_hosts(&policies) {
        let host = hosts.iter().find(|h| h.name_any() == name);
        // A backup host that does not serve the Restore's namespace is not asked.
        if host.is_some_and(|h| {
            !crate::tenancy::namespace_allowed(&h.spec, &ns, &ctx.operator_namespace)
        }) {
            continue;
        }
        let endpoint = host
            .and_then(|h| h.status.as_ref())
            .and_then(|s| s.agent_endpoint.clone());
        let catalogue = match &endpoint {
            None => Err(format!(
                "backup host {name} has no agent endpoint (is its agent running?)"
            )),
            Some(ep) => ctx
                .store
                .catalogue(
                    &super::store_tls::peer_address(
                        host.map(|h| h.spec.node_name.as_str()).unwrap_or_default(),
                        ep,
                    ),
                    obj.spec.source.host.as_str(),
                )
                .await
                .map_err(|e| e.to_string()),
        };
        answers.push(StoreAnswer {
            host: name,
            endpoint,
            catalogue,
        });
    }
    Ok(answers)
}

/// Whether the controller still has to resolve this Restore.
pub fn needs_resolving(status: Option<&RestoreStatus>) -> bool {
    status.is_none_or(|s| s.phase == RestorePhase::Pending && s.chain.is_empty())
}

impl Reconciled for Restore {
    const KIND: &'static str = "Restore";

    fn also_watch(
        controller: kube::runtime::Controller<kube::core::DeserializeGuard<Self>>,
        ctx: &Context,
        namespace: Option<&str>,
    ) -> kube::runtime::Controller<kube::core::DeserializeGuard<Self>> {
        // A bulk Restore follows its children: any change of a child reconciles the parent.
        let children: Api<Restore> = match namespace {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        controller.watches(
            children,
            kube::runtime::watcher::Config::default().labels(BULK_PARENT_LABEL),
            |child: Restore| {
                let parent = child.labels().get(BULK_PARENT_LABEL).cloned();
                let ns = child.namespace();
                parent.into_iter().map(move |name| {
                    let r = kube::runtime::reflector::ObjectRef::new(&name);
                    match &ns {
                        Some(ns) => r.within(ns),
                        None => r,
                    }
                })
            },
        )
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        if obj.spec.source.is_bulk() {
            return reconcile_bulk(&obj, &ctx).await;
        }
        if !needs_resolving(obj.status.as_ref()) {
            return Ok(Action::await_change());
        }
        let hosts = list_hosts(&ctx).await?;
        let dest = destination_host(&hosts, &obj.spec);
        let ns = obj.namespace().ok_or(Error::MissingMeta("Restore"))?;
        let mut buckets = super::restore_objstore::Buckets::default();
        let outcome = match check_tenancy(&obj.spec, &hosts, &ns, &ctx.operator_namespace)
            .and_then(|()| check_destination(&obj.spec, dest))
        {
            Err(r) => Err(r),
            Ok(()) => {
                let mut answers = ask_stores(&ctx, &obj, &hosts).await?;
                buckets = super::restore_objstore::Buckets::ask(&ctx.client, &ns).await?;
                answers.extend(buckets.answers());
                resolve(&obj.spec, &answers)
            }
        };
        match &outcome {
            Ok(r) => {
                info!(store = %r.store_host, chain = ?r.pieces.iter().map(|p| &p.id).collect::<Vec<_>>(),
                bytes = r.bytes(), "restore chain resolved")
            }
            Err(r) => warn!(reason = r.reason, message = %r.message, "restore refused"),
        }
        let current = obj.status.clone().unwrap_or_default();
        write_outcome(&ctx, &obj, &current, &outcome, &buckets).await?;
        Ok(Action::await_change())
    }
}

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

fn is_final(phase: RestorePhase) -> bool {
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

/// Every ZfsHost (a Restore's destination and the hosts whose stores may hold its backups).
async fn list_hosts(ctx: &Context) -> Result<Vec<ZfsHost>, Error> {
    Ok(Api::<ZfsHost>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: "ZfsHosts".into(),
            source,
        })?
        .items)
}

/// The ZfsHost a Restore restores to, if it exists.
fn destination_host<'a>(hosts: &'a [ZfsHost], spec: &RestoreSpec) -> Option<&'a ZfsHost> {
    hosts
        .iter()
        .find(|h| h.name_any() == spec.destination.host.as_str())
}

/// Writes `next` if it [changed](status_changed) (in more than times: of its conditions, or
/// `finishedAt`, so a refusal found again is not a new status).
async fn write_if_changed(
    ctx: &Context,
    obj: &Restore,
    current: &RestoreStatus,
    next: &RestoreStatus,
) -> Result<(), Error> {
    if !status_changed(current, next) {
        return Ok(());
    }
    status::apply(ctx, obj, Restore::KIND, next).await
}

/// Writes the status a resolution or a refusal leads to ([`next_status`]), if it changed.
async fn write_outcome(
    ctx: &Context,
    obj: &Restore,
    current: &RestoreStatus,
    outcome: &Result<Resolved, Refusal>,
    buckets: &super::restore_objstore::Buckets,
) -> Result<(), Error> {
    let now = Time(jiff::Timestamp::now());
    let secs = now.0.as_second();
    let next = next_status(current, obj.metadata.generation, outcome, now);
    let next = buckets.mark(outcome, next);
    let next = super::grants::with_grant(obj, current, next, ctx.grants.as_ref(), secs);
    write_if_changed(ctx, obj, current, &next).await
}

async fn reconcile_bulk(obj: &Restore, ctx: &Context) -> Result<Action, Error> {
    let current = obj.status.clone().unwrap_or_default();
    if is_final(current.phase) {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().ok_or(Error::MissingMeta("Restore"))?;
    let name = obj.name_any();
    let mut rows = current.datasets.clone();
    if rows.is_empty() {
        let hosts = list_hosts(ctx).await?;
        let dest = destination_host(&hosts, &obj.spec);
        if let Err(refusal) = check_tenancy(&obj.spec, &hosts, &ns, &ctx.operator_namespace) {
            warn!(reason = refusal.reason, message = %refusal.message, "bulk restore refused");
            write_outcome(ctx, obj, &current, &Err(refusal), &Default::default()).await?;
            return Ok(Action::await_change());
        }
        let answers = ask_stores(ctx, obj, &hosts).await?;
        match plan_bulk(&name, &obj.spec, &answers, dest) {
            Ok(planned) => {
                info!(datasets = ?planned.iter().map(|r| &r.source).collect::<Vec<_>>(),
                    "bulk restore expanded");
                rows = planned;
            }
            Err(refusal) => {
                warn!(reason = refusal.reason, message = %refusal.message, "bulk restore refused");
                write_outcome(ctx, obj, &current, &Err(refusal), &Default::default()).await?;
                return Ok(Action::await_change());
            }
        }
    }
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &ns);
    let children = api
        .list(&ListParams::default().labels(&format!("{BULK_PARENT_LABEL}={name}")))
        .await
        .map_err(|source| Error::Read {
            what: format!("the child Restores of {ns}/{name}"),
            source,
        })?
        .items;
    let step = bulk_step(&obj.spec, &rows, &children);
    let now = Time(jiff::Timestamp::now());
    let next = bulk_status(&current, obj.metadata.generation, &step, now);
    // The plan is recorded before a child is created, so a restart re-creates the same ones.
    write_if_changed(ctx, obj, &current, &next).await?;
    if let Some(i) = step.start {
        let child = child_restore(obj, &step.rows[i]);
        info!(child = %step.rows[i].restore, dataset = %step.rows[i].source, "starting a child restore");
        match api.create(&PostParams::default(), &child).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(Error::Write {
                    what: format!("child Restore {ns}/{}", step.rows[i].restore),
                    source,
                });
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::restore::{RestoreDestination, RestoreSource};
    use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
    use crate::store::{Manifest, StoredBackup};

    fn spec(at: Option<i64>, backup: Option<&str>) -> RestoreSpec {
        RestoreSpec {
            source: RestoreSource {
                host: "src".into(),
                dataset: Some("tank/db".into()),
                datasets: vec![],
                at: at.map(|t| Time(jiff::Timestamp::from_second(t).expect("ts"))),
                backup: backup.map(str::to_owned),
                include_archive: false,
            },
            destination: RestoreDestination {
                host: "dst".into(),
                dataset: "tank/restored".into(),
            },
            force: false,
            verify: true,
            drill: false,
        }
    }

    fn stored(id: &str, archived: bool) -> StoredBackup {
        let sid: store::StreamId = id.parse().expect("id");
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "id": id, "host": "src", "dataset": "tank/db", "snapshot": format!("s{}", sid.ts()),
            "type": if id.contains("incremental") { "incremental" } else { "full" },
            "bytes": 10, "sha256": format!("sha-{id}"), "compression": "none",
            "created": jiff::Timestamp::from_second(sid.ts()).expect("ts"),
        }))
        .expect("manifest");
        StoredBackup {
            manifest: m,
            archived,
            verification: None,
        }
    }

    fn answer(backups: Vec<StoredBackup>) -> StoreAnswer {
        StoreAnswer {
            host: "bak".into(),
            endpoint: Some("127.0.0.1:1".into()),
            catalogue: Ok(store::Catalogue {
                backups,
                problems: vec![],
            }),
        }
    }

    fn ids(r: &Resolved) -> Vec<&str> {
        r.pieces.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn resolves_newest_at_and_id() {
        let a = answer(vec![
            stored("100.full", false),
            stored("200.incremental.100", false),
            stored("300.incremental.200", false),
        ]);
        let r = resolve(&spec(None, None), std::slice::from_ref(&a)).expect("newest");
        assert_eq!(
            ids(&r),
            ["100.full", "200.incremental.100", "300.incremental.200"]
        );
        assert_eq!(r.bytes(), 30);
        assert_eq!(r.pieces[0].sha256, "sha-100.full");
        let r = resolve(&spec(Some(250), None), std::slice::from_ref(&a)).expect("at");
        assert_eq!(ids(&r), ["100.full", "200.incremental.100"]);
        let r = resolve(&spec(None, Some("100.full")), std::slice::from_ref(&a)).expect("id");
        assert_eq!(ids(&r), ["100.full"]);
        let e = resolve(&spec(Some(50), None), std::slice::from_ref(&a)).expect_err("nothing");
        assert_eq!(e.reason, reason::NOT_FOUND);
    }

    #[test]
    fn broken_chain_and_archive() {
        let a = answer(vec![
            stored("100.full", false),
            stored("300.incremental.200", false),
        ]);
        let e = resolve(&spec(None, None), &[a]).expect_err("broken");
        assert_eq!(e.reason, reason::CHAIN_BROKEN, "{e}");
        let a = answer(vec![stored("100.full", true)]);
        let e = resolve(&spec(None, None), std::slice::from_ref(&a)).expect_err("archived only");
        assert_eq!(e.reason, reason::NOT_FOUND);
        let mut s = spec(None, None);
        s.source.include_archive = true;
        assert_eq!(ids(&resolve(&s, &[a]).expect("archive")), ["100.full"]);
    }

    #[test]
    fn unreachable_and_no_policies() {
        let down = StoreAnswer {
            host: "bak".into(),
            endpoint: Some("x".into()),
            catalogue: Err("connection refused".into()),
        };
        let e = resolve(&spec(None, None), &[down]).expect_err("down");
        assert_eq!(e.reason, reason::STORE_UNREACHABLE);
        let e = resolve(&spec(None, None), &[]).expect_err("none");
        assert_eq!(e.reason, reason::NOT_FOUND);
    }

    #[test]
    fn destination_checks() {
        let mut h = ZfsHost::new(
            "dst",
            ZfsHostSpec {
                node_name: "n".into(),
                datasets: Default::default(),
                paused: false,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        h.status = Some(ZfsHostStatus {
            datasets: vec![
                serde_json::from_value::<DatasetStatus>(
                    serde_json::json!({"name": "tank/restored"}),
                )
                .expect("dataset"),
            ],
            ..Default::default()
        });
        let s = spec(None, None);
        assert_eq!(
            check_destination(&s, Some(&h)).expect_err("exists").reason,
            reason::DESTINATION_EXISTS
        );
        assert_eq!(
            check_destination(&s, None).expect_err("no host").reason,
            reason::NOT_FOUND
        );
        let mut forced = s.clone();
        forced.force = true;
        assert!(check_destination(&forced, Some(&h)).is_ok());
    }

    fn stored_of(dataset: &str, id: &str) -> StoredBackup {
        let mut b = stored(id, false);
        b.manifest.dataset = dataset.into();
        b
    }

    fn bulk_spec(patterns: &[&str]) -> RestoreSpec {
        let mut s = spec(None, None);
        s.source.dataset = None;
        s.source.datasets = patterns
            .iter()
            .map(|p| DatasetPattern((*p).into()))
            .collect();
        s.destination.dataset = "tank/restore".into();
        s
    }

    fn dest_host(existing: &[&str]) -> ZfsHost {
        let mut h = ZfsHost::new(
            "dst",
            ZfsHostSpec {
                node_name: "n".into(),
                datasets: Default::default(),
                paused: false,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        h.status = Some(ZfsHostStatus {
            datasets: existing
                .iter()
                .map(|d| {
                    serde_json::from_value::<DatasetStatus>(serde_json::json!({ "name": d }))
                        .expect("dataset")
                })
                .collect(),
            ..Default::default()
        });
        h
    }

    fn fleet() -> StoreAnswer {
        answer(vec![
            stored_of("tank", "100.full"),
            stored_of("tank/db", "100.full"),
            stored_of("tank/db", "200.incremental.100"),
            stored_of("tank/db/logs", "100.full"),
            stored_of("tank/www", "100.full"),
            stored_of("other/x", "100.full"),
        ])
    }

    #[test]
    fn expansion_by_name_and_pattern() {
        let available: BTreeSet<String> = ["tank", "tank/db", "tank/db/logs", "tank/www"]
            .into_iter()
            .map(String::from)
            .collect();
        let p = |v: &[&str]| {
            v.iter()
                .map(|s| DatasetPattern((*s).into()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            expand(&p(&["tank/db/**"]), &available).expect("glob"),
            ["tank/db", "tank/db/logs"],
            "a /** pattern covers the dataset it starts from"
        );
        assert_eq!(
            expand(&p(&["tank/www", "tank/*", "tank/www"]), &available).expect("mix"),
            ["tank/db", "tank/www"],
            "sorted and distinct; * stays within one component"
        );
        assert_eq!(expand(&p(&["**"]), &available).expect("all").len(), 4);
        let e = expand(&p(&["tank/db", "tank/gone", "nope/**"]), &available).expect_err("miss");
        assert_eq!(e.reason, reason::NOT_FOUND);
        assert!(
            e.message.contains("tank/gone, nope/**") && e.message.contains("tank/www"),
            "{e}"
        );
        let many: BTreeSet<String> = (0..25).map(|i| format!("tank/d{i:02}")).collect();
        let e = expand(&p(&["gone"]), &many).expect_err("long list");
        assert!(e.message.ends_with("tank/d19 and 5 more)"), "{e}");
    }

    #[test]
    fn bulk_plan_maps_each_dataset_under_the_base() {
        let rows = plan_bulk(
            "bulk",
            &bulk_spec(&["tank/**"]),
            &[fleet()],
            Some(&dest_host(&["tank/restore"])),
        )
        .expect("plan");
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.source.as_str(), r.destination.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("tank", "tank/restore/tank"),
                ("tank/db", "tank/restore/tank/db"),
                ("tank/db/logs", "tank/restore/tank/db/logs"),
                ("tank/www", "tank/restore/tank/www"),
            ]
        );
        assert_eq!(
            rows[1].bytes,
            Some(20),
            "the chain of tank/db is full + incremental"
        );
        assert_eq!(rows[1].restore, child_name("bulk", "tank/db"));
        assert_ne!(rows[0].restore, rows[1].restore);
        assert!(rows.iter().all(|r| r.restore.len() == "bulk-".len() + 8));
        let child = child_spec(&bulk_spec(&["tank/**"]), "tank/db");
        assert_eq!(child.source.dataset_name(), "tank/db");
        assert!(!child.source.is_bulk());
        assert_eq!(child.destination.dataset.as_str(), "tank/restore/tank/db");
    }

    #[test]
    fn bulk_plan_refuses_all_or_nothing() {
        let e = plan_bulk(
            "b",
            &bulk_spec(&["tank/**"]),
            &[fleet()],
            Some(&dest_host(&["tank/restore/tank/www", "tank/restore/tank"])),
        )
        .expect_err("exists");
        assert_eq!(e.reason, reason::DESTINATION_EXISTS);
        assert!(
            e.message
                .starts_with("2 of 4 datasets cannot be restored, so none was started")
                && e.message.contains("tank/restore/tank/www exists"),
            "{e}"
        );
        let mut forced = bulk_spec(&["tank/**"]);
        forced.force = true;
        assert!(
            plan_bulk(
                "b",
                &forced,
                &[fleet()],
                Some(&dest_host(&["tank/restore/tank"]))
            )
            .is_ok()
        );
        let e = plan_bulk("b", &bulk_spec(&["tank/**"]), &[fleet()], None).expect_err("no host");
        assert!(
            e.message.starts_with("destination host dst does not exist"),
            "{e}"
        );
        let broken = answer(vec![
            stored_of("tank/a", "100.full"),
            stored_of("tank/b", "100.full"),
            stored_of("tank/b", "300.incremental.200"),
        ]);
        let e = plan_bulk(
            "b",
            &bulk_spec(&["tank/*"]),
            &[broken],
            Some(&dest_host(&[])),
        )
        .expect_err("broken");
        assert_eq!(e.reason, reason::CHAIN_BROKEN);
        assert!(e.message.contains("tank/b: src:tank/b"), "{e}");
        let mut at = bulk_spec(&["tank/db"]);
        at.source.at = Some(Time(jiff::Timestamp::from_second(150).expect("ts")));
        let rows = plan_bulk("b", &at, &[fleet()], Some(&dest_host(&[]))).expect("at");
        assert_eq!(rows[0].bytes, Some(10), "at applies to every dataset");
        let down = StoreAnswer {
            host: "bak".into(),
            endpoint: Some("x".into()),
            catalogue: Err("connection refused".into()),
        };
        let e =
            plan_bulk("b", &bulk_spec(&["**"]), &[down], Some(&dest_host(&[]))).expect_err("down");
        assert_eq!(e.reason, reason::STORE_UNREACHABLE);
    }

    fn child(name: &str, phase: RestorePhase, verified: Option<bool>, reason: &str) -> Restore {
        let mut c = Restore::new(name, spec(None, None));
        c.status = Some(RestoreStatus {
            phase,
            verified,
            bytes: Some(10),
            bytes_done: Some(if phase == RestorePhase::Succeeded {
                10
            } else {
                4
            }),
            message: Some(format!("{name} {phase:?}")),
            conditions: conditions::set(
                &[],
                &Wanted {
                    type_: READY,
                    status: phase == RestorePhase::Succeeded,
                    reason,
                    message: String::new(),
                    observed_generation: None,
                },
                Time(jiff::Timestamp::UNIX_EPOCH),
            ),
            ..Default::default()
        });
        c
    }

    #[test]
    fn bulk_children_run_one_at_a_time_and_aggregate() {
        let spec = bulk_spec(&["tank/**"]);
        let rows = plan_bulk("b", &spec, &[fleet()], Some(&dest_host(&[]))).expect("plan");
        let name = |i: usize| rows[i].restore.clone();
        let s = bulk_step(&spec, &rows, &[]);
        assert_eq!((s.phase, s.start), (RestorePhase::Running, Some(0)));
        let running = [child(&name(0), RestorePhase::Running, None, "")];
        let s = bulk_step(&spec, &rows, &running);
        assert_eq!(s.start, None, "one child at a time");
        assert!(
            s.message.starts_with("restoring tank (1 of 4)"),
            "{}",
            s.message
        );
        let mut kids = vec![
            child(&name(0), RestorePhase::Succeeded, Some(true), "Succeeded"),
            child(
                &name(1),
                RestorePhase::Failed,
                Some(false),
                "ChecksumMismatch",
            ),
        ];
        let s = bulk_step(&spec, &rows, &kids);
        assert_eq!(
            s.start,
            Some(2),
            "a failed dataset does not stop the others"
        );
        assert_eq!(
            s.rows[1].message.as_deref(),
            Some(&*format!("ChecksumMismatch: {} Failed", name(1)))
        );
        kids.push(child(
            &name(2),
            RestorePhase::Succeeded,
            Some(true),
            "Succeeded",
        ));
        kids.push(child(
            &name(3),
            RestorePhase::Succeeded,
            Some(true),
            "Succeeded",
        ));
        let s = bulk_step(&spec, &rows, &kids);
        assert_eq!(
            (s.phase, s.verified, s.start),
            (RestorePhase::Failed, Some(false), None)
        );
        assert!(
            s.message
                .starts_with("1 of 4 dataset(s) not restored: tank/db (ChecksumMismatch:"),
            "{}",
            s.message
        );
        kids[1] = child(&name(1), RestorePhase::Succeeded, Some(true), "Succeeded");
        let s = bulk_step(&spec, &rows, &kids);
        assert_eq!((s.phase, s.verified), (RestorePhase::Succeeded, Some(true)));
        let st = bulk_status(
            &RestoreStatus::default(),
            Some(1),
            &s,
            Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!((st.bytes, st.bytes_done), (Some(40), Some(40)));
        assert!(st.finished_at.is_some() && st.conditions[0].status == "True");
        assert!(
            !needs_resolving(Some(&st)) && st.chain.is_empty(),
            "no agent ever claims a parent"
        );
        // Succeeded without verification is not success when verification was asked.
        kids[1] = child(&name(1), RestorePhase::Succeeded, Some(false), "Succeeded");
        assert_eq!(bulk_step(&spec, &rows, &kids).phase, RestorePhase::Failed);
        // A child that disappeared after it ended keeps its row's outcome.
        let ended = bulk_step(&spec, &rows, &kids).rows;
        assert_eq!(bulk_step(&spec, &ended, &[]).phase, RestorePhase::Failed);
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let mut parent = Restore::new("b", bulk_spec(&["tank/*"]));
        parent.metadata.namespace = Some("ns".into());
        parent.metadata.uid = Some("u-1".into());
        let rows = plan_bulk("b", &parent.spec, &[fleet()], Some(&dest_host(&[]))).expect("plan");
        let c = child_restore(&parent, &rows[0]);
        assert_eq!(
            c.labels().get(BULK_PARENT_LABEL).map(String::as_str),
            Some("b")
        );
        let owner = &c.metadata.owner_references.expect("owner")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        assert_eq!(c.spec.source.dataset_name(), "tank/db");
        assert_eq!(c.spec.destination.dataset.as_str(), "tank/restore/tank/db");
    }

    #[test]
    fn status_transitions() {
        let r = Resolved {
            store_host: "bak".into(),
            store_endpoint: "e".into(),
            pieces: vec![RestorePiece {
                id: "1.full".into(),
                bytes: 5,
                ..Default::default()
            }],
        };
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let s = next_status(&RestoreStatus::default(), Some(1), &Ok(r), now.clone());
        assert_eq!(s.chain, ["1.full"]);
        assert_eq!(s.bytes, Some(5));
        assert!(!needs_resolving(Some(&s)));
        let f = next_status(
            &RestoreStatus::default(),
            Some(1),
            &Err(Refusal::new(reason::CHAIN_BROKEN, "gone")),
            now,
        );
        assert_eq!(f.phase, RestorePhase::Failed);
        assert_eq!(f.conditions[0].reason, reason::CHAIN_BROKEN);
        assert!(!needs_resolving(Some(&f)));
        assert!(needs_resolving(None));
    }

    #[test]
    fn a_refusal_found_again_later_is_not_a_new_status() {
        let refusal = || Err(Refusal::new(reason::CHAIN_BROKEN, "gone"));
        let first = Time(jiff::Timestamp::UNIX_EPOCH);
        let later = Time(jiff::Timestamp::from_second(3600).expect("ts"));
        let current = next_status(&RestoreStatus::default(), Some(1), &refusal(), first);
        assert!(status_changed(&RestoreStatus::default(), &current));
        let again = next_status(&current, Some(1), &refusal(), later.clone());
        assert_ne!(
            again.finished_at, current.finished_at,
            "only the time moved"
        );
        assert!(!status_changed(&current, &again));
        // Another reason, another generation or a resolution is a change.
        let other = Err(Refusal::new(reason::DESTINATION_EXISTS, "taken"));
        let other = next_status(&current, Some(1), &other, later.clone());
        assert!(status_changed(&current, &other));
        let newer = next_status(&current, Some(2), &refusal(), later.clone());
        assert!(status_changed(&current, &newer));
        let resolved = Resolved {
            store_host: "bak".into(),
            store_endpoint: "e".into(),
            pieces: Vec::new(),
        };
        let resolved = next_status(&current, Some(1), &Ok(resolved), later);
        assert!(status_changed(&current, &resolved));
    }
}
