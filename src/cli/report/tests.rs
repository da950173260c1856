use super::*;
use crate::api::BackupPolicySpec;
use crate::api::backup_job::{BackupJobSpec, BackupJobStatus};
use crate::api::backup_policy::Compression;
use crate::api::backup_policy::{Violation, ViolationReason};
use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
use crate::store::{Manifest, StoredBackup};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

const DAY: i64 = 86_400;
const T0: i64 = 1_700_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).expect("ts")
}

fn policy(extra: serde_json::Value) -> BackupPolicy {
    let mut spec = serde_json::json!({
        "hosts": {"names": ["db-1", "db-2"]},
        "datasets": {"include": ["tank/**"], "exclude": ["tank/tmp"]},
        "full": {"every": "7d", "keep": "14d"},
        "incremental": {"every": "1d", "keep": "3d"},
        "target": {"host": "backup-1", "path": "/srv/zb"}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let spec: BackupPolicySpec = serde_json::from_value(spec).expect("spec");
    let mut p = BackupPolicy::new("p1", spec);
    p.metadata.namespace = Some("ns".into());
    p
}

fn stored(host: &str, dataset: &str, id: &str, archived: bool) -> StoredBackup {
    let sid: crate::store::StreamId = id.parse().expect("id");
    StoredBackup {
        manifest: Manifest {
            version: 1,
            id: id.into(),
            host: host.into(),
            dataset: dataset.into(),
            snapshot: format!("zb-{}", sid.ts()),
            base_snapshot: sid.base_ts().map(|b| format!("zb-{b}")),
            backup_type: sid.backup_type(),
            bytes: 1000,
            sha256: Some("a".repeat(64)),
            compression: Compression::Zstd,
            created: ts(sid.ts()),
            policy: None,
            xxh3: None,
            raw: false,
        },
        archived,
        verification: None,
    }
}

fn catalogue(backups: Vec<StoredBackup>) -> store::Catalogue {
    store::Catalogue {
        backups,
        problems: Vec::new(),
    }
}

fn host(name: &str, datasets: Option<&[&str]>) -> ZfsHost {
    let mut h = ZfsHost::new(
        name,
        ZfsHostSpec {
            node_name: name.into(),
            datasets: Default::default(),
            paused: false,
            allowed_namespaces: Vec::new(),
            restore_roots: Vec::new(),
        },
    );
    h.status = datasets.map(|ds| ZfsHostStatus {
        datasets: ds
            .iter()
            .map(|d| DatasetStatus {
                name: (*d).into(),
                used_bytes: None,
                latest_snapshot: None,
                snapshots: Vec::new(),
                class: None,
                excluded: *d == "tank/excluded",
            })
            .collect(),
        ..Default::default()
    });
    h
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn catalogue_rows_keep_to_the_policy_and_the_filter() {
    let p = policy(serde_json::json!({}));
    let cat = catalogue(vec![
        stored("db-1", "tank/pg", &format!("{T0}.full"), false),
        stored(
            "db-1",
            "tank/pg",
            &format!("{}.incremental.{T0}", T0 + DAY),
            false,
        ),
        stored("db-1", "tank/tmp", &format!("{T0}.full"), false),
        stored("db-1", "other/x", &format!("{T0}.full"), false),
        stored("db-3", "tank/pg", &format!("{T0}.full"), false),
        stored("db-2", "tank/home", &format!("{T0}.full"), true),
    ]);
    let selected = names(&["db-1", "db-2"]);
    let rows = rows_from_catalogue(&p, &selected, &cat, &Filter::default(), None).expect("rows");
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.host.as_str(), r.dataset.as_str(), r.id.as_str()))
        .collect();
    let inc = format!("{}.incremental.{T0}", T0 + DAY);
    let full = format!("{T0}.full");
    assert_eq!(
        got,
        vec![
            ("db-1", "tank/pg", full.as_str()),
            ("db-1", "tank/pg", inc.as_str()),
            ("db-2", "tank/home", full.as_str()),
        ]
    );
    assert!(rows.iter().all(|r| r.namespace == "ns" && r.policy == "p1"));
    assert!(rows[2].archived && rows[0].files.is_empty());

    let filter = Filter::new(Some("^db-1$"), Some("pg")).expect("filter");
    let layout = Layout::new("/srv/zb");
    let rows = rows_from_catalogue(&p, &selected, &cat, &filter, Some(&layout)).expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0].files,
        vec![
            format!("/srv/zb/db-1/tank+pg/{T0}.full"),
            format!("/srv/zb/db-1/tank+pg/{T0}.full.json")
        ]
    );
    let text = render_list(&rows, true);
    assert!(
        text.starts_with("NAMESPACE   POLICY   HOST   DATASET   BACKUP"),
        "{text}"
    );
    assert!(
        text.contains("incremental") && text.contains("1000 B   store"),
        "{text}"
    );
    let json = serde_json::to_value(&rows).expect("json");
    assert_eq!(json[1]["type"], "incremental");
    assert_eq!(json[1]["source"], "catalogue");
    assert_eq!(json[0]["created"], "2023-11-14T22:13:20Z");
}

