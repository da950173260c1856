//! The FallbackRoute reconciler: renders the proxy's config into a ConfigMap and runs the proxy
//! as a Deployment behind a Service, all owned by the route so that deleting it removes them.
//!
//! Rendering (the proxy config, its hash, the three manifests, the status) is pure and
//! unit-tested (`render.rs`, `tests.rs`); [`reconcile_route`] does the I/O: it checks that
//! Service backends exist, applies the objects with server-side apply, and writes status only
//! when something a person would see changed. There is no watch on Deployments: while the proxy
//! is not ready (or a backend is invalid) the route is looked at again every 30 s, otherwise
//! every 5 min.
//!
//! Files: `render.rs` (everything pure), this file (the I/O), `tests.rs`.

mod render;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use tracing::{Instrument, debug, info, warn};

use super::conditions::status_changed;
use super::{Context, Error, FIELD_MANAGER, Reconciled, status};
use crate::api::{FallbackRoute, FallbackRouteSpec};

pub use render::*;

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
/// the outcome in its status. A route in a namespace where the controller's RBAC does not let
/// it read or write those objects (the chart binds them only in the namespaces of
/// `controller.fallbackRoutes`) is reported `Ready=False`, reason `Forbidden`.
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
    let (missing, rendered, deployment) = match render_objects(&ctx, &route, &owner).await {
        Ok(found) => found,
        Err(e) if e.is_forbidden() => {
            warn!(error = %e, "the controller may not render routes in this namespace");
            let refused = match &e {
                Error::Read {
                    source: kube::Error::Api(s),
                    ..
                }
                | Error::Write {
                    source: kube::Error::Api(s),
                    ..
                } => s.message.clone(),
                other => other.to_string(),
            };
            let why = forbidden_message(&namespace, &refused);
            (Vec::new(), Rendered::Forbidden(why), None)
        }
        Err(e) => return Err(e),
    };
    let forbidden = matches!(rendered, Rendered::Forbidden(_));

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
    if forbidden {
        // Nothing will appear to wait for: look again as for any route that is not ready.
        return Ok(Action::requeue(render::RECHECK_NOT_READY));
    }
    Ok(next_check(&desired, &observed.rollout))
}

/// Looks at what exists of the route's objects and applies them when nothing stands in the
/// way: (the Service backends not found, what was rendered, the route's proxy Deployment).
async fn render_objects(
    ctx: &Context,
    route: &FallbackRoute,
    owner: &Owner<'_>,
) -> Result<(Vec<MissingService>, Rendered, Option<Deployment>), Error> {
    let (name, namespace) = (owner.route, owner.namespace);
    let missing = missing_services(ctx, namespace, &route.spec).await?;
    if !missing.is_empty() {
        debug!(?missing, "Service backends not found");
    }

    let rendered = render_config(&route.spec, namespace)
        .and_then(|config| Ok((config_yaml(&config)?, memory_budget(&config.cache))));
    let proxy = proxy_name(name);
    let uid = route.meta().uid.clone().unwrap_or_default();
    let blocked = match (
        &rendered,
        check_image(&route.spec, &ctx.allowed_proxy_images),
    ) {
        (Err(_), _) => None,
        (Ok(_), Err(why)) => Some(Rendered::ImageNotAllowed(why)),
        (Ok(_), Ok(())) => {
            let foreign = foreign_objects(ctx, namespace, name, &uid).await?;
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
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
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
            apply(ctx, namespace, &config_map(owner, &yaml)).await?;
            let dep = apply(
                ctx,
                namespace,
                &deployment(owner, &route.spec, &hash, max_size),
            )
            .await?;
            apply(ctx, namespace, &service(owner)).await?;
            (Rendered::Applied(hash), Some(dep))
        }
        (Err(why), None) => {
            warn!(error = %why, "spec not rendered; the running proxy is left as it is");
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            let dep = api.get_opt(&proxy).await.map_err(|source| Error::Read {
                what: format!("Deployment {namespace}/{proxy}"),
                source,
            })?;
            (Rendered::Refused(why.to_string()), dep)
        }
    };
    Ok((missing, rendered, deployment))
}

#[cfg(test)]
mod tests;
