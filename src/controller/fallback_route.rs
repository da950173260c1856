//! The FallbackRoute reconciler: renders the proxy's config into a ConfigMap and runs the proxy
//! as a Deployment behind a Service, all owned by the route so that deleting it removes them.
//!
//! Rendering (the proxy config, its hash, the three manifests, the status) is pure and
//! unit-tested below; [`reconcile_route`] does the I/O: it checks that Service backends exist,
//! applies the objects with server-side apply, and writes status only when something a person
//! would see changed. There is no watch on Deployments: while the proxy is not ready (or a
//! backend is invalid) the route is looked at again every 30 s, otherwise every 5 min.

use std::collections::BTreeMap;
use std::sync::Arc;
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
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info, warn};
use zetaback_proxy::config::bytes_size;
use zetaback_proxy::{BackendConfig, CacheConfig, ProxyConfig};

use super::conditions::{self, Wanted, status_changed};
use super::{Context, Error, FIELD_MANAGER, Reconciled, status};
use crate::api::condition::READY;
use crate::api::fallback_route::Backend;
use crate::api::{DurationString, FallbackRoute, FallbackRouteSpec, FallbackRouteStatus};

/// The proxy image used when the route names none.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/zetaback/zetaback-proxy:",
    env!("CARGO_PKG_VERSION")
);
/// The proxy container's name.
pub const CONTAINER: &str = "zetaback-proxy";
/// Where the config file is mounted in the proxy container.
pub const CONFIG_DIR: &str = "/etc/zetaback-proxy";
/// The ConfigMap key (and file name) of the proxy config.
pub const CONFIG_KEY: &str = "config.yaml";
/// The pod-template annotation carrying the config's sha256, so a config change rolls out.
pub const HASH_ANNOTATION: &str = "zetaback.io/config-hash";
/// The proxy's HTTP port (container port `http`).
pub const HTTP_PORT: i32 = 8080;
/// The proxy's metrics and health port (container port `metrics`).
pub const METRICS_PORT: i32 = 9090;
/// The port the route's Service exposes.
pub const SERVICE_PORT: i32 = 80;
/// Condition: a backend cannot be resolved (a Service that does not exist).
pub const INVALID_BACKEND: &str = "InvalidBackend";

/// Memory beyond the cache the proxy may use (connections, buffers, owner cache).
const MEMORY_HEADROOM: u64 = 64 << 20;
const MI: u64 = 1 << 20;
const RECHECK_UNOBSERVED: Duration = Duration::from_secs(3);
const RECHECK_NOT_READY: Duration = Duration::from_secs(30);
const RECHECK_READY: Duration = Duration::from_secs(300);

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
    let memory = memory_limit(cache_max_size);
    let container = Container {
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
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
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
    };
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
            Rendered::Refused(_) | Rendered::ImageNotAllowed(_) | Rendered::Conflict(_) => {
                current.config_hash.clone()
            }
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

// ---------------------------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------------------------

impl Reconciled for FallbackRoute {
    const KIND: &'static str = "FallbackRoute";
    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        let span = tracing::info_span!(
            "fallback_route",
            generation = obj.meta().generation,
            backends = obj.spec.backends.len()
        );
        reconcile_route(obj, ctx).instrument(span).await
    }
}

/// The Service backends that do not exist.
async fn missing_services(
    ctx: &Context,
    namespace: &str,
    spec: &FallbackRouteSpec,
) -> Result<Vec<MissingService>, Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let mut missing = Vec::new();
    for (index, backend) in spec.backends.iter().enumerate() {
        let Some(svc) = &backend.service else {
            continue;
        };
        let found = api
            .get_metadata_opt(svc.name.as_str())
            .await
            .map_err(|source| Error::Read {
                what: format!("Service {namespace}/{}", svc.name),
                source,
            })?;
        if found.is_none() {
            missing.push((index + 1, svc.name.to_string()));
        }
    }
    Ok(missing)
}

/// The objects the route `name` renders (ConfigMap and Deployment `<name>-proxy`, Service
/// `<name>`) that exist and that the route does not own: the controller never takes them over.
async fn foreign_objects(
    ctx: &Context,
    namespace: &str,
    name: &str,
    route_uid: &str,
) -> Result<Vec<String>, Error> {
    async fn foreign<K>(
        ctx: &Context,
        namespace: &str,
        name: &str,
        route_uid: &str,
    ) -> Result<Option<String>, Error>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
        let found = api
            .get_metadata_opt(name)
            .await
            .map_err(|source| Error::Read {
                what: format!("{} {namespace}/{name}", K::kind(&())),
                source,
            })?;
        Ok(found
            .filter(|m| !owned_by_route(&m.metadata, route_uid))
            .map(|_| format!("{} {namespace}/{name}", K::kind(&()))))
    }
    let proxy = proxy_name(name);
    let found = [
        foreign::<ConfigMap>(ctx, namespace, &proxy, route_uid).await?,
        foreign::<Deployment>(ctx, namespace, &proxy, route_uid).await?,
        foreign::<Service>(ctx, namespace, name, route_uid).await?,
    ];
    Ok(found.into_iter().flatten().collect())
}

