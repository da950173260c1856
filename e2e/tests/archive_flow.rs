//! Archiving end to end, on real parts (the local kube-apiserver, zfs-fuse pools, a real
//! source agent and a real backup-host agent storing files, the controller in-process): two
//! policies with intervals of seconds and `archive.after` / `archive.keep`, one taking
//! incrementals against the last full, one chained (`against: previous`), run for several
//! full cycles while the test reads the store's catalogue every second and checks:
//!
//! - **no kept backup ever loses a piece of its chain**: at every reading, every stored backup
//!   (live and archived together) has its whole chain stored;
//! - **nothing moves or goes before the policy says so**: every backup that moved to the
//!   archive or disappeared between two readings is one the pure policy logic
//!   (`policy::plan_retention` on the catalogue as it was, at the time of the second reading)
//!   archives or deletes, never one it keeps in place;
//! - **the store follows the policy**: backups do move to the archive area
//!   (`<root>/.archive/...`), fulls and incrementals, and `archive.keep` deletes them from
//!   there; and there are readings where nothing the policy archived or deleted two intervals
//!   earlier is still in place;
//! - **groups move together**: an archived backup never rests on a live one, and a live one
//!   rests on an archived one only while its group's move is under way (never over five
//!   readings in a row).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use zetaback::api::{BackupPolicy, BackupPolicySpec, BackupType};
use zetaback::policy::{DatasetBackups, PolicyRules, plan_retention};
use zetaback::store::StoredBackup;
use zetaback_e2e::Env;
use zetaback_e2e::fleet::{Fleet, HostSpec, noise};

/// One dataset's stored backups by id (`archived` as found; a backup found in both areas
/// counts as live, as the catalogue does).
fn by_id<'a>(
    backups: impl IntoIterator<Item = &'a StoredBackup>,
) -> BTreeMap<String, StoredBackup> {
    let mut out: BTreeMap<String, StoredBackup> = BTreeMap::new();
    for b in backups {
        match out.get(&b.manifest.id) {
            Some(seen) if !seen.archived => {}
            _ => {
                out.insert(b.manifest.id.clone(), b.clone());
            }
        }
    }
    out
}

fn catalogue(backups: &BTreeMap<String, StoredBackup>) -> DatasetBackups {
    DatasetBackups::from_store(backups.values()).expect("a consistent catalogue")
}

/// What one dataset's readings showed over the run.
#[derive(Default, Debug)]
struct Seen {
    archived_fulls: BTreeSet<String>,
    archived_incrementals: BTreeSet<String>,
    deleted_from_archive: BTreeSet<String>,
    deleted_live: BTreeSet<String>,
    /// Readings where nothing that was due for the archive or for deletion two incremental
    /// intervals earlier was still in place.
    settled_readings: usize,
    readings: usize,
    /// Live backups resting on an archived one, and for how many readings in a row.
    split_groups: BTreeMap<String, usize>,
}

impl Seen {
    fn done(&self) -> bool {
        !self.archived_fulls.is_empty()
            && !self.archived_incrementals.is_empty()
            && self
                .deleted_from_archive
                .iter()
                .any(|id| id.ends_with(".full"))
            && self.settled_readings > 0
    }
}

