//! The agent simulator: the benchmark's stand-in for the node agents (it is NOT an agent).
//!
//! It creates N ZfsHosts with a realistic status (one pool, 20 datasets with snapshots,
//! `lastSeen`, conditions) and refreshes that status periodically as an agent would; it serves
//! `GET /v1/catalogue[?host=H]` from an in-memory store (bearer token, `ETag` and 304 on
//! `If-None-Match`), as the backup host's agent does;
//! and it watches BackupJobs, completing each at once (the manifest goes into its catalogue
//! first, then the job is marked Succeeded through the status subresource).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use zetaback::api::zfs_host::{DatasetStatus, PoolStatus};
use zetaback::api::{BackupJob, BackupType, JobPhase, ZfsHost, ZfsHostSpec, ZfsHostStatus};
use zetaback::store::{Catalogue, MANIFEST_VERSION, Manifest, StoredBackup};

/// Datasets per simulated host.
pub const DATASETS_PER_HOST: usize = 20;
/// The label every object of one run carries.
pub const RUN_LABEL: &str = "bench.zetaback.io/run";
/// The label a policy selects its hosts by.
pub const GROUP_LABEL: &str = "bench.zetaback.io/group";

/// The simulator's shared state.
pub struct Simulator {
    pub token: String,
    pub endpoint: String,
    backups: Mutex<Vec<StoredBackup>>,
    served: Mutex<Option<Arc<Vec<u8>>>>,
    hosts: Mutex<HashMap<String, ZfsHostStatus>>,
    /// Jobs are completed only while this is set.
    pub completing: AtomicBool,
    pub jobs_completed: AtomicU64,
    pub catalogue_requests: AtomicU64,
    pub catalogue_bytes_last: AtomicU64,
    pub catalogue_bytes_total: AtomicU64,
    pub catalogue_not_modified: AtomicU64,
    pub errors: AtomicU64,
}

fn fake_hex(seed: &str) -> String {
    (0..4u8)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, i).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn condition(type_: &str, reason: &str, message: &str, at: Timestamp) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(at),
        observed_generation: Some(1),
    }
}

/// The status an agent would report for a host with 20 datasets, three snapshots each.
fn host_status(host_index: usize, endpoint: &str, now: Timestamp) -> ZfsHostStatus {
    let base = now.as_second() - 3 * 86_400;
    let datasets = (0..DATASETS_PER_HOST)
        .map(|d| {
            let snaps: Vec<String> = (0..3)
                .map(|k| format!("zetaback-{}", base + k * 86_400))
                .collect();
            DatasetStatus {
                name: format!("tank/data/app{d:02}"),
                used_bytes: Some(((host_index * 31 + d * 7919) % 5000 + 1) as u64 * 1_048_576),
                latest_snapshot: snaps.last().cloned(),
                snapshots: snaps,
                class: (d % 4 == 0).then(|| "gold".to_string()),
                excluded: false,
            }
        })
        .collect();
    ZfsHostStatus {
        observed_generation: Some(1),
        agent_version: Some("0.1.0-sim".into()),
        agent_endpoint: Some(endpoint.to_owned()),
        zfs_capabilities: vec!["parsableList".into(), "compressedSend".into()],
        pools: vec![PoolStatus {
            name: "tank".into(),
            health: "ONLINE".into(),
            size_bytes: Some(4_000_000_000_000),
            free_bytes: Some(1_500_000_000_000),
        }],
        pool_count: Some(1),
        datasets,
        dataset_count: Some(DATASETS_PER_HOST as i32),
        last_seen: Some(Time(now)),
        conditions: vec![condition(
            "Ready",
            "AgentReporting",
            "the agent reports (simulated)",
            now,
        )],
    }
}

