//! The proxy configuration file (YAML), rendered by the controller from a
//! `FallbackRoute`. Plain serde, unknown fields rejected.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Top-level configuration of one proxy instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the proxy listens on, e.g. `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address serving `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Host header values served (port ignored, case-insensitive); empty = any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Backends in the order they are tried.
    pub backends: Vec<BackendConfig>,
    /// Status codes that mean "not here, try the next backend".
    #[serde(default = "default_fallback_on")]
    pub fallback_on: Vec<u16>,
    /// Response cache settings.
    #[serde(default)]
    pub cache: CacheConfig,
    /// How long the backend that answered a path is remembered.
    #[serde(default = "default_owner_ttl", with = "humantime_serde")]
    pub owner_ttl: Duration,
    /// Accepted for older rendered configs and ignored: the owner cache is
    /// bounded by `ownerMaxSize` (bytes), since its keys are client-chosen.
    #[serde(default = "default_owner_capacity")]
    pub owner_capacity: u64,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Largest accepted request body in bytes (413 above).
    #[serde(
        default = "default_max_request_body",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub max_request_body: u64,
    /// Index of the backend that receives methods other than GET/HEAD.
    #[serde(default)]
    pub pass_to: usize,
    /// How long a backend that refused a connection or timed out is skipped.
    #[serde(default = "default_backend_down_for", with = "humantime_serde")]
    pub backend_down_for: Duration,
    /// Value used in the `Via` header; a request that already carries it
    /// is a forwarding loop (508).
    #[serde(default = "default_via_name")]
    pub via_name: String,
    /// Failures (refused, reset, timed out) within the last 10–20 s after
    /// which a backend is skipped for `backendDownFor`, provided they are at
    /// least half of its requests: one slow URL, or a client timing out a
    /// few requests on purpose, does not take out a backend that answers
    /// everyone else.
    #[serde(default = "default_backend_down_after")]
    pub backend_down_after: u32,
    /// Total bytes of the owner cache (keys and values).
    #[serde(
        default = "default_owner_max_size",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub owner_max_size: u64,
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// trusted and appended to; from anyone else it is replaced by the
    /// socket peer's address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Request headers forwarded on cache fills and made part of the cache
    /// key (e.g. `X-Forwarded-Proto` behind a TLS terminator). Headers
    /// outside the fill allow-list and this list are not sent on fills
    /// (User-Agent, Referer and Origin among them: list one here to send it).
    #[serde(default)]
    pub keyed_headers: Vec<String>,
    /// Limits on client connections.
    #[serde(default)]
    pub limits: LimitConfig,
}

/// Limits on client connections (proxy and metrics listeners).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitConfig {
    /// Open client connections on the proxy listener; one more is
    /// answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections on the metrics listener.
    #[serde(default = "default_max_metrics_connections")]
    pub max_metrics_connections: usize,
    /// Time a client has to send a complete request head, counted from
    /// when the connection opened or its previous response ended: it
    /// bounds slow headers and idle keep-alive connections alike.
    #[serde(default = "default_header_read", with = "humantime_serde")]
    pub header_read: Duration,
    /// A client that reads nothing of its response for this long is
    /// disconnected (nginx's `send_timeout`).
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; at
    /// least 8192.
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub max_header_bytes: u64,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// Base URL, `http://host:port` with an optional path prefix.
    pub url: String,
}

