use std::collections::VecDeque;

use super::*;
use crate::api::zfs_host::{ZfsHostSpec, ZfsHostStatus};

fn stored(host: &str, dataset: &str, id: &str, bytes: u64, archived: bool) -> StoredBackup {
    let sid: crate::store::StreamId = id.parse().expect("id");
    let m = serde_json::from_value(serde_json::json!({
        "id": id, "host": host, "dataset": dataset, "snapshot": format!("s{}", sid.ts()),
        "type": if id.contains("incremental") { "incremental" } else { "full" },
        "bytes": bytes, "sha256": "x", "compression": "none",
        "created": Timestamp::from_second(sid.ts()).expect("ts"),
    }))
    .expect("manifest");
    StoredBackup {
        manifest: m,
        archived,
        verification: None,
    }
}

fn inventory() -> Inventory {
    Inventory::new([
        stored("db-1", "tank/db", "1000.full", 4096, false),
        stored("db-1", "tank/db", "2000.incremental.1000", 1024, false),
        stored("db-1", "tank/db", "1000.full", 4096, true),
        stored("db-1", "tank/www", "1500.full", 2048, false),
        stored("web-1", "pool/site", "1200.full", 100, true),
        stored("web-1", "pool/broken", "1300.incremental.1250", 10, false),
    ])
}

fn zfs_host(name: &str, pools: &[&str], datasets: &[&str]) -> ZfsHost {
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
    h.status = Some(
        serde_json::from_value::<ZfsHostStatus>(serde_json::json!({
            "pools": pools.iter().map(|p| serde_json::json!({"name": p, "health": "ONLINE"})).collect::<Vec<_>>(),
            "datasets": datasets.iter().map(|d| serde_json::json!({"name": d})).collect::<Vec<_>>(),
        }))
        .expect("status"),
    );
    h
}

#[test]
fn hosts_and_datasets_are_listed_with_their_backups() {
    let inv = inventory();
    let hosts = host_choices(&inv);
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        (hosts[0].host.as_str(), hosts[0].datasets, hosts[0].backups),
        ("db-1", 2, 3),
        "an archived copy of a live backup counts once"
    );
    let labels = host_labels(&hosts);
    assert!(
        labels[0]
            .starts_with("db-1   2 dataset(s), 3 backup(s), 7.0 KiB, newest 1970-01-01T00:33:20Z"),
        "{}",
        labels[0]
    );
    let ds = dataset_choices(&inv, "db-1");
    assert_eq!(ds[0].dataset, "tank/db");
    assert_eq!(
        ds[0].backups[1].chain,
        Ok(vec![
            "1000.full".to_owned(),
            "2000.incremental.1000".to_owned()
        ])
    );
    assert_eq!(ds[0].backups[1].chain_bytes, 5120);
    let labels = dataset_labels(&ds);
    assert_eq!(
        labels[0],
        "tank/db   1 full + 1 incremental; newest incremental 1970-01-01T00:33:20Z (1.0 KiB), chain of 2 (5.0 KiB)"
    );
    let web = dataset_choices(&inv, "web-1");
    assert!(
        dataset_labels(&web)[0].contains("cannot be restored"),
        "{:?}",
        dataset_labels(&web)
    );
    assert!(
        web[1].backups[0].chain_archived,
        "pool/site's only full is archived"
    );
}

#[test]
fn points_in_time_for_one_and_for_several() {
    let inv = inventory();
    let ds = dataset_choices(&inv, "db-1");
    let one = point_choices(&[&ds[0]]);
    assert_eq!(one.len(), 3);
    assert_eq!(one[1].0, Point::Backup("2000.incremental.1000".into()));
    assert_eq!(
        one[1].1,
        "1970-01-01T00:33:20Z  incremental    1.0 KiB  chain: 1000.full → 2000.incremental.1000"
    );
    let both = point_choices(&[&ds[0], &ds[1]]);
    let labels: Vec<&str> = both.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "newest backup of each dataset",
            "at 1970-01-01T00:33:20Z  (tank/db incremental, tank/www full)",
            "at 1970-01-01T00:25:00Z  (tank/db full, tank/www full)",
            "at 1970-01-01T00:16:40Z  (tank/db full, tank/www nothing)",
        ]
    );
}

