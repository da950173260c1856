//! The Restore reconciler: resolves what a Restore applies, and refuses what cannot work.
//!
//! A new Restore (no chain yet, phase Pending) is resolved once: the controller finds the
//! backup host holding the source's backups (the file-store targets of the BackupPolicies in
//! the Restore's namespace, each asked for its catalogue), builds the dataset's catalogue
//! (live backups, plus the archive area with `includeArchive`), and resolves the chain (the
//! newest backup at or before `at`, the backup `backup`, or the newest). It writes the chain,
//! its pieces (id, snapshot, bytes, sha256), the total bytes and the store to status; the
//! destination host's agent then claims and runs it (agent/src/restore/runner.rs).
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
//!
//! Files: `resolve.rs` (one Restore's chain and refusals, pure), `bulk.rs` (a bulk Restore's
//! expansion and steps, pure), this file (asking the stores, writing status, creating the
//! children), `tests.rs`.

mod bulk;
mod resolve;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use zetaback_objstore::cached::Scope;

use super::conditions::status_changed;
use super::{Context, Error, Reconciled, status};
use crate::api::restore::BULK_PARENT_LABEL;
use crate::api::{BackupPolicy, Restore, RestoreSpec, RestoreStatus, ZfsHost};

use bulk::is_final;
pub use bulk::{
    BulkStep, bulk_destination, bulk_status, bulk_step, child_name, child_restore, child_spec,
    datasets_with_backups, expand, plan_bulk,
};
pub use resolve::{
    Refusal, Resolved, StoreAnswer, check_destination, check_tenancy, needs_resolving, next_status,
    resolve, store_hosts,
};

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
                let scope = Scope::Dataset {
                    host: obj.spec.source.host.as_str().to_owned(),
                    dataset: obj.spec.source.dataset_name().to_owned(),
                };
                buckets = super::restore_objstore::Buckets::ask(&ctx, &ns, scope).await?;
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
        let mut answers = ask_stores(ctx, obj, &hosts).await?;
        // The source host's backups in the namespace's buckets too (each child resolves its
        // own dataset again, from wherever the newest backup is).
        let scope = Scope::Host(obj.spec.source.host.as_str().to_owned());
        let buckets = super::restore_objstore::Buckets::ask(ctx, &ns, scope).await?;
        answers.extend(buckets.answers());
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
mod tests;