/// Server-side applies `obj` (forcing ownership of the fields it sets: only ever on objects
/// the route owns, see [`foreign_objects`]) and returns the result.
async fn apply<K>(ctx: &Context, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Write {
        what: format!("{} {namespace}/{name}", K::kind(&())),
        source,
    })
}

/// Brings the ConfigMap, Deployment and Service of `route` in line with its spec and records
/// the outcome in its status.
pub async fn reconcile_route(
    route: Arc<FallbackRoute>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    const KIND: &str = FallbackRoute::KIND;
    let name = route.meta().name.clone().ok_or(Error::MissingMeta(KIND))?;
    let namespace = route
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMeta(KIND))?;
    let reference = owner_reference(&route).ok_or(Error::MissingMeta(KIND))?;
    let owner = Owner {
        route: &name,
        namespace: &namespace,
        reference,
    };
    let missing = missing_services(&ctx, &namespace, &route.spec).await?;
    if !missing.is_empty() {
        debug!(?missing, "Service backends not found");
    }

    let rendered = render_config(&route.spec, &namespace)
        .and_then(|config| Ok((config_yaml(&config)?, config.cache.max_size)));
    let proxy = proxy_name(&name);
    let uid = route.meta().uid.clone().unwrap_or_default();
    let blocked = match (
        &rendered,
        check_image(&route.spec, &ctx.allowed_proxy_images),
    ) {
        (Err(_), _) => None,
        (Ok(_), Err(why)) => Some(Rendered::ImageNotAllowed(why)),
        (Ok(_), Ok(())) => {
            let foreign = foreign_objects(&ctx, &namespace, &name, &uid).await?;
            (!foreign.is_empty()).then(|| {
                Rendered::Conflict(format!(
                    "{} exist(s) and FallbackRoute {name} does not own it: left as it is (rename or delete it, or the route)",
                    foreign.join(", ")
                ))
            })
        }
    };
    let (rendered, deployment) = match (rendered, blocked) {
        (_, Some(refusal)) => {
            warn!(
                ?refusal,
                "route not rendered; objects it does not own are left alone"
            );
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            let dep = api
                .get_opt(&proxy)
                .await
                .map_err(|source| Error::Read {
                    what: format!("Deployment {namespace}/{proxy}"),
                    source,
                })?
                .filter(|d| owned_by_route(&d.metadata, &uid));
            (refusal, dep)
        }
        (Ok((yaml, max_size)), None) => {
            let hash = config_hash(&yaml);
            apply(&ctx, &namespace, &config_map(&owner, &yaml)).await?;
            let dep = apply(
                &ctx,
                &namespace,
                &deployment(&owner, &route.spec, &hash, max_size),
            )
            .await?;
            apply(&ctx, &namespace, &service(&owner)).await?;
            (Rendered::Applied(hash), Some(dep))
        }
        (Err(why), None) => {
            warn!(error = %why, "spec not rendered; the running proxy is left as it is");
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            let dep = api.get_opt(&proxy).await.map_err(|source| Error::Read {
                what: format!("Deployment {namespace}/{proxy}"),
                source,
            })?;
            (Rendered::Refused(why.to_string()), dep)
        }
    };

    let current = route.status.clone().unwrap_or_default();
    let observed = Observed {
        generation: route.meta().generation,
        backends: route.spec.backends.len(),
        namespace: &namespace,
        rendered,
        missing,
        rollout: rollout(route.spec.replicas, deployment.as_ref()),
    };
    let desired = desired_status(&current, &observed, Time(jiff::Timestamp::now()));
    if status_changed(&current, &desired) {
        status::apply(&ctx, route.as_ref(), KIND, &desired).await?;
        info!(
            ready_replicas = desired.ready_replicas,
            config_hash = desired.config_hash.as_deref().unwrap_or(""),
            "status updated"
        );
    }
    Ok(next_check(&desired, &observed.rollout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn spec(value: serde_json::Value) -> FallbackRouteSpec {
        serde_json::from_value(value).expect("spec")
    }

    fn two_backends() -> FallbackRouteSpec {
        spec(serde_json::json!({
            "hosts": ["assets.example.com"],
            "backends": [
                {"service": {"name": "web-1", "port": 80}},
                {"url": "http://10.0.0.9:8080"}
            ],
            "cache": {"ttl": "5m", "maxSize": "256Mi", "maxObjectSize": "8Mi", "notFoundTtl": "10s"},
            "replicas": 3
        }))
    }

    fn owner() -> Owner<'static> {
        Owner {
            route: "assets",
            namespace: "shop",
            reference: OwnerReference {
                api_version: "zetaback.io/v1alpha1".into(),
                kind: "FallbackRoute".into(),
                name: "assets".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("time"))
    }

    #[test]
    fn only_the_default_and_allowed_images_run() {
        let mut spec = two_backends();
        assert_eq!(check_image(&spec, &[]), Ok(()), "no image: the default");
        spec.image = Some(DEFAULT_IMAGE.into());
        assert_eq!(check_image(&spec, &[]), Ok(()));
        spec.image = Some("registry.local/proxy:dev".into());
        let why = check_image(&spec, &[]).expect_err("not allowed");
        assert!(why.contains("registry.local/proxy:dev"), "{why}");
        let allowed = vec!["registry.local/proxy:dev".to_owned()];
        assert_eq!(check_image(&spec, &allowed), Ok(()));
        spec.image = Some("registry.local/proxy:dev2".into());
        assert!(check_image(&spec, &allowed).is_err(), "exact names only");
    }

    #[test]
    fn only_an_owner_reference_with_the_routes_uid_is_ownership() {
        let owner = owner();
        let uid = owner.reference.uid.clone();
        let ours = config_map(&owner, "x").metadata;
        assert!(owned_by_route(&ours, &uid));
        assert!(!owned_by_route(&ours, "another-uid"));
        assert!(!owned_by_route(&ObjectMeta::default(), &uid));
    }

    #[test]
    fn config_resolves_services_keeps_order_and_converts_units() {
        let config = render_config(&two_backends(), "shop").expect("renders");
        let urls: Vec<_> = config.backends.iter().map(|b| b.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://web-1.shop.svc.cluster.local:80",
                "http://10.0.0.9:8080"
            ]
        );
        let names: Vec<_> = config.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["web-1", "10.0.0.9:8080"]);
        assert_eq!(config.hosts, ["assets.example.com"]);
        assert_eq!(config.fallback_on, [404]);
        assert_eq!(config.cache.max_size, 256 << 20);
        assert_eq!(config.cache.max_object_size, 8 << 20);
        assert_eq!(config.cache.default_ttl, Duration::from_secs(300));
        assert_eq!(config.cache.not_found_ttl, Duration::from_secs(10));
        assert_eq!(config.cache.grace, Duration::from_secs(30));
        // The proxy reads back exactly what was rendered.
        let yaml = config_yaml(&config).expect("yaml");
        assert_eq!(
            ProxyConfig::from_yaml(&yaml).expect("proxy accepts"),
            config
        );
    }

    #[test]
    fn forwarding_settings_reach_the_proxy_and_bad_ones_are_refused() {
        let mut s = two_backends();
        s.trusted_proxies = vec!["10.244.0.0/16".into(), "::1".into()];
        s.keyed_headers = vec!["X-Forwarded-Proto".into()];
        let config = render_config(&s, "shop").expect("renders");
        assert_eq!(config.trusted_proxies, ["10.244.0.0/16", "::1"]);
        assert_eq!(config.keyed_headers, ["X-Forwarded-Proto"]);
        let yaml = config_yaml(&config).expect("yaml");
        assert_eq!(
            ProxyConfig::from_yaml(&yaml).expect("proxy accepts"),
            config
        );
        // What admission missed (an older CRD), the proxy's own validation still refuses.
        s.keyed_headers = vec!["Transfer-Encoding".into()];
        let why = render_config(&s, "shop")
            .expect_err("framing header")
            .to_string();
        assert!(why.contains("Transfer-Encoding"), "{why}");
        s.keyed_headers.clear();
        s.trusted_proxies = vec!["not-an-ip".into()];
        let why = render_config(&s, "shop").expect_err("bad peer").to_string();
        assert!(why.contains("not-an-ip"), "{why}");
    }

    #[test]
    fn duplicate_backend_names_are_made_unique() {
        let s = spec(serde_json::json!({"backends": [
            {"url": "http://a:1/x"}, {"url": "http://a:1/y"},
            {"service": {"name": "web", "port": 80}}, {"url": "http://web/z"}
        ]}));
        let config = render_config(&s, "ns").expect("renders");
        let names: Vec<_> = config.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a:1", "a:1-2", "web", "web-4"]);
    }

    #[test]
    fn specs_the_proxy_would_refuse_are_reported() {
        let mut s = two_backends();
        s.cache.max_object_size = "512Mi".into();
        assert!(matches!(
            render_config(&s, "ns"),
            Err(RenderError::Refused(m)) if m.contains("maxObjectSize")
        ));
        let mut s = two_backends();
        s.cache.max_size = "lots".into();
        assert_eq!(
            render_config(&s, "ns"),
            Err(RenderError::Size {
                field: "maxSize",
                value: "lots".into()
            })
        );
        let mut s = two_backends();
        s.backends[0].url = Some("http://x".into());
        assert_eq!(
            render_config(&s, "ns"),
            Err(RenderError::Backend { index: 1 })
        );
    }

    #[test]
    fn hash_changes_with_the_config() {
        let a = config_yaml(&render_config(&two_backends(), "ns").expect("a")).expect("yaml");
        let mut s = two_backends();
        s.backends.push(
            spec(serde_json::json!({"backends": [{"url": "http://10.0.0.10:80"}]}))
                .backends
                .remove(0),
        );
        let b = config_yaml(&render_config(&s, "ns").expect("b")).expect("yaml");
        assert_eq!(config_hash(&a), config_hash(&a));
        assert_ne!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 64);
    }

    #[test]
    fn memory_limit_is_cache_plus_headroom() {
        assert_eq!(memory_limit(256 << 20), Quantity("320Mi".into()));
        assert_eq!(
            memory_limit(1000),
            Quantity((1000 + (64 << 20)).to_string())
        );
    }

    #[test]
    fn deployment_runs_the_proxy_with_the_config_and_hash() {
        let dep = deployment(&owner(), &two_backends(), "abc", 256 << 20);
        assert_eq!(dep.metadata.name.as_deref(), Some("assets-proxy"));
        let owners = dep.metadata.owner_references.clone().expect("owners");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(owners[0].block_owner_deletion, Some(true));
        let spec = dep.spec;
        assert_eq!(spec.replicas, Some(3));
        let template = spec.template.metadata.expect("template meta");
        assert_eq!(
            template.annotations.expect("annotations")[HASH_ANNOTATION],
            "abc"
        );
        // The selector matches the pods.
        let selector = spec.selector.match_labels.expect("selector");
        let pod_labels = template.labels.expect("labels");
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.name, CONTAINER);
        assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(
            c.args.clone().expect("args"),
            ["--config", "/etc/zetaback-proxy/config.yaml"]
        );
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(ports, [("http".into(), 8080), ("metrics".into(), 9090)]);
        let probe_path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .map(|h| (h.path.clone().unwrap_or_default(), h.port.clone()))
        };
        let metrics = IntOrString::String("metrics".into());
        assert_eq!(
            probe_path(&c.readiness_probe),
            Some(("/readyz".into(), metrics.clone()))
        );
        assert_eq!(
            probe_path(&c.liveness_probe),
            Some(("/healthz".into(), metrics))
        );
        let resources = c.resources.clone().expect("resources");
        assert_eq!(
            resources.limits.expect("limits")["memory"],
            Quantity("320Mi".into())
        );
        assert!(resources.requests.expect("requests").contains_key("cpu"));
        let volume = &pod.volumes.expect("volumes")[0];
        assert_eq!(
            volume.config_map.as_ref().map(|c| c.name.as_str()),
            Some("assets-proxy")
        );
        let mut custom = two_backends();
        custom.image = Some("registry.local/proxy:dev".into());
        let dep = deployment(&owner(), &custom, "abc", 1 << 20);
        let image = dep.spec.template.spec.expect("pod").containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("registry.local/proxy:dev"));
    }

    #[test]
    fn service_and_config_map_are_owned_and_named() {
        let svc = service(&owner());
        assert_eq!(svc.metadata.name.as_deref(), Some("assets"));
        let spec = svc.spec.expect("spec");
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(spec.selector, Some(selector_labels("assets")));
        let cm = config_map(&owner(), "x: 1\n");
        assert_eq!(cm.metadata.name.as_deref(), Some("assets-proxy"));
        assert_eq!(cm.data.expect("data")[CONFIG_KEY], "x: 1\n");
        assert_eq!(
            cm.metadata.owner_references.expect("owners")[0].uid,
            "uid-1"
        );
    }

    fn obs(
        generation: Option<i64>,
        rendered: &Rendered,
        missing: &[MissingService],
        rollout: &Rollout,
    ) -> Observed<'static> {
        Observed {
            generation,
            backends: 2,
            namespace: "ns",
            rendered: rendered.clone(),
            missing: missing.to_vec(),
            rollout: rollout.clone(),
        }
    }

    fn dep_with(generation: i64, st: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(st),
            ..Deployment::default()
        }
    }

    #[test]
    fn rollout_reads_the_deployment_status() {
        assert!(!rollout(2, None).ready);
        let pending = dep_with(
            1,
            DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(2),
                updated_replicas: Some(2),
                ..DeploymentStatus::default()
            },
        );
        let r = rollout(2, Some(&pending));
        assert_eq!((r.ready, r.ready_replicas), (false, 0));
        assert_eq!(r.message, "0 of 2 replicas ready");
        let unseen = dep_with(
            2,
            DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(2),
                updated_replicas: Some(2),
                ready_replicas: Some(2),
                ..DeploymentStatus::default()
            },
        );
        assert!(!rollout(2, Some(&unseen)).ready);
        let rolling = dep_with(
            2,
            DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(3),
                updated_replicas: Some(2),
                ready_replicas: Some(3),
                ..DeploymentStatus::default()
            },
        );
        assert!(!rollout(2, Some(&rolling)).ready);
        let done = dep_with(
            2,
            DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(2),
                updated_replicas: Some(2),
                ready_replicas: Some(2),
                ..DeploymentStatus::default()
            },
        );
        let r = rollout(2, Some(&done));
        assert_eq!((r.ready, r.ready_replicas), (true, 2));
    }

    #[test]
    fn status_reports_progress_invalid_backends_and_changes_only_when_meaningful() {
        let progressing = Rollout {
            ready_replicas: 0,
            ready: false,
            observed: true,
            message: "0 of 2 replicas ready".into(),
        };
        let applied = Rendered::Applied("h1".into());
        let missing = vec![(1, "web-9".to_owned())];
        let empty = FallbackRouteStatus::default();
        let s1 = desired_status(
            &empty,
            &obs(Some(1), &applied, &missing, &progressing),
            t(10),
        );
        assert_eq!(s1.observed_generation, Some(1));
        assert_eq!(s1.backends, 2);
        assert_eq!(s1.config_hash.as_deref(), Some("h1"));
        let ready = s1
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Progressing")
        );
        let invalid = s1
            .conditions
            .iter()
            .find(|c| c.type_ == INVALID_BACKEND)
            .expect("InvalidBackend");
        assert_eq!(invalid.status, "True");
        assert!(invalid.message.contains("\"web-9\""), "{}", invalid.message);
        assert!(status_changed(&empty, &s1));
        // The same facts later: no write.
        let s2 = desired_status(&s1, &obs(Some(1), &applied, &missing, &progressing), t(99));
        assert!(!status_changed(&s1, &s2));
        // The Service appears: a change; the Ready condition keeps its transition time.
        let s3 = desired_status(&s2, &obs(Some(1), &applied, &[], &progressing), t(120));
        assert!(status_changed(&s2, &s3));
        assert_eq!(
            conditions::is_true(&s3.conditions, INVALID_BACKEND),
            Some(false)
        );
        let ready3 = s3
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready3.last_transition_time, t(10));
        assert_eq!(
            next_check(&s3, &progressing),
            Action::requeue(RECHECK_NOT_READY)
        );
        let unobserved = rollout(2, None);
        assert_eq!(
            next_check(&s3, &unobserved),
            Action::requeue(RECHECK_UNOBSERVED)
        );
        // Refused: Ready False InvalidSpec, the old hash kept.
        let refused = Rendered::Refused("bad".into());
        let s4 = desired_status(&s3, &obs(Some(2), &refused, &[], &progressing), t(130));
        assert_eq!(s4.config_hash.as_deref(), Some("h1"));
        let ready4 = s4
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(
            (ready4.reason.as_str(), ready4.message.as_str()),
            ("InvalidSpec", "bad")
        );
        // Rolled out.
        let done = Rollout {
            ready_replicas: 2,
            ready: true,
            observed: true,
            message: "2 of 2 replicas ready".into(),
        };
        let s5 = desired_status(&s3, &obs(Some(1), &applied, &[], &done), t(140));
        assert_eq!(conditions::is_true(&s5.conditions, READY), Some(true));
        assert_eq!(s5.ready_replicas, 2);
        assert_eq!(next_check(&s5, &done), Action::requeue(RECHECK_READY));
    }
}
