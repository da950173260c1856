//! Rendering a FallbackRoute, pure: the proxy config and its hash, the ConfigMap, Deployment
//! and Service, the roll-out's progress read from the Deployment, the status and when to look
//! again. The reconciler in `mod.rs` does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::runtime::controller::Action;
use sha2::{Digest, Sha256};
use zetaback_proxy::config::bytes_size;
use zetaback_proxy::{BackendConfig, CacheConfig, ProxyConfig};

use super::{
    CONFIG_DIR, CONFIG_KEY, CONTAINER, DEFAULT_IMAGE, HASH_ANNOTATION, HTTP_PORT, INVALID_BACKEND,
    METRICS_PORT, SERVICE_PORT,
};
use crate::api::condition::READY;
use crate::api::fallback_route::Backend;
use crate::api::{DurationString, FallbackRoute, FallbackRouteSpec, FallbackRouteStatus};
use crate::controller::FIELD_MANAGER;
use crate::controller::conditions::{self, Wanted};

/// Memory beyond the cache the proxy may use (connections, buffers, owner cache).
const MEMORY_HEADROOM: u64 = 64 << 20;
const MI: u64 = 1 << 20;
pub(super) const RECHECK_UNOBSERVED: Duration = Duration::from_secs(3);
pub(super) const RECHECK_NOT_READY: Duration = Duration::from_secs(30);
pub(super) const RECHECK_READY: Duration = Duration::from_secs(300);

/// Why a route's spec cannot be turned into a proxy config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("backend {index}: give exactly one of service or url")]
    Backend { index: usize },
    #[error("cache.{field}: {value:?} is not a size such as 256Mi")]
    Size { field: &'static str, value: String },
    #[error("cache.{field}: {value:?} is not a duration such as 5m")]
    Duration { field: &'static str, value: String },
    #[error("the proxy would refuse this configuration: {0}")]
    Refused(String),
}

// ---------------------------------------------------------------------------------------------
// Pure rendering
// ---------------------------------------------------------------------------------------------

/// The cluster DNS URL of a Service port.
pub fn service_url(name: &str, namespace: &str, port: i32) -> String {
    format!("http://{name}.{namespace}.svc.cluster.local:{port}")
}

/// The name of the ConfigMap and Deployment of a route.
pub fn proxy_name(route: &str) -> String {
    format!("{route}-proxy")
}

/// A backend's name in the proxy's metrics and logs: the Service name, or the URL's authority.
fn backend_name(backend: &Backend, index: usize) -> Result<String, RenderError> {
    match (&backend.service, &backend.url) {
        (Some(svc), None) => Ok(svc.name.to_string()),
        (None, Some(url)) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            Ok(if authority.is_empty() {
                format!("backend-{}", index + 1)
            } else {
                authority.to_owned()
            })
        }
        _ => Err(RenderError::Backend { index: index + 1 }),
    }
}

fn backend_url(backend: &Backend, namespace: &str, index: usize) -> Result<String, RenderError> {
    match (&backend.service, &backend.url) {
        (Some(svc), None) => Ok(service_url(svc.name.as_str(), namespace, svc.port)),
        (None, Some(url)) => Ok(url.clone()),
        _ => Err(RenderError::Backend { index: index + 1 }),
    }
}

fn size(field: &'static str, value: &str) -> Result<u64, RenderError> {
    bytes_size::parse(value).ok_or_else(|| RenderError::Size {
        field,
        value: value.to_owned(),
    })
}

fn duration(field: &'static str, value: &DurationString) -> Result<Duration, RenderError> {
    value.duration().map_err(|_| RenderError::Duration {
        field,
        value: value.to_string(),
    })
}