/// Checks one reading against the previous one and the policy; records what happened.
fn check(
    what: &str,
    rules: &PolicyRules,
    lag: SignedDuration,
    prev: &BTreeMap<String, StoredBackup>,
    cur: &BTreeMap<String, StoredBackup>,
    at: Timestamp,
    seen: &mut Seen,
) {
    seen.readings += 1;
    // Every stored backup's chain is complete (both areas together).
    let now = catalogue(cur);
    for r in now.records() {
        assert!(
            now.is_restorable(&r.id),
            "{what}: {} (archived: {}) is stored without a piece of its chain: {:?}",
            r.id,
            r.archived,
            now.chain(&r.id)
        );
    }
    // Groups move together (bases first, so only a move under way shows live-on-archived).
    let mut split = BTreeMap::new();
    for r in now.records() {
        let Some(base) = r.base.as_deref().and_then(|b| now.get(b)) else {
            continue;
        };
        assert!(
            !r.archived || base.archived,
            "{what}: archived {} rests on live {}",
            r.id,
            base.id
        );
        if !r.archived && base.archived {
            let n = seen.split_groups.get(&r.id).copied().unwrap_or(0) + 1;
            assert!(
                n < 5,
                "{what}: live {} has rested on archived {} for {n} readings",
                r.id,
                base.id
            );
            split.insert(r.id.clone(), n);
        }
    }
    seen.split_groups = split;
    // What changed was the policy's decision: on the previous reading plus what arrived since
    // (the controller may have seen a backup that arrived after the previous reading), at a
    // time no earlier than its decision (ages only grow, so the plan only allows more).
    let mut union = prev.clone();
    for (id, b) in cur {
        union.entry(id.clone()).or_insert_with(|| b.clone());
    }
    let plan = plan_retention(rules, &catalogue(&union), at + SignedDuration::from_secs(1));
    for (id, b) in prev {
        let moved = !b.archived && cur.get(id).is_some_and(|c| c.archived);
        let gone = !cur.contains_key(id);
        if !(moved || gone) {
            continue;
        }
        assert!(
            !plan.keep.contains(id),
            "{what}: {id} was {} although the policy keeps it in place (plan {plan:?})",
            if moved { "archived" } else { "deleted" }
        );
        let full = b.manifest.backup_type == BackupType::Full;
        match (moved, b.archived) {
            (true, _) if full => seen.archived_fulls.insert(id.clone()),
            (true, _) => seen.archived_incrementals.insert(id.clone()),
            (false, true) => seen.deleted_from_archive.insert(id.clone()),
            (false, false) => seen.deleted_live.insert(id.clone()),
        };
    }
    // Settled: what the policy archived or deleted `lag` ago is done.
    let late = plan_retention(rules, &now, at - lag);
    if late.archive.is_empty() && late.delete.is_empty() {
        seen.settled_readings += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_moves_and_expires_backups_as_the_policy_says() {
    let env = Env::get();
    let ns = env.namespace("archive");
    let mut fleet =
        Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    fleet.start_controller(|_| {}).await;
    let (src, bak) = (fleet.name("src"), fleet.name("bak"));
    let store_root = fleet.store_root("bak");
    let diff = fleet.create_dataset("src", "diff");
    let chain = fleet.create_dataset("src", "chain");
    fleet.write_file(&diff, "data.bin", &noise(11, 300_000));
    fleet.write_file(&chain, "data.bin", &noise(12, 300_000));
    // A policy created before its datasets show in the ZfsHost status waits for its next
    // periodic reconcile (BackupPolicies are not triggered by ZfsHost changes).
    fleet.wait_for_datasets("src", &[&diff, &chain]).await;

    let policy = |dataset: &str, against: &str| -> BackupPolicySpec {
        serde_json::from_value(serde_json::json!({
            "hosts": {"names": [src]},
            "datasets": {"include": [format!("*/{dataset}")]},
            "full": {"every": "24s", "keep": "30s"},
            "incremental": {"every": "6s", "keep": "25s", "against": against},
            "archive": {"after": "20s", "keep": "40s"},
            "target": {"host": bak, "path": store_root.display().to_string()},
            "grace": "10s",
        }))
        .expect("policy spec")
    };
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let specs = [
        ("diff", diff.clone(), policy("diff", "lastFull")),
        ("chain", chain.clone(), policy("chain", "previous")),
    ];
    let mut rules = Vec::new();
    for (name, _, spec) in &specs {
        rules.push(PolicyRules::from_spec(spec).expect("rules"));
        policies
            .create(
                &PostParams::default(),
                &BackupPolicy::new(name, spec.clone()),
            )
            .await
            .expect("create policy");
    }
    // A reconcile runs at least once per incremental interval; allow two, plus a job.
    let lag = SignedDuration::from_secs(2 * 6 + 5);

    let store = fleet.store_client();
    let ep = fleet.host("bak").endpoint();
    let mut prev: Vec<BTreeMap<String, StoredBackup>> = vec![BTreeMap::new(); specs.len()];
    let mut seen: Vec<Seen> = specs.iter().map(|_| Seen::default()).collect();
    let started = Instant::now();
    let mut last_print = Instant::now();
    // The outcome, not the clock, ends the loop; the limit only stops a run that cannot end.
    while !seen.iter().all(Seen::done) {
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "the policies did not archive and expire within the limit: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(c) = store.catalogue(&ep, &src).await else {
            continue;
        };
        let at = Timestamp::now();
        for (i, (name, dataset, _)) in specs.iter().enumerate() {
            let cur = by_id(c.of(&src, dataset));
            check(name, &rules[i], lag, &prev[i], &cur, at, &mut seen[i]);
            prev[i] = cur;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            for (i, (name, _, _)) in specs.iter().enumerate() {
                let (live, archived): (Vec<_>, Vec<_>) =
                    prev[i].values().partition(|b| !b.archived);
                println!(
                    "{:>4}s {name}: {} live, {} archived; archived so far {} fulls, {} incrementals; deleted {} from the archive, {} live",
                    started.elapsed().as_secs(),
                    live.len(),
                    archived.len(),
                    seen[i].archived_fulls.len(),
                    seen[i].archived_incrementals.len(),
                    seen[i].deleted_from_archive.len(),
                    seen[i].deleted_live.len()
                );
            }
        }
    }
    for (i, (name, _, _)) in specs.iter().enumerate() {
        println!("{name}: {:#?}", seen[i]);
    }

    // The archive area on disk is what the catalogue says.
    let escaped = |ds: &str| zetaback::store::escape_dataset(ds).expect("escape");
    for (i, (_, dataset, _)) in specs.iter().enumerate() {
        for b in prev[i].values() {
            let live = store_root
                .join(&src)
                .join(escaped(dataset))
                .join(&b.manifest.id);
            let archived = store_root
                .join(".archive")
                .join(&src)
                .join(escaped(dataset))
                .join(&b.manifest.id);
            let path = if b.archived { &archived } else { &live };
            assert!(path.is_file(), "{} is missing", path.display());
        }
    }

    // The store at the end, as the policy logic reads it.
    fleet.stop_controller().await;
    let c = store.catalogue(&ep, &src).await.expect("catalogue");
    let mut listing = String::new();
    for (name, dataset, _) in &specs {
        for r in catalogue(&by_id(c.of(&src, dataset))).records() {
            listing.push_str(&format!(
                "{name} {} {}{}\n",
                r.id,
                if r.archived { "archived" } else { "live" },
                r.base
                    .as_deref()
                    .map(|b| format!(" base {b}"))
                    .unwrap_or_default()
            ));
        }
    }
    println!("the store at the end:\n{listing}");
    let table = env.kubectl(&["get", "backuppolicies", "-n", &ns]);
    println!("{}", zetaback_e2e::text(&table.stdout));
    fleet.shutdown().await;
}