fn job(name: &str, dataset: &str, phase: JobPhase, finished: i64) -> BackupJob {
    let spec: BackupJobSpec = serde_json::from_value(serde_json::json!({
        "policy": "p1", "host": "db-1", "dataset": dataset, "type": "full",
        "snapshot": "zb-1", "target": {"host": "backup-1", "path": "/srv/zb"}
    }))
    .expect("job spec");
    let mut j = BackupJob::new(name, spec);
    j.metadata.namespace = Some("ns".into());
    j.status = Some(BackupJobStatus {
        phase,
        bytes: Some(42),
        finished_at: Some(Time(ts(finished))),
        ..Default::default()
    });
    j
}

#[test]
fn job_rows_are_the_succeeded_jobs() {
    let p = policy(serde_json::json!({}));
    let jobs = vec![
        job("j2", "tank/pg", JobPhase::Succeeded, T0 + 10),
        job("j1", "tank/pg", JobPhase::Succeeded, T0),
        job("j3", "tank/pg", JobPhase::Failed, T0 + 20),
        job("j4", "tank/home", JobPhase::Succeeded, T0),
    ];
    let rows = rows_from_jobs(&p, &jobs, &Filter::new(None, Some("pg")).expect("f"));
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["j1", "j2"]);
    assert_eq!(rows[0].source, Source::Jobs);
    assert_eq!(rows[0].bytes, Some(42));
    assert!(render_list(&rows, false).contains("job history"));
}

#[test]
fn summaries_count_per_dataset_and_show_covered_datasets_without_backups() {
    let p = policy(serde_json::json!({}));
    let cat = catalogue(vec![
        stored("db-1", "tank/pg", &format!("{T0}.full"), false),
        stored(
            "db-1",
            "tank/pg",
            &format!("{}.incremental.{T0}", T0 + DAY),
            false,
        ),
        stored(
            "db-1",
            "tank/pg",
            &format!("{}.incremental.{T0}", T0 + 2 * DAY),
            false,
        ),
    ]);
    let hosts = [
        host(
            "db-1",
            Some(&["tank/pg", "tank/new", "tank/tmp", "tank/excluded"]),
        ),
        host("db-2", None),
        host("web-1", Some(&["tank/www"])),
    ];
    let covered = covered_datasets(&p, &hosts).expect("covered");
    assert_eq!(
        covered,
        vec![
            ("db-1".to_owned(), "tank/new".to_owned()),
            ("db-1".to_owned(), "tank/pg".to_owned())
        ]
    );
    let rows =
        rows_from_catalogue(&p, &names(&["db-1"]), &cat, &Filter::default(), None).expect("rows");
    let s = summarize(
        &p,
        Source::Catalogue,
        rows,
        &covered,
        &Filter::default(),
        false,
    );
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].dataset.as_str(), s[0].backup_count, s[0].last_full),
        ("tank/new", 0, None)
    );
    assert_eq!(s[1].backup_count, 3);
    assert_eq!(s[1].bytes, 3000);
    assert_eq!(s[1].last_full, Some(ts(T0)));
    assert_eq!(s[1].last_incremental, Some(ts(T0 + 2 * DAY)));
    assert!(s[1].backups.is_empty());
    let now = ts(T0 + 3 * DAY);
    let text = render_summary(&s, now, false, false, false);
    assert!(text.contains("tank/new   never       never"), "{text}");
    assert!(
        text.contains("3d ago      24h ago            3         2.9 KiB"),
        "{text}"
    );

    let rows = rows_from_catalogue(
        &p,
        &names(&["db-1"]),
        &cat,
        &Filter::default(),
        Some(&Layout::new("/srv/zb")),
    )
    .expect("rows");
    let s = summarize(
        &p,
        Source::Catalogue,
        rows,
        &covered,
        &Filter::default(),
        true,
    );
    assert_eq!(s[1].backups.len(), 3);
    let text = render_summary(&s, now, false, true, true);
    assert!(text.contains("    (no backups)"), "{text}");
    assert!(text.contains("    BACKUP"), "{text}");
    assert!(
        text.contains(&format!("/srv/zb/db-1/tank+pg/{T0}.full ")),
        "{text}"
    );
}

