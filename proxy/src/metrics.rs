//! Prometheus metrics (prometheus-client).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// All metrics of one proxy process.
pub struct Metrics {
    registry: Registry,
    cache: Family<Labels, Counter>,
    backend_requests: Family<Labels, Counter>,
    backend_fallbacks: Family<Labels, Counter>,
    backend_errors: Family<Labels, Counter>,
    not_stored: Family<Labels, Counter>,
    pub owner_hits: Counter,
    pub owner_misses: Counter,
    pub coalesced: Counter,
    pub reloads: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub latency: Histogram,
    pub hit: Counter,
    pub miss: Counter,
    pub stale: Counter,
    pub pass: Counter,
    /// Connections answered 503 over the cap, per listener.
    pub refused_proxy: Counter,
    pub refused_metrics: Counter,
    /// Waiters that stopped waiting for a slow coalesced fill.
    pub coalesce_timeouts: Counter,
    by_method: [Counter; 6],
}

/// Per-backend counters, resolved once so the hot path only increments.
#[derive(Clone)]
pub struct BackendCounters {
    pub requests: Counter,
    pub fallbacks: Counter,
    pub connect_errors: Counter,
    pub timeouts: Counter,
}

fn l(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("zetaback_proxy");
        let requests = Family::<Labels, Counter>::default();
        let cache = Family::<Labels, Counter>::default();
        let backend_requests = Family::<Labels, Counter>::default();
        let backend_fallbacks = Family::<Labels, Counter>::default();
        let backend_errors = Family::<Labels, Counter>::default();
        let not_stored = Family::<Labels, Counter>::default();
        let owner_hits = Counter::default();
        let owner_misses = Counter::default();
        let coalesced = Counter::default();
        let reloads = Counter::default();
        let cache_bytes = Gauge::default();
        let cache_entries = Gauge::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let refused = Family::<Labels, Counter>::default();
        let coalesce_timeouts = Counter::default();
        registry.register(
            "refused_connections",
            "Connections answered 503 because the listener was at limits.maxConnections",
            refused.clone(),
        );
        registry.register(
            "coalesce_timeouts",
            "Requests that stopped waiting for another request's fetch after timeouts.coalesceWait",
            coalesce_timeouts.clone(),
        );
        let refused_proxy = refused.get_or_create(&l("listener", "proxy")).clone();
        let refused_metrics = refused.get_or_create(&l("listener", "metrics")).clone();
        registry.register("requests", "Client requests by method", requests.clone());
        registry.register(
            "cache",
            "Cache lookups by result (hit, miss, stale, pass)",
            cache.clone(),
        );
        registry.register(
            "backend_requests",
            "Requests sent to each backend",
            backend_requests.clone(),
        );
        registry.register(
            "backend_fallbacks",
            "Fallback statuses (e.g. 404) answered by each backend",
            backend_fallbacks.clone(),
        );
        registry.register(
            "backend_errors",
            "Connect errors and timeouts per backend",
            backend_errors.clone(),
        );
        registry.register(
            "not_stored",
            "Responses not stored, by reason",
            not_stored.clone(),
        );
        registry.register(
            "owner_hits",
            "Lookups whose owner (backend) was known",
            owner_hits.clone(),
        );
        registry.register(
            "owner_misses",
            "Lookups with no known owner",
            owner_misses.clone(),
        );
        registry.register(
            "coalesced",
            "Requests that waited for another request's fetch",
            coalesced.clone(),
        );
        registry.register(
            "config_reloads",
            "Successful configuration reloads",
            reloads.clone(),
        );
        registry.register(
            "cache_bytes",
            "Weighted size of the response cache",
            cache_bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Objects in the response cache",
            cache_entries.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response head",
            latency.clone(),
        );
        let hit = cache.get_or_create(&l("result", "hit")).clone();
        let miss = cache.get_or_create(&l("result", "miss")).clone();
        let stale = cache.get_or_create(&l("result", "stale")).clone();
        let pass = cache.get_or_create(&l("result", "pass")).clone();
        let by_method = ["GET", "HEAD", "POST", "PUT", "DELETE", "OTHER"]
            .map(|m| requests.get_or_create(&l("method", m)).clone());
        Self {
            registry,
            cache,
            backend_requests,
            backend_fallbacks,
            backend_errors,
            not_stored,
            owner_hits,
            owner_misses,
            coalesced,
            reloads,
            cache_bytes,
            cache_entries,
            latency,
            hit,
            miss,
            stale,
            pass,
            refused_proxy,
            refused_metrics,
            coalesce_timeouts,
            by_method,
        }
    }

    /// Counters of one backend.
    pub fn backend(&self, name: &str) -> BackendCounters {
        let mut err = l("backend", name);
        err.push(("kind".into(), "connect".into()));
        let connect_errors = self.backend_errors.get_or_create(&err).clone();
        if let Some(last) = err.last_mut() {
            last.1 = "timeout".into();
        }
        let timeouts = self.backend_errors.get_or_create(&err).clone();
        BackendCounters {
            requests: self
                .backend_requests
                .get_or_create(&l("backend", name))
                .clone(),
            fallbacks: self
                .backend_fallbacks
                .get_or_create(&l("backend", name))
                .clone(),
            connect_errors,
            timeouts,
        }
    }

    /// Counter for client requests with this method.
    pub fn request(&self, method: &http::Method) {
        let i = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::DELETE => 4,
            _ => 5,
        };
        self.by_method[i].inc();
    }

    /// Count a response that was not stored.
    pub fn not_stored(&self, reason: &str) {
        self.not_stored.get_or_create(&l("reason", reason)).inc();
    }

    /// Cache lookups with a given result label.
    pub fn cache_result(&self, result: &str) -> u64 {
        self.cache.get_or_create(&l("result", result)).get()
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
