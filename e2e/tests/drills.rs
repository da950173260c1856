//! Restore drills end to end (issue 18), on real parts: the local kube-apiserver, zfs-fuse
//! pools, a source agent, a store agent (whose pool also holds the drills' scratch root), and
//! the controller. A policy with `spec.drill: {every: 20s}` gets its full stored; the
//! controller drills it (a Restore marked `drill`, into `<bak pool>/drills/<name>`): the
//! restore is verified, timed (`status.recovery[].rtoSeconds`, the metrics
//! `restore_drill_seconds` and `restore_drill_bytes`) and its scratch dataset destroyed. Then a byte of the stored stream is flipped on disk: the next drill fails
//! (`ChecksumMismatch`), the dataset is a `DrillFailed` violator with an Event, and nothing
//! is left in the scratch root. `kubectl zetaback drill` asks for a drill now and answers by
//! the monitoring-plugin convention: OK before the flip, CRITICAL after, UNKNOWN without a
//! policy or without `spec.drill`; `kubectl zetaback report` shows the DrillFailed dataset as
//! not compliant. Drills pointed elsewhere (the source dataset itself, an
//! existing dataset under the scratch root) are refused by the agent and change nothing.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use zetaback::api::Restore;
use zetaback::api::backup_policy::{DRILL_NOW_REQUEST_ANNOTATION, DrillResult, ViolationReason};
use zetaback::api::restore::{DRILL_POLICY_LABEL, RestorePhase};
use zetaback::api::{BackupPolicy, RestoreStatus};
use zetaback::store::Layout;
use zetaback_e2e::fleet::{
    Fleet, HostSpec, create_restore, dataset_exists, noise, restore_finished, restore_reason, sums,
    zfs,
};
use zetaback_e2e::{Env, eventually, http_get, metric, text};

const POLICY: &str = "drill-p";
const LIMIT: Duration = Duration::from_secs(240);

/// The command lines of running `zfs receive` processes into `dataset` (from /proc).
fn receives_into(dataset: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "receive" || a == "recv") && args.iter().any(|a| a == dataset) {
            found.push(args.join(" "));
        }
    }
    found
}

