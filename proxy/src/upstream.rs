//! Backends: the pooled HTTP client, timeouts and down-marking.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use crate::backend_url::BackendUrl;
use crate::body::Body;
use crate::config::{BackendConfig, TimeoutConfig};
use crate::error::{ConfigError, UpstreamError};
use crate::metrics::BackendCounters;

fn monotonic_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One backend with its health state and counters.
pub struct Backend {
    pub name: Arc<str>,
    pub url: BackendUrl,
    down_until_ms: AtomicU64,
    /// Answers and failures, for marking down.
    health: crate::health::Health,
    pub counters: BackendCounters,
}

impl Backend {
    pub fn new(cfg: &BackendConfig, counters: BackendCounters) -> Result<Self, ConfigError> {
        Ok(Self {
            name: Arc::from(cfg.name.as_str()),
            url: BackendUrl::parse(&cfg.url)?,
            down_until_ms: AtomicU64::new(0),
            health: crate::health::Health::default(),
            counters,
        })
    }

    pub fn is_down(&self) -> bool {
        monotonic_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }

    pub fn mark_down(&self, for_: Duration) {
        let until =
            monotonic_ms().saturating_add(u64::try_from(for_.as_millis()).unwrap_or(u64::MAX));
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Count a failed request (refused, reset, timed out); marks the
    /// backend down for `for_` when failures reach `min_failures` and at
    /// least half its recent requests ([`crate::health`]). Returns whether
    /// it did.
    pub fn record_failure(&self, min_failures: u32, for_: Duration) -> bool {
        if self.health.failed(monotonic_ms(), min_failures) {
            self.mark_down(for_);
            return true;
        }
        false
    }

    /// The backend answered: count it, end a down period.
    pub fn mark_up(&self) {
        self.health.answered(monotonic_ms());
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// The shared, pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Body>;

/// Build the client with the configured connect timeout.
pub fn build_client(t: &TimeoutConfig) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(t.connect));
    conn.set_nodelay(true);
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(t.pool_idle)
        .pool_max_idle_per_host(1024)
        .build(conn)
}

/// Send one request, bounded by the response-header timeout.
pub async fn send(
    client: &HttpClient,
    backend: &Backend,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    backend.counters.requests.inc();
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => {
            backend.counters.timeouts.inc();
            Err(UpstreamError::Timeout {
                backend: backend.name.to_string(),
                timeout,
            })
        }
        Ok(Err(e)) => {
            backend.counters.connect_errors.inc();
            Err(UpstreamError::Connect {
                backend: backend.name.to_string(),
                message: crate::error_chain::format(&e),
            })
        }
        Ok(Ok(resp)) => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_marking() {
        let m = crate::metrics::Metrics::new();
        let b = Backend::new(
            &BackendConfig {
                name: "a".into(),
                url: "http://127.0.0.1:1".into(),
            },
            m.backend("a"),
        )
        .expect("backend");
        assert!(!b.is_down());
        b.mark_down(Duration::from_secs(60));
        assert!(b.is_down());
        b.mark_up();
        assert!(!b.is_down());
        // Failures among answers: up; failures outnumbering answers: down.
        let long = Duration::from_secs(60);
        for _ in 0..5 {
            b.mark_up();
        }
        // One answer above plus five: the sixth failure is half.
        for _ in 0..5 {
            assert!(!b.record_failure(3, long));
        }
        assert!(!b.is_down());
        assert!(b.record_failure(3, long));
        assert!(b.is_down());
    }
}
