//! The Restore reconciler's tests: resolving a chain, the refusals, bulk expansion and steps.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::DatasetPattern;
use crate::api::condition::READY;
use crate::api::restore::{RestoreDestination, RestoreSource};
use crate::api::restore::{RestorePhase, RestorePiece};
use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
use crate::controller::conditions::{self, Wanted};
use crate::store;
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
            serde_json::from_value::<DatasetStatus>(serde_json::json!({"name": "tank/restored"}))
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
    let e = plan_bulk("b", &bulk_spec(&["**"]), &[down], Some(&dest_host(&[]))).expect_err("down");
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