/// Response cache settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness given to a storable response without explicit freshness
    /// (no `max-age`, `s-maxage` or `Expires`).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Total bytes the cache may hold (an integer, or a string like "256Mi").
    #[serde(
        default = "default_max_size",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub max_size: u64,
    /// Largest single object that is cached; larger bodies stream through.
    #[serde(
        default = "default_max_object_size",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub max_object_size: u64,
    /// Bytes all cache fills in flight may hold at once (each is bounded by
    /// `maxObjectSize`): a fill that finds no room streams through uncached.
    #[serde(
        default = "default_max_fill_bytes",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub max_fill_bytes: u64,
    /// Freshness of a "not found on any backend" answer.
    #[serde(default = "default_not_found_ttl", with = "humantime_serde")]
    pub not_found_ttl: Duration,
    /// How long past expiry a stale object is still served while one
    /// background request revalidates it.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// How long past the grace window a stale object is still kept: it is
    /// revalidated with its validators (a 304 refreshes it without a body)
    /// and served if no backend can be reached.
    #[serde(default = "default_keep", with = "humantime_serde")]
    pub keep: Duration,
    /// How long a key found uncacheable is passed straight to the backends
    /// (no coalescing) before being tried again.
    #[serde(default = "default_pass_ttl", with = "humantime_serde")]
    pub pass_ttl: Duration,
    /// Bytes each of the Vary index and the hit-for-pass marks may hold
    /// (keys are client-chosen URLs: bounded by size, not by count).
    #[serde(
        default = "default_index_max_size",
        deserialize_with = "bytes_size::deserialize"
    )]
    pub index_max_size: u64,
}

/// Upstream timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect timeout.
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect: Duration,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "default_response_header", with = "humantime_serde")]
    pub response_header: Duration,
    /// A streamed upstream body that sends nothing for this long is cut off.
    #[serde(default = "default_body_idle", with = "humantime_serde")]
    pub body_idle: Duration,
    /// Idle time after which a pooled upstream connection is closed.
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle: Duration,
    /// How long shutdown waits for open connections.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown: Duration,
    /// How long a request waits for another request's fill of the same key
    /// before fetching on its own (a slow leader cannot freeze a URL).
    #[serde(default = "default_coalesce_wait", with = "humantime_serde")]
    pub coalesce_wait: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}
fn default_fallback_on() -> Vec<u16> {
    vec![404]
}
fn default_owner_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_owner_capacity() -> u64 {
    1_000_000
}
fn default_max_request_body() -> u64 {
    64 * 1024 * 1024
}
fn default_backend_down_for() -> Duration {
    Duration::from_secs(10)
}
fn default_via_name() -> String {
    "zetaback".to_string()
}
fn default_backend_down_after() -> u32 {
    3
}
// The byte-bounded defaults below are sized to fit, together, in the 64Mi
// the controller gives a proxy pod beyond cache.maxSize: owners 32Mi, Vary
// index and pass marks 4Mi each, request heads 1024 x 16Ki.
fn default_owner_max_size() -> u64 {
    32 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_metrics_connections() -> usize {
    64
}
fn default_header_read() -> Duration {
    Duration::from_secs(10)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> u64 {
    16 * 1024
}
fn default_coalesce_wait() -> Duration {
    Duration::from_secs(10)
}
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_max_size() -> u64 {
    256 * 1024 * 1024
}
fn default_max_object_size() -> u64 {
    8 * 1024 * 1024
}
fn default_max_fill_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_not_found_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_keep() -> Duration {
    Duration::from_secs(600)
}
fn default_index_max_size() -> u64 {
    4 * 1024 * 1024
}
fn default_pass_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_connect() -> Duration {
    Duration::from_secs(2)
}
fn default_response_header() -> Duration {
    Duration::from_secs(30)
}
fn default_body_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}

/// Byte sizes: a plain integer or a Kubernetes-style quantity
/// (`512Ki`, `256Mi`, `1Gi`, also `k`/`M`/`G` powers of ten).
pub mod bytes_size {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }

    /// Parse a quantity string.
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => return None,
        };
        n.checked_mul(mult)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Str(s) => parse(&s).ok_or_else(|| D::Error::custom(format!("bad size {s:?}"))),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            max_size: default_max_size(),
            max_object_size: default_max_object_size(),
            max_fill_bytes: default_max_fill_bytes(),
            not_found_ttl: default_not_found_ttl(),
            grace: default_grace(),
            keep: default_keep(),
            pass_ttl: default_pass_ttl(),
            index_max_size: default_index_max_size(),
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            response_header: default_response_header(),
            body_idle: default_body_idle(),
            pool_idle: default_pool_idle(),
            shutdown: default_shutdown(),
            coalesce_wait: default_coalesce_wait(),
        }
    }
}

