//! The FallbackRoute reconciler against the real apiserver and kube-controller-manager: the
//! proxy config is rendered into a ConfigMap (Service backends resolved to cluster DNS names,
//! order kept), the proxy runs as a Deployment behind a Service, a spec change rolls the
//! Deployment (new config hash, new ReplicaSet), a missing Service backend is reported, and
//! deleting the route lets the garbage collector remove everything it owned.
//!
//! There is no kubelet, so proxy pods stay Pending: Ready=False/Progressing is the honest state.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use zetaback::api::{FallbackRoute, FallbackRouteSpec};
use zetaback_e2e::controller::InProcessController;
use zetaback_e2e::{Env, eventually, free_port};

fn start_controller(client: kube::Client, ns: &str) -> InProcessController {
    let options = zetaback::controller::Options {
        watch_namespace: Some(ns.to_owned()),
        ..zetaback::controller::Options::new(ns, "only", ([127, 0, 0, 1], free_port()).into())
    };
    InProcessController::start(client, options)
}

fn route(name: &str, backends: serde_json::Value) -> FallbackRoute {
    let spec: FallbackRouteSpec = serde_json::from_value(serde_json::json!({
        "hosts": ["assets.example.com"],
        "backends": backends,
        "cache": {"maxSize": "256Mi"},
        "replicas": 2
    }))
    .expect("spec");
    FallbackRoute::new(name, spec)
}

async fn create_service(client: &kube::Client, ns: &str, name: &str) {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create Service");
}

/// The backend URLs in the rendered config file, in order.
fn config_urls(cm: &ConfigMap) -> Vec<String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml in the ConfigMap");
    let config: serde_yaml::Value = serde_yaml::from_str(text).expect("config is YAML");
    config["backends"]
        .as_sequence()
        .expect("backends list")
        .iter()
        .map(|b| b["url"].as_str().expect("url").to_owned())
        .collect()
}

fn config_value(cm: &ConfigMap) -> serde_yaml::Value {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml");
    serde_yaml::from_str(text).expect("yaml")
}

fn hash_annotation(dep: &Deployment) -> Option<String> {
    dep.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("zetaback.io/config-hash")
        .cloned()
}