#[test]
fn destinations_default_and_map_under_a_base() {
    let pools = vec!["backup".to_owned()];
    assert_eq!(
        default_destination(&pools, &["tank/db"]),
        "backup/restore/tank/db"
    );
    assert_eq!(
        default_destination(&[], &["tank/db", "tank/www"]),
        "tank/restore"
    );
    assert_eq!(
        destinations(&["tank/db", "tank/www"], "b/r"),
        [
            ("tank/db".to_owned(), "b/r/tank/db".to_owned()),
            ("tank/www".to_owned(), "b/r/tank/www".to_owned())
        ]
    );
    let hosts = [
        zfs_host("db-2", &["backup"], &["b/r/tank/www"]),
        zfs_host("db-1", &["tank"], &[]),
    ];
    let (names, labels, start) = destination_hosts(&hosts, "db-1");
    assert_eq!(names, ["db-1", "db-2"]);
    assert_eq!(start, 0);
    assert_eq!(labels[0], "db-1  (pools: tank, the source host)");
    assert_eq!(
        pools_of(&hosts, "db-2"),
        ["b"],
        "the pools of the datasets it selects, not every pool it sees"
    );
    assert_eq!(
        existing(
            &hosts,
            "db-2",
            &destinations(&["tank/db", "tank/www"], "b/r")
        ),
        ["b/r/tank/www"]
    );
}

/// Answers from a script; `None` stands for Esc.
#[derive(Default)]
struct Script {
    answers: VecDeque<Option<String>>,
    asked: Vec<String>,
}

impl Script {
    fn new(answers: &[Option<&str>]) -> Self {
        Self {
            answers: answers.iter().map(|a| a.map(str::to_owned)).collect(),
            asked: Vec::new(),
        }
    }
    fn next(&mut self, message: &str) -> Result<String, CliError> {
        self.asked.push(message.to_owned());
        self.answers
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected question {message:?}"))
            .ok_or(CliError::Cancelled)
    }
}

impl Prompter for Script {
    fn select(
        &mut self,
        m: &str,
        options: &[String],
        _: &str,
        start: usize,
    ) -> Result<usize, CliError> {
        let a = self.next(m)?;
        if a.is_empty() {
            return Ok(start);
        }
        options
            .iter()
            .position(|o| o.starts_with(&a))
            .ok_or_else(|| CliError::Usage(format!("no option {a:?} in {options:?}")))
    }
    fn multi_select(
        &mut self,
        m: &str,
        options: &[String],
        _: &str,
    ) -> Result<Vec<usize>, CliError> {
        let a = self.next(m)?;
        Ok(a.split(',')
            .filter_map(|p| options.iter().position(|o| o.starts_with(&format!("{p} "))))
            .collect())
    }
    fn text(
        &mut self,
        m: &str,
        initial: &str,
        _: &str,
        validate: fn(&str) -> Result<(), String>,
    ) -> Result<String, CliError> {
        let a = self.next(m)?;
        let v = if a.is_empty() { initial.to_owned() } else { a };
        validate(&v).map_err(CliError::Usage)?;
        Ok(v)
    }
    fn confirm(&mut self, m: &str, _: bool) -> Result<bool, CliError> {
        Ok(self.next(m)? == "y")
    }
}

fn fleet() -> Vec<ZfsHost> {
    vec![
        zfs_host("db-1", &["tank"], &["tank/db"]),
        zfs_host("db-2", &["backup"], &["backup/restore/tank/db"]),
    ]
}

