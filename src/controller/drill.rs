//! A policy's restore drills (`spec.drill`) and per-dataset recovery status, the controller's
//! side: reads the drills (Restores labelled with the policy) into the pure schedule of
//! [`zetaback_core::policy::plan_drills`], makes the Restores it starts (through the ordinary
//! Restore path, marked `drill: true`, into `<root>/<restore name>` on the drill host), forgets
//! old ones, and turns the records into `status.recovery` and violations.

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use sha2::Digest;
use tracing::{info, warn};

use super::backup_policy::Plan;
use super::store_client::StoreView;
use super::{Context, Error};
use crate::api::backup_policy::{
    DRILL_NOW_ANNOTATION, DRILL_NOW_REQUEST_ANNOTATION, DatasetRecovery, DrillNowRequest,
    DrillRecord, DrillResult, MAX_LISTED_RECOVERY, Violation, parse_drill_now,
};
use crate::api::restore::{
    DRILL_NUMBER_ANNOTATION, DRILL_POLICY_LABEL, RestoreDestination, RestorePhase, RestoreSource,
    RestoreSpec,
};
use crate::api::{BackupPolicy, Restore};
use crate::policy::{self, DrillOutcome, DrillRules, DrillSubject, PastDrill};

/// How soon a policy with a drill in flight looks at it again (drills are not watched).
pub const DRILL_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything [`plan`] looks at.
pub struct Inputs<'a> {
    pub policy: &'a BackupPolicy,
    /// The store's view; `None` when it could not be read (then no drill starts).
    pub catalogue: Option<&'a StoreView>,
    /// The covered datasets, (host, dataset).
    pub covered: &'a [(String, String)],
    /// The policy's drill Restores.
    pub restores: &'a [Restore],
    pub now: Timestamp,
}

/// What to do about drills, and what to report.
#[derive(Debug, Default)]
pub struct DrillActions {
    pub create: Vec<Restore>,
    /// Names of finished drill Restores to delete.
    pub prune: Vec<String>,
    pub recovery: Vec<DatasetRecovery>,
    pub violations: Vec<Violation>,
    pub wake_at: Option<Timestamp>,
    /// `status.drillNowHandled`: the newest `drill-now` request answered with all older ones.
    pub now_handled: Option<Timestamp>,
    /// Drill Restores running past `drill.timeout`, to end as failed: (name, the
    /// resourceVersion this decision read, the fence of that write).
    pub timed_out: Vec<(String, Option<String>)>,
    /// The policy's name (for the metrics).
    pub policy: String,
    /// Per dataset with a successful drill: what it measured (the drill metrics).
    pub samples: Vec<DrillSample>,
}

/// What a dataset's last successful drill measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillSample {
    pub host: String,
    pub dataset: String,
    /// The measured recovery time.
    pub seconds: i64,
    /// Bytes restored.
    pub bytes: Option<u64>,
}

/// The reason on a drill Restore's `Ready` condition when the controller ended it.
pub const TIMED_OUT_REASON: &str = "DrillTimedOut";

/// The policy's drill rules, if it has drills that parse.
pub fn rules(policy: &BackupPolicy) -> Option<DrillRules> {
    let spec = &policy.spec;
    let d = spec.drill.as_ref()?;
    let signed = |d: std::time::Duration| SignedDuration::try_from(d).ok();
    Some(DrillRules {
        every: signed(d.every.duration().ok()?)?,
        grace: spec
            .grace
            .duration()
            .ok()
            .and_then(signed)
            .unwrap_or(SignedDuration::ZERO),
        per_run: usize::try_from(d.datasets_per_run).unwrap_or(1),
        older_every: d.older_every,
        keep: usize::try_from(d.keep).unwrap_or(1),
        rto: spec
            .objectives
            .as_ref()
            .and_then(|o| o.rto.as_ref())
            .and_then(|r| r.duration().ok())
            .and_then(signed),
        timeout: d
            .timeout
            .as_ref()
            .and_then(|t| t.duration().ok())
            .and_then(signed)
            .unwrap_or(policy::DEFAULT_DRILL_TIMEOUT),
    })
}