#[test]
fn retention_rows_follow_the_policy_module() {
    let p = policy(serde_json::json!({"archive": {"after": "10d", "keep": "365d"}}));
    let rules = PolicyRules::from_spec(&p.spec).expect("rules");
    // Fulls every 7 days for five weeks, with incrementals in between.
    let mut backups = Vec::new();
    for w in 0..5 {
        let f = T0 + w * 7 * DAY;
        backups.push(stored("db-1", "tank/pg", &format!("{f}.full"), false));
        for d in 1..3 {
            backups.push(stored(
                "db-1",
                "tank/pg",
                &format!("{}.incremental.{f}", f + d * DAY),
                false,
            ));
        }
    }
    let cat = catalogue(backups);
    let now = ts(T0 + 5 * 7 * DAY);
    let datasets = vec![("db-1".to_owned(), "tank/pg".to_owned())];
    let (rows, problems) = retention_rows(&rules, &cat, &datasets, now);
    assert!(problems.is_empty());
    // Cross-check with the policy module directly.
    let pc = policy::DatasetBackups::from_store(cat.of("db-1", "tank/pg")).expect("cat");
    let plan = policy::plan_retention(&rules, &pc, now);
    let of = |a: RetentionAction| {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r.action == a)
            .map(|r| r.id.clone())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(of(RetentionAction::Delete), sorted(plan.delete.clone()));
    assert_eq!(of(RetentionAction::Archive), sorted(plan.archive.clone()));
    assert!(
        !plan.delete.is_empty() && !plan.archive.is_empty(),
        "{plan:?}"
    );
    let deletes: Vec<&RetentionRow> = rows
        .iter()
        .filter(|r| r.action == RetentionAction::Delete)
        .collect();
    let text = render_retention(&deletes, now);
    assert!(text.starts_with("HOST   DATASET   BACKUP"), "{text}");
    // A dataset nobody stored anything for has nothing to do.
    let (rows, _) = retention_rows(
        &rules,
        &cat,
        &[("db-2".to_owned(), "tank/pg".to_owned())],
        now,
    );
    assert!(rows.is_empty());
}