impl LimitConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_connections == 0 || self.max_metrics_connections == 0 {
            return invalid(
                "limits.maxConnections and limits.maxMetricsConnections must be at least 1",
            );
        }
        if self.header_read.is_zero() || self.send_timeout.is_zero() {
            return invalid("limits.headerRead and limits.sendTimeout must be longer than 0s");
        }
        if self.max_header_bytes < 8192 {
            return invalid("limits.maxHeaderBytes must be at least 8Ki");
        }
        Ok(())
    }
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_metrics_connections: default_max_metrics_connections(),
            header_read: default_header_read(),
            send_timeout: default_send_timeout(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

impl ProxyConfig {
    /// A configuration with defaults for everything but the backends.
    pub fn with_backends(backends: Vec<BackendConfig>) -> Self {
        Self {
            listen: default_listen(),
            metrics_listen: default_metrics_listen(),
            hosts: Vec::new(),
            backends,
            fallback_on: default_fallback_on(),
            cache: CacheConfig::default(),
            owner_ttl: default_owner_ttl(),
            owner_capacity: default_owner_capacity(),
            timeouts: TimeoutConfig::default(),
            max_request_body: default_max_request_body(),
            pass_to: 0,
            backend_down_for: default_backend_down_for(),
            via_name: default_via_name(),
            backend_down_after: default_backend_down_after(),
            owner_max_size: default_owner_max_size(),
            trusted_proxies: Vec::new(),
            keyed_headers: Vec::new(),
            limits: LimitConfig::default(),
        }
    }

    /// Parse and validate YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: ProxyConfig = serde_yaml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Render as YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Check cross-field constraints.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backends.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one backend is required".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for b in &self.backends {
            if !names.insert(b.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "duplicate backend name {:?}",
                    b.name
                )));
            }
            crate::backend_url::BackendUrl::parse(&b.url)?;
        }
        if self.pass_to >= self.backends.len() {
            return Err(ConfigError::Invalid(format!(
                "passTo {} is out of range for {} backends",
                self.pass_to,
                self.backends.len()
            )));
        }
        for code in &self.fallback_on {
            if !(100..=599).contains(code) {
                return Err(ConfigError::Invalid(format!(
                    "fallbackOn: bad status {code}"
                )));
            }
        }
        if self.cache.max_object_size > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid(
                "cache.maxObjectSize must be < 4 GiB".into(),
            ));
        }
        if self.cache.max_object_size > self.cache.max_size {
            return Err(ConfigError::Invalid(
                "cache.maxObjectSize must not exceed cache.maxSize".into(),
            ));
        }
        self.limits.validate()?;
        if self.backend_down_after == 0 {
            return Err(ConfigError::Invalid(
                "backendDownAfter must be at least 1".into(),
            ));
        }
        crate::forwarding::Forwarding::new(
            &self.keyed_headers,
            &self.trusted_proxies,
            &self.via_name,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_example() {
        let cfg = ProxyConfig::from_yaml(
            r#"
listen: 127.0.0.1:8080
metricsListen: 127.0.0.1:9090
hosts: [assets.example.com]
backends:
  - {name: web1, url: "http://10.0.0.1:80"}
  - {name: web2, url: "http://10.0.0.2:80/prefix"}
fallbackOn: [404, 410]
cache:
  defaultTtl: 5m
  maxSize: 1000000
  maxObjectSize: 10000
  notFoundTtl: 10s
  grace: 1m
ownerTtl: 1h
timeouts: {connect: 1s, responseHeader: 10s}
maxRequestBody: 1048576
passTo: 1
backendDownFor: 15s
"#,
        )
        .expect("valid config");
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.cache.default_ttl, Duration::from_secs(300));
        assert_eq!(cfg.fallback_on, vec![404, 410]);
        assert_eq!(cfg.pass_to, 1);
        assert_eq!(cfg.timeouts.connect, Duration::from_secs(1));
        let round = ProxyConfig::from_yaml(&cfg.to_yaml().expect("yaml")).expect("roundtrip");
        assert_eq!(round, cfg);
    }

    #[test]
    fn sizes_accept_quantities() {
        let cfg = ProxyConfig::from_yaml(
            "backends: [{name: a, url: 'http://127.0.0.1:1'}]\ncache: {maxSize: 256Mi, maxObjectSize: '8Mi'}\nmaxRequestBody: 10M",
        )
        .expect("valid");
        assert_eq!(cfg.cache.max_size, 256 << 20);
        assert_eq!(cfg.cache.max_object_size, 8 << 20);
        assert_eq!(cfg.max_request_body, 10_000_000);
        assert_eq!(bytes_size::parse("1Gi"), Some(1 << 30));
        assert_eq!(bytes_size::parse("12Xi"), None);
        assert!(
            ProxyConfig::from_yaml(
                "backends: [{name: a, url: 'http://x:1'}]\ncache: {maxSize: lots}"
            )
            .is_err()
        );
    }

    #[test]
    fn defaults_apply() {
        let cfg = ProxyConfig::from_yaml("backends: [{name: a, url: 'http://127.0.0.1:1'}]")
            .expect("valid");
        assert_eq!(cfg.fallback_on, vec![404]);
        assert_eq!(cfg.pass_to, 0);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(
            ProxyConfig::from_yaml("backends: [{name: a, url: 'http://x:1'}]\nbogus: 1").is_err()
        );
        assert!(ProxyConfig::from_yaml("backends: []").is_err());
        assert!(
            ProxyConfig::from_yaml("backends: [{name: a, url: 'http://x:1'}]\npassTo: 3").is_err()
        );
        assert!(ProxyConfig::from_yaml("backends: [{name: a, url: 'https://x:1'}]").is_err());
        assert!(
            ProxyConfig::from_yaml(
                "backends: [{name: a, url: 'http://x:1'}, {name: a, url: 'http://y:1'}]"
            )
            .is_err()
        );
        for bad in [
            "limits: {maxConnections: 0}",
            "limits: {maxMetricsConnections: 0}",
            "limits: {headerRead: 0s}",
            "limits: {sendTimeout: 0s}",
            "limits: {maxHeaderBytes: 4Ki}",
            "backendDownAfter: 0",
            "trustedProxies: [not-an-ip]",
            "keyedHeaders: [Transfer-Encoding]",
            "viaName: two words",
        ] {
            let yaml = format!("backends: [{{name: a, url: 'http://x:1'}}]\n{bad}");
            assert!(ProxyConfig::from_yaml(&yaml).is_err(), "{bad}");
        }
    }

    #[test]
    fn hardening_settings_parse() {
        let cfg = ProxyConfig::from_yaml(
            r#"
backends: [{name: a, url: "http://127.0.0.1:1"}]
trustedProxies: [10.0.0.0/8, "::1"]
keyedHeaders: [X-Forwarded-Proto]
backendDownAfter: 5
ownerMaxSize: 1Mi
cache: {indexMaxSize: 2Mi}
timeouts: {coalesceWait: 2s}
limits: {maxConnections: 10, maxMetricsConnections: 3, headerRead: 5s, sendTimeout: 20s, maxHeaderBytes: 16Ki}
"#,
        )
        .expect("valid");
        assert_eq!(cfg.limits.max_connections, 10);
        assert_eq!(cfg.limits.max_header_bytes, 16 << 10);
        assert_eq!(cfg.limits.send_timeout, Duration::from_secs(20));
        assert_eq!(cfg.owner_max_size, 1 << 20);
        assert_eq!(cfg.cache.index_max_size, 2 << 20);
        assert_eq!(cfg.timeouts.coalesce_wait, Duration::from_secs(2));
        assert_eq!(cfg.backend_down_after, 5);
        let round = ProxyConfig::from_yaml(&cfg.to_yaml().expect("yaml")).expect("roundtrip");
        assert_eq!(round, cfg);
    }
}
