//! The BackupPolicy reconciler: gathers the inputs (ZfsHosts' reports, the backup host's
//! catalogue, this policy's BackupJobs), asks the pure [`crate::policy`] module what is due,
//! what expired and who violates, then creates BackupJobs, runs retention through the backup
//! host's agent, and writes a compact status. It requeues at the next deadline.
//!
//! [`plan()`] (in `plan.rs`) is the pure part (no I/O); [`BackupPolicy`]'s reconcile here is
//! gather → plan → apply: [`Gathered`] reads the caches and the store, [`plan()`] decides,
//! [`apply`] writes. `expectations.rs` covers the watch's lag behind our own writes,
//! `triggers.rs` which ZfsHost changes wake which policies, `tests.rs` the plan's tests.

mod expectations;
mod plan;
mod triggers;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::conditions;
use super::store_client::{KnownBackup, StoreView};
use super::{Context, Error, Reconciled, status};
use crate::api::backup_policy::Violation;
use crate::api::{BackupJob, BackupPolicy, BackupPolicyStatus, JobPhase, ZfsHost};
use crate::policy::PolicyRules;
use crate::tenancy;

pub use expectations::{EXPECTATION_TTL, Expectations};
pub use plan::{
    Inputs, Plan, VERIFY_RECHECK, forced_by, heartbeat_due, job_name, jobs_to_prune, plan,
    requeue_after, selects_host, violation_changes,
};
use plan::{pending_backup_now, wanted_conditions};
pub use triggers::HostTriggers;
use triggers::{object_ref, take_subscription, watch_hosts};

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

