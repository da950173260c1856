//! `kubectl zetaback` against the real apiserver, run in-process through
//! `zetaback::cli::run` (the binary's whole program) with its output and exit code captured.
//!
//! There is no controller here: the tests write BackupPolicy and BackupJob status themselves
//! with server-side apply (field manager "test"), and a small HTTP server in the test plays the
//! backup host's agent (`GET /v1/catalogue?host=H` with a bearer token), so every answer the
//! CLI gives is checked against what was put in.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use zetaback::api::backup_policy::Compression;
use zetaback::api::zfs_host::ZfsHostSpec;
use zetaback::api::{BackupJob, BackupJobSpec, BackupPolicy, BackupPolicySpec, ZfsHost};
use zetaback::cli::{Connect, Io, run};
use zetaback::store::{Catalogue, Manifest, StoredBackup};
use zetaback_e2e::Env;

/// What one run of the CLI did.
#[derive(Debug)]
struct Ran {
    code: u8,
    out: String,
    err: String,
}

async fn zb_with(
    client: &kube::Client,
    ns: &str,
    args: &[&str],
    input: &str,
    interactive: bool,
) -> Ran {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input = input.as_bytes();
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive,
    };
    let argv: Vec<String> = std::iter::once("kubectl-zetaback")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let code = run(
        argv,
        Connect::Client {
            client: client.clone(),
            namespace: ns.to_owned(),
        },
        &mut io,
    )
    .await;
    let ran = Ran {
        code,
        out: String::from_utf8(out).expect("stdout is UTF-8"),
        err: String::from_utf8(err).expect("stderr is UTF-8"),
    };
    println!("$ kubectl zetaback -n {ns} {}\n{ran:#?}", args.join(" "));
    ran
}

async fn zb(client: &kube::Client, ns: &str, args: &[&str]) -> Ran {
    zb_with(client, ns, args, "", false).await
}

fn policy(name: &str, hosts: &[&str], target: &str) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(json!({
        "hosts": {"names": hosts},
        "datasets": {"include": ["tank/**"]},
        "full": {"every": "7d", "keep": "14d"},
        "incremental": {"every": "1d", "keep": "3d"},
        "archive": {"after": "10d", "keep": "365d"},
        "target": {"host": target, "path": "/srv/zetaback"}
    }))
    .expect("spec");
    BackupPolicy::new(name, spec)
}

/// The status line of `violators` without its performance data.
fn summary(out: &str) -> &str {
    let line = out.lines().next().unwrap_or_default();
    line.split_once(" | ").map_or(line, |(s, _)| s)
}

fn now_text() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .expect("now")
        .to_string()
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}"),
           "lastTransitionTime": now_text()})
}