/// A drill Restore as a record of the drill schedule: (host, dataset, the drill).
pub fn past_drill(r: &Restore) -> Option<(String, String, PastDrill)> {
    let started = r.creation_timestamp()?.0;
    let st = r.status.clone().unwrap_or_default();
    let message = st.message.clone().unwrap_or_default();
    let (outcome, message) = match st.phase {
        RestorePhase::Pending | RestorePhase::Running => (DrillOutcome::Running, message),
        RestorePhase::Failed => (DrillOutcome::Failed, message),
        RestorePhase::Succeeded => {
            if st.verified != Some(true) || st.verified_at.is_none() {
                (
                    DrillOutcome::Failed,
                    format!("the restore was not verified ({message})"),
                )
            } else if st.scratch_destroyed == Some(false) {
                (
                    DrillOutcome::Failed,
                    format!(
                        "the scratch dataset {} could not be destroyed",
                        r.spec.destination.dataset.as_str()
                    ),
                )
            } else {
                (DrillOutcome::Succeeded, message)
            }
        }
    };
    Some((
        r.spec.source.host.as_str().to_owned(),
        r.spec.source.dataset_name().to_owned(),
        PastDrill {
            restore: r.name_any(),
            backup: r.spec.source.backup.clone().unwrap_or_default(),
            started,
            verified: st.verified_at.map(|t| t.0),
            finished: st.finished_at.map(|t| t.0),
            outcome,
            message,
            requested: requested_by(r),
            number: r
                .annotations()
                .get(DRILL_NUMBER_ANNOTATION)
                .and_then(|n| n.parse().ok()),
        },
    ))
}

/// The `requestedAt` of the newest `drill-now` request a drill Restore answers, if any.
pub fn requested_by(r: &Restore) -> Option<Timestamp> {
    r.annotations()
        .get(DRILL_NOW_REQUEST_ANNOTATION)?
        .parse()
        .ok()
}

/// The `drill-now` requests on the policy not yet handled, oldest first (an unreadable
/// annotation is logged and ignored).
pub fn pending_drill_now(policy: &BackupPolicy) -> Vec<DrillNowRequest> {
    let Some(text) = policy.annotations().get(DRILL_NOW_ANNOTATION) else {
        return Vec::new();
    };
    let mut requests = match parse_drill_now(text) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable {DRILL_NOW_ANNOTATION} annotation");
            return Vec::new();
        }
    };
    let handled = handled_before(policy);
    requests.retain(|r| handled.is_none_or(|h| h < r.requested_at));
    requests.sort_by_key(|r| r.requested_at);
    requests
}

fn handled_before(policy: &BackupPolicy) -> Option<Timestamp> {
    policy
        .status
        .as_ref()
        .and_then(|s| s.drill_now_handled.as_ref())
        .map(|t| t.0)
}