/// The proxy config for a route in `namespace`: backends in spec order (Services resolved to
/// their cluster DNS names, URLs as given), hosts, fallback statuses and cache settings; the
/// rest are the proxy's defaults. Validated as the proxy would validate it.
pub fn render_config(
    spec: &FallbackRouteSpec,
    namespace: &str,
) -> Result<ProxyConfig, RenderError> {
    let mut backends = Vec::with_capacity(spec.backends.len());
    let mut seen = std::collections::HashSet::new();
    for (index, backend) in spec.backends.iter().enumerate() {
        let mut name = backend_name(backend, index)?;
        if !seen.insert(name.clone()) {
            name = format!("{name}-{}", index + 1);
            seen.insert(name.clone());
        }
        backends.push(BackendConfig {
            name,
            url: backend_url(backend, namespace, index)?,
        });
    }
    let mut config = ProxyConfig::with_backends(backends);
    config.hosts = spec.hosts.clone();
    config.fallback_on = spec.fallback_on.clone();
    config.trusted_proxies = spec.trusted_proxies.clone();
    config.keyed_headers = spec.keyed_headers.clone();
    let cache = &spec.cache;
    config.cache = CacheConfig {
        default_ttl: duration("ttl", &cache.ttl)?,
        max_size: size("maxSize", &cache.max_size)?,
        max_object_size: size("maxObjectSize", &cache.max_object_size)?,
        max_fill_bytes: size("maxFillBytes", &cache.max_fill_bytes)?,
        not_found_ttl: duration("notFoundTtl", &cache.not_found_ttl)?,
        grace: duration("grace", &cache.grace)?,
        ..CacheConfig::default()
    };
    config
        .validate()
        .map_err(|e| RenderError::Refused(e.to_string()))?;
    Ok(config)
}

/// The config file's text.
pub fn config_yaml(config: &ProxyConfig) -> Result<String, RenderError> {
    config
        .to_yaml()
        .map_err(|e| RenderError::Refused(e.to_string()))
}

/// The sha256 of the config file, hex.
pub fn config_hash(yaml: &str) -> String {
    hex::encode(Sha256::digest(yaml.as_bytes()))
}

/// The memory a proxy's objects and fills may take: the cache, plus the fill budget beyond the
/// 64Mi the headroom of [`memory_limit`] already covers.
pub fn memory_budget(cache: &CacheConfig) -> u64 {
    cache
        .max_size
        .saturating_add(cache.max_fill_bytes.saturating_sub(MEMORY_HEADROOM))
}

/// The proxy's memory limit: the cache plus 64Mi of headroom.
pub fn memory_limit(cache_max_size: u64) -> Quantity {
    let bytes = cache_max_size.saturating_add(MEMORY_HEADROOM);
    Quantity(if bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    })
}

/// The labels that select a route's proxy pods.
pub fn selector_labels(route: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), CONTAINER.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), route.to_owned()),
    ])
}

fn labels(route: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(route);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels
}

/// The controller owner reference to a route (blocking its deletion until dependents go, when
/// foreground deletion is asked for). `None` if the route has no uid yet.
pub fn owner_reference(route: &FallbackRoute) -> Option<OwnerReference> {
    let mut owner = route.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// Who the rendered objects belong to.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub route: &'a str,
    pub namespace: &'a str,
    pub reference: OwnerReference,
}

