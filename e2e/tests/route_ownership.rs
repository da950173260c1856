//! A FallbackRoute renders only what it owns and runs only allowed images, against the real
//! apiserver: a Service (or ConfigMap, Deployment) of the proxy's name that the route does not
//! own is left as it is and reported (`Ready=False`, reason `Conflict`), never taken over by a
//! forced server-side apply; a route naming an image outside the controller's allow-list is
//! refused (`Ready=False`, reason `ImageNotAllowed`) and nothing is rendered. The controller
//! runs with the chart's RBAC (its ServiceAccount's token), which grants on ConfigMaps,
//! Deployments and Services only what rendering needs (get, create, patch), and only in the
//! namespaces the chart lists for FallbackRoutes (`controller.fallbackRoutes`): a route
//! anywhere else gets `Ready=False`, reason `Forbidden`, and nothing is created there.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use zetaback::api::{FallbackRoute, FallbackRouteSpec};
use zetaback::controller::fallback_route::proxy_name;
use zetaback_e2e::controller::InProcessController;
use zetaback_e2e::{Env, eventually, free_port, text};

/// The chart's templates rendered for release `ns` in namespace `ns` with `--set` values
/// `sets`, applied.
fn install_chart(env: &Env, ns: &str, sets: &[&str]) {
    let chart = env.root.join("charts/zetaback");
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "template",
        ns,
        &chart,
        "--namespace",
        ns,
        "--kube-version",
        "1.37.2",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = env.helm(&args);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    let applied = env.kubectl_stdin(&["apply", "-f", "-"], &text(&out.stdout));
    assert!(applied.status.success(), "apply: {}", text(&applied.stderr));
}

/// Deletes the release's cluster-scoped objects (also when the test fails).
struct Release<'a>(&'a Env, String);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            &format!("app.kubernetes.io/instance={}", self.1),
            "--ignore-not-found",
        ]);
    }
}

fn can_i(env: &Env, who: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = env.kubectl(&["auth", "can-i", verb, resource, "-n", ns, "--as", who]);
    text(&out.stdout).trim() == "yes"
}

fn route(name: &str, image: Option<&str>) -> FallbackRoute {
    let mut spec = serde_json::json!({
        "hosts": ["assets.example.com"],
        "backends": [{"url": "http://web-1.example:8080"}],
        "cache": {"maxSize": "64Mi"},
        "replicas": 1
    });
    if let Some(image) = image {
        spec["image"] = image.into();
    }
    let spec: FallbackRouteSpec = serde_json::from_value(spec).expect("spec");
    FallbackRoute::new(name, spec)
}