/// The children of `root` (scratch datasets left behind).
fn children(root: &str) -> Vec<String> {
    zfs(&["list", "-H", "-r", "-o", "name", root])
        .lines()
        .filter(|l| *l != root && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The shared test apiserver may get an older CRD applied by another checkout's test run
/// (`env.sh up`), which prunes `spec.drill` from what the apiserver (and the controller's
/// watch) shows. While it is missing, applies this checkout's CRDs again and writes
/// `spec.drill` back (the write also reaches the controller's watch); likewise while the
/// CRD lacks `status.drillNowHandled`. Only the shared
/// development machine needs it; CI runs one checkout.
async fn ensure_drill(env: &Env, api: &Api<BackupPolicy>, drill: &serde_json::Value) {
    eventually("spec.drill stored", Duration::from_secs(60), || async {
        let p = api.get(POLICY).await.ok()?;
        // The older CRD may also lack this checkout's status fields (a status write naming
        // one is refused as a whole).
        let crd = env.kubectl(&["get", "crd", "backuppolicies.zetaback.io", "-o", "json"]);
        if p.spec.drill.is_some() && text(&crd.stdout).contains("drillNowHandled") {
            return Some(());
        }
        let crds = env.root.join("crds");
        env.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &crds.to_string_lossy(),
        ]);
        let patch = serde_json::json!({"spec": {"drill": drill}});
        let _ = api
            .patch(
                POLICY,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_restore_verify_time_and_clean_up_and_a_corrupt_stream_fails_one() {
    // The in-process controller's log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_test_writer()
        .try_init();
    let env = Env::get();
    let ns = env.namespace("drills");
    let mut fleet =
        Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    let ds = fleet.create_dataset("src", "db/a");
    fleet.write_file(&ds, "data.bin", &noise(21, 300_000));
    let before = sums(&zetaback_e2e::fleet::mounted(&ds));
    let root = fleet.create_dataset("bak", "drills");
    zfs(&["set", "zetaback.io:scratch=on", &root]);
    fleet.start_controller(|_| {}).await;
    let api: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let drill_restores = || async {
        restores
            .list(&ListParams::default().labels(&format!("{DRILL_POLICY_LABEL}={POLICY}")))
            .await
            .ok()
            .map(|l| l.items)
    };

    let mut spec = fleet.policy_spec("src", "bak", &ds);
    spec["drill"] = serde_json::json!({
        "every": "20s",
        "destination": {"host": fleet.name("bak"), "root": root},
        "keep": 2,
    });
    spec["objectives"] = serde_json::json!({"rpo": "26h", "rto": "1h"});
    let drill = spec["drill"].clone();
    fleet.create_policy(POLICY, "src", &[&ds], spec).await;
    ensure_drill(env, &api, &drill).await;
    let stored = fleet.wait_for_backups("bak", "src", &ds, 1).await;
    let full = stored[0].manifest.clone();

    // A drill succeeds: recorded in status with its measured RTO, from the stored full.
    let entry = eventually("a successful drill in status.recovery", LIMIT, || async {
        ensure_drill(env, &api, &drill).await;
        let st = api.get(POLICY).await.ok()?.status?;
        let r = st.recovery.iter().find(|r| r.dataset == ds)?.clone();
        let last = r.last_drill.as_ref()?;
        (last.result == DrillResult::Succeeded).then_some(r)
    })
    .await;
    println!("recovery: {entry:?}");
    let last = entry.last_drill.clone().expect("last drill");
    assert_eq!(last.backup, full.id);
    let rto = last.rto_seconds.expect("an RTO");
    assert!(rto >= 0, "{last:?}");
    assert_eq!(entry.rto_seconds, Some(rto));
    assert_eq!(
        entry.newest_restorable.as_ref().map(|t| t.0),
        Some(full.created)
    );
    // Its Restore: every piece verified against the manifest, the scratch dataset destroyed.
    let r = restores
        .get(&last.restore)
        .await
        .expect("the drill's Restore");
    let st: RestoreStatus = r.status.clone().expect("status");
    assert!(r.spec.drill, "{:?}", r.spec);
    assert_eq!(st.phase, RestorePhase::Succeeded, "{st:?}");
    assert_eq!(st.verified, Some(true));
    assert!(
        st.pieces
            .iter()
            .all(|p| p.verified == Some(true) && Some(&p.sha256) == full.sha256.as_ref())
    );
    assert_eq!(st.scratch_destroyed, Some(true), "{st:?}");
    assert!(st.verified_at.is_some());
    let into = r.spec.destination.dataset.as_str().to_owned();
    assert!(into.starts_with(&format!("{root}/drill-")), "{into}");
    assert!(!dataset_exists(&into), "{into} was left behind");
    // The policy is compliant: no drill violation.
    let st = api
        .get(POLICY)
        .await
        .expect("policy")
        .status
        .expect("status");
    assert!(
        !st.violations.iter().any(|v| matches!(
            v.reason,
            ViolationReason::DrillFailed | ViolationReason::RtoMissed
        )),
        "{:?}",
        st.violations
    );

    // The drill metrics: each dataset's last successful drill, its time and bytes.
    let port = fleet.controller_port().expect("the controller runs");
    let labels = format!(
        "{{namespace=\"{ns}\",policy=\"{POLICY}\",host=\"{}\",dataset=\"{ds}\"}}",
        fleet.name("src")
    );
    let (seconds, bytes) = eventually("the drill metrics", Duration::from_secs(60), || async {
        let m = http_get(port, "/metrics").await.ok()?;
        let seconds = metric(
            &m,
            &format!("zetaback_controller_restore_drill_seconds{labels}"),
        )?;
        let bytes = metric(
            &m,
            &format!("zetaback_controller_restore_drill_bytes{labels}"),
        )?;
        Some((seconds, bytes))
    })
    .await;
    assert!(seconds >= 0.0, "{seconds}");
    // The stream's bytes (every drill of the one full restores as many).
    assert_eq!(bytes, full.bytes as f64, "restore_drill_bytes");

    // On demand: `kubectl zetaback drill` has the controller drill the dataset now and
    // answers OK from the drill that answered the request (its Restore says so).
    let asked_at = jiff::Timestamp::now();
    let (code, out) = fleet
        .zb(&["drill", POLICY, "--dataset", &ds, "--timeout", "4m"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("DRILL OK - 1 dataset(s) drilled, 0 failed"),
        "{out}"
    );
    let answered = drill_restores().await.unwrap_or_default();
    let answered: Vec<_> = answered
        .iter()
        .filter(|r| {
            r.annotations()
                .get(DRILL_NOW_REQUEST_ANNOTATION)
                .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                .is_some_and(|at| at.as_second() >= asked_at.as_second())
        })
        .collect();
    assert!(
        answered.iter().any(|r| r
            .status
            .as_ref()
            .is_some_and(|s| s.phase == RestorePhase::Succeeded && s.verified == Some(true))),
        "no verified drill answers the request: {answered:?}"
    );
    // A policy that does not exist is UNKNOWN, not OK.
    let (code, out) = fleet.zb(&["drill", "no-such-policy"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("DRILL UNKNOWN - "), "{out}");

    // Flip a byte of the stored full on disk (same size: only the checksum can tell).
    let id = full.stream_id().expect("id");
    let path = Layout::new(fleet.store_root("bak"))
        .stream_path(&fleet.name("src"), &ds, &id, false)
        .expect("path");
    let flipped_at = jiff::Timestamp::now();
    zetaback_e2e::fleet::flip_byte(&path, full.bytes / 2, 0x01);

    // The next drill fails on the checksum, and the dataset is a DrillFailed violator.
    let failed = eventually("a drill started after the flip fails", LIMIT, || async {
        ensure_drill(env, &api, &drill).await;
        let list = restores
            .list(&ListParams::default().labels(&format!("{DRILL_POLICY_LABEL}={POLICY}")))
            .await
            .ok()?;
        list.items.into_iter().find(|r| {
            r.creation_timestamp().is_some_and(|t| t.0 > flipped_at)
                && r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == RestorePhase::Failed)
        })
    })
    .await;
    let st = failed.status.clone().expect("status");
    println!("failed drill: {:?}", st.message);
    assert_eq!(restore_reason(&failed), "ChecksumMismatch", "{st:?}");
    assert_eq!(st.verified, Some(false));
    assert_eq!(st.scratch_destroyed, Some(true), "{st:?}");
    let violation = eventually("a DrillFailed violation", LIMIT, || async {
        ensure_drill(env, &api, &drill).await;
        let st = api.get(POLICY).await.ok()?.status?;
        st.violations
            .into_iter()
            .find(|v| v.dataset == ds && v.reason == ViolationReason::DrillFailed)
    })
    .await;
    assert!(
        violation
            .message
            .as_deref()
            .is_some_and(|m| m.contains("checksum mismatch")),
        "{violation:?}"
    );
    // On demand, the drill fails too: CRITICAL.
    let (code, out) = fleet
        .zb(&["drill", POLICY, "--dataset", &ds, "--timeout", "4m"])
        .await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("DRILL CRITICAL - 1 dataset(s) drilled, 1 failed"),
        "{out}"
    );
    assert!(out.contains("checksum mismatch"), "{out}");
    // The compliance report says so: one self-contained page naming the dataset and its
    // DrillFailed violation, and the same numbers as JSON.
    let (code, html) = fleet.zb(&["report", "-o", "html"]).await;
    assert_eq!(code, 0, "{html}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        html.contains(&ds) && html.contains("DrillFailed") && html.contains("NOT COMPLIANT"),
        "{html}"
    );
    let (code, json) = fleet.zb(&["report", "-o", "json"]).await;
    assert_eq!(code, 0, "{json}");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["dataset"] == ds.as_str()))
        .unwrap_or_else(|| panic!("{ds} not in {json}"));
    assert_eq!(row["compliant"], false, "{row}");
    assert!(
        row["violations"]
            .as_array()
            .is_some_and(|v| v.iter().any(|r| r == "DrillFailed")),
        "{row}"
    );
    assert_eq!(row["rtoObjectiveSeconds"], 3600, "{row}");
    zetaback_e2e::events::wait_for_event(
        &env.client().await,
        &ns,
        "ViolationStarted",
        "DrillFailed",
        Duration::from_secs(60),
    )
    .await;

    // Drills pointed elsewhere are refused by the agent and change nothing: the source
    // dataset itself (its parent is no scratch root), and an existing dataset under the
    // scratch root (a drill only creates, so its clean-up never destroys what it did not make).
    let keep = fleet.create_dataset("bak", "drills/keep");
    fleet.write_file(&keep, "mine.bin", &noise(22, 10_000));
    let keep_sums = sums(&zetaback_e2e::fleet::mounted(&keep));
    let snapshots = |d: &str| zfs(&["list", "-H", "-t", "snapshot", "-r", "-o", "name", d]);
    let source_snapshots = snapshots(&ds);
    let elsewhere = format!("{}/db/new", fleet.host("src").pool);
    for (name, host, into, why) in [
        // The controller refuses an existing destination before any agent sees it.
        (
            "evil-source",
            fleet.name("src"),
            ds.clone(),
            "DestinationExists",
        ),
        // The agent refuses a new dataset outside a scratch root...
        (
            "evil-elsewhere",
            fleet.name("src"),
            elsewhere.clone(),
            "NotScratch",
        ),
        // ...and an existing one under it: the agent's guard, or the controller first when the
        // backup host's report already lists the dataset (a race: either refusal is right).
        (
            "evil-existing",
            fleet.name("bak"),
            keep.clone(),
            "NotScratch|DestinationExists",
        ),
    ] {
        create_restore(
            &restores,
            name,
            serde_json::json!({
                "source": {"host": fleet.name("src"), "dataset": ds},
                "destination": {"host": host, "dataset": into},
                "drill": true,
            }),
        )
        .await;
        let r = restore_finished(&restores, name, LIMIT).await;
        assert_eq!(
            r.status.as_ref().map(|s| s.phase),
            Some(RestorePhase::Failed)
        );
        let reason = restore_reason(&r);
        assert!(
            why.split('|').any(|w| w == reason),
            "{name}: refused with {reason}, expected {why}"
        );
    }
    assert_eq!(
        snapshots(&ds),
        source_snapshots,
        "the source's snapshots changed"
    );
    assert_eq!(sums(&zetaback_e2e::fleet::mounted(&ds)), before);
    assert!(dataset_exists(&keep), "the existing dataset was destroyed");
    assert_eq!(sums(&zetaback_e2e::fleet::mounted(&keep)), keep_sums);

    // History is bounded: keep 2 finished drills, and the last good one.
    eventually("drill history pruned", LIMIT, || async {
        ensure_drill(env, &api, &drill).await;
        let finished = drill_restores()
            .await?
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    matches!(s.phase, RestorePhase::Succeeded | RestorePhase::Failed)
                })
            })
            .count();
        (finished <= 3).then_some(())
    })
    .await;

    // Drilling stops with spec.drill removed; once no drill runs, nothing but that dataset
    // is in the scratch root: every drill cleaned up after itself.
    let patch = serde_json::json!({"spec": {"drill": null, "objectives": {"rto": null}}});
    api.patch(
        POLICY,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("remove spec.drill");
    eventually("no drill running", LIMIT, || async {
        let running = drill_restores().await?.iter().any(|r| {
            r.status
                .as_ref()
                .is_none_or(|s| matches!(s.phase, RestorePhase::Pending | RestorePhase::Running))
        });
        (!running).then_some(())
    })
    .await;
    // Without spec.drill there is nothing to ask for: UNKNOWN.
    let (code, out) = fleet.zb(&["drill", POLICY]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("has no spec.drill"), "{out}");
    let left = children(&root);
    assert_eq!(
        left,
        std::slice::from_ref(&keep),
        "scratch datasets left behind"
    );

    fleet.shutdown().await;
}

