//! Prometheus metrics and the health endpoints of the controller.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use jiff::Timestamp;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::{BackupJob, JobPhase};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub namespace: String,
    pub policy: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PhaseLabel {
    namespace: String,
    policy: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct DatasetLabel {
    namespace: String,
    policy: String,
    host: String,
    dataset: String,
}

/// (host, dataset) → newest stored backup.
type NewestBackups = BTreeMap<(String, String), Timestamp>;

/// Metrics computed at scrape time from what the controller holds: BackupJobs by phase (from
/// the job watch cache) and seconds since each dataset's newest backup (`now - newest`, so
/// the value is exact at every scrape, not as old as the last reconcile; a timestamp gauge
/// would need `time() - x` in every query and alert).
#[derive(Debug, Default)]
struct Live {
    jobs: Mutex<Option<Store<BackupJob>>>,
    /// (namespace, policy) → (host, dataset) → newest backup, replaced by each reconcile.
    newest: Mutex<HashMap<(String, String), NewestBackups>>,
    /// (namespace, policy) → its target and when it was last reconciled: a policy not
    /// reconciled for [`POLICY_SERIES_TTL`] was deleted and its series are dropped.
    seen: Mutex<HashMap<(String, String), (String, Instant)>>,
    /// (namespace, policy) → each dataset's last successful restore drill, replaced by each
    /// reconcile.
    drills: Mutex<HashMap<(String, String), Vec<super::drill::DrillSample>>>,
}

/// Every live policy is reconciled at least once a minute; after this long without one its
/// series go (the controller learns of a deletion only by no longer seeing the policy).
pub const POLICY_SERIES_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(jobs) = jobs {
            let mut counts: BTreeMap<PhaseLabel, i64> = BTreeMap::new();
            for j in jobs.state() {
                let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
                let policy = j
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(super::backup_policy::POLICY_LABEL))
                    .cloned()
                    .unwrap_or_default();
                let key = PhaseLabel {
                    namespace: j.metadata.namespace.clone().unwrap_or_default(),
                    policy,
                    phase: format!("{phase:?}"),
                };
                *counts.entry(key).or_default() += 1;
            }
            // Every phase of every policy seen, so a phase that empties reads 0, not absent.
            let policies: Vec<(String, String)> = counts
                .keys()
                .map(|k| (k.namespace.clone(), k.policy.clone()))
                .collect();
            for (namespace, policy) in policies {
                for phase in [
                    JobPhase::Pending,
                    JobPhase::Running,
                    JobPhase::Succeeded,
                    JobPhase::Failed,
                ] {
                    counts
                        .entry(PhaseLabel {
                            namespace: namespace.clone(),
                            policy: policy.clone(),
                            phase: format!("{phase:?}"),
                        })
                        .or_default();
                }
            }
            let mut family = encoder.encode_descriptor(
                "backup_jobs",
                "BackupJobs by policy and phase (finished ones as kept by jobHistory)",
                None,
                MetricType::Gauge,
            )?;
            for (labels, n) in &counts {
                ConstGauge::new(*n).encode(family.encode_family(labels)?)?;
            }
        }
        let now = Timestamp::now();
        let newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "seconds_since_last_backup",
            "Seconds since the newest stored backup of each covered dataset (datasets without any backup are absent; see violators)",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, policy), datasets) in newest.iter() {
            for ((host, dataset), at) in datasets {
                let labels = DatasetLabel {
                    namespace: namespace.clone(),
                    policy: policy.clone(),
                    host: host.clone(),
                    dataset: dataset.clone(),
                };
                let age = now.duration_since(*at).as_secs_f64().max(0.0);
                ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
            }
        }
        let drills = self.drills.lock().unwrap_or_else(PoisonError::into_inner);
        let samples = || {
            drills.iter().flat_map(|((namespace, policy), list)| {
                list.iter().map(move |s| {
                    (
                        DatasetLabel {
                            namespace: namespace.clone(),
                            policy: policy.clone(),
                            host: s.host.clone(),
                            dataset: s.dataset.clone(),
                        },
                        s,
                    )
                })
            })
        };
        let mut family = encoder.encode_descriptor(
            "restore_drill_seconds",
            "The measured recovery time of each dataset's last successful restore drill (from its start to the restored snapshot verified)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in samples() {
            ConstGauge::new(s.seconds).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "restore_drill_bytes",
            "Bytes restored by each dataset's last successful restore drill",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in samples() {
            if let Some(b) = s.bytes {
                let b = i64::try_from(b).unwrap_or(i64::MAX);
                ConstGauge::new(b).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub kind: String,
    pub result: String,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_seconds: Family<KindLabel, Histogram>,
    status_writes: Family<KindLabel, Counter>,
    leader: Gauge,
    violators: Family<PolicyLabel, Gauge>,
    quarantined: Family<PolicyLabel, Gauge>,
    bytes_stored: Family<TargetLabel, Gauge>,
    store_read_seconds: Histogram,
    decide_seconds: Histogram,
    live: Arc<Live>,
    is_leader: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("zetaback_controller");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let status_writes = Family::<KindLabel, Counter>::default();
        let leader = Gauge::default();
        let violators = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "violators",
            "Datasets not backed up within their policy",
            violators.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_seconds.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes by kind",
            status_writes.clone(),
        );
        registry.register("leader", "1 when this replica leads", leader.clone());
        let quarantined = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "quarantined_backups",
            "Stored backups of a policy's datasets that verification found corrupt (quarantined: never restored from)",
            quarantined.clone(),
        );
        let bytes_stored = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "bytes_stored",
            "Bytes of the backups a policy keeps on its target (live and archived)",
            bytes_stored.clone(),
        );
        let store_read_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "store_read_duration_seconds",
            "Time a BackupPolicy reconcile spends getting its view of the backup store (cached, revalidated or read)",
            store_read_seconds.clone(),
        );
        let decide_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "decide_duration_seconds",
            "Time a BackupPolicy reconcile takes to decide (caches, store view, policy logic), before its API writes",
            decide_seconds.clone(),
        );
        let live = Arc::new(Live::default());
        registry.register_collector(Box::new(live.clone()));
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            status_writes,
            leader,
            violators,
            quarantined,
            bytes_stored,
            store_read_seconds,
            decide_seconds,
            live,
            is_leader: AtomicBool::new(false),
        }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_seconds
            .get_or_create(&KindLabel {
                kind: self.kind.into(),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// The registry, for other modules to add their metrics to before serving.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn reconcile_timer(&self, kind: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn reconciled(&self, kind: &str, ok: bool) {
        self.reconciles
            .get_or_create(&ResultLabel {
                kind: kind.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn status_written(&self, kind: &str) {
        self.status_writes
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn set_violators(&self, namespace: &str, policy: &str, count: i64) {
        self.live
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((namespace.into(), policy.into()))
            .and_modify(|(_, at)| *at = Instant::now())
            .or_insert((String::new(), Instant::now()));
        self.violators
            .get_or_create(&PolicyLabel {
                namespace: namespace.into(),
                policy: policy.into(),
            })
            .set(count);
    }

    /// The number of quarantined backups of a policy's datasets.
    pub fn set_quarantined(&self, namespace: &str, policy: &str, count: i64) {
        self.quarantined
            .get_or_create(&PolicyLabel {
                namespace: namespace.into(),
                policy: policy.into(),
            })
            .set(count);
    }

    pub fn observe_store_read(&self, seconds: f64) {
        self.store_read_seconds.observe(seconds);
    }

    pub fn observe_decide(&self, seconds: f64) {
        self.decide_seconds.observe(seconds);
    }

    /// BackupJobs by phase are counted from this cache at every scrape.
    pub fn watch_jobs(&self, jobs: Store<BackupJob>) {
        *self
            .live
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(jobs);
    }

    /// What one reconcile of a policy found: bytes stored on its target (`None`: the store
    /// could not be read; the last value stays) and each dataset's newest backup (replacing
    /// the policy's previous list, so datasets no longer covered disappear).
    pub fn set_policy_backups(
        &self,
        namespace: &str,
        policy: &str,
        target: &str,
        bytes_stored: Option<u64>,
        newest: &[(String, String, Timestamp)],
    ) {
        self.live
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (namespace.into(), policy.into()),
                (target.into(), Instant::now()),
            );
        if let Some(b) = bytes_stored {
            self.bytes_stored
                .get_or_create(&TargetLabel {
                    namespace: namespace.into(),
                    policy: policy.into(),
                    target: target.into(),
                })
                .set(i64::try_from(b).unwrap_or(i64::MAX));
            let map = newest
                .iter()
                .map(|(h, d, t)| ((h.clone(), d.clone()), *t))
                .collect();
            self.live
                .newest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((namespace.into(), policy.into()), map);
        }
    }

    /// Each dataset's last successful restore drill, from one reconcile of a policy
    /// (replacing its previous list).
    pub fn set_drills(&self, namespace: &str, policy: &str, samples: &[super::drill::DrillSample]) {
        let mut drills = self
            .live
            .drills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), policy.to_owned());
        if samples.is_empty() {
            drills.remove(&key);
        } else {
            drills.insert(key, samples.to_vec());
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        self.is_leader.store(leading, Ordering::Relaxed);
    }

    /// Drops the series of policies not reconciled for `ttl` (deleted ones).
    pub fn forget_policies_older_than(&self, ttl: std::time::Duration) {
        let gone: Vec<((String, String), String)> = {
            let mut seen = self
                .live
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let gone = seen
                .iter()
                .filter(|(_, (_, at))| at.elapsed() >= ttl)
                .map(|(k, (target, _))| (k.clone(), target.clone()))
                .collect::<Vec<_>>();
            for (k, _) in &gone {
                seen.remove(k);
            }
            gone
        };
        for ((namespace, policy), target) in gone {
            self.live
                .newest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(namespace.clone(), policy.clone()));
            self.live
                .drills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(namespace.clone(), policy.clone()));
            self.violators.remove(&PolicyLabel {
                namespace: namespace.clone(),
                policy: policy.clone(),
            });
            self.quarantined.remove(&PolicyLabel {
                namespace: namespace.clone(),
                policy: policy.clone(),
            });
            self.bytes_stored.remove(&TargetLabel {
                namespace,
                policy,
                target,
            });
        }
    }

    /// The text exposition (series of deleted policies dropped first).
    pub fn encode(&self) -> String {
        self.forget_policies_older_than(POLICY_SERIES_TTL);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` (process alive) and `/readyz` (200 for a standby that reached
/// the Lease and for a leader whose caches synced, 503 otherwise; the body says which:
/// [`super::readiness`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<super::readiness::Readiness>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let phase = readiness.phase();
                async move { phase.answer() }
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET path` against a served listener: the status line's code and the body.
    async fn get_path(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let code = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (code, body)
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_lease_is_reached_and_while_the_leaders_caches_sync() {
        use super::super::readiness::{Phase, Readiness};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Arc::new(Readiness::default());
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            readiness.clone(),
        ));
        let (code, body) = get_path(addr, "/readyz").await;
        assert_eq!((code, body.trim()), (503, Phase::Starting.describe()));
        readiness.set(Phase::StandingBy);
        assert_eq!(get_path(addr, "/readyz").await.0, 200);
        readiness.set(Phase::LeadingCachesSyncing);
        let (code, body) = get_path(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.starts_with("leader: "), "{body}");
        readiness.set(Phase::Leading);
        assert_eq!(get_path(addr, "/readyz").await.0, 200);
        // Alive whatever the phase.
        readiness.set(Phase::Starting);
        assert_eq!(get_path(addr, "/healthz").await.0, 200);
        server.abort();
    }

    #[test]
    fn policy_series_are_exposed_and_dropped_when_the_policy_goes() {
        let m = Metrics::default();
        let newest = [(
            "db-1".to_string(),
            "tank/a".to_string(),
            Timestamp::now() - jiff::SignedDuration::from_secs(120),
        )];
        m.set_violators("ops", "p", 2);
        m.set_policy_backups("ops", "p", "backup-1", Some(4096), &newest);
        m.set_drills(
            "ops",
            "p",
            &[super::super::drill::DrillSample {
                host: "db-1".into(),
                dataset: "tank/a".into(),
                seconds: 42,
                bytes: Some(301_615),
            }],
        );
        let text = m.encode();
        assert!(
            text.contains("zetaback_controller_violators{namespace=\"ops\",policy=\"p\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "zetaback_controller_bytes_stored{namespace=\"ops\",policy=\"p\",target=\"backup-1\"} 4096"
        ));
        let line = text
            .lines()
            .find(|l| l.starts_with("zetaback_controller_seconds_since_last_backup{namespace=\"ops\",policy=\"p\",host=\"db-1\",dataset=\"tank/a\"}"))
            .unwrap_or_else(|| panic!("no seconds_since_last_backup in {text}"));
        let age: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((120.0..130.0).contains(&age), "{age}");
        let labels = "{namespace=\"ops\",policy=\"p\",host=\"db-1\",dataset=\"tank/a\"}";
        assert!(
            text.contains(&format!(
                "zetaback_controller_restore_drill_seconds{labels} 42\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "zetaback_controller_restore_drill_bytes{labels} 301615\n"
            )),
            "{text}"
        );
        // A reconcile without drills (spec.drill removed) drops the policy's drill series.
        m.set_drills("ops", "p", &[]);
        assert!(
            !m.encode().contains("restore_drill_seconds{"),
            "drill series stayed"
        );
        m.set_drills(
            "ops",
            "p",
            &[super::super::drill::DrillSample {
                host: "db-1".into(),
                dataset: "tank/a".into(),
                seconds: 1,
                bytes: None,
            }],
        );
        // Not reconciled any more (deleted): its series go.
        m.forget_policies_older_than(std::time::Duration::ZERO);
        let text = m.encode();
        assert!(!text.contains("policy=\"p\""), "{text}");
    }
}