/// The name of a new drill's Restore (also its scratch dataset's last component).
pub fn drill_name(policy: &str, host: &str, dataset: &str, now: Timestamp) -> String {
    let digest = sha2::Sha256::digest(format!("{policy}\0{host}\0{dataset}\0{now}").as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let short: String = policy.chars().take(40).collect();
    format!("drill-{}-{hash}", short.trim_end_matches(['-', '.']))
}

fn new_drill(
    policy: &BackupPolicy,
    (host, dataset): (&str, &str),
    start: &policy::DrillStart,
    now: Timestamp,
) -> Option<Restore> {
    let (backup, requested) = (start.backup.as_str(), start.requested);
    let d = policy.spec.drill.as_ref()?;
    let name = drill_name(&policy.name_any(), host, dataset, now);
    let mut r = Restore::new(
        &name,
        RestoreSpec {
            source: RestoreSource {
                host: host.into(),
                dataset: Some(dataset.into()),
                datasets: Vec::new(),
                at: None,
                backup: Some(backup.to_owned()),
                include_archive: false,
            },
            destination: RestoreDestination {
                host: d.destination.host.clone(),
                dataset: format!("{}/{name}", d.destination.root.as_str())
                    .as_str()
                    .into(),
            },
            force: false,
            verify: true,
            drill: true,
        },
    );
    r.metadata.namespace = policy.namespace();
    r.metadata.labels = Some(
        [(DRILL_POLICY_LABEL.to_owned(), policy.name_any())]
            .into_iter()
            .collect(),
    );
    r.metadata.owner_references = policy.controller_owner_ref(&()).map(|o| vec![o]);
    let mut annotations: std::collections::BTreeMap<String, String> =
        [(DRILL_NUMBER_ANNOTATION.to_owned(), start.number.to_string())]
            .into_iter()
            .collect();
    if let Some(at) = requested {
        annotations.insert(DRILL_NOW_REQUEST_ANNOTATION.to_owned(), at.to_string());
    }
    r.metadata.annotations = Some(annotations);
    Some(r)
}

fn record(d: &PastDrill, bytes: Option<u64>) -> DrillRecord {
    DrillRecord {
        restore: d.restore.clone(),
        backup: d.backup.clone(),
        result: match d.outcome {
            DrillOutcome::Running => DrillResult::Running,
            DrillOutcome::Succeeded => DrillResult::Succeeded,
            DrillOutcome::Failed => DrillResult::Failed,
        },
        started_at: Time(d.started),
        finished_at: d.finished.map(Time),
        rto_seconds: d.rto().map(|r| r.as_secs()),
        bytes,
        message: (!d.message.is_empty()).then(|| d.message.clone()),
    }
}

/// The pure decision: drills to start and forget, `status.recovery`, and violations.
pub fn plan(inputs: &Inputs<'_>) -> DrillActions {
    let policy = inputs.policy;
    let now = inputs.now;
    let owner = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let mut out = DrillActions {
        policy: policy.name_any(),
        ..DrillActions::default()
    };
    let empty = StoreView::default();
    let catalogue = inputs.catalogue.unwrap_or(&empty);
    let rules = rules(policy);
    let covered_since = policy.creation_timestamp().map(|t| t.0);
    let drills: Vec<(String, String, PastDrill)> =
        inputs.restores.iter().filter_map(past_drill).collect();
    let asked = pending_drill_now(policy);
    let bytes_of = |name: &str| {
        inputs
            .restores
            .iter()
            .find(|r| r.name_any() == name)
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.bytes_done)
    };
    let subjects: Vec<DrillSubject> = inputs
        .covered
        .iter()
        .map(|(host, dataset)| {
            let restorable = match catalogue.owned_by(host, dataset, &owner) {
                Ok(cat) => cat
                    .records()
                    .iter()
                    .filter(|r| !r.archived && cat.is_restorable(&r.id))
                    .map(|r| r.id.clone())
                    .collect(),
                Err(_) => Vec::new(),
            };
            DrillSubject {
                host: host.clone(),
                dataset: dataset.clone(),
                restorable,
                covered_since,
                drills: drills
                    .iter()
                    .filter(|(h, d, _)| h == host && d == dataset)
                    .map(|(_, _, p)| p.clone())
                    .collect(),
                requests: asked
                    .iter()
                    .filter(|r| r.selects(host, dataset))
                    .map(|r| r.requested_at)
                    .collect(),
            }
        })
        .collect();
    let drill_plan = rules
        .as_ref()
        .map(|r| policy::plan_drills(r, &subjects, now));
    for (i, s) in subjects.iter().enumerate() {
        let newest = match catalogue.owned_by(&s.host, &s.dataset, &owner) {
            Ok(cat) => cat.newest_restorable().map(|r| r.created),
            Err(_) => None,
        };
        let mut entry = DatasetRecovery {
            host: s.host.clone(),
            dataset: s.dataset.clone(),
            newest_restorable: newest.map(Time),
            rto_seconds: None,
            last_good_drill: None,
            last_drill: None,
            next_drill: None,
        };
        if let Some(state) = drill_plan.as_ref().and_then(|p| p.states.get(i)) {
            entry.last_drill = state.last.as_ref().map(|d| record(d, bytes_of(&d.restore)));
            entry.last_good_drill = state
                .last_good
                .as_ref()
                .and_then(|d| d.verified.or(d.finished))
                .map(Time);
            entry.rto_seconds = state
                .last_good
                .as_ref()
                .and_then(PastDrill::rto)
                .map(|r| r.as_secs());
            entry.next_drill = state.next_due.map(Time);
            if let Some(good) = &state.last_good
                && let Some(rto) = good.rto()
            {
                out.samples.push(DrillSample {
                    host: s.host.clone(),
                    dataset: s.dataset.clone(),
                    seconds: rto.as_secs(),
                    bytes: bytes_of(&good.restore),
                });
            }
            for f in &state.findings {
                out.violations.push(Violation {
                    host: s.host.clone(),
                    dataset: s.dataset.clone(),
                    reason: f.reason,
                    since: f.since.map(Time),
                    message: Some(f.message.clone()),
                });
            }
        }
        out.recovery.push(entry);
    }
    // Failed drills first, then by host and dataset.
    out.recovery.sort_by(|a, b| {
        let failed = |r: &DatasetRecovery| {
            r.last_drill
                .as_ref()
                .is_some_and(|d| d.result == DrillResult::Failed)
        };
        (!failed(a), &a.host, &a.dataset).cmp(&(!failed(b), &b.host, &b.dataset))
    });
    out.recovery.truncate(MAX_LISTED_RECOVERY);
    out.now_handled = handled_before(policy);
    if let Some(p) = drill_plan {
        // Answered only with the store's view read (else no drill could start).
        if inputs.catalogue.is_some()
            && let Some(h) = policy::drill_now_handled(&asked, &subjects, &p)
        {
            out.now_handled = Some(out.now_handled.map_or(h, |o| o.max(h)));
        }
        out.prune = p.prune;
        out.timed_out = p
            .timed_out
            .into_iter()
            .map(|name| {
                let version = inputs
                    .restores
                    .iter()
                    .find(|r| r.name_any() == name)
                    .and_then(|r| r.resource_version());
                (name, version)
            })
            .collect();
        out.wake_at = p.wake_at;
        if drills
            .iter()
            .any(|(_, _, d)| d.outcome == DrillOutcome::Running)
        {
            let soon = now.checked_add(DRILL_RECHECK).ok();
            out.wake_at = match (out.wake_at, soon) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if inputs.catalogue.is_some() {
            for start in p.start {
                let s = &subjects[start.subject];
                if let Some(r) =
                    new_drill(policy, (s.host.as_str(), s.dataset.as_str()), &start, now)
                {
                    out.create.push(r);
                }
            }
        }
    }
    out
}

/// Adds the drill findings and recovery entries to a policy's plan (before its conditions
/// and events are derived from it).
pub fn merge_into(plan: &mut Plan, actions: &DrillActions) {
    for v in &actions.violations {
        plan.violators
            .push((v.host.clone(), v.dataset.clone(), v.reason));
        if plan.status.violations.len() < super::backup_policy::MAX_LISTED_VIOLATIONS {
            plan.status.violations.push(v.clone());
        }
    }
    let distinct: HashSet<(&str, &str)> = plan
        .violators
        .iter()
        .map(|(h, d, _)| (h.as_str(), d.as_str()))
        .collect();
    plan.status.violators = i32::try_from(distinct.len()).unwrap_or(i32::MAX);
    plan.status.recovery = actions.recovery.clone();
    plan.status.drill_now_handled = actions.now_handled.map(Time);
    if let Some(w) = actions.wake_at {
        plan.wake_at = Some(plan.wake_at.map_or(w, |t| t.min(w)));
    }
}

/// The policy's drill Restores (listed by label; only for policies with `spec.drill`).
pub async fn list(ctx: &Context, namespace: &str, policy: &str) -> Result<Vec<Restore>, Error> {
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{DRILL_POLICY_LABEL}={policy}"));
    api.list(&params)
        .await
        .map(|l| l.items)
        .map_err(|source| Error::Read {
            what: format!("the drill Restores of BackupPolicy {namespace}/{policy}"),
            source,
        })
}

/// The patch that ends a drill Restore as failed because it ran past its timeout; with the
/// `resource_version` the decision read, the apiserver refuses it (409) if the agent wrote an
/// outcome meanwhile.
pub fn timed_out_patch(now: Timestamp, resource_version: Option<&str>) -> serde_json::Value {
    let message =
        "the restore drill did not finish within the policy's drill.timeout; ended as failed";
    let mut patch = serde_json::json!({"status": {
        "phase": "Failed",
        "message": message,
        "finishedAt": now.to_string(),
        "conditions": [{
            "type": "Ready",
            "status": "False",
            "reason": TIMED_OUT_REASON,
            "message": message,
            "lastTransitionTime": now.to_string(),
        }],
    }});
    if let Some(v) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    patch
}

/// Starts, ends (timed out) and forgets drills, and exports the drill metrics; a failed
/// creation is returned (the reconcile retries).
pub async fn apply(ctx: &Context, namespace: &str, actions: &DrillActions) -> Result<(), Error> {
    ctx.metrics
        .set_drills(namespace, &actions.policy, &actions.samples);
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), namespace);
    for (name, version) in &actions.timed_out {
        let patch = kube::api::Patch::Merge(timed_out_patch(Timestamp::now(), version.as_deref()));
        match api
            .patch_status(name, &kube::api::PatchParams::default(), &patch)
            .await
        {
            Ok(_) => warn!(restore = %name, "restore drill timed out; ended as failed"),
            // Gone, or changed since read (its agent finished it): the next pass decides.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => warn!(restore = %name, error = %e, "ending a timed-out drill failed"),
        }
    }
    for name in &actions.prune {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(restore = %name, "old drill forgotten"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => warn!(restore = %name, error = %e, "deleting an old drill failed"),
        }
    }
    for r in &actions.create {
        match api.create(&PostParams::default(), r).await {
            Ok(_) => info!(restore = %r.name_any(), host = %r.spec.source.host,
                dataset = %r.spec.source.dataset_name(),
                backup = r.spec.source.backup.as_deref().unwrap_or_default(),
                into = %r.spec.destination.dataset, "restore drill started"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(Error::Write {
                    what: format!("drill Restore {}", r.name_any()),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RestoreStatus;

    fn drill_restore(status: RestoreStatus) -> Restore {
        let mut r = Restore::new(
            "drill-p-1",
            serde_json::from_value(serde_json::json!({
                "source": {"host": "h", "dataset": "tank/a", "backup": "1700000000.full"},
                "destination": {"host": "b", "dataset": "pool/drills/drill-p-1"},
                "drill": true,
            }))
            .unwrap(),
        );
        r.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_100).unwrap()));
        r.status = Some(status);
        r
    }

    fn at(s: i64) -> Option<Time> {
        Some(Time(Timestamp::from_second(1_700_000_000 + s).unwrap()))
    }

    #[test]
    fn a_drill_is_good_only_verified_timed_and_cleaned_up() {
        let good = RestoreStatus {
            phase: RestorePhase::Succeeded,
            verified: Some(true),
            verified_at: at(130),
            finished_at: at(131),
            scratch_destroyed: Some(true),
            ..Default::default()
        };
        let (host, dataset, d) = past_drill(&drill_restore(good.clone())).unwrap();
        assert_eq!((host.as_str(), dataset.as_str()), ("h", "tank/a"));
        assert_eq!(d.outcome, DrillOutcome::Succeeded);
        assert_eq!(d.backup, "1700000000.full");
        assert_eq!(d.rto(), Some(SignedDuration::from_secs(30)));
        for (what, bad) in [
            (
                "not verified",
                RestoreStatus {
                    verified: Some(false),
                    ..good.clone()
                },
            ),
            (
                "no verifiedAt",
                RestoreStatus {
                    verified_at: None,
                    ..good.clone()
                },
            ),
            (
                "scratch left",
                RestoreStatus {
                    scratch_destroyed: Some(false),
                    ..good.clone()
                },
            ),
            (
                "failed",
                RestoreStatus {
                    phase: RestorePhase::Failed,
                    ..good.clone()
                },
            ),
        ] {
            let (_, _, d) = past_drill(&drill_restore(bad)).unwrap();
            assert_eq!(d.outcome, DrillOutcome::Failed, "{what}");
            assert_eq!(d.rto(), None, "{what}");
        }
        for phase in [RestorePhase::Pending, RestorePhase::Running] {
            let (_, _, d) = past_drill(&drill_restore(RestoreStatus {
                phase,
                ..Default::default()
            }))
            .unwrap();
            assert_eq!(d.outcome, DrillOutcome::Running);
        }
    }

    #[test]
    fn drill_names_are_short_valid_and_distinct() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let a = drill_name("p", "h", "tank/a", t);
        let b = drill_name("p", "h", "tank/b", t);
        assert_ne!(a, b);
        assert!(a.starts_with("drill-p-"));
        let long = drill_name(&"x-".repeat(100), "h", "tank/a", t);
        assert!(long.len() <= 6 + 40 + 1 + 10, "{long}");
        assert!(!long.contains("--"), "{long}");
        for n in [a, b, long] {
            zetaback_core::names::validate_dataset(&format!("pool/drills/{n}")).unwrap();
        }
    }

    fn stored(dataset: &str, id: &str) -> crate::store::StoredBackup {
        let sid: crate::store::StreamId = id.parse().unwrap();
        crate::store::StoredBackup {
            manifest: crate::store::Manifest {
                version: 1,
                id: id.into(),
                host: "h".into(),
                dataset: dataset.into(),
                snapshot: format!("zb-{}", sid.ts()),
                base_snapshot: None,
                backup_type: sid.backup_type(),
                bytes: 1000,
                sha256: Some("a".repeat(64)),
                compression: crate::api::backup_policy::Compression::None,
                created: Timestamp::from_second(sid.ts()).unwrap(),
                policy: Some("ops/p".into()),
                xxh3: None,
                raw: false,
            },
            archived: false,
            verification: None,
        }
    }

    fn drill_of(dataset: &str, name: &str, created: i64, status: RestoreStatus) -> Restore {
        let mut r = Restore::new(
            name,
            serde_json::from_value(serde_json::json!({
                "source": {"host": "h", "dataset": dataset, "backup": "1700000000.full"},
                "destination": {"host": "b", "dataset": format!("pool/drills/{name}")},
                "drill": true,
            }))
            .unwrap(),
        );
        r.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 + created).unwrap(),
        ));
        r.status = Some(status);
        r
    }

    #[test]
    fn plan_answers_drill_now_ends_timed_out_drills_and_reports_samples() {
        let policy: BackupPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "p", "namespace": "ops", "uid": "u1",
                "creationTimestamp": "2023-11-14T22:13:20Z",
                "annotations": {DRILL_NOW_ANNOTATION:
                    r#"[{"host":null,"dataset":"tank/a","requestedAt":"2023-11-14T22:30:00Z"}]"#}},
            "spec": {
                "hosts": {"names": ["h"]}, "datasets": {"include": ["tank/**"]},
                "target": {"host": "b", "path": "/srv/zb"},
                "full": {"every": "7d", "keep": "28d"},
                "incremental": {"every": "1d", "keep": "14d"},
                "drill": {"every": "30d", "datasetsPerRun": 2,
                    "destination": {"host": "b", "root": "pool/drills"}},
            },
        }))
        .unwrap();
        let catalogue = crate::store::Catalogue {
            backups: vec![
                stored("tank/a", "1700000000.full"),
                stored("tank/b", "1700000000.full"),
            ],
            problems: Vec::new(),
        };
        let view = StoreView::from_store(&catalogue);
        // tank/a: drilled well 10 minutes in (not due for 30 days); tank/b: a drill stuck
        // since the start, 7 hours ago (past the default 6h timeout).
        let good = drill_of(
            "tank/a",
            "drill-a",
            600,
            RestoreStatus {
                phase: RestorePhase::Succeeded,
                verified: Some(true),
                verified_at: at(610),
                finished_at: at(611),
                scratch_destroyed: Some(true),
                bytes_done: Some(1234),
                ..Default::default()
            },
        );
        let stuck = drill_of(
            "tank/b",
            "drill-b",
            0,
            RestoreStatus {
                phase: RestorePhase::Running,
                ..Default::default()
            },
        );
        let covered = [
            ("h".to_owned(), "tank/a".to_owned()),
            ("h".to_owned(), "tank/b".to_owned()),
        ];
        let now = Timestamp::from_second(1_700_000_000 + 7 * 3600).unwrap();
        let restores = [good, stuck];
        let inputs = Inputs {
            policy: &policy,
            catalogue: Some(&view),
            covered: &covered,
            restores: &restores,
            now,
        };
        let out = plan(&inputs);
        // The request for tank/a starts its drill at once, stamped with the request.
        assert_eq!(out.create.len(), 1, "{:?}", out.create);
        let asked = Timestamp::from_second(1_700_000_000 + 1000).unwrap();
        assert_eq!(out.create[0].spec.source.dataset_name(), "tank/a");
        assert_eq!(requested_by(&out.create[0]), Some(asked));
        // Its number among tank/a's drills (one listed, recorded before numbers were).
        assert_eq!(
            out.create[0]
                .annotations()
                .get(DRILL_NUMBER_ANNOTATION)
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(out.now_handled, Some(asked));
        // The stuck drill is ended, and tank/b is a DrillFailed violator saying why.
        assert_eq!(out.timed_out, vec![("drill-b".to_owned(), None)]);
        assert!(
            out.violations.iter().any(|v| v.dataset == "tank/b"
                && v.reason == crate::api::backup_policy::ViolationReason::DrillFailed
                && v.message
                    .as_deref()
                    .is_some_and(|m| m.contains("did not finish within 6h"))),
            "{:?}",
            out.violations
        );
        // The metrics' samples: tank/a's good drill, 10 s and 1234 bytes.
        assert_eq!(
            out.samples,
            vec![DrillSample {
                host: "h".into(),
                dataset: "tank/a".into(),
                seconds: 10,
                bytes: Some(1234),
            }]
        );
        // Once handled (recorded in status), the request starts nothing more.
        let mut handled = policy.clone();
        handled.status = Some(crate::api::BackupPolicyStatus {
            drill_now_handled: Some(Time(asked)),
            ..Default::default()
        });
        let out = plan(&Inputs {
            policy: &handled,
            ..inputs
        });
        assert!(out.create.is_empty(), "{:?}", out.create);
        assert_eq!(out.now_handled, Some(asked));
        // The ended drill's Restore reads as failed.
        let patch = timed_out_patch(now, Some("7"));
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(patch["status"]["phase"], "Failed");
        assert_eq!(patch["status"]["conditions"][0]["reason"], TIMED_OUT_REASON);
    }
}