/// The drill Restores of `policy` in `api`'s namespace.
async fn drills_of(api: &Api<Restore>, policy: &str) -> Vec<Restore> {
    api.list(&ListParams::default().labels(&format!("{DRILL_POLICY_LABEL}={policy}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn phase(r: &Restore) -> Option<RestorePhase> {
    r.status.as_ref().map(|s| s.phase)
}

/// `kubectl zetaback drill POLICY --dataset DS`, and the drill Restore that answered it.
async fn drill_now(fleet: &Fleet, restores: &Api<Restore>, policy: &str, ds: &str) -> Restore {
    let asked = jiff::Timestamp::now().as_second();
    let (code, out) = fleet
        .zb(&["drill", policy, "--dataset", ds, "--timeout", "3m"])
        .await;
    println!("drill {policy} (exit {code}): {out}");
    // OK, or WARNING when this drill happened to take longer than the 2 s RTO.
    assert!(code == 0 || code == 1, "{out}");
    drills_of(restores, policy)
        .await
        .into_iter()
        .filter_map(|r| {
            let at = r
                .annotations()
                .get(DRILL_NOW_REQUEST_ANNOTATION)?
                .parse::<jiff::Timestamp>()
                .ok()?;
            (at.as_second() >= asked).then_some((at, r))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, r)| r)
        .expect("the drill that answered the request")
}

/// `objectives.rto`, `olderEvery`, `drill.timeout` and `drill -A`, end to end, with the
/// drills restored on their own host (`dst`) so that a drill can be held up deterministically:
/// the destination agent frozen (SIGSTOP) before it claims a drill makes that drill take
/// longer than the RTO; frozen after it claimed one, the drill outlives its timeout.
/// - a drill held 3 s against `rto: 2s` makes the dataset an `RtoMissed` violator (status,
///   `violators` WARNING, the `violators` metric);
/// - with `olderEvery: 2, keep: 1`, drills restore newest, oldest, newest: the rhythm counts
///   every drill of the dataset, not the few Restores `keep` leaves;
/// - `drill -A` is UNKNOWN (3), as the monitoring-plugin convention says of a wrong call;
/// - a drill past `drill.timeout` is ended `DrillTimedOut` by the controller and stays so
///   when its agent, thawed, finishes it late; its scratch dataset is gone and the dataset is
///   a `DrillFailed` violator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rto_missed_older_every_and_a_timed_out_drill_end_to_end() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_test_writer()
        .try_init();
    const P: &str = "drill-o";
    let env = Env::get();
    let ns = env.namespace("drills-o");
    let mut fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("src"),
            HostSpec::store("bak"),
            HostSpec::source("dst"),
        ],
    )
    .await;
    let ds = fleet.create_dataset("src", "db/o");
    fleet.write_file(&ds, "data.bin", &noise(31, 200_000));
    let root = fleet.create_dataset("dst", "drills");
    zfs(&["set", "zetaback.io:scratch=on", &root]);
    fleet.start_controller(|_| {}).await;
    let api: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let restores: Api<Restore> = Api::namespaced(fleet.client.clone(), &ns);
    let merge = |patch: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                P,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .expect("patch the policy");
        }
    };

    // Two restorable backups (a full and an incremental), before any drill.
    let spec = fleet.policy_spec("src", "bak", &ds);
    fleet.create_policy(P, "src", &[&ds], spec).await;
    fleet.wait_for_backups("bak", "src", &ds, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fleet.backup_incremental_now(P, "src", &ds).await;
    let stored = fleet.wait_for_backups("bak", "src", &ds, 2).await;
    let (full, incr) = (stored[0].manifest.id.clone(), stored[1].manifest.id.clone());
    // The controller's view of the store has the incremental (else drill 1 would start from
    // an older view).
    let newest = stored[1].manifest.created;
    eventually("the incremental in status.recovery", LIMIT, || async {
        let st = api.get(P).await.ok()?.status?;
        let r = st.recovery.iter().find(|r| r.dataset == ds)?;
        (r.newest_restorable.as_ref()?.0 == newest).then_some(())
    })
    .await;

    // Drill 1 (scheduled at once), held up: dst frozen until it has waited 3 s.
    fleet.pause("dst");
    merge(serde_json::json!({"spec": {
        "drill": {"every": "1h", "destination": {"host": fleet.name("dst"), "root": root},
            "keep": 1, "olderEvery": 2},
        "objectives": {"rto": "2s"},
    }}))
    .await;
    let first = eventually("drill 1 resolved, waiting for dst", LIMIT, || async {
        drills_of(&restores, P).await.into_iter().find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == RestorePhase::Pending && !s.chain.is_empty())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.resume("dst");
    let first = restore_finished(&restores, &first.name_any(), LIMIT).await;
    assert_eq!(phase(&first), Some(RestorePhase::Succeeded));
    assert_eq!(first.spec.source.backup.as_deref(), Some(incr.as_str()));

    // RtoMissed: in status (with the measured time), `violators` WARNING, the metric.
    let (entry, violation) = eventually("an RtoMissed violation", LIMIT, || async {
        let st = api.get(P).await.ok()?.status?;
        let entry = st.recovery.iter().find(|r| r.dataset == ds)?.clone();
        let v = st
            .violations
            .into_iter()
            .find(|v| v.dataset == ds && v.reason == ViolationReason::RtoMissed)?;
        Some((entry, v))
    })
    .await;
    println!("RtoMissed: {violation:?}");
    let rto = entry.rto_seconds.expect("a measured RTO");
    assert!(rto >= 3, "the drill was held 3 s: {entry:?}");
    assert!(
        violation
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&format!("took {rto}s, over the RTO of 2s"))),
        "{violation:?}"
    );
    let (code, out) = fleet.zb(&["violators"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("ZETABACK WARNING") && out.contains("RtoMissed"),
        "{out}"
    );
    let port = fleet.controller_port().expect("the controller runs");
    let violators = eventually("the violators metric", Duration::from_secs(60), || async {
        let m = http_get(port, "/metrics").await.ok()?;
        metric(
            &m,
            &format!("zetaback_controller_violators{{namespace=\"{ns}\",policy=\"{P}\"}}"),
        )
        .filter(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(violators, 1.0);

    // olderEvery 2: drill 2 restores the oldest backup, drill 3 the newest again, each
    // asked for once the history holds only `keep` (1) finished drill.
    let mut drilled = vec![first.spec.source.backup.clone().unwrap_or_default()];
    for _ in 2..=3 {
        eventually("the drill history pruned to keep: 1", LIMIT, || async {
            (drills_of(&restores, P).await.len() == 1).then_some(())
        })
        .await;
        let r = drill_now(&fleet, &restores, P, &ds).await;
        drilled.push(r.spec.source.backup.clone().unwrap_or_default());
    }
    assert_eq!(drilled, vec![incr.clone(), full.clone(), incr.clone()]);

    // A plugin command on one policy called for all namespaces: UNKNOWN.
    let (code, out) = fleet.zb(&["drill", "-A", P]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("DRILL UNKNOWN - "), "{out}");

    // The timeout: a drill claimed by dst, whose stream is held (bak frozen: dst's request
    // gets no answer), is ended by the controller once `drill.timeout` is shortened below its
    // age. dst, running on, must notice the ending and stop the drill while bak is still
    // frozen (before, it waited for bak however long that took): the receive stopped, its
    // scratch dataset destroyed and recorded, the ending left as it is.
    fleet.pause("dst");
    let args = ["drill", P, "--dataset", &ds, "--timeout", "3m"];
    let asking = fleet.zb(&args);
    let held_up = async {
        let held = eventually("drill 4 resolved, waiting for dst", LIMIT, || async {
            drills_of(&restores, P).await.into_iter().find(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == RestorePhase::Pending && !s.chain.is_empty())
            })
        })
        .await;
        let name = held.name_any();
        let scratch = held.spec.destination.dataset.as_str().to_owned();
        fleet.pause("bak");
        fleet.resume("dst");
        eventually("dst claims drill 4", LIMIT, || async {
            let r = restores.get(&name).await.ok()?;
            (phase(&r) == Some(RestorePhase::Running)).then_some(())
        })
        .await;
        merge(serde_json::json!({"spec": {"drill": {"timeout": "2s"}}})).await;
        let ended = eventually("the controller ends drill 4", LIMIT, || async {
            let r = restores.get(&name).await.ok()?;
            (phase(&r) == Some(RestorePhase::Failed)).then_some(r)
        })
        .await;
        assert_eq!(
            restore_reason(&ended),
            "DrillTimedOut",
            "{:?}",
            ended.status
        );
        // Stopped promptly, bak still frozen: dst polls its running drill every 2 s; the
        // bound is generous for a loaded machine (before the change nothing happened until
        // bak answered).
        eventually(
            "dst stops drill 4 while bak is frozen",
            Duration::from_secs(90),
            || async {
                let r = restores.get(&name).await.ok()?;
                (r.status.as_ref()?.scratch_destroyed == Some(true)).then_some(())
            },
        )
        .await;
        assert!(
            !zetaback_e2e::fleet::dataset_exists(&scratch),
            "{scratch} is left"
        );
        assert_eq!(receives_into(&scratch), Vec::<String>::new());
        fleet.resume("bak");
        name
    };
    // The command waits for drill 4 while it is held up and ended.
    let ((code, out), name) = tokio::join!(asking, held_up);
    println!("drill {P} (exit {code}): {out}");
    // dst answered the ended drill: its scratch dataset destroyed (recorded), nothing else.
    let after = eventually("dst records drill 4's scratch dataset", LIMIT, || async {
        let r = restores.get(&name).await.ok()?;
        (r.status.as_ref()?.scratch_destroyed == Some(true)).then_some(r)
    })
    .await;
    let st = after.status.clone().expect("status");
    println!("drill 4 after dst thawed: {st:?}");
    assert_eq!(
        st.phase,
        RestorePhase::Failed,
        "dst overwrote the ending: {st:?}"
    );
    assert_eq!(restore_reason(&after), "DrillTimedOut", "{st:?}");
    assert_eq!(st.scratch_destroyed, Some(true), "{st:?}");
    assert!(children(&root).is_empty(), "left: {:?}", children(&root));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("did not finish"), "{out}");
    let violation = eventually("DrillFailed after the timeout", LIMIT, || async {
        let st = api.get(P).await.ok()?.status?;
        st.violations
            .into_iter()
            .find(|v| v.dataset == ds && v.reason == ViolationReason::DrillFailed)
    })
    .await;
    assert!(
        violation
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&name) && m.contains("did not finish")),
        "{violation:?}"
    );

    fleet.shutdown().await;
}