impl Owner<'_> {
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels(self.route)),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The ConfigMap `<route>-proxy` holding the config file.
pub fn config_map(owner: &Owner<'_>, yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(proxy_name(owner.route)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml.to_owned())])),
        ..ConfigMap::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The Deployment `<route>-proxy`: `replicas` proxies reading the config from the ConfigMap;
/// the config hash in the pod template makes a config change roll out.
pub fn deployment(
    owner: &Owner<'_>,
    spec: &FallbackRouteSpec,
    hash: &str,
    cache_max_size: u64,
) -> Deployment {
    let name = proxy_name(owner.route);
    let pod = proxy_pod(proxy_container(spec, cache_max_size), &name);
    Deployment {
        metadata: owner.meta(name),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(owner.route)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(owner.route)),
                    annotations: Some(BTreeMap::from([(
                        HASH_ANNOTATION.to_owned(),
                        hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The proxy's container: its image and config argument, ports, probes, a memory limit sized
/// to the cache, and no privileges.
fn proxy_container(spec: &FallbackRouteSpec, cache_max_size: u64) -> Container {
    let memory = memory_limit(cache_max_size);
    Container {
        name: CONTAINER.to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".to_owned()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Serving on while the Service's endpoints drop the pod (kube-proxy on every node):
        // without it a rollout under load lost requests sent to a pod already stopping.
        lifecycle: Some(k8s_openapi::api::core::v1::Lifecycle {
            pre_stop: Some(k8s_openapi::api::core::v1::LifecycleHandler {
                sleep: Some(k8s_openapi::api::core::v1::SleepAction { seconds: 5 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), memory.clone()),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), memory)])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The pod around `container`: the ConfigMap `config_map` mounted read-only, no service
/// account token, non-root under the RuntimeDefault seccomp profile.
fn proxy_pod(container: Container, config_map: &str) -> PodSpec {
    PodSpec {
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.to_owned(),
                    path: CONFIG_KEY.to_owned(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // The proxy drains connections for up to 30 s on SIGTERM.
        termination_grace_period_seconds: Some(40),
        ..PodSpec::default()
    }
}

/// The Service `<route>`: port 80 to the proxies' `http` port.
pub fn service(owner: &Owner<'_>) -> Service {
    Service {
        metadata: owner.meta(owner.route.to_owned()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(owner.route)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// How far the proxy Deployment has rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub ready_replicas: i32,
    pub ready: bool,
    /// The Deployment controller has seen the current Deployment spec.
    pub observed: bool,
    pub message: String,
}

/// Reads a Deployment's status the way `kubectl rollout status` does: ready when the current
/// generation was observed and `desired` updated replicas are ready with no old ones left.
pub fn rollout(desired: i32, deployment: Option<&Deployment>) -> Rollout {
    let Some(dep) = deployment else {
        return Rollout {
            ready_replicas: 0,
            ready: false,
            observed: false,
            message: "the proxy Deployment does not exist yet".to_owned(),
        };
    };
    let st = dep.status.clone().unwrap_or_default();
    let ready_replicas = st.ready_replicas.unwrap_or(0);
    let observed = match (st.observed_generation, dep.metadata.generation) {
        (Some(seen), Some(current)) => seen >= current,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let (ready, message) = if !observed {
        (
            false,
            format!(
                "{ready_replicas} of {desired} replicas ready; the new spec is not yet seen by the Deployment controller"
            ),
        )
    } else if updated < desired {
        (
            false,
            format!("{updated} of {desired} replicas updated, {ready_replicas} ready"),
        )
    } else if total > updated {
        (
            false,
            format!("{} old replicas pending termination", total - updated),
        )
    } else if ready_replicas < desired {
        (
            false,
            format!("{ready_replicas} of {desired} replicas ready"),
        )
    } else {
        (
            true,
            format!("{ready_replicas} of {desired} replicas ready"),
        )
    };
    Rollout {
        ready_replicas,
        ready,
        observed,
        message,
    }
}

/// A Service backend that does not exist: (1-based backend index, Service name).
pub type MissingService = (usize, String);

/// The InvalidBackend message for missing Services.
pub fn missing_message(missing: &[MissingService], namespace: &str) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|(index, name)| {
            format!("backend {index}: Service \"{name}\" not found in namespace {namespace}")
        })
        .collect();
    format!("{}; requests to it fail until it exists", parts.join("; "))
}

/// What the rendering step produced, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Applied, with this config hash.
    Applied(String),
    /// Not applied (the running objects are left alone), for this reason.
    Refused(String),
    /// Not applied: the route names an image outside the allow-list.
    ImageNotAllowed(String),
    /// Not applied: an object of the proxy's name exists and the route does not own it.
    Conflict(String),
    /// Not applied: the controller may not read or write the proxy's objects in the route's
    /// namespace (its RBAC does not cover it: the chart's `controller.fallbackRoutes`).
    Forbidden(String),
}

/// Why a route in `namespace` is not rendered when the apiserver refused the controller
/// (`refused`: the apiserver's answer).
pub fn forbidden_message(namespace: &str, refused: &str) -> String {
    format!(
        "the controller may not create or change the proxy's ConfigMap, Deployment and Service in namespace {namespace}: FallbackRoutes are not enabled there (add it to the chart's controller.fallbackRoutes.namespaces); nothing rendered ({refused})"
    )
}

/// Refuses an image the route names that is neither the default proxy image nor allowed.
pub fn check_image(spec: &FallbackRouteSpec, allowed: &[String]) -> Result<(), String> {
    match spec.image.as_deref() {
        None => Ok(()),
        Some(image) if image == DEFAULT_IMAGE || allowed.iter().any(|a| a == image) => Ok(()),
        Some(image) => Err(format!(
            "image {image} is not allowed: the controller runs only {DEFAULT_IMAGE}{} (the chart's controller.allowedProxyImages)",
            if allowed.is_empty() {
                String::new()
            } else {
                format!(" and {}", allowed.join(", "))
            }
        )),
    }
}

/// Whether an existing object's owner references name the route (its uid).
pub fn owned_by_route(meta: &ObjectMeta, route_uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.uid == route_uid && r.kind == "FallbackRoute")
}

/// What one reconcile found out, for the status.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub backends: usize,
    pub namespace: &'a str,
    pub rendered: Rendered,
    pub missing: Vec<MissingService>,
    pub rollout: Rollout,
}

/// The status the route should have. Conditions keep their `lastTransitionTime` unless their
/// status flips; `configHash` stays as it was when the spec could not be rendered.
pub fn desired_status(
    current: &FallbackRouteStatus,
    observed: &Observed<'_>,
    now: Time,
) -> FallbackRouteStatus {
    let Observed {
        generation,
        backends,
        namespace,
        rendered,
        missing,
        rollout,
    } = observed;
    let (generation, backends) = (*generation, *backends);
    let refused = |reason, why: &String| Wanted {
        type_: READY,
        status: false,
        reason,
        message: why.clone(),
        observed_generation: generation,
    };
    let ready = match rendered {
        Rendered::Refused(why) => refused("InvalidSpec", why),
        Rendered::ImageNotAllowed(why) => refused("ImageNotAllowed", why),
        Rendered::Conflict(why) => refused("Conflict", why),
        Rendered::Forbidden(why) => refused("Forbidden", why),
        Rendered::Applied(_) => Wanted {
            type_: READY,
            status: rollout.ready,
            reason: if rollout.ready {
                "Available"
            } else {
                "Progressing"
            },
            message: rollout.message.clone(),
            observed_generation: generation,
        },
    };
    let invalid = if missing.is_empty() {
        Wanted {
            type_: INVALID_BACKEND,
            status: false,
            reason: "Resolved",
            message: format!("all {backends} backends resolved"),
            observed_generation: generation,
        }
    } else {
        Wanted {
            type_: INVALID_BACKEND,
            status: true,
            reason: "ServiceNotFound",
            message: missing_message(missing, namespace),
            observed_generation: generation,
        }
    };
    let conditions = conditions::set(&current.conditions, &ready, now.clone());
    let conditions = conditions::set(&conditions, &invalid, now);
    FallbackRouteStatus {
        observed_generation: generation,
        backends: i32::try_from(backends).unwrap_or(i32::MAX),
        ready_replicas: rollout.ready_replicas,
        config_hash: match rendered {
            Rendered::Applied(hash) => Some(hash.clone()),
            Rendered::Refused(_)
            | Rendered::ImageNotAllowed(_)
            | Rendered::Conflict(_)
            | Rendered::Forbidden(_) => current.config_hash.clone(),
        },
        conditions,
    }
}

/// When to look again: very soon while the Deployment controller has not seen the new spec,
/// soon while something is not right, rarely otherwise.
pub fn next_check(status: &FallbackRouteStatus, rollout: &Rollout) -> Action {
    let ready = conditions::is_true(&status.conditions, READY) == Some(true);
    let invalid = conditions::is_true(&status.conditions, INVALID_BACKEND) == Some(true);
    if !rollout.observed {
        Action::requeue(RECHECK_UNOBSERVED)
    } else if ready && !invalid {
        Action::requeue(RECHECK_READY)
    } else {
        Action::requeue(RECHECK_NOT_READY)
    }
}