/// (status, reason, message) of condition `type_` once `observedGeneration` reaches `generation`.
async fn condition(
    api: &Api<FallbackRoute>,
    name: &str,
    generation: i64,
    type_: &str,
) -> Option<(String, String, String)> {
    let r = api.get(name).await.ok()?;
    let st = r.status?;
    if st.observed_generation? < generation {
        return None;
    }
    let c = st.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn assert_owned_by(meta: &kube::api::ObjectMeta, owner: &FallbackRoute, what: &str) {
    let refs = meta.owner_references.clone().unwrap_or_default();
    assert_eq!(refs.len(), 1, "{what}: one owner: {refs:?}");
    let r = &refs[0];
    assert_eq!(
        (r.kind.as_str(), r.name.as_str(), r.api_version.as_str()),
        (
            "FallbackRoute",
            owner.meta().name.as_deref().unwrap_or(""),
            "zetaback.io/v1alpha1"
        ),
        "{what}"
    );
    assert_eq!(Some(&r.uid), owner.meta().uid.as_ref(), "{what}: owner uid");
    assert_eq!(r.controller, Some(true), "{what}: controller");
    assert_eq!(
        r.block_owner_deletion,
        Some(true),
        "{what}: blockOwnerDeletion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_the_proxy_and_rolls_it_on_change() {
    let env = Env::get();
    let ns = env.namespace("fr-render");
    let client = env.client().await;
    create_service(&client, &ns, "web-1").await;
    let ctl = start_controller(client.clone(), &ns);
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);

    let created = routes
        .create(
            &PostParams::default(),
            &route(
                "assets",
                serde_json::json!([
                    {"service": {"name": "web-1", "port": 80}},
                    {"url": "http://10.0.0.9:8080"}
                ]),
            ),
        )
        .await
        .expect("create route");
    let (status, reason, message) = eventually(
        "Ready condition for generation 1",
        Duration::from_secs(60),
        || condition(&routes, "assets", 1, "Ready"),
    )
    .await;
    println!("Ready: {status} {reason}: {message}");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Progressing"),
        "no kubelet: the proxy pods cannot become ready"
    );
    let (status, reason, message) = condition(&routes, "assets", 1, "InvalidBackend")
        .await
        .expect("InvalidBackend condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Resolved"),
        "{message}"
    );
    let st = routes
        .get("assets")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!((st.backends, st.ready_replicas), (2, 0));
    let hash1 = st.config_hash.clone().expect("configHash");
    assert_eq!(hash1.len(), 64, "a sha256: {hash1}");

    // The ConfigMap: both backends resolved, order kept, the rest of the spec carried over.
    let cm = config_maps.get("assets-proxy").await.expect("ConfigMap");
    assert_eq!(
        config_urls(&cm),
        [
            format!("http://web-1.{ns}.svc.cluster.local:80"),
            "http://10.0.0.9:8080".to_owned()
        ]
    );
    let config = config_value(&cm);
    assert_eq!(config["hosts"][0].as_str(), Some("assets.example.com"));
    assert_eq!(config["fallbackOn"][0].as_u64(), Some(404));
    assert_eq!(config["cache"]["maxSize"].as_u64(), Some(256 << 20));
    assert_owned_by(&cm.metadata, &created, "ConfigMap");

    // The Deployment: replicas, the config hash in the pod template, the owner.
    let dep = deployments.get("assets-proxy").await.expect("Deployment");
    assert_eq!(dep.spec.replicas, Some(2));
    assert_eq!(hash_annotation(&dep).as_deref(), Some(hash1.as_str()));
    assert_owned_by(&dep.metadata, &created, "Deployment");
    let pod = dep.spec.template.spec.clone().expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(container.name, "zetaback-proxy");
    assert_eq!(
        container.args.clone().unwrap_or_default(),
        ["--config", "/etc/zetaback-proxy/config.yaml"]
    );
    let limits = container
        .resources
        .clone()
        .and_then(|r| r.limits)
        .expect("limits");
    assert_eq!(limits["memory"].0, "320Mi", "cache 256Mi + 64Mi");

    // The Service: port 80 to the proxies' http port, selecting the proxy pods.
    let svc = services.get("assets").await.expect("Service");
    assert_owned_by(&svc.metadata, &created, "Service");
    let svc_spec = svc.spec.expect("service spec");
    let port = &svc_spec.ports.expect("ports")[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
    );
    let pod_labels = dep
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("pod labels");
    for (k, v) in svc_spec.selector.expect("selector") {
        assert_eq!(pod_labels.get(&k), Some(&v), "selector {k}");
    }

    // The real Deployment controller acts on it.
    eventually("a ReplicaSet", Duration::from_secs(60), || async {
        let list = replica_sets.list(&ListParams::default()).await.ok()?;
        (list.items.len() == 1).then_some(())
    })
    .await;

    // Once the Deployment controller has seen it, the status says what is missing: ready pods.
    let settled = eventually(
        "Ready message from the Deployment's status",
        Duration::from_secs(30),
        || async {
            condition(&routes, "assets", 1, "Ready")
                .await
                .filter(|c| c.2 == "0 of 2 replicas ready")
        },
    )
    .await;
    assert_eq!(
        (settled.0.as_str(), settled.1.as_str()),
        ("False", "Progressing")
    );

    // A spec change (one more backend): a new config, a new hash, a new rollout.
    routes
        .patch(
            "assets",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"backends": [
                {"service": {"name": "web-1", "port": 80}},
                {"url": "http://10.0.0.9:8080"},
                {"url": "http://10.0.0.10:8080"}
            ]}})),
        )
        .await
        .expect("patch route");
    eventually("observedGeneration 2", Duration::from_secs(60), || {
        condition(&routes, "assets", 2, "Ready")
    })
    .await;
    let st = routes
        .get("assets")
        .await
        .expect("get")
        .status
        .expect("status");
    let hash2 = st.config_hash.clone().expect("configHash");
    assert_ne!(hash1, hash2, "the config hash changes with the config");
    assert_eq!(st.backends, 3);
    let dep = deployments.get("assets-proxy").await.expect("Deployment");
    assert_eq!(hash_annotation(&dep).as_deref(), Some(hash2.as_str()));
    let cm = config_maps.get("assets-proxy").await.expect("ConfigMap");
    assert_eq!(
        config_urls(&cm),
        [
            format!("http://web-1.{ns}.svc.cluster.local:80"),
            "http://10.0.0.9:8080".to_owned(),
            "http://10.0.0.10:8080".to_owned()
        ]
    );
    let hash2_rs = hash2.clone();
    let rs_count = eventually(
        "a second ReplicaSet carrying the new hash",
        Duration::from_secs(60),
        || {
            let hash = hash2_rs.clone();
            let replica_sets = replica_sets.clone();
            async move {
                let list = replica_sets.list(&ListParams::default()).await.ok()?;
                let new = list.items.iter().any(|rs| {
                    rs.spec
                        .template
                        .as_ref()
                        .and_then(|t| t.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .and_then(|a| a.get("zetaback.io/config-hash"))
                        == Some(&hash)
                });
                new.then_some(list.items.len())
            }
        },
    )
    .await;
    println!("rolled out: hash {hash1} -> {hash2}, {rs_count} ReplicaSets");
    assert_eq!(rs_count, 2);
    ctl.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_backend_is_reported() {
    let env = Env::get();
    let ns = env.namespace("fr-missing");
    let client = env.client().await;
    let ctl = start_controller(client.clone(), &ns);
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &ns);
    routes
        .create(
            &PostParams::default(),
            &route(
                "broken",
                serde_json::json!([
                    {"service": {"name": "web-missing", "port": 8080}},
                    {"url": "http://10.0.0.9:8080"}
                ]),
            ),
        )
        .await
        .expect("create route");
    let (status, reason, message) =
        eventually("InvalidBackend condition", Duration::from_secs(60), || {
            condition(&routes, "broken", 1, "InvalidBackend")
        })
        .await;
    println!("InvalidBackend: {status} {reason}: {message}");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ServiceNotFound")
    );
    assert!(message.contains("web-missing"), "{message}");
    // Still rendered: the proxy skips a backend it cannot reach.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("broken-proxy")
        .await
        .expect("ConfigMap");
    assert_eq!(
        config_urls(&cm)[0],
        format!("http://web-missing.{ns}.svc.cluster.local:8080")
    );
    // The Service appears: the route is looked at again while something is wrong.
    create_service(&client, &ns, "web-missing").await;
    let (status, reason, _) = eventually(
        "InvalidBackend cleared",
        Duration::from_secs(90),
        || async {
            condition(&routes, "broken", 1, "InvalidBackend")
                .await
                .filter(|c| c.0 == "False")
        },
    )
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Resolved"));
    ctl.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_route_collects_what_it_owned() {
    let env = Env::get();
    let ns = env.namespace("fr-delete");
    let client = env.client().await;
    create_service(&client, &ns, "web-1").await;
    let ctl = start_controller(client.clone(), &ns);
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    routes
        .create(
            &PostParams::default(),
            &route(
                "gone",
                serde_json::json!([{"service": {"name": "web-1", "port": 80}}]),
            ),
        )
        .await
        .expect("create route");
    eventually("the proxy objects", Duration::from_secs(60), || async {
        config_maps.get_opt("gone-proxy").await.ok()??;
        deployments.get_opt("gone-proxy").await.ok()??;
        services.get_opt("gone").await.ok()??;
        let rs = replica_sets.list(&ListParams::default()).await.ok()?;
        (!rs.items.is_empty()).then_some(())
    })
    .await;
    // Stop the controller first, so nothing but the garbage collector acts.
    ctl.stop_cleanly().await;
    routes
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete route");
    eventually(
        "ConfigMap, Deployment, ReplicaSet and Service garbage-collected",
        Duration::from_secs(180),
        || async {
            let cm = config_maps.get_opt("gone-proxy").await.ok()?;
            let dep = deployments.get_opt("gone-proxy").await.ok()?;
            let svc = services.get_opt("gone").await.ok()?;
            let rs = replica_sets.list(&ListParams::default()).await.ok()?;
            (cm.is_none() && dep.is_none() && svc.is_none() && rs.items.is_empty()).then_some(())
        },
    )
    .await;
    // The user's own Service is not the route's to collect.
    assert!(
        services.get_opt("web-1").await.expect("get").is_some(),
        "web-1 must survive"
    );
}