#[test]
fn disappeared_datasets_are_those_the_host_no_longer_reports() {
    let p = policy(serde_json::json!({}));
    let cat = catalogue(vec![
        stored("db-1", "tank/pg", &format!("{T0}.full"), false),
        stored("db-1", "tank/old", &format!("{T0}.full"), false),
        stored(
            "db-1",
            "tank/old",
            &format!("{}.incremental.{T0}", T0 + DAY),
            false,
        ),
        stored("db-2", "tank/x", &format!("{T0}.full"), false),
        stored("db-3", "tank/y", &format!("{T0}.full"), false),
    ]);
    let hosts = [host("db-1", Some(&["tank/pg"])), host("db-3", None)];
    let selected = names(&["db-1", "db-2", "db-3"]);
    let gone = disappeared(&p, &selected, &hosts, &cat, &Filter::default()).expect("gone");
    let got: Vec<(&str, &str, usize, &str)> = gone
        .iter()
        .map(|d| {
            (
                d.host.as_str(),
                d.dataset.as_str(),
                d.backup_count,
                d.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("db-1", "tank/old", 2, "not reported by the host"),
            ("db-2", "tank/x", 1, "the ZfsHost no longer exists"),
        ]
    );
    assert_eq!(gone[0].last_backup, Some(ts(T0 + DAY)));
    let text = render_violators(&[], &gone, ts(T0 + 2 * DAY));
    assert!(
        text.contains("no longer has") && text.contains("tank/old"),
        "{text}"
    );
}

fn violation(host: &str, dataset: &str, reason: ViolationReason) -> Violation {
    Violation {
        host: host.into(),
        dataset: dataset.into(),
        reason,
        since: Some(Time(ts(T0))),
        message: Some("late".into()),
    }
}

#[test]
fn health_reads_ready_and_filters_violations() {
    let mut p = policy(serde_json::json!({}));
    assert_eq!(
        policy_health(&p, "p1".into(), &Filter::default()).readiness,
        Readiness::NoStatus
    );
    p.status = Some(crate::api::BackupPolicyStatus {
        violators: 3,
        violations: vec![
            violation("db-1", "tank/pg", ViolationReason::NoBackupWithin),
            violation("db-1", "tank/pg", ViolationReason::LastJobFailed),
            violation("db-2", "tank/x", ViolationReason::NoFullWithin),
        ],
        conditions: vec![Condition {
            type_: READY.into(),
            status: "False".into(),
            reason: "StoreUnreachable".into(),
            message: "no store".into(),
            last_transition_time: Time(ts(T0)),
            observed_generation: None,
        }],
        ..Default::default()
    });
    let h = policy_health(&p, "p1".into(), &Filter::default());
    assert_eq!(h.violators, 3);
    assert_eq!(h.violations.len(), 3);
    assert_eq!(
        h.readiness,
        Readiness::NotReady {
            reason: "StoreUnreachable".into(),
            message: "no store".into()
        }
    );
    let h = policy_health(
        &p,
        "p1".into(),
        &Filter::new(Some("db-1"), None).expect("f"),
    );
    assert_eq!((h.violators, h.violations.len()), (1, 2));
    let text = render_violators(&[h], &[], ts(T0 + 3600));
    assert!(text.contains("NoBackupWithin   60m ago   late"), "{text}");
    assert!(text.contains("StoreUnreachable   no store"), "{text}");
}

#[test]
fn a_policy_that_protects_nothing_is_not_ok_for_monitoring() {
    // The controller's verdict: Ready, no violator, but Compliant=False because the
    // selector matches no host. Monitoring must not read that as "all is well".
    let cond = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: "the policy selects no ZfsHost, so nothing is backed up".into(),
        last_transition_time: Time(ts(T0)),
        observed_generation: None,
    };
    for reason in ["NoHostsSelected", "NoDatasetsSelected"] {
        let mut p = policy(serde_json::json!({}));
        p.status = Some(crate::api::BackupPolicyStatus {
            conditions: vec![
                cond(READY, "True", "Evaluated"),
                cond(crate::api::condition::COMPLIANT, "False", reason),
            ],
            last_evaluated: Some(Time(ts(T0))),
            ..Default::default()
        });
        let h = policy_health(&p, "ns/p1".into(), &Filter::default());
        let verdict = super::super::monitor::assess(
            &[h],
            super::super::monitor::Freshness {
                now: ts(T0 + 60),
                max_age: std::time::Duration::from_secs(900),
            },
        );
        assert_eq!(
            verdict.state,
            super::super::monitor::State::Warning,
            "{reason}: {}",
            verdict.line()
        );
        assert!(
            verdict.summary.contains("ns/p1") && verdict.summary.contains(reason),
            "{reason}: {}",
            verdict.line()
        );
    }
}

#[test]
fn selectors_pick_hosts_by_label() {
    let p = policy(serde_json::json!({"hosts": {"selector": {"matchLabels": {"tier": "db"}}}}));
    let mut a = host("a", None);
    a.metadata.labels = Some([("tier".to_owned(), "db".to_owned())].into());
    let b = host("b", None);
    assert_eq!(selected_hosts(&p, &[a, b]), vec!["a".to_owned()]);
}