/// Writes a policy's status as the controller would, with server-side apply.
async fn set_status(
    api: &Api<BackupPolicy>,
    name: &str,
    ready: bool,
    violations: &[(&str, &str, &str)],
) {
    let mut keys: Vec<(&str, &str)> = violations.iter().map(|(h, d, _)| (*h, *d)).collect();
    keys.dedup();
    let status = json!({
        "hosts": 2,
        "datasets": 3,
        "violators": keys.len(),
        "lastEvaluated": now_text(),
        "violations": violations.iter().map(|(h, d, r)| json!({
            "host": h, "dataset": d, "reason": r, "since": now_text(), "message": format!("{r} on {h}:{d}")
        })).collect::<Vec<_>>(),
        "conditions": [
            if ready { condition("Ready", "True", "Reconciled") } else { condition("Ready", "False", "StoreUnreachable") },
            if violations.is_empty() { condition("Compliant", "True", "AllBackedUp") } else { condition("Compliant", "False", "Violators") },
        ]
    });
    api.patch_status(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(
            json!({"apiVersion": "zetaback.io/v1alpha1", "kind": "BackupPolicy", "status": status}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violators_follow_the_monitoring_plugin_convention() {
    let env = Env::get();
    let ns = env.namespace("cli-violators");
    let client = env.client().await;
    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    for name in ["db", "web", "files"] {
        api.create(
            &PostParams::default(),
            &policy(name, &["db-1", "db-2"], "backup-1"),
        )
        .await
        .expect("create policy");
    }

    // Just created, the controller has not reported: not Ready is CRITICAL.
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.out.starts_with(
            "ZETABACK CRITICAL - 0 violators in 3 policies; not Ready: db (no status yet)"
        ),
        "{r:?}"
    );

    for name in ["db", "web", "files"] {
        set_status(&api, name, true, &[]).await;
    }
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    // One status line; performance data after '|' (the statuses were written just now).
    let line = r.out.strip_suffix('\n').unwrap_or(&r.out);
    assert!(!line.contains('\n'), "{r:?}");
    let (status, perfdata) = line.split_once(" | ").expect("perfdata after ' | '");
    assert_eq!(status, "ZETABACK OK - 0 violators in 3 policies");
    assert!(
        perfdata.starts_with("violators=0;;;0 policies=3;;;0 stale=0;;;0 status_age="),
        "{perfdata}"
    );

    // A late incremental and a failed job: WARNING, one line naming each dataset once.
    set_status(
        &api,
        "db",
        true,
        &[
            ("db-1", "tank/pg", "NoBackupWithin"),
            ("db-1", "tank/pg", "LastJobFailed"),
            ("db-2", "tank/my", "NoBackupWithin"),
        ],
    )
    .await;
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        summary(&r.out),
        "ZETABACK WARNING - 2 violators: db-1:tank/pg (NoBackupWithin,LastJobFailed), db-2:tank/my (NoBackupWithin)"
    );
    assert!(
        r.out.contains("LastJobFailed on db-1:tank/pg"),
        "the table follows: {r:?}"
    );

    // Filters narrow the check to some hosts or datasets.
    let r = zb(&client, &ns, &["violators", "-H", "^db-2$"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        summary(&r.out),
        "ZETABACK WARNING - 1 violator: db-2:tank/my (NoBackupWithin)",
        "{r:?}"
    );
    let r = zb(&client, &ns, &["violators", "-d", "^tank/none$"]).await;
    assert_eq!(
        (r.code, summary(&r.out)),
        (0, "ZETABACK OK - 0 violators in 3 policies")
    );

    // -o json: the same verdict, for scripts.
    let r = zb(&client, &ns, &["violators", "-o", "json"]).await;
    assert_eq!(r.code, 1);
    let v: Value = serde_json::from_str(&r.out).expect("violators -o json parses");
    assert_eq!(v["state"], "WARNING");
    assert_eq!(v["exitCode"], 1);
    assert_eq!(v["policies"].as_array().map(Vec::len), Some(3));
    let r = zb(&client, &ns, &["violators", "-o", "yaml"]).await;
    let y: Value = serde_yaml::from_str(&r.out).expect("violators -o yaml parses");
    assert_eq!(y["summary"], v["summary"]);

    // No full within the policy: CRITICAL.
    set_status(&api, "web", true, &[("web-1", "tank/www", "NoFullWithin")]).await;
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.out.starts_with("ZETABACK CRITICAL - 3 violators: "),
        "{r:?}"
    );
    assert!(
        r.out
            .lines()
            .next()
            .is_some_and(|l| l.contains("web-1:tank/www (NoFullWithin)"))
    );

    // An unreachable host is a WARNING (its backups so far are intact)...
    set_status(&api, "web", true, &[]).await;
    set_status(&api, "db", true, &[("db-1", "tank/pg", "HostUnreachable")]).await;
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    // ...a policy the controller cannot evaluate is CRITICAL.
    set_status(&api, "db", true, &[]).await;
    set_status(&api, "files", false, &[]).await;
    let r = zb(&client, &ns, &["violators"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        summary(&r.out),
        "ZETABACK CRITICAL - 0 violators in 3 policies; not Ready: files (StoreUnreachable)",
        "{r:?}"
    );

    // -A qualifies policy names with their namespace.
    let r = zb(&client, &ns, &["violators", "-A"]).await;
    assert!(
        r.out.contains(&format!("{ns}/files (StoreUnreachable)")),
        "{r:?}"
    );

    // The API cannot be read (a token the apiserver rejects): UNKNOWN, exit 3.
    let stranger = env.client_with_token("not-a-valid-token").await;
    let r = zb(&stranger, &ns, &["violators"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.out
            .starts_with("ZETABACK UNKNOWN - cannot list BackupPolicies"),
        "{r:?}"
    );
    assert!(r.err.contains("error:"), "{r:?}");

    // A namespace without policies (a mistyped -n) is UNKNOWN, not OK.
    let empty = env.namespace("cli-empty");
    let r = zb(&client, &empty, &["violators"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.out.starts_with(&format!(
            "ZETABACK UNKNOWN - no BackupPolicy found in namespace {empty}"
        )),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_sets_the_backup_now_annotation() {
    let env = Env::get();
    let ns = env.namespace("cli-backup");
    let client = env.client().await;
    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &policy("p1", &["db-1", "db-2"], "backup-1"),
    )
    .await
    .expect("create policy");
    let annotation = |p: &BackupPolicy| -> Option<Value> {
        p.metadata
            .annotations
            .as_ref()?
            .get("zetaback.io/backup-now")
            .map(|t| serde_json::from_str(t).expect("the annotation is JSON"))
    };

    // --dry-run prints the request and changes nothing.
    let r = zb(
        &client,
        &ns,
        &["backup", "p1", "--host", "db-1", "--full", "--dry-run"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.out
            .contains("dry run: would request a full backup of every dataset of db-1"),
        "{r:?}"
    );
    assert!(
        r.out.contains(
            r#"zetaback.io/backup-now=[{"host":"db-1","dataset":null,"type":"full","requestedAt":""#
        ),
        "{r:?}"
    );
    assert_eq!(annotation(&api.get("p1").await.expect("get")), None);

    let before = Timestamp::now().as_second();
    let r = zb(
        &client,
        &ns,
        &[
            "backup",
            "p1",
            "--host",
            "db-1",
            "--dataset",
            "tank/pg",
            "--full",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.out
            .contains("requested a full backup of db-1:tank/pg under policy"),
        "{r:?}"
    );
    // The annotation is a queue of requests: this one is its only entry.
    let queue = annotation(&api.get("p1").await.expect("get")).expect("the request annotation");
    assert_eq!(queue.as_array().map(Vec::len), Some(1), "{queue}");
    let a = queue[0].clone();
    assert_eq!(a["host"], "db-1");
    assert_eq!(a["dataset"], "tank/pg");
    assert_eq!(a["type"], "full");
    let at: Timestamp = a["requestedAt"]
        .as_str()
        .expect("requestedAt")
        .parse()
        .expect("RFC 3339");
    assert_eq!(
        at.subsec_nanosecond(),
        0,
        "whole seconds, as status keeps them"
    );
    assert!(
        (before..=Timestamp::now().as_second()).contains(&at.as_second()),
        "{at}"
    );
    let keys: Vec<&String> = a.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 4, "host, dataset, type, requestedAt: {a}");
    // The controller's own type reads it.
    let parsed: zetaback::api::backup_policy::BackupNowRequest =
        serde_json::from_value(a.clone()).expect("the controller's type parses it");
    assert_eq!(parsed.requested_at, at);

    // Unset choices are null; -o json gives the same request.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = zb(
        &client,
        &ns,
        &["backup", "p1", "--incremental", "-o", "json"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let out: Value = serde_json::from_str(&r.out).expect("backup -o json parses");
    // No controller acted on the first request: it still waits, and the new one queues
    // behind it instead of replacing it.
    let queue = annotation(&api.get("p1").await.expect("get")).expect("annotation");
    assert_eq!(queue.as_array().map(Vec::len), Some(2), "{queue}");
    assert_eq!(queue[0]["dataset"], "tank/pg", "{queue}");
    let a = queue[1].clone();
    assert_eq!(
        a,
        json!({"host": null, "dataset": null, "type": "incremental", "requestedAt": a["requestedAt"]})
    );
    assert_eq!(out["request"], a);
    assert_eq!(out["annotation"], "zetaback.io/backup-now");
    assert_eq!(out["dryRun"], false);
    assert!(
        a["requestedAt"].as_str() > Some(at.to_string().as_str()),
        "a new request is newer"
    );

    // Refusals: unknown policy, a host or dataset the policy does not cover, -A.
    let r = zb(&client, &ns, &["backup", "nope"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains(&format!(
            "BackupPolicy \"nope\" not found in namespace \"{ns}\""
        )),
        "{r:?}"
    );
    let r = zb(&client, &ns, &["backup", "p1", "--host", "web-9"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.err
            .contains("does not cover host web-9 (its hosts: db-1, db-2)"),
        "{r:?}"
    );
    let r = zb(&client, &ns, &["backup", "p1", "--dataset", "rpool/root"]).await;
    assert_eq!(r.code, 1);
    assert!(r.err.contains("does not cover dataset rpool/root"), "{r:?}");
    let r = zb(&client, &ns, &["backup", "p1", "-A"]).await;
    assert_eq!(r.code, 1);
    assert!(r.err.contains("--all-namespaces does not apply"), "{r:?}");
    let r = zb(&client, &ns, &["backup", "p1", "--full", "--incremental"]).await;
    assert_eq!(r.code, 2, "a usage error: {r:?}");
    // Refused commands queue nothing: the two good requests are still there.
    let queue = annotation(&api.get("p1").await.expect("get")).expect("annotation");
    assert_eq!(queue.as_array().map(Vec::len), Some(2), "{queue}");
    assert_eq!(queue[1]["type"], "incremental");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_falls_back_to_job_history_when_the_catalogue_is_unreachable() {
    let env = Env::get();
    let ns = env.namespace("cli-fallback");
    let client = env.client().await;
    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    // No ZfsHost of this name exists: its catalogue cannot be read.
    let missing = format!("{ns}-nohost");
    api.create(&PostParams::default(), &policy("p1", &["db-1"], &missing))
        .await
        .expect("create policy");
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), &ns);
    let spec: BackupJobSpec = serde_json::from_value(json!({
        "policy": "p1", "host": "db-1", "dataset": "tank/pg", "type": "full",
        "snapshot": "zb-1700000000", "target": {"host": missing, "path": "/srv/zetaback"}
    }))
    .expect("job spec");
    for (name, phase) in [("p1-full-1", "Succeeded"), ("p1-full-2", "Failed")] {
        let mut job = BackupJob::new(name, spec.clone());
        job.metadata.labels = Some([("zetaback.io/policy".to_owned(), "p1".to_owned())].into());
        jobs.create(&PostParams::default(), &job)
            .await
            .expect("create job");
        jobs.patch_status(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(
                json!({"apiVersion": "zetaback.io/v1alpha1", "kind": "BackupJob",
                "status": {"phase": phase, "bytes": 4096, "backupId": "1700000000.full",
                           "finishedAt": "2023-11-14T22:13:20Z"}}),
            ),
        )
        .await
        .expect("job status");
    }

    let r = zb(&client, &ns, &["list"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.err.contains(&format!("warning: the backup catalogue of policy {ns}/p1 is unreachable: backup host {missing} does not exist")),
        "{r:?}"
    );
    assert!(
        r.err.contains("showing its BackupJob history instead"),
        "{r:?}"
    );
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the succeeded job only: {r:?}");
    assert!(
        lines[1].contains("db-1") && lines[1].contains("1700000000.full"),
        "{r:?}"
    );
    assert!(
        lines[1].contains("4.0 KiB") && lines[1].ends_with("job history"),
        "{r:?}"
    );

    let r = zb(&client, &ns, &["list", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&r.out).expect("list -o json parses");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["source"], "jobs");
    assert_eq!(v[0]["created"], "2023-11-14T22:13:20Z");

    let r = zb(&client, &ns, &["summary"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.out.contains("tank/pg") && r.out.contains("1 (jobs)"),
        "{r:?}"
    );

    // expunge and archive need the store's view: they refuse rather than guess.
    let r = zb(&client, &ns, &["expunge", "p1"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.err.contains("cannot read the backup catalogue of policy"),
        "{r:?}"
    );
    assert!(r.err.contains("nothing was requested"), "{r:?}");
}

/// The real `zetaback-agent` (stream API only, `--no-kube`) serving a store directory that
/// holds `catalogue`'s manifests and streams, with `token` as its bearer token. Killed on drop.
struct RealAgent {
    port: u16,
    child: std::process::Child,
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn real_agent(catalogue: &Catalogue, token: &str, dir: &std::path::Path) -> RealAgent {
    use zetaback::store::layout::Layout;
    let layout = Layout::new(dir.join("store"));
    for b in &catalogue.backups {
        let m = &b.manifest;
        let id: zetaback::store::StreamId = m.id.parse().expect("id");
        let stream = layout
            .stream_path(&m.host, &m.dataset, &id, b.archived)
            .expect("stream path");
        std::fs::create_dir_all(stream.parent().expect("dir")).expect("mkdir");
        std::fs::write(&stream, vec![0u8; usize::try_from(m.bytes).expect("size")])
            .expect("stream");
        std::fs::write(
            layout
                .manifest_path(&m.host, &m.dataset, &id, b.archived)
                .expect("manifest path"),
            m.to_json().expect("json"),
        )
        .expect("manifest");
    }
    // Without Kubernetes the agent knows its callers from a table: the CLI reads catalogues.
    let identities = dir.join("identities.json");
    std::fs::write(
        &identities,
        serde_json::json!([{"token": token, "role": "reader"}]).to_string(),
    )
    .expect("identities");
    let port = zetaback_e2e::free_port();
    let exe = std::env::current_exe().expect("test path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("zetaback-agent"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as e2e/test.sh does)",
        bin.display()
    );
    let child = std::process::Command::new(bin)
        .env("ZETABACK_INSECURE_PLAINTEXT", "true")
        .args([
            "--no-kube",
            "--host-name=cli-backup-host",
            &format!("--listen=127.0.0.1:{port}"),
            &format!("--store-root={}", layout.root().display()),
            &format!("--identities-file={}", identities.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent starts");
    RealAgent { port, child }
}

fn stored(host: &str, dataset: &str, id: &str, archived: bool) -> StoredBackup {
    let sid: zetaback::store::StreamId = id.parse().expect("id");
    StoredBackup {
        manifest: Manifest {
            version: 1,
            id: id.to_owned(),
            host: host.to_owned(),
            dataset: dataset.to_owned(),
            snapshot: format!("zb-{}", sid.ts()),
            base_snapshot: sid.base_ts().map(|b| format!("zb-{b}")),
            backup_type: sid.backup_type(),
            bytes: 1 << 20,
            sha256: Some("ab".repeat(32)),
            compression: Compression::Zstd,
            created: Timestamp::from_second(sid.ts()).expect("ts"),
            policy: None,
            xxh3: None,
            raw: false,
        },
        archived,
        verification: None,
    }
}

async fn make_host(client: &kube::Client, name: &str, status: Value) {
    let api: Api<ZfsHost> = Api::all(client.clone());
    let host = ZfsHost::new(
        name,
        ZfsHostSpec {
            node_name: name.to_owned(),
            datasets: Default::default(),
            paused: false,
            allowed_namespaces: Vec::new(),
            restore_roots: Vec::new(),
        },
    );
    api.create(&PostParams::default(), &host)
        .await
        .expect("create ZfsHost");
    api.patch_status(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(
            json!({"apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost", "status": status}),
        ),
    )
    .await
    .expect("ZfsHost status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_commands_read_the_backup_hosts_agent() {
    let env = Env::get();
    let ns = env.namespace("cli-store");
    let client = env.client().await;
    let (src, backup_host) = (format!("{ns}-db"), format!("{ns}-backup"));

    // Five weeks of history for tank/pg (a full a week, two incrementals after each), and a
    // dataset tank/old the host no longer has.
    const DAY: i64 = 86_400;
    let now = Timestamp::now().as_second();
    let start = now - 35 * DAY - 3600;
    let mut backups = Vec::new();
    for w in 0..5 {
        let f = start + w * 7 * DAY;
        backups.push(stored(&src, "tank/pg", &format!("{f}.full"), false));
        for d in 1..3 {
            backups.push(stored(
                &src,
                "tank/pg",
                &format!("{}.incremental.{f}", f + d * DAY),
                false,
            ));
        }
    }
    backups.push(stored(
        &src,
        "tank/old",
        &format!("{}.full", now - 2 * DAY),
        false,
    ));
    backups.push(stored(
        "someone-else",
        "tank/pg",
        &format!("{}.full", now - DAY),
        false,
    ));
    let catalogue = Catalogue {
        backups,
        problems: Vec::new(),
    };
    let agent_dir = std::env::temp_dir().join(format!("{ns}-agent"));
    let agent = real_agent(&catalogue, "s3cret", &agent_dir);
    let port = agent.port;
    zetaback_e2e::eventually(
        "the agent listens",
        std::time::Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;

    make_host(
        &client,
        &backup_host,
        json!({"agentEndpoint": format!("127.0.0.1:{port}"), "lastSeen": now_text()}),
    )
    .await;
    make_host(
        &client,
        &src,
        json!({"lastSeen": now_text(), "datasets": [{"name": "tank/pg"}, {"name": "tank/new"}]}),
    )
    .await;
    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("p1", &[&src], &backup_host))
        .await
        .expect("create policy");
    set_status(&api, "p1", true, &[]).await;
    let token_file = std::env::temp_dir().join(format!("{ns}-token"));
    std::fs::write(&token_file, "s3cret\n").expect("token file");
    let tf = token_file.to_str().expect("utf-8 path");

    // Without the token the agent refuses: the CLI says so and falls back to job history.
    let r = zb(&client, &ns, &["list"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.err.contains("unreachable") && r.err.contains("401"),
        "{r:?}"
    );

    // list: every backup of the policy's host, from the store.
    let r = zb(&client, &ns, &["list", "--token-file", tf]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.err.is_empty(), "{r:?}");
    assert_eq!(r.out.lines().count(), 1 + 16, "{r:?}");
    assert!(!r.out.contains("someone-else"), "{r:?}");
    let r = zb(
        &client,
        &ns,
        &["list", "--token-file", tf, "-d", "old$", "-o", "json"],
    )
    .await;
    let v: Value = serde_json::from_str(&r.out).expect("list -o json parses");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (v[0]["dataset"].as_str(), v[0]["source"].as_str()),
        (Some("tank/old"), Some("catalogue"))
    );

    // summary: per dataset; tank/new has never been backed up.
    let r = zb(&client, &ns, &["summary", "--token-file", tf]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let row = |name: &str| r.out.lines().find(|l| l.contains(name)).map(str::to_owned);
    assert!(
        row("tank/new").is_some_and(|l| l.contains("never")),
        "{r:?}"
    );
    assert!(
        row("tank/pg").is_some_and(|l| l.contains(" 15 ") && l.contains("15.0 MiB")),
        "{r:?}"
    );
    let r = zb(
        &client,
        &ns,
        &[
            "summary",
            "--token-file",
            tf,
            "--files",
            "-d",
            "pg",
            "-o",
            "json",
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&r.out).expect("summary -o json parses");
    assert_eq!(v[0]["backupCount"], 15);
    let first = format!("{start}.full");
    assert_eq!(
        v[0]["backups"][0]["files"],
        json!([
            format!("/srv/zetaback/{src}/tank+pg/{first}"),
            format!("/srv/zetaback/{src}/tank+pg/{first}.json")
        ])
    );

    // violators --all: tank/old has backups but the host no longer has it.
    let r = zb(&client, &ns, &["violators", "--all", "--token-file", tf]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        summary(&r.out),
        "ZETABACK OK - 0 violators in 1 policy",
        "{r:?}"
    );
    assert!(
        r.out.contains("no longer has") && r.out.contains("tank/old"),
        "{r:?}"
    );
    assert!(r.out.contains("not reported by the host"), "{r:?}");

    // expunge: what plan_retention deletes now; --dry-run requests nothing.
    let rules = zetaback::policy::PolicyRules::from_spec(&api.get("p1").await.expect("get").spec)
        .expect("rules");
    let pc = zetaback::policy::DatasetBackups::from_store(catalogue.of(&src, "tank/pg"))
        .expect("catalogue");
    let plan = zetaback::policy::plan_retention(&rules, &pc, Timestamp::now());
    assert!(
        !plan.delete.is_empty() && !plan.archive.is_empty(),
        "the history is long enough: {plan:?}"
    );
    let reconcile = |p: &BackupPolicy| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("zetaback.io/reconcile-now").cloned())
    };
    let r = zb(
        &client,
        &ns,
        &[
            "expunge",
            "p1",
            "--dry-run",
            "--token-file",
            tf,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.out).expect("expunge -o json parses");
    let ids = |key: &str| {
        let mut ids: Vec<String> = v[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut x: Vec<String>| {
        x.sort();
        x
    };
    assert_eq!(ids("delete"), sorted(plan.delete.clone()));
    assert_eq!(ids("archive"), sorted(plan.archive.clone()));
    assert_eq!(
        (v["dryRun"].as_bool(), v["requested"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(reconcile(&api.get("p1").await.expect("get")), None);
    let r = zb(
        &client,
        &ns,
        &["expunge", "p1", "--dry-run", "--token-file", tf],
    )
    .await;
    let n = |k: usize| format!("{k} backup{}", if k == 1 { "" } else { "s" });
    assert!(
        r.out
            .contains(&format!("would delete {}", n(plan.delete.len()))),
        "{r:?}"
    );
    assert!(r.out.contains("dry run: nothing requested"), "{r:?}");

    let r = zb(&client, &ns, &["expunge", "p1", "--token-file", tf]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let stamp = reconcile(&api.get("p1").await.expect("get")).expect("reconcile-now is set");
    let at: Timestamp = stamp.parse().expect("RFC 3339");
    assert!(
        (Timestamp::now().as_second() - at.as_second()).abs() < 60,
        "{stamp}"
    );
    assert!(
        r.out
            .contains(&format!("zetaback.io/reconcile-now={stamp}")),
        "{r:?}"
    );

    // archive: asks first; refuses without a terminal unless --yes.
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"zetaback.io/reconcile-now": null}}})),
    )
    .await
    .expect("clear");
    let r = zb(&client, &ns, &["archive", "p1", "--token-file", tf]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.out
            .contains(&format!("would move {} ", n(plan.archive.len()))),
        "{r:?}"
    );
    assert!(
        r.err
            .contains("standard input is not a terminal (pass --yes to confirm)"),
        "{r:?}"
    );
    let r = zb_with(
        &client,
        &ns,
        &["archive", "p1", "--token-file", tf],
        "n\n",
        true,
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.err.contains("to the archive? [y/N]") && r.err.contains("aborted"),
        "{r:?}"
    );
    assert_eq!(reconcile(&api.get("p1").await.expect("get")), None);
    let r = zb_with(
        &client,
        &ns,
        &["archive", "p1", "--token-file", tf],
        "yes\n",
        true,
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        reconcile(&api.get("p1").await.expect("get")).is_some(),
        "{r:?}"
    );
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"zetaback.io/reconcile-now": null}}})),
    )
    .await
    .expect("clear");
    let r = zb(
        &client,
        &ns,
        &["archive", "p1", "--yes", "--token-file", tf],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        reconcile(&api.get("p1").await.expect("get")).is_some(),
        "{r:?}"
    );

    let _ = std::fs::remove_file(&token_file);
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    for h in [&src, &backup_host] {
        let _ = hosts.delete(h, &Default::default()).await;
    }
}