impl Simulator {
    pub fn new(token: &str, endpoint: &str) -> Arc<Self> {
        Arc::new(Self {
            token: token.to_owned(),
            endpoint: endpoint.to_owned(),
            backups: Mutex::new(Vec::new()),
            served: Mutex::new(None),
            hosts: Mutex::new(HashMap::new()),
            completing: AtomicBool::new(true),
            jobs_completed: AtomicU64::new(0),
            catalogue_requests: AtomicU64::new(0),
            catalogue_bytes_last: AtomicU64::new(0),
            catalogue_bytes_total: AtomicU64::new(0),
            catalogue_not_modified: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// The catalogue JSON, re-serialised only after a change.
    fn catalogue_json(&self, host: Option<&str>) -> anyhow::Result<Arc<Vec<u8>>> {
        let backups = self
            .backups
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(h) = host {
            let c = Catalogue {
                backups: backups
                    .iter()
                    .filter(|b| b.manifest.host == h)
                    .cloned()
                    .collect(),
                problems: Vec::new(),
            };
            return Ok(Arc::new(serde_json::to_vec(&c)?));
        }
        let mut served = self
            .served
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(s) = served.as_ref() {
            return Ok(s.clone());
        }
        let c = Catalogue {
            backups: backups.clone(),
            problems: Vec::new(),
        };
        let body = Arc::new(serde_json::to_vec(&c)?);
        *served = Some(body.clone());
        Ok(body)
    }

    /// Serves `GET /v1/catalogue[?host=H]` with a bearer token, on `listener`.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        async fn catalogue(
            State(sim): State<Arc<Simulator>>,
            headers: HeaderMap,
            Query(q): Query<HashMap<String, String>>,
        ) -> axum::response::Response {
            let want = format!("Bearer {}", sim.token);
            if headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                != Some(want.as_str())
            {
                return (StatusCode::UNAUTHORIZED, "bad token").into_response();
            }
            sim.catalogue_requests.fetch_add(1, Ordering::Relaxed);
            match sim.catalogue_json(q.get("host").map(String::as_str)) {
                Ok(body) => {
                    // As the agent: an ETag over the body, 304 when If-None-Match names it.
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    body.hash(&mut h);
                    let etag = format!("\"{:016x}\"", h.finish());
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok())
                        == Some(etag.as_str())
                    {
                        sim.catalogue_not_modified.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
                    }
                    sim.catalogue_bytes_last
                        .store(body.len() as u64, Ordering::Relaxed);
                    sim.catalogue_bytes_total
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    (
                        [
                            (header::CONTENT_TYPE, "application/json".to_string()),
                            (header::ETAG, etag),
                        ],
                        body.as_ref().clone(),
                    )
                        .into_response()
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        let app = axum::Router::new()
            .route("/v1/catalogue", axum::routing::get(catalogue))
            .with_state(self);
        axum::serve(listener, app).await?;
        Ok(())
    }

    /// Creates the backup host and `n` source hosts (`<prefix>-h0000`…), labelled with the run
    /// and `group = i % groups`, each with a reported status. Returns the backup host's name.
    pub async fn create_hosts(
        &self,
        client: &Client,
        prefix: &str,
        run: &str,
        n: usize,
        groups: usize,
    ) -> anyhow::Result<String> {
        let api: Api<ZfsHost> = Api::all(client.clone());
        let backup = format!("{prefix}-backup");
        let mut todo: Vec<(String, Option<String>, usize)> = vec![(backup.clone(), None, n)];
        todo.extend((0..n).map(|i| {
            (
                format!("{prefix}-h{i:04}"),
                Some(format!("g{}", i % groups)),
                i,
            )
        }));
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(todo)
            .map(|(name, group, index)| {
                let api = api.clone();
                async move {
                    let mut host = ZfsHost::new(
                        &name,
                        ZfsHostSpec {
                            node_name: name.clone(),
                            datasets: serde_json::from_value(
                                serde_json::json!({"include": ["tank/**"]}),
                            )?,
                            paused: false,
                            allowed_namespaces: Vec::new(),
                            restore_roots: Vec::new(),
                        },
                    );
                    let mut labels = std::collections::BTreeMap::new();
                    labels.insert(RUN_LABEL.to_string(), run.to_string());
                    if let Some(g) = group {
                        labels.insert(GROUP_LABEL.to_string(), g);
                    }
                    host.metadata.labels = Some(labels);
                    api.create(&PostParams::default(), &host)
                        .await
                        .with_context(|| format!("creating ZfsHost {name}"))?;
                    let status = host_status(index, &self.endpoint, Timestamp::now());
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": status })),
                    )
                    .await
                    .with_context(|| format!("writing status of ZfsHost {name}"))?;
                    self.hosts
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .insert(name, status);
                    Ok(())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(backup)
    }

    /// Re-reports every host's status (fresh `lastSeen`, new snapshots) once per `period`,
    /// spread evenly over the period, as agents do. Runs until aborted.
    pub async fn refresh_hosts(self: Arc<Self>, client: Client, period: Duration) {
        let api: Api<ZfsHost> = Api::all(client);
        loop {
            let names: Vec<String> = match self.hosts.lock() {
                Ok(h) => h.keys().cloned().collect(),
                Err(_) => return,
            };
            let start = Instant::now();
            let step = period / (names.len().max(1) as u32);
            for (i, name) in names.iter().enumerate() {
                let status = match self.hosts.lock() {
                    Ok(mut h) => match h.get_mut(name) {
                        Some(s) => {
                            s.last_seen = Some(Time(Timestamp::now()));
                            s.clone()
                        }
                        None => continue,
                    },
                    Err(_) => return,
                };
                if api
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": status })),
                    )
                    .await
                    .is_err()
                {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                let next = start + step * (i as u32 + 1);
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }

    /// Watches BackupJobs in `namespace` and completes each new one at once (while
    /// `completing` is set). Runs until aborted.
    pub async fn complete_jobs(self: Arc<Self>, client: Client, namespace: String) {
        let api: Api<BackupJob> = Api::namespaced(client, &namespace);
        let done = Arc::new(Mutex::new(HashSet::<String>::new()));
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let _ = stream
            .map_err(anyhow::Error::from)
            .try_for_each_concurrent(8, |job| {
                let sim = self.clone();
                let api = api.clone();
                let done = done.clone();
                async move {
                    let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
                    if phase != JobPhase::Pending || !sim.completing.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let name = job.name_any();
                    match done.lock() {
                        Ok(mut d) => {
                            if !d.insert(name.clone()) {
                                return Ok(());
                            }
                        }
                        Err(_) => return Ok(()),
                    }
                    if let Err(e) = sim.complete(&api, &job).await {
                        sim.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("simulator: completing {name}: {e:#}");
                    }
                    Ok(())
                }
            })
            .await;
    }

    async fn complete(&self, api: &Api<BackupJob>, job: &BackupJob) -> anyhow::Result<()> {
        let now = Timestamp::now();
        let ts_of = |snap: &str| snap.rsplit('-').next().and_then(|t| t.parse::<i64>().ok());
        let ts = ts_of(&job.spec.snapshot).unwrap_or(now.as_second());
        let id = match (job.spec.backup_type, job.spec.base_snapshot.as_deref()) {
            (BackupType::Incremental, Some(base)) => {
                format!("{ts}.incremental.{}", ts_of(base).unwrap_or(ts - 1))
            }
            _ => format!("{ts}.full"),
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        job.spec.host.0.hash(&mut h);
        job.spec.dataset.0.hash(&mut h);
        let bytes = 1_000_000 + h.finish() % 2_000_000_000;
        let sha256 = fake_hex(&format!("{}/{}/{id}", job.spec.host, job.spec.dataset));
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id: id.clone(),
            host: job.spec.host.0.clone(),
            dataset: job.spec.dataset.0.clone(),
            snapshot: job.spec.snapshot.clone(),
            base_snapshot: match job.spec.backup_type {
                BackupType::Incremental => job.spec.base_snapshot.clone(),
                BackupType::Full => None,
            },
            backup_type: job.spec.backup_type,
            bytes,
            sha256: Some(sha256.clone()),
            compression: job.spec.compression,
            created: Timestamp::from_second(ts)?,
            policy: None,
            xxh3: None,
            raw: false,
        };
        // The store first, then the job: the controller never sees "succeeded but missing".
        {
            let mut backups = self
                .backups
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            backups.push(StoredBackup {
                manifest,
                archived: false,
                verification: None,
            });
            *self
                .served
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))? = None;
        }
        // The new snapshot shows in the host's next report, as with a real agent.
        if let Ok(mut hosts) = self.hosts.lock()
            && let Some(st) = hosts.get_mut(job.spec.host.as_str())
            && let Some(ds) = st
                .datasets
                .iter_mut()
                .find(|d| d.name == job.spec.dataset.as_str())
        {
            ds.snapshots.push(job.spec.snapshot.clone());
            if ds.snapshots.len() > 5 {
                ds.snapshots.remove(0);
            }
            ds.latest_snapshot = Some(job.spec.snapshot.clone());
        }
        let status = serde_json::json!({
            "status": {
                "phase": "Succeeded",
                "claimedBy": format!("{}-sim", job.spec.host),
                "bytes": bytes,
                "sha256": sha256,
                "backupId": id,
                "startedAt": Time(now),
                "finishedAt": Time(Timestamp::now()),
                "attempts": 1,
            }
        });
        api.patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await?;
        self.jobs_completed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
