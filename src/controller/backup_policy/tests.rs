//! The BackupPolicy reconciler's tests: the pure [`plan`] and its helpers, the job history,
//! the expectations and the host triggers.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::plan::{backup_now_done, new_job, pending_backup_now, wanted_conditions};
use super::triggers::FORGET_SLACK;
use super::*;
use crate::api::backup_policy::{BACKUP_NOW_ANNOTATION, BackupNowRequest, ViolationReason};
use crate::api::condition::COMPLIANT;
use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
use crate::api::{BackupJob, BackupType, JobPhase, ZfsHost};
use crate::api::{BackupPolicySpec, common::DatasetSelector};
use crate::controller::store_client::StoreView;
use crate::policy::{self, PolicyRules};
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
            sha256: Some("0".repeat(64)),
            compression: crate::api::backup_policy::Compression::None,
            created: ts(at),
            policy: None,
            xxh3: None,
            raw: false,
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
fn a_backup_lost_from_the_store_stays_a_violation_after_its_job_is_gone() {
    // No BackupJob at all (garbage-collected): only what the controller saw in the store.
    let hosts = [host("db-1", "db", 5000, &["tank/a"])];
    let mut pol = policy();
    let stored = store::Catalogue {
        backups: vec![full("db-1", "tank/a", 4000)],
        problems: vec![],
    };
    let seen = decide(&pol, &hosts, Some(&stored), 5000, None, &[], 0);
    assert_eq!(seen.status.violators, 0, "{:?}", seen.status.violations);
    pol.status = Some(seen.status);
    let lost = store::Catalogue::default();
    let p = decide(&pol, &hosts, Some(&lost), 5000, None, &[], 0);
    let reasons: Vec<_> = p.status.violations.iter().map(|v| v.reason).collect();
    assert!(
        reasons.contains(&ViolationReason::BackupMissing),
        "{:?}",
        p.status.violations
    );
    // It stays while the store cannot be read, and on the next look.
    pol.status = Some(p.status);
    let unread = decide(&pol, &hosts, None, 5100, None, &[], 0);
    pol.status = Some(unread.status);
    let again = decide(&pol, &hosts, Some(&lost), 5200, None, &[], 0);
    assert!(
        again
            .status
            .violations
            .iter()
            .any(|v| v.reason == ViolationReason::BackupMissing),
        "{:?}",
        again.status.violations
    );
    // A newer backup stored: the loss is healed, and remembered no more.
    let healed = store::Catalogue {
        backups: vec![full("db-1", "tank/a", 5300)],
        problems: vec![],
    };
    pol.status = Some(again.status);
    let hosts = [host("db-1", "db", 5400, &["tank/a"])];
    let p = decide(&pol, &hosts, Some(&healed), 5400, None, &[], 0);
    assert_eq!(p.status.violators, 0, "{:?}", p.status.violations);
    let ids: Vec<_> = p
        .status
        .newest_stored
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["5300.full"]);
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
    assert!(e.is_empty());
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