#[test]
fn one_dataset_at_a_listed_backup() {
    let mut s = Script::new(&[
        Some("db-1"),
        Some("tank/db"),
        Some("1970-01-01T00:16:40Z"),
        Some(""),
        Some(""),
    ]);
    let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
    assert_eq!(plan.spec.source.dataset_name(), "tank/db");
    assert_eq!(plan.spec.source.backup.as_deref(), Some("1000.full"));
    assert!(!plan.spec.source.include_archive, "the live copy is used");
    assert_eq!(
        plan.spec.destination.host.as_str(),
        "db-1",
        "the source host is the default"
    );
    assert_eq!(
        plan.spec.destination.dataset.as_str(),
        "tank/restore/tank/db"
    );
    assert!(!plan.spec.force);
    assert_eq!(
        plan.summary.lines().next(),
        Some("Restore 1 dataset(s) of db-1 (backup 1000.full) to db-1:")
    );
    assert!(
        plan.summary.contains(
            "db-1:tank/db  →  db-1:tank/restore/tank/db\n      1 piece(s), 4.0 KiB (full 1970-01-01T00:16:40Z)"
        ),
        "{}",
        plan.summary
    );
    assert_eq!(answer_text("db-1   2 dataset(s)"), "db-1");
    assert_eq!(
        answer_text("newest backup of each dataset"),
        "newest backup of each dataset"
    );
}

#[test]
fn several_datasets_make_a_bulk_restore_and_existing_destinations_ask() {
    // db-2 has backup/restore/tank/db: refuse to replace, give another base.
    let mut s = Script::new(&[
        Some("db-1"),
        Some("tank/db,tank/www"),
        Some("at 1970-01-01T00:25:00Z"),
        Some("db-2"),
        Some(""),
        Some("n"),
        Some("backup/other"),
    ]);
    let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
    assert!(plan.spec.source.is_bulk());
    let ds: Vec<&str> = plan
        .spec
        .source
        .datasets
        .iter()
        .map(|d| d.as_str())
        .collect();
    assert_eq!(ds, ["tank/db", "tank/www"]);
    assert_eq!(
        plan.spec.source.at.as_ref().map(|t| t.0.as_second()),
        Some(1500)
    );
    assert_eq!(plan.spec.destination.dataset.as_str(), "backup/other");
    assert!(!plan.spec.force);
    assert!(
        s.asked[5].contains("db-2 already has backup/restore/tank/db"),
        "{:?}",
        s.asked
    );
    assert!(
        plan.summary
            .contains("db-1:tank/www  →  db-2:backup/other/tank/www"),
        "{}",
        plan.summary
    );
    // Saying yes replaces it.
    let mut s = Script::new(&[
        Some("db-1"),
        Some("tank/db,tank/www"),
        Some(""),
        Some("db-2"),
        Some(""),
        Some("y"),
    ]);
    let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
    assert!(plan.spec.force && plan.summary.contains("REPLACED"));
    assert_eq!(plan.spec.source.at, None, "newest of each");
}

#[test]
fn archived_chains_search_the_archive_and_esc_cancels() {
    let mut s = Script::new(&[
        Some("web-1"),
        Some("pool/site"),
        Some(""),
        Some(""),
        Some("pool/r"),
    ]);
    let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
    assert!(plan.spec.source.include_archive);
    assert!(plan.summary.contains("archive area"));
    for at in 0..4 {
        let mut answers = vec![Some("db-1"), Some("tank/db"), Some(""), Some("")];
        answers[at] = None;
        let mut s = Script::new(&answers);
        assert!(matches!(
            choose(&mut s, &inventory(), &fleet(), None),
            Err(CliError::Cancelled)
        ));
    }
    let mut s = Script::new(&[]);
    assert!(choose(&mut s, &Inventory::default(), &fleet(), None).is_err());
    let bad = Script::new(&[
        Some("db-1"),
        Some("tank/db"),
        Some(""),
        Some(""),
        Some("-rf /"),
    ]);
    let mut bad = bad;
    assert!(
        choose(&mut bad, &inventory(), &fleet(), None).is_err(),
        "invalid names are refused"
    );
}
