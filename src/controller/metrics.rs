//! Prometheus metrics and the health endpoints of the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            status_writes,
            leader,
            violators,
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
        self.violators
            .get_or_create(&PolicyLabel {
                namespace: namespace.into(),
                policy: policy.into(),
            })
            .set(count);
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        self.is_leader.store(leading, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` (process alive) and `/readyz` (this replica leads or waits
/// to lead; both are ready, since a standby must not be restarted).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
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
