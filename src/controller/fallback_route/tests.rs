//! The FallbackRoute reconciler's tests: rendering, roll-out, status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use zetaback_proxy::ProxyConfig;

use super::render::{RECHECK_NOT_READY, RECHECK_READY, RECHECK_UNOBSERVED};
use super::*;
use crate::api::FallbackRouteStatus;
use crate::api::condition::READY;
use crate::controller::conditions;
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
fn max_fill_bytes_is_rendered_and_sizes_the_memory_limit() {
    // Not given: the proxy's default, and the limit of a route without it.
    let config = render_config(&two_backends(), "shop").expect("renders");
    assert_eq!(config.cache.max_fill_bytes, 64 << 20);
    assert_eq!(memory_budget(&config.cache), 256 << 20);
    let mut s = two_backends();
    s.cache.max_fill_bytes = "200Mi".into();
    let config = render_config(&s, "shop").expect("renders");
    assert_eq!(config.cache.max_fill_bytes, 200 << 20);
    // The proxy reads the rendered file back with the same budget.
    let yaml = config_yaml(&config).expect("yaml");
    let back = ProxyConfig::from_yaml(&yaml).expect("the proxy parses it");
    assert_eq!(back.cache.max_fill_bytes, 200 << 20);
    assert_eq!(
        memory_limit(memory_budget(&config.cache)),
        Quantity("456Mi".into()),
        "256Mi cache + 64Mi headroom + the 136Mi of fills beyond it"
    );
    let mut s = two_backends();
    s.cache.max_fill_bytes = "64MB".into();
    assert!(matches!(
        render_config(&s, "ns"),
        Err(RenderError::Size {
            field: "maxFillBytes",
            ..
        })
    ));
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

#[test]
fn a_route_where_the_controller_has_no_rights_is_reported_forbidden_and_keeps_its_hash() {
    let applied = Rendered::Applied("h1".into());
    let done = Rollout {
        ready_replicas: 2,
        ready: true,
        observed: true,
        message: "2 of 2 replicas ready".into(),
    };
    let s1 = desired_status(
        &FallbackRouteStatus::default(),
        &obs(Some(1), &applied, &[], &done),
        t(10),
    );
    let why = forbidden_message("team-a", "deployments.apps is forbidden");
    let forbidden = Rendered::Forbidden(why.clone());
    let s2 = desired_status(
        &s1,
        &obs(Some(1), &forbidden, &[], &rollout(2, None)),
        t(20),
    );
    assert!(status_changed(&s1, &s2));
    assert_eq!(s2.config_hash.as_deref(), Some("h1"));
    let ready = s2
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .expect("Ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("False", "Forbidden", why.as_str())
    );
    assert!(why.contains("namespace team-a"), "{why}");
    assert!(
        why.contains("controller.fallbackRoutes.namespaces"),
        "{why}"
    );
    assert!(why.contains("deployments.apps is forbidden"), "{why}");
}
