//! `FallbackRoute`: one URL in front of N backends that each hold part of the assets.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DurationString, ObjectName, conditions_schema};

/// One URL in front of several backends: GET/HEAD go to the backend that owns the path (or
/// backend 1), and on a fallback status (404) the next is tried; hits are cached.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "zetaback.io",
    version = "v1alpha1",
    kind = "FallbackRoute",
    plural = "fallbackroutes",
    shortname = "fr",
    category = "zetaback",
    namespaced,
    status = "FallbackRouteStatus",
    doc = "A caching proxy that tries its backends in order until one has the object.",
    printcolumn(name = "Backends", type_ = "integer", json_path = ".status.backends"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRouteSpec {
    /// Host header values served (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub hosts: Vec<String>,
    /// Backends, tried in this order on a fallback status.
    #[schemars(length(min = 1, max = 64))]
    pub backends: Vec<Backend>,
    /// The statuses that mean "try the next backend".
    #[serde(default = "default_fallback_on")]
    #[schemars(length(min = 1, max = 16), inner(range(min = 400, max = 599)))]
    #[schemars(with = "Vec<i32>")]
    pub fallback_on: Vec<u16>,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The proxy's container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Peers (IP addresses or CIDR ranges, e.g. the ingress controller's pod range) whose
    /// `X-Forwarded-For` is trusted and appended to; from anyone else it is replaced by the
    /// client's socket address. Empty (the default): no peer is trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(p, isIP(p) || isCIDR(p))").message("each of trustedProxies must be an IP address (10.0.0.1, ::1) or a CIDR range (10.0.0.0/8)"))]
    pub trusted_proxies: Vec<String>,
    /// Request headers sent to the backends on cache fills and made part of the cache key
    /// (e.g. `X-Forwarded-Proto` behind a TLS terminator, when backends answer differently
    /// per scheme). Other client headers are not forwarded on fills; among them User-Agent,
    /// Referer and Origin (backends often answer per browser or per site without `Vary`): list
    /// one here for the backends to see it, at the price of one cache entry per value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new(KEYED_HEADER_NAME_RULE).message("each of keyedHeaders must be a header name: letters, digits and !#$%&'*+.^_`|~- only"))]
    #[x_kube(validation = Rule::new(KEYED_HEADER_ALLOWED_RULE).message("keyedHeaders cannot name Host, Content-Length or a hop-by-hop header (Connection, Keep-Alive, Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade): the proxy sets those itself"))]
    pub keyed_headers: Vec<String>,
}

/// Every keyed header is an HTTP token (RFC 9110 §5.6.2).
const KEYED_HEADER_NAME_RULE: &str = r#"self.all(h, h.matches("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))"#;

/// No keyed header is one the proxy must own (framing, hop-by-hop, Host).
const KEYED_HEADER_ALLOWED_RULE: &str = "self.all(h, !(h.lowerAscii() in ['host', 'content-length', 'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-connection']))";

fn default_fallback_on() -> Vec<u16> {
    vec![404]
}
fn default_replicas() -> i32 {
    2
}

/// A backend: a Service in the route's namespace or a URL (exactly one).
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.service) != has(self.url)").message("each backend needs exactly one of service or url"))]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// An http:// or https:// URL, without credentials (a spec is readable by everyone who may
    /// read the route; a backend that needs them gets them another way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches(r'^https?://[^\s/?#]+(/[^\s]*)?$')").message(Message::Expression(r#"'"' + self + '" is not an http:// or https:// URL'"#.into())))]
    #[x_kube(validation = Rule::new(r"!self.matches(r'^[a-zA-Z]+://[^/?#]*@')").message("a backend URL must not carry credentials (user:password@): anyone who can read the FallbackRoute could read them"))]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
}

/// A Service and port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    pub name: ObjectName,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Cache sizing and lifetimes.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Freshness of responses that give none of their own.
    #[serde(default = "default_ttl")]
    pub ttl: DurationString,
    /// Memory for cached objects, e.g. 256Mi.
    #[serde(default = "default_max_size")]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(Message::Expression(size_message("maxSize"))))]
    #[schemars(length(max = 9))]
    pub max_size: String,
    /// The largest object kept, e.g. 8Mi.
    #[serde(default = "default_max_object_size")]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(Message::Expression(size_message("maxObjectSize"))))]
    #[schemars(length(max = 9))]
    pub max_object_size: String,
    /// Memory all cache fills in flight may hold at once, e.g. 64Mi (each fill is bounded by
    /// maxObjectSize); a fill that finds no room is streamed to its client uncached. The
    /// proxy's memory limit grows by what this is above 64Mi.
    #[serde(default = "default_max_fill_bytes")]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(Message::Expression(size_message("maxFillBytes"))))]
    #[schemars(length(max = 9))]
    pub max_fill_bytes: String,
    /// How long "no backend has it" is remembered.
    #[serde(default = "default_not_found_ttl")]
    pub not_found_ttl: DurationString,
    /// How long a stale object may be served while it is revalidated.
    #[serde(default = "default_grace")]
    pub grace: DurationString,
}

/// The CEL rule for a size such as `256Mi`.
const SIZE_RULE: &str = r"self.matches(r'^[1-9][0-9]{0,6}(Ki|Mi|Gi)?$')";

/// The refusal of a bad size, in words.
fn size_message(field: &str) -> String {
    format!(
        r#"'{field} "' + self + '" is not a size: write a whole number of bytes, or one followed by Ki, Mi or Gi (e.g. 256Mi), without leading zeros'"#
    )
}

fn default_ttl() -> DurationString {
    DurationString("5m".into())
}
fn default_max_size() -> String {
    "256Mi".into()
}
fn default_max_object_size() -> String {
    "8Mi".into()
}
fn default_max_fill_bytes() -> String {
    "64Mi".into()
}
fn default_not_found_ttl() -> DurationString {
    DurationString("10s".into())
}
fn default_grace() -> DurationString {
    DurationString("30s".into())
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_size: default_max_size(),
            max_object_size: default_max_object_size(),
            max_fill_bytes: default_max_fill_bytes(),
            not_found_ttl: default_not_found_ttl(),
            grace: default_grace(),
        }
    }
}

/// The proxy's rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub backends: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Hash of the rendered proxy config (changes roll the Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}
