//! Benchmark (not a test): the zetaback controller at scale, against the real local
//! kube-apiserver, with N = 100 and N = 1000 ZfsHosts of 20 datasets each.
//!
//! The node agents are replaced by an in-process *agent simulator* ([`sim`]): it writes
//! realistic ZfsHost status, serves the backup host's catalogue, and completes BackupJobs at
//! once. The controller runs as its own process (`zetaback-controller`) so its peak RSS can
//! be read from `/proc/<pid>/status`.
//!
//! ```text
//! zetaback-bench-controller-scale --controller target/release/zetaback-controller \
//!     [--sizes 100,1000] [--policies 10] [--window 40]
//! ```
//! KUBECONFIG must point at the local apiserver (`e2e/scripts/env.sh up`).

mod metrics;
mod sim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use zetaback::api::{BackupJob, BackupPolicy, BackupPolicySpec, ZfsHost};

use metrics::Sample;
use sim::{DATASETS_PER_HOST, GROUP_LABEL, RUN_LABEL, Simulator};

const TOKEN: &str = "bench-admin-token";
const HIST: &str = "zetaback_controller_reconcile_duration_seconds";

struct Args {
    controller: PathBuf,
    sizes: Vec<usize>,
    policies: usize,
    window: Duration,
    workdir: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        controller: PathBuf::from("target/release/zetaback-controller"),
        sizes: vec![100, 1000],
        policies: 10,
        window: Duration::from_secs(40),
        workdir: PathBuf::from("/tmp/zetaback-bench-controller-scale"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--controller" => out.controller = PathBuf::from(val()?),
            "--sizes" => {
                out.sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?
            }
            "--policies" => out.policies = val()?.parse()?,
            "--window" => out.window = Duration::from_secs(val()?.parse()?),
            "--workdir" => out.workdir = PathBuf::from(val()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if out.policies == 0 {
        bail!("--policies must be at least 1");
    }
    Ok(out)
}

/// What one size measured.
#[derive(Debug, Default, Clone)]
struct Row {
    n: usize,
    cold_start: Option<Duration>,
    reconciles: f64,
    reconcile_errors: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    quiet_p50: Option<f64>,
    quiet_p99: Option<f64>,
    decide_p50: Option<f64>,
    decide_p99: Option<f64>,
    store_p50: Option<f64>,
    store_p99: Option<f64>,
    post_job_p50: Option<f64>,
    post_job_p99: Option<f64>,
    apply_status_p50: Option<f64>,
    apply_status_p99: Option<f64>,
    load: String,
    api_requests: f64,
    api_breakdown: BTreeMap<String, f64>,
    status_writes: f64,
    quiet_reconciles: f64,
    quiet_writes: f64,
    rss_kib: u64,
    max_host_bytes: usize,
    max_policy_bytes: usize,
    jobs_created: usize,
    jobs_left: usize,
    jobs_completed: u64,
    catalogue_requests: u64,
    catalogue_bytes: u64,
    catalogue_bytes_total: u64,
    catalogue_not_modified: u64,
    sim_errors: u64,
    violators: i64,
    violation_reasons: BTreeMap<String, usize>,
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        let (head, body) = buf.split_once("\r\n\r\n").context("an HTTP response")?;
        if !head.contains(" 200 ") {
            bail!("GET {path}: {head}");
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .context("timed out")?
}

async fn controller_metrics(port: u16) -> anyhow::Result<Vec<Sample>> {
    Ok(metrics::parse(&http_get(port, "/metrics").await?))
}

async fn apiserver_metrics(client: &Client) -> anyhow::Result<Vec<Sample>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = tokio::time::timeout(Duration::from_secs(20), client.request_text(req))
        .await
        .context("apiserver /metrics timed out")??;
    Ok(metrics::parse(&text))
}

fn reconciles(m: &[Sample], result: Option<&str>) -> f64 {
    let mut with = vec![("kind", "BackupPolicy")];
    if let Some(r) = result {
        with.push(("result", r));
    }
    metrics::sum(m, "zetaback_controller_reconciles_total", &with)
}

fn status_writes(m: &[Sample]) -> f64 {
    metrics::sum(
        m,
        "zetaback_controller_status_writes_total",
        &[("kind", "BackupPolicy")],
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` every 250 ms until it yields `Some`, or fails after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Everything one size created, for cleanup.
struct Created {
    client: Client,
    namespace: String,
    run: String,
}

impl Created {
    async fn cleanup(&self) {
        let hosts: Api<ZfsHost> = Api::all(self.client.clone());
        let sel = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run));
        if let Err(e) = hosts
            .delete_collection(&DeleteParams::default(), &sel)
            .await
        {
            log(format!("deleting the run's ZfsHosts: {e}"));
        }
        let ns: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = ns.delete(&self.namespace, &DeleteParams::default()).await {
            log(format!("deleting namespace {}: {e}", self.namespace));
        }
        let gone = wait_for(
            "the namespace and hosts to go",
            Duration::from_secs(180),
            || {
                let (ns, hosts, sel) = (ns.clone(), hosts.clone(), sel.clone());
                let name = self.namespace.clone();
                async move {
                    let ns_gone = matches!(ns.get_opt(&name).await, Ok(None));
                    let hosts_gone = hosts
                        .list_metadata(&sel.clone().limit(1))
                        .await
                        .is_ok_and(|l| l.items.is_empty());
                    (ns_gone && hosts_gone).then_some(())
                }
            },
        )
        .await;
        if let Err(e) = gone {
            log(format!("cleanup incomplete: {e}"));
        }
    }
}

async fn run_size(client: &Client, args: &Args, n: usize) -> anyhow::Result<Row> {
    let stamp = jiff::Timestamp::now().as_second() % 100_000;
    let run = format!("cs{n}-{}-{stamp}", std::process::id());
    let namespace = format!("bench-{run}");
    let ns_api: Api<Namespace> = Api::all(client.clone());
    ns_api
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .context("creating the namespace")?;
    let created = Created {
        client: client.clone(),
        namespace: namespace.clone(),
        run: run.clone(),
    };
    let result = measure(client, args, n, &run, &namespace).await;
    log(format!("N={n}: cleaning up"));
    created.cleanup().await;
    result
}

async fn measure(
    client: &Client,
    args: &Args,
    n: usize,
    run: &str,
    namespace: &str,
) -> anyhow::Result<Row> {
    let mut row = Row {
        n,
        ..Default::default()
    };
    let groups = args.policies.min(n.max(1));
    let dir = args.workdir.join(run);
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("store-token");
    std::fs::write(&token_file, TOKEN)?;

    // The agent simulator: HTTP catalogue, hosts, job completion.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = listener.local_addr()?.to_string();
    let sim = Simulator::new(TOKEN, &endpoint);
    let server = tokio::spawn(sim.clone().serve(listener));
    let t = Instant::now();
    log(format!(
        "N={n}: agent simulator creating {n} ZfsHosts (+1 backup host) with status"
    ));
    let backup_host = sim
        .create_hosts(client, run, run, n, groups)
        .await
        .context("creating ZfsHosts")?;
    log(format!(
        "N={n}: hosts created in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let refresher = tokio::spawn(
        sim.clone()
            .refresh_hosts(client.clone(), Duration::from_secs(30)),
    );
    let completer = tokio::spawn(
        sim.clone()
            .complete_jobs(client.clone(), namespace.to_owned()),
    );

    // The policies: each selects n/groups hosts by label.
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), namespace);
    let mut expected: BTreeMap<String, i32> = BTreeMap::new();
    for g in 0..groups {
        let name = format!("fleet-g{g}");
        let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "hosts": {"selector": {"matchLabels": {RUN_LABEL: run, GROUP_LABEL: format!("g{g}")}}},
            "datasets": {"include": ["tank/**"]},
            "full": {"every": "1d", "keep": "30d"},
            "incremental": {"every": "1h", "keep": "7d"},
            "target": {"host": backup_host, "path": "/var/lib/zetaback"},
        }))?;
        policies
            .create(&PostParams::default(), &BackupPolicy::new(&name, spec))
            .await
            .with_context(|| format!("creating BackupPolicy {name}"))?;
        let hosts_in_group = (0..n).filter(|i| i % groups == g).count();
        expected.insert(name, (hosts_in_group * DATASETS_PER_HOST) as i32);
    }

    // The controller, cold.
    let api_before = apiserver_metrics(client).await?;
    let metrics_port = free_port()?;
    let log_file = std::fs::File::create(dir.join("controller.log"))?;
    let t0 = Instant::now();
    let child = Command::new(&args.controller)
        .arg(format!("--watch-namespace={namespace}"))
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", format!("bench-{run}"))
        .env("ZETABACK_STORE_TOKEN_FILE", &token_file)
        .env("ZETABACK_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", args.controller.display()))?;
    let controller = Proc(child);
    let pid = controller.0.id();
    log(format!(
        "N={n}: controller started (pid {pid}); waiting for every policy's status"
    ));
    let cold = wait_for("every policy evaluated", Duration::from_secs(180), || {
        let (policies, expected) = (policies.clone(), expected.clone());
        async move {
            for (name, want) in &expected {
                let p = policies.get(name).await.ok()?;
                let st = p.status.as_ref()?;
                if st.datasets != *want || st.observed_generation != p.metadata.generation {
                    return None;
                }
            }
            Some(t0.elapsed())
        }
    })
    .await;
    match cold {
        Ok(d) => {
            row.cold_start = Some(d);
            log(format!("N={n}: cold start {:.2}s", d.as_secs_f64()));
        }
        Err(e) => log(format!("N={n}: {e}")),
    }

    // Steady state: jobs created, completed at once by the simulator, re-evaluated.
    log(format!(
        "N={n}: steady window of {}s",
        args.window.as_secs()
    ));
    tokio::time::sleep(args.window).await;

    // Quiet phase: nothing changes (no job completes), each policy asked to reconcile thrice.
    sim.completing.store(false, Ordering::Relaxed);
    // Settled: the reconcile count holds still for a second (at most 20 s).
    let settle = Instant::now();
    let mut last = -1.0;
    while settle.elapsed() < Duration::from_secs(20) {
        let r = reconciles(&controller_metrics(metrics_port).await?, None);
        if r == last {
            break;
        }
        last = r;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let q0 = controller_metrics(metrics_port).await?;
    for round in 0..3 {
        for name in expected.keys() {
            let patch = serde_json::json!({"metadata": {"annotations": {
                zetaback::api::backup_policy::RECONCILE_NOW_ANNOTATION: format!("bench-{round}")
            }}});
            policies
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let want = reconciles(&q0, None) + 3.0 * expected.len() as f64;
    let _ = wait_for(
        "the quiet reconciles",
        Duration::from_secs(30),
        || async move {
            let m = controller_metrics(metrics_port).await.ok()?;
            (reconciles(&m, None) >= want).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let q1 = controller_metrics(metrics_port).await?;
    row.quiet_reconciles = reconciles(&q1, None) - reconciles(&q0, None);
    row.quiet_writes = status_writes(&q1) - status_writes(&q0);
    let quiet = metrics::bucket_delta(
        &metrics::buckets(&q0, HIST, "BackupPolicy"),
        &metrics::buckets(&q1, HIST, "BackupPolicy"),
    );
    row.quiet_p50 = metrics::quantile(&quiet, 0.5);
    row.quiet_p99 = metrics::quantile(&quiet, 0.99);

    // Totals since the controller started.
    let api_after = apiserver_metrics(client).await?;
    row.reconciles = reconciles(&q1, None);
    row.reconcile_errors = reconciles(&q1, Some("error"));
    let b = metrics::buckets(&q1, HIST, "BackupPolicy");
    row.p50 = metrics::quantile(&b, 0.5);
    row.p99 = metrics::quantile(&b, 0.99);
    let db = metrics::buckets_with(&q1, "zetaback_controller_decide_duration_seconds", &[]);
    row.decide_p50 = metrics::quantile(&db, 0.5);
    row.decide_p99 = metrics::quantile(&db, 0.99);
    let sb = metrics::buckets_with(&q1, "zetaback_controller_store_read_duration_seconds", &[]);
    row.store_p50 = metrics::quantile(&sb, 0.5);
    row.store_p99 = metrics::quantile(&sb, 0.99);
    // The apiserver's own latency for the two writes a reconcile makes (all clients).
    let api_hist = |with: &[(&str, &str)]| {
        metrics::bucket_delta(
            &metrics::buckets_with(&api_before, "apiserver_request_duration_seconds", with),
            &metrics::buckets_with(&api_after, "apiserver_request_duration_seconds", with),
        )
    };
    let post = api_hist(&[("verb", "POST"), ("resource", "backupjobs")]);
    row.post_job_p50 = metrics::quantile(&post, 0.5);
    row.post_job_p99 = metrics::quantile(&post, 0.99);
    let apply = api_hist(&[
        ("verb", "APPLY"),
        ("resource", "backuppolicies"),
        ("subresource", "status"),
    ]);
    row.apply_status_p50 = metrics::quantile(&apply, 0.5);
    row.apply_status_p99 = metrics::quantile(&apply, 0.99);
    row.load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    row.status_writes = status_writes(&q1);
    row.api_breakdown = metrics::controller_requests(&api_before, &api_after);
    row.api_requests = row.api_breakdown.values().sum();
    row.rss_kib = vm_hwm_kib(pid)?;
    drop(controller);
    refresher.abort();
    completer.abort();

    // Object sizes, as stored (managedFields included).
    let hosts: Api<ZfsHost> = Api::all(client.clone());
    let sel = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    for h in hosts.list(&sel).await?.items {
        row.max_host_bytes = row.max_host_bytes.max(serde_json::to_vec(&h)?.len());
    }
    for p in policies.list(&ListParams::default()).await?.items {
        row.max_policy_bytes = row.max_policy_bytes.max(serde_json::to_vec(&p)?.len());
        if let Some(st) = &p.status {
            row.violators += i64::from(st.violators);
            for v in &st.violations {
                *row.violation_reasons
                    .entry(format!("{:?}", v.reason))
                    .or_default() += 1;
            }
        }
    }
    let jobs: Api<BackupJob> = Api::namespaced(client.clone(), namespace);
    row.jobs_left = jobs
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    row.jobs_created = row
        .api_breakdown
        .get("POST backupjobs")
        .copied()
        .unwrap_or(0.0) as usize;
    row.jobs_completed = sim.jobs_completed.load(Ordering::Relaxed);
    row.catalogue_requests = sim.catalogue_requests.load(Ordering::Relaxed);
    row.catalogue_bytes = sim.catalogue_bytes_last.load(Ordering::Relaxed);
    row.catalogue_bytes_total = sim.catalogue_bytes_total.load(Ordering::Relaxed);
    row.catalogue_not_modified = sim.catalogue_not_modified.load(Ordering::Relaxed);
    row.sim_errors = sim.errors.load(Ordering::Relaxed);
    server.abort();
    Ok(row)
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_infinite() => "> 16 s".into(),
        Some(x) => format!("{:.1} ms", x * 1000.0),
        None => "-".into(),
    }
}

fn growth(a: f64, b: f64) -> String {
    if a > 0.0 && b.is_finite() {
        format!("×{:.1}", b / a)
    } else {
        "-".into()
    }
}

fn yes(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

fn print_table(rows: &[Row]) {
    type Cell = (String, f64, Option<bool>);
    type Metric<'a> = (&'a str, &'a str, Box<dyn Fn(&Row) -> Cell + 'a>);
    let metrics: Vec<Metric> = vec![
        (
            "cold start (all policies evaluated)",
            "< 30 s",
            Box::new(|r: &Row| match r.cold_start {
                Some(d) => (
                    format!("{:.2} s", d.as_secs_f64()),
                    d.as_secs_f64(),
                    Some(d.as_secs_f64() < 30.0),
                ),
                None => ("timed out (180 s)".into(), f64::NAN, Some(false)),
            }),
        ),
        (
            "reconciles (BackupPolicy, errors)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{:.0} ({:.0} err)", r.reconciles, r.reconcile_errors),
                    r.reconciles,
                    None,
                )
            }),
        ),
        (
            "reconcile p50 (histogram estimate)",
            "",
            Box::new(|r: &Row| (ms(r.p50), r.p50.unwrap_or(f64::NAN), None)),
        ),
        (
            "reconcile p99 (histogram estimate)",
            "< 50 ms",
            Box::new(|r: &Row| {
                (
                    ms(r.p99),
                    r.p99.unwrap_or(f64::NAN),
                    r.p99.map(|p| p < 0.050),
                )
            }),
        ),
        (
            "reconcile p50 / p99 in the quiet phase (nothing changed)",
            "< 50 ms",
            Box::new(|r: &Row| {
                (
                    format!("{} / {}", ms(r.quiet_p50), ms(r.quiet_p99)),
                    r.quiet_p99.unwrap_or(f64::NAN),
                    r.quiet_p99.map(|p| p < 0.050),
                )
            }),
        ),
        (
            "decision p50 / p99 (reconcile before its API writes)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{} / {}", ms(r.decide_p50), ms(r.decide_p99)),
                    r.decide_p99.unwrap_or(f64::NAN),
                    None,
                )
            }),
        ),
        (
            "store view p50 / p99 (controller histogram)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{} / {}", ms(r.store_p50), ms(r.store_p99)),
                    r.store_p99.unwrap_or(f64::NAN),
                    None,
                )
            }),
        ),
        (
            "apiserver POST backupjobs p50 / p99 (its histogram)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{} / {}", ms(r.post_job_p50), ms(r.post_job_p99)),
                    r.post_job_p99.unwrap_or(f64::NAN),
                    None,
                )
            }),
        ),
        (
            "apiserver APPLY policy status p50 / p99 (its histogram)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{} / {}", ms(r.apply_status_p50), ms(r.apply_status_p99)),
                    r.apply_status_p99.unwrap_or(f64::NAN),
                    None,
                )
            }),
        ),
        (
            "load average at the end (1/5/15 min)",
            "",
            Box::new(|r: &Row| (r.load.clone(), f64::NAN, None)),
        ),
        (
            "controller API requests / reconcile",
            "",
            Box::new(|r: &Row| {
                let v = if r.reconciles > 0.0 {
                    r.api_requests / r.reconciles
                } else {
                    f64::NAN
                };
                (format!("{v:.2} ({:.0} total)", r.api_requests), v, None)
            }),
        ),
        (
            "status writes / reconciles (whole run)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{:.0} / {:.0}", r.status_writes, r.reconciles),
                    r.status_writes,
                    None,
                )
            }),
        ),
        (
            "status writes when nothing changed",
            "0",
            Box::new(|r: &Row| {
                (
                    format!(
                        "{:.0} in {:.0} reconciles",
                        r.quiet_writes, r.quiet_reconciles
                    ),
                    r.quiet_writes,
                    Some(r.quiet_writes == 0.0 && r.quiet_reconciles > 0.0),
                )
            }),
        ),
        (
            "controller peak RSS (VmHWM)",
            "< 200 MiB",
            Box::new(|r: &Row| {
                let mib = r.rss_kib as f64 / 1024.0;
                (format!("{mib:.1} MiB"), mib, Some(mib < 200.0))
            }),
        ),
        (
            "largest ZfsHost (JSON)",
            "< 256 KiB",
            Box::new(|r: &Row| {
                let k = r.max_host_bytes as f64 / 1024.0;
                (format!("{k:.1} KiB"), k, Some(k < 256.0))
            }),
        ),
        (
            "largest BackupPolicy (JSON)",
            "< 256 KiB",
            Box::new(|r: &Row| {
                let k = r.max_policy_bytes as f64 / 1024.0;
                (format!("{k:.1} KiB"), k, Some(k < 256.0))
            }),
        ),
        (
            "BackupJobs created (completed by simulator)",
            "",
            Box::new(|r: &Row| {
                (
                    format!("{} ({})", r.jobs_created, r.jobs_completed),
                    r.jobs_created as f64,
                    None,
                )
            }),
        ),
        (
            "catalogue GETs (304 not modified; bytes sent)",
            "",
            Box::new(|r: &Row| {
                (
                    format!(
                        "{} ({}; {:.0} KiB)",
                        r.catalogue_requests,
                        r.catalogue_not_modified,
                        r.catalogue_bytes_total as f64 / 1024.0
                    ),
                    r.catalogue_requests as f64,
                    None,
                )
            }),
        ),
        (
            "catalogue GETs per reconcile",
            "",
            Box::new(|r: &Row| {
                let v = if r.reconciles > 0.0 {
                    r.catalogue_requests as f64 / r.reconciles
                } else {
                    f64::NAN
                };
                (format!("{v:.2}"), v, None)
            }),
        ),
        (
            "BackupJobs left (history kept)",
            "",
            Box::new(|r: &Row| (format!("{}", r.jobs_left), r.jobs_left as f64, None)),
        ),
    ];
    let sizes: Vec<String> = rows.iter().map(|r| format!("N={}", r.n)).collect();
    println!(
        "| metric | {} | growth | target | target met ({}) |",
        sizes.join(" | "),
        sizes.join(" / ")
    );
    println!("|---|{}---|---|---|", "---|".repeat(rows.len()));
    for (name, target, f) in &metrics {
        let cells: Vec<Cell> = rows.iter().map(f).collect();
        let g = match (cells.first(), cells.last()) {
            (Some(a), Some(b)) if cells.len() > 1 => growth(a.1, b.1),
            _ => "-".into(),
        };
        let met: Vec<&str> = cells.iter().map(|c| yes(c.2)).collect();
        println!(
            "| {name} | {} | {g} | {} | {} |",
            cells
                .iter()
                .map(|c| c.0.clone())
                .collect::<Vec<_>>()
                .join(" | "),
            if target.is_empty() { "-" } else { target },
            if target.is_empty() {
                "-".to_string()
            } else {
                met.join(" / ")
            },
        );
    }
    println!();
    for r in rows {
        let parts: Vec<String> = r
            .api_breakdown
            .iter()
            .map(|(k, v)| format!("{k}: {v:.0}"))
            .collect();
        println!(
            "N={} controller API requests by kind: {}",
            r.n,
            parts.join(", ")
        );
        println!(
            "N={} violators at the end: {} (listed reasons: {:?})",
            r.n, r.violators, r.violation_reasons
        );
        if r.sim_errors > 0 {
            println!("N={} simulator errors: {}", r.n, r.sim_errors);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    if !args.controller.exists() {
        bail!(
            "{} is missing (cargo build --release --bin zetaback-controller)",
            args.controller.display()
        );
    }
    let client = Client::try_default()
        .await
        .context("a client from KUBECONFIG (e2e/scripts/env.sh up)")?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let row = tokio::time::timeout(Duration::from_secs(600), run_size(&client, &args, n))
            .await
            .with_context(|| format!("N={n} took over 10 minutes"))??;
        rows.push(row);
    }
    println!();
    println!(
        "controller-scale: {} policies, {} datasets per host, agents = in-process agent simulator (completes jobs at once), steady window {} s, {} cores, {}",
        args.policies,
        DATASETS_PER_HOST,
        args.window.as_secs(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        jiff::Timestamp::now().strftime("%Y-%m-%d")
    );
    println!();
    print_table(&rows);
    println!();
    println!(
        "p50/p99: estimated from the controller's histogram buckets (0.5 ms × 2^k), linear inside a bucket. API requests: apiserver_request_total deltas for what the controller sends (zetaback.io lists/creates/status applies, events; not watches, not leases), ÷ reconciles. Total run {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