/// The route's Ready condition as (reason, message), once the controller wrote one.
async fn ready(api: &Api<FallbackRoute>, name: &str) -> Option<(String, String)> {
    let st = api.get(name).await.ok()?.status?;
    st.observed_generation?;
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_takes_over_nothing_it_does_not_own_and_runs_only_allowed_images() {
    let env = Env::get();
    let ns = env.namespace("tenancy-route");
    install_chart(env, &ns, &[]);
    let _release = Release(env, ns.clone());
    let controller = format!("system:serviceaccount:{ns}:zetaback-controller");
    let token = env.kubectl(&["create", "token", "zetaback-controller", "-n", &ns]);
    assert!(token.status.success(), "token: {}", text(&token.stderr));
    let as_controller = env.client_with_token(text(&token.stdout).trim()).await;
    let client = env.client().await;
    let ctl = InProcessController::start(
        as_controller,
        zetaback::controller::Options {
            watch_namespace: Some(ns.clone()),
            ..zetaback::controller::Options::new(&ns, "only", ([127, 0, 0, 1], free_port()).into())
        },
    );
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Someone else's Service, named as the route's Service would be (the route's name).
    let taken = "shop".to_owned();
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": taken, "labels": {"owner": "billing-team"}},
        "spec": {"selector": {"app": "billing"}, "ports": [{"name": "web", "port": 9000}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the other team's Service");
    routes
        .create(&PostParams::default(), &route("shop", None))
        .await
        .expect("create route");
    let (reason, message) = eventually(
        "the route's first status",
        Duration::from_secs(30),
        || async { ready(&routes, "shop").await },
    )
    .await;
    println!("shop: {reason}: {message}");
    let svc = services
        .get(&taken)
        .await
        .expect("the Service is still there");
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone());
    let owners = svc.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners.is_empty(),
        "the route took over the Service it does not own: {owners:?}"
    );
    assert_eq!(
        selector.and_then(|s| s.get("app").cloned()).as_deref(),
        Some("billing"),
        "the Service's selector was changed"
    );
    assert_eq!(reason, "Conflict", "{message}");
    assert!(message.contains(&taken), "{message}");

    // An image outside the allow-list: refused, nothing rendered.
    routes
        .create(
            &PostParams::default(),
            &route("miner", Some("evil.example/miner:latest")),
        )
        .await
        .expect("create route");
    let (reason, message) = eventually(
        "the second route's first status",
        Duration::from_secs(30),
        || async { ready(&routes, "miner").await },
    )
    .await;
    println!("miner: {reason}: {message}");
    assert!(
        deployments
            .get_opt(&proxy_name("miner"))
            .await
            .expect("get")
            .is_none(),
        "a Deployment runs an image outside the allow-list"
    );
    assert_eq!(reason, "ImageNotAllowed", "{message}");
    assert!(message.contains("evil.example/miner:latest"), "{message}");

    // Rendering needs no more than get, create and patch.
    for (verb, resource, allowed) in [
        ("create", "services", true),
        ("patch", "deployments.apps", true),
        ("get", "configmaps", true),
        ("delete", "services", false),
        ("update", "deployments.apps", false),
        ("delete", "configmaps", false),
    ] {
        assert_eq!(
            can_i(env, &controller, verb, resource, &ns),
            allowed,
            "the controller may {verb} {resource}: expected {allowed}"
        );
    }
    ctl.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_render_only_in_the_namespaces_the_chart_lists() {
    let env = Env::get();
    let ns = env.namespace("tls-routes-home");
    let listed = env.namespace("tls-routes-listed");
    let unlisted = env.namespace("tls-routes-unlisted");
    install_chart(
        env,
        &ns,
        &[&format!(
            "controller.fallbackRoutes.namespaces={{{listed}}}"
        )],
    );
    let _release = Release(env, ns.clone());
    let controller = format!("system:serviceaccount:{ns}:zetaback-controller");
    // What rendering needs: in the release namespace and the listed one, nowhere else.
    let mut wrong = Vec::new();
    for (verb, resource) in [
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("create", "services"),
        ("patch", "services"),
        ("create", "configmaps"),
        ("patch", "configmaps"),
    ] {
        for (namespace, allowed) in [(&ns, true), (&listed, true), (&unlisted, false)] {
            if can_i(env, &controller, verb, resource, namespace) != allowed {
                wrong.push(format!(
                    "{verb} {resource} in {namespace}: expected allowed={allowed}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the controller's rights to render routes differ from the chart's list:\n{}",
        wrong.join("\n")
    );

    let token = env.kubectl(&["create", "token", "zetaback-controller", "-n", &ns]);
    assert!(token.status.success(), "token: {}", text(&token.stderr));
    let as_controller = env.client_with_token(text(&token.stdout).trim()).await;
    let client = env.client().await;
    let watching = |namespace: &str| zetaback::controller::Options {
        watch_namespace: Some(namespace.to_owned()),
        ..zetaback::controller::Options::new(&ns, "lists", ([127, 0, 0, 1], free_port()).into())
    };

    // A route in a namespace the chart does not list: reported, nothing created there.
    let ctl = InProcessController::start(as_controller.clone(), watching(&unlisted));
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &unlisted);
    routes
        .create(&PostParams::default(), &route("outside", None))
        .await
        .expect("create route");
    let (reason, message) = eventually(
        "the unlisted route's first status",
        Duration::from_secs(30),
        || async { ready(&routes, "outside").await },
    )
    .await;
    println!("outside: {reason}: {message}");
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(
        message.contains(&unlisted) && message.contains("controller.fallbackRoutes"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &unlisted);
    assert!(
        deployments
            .get_opt(&proxy_name("outside"))
            .await
            .expect("get")
            .is_none(),
        "a proxy Deployment was created in a namespace the chart does not list"
    );
    ctl.stop_cleanly().await;

    // The same route in the listed namespace is rendered.
    let ctl = InProcessController::start(as_controller, watching(&listed));
    let routes: Api<FallbackRoute> = Api::namespaced(client.clone(), &listed);
    routes
        .create(&PostParams::default(), &route("inside", None))
        .await
        .expect("create route");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &listed);
    eventually(
        "the listed route's proxy Deployment",
        Duration::from_secs(30),
        || async {
            deployments
                .get_opt(&proxy_name("inside"))
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    ctl.stop_cleanly().await;
    for namespace in [&listed, &unlisted] {
        env.kubectl(&["delete", "namespace", namespace, "--wait=false"]);
    }
}