/// Whether a job belongs to the policy `namespace/policy`.
fn is_own_job(job: &BackupJob, namespace: &str, policy: &str) -> bool {
    job.metadata.namespace.as_deref() == Some(namespace)
        && job.labels().get(POLICY_LABEL).map(String::as_str) == Some(policy)
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
        // Gather.
        let world = Gathered::from_caches(&obj, &ctx, &ns, &name);
        if let Some(why) = world.tenancy_refusal(&ns, &ctx) {
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
        let store_read = world.read_store(&obj, &ctx, &ns).await;
        let catalogue = store_read.as_ref().ok();

        // Plan.
        let backup_now = pending_backup_now(&obj);
        let mut plan = plan(&Inputs {
            policy: &obj,
            rules: &rules,
            hosts: &world.hosts,
            jobs: &world.jobs,
            catalogue,
            host_stale_after: ctx.host_stale_after,
            backup_now: &backup_now,
            target_in_flight_elsewhere: world.target_in_flight_elsewhere,
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
        let decision = Decision {
            prune: jobs_to_prune(&obj, &world.jobs),
            status: next_status(&plan, &obj, &current, now, ctx.status_heartbeat),
            plan,
        };
        ctx.metrics.observe_decide(started.elapsed().as_secs_f64());

        // Apply.
        let applied = apply(
            &ctx,
            &obj,
            (&ns, &name),
            &decision,
            world.endpoint.as_deref(),
            &current.violations,
        )
        .await;
        let Decision { plan, status, .. } = decision;
        let target_key = obj.spec.target.key();
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
            &target_key,
            plan.status.bytes_stored,
            &plan.last_backups,
        );
        applied?;
        super::drill::apply(&ctx, &ns, &drills).await?;
        // Wake up for the next heartbeat at the latest.
        let heartbeat_at = if status.write {
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
        Ok(Action::requeue(requeue_after(wake_at, now)))
    }
}

/// What one reconcile reads from the shared watch caches (no API read): the selected hosts,
/// the policy's jobs (adjusted by [`Expectations`]), the other policies' jobs in flight into
/// the same backup host (they share its `perTarget` slots) and the backup host itself.
struct Gathered {
    hosts: Vec<Arc<ZfsHost>>,
    jobs: Vec<Arc<BackupJob>>,
    target_in_flight_elsewhere: u32,
    target_host: Option<Arc<ZfsHost>>,
    /// `node@address`: over TLS the store must prove it is the node the ZfsHost's spec names.
    endpoint: Option<String>,
}

impl Gathered {
    fn from_caches(policy: &BackupPolicy, ctx: &Context, ns: &str, name: &str) -> Self {
        let all_hosts = ctx.hosts.state();
        let hosts: Vec<Arc<ZfsHost>> = all_hosts
            .iter()
            .filter(|h| selects_host(policy, h))
            .cloned()
            .collect();
        let target_key = policy.spec.target.key();
        let target = target_key.as_str();
        let (cached, elsewhere): (Vec<Arc<BackupJob>>, Vec<Arc<BackupJob>>) = ctx
            .jobs
            .state()
            .into_iter()
            .filter(|j| j.spec.target.key() == target || is_own_job(j, ns, name))
            .partition(|j| is_own_job(j, ns, name));
        let jobs = ctx.expected.adjust(ns, name, cached);
        let target_in_flight_elsewhere = ctx
            .expected
            .in_flight_elsewhere(ns, name, target, &elsewhere);
        let target_host = all_hosts
            .iter()
            .find(|h| h.name_any() == policy.spec.target.host_name())
            .cloned();
        let endpoint = target_host
            .as_deref()
            .and_then(super::store_tls::endpoint_of);
        Gathered {
            hosts,
            jobs,
            target_in_flight_elsewhere,
            target_host,
            endpoint,
        }
    }

    /// Tenancy: every host the policy would back up, and its backup host, must serve the
    /// policy's namespace; otherwise it is refused and touches nothing (no job, no retention,
    /// no archive).
    fn tenancy_refusal(&self, ns: &str, ctx: &Context) -> Option<String> {
        let uses = self
            .hosts
            .iter()
            .map(|h| {
                (
                    h.metadata.name.as_deref().unwrap_or_default(),
                    &h.spec,
                    "backed up",
                )
            })
            .chain(self.target_host.as_deref().map(|h| {
                (
                    h.metadata.name.as_deref().unwrap_or_default(),
                    &h.spec,
                    "the backup target",
                )
            }));
        tenancy::namespace_refusal(ns, &ctx.operator_namespace, uses)
    }

    /// The store's view from the shared catalogue cache: hosts whose newest backups a
    /// succeeded job names but the cache lacks are read again (jobs were read first, so a job
    /// that succeeded is never "succeeded but missing").
    async fn read_store(
        &self,
        policy: &BackupPolicy,
        ctx: &Context,
        ns: &str,
    ) -> Result<StoreView, String> {
        let known: Vec<KnownBackup> = self
            .jobs
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
        let host_names: Vec<String> = self.hosts.iter().map(|h| h.name_any()).collect();
        let target = &policy.spec.target;
        let read_started = std::time::Instant::now();
        let read = match (&target.object_store, &self.endpoint, &self.target_host) {
            // An object store: the bucket is the catalogue (no backup host).
            (Some(os), _, _) => {
                ctx.buckets
                    .view(&ctx.client, ns, os, &host_names, &known)
                    .await
            }
            (None, Some(ep), _) => ctx
                .catalogues
                .view(&ctx.store, ep, &host_names, &known)
                .await
                .map_err(|e| e.to_string()),
            (None, None, None) => Err(format!(
                "backup host {} does not exist (no ZfsHost of that name)",
                target.host_name()
            )),
            (None, None, Some(_)) => Err(format!(
                "backup host {} has no agent endpoint yet (is its agent running?)",
                target.host_name()
            )),
        };
        ctx.metrics
            .observe_store_read(read_started.elapsed().as_secs_f64());
        read
    }
}

/// The status to write and whether to write it.
struct NextStatus {
    status: BackupPolicyStatus,
    /// Written with every change, and at least every heartbeat without one: a monitor tells a
    /// live controller's unchanged answer from a dead one's last.
    write: bool,
}

/// The plan's status with its conditions set, stamped `now`; written when it changed (the
/// heartbeat stamp is no change) or the heartbeat is due.
fn next_status(
    plan: &Plan,
    policy: &BackupPolicy,
    current: &BackupPolicyStatus,
    now: Timestamp,
    heartbeat: Duration,
) -> NextStatus {
    let mut status = plan.status.clone();
    let stamp = Time(now);
    let mut conds = current.conditions.clone();
    for w in wanted_conditions(plan, policy) {
        conds = conditions::set(&conds, &w, stamp.clone());
    }
    status.conditions = conds;
    let mut unstamped = current.clone();
    unstamped.last_evaluated = None;
    let changed = conditions::status_changed(&unstamped, &status);
    let beat = heartbeat_due(current.last_evaluated.as_ref(), now, heartbeat);
    status.last_evaluated = Some(Time(now));
    NextStatus {
        status,
        write: changed || beat,
    }
}

/// What the reconcile decided: the plan, the old jobs to prune, the status.
struct Decision {
    plan: Plan,
    prune: Vec<(String, Option<String>)>,
    status: NextStatus,
}

/// Carries out a decision. The writes are independent of each other and run at once: the new
/// BackupJobs, the old ones' pruning, the store's archive/verify/delete, the status and the
/// violation events. A failed create or status write fails the reconcile (after the others
/// ran); the rest are best effort, tried again at the next reconcile.
async fn apply(
    ctx: &Context,
    policy: &BackupPolicy,
    (ns, name): (&str, &str),
    Decision {
        plan,
        prune,
        status,
    }: &Decision,
    endpoint: Option<&str>,
    violations_before: &[Violation],
) -> Result<(), Error> {
    let job_api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), ns);
    let creates = futures::future::join_all(plan.create.iter().map(|job| {
        let job_api = &job_api;
        async move {
            match job_api.create(&PostParams::default(), job).await {
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
        let job_api = &job_api;
        async move {
            let params = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match job_api.delete(job, &params).await {
                Ok(_) => ctx.expected.deleted(ns, name, job),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    ctx.expected.deleted(ns, name, job)
                }
                // History is best effort: the next reconcile tries again.
                Err(e) => warn!(%job, error = %e, "deleting an old BackupJob failed"),
            }
        }
    }));
    let store_ops = apply_to_store(ctx, policy, ns, plan, endpoint);
    let status_write = async {
        if status.write {
            status::apply(ctx, policy, BackupPolicy::KIND, &status.status).await
        } else {
            Ok(())
        }
    };
    let events = publish_violation_events(ctx, policy, violations_before, &plan.status.violations);
    let (created, _, _, written, _) =
        tokio::join!(creates, deletes, store_ops, status_write, events);
    for r in created {
        r?;
    }
    written
}

/// The plan's archive, verify and delete requests to the backup host's store (or, for an
/// object store, done by the controller in the bucket). Best effort: a failure is logged and the
/// next reconcile asks again.
async fn apply_to_store(
    ctx: &Context,
    policy: &BackupPolicy,
    ns: &str,
    plan: &Plan,
    endpoint: Option<&str>,
) {
    if let Some(os) = &policy.spec.target.object_store {
        super::object_store::archive(&ctx.client, ns, os, &plan.archive).await;
        super::object_store::delete_expired(&ctx.client, ns, os, &plan.delete).await;
        // `spec.verify`: the controller re-reads the objects itself (`bucket_verifier`).
        ctx.bucket_verifier.submit(ns, os, &plan.verify);
        // Read again before use: the bucket changed (or a failed change is tried again).
        for (host, _, _) in plan.archive.iter().chain(&plan.delete) {
            ctx.buckets.invalidate(ns, os, host);
        }
        return;
    }
    let Some(ep) = endpoint else { return };
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
}

#[cfg(test)]
mod tests;
