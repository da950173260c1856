//! The Helm chart: `helm lint` and `helm template` pass, the rendered manifests are accepted by
//! the real apiserver (server-side dry run, then applied), and the least-privilege RBAC it
//! grants is enough for the controller to run with its own ServiceAccount token and no more.

use std::time::Duration;

use kube::api::{Api, PostParams};
use serde::Deserialize as _;
use zetaback::api::{BackupPolicy, BackupPolicySpec};
use zetaback_e2e::{Env, eventually, free_port, text};

/// `helm template RELEASE charts/zetaback --namespace NS`.
fn render(env: &Env, release: &str, ns: &str) -> String {
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        release,
        &chart.to_string_lossy(),
        "--namespace",
        ns,
        "--kube-version",
        "1.37.2",
    ]);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The cluster-scoped RBAC objects of rendered manifests: (kind, name, roleRef name).
fn cluster_rbac(manifests: &str) -> Vec<(String, String, String)> {
    let field = |doc: &serde_yaml::Value, path: &[&str]| {
        path.iter()
            .try_fold(doc, |v, k| v.get(*k))
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    serde_yaml::Deserializer::from_str(manifests)
        .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
        .filter(|doc| {
            matches!(
                field(doc, &["kind"]).as_str(),
                "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .map(|doc| {
            (
                field(&doc, &["kind"]),
                field(&doc, &["metadata", "name"]),
                field(&doc, &["roleRef", "name"]),
            )
        })
        .collect()
}

#[test]
fn cluster_scoped_names_carry_the_release() {
    let env = Env::get();
    let names = |release: &str, ns: &str| {
        let mut rbac = cluster_rbac(&render(env, release, ns));
        rbac.sort();
        rbac
    };
    let s = String::from;
    // The release named after the chart keeps the plain names.
    assert_eq!(
        names("zetaback", "zetaback-system"),
        [
            (s("ClusterRole"), s("zetaback-agent"), s("")),
            (s("ClusterRole"), s("zetaback-controller"), s("")),
            (s("ClusterRole"), s("zetaback-controller-routes"), s("")),
            (
                s("ClusterRoleBinding"),
                s("zetaback-agent"),
                s("zetaback-agent")
            ),
            (
                s("ClusterRoleBinding"),
                s("zetaback-controller"),
                s("zetaback-controller")
            ),
        ]
    );
    // Another release gets its own, bound to its own roles: the two can be installed side by
    // side.
    assert_eq!(
        names("prod", "backups"),
        [
            (s("ClusterRole"), s("prod-zetaback-agent"), s("")),
            (s("ClusterRole"), s("prod-zetaback-controller"), s("")),
            (
                s("ClusterRole"),
                s("prod-zetaback-controller-routes"),
                s("")
            ),
            (
                s("ClusterRoleBinding"),
                s("prod-zetaback-agent"),
                s("prod-zetaback-agent")
            ),
            (
                s("ClusterRoleBinding"),
                s("prod-zetaback-controller"),
                s("prod-zetaback-controller")
            ),
        ]
    );
}

/// The rights to render FallbackRoutes are bound per namespace (the release namespace and
/// `controller.fallbackRoutes.namespaces`), cluster-wide only when `allNamespaces` is chosen.
#[test]
fn route_rendering_rights_are_cluster_wide_only_when_chosen() {
    let env = Env::get();
    let chart = env.root.join("charts/zetaback");
    let chart = chart.to_string_lossy();
    let bindings = |set: &str| {
        let out = env.helm(&[
            "template",
            "prod",
            &chart,
            "--namespace",
            "backups",
            "--kube-version",
            "1.37.2",
            "--set",
            set,
        ]);
        assert!(out.status.success(), "helm template: {}", text(&out.stderr));
        let mut found: Vec<(String, String)> =
            serde_yaml::Deserializer::from_str(&text(&out.stdout))
                .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
                .filter(|doc| {
                    doc["roleRef"]["name"].as_str() == Some("prod-zetaback-controller-routes")
                })
                .map(|doc| {
                    (
                        doc["kind"].as_str().unwrap_or_default().to_owned(),
                        doc["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect();
        found.sort();
        found
    };
    let s = String::from;
    assert_eq!(
        bindings("controller.fallbackRoutes.namespaces={shop,backups,web}"),
        [
            (s("RoleBinding"), s("backups")),
            (s("RoleBinding"), s("shop")),
            (s("RoleBinding"), s("web")),
        ]
    );
    assert_eq!(
        bindings("controller.fallbackRoutes.allNamespaces=true"),
        [(s("ClusterRoleBinding"), s(""))]
    );
}

#[test]
fn helm_lint_passes() {
    let env = Env::get();
    let out = env.helm(&[
        "lint",
        "--strict",
        &env.root.join("charts/zetaback").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn can_i(env: &Env, who: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, "--as", who];
    let sub_flag = format!("--subresource={sub}");
    if !sub.is_empty() {
        args.push(&sub_flag);
    }
    let out = env.kubectl(&args);
    text(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_is_accepted_and_its_rbac_is_enough_and_no_more() {
    let env = Env::get();
    let ns = env.namespace("chart");
    // A release of its own (named after the namespace), so its ClusterRoles and bindings are
    // its own too: another installation of the chart does not change them under the test.
    let manifests = render(env, &ns, &ns);
    for kind in [
        "kind: Deployment",
        "kind: DaemonSet",
        "kind: ClusterRole",
        "kind: ServiceAccount",
    ] {
        assert!(manifests.contains(kind), "the chart renders no {kind}");
    }
    let dry = env.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifests);
    assert!(
        dry.status.success(),
        "server dry run refused: {}",
        text(&dry.stderr)
    );
    let applied = env.kubectl_stdin(&["apply", "-f", "-"], &manifests);
    assert!(
        applied.status.success(),
        "apply refused: {}",
        text(&applied.stderr)
    );

    let controller = format!("system:serviceaccount:{ns}:zetaback-controller");
    let agent = format!("system:serviceaccount:{ns}:zetaback-agent");
    // What each identity may do, and what it must not.
    let expectations = [
        (
            &controller,
            "patch",
            "backuppolicies.zetaback.io/status",
            true,
        ),
        (&controller, "create", "backupjobs.zetaback.io", true),
        // A bulk Restore's children; the controller never changes or deletes a Restore.
        (&controller, "create", "restores.zetaback.io", true),
        (&controller, "update", "restores.zetaback.io", false),
        (&controller, "delete", "restores.zetaback.io", false),
        (&controller, "create", "leases.coordination.k8s.io", true),
        (&controller, "get", "secrets", false),
        (&controller, "patch", "zfshosts.zetaback.io/status", false),
        (&controller, "update", "backuppolicies.zetaback.io", false),
        (&agent, "patch", "zfshosts.zetaback.io/status", true),
        (&agent, "patch", "backupjobs.zetaback.io/status", true),
        (&agent, "create", "backupjobs.zetaback.io", false),
        (&agent, "create", "restores.zetaback.io", false),
        (&agent, "delete", "backuppolicies.zetaback.io", false),
        (&agent, "get", "secrets", false),
        // Identities (issue 13): stores review callers' tokens; nobody else does.
        (&agent, "create", "tokenreviews.authentication.k8s.io", true),
        (
            &controller,
            "create",
            "tokenreviews.authentication.k8s.io",
            false,
        ),
        (&agent, "create", "serviceaccounts/token", false),
    ];
    let wrong: Vec<String> = expectations
        .iter()
        .filter(|(who, verb, res, allowed)| can_i(env, who, verb, res, &ns) != *allowed)
        .map(|(who, verb, res, allowed)| format!("{who} {verb} {res}: expected allowed={allowed}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "RBAC differs from the least-privilege plan:\n{}",
        wrong.join("\n")
    );

    // The controller runs with nothing but its ServiceAccount's token.
    let token = env.kubectl(&["create", "token", "zetaback-controller", "-n", &ns]);
    assert!(
        token.status.success(),
        "create token: {}",
        text(&token.stderr)
    );
    let client = env.client_with_token(text(&token.stdout).trim()).await;
    let ctl = zetaback_e2e::controller::InProcessController::start(
        client,
        zetaback::controller::Options {
            watch_namespace: Some(ns.clone()),
            ..zetaback::controller::Options::new(
                &ns,
                "chart-test",
                ([127, 0, 0, 1], free_port()).into(),
            )
        },
    );
    let admin: Api<BackupPolicy> = Api::namespaced(env.client().await, &ns);
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": ["db-1"]},
        "full": {"every": "7d", "keep": "30d"},
        "incremental": {"every": "1d", "keep": "14d"},
        "target": {"host": "backup-1", "path": "/var/lib/zetaback"}
    }))
    .expect("spec");
    admin
        .create(&PostParams::default(), &BackupPolicy::new("rbac", spec))
        .await
        .expect("create policy");
    eventually(
        "status written with the controller's own identity",
        Duration::from_secs(60),
        || async {
            let p = admin.get("rbac").await.ok()?;
            p.status?.observed_generation.filter(|g| *g == 1)
        },
    )
    .await;
    ctl.stop()
        .await
        .expect("join")
        .expect("the controller ran without RBAC errors");
    // The namespace's objects go with it; the release's cluster-scoped ones are deleted here.
    let out = env.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
        "-l",
        &format!("app.kubernetes.io/instance={ns}"),
    ]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
}

/// Secrets are mounted only where used (issue 13, Build 8): every Secret a pod template
/// mounts or reads into its environment, per TLS mode, as (workload, Secret, mounted by a
/// container). No pod gets a Secret in the default mode: identities are projected
/// ServiceAccount tokens and certificates issued through the CSR API (the CA Secret is read
/// through the API by the controller alone); the agent never gets one.
#[test]
fn secrets_are_mounted_only_where_used() {
    let env = Env::get();
    let chart = env.root.join("charts/zetaback");
    let chart = chart.to_string_lossy();
    let secrets = |mode: &str| {
        let out = env.helm(&[
            "template",
            "prod",
            &chart,
            "--namespace",
            "backups",
            "--kube-version",
            "1.37.2",
            "--set",
            &format!("tls.mode={mode}"),
        ]);
        assert!(out.status.success(), "helm template: {}", text(&out.stderr));
        let mut found = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text(&out.stdout))
            .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
        {
            let pod = &doc["spec"]["template"]["spec"];
            if pod.is_null() {
                continue;
            }
            let workload = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let containers = pod["containers"].as_sequence().cloned().unwrap_or_default();
            for v in pod["volumes"].as_sequence().cloned().unwrap_or_default() {
                let sources = v["projected"]["sources"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default();
                let names = std::iter::once(v["secret"]["secretName"].clone())
                    .chain(sources.iter().map(|s| s["secret"]["name"].clone()))
                    .filter_map(|n| n.as_str().map(str::to_owned));
                for secret in names {
                    let mounted = containers.iter().any(|c| {
                        c["volumeMounts"]
                            .as_sequence()
                            .is_some_and(|m| m.iter().any(|m| m["name"] == v["name"]))
                    });
                    found.push((workload.clone(), secret, mounted));
                }
            }
            for c in &containers {
                let env = c["env"].as_sequence().cloned().unwrap_or_default();
                let from = c["envFrom"].as_sequence().cloned().unwrap_or_default();
                let names = env
                    .iter()
                    .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone())
                    .chain(from.iter().map(|e| e["secretRef"]["name"].clone()))
                    .filter_map(|n| n.as_str().map(str::to_owned));
                for secret in names {
                    found.push((workload.clone(), secret, true));
                }
            }
        }
        found
    };
    assert_eq!(secrets("csr"), []);
    assert_eq!(secrets("insecure-plaintext"), []);
    // hostPath: the controller's own certificate, and nothing for the agents (their node's
    // files are a hostPath).
    assert_eq!(
        secrets("hostPath"),
        [(
            "zetaback-controller".to_owned(),
            "zetaback-controller-tls".to_owned(),
            true
        )]
    );
}

/// Each release signs as itself (issue 13, tls.mode csr): the controller's --tls-signer-name,
/// the agents' and the only signer the controller's ClusterRole may approve and sign for are
/// the same `zetaback.io/<namespace>.<release>`, and two releases get two (before, every
/// release was the signer `zetaback.io/node`, and each denied the other's agents).
#[test]
fn each_release_has_its_own_signer_in_args_and_rbac() {
    let env = Env::get();
    let signers = |release: &str, ns: &str| {
        let manifests = render(env, release, ns);
        let args: Vec<String> = manifests
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- --tls-signer-name="))
            .map(str::to_owned)
            .collect();
        let rbac: Vec<String> = serde_yaml::Deserializer::from_str(&manifests)
            .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
            .filter(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some("ClusterRole"))
            .flat_map(|doc| doc.get("rules").and_then(|r| r.as_sequence()).cloned())
            .flatten()
            .filter(|rule| {
                rule.get("resources")
                    .and_then(|r| r.as_sequence())
                    .is_some_and(|r| r.iter().any(|x| x.as_str() == Some("signers")))
            })
            .flat_map(|rule| {
                rule.get("resourceNames")
                    .and_then(|n| n.as_sequence())
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        (args, rbac)
    };
    let (args, rbac) = signers("prod", "backups");
    let own = zetaback::peer_tls::csr_policy::release_signer_name("backups", "prod");
    assert_eq!(
        args,
        [own.clone(), own.clone()],
        "agent and controller arguments"
    );
    assert_eq!(rbac, [own.as_str()], "the controller's signers rule");
    let (other_args, other_rbac) = signers("zetaback", "zetaback-system");
    assert_eq!(other_rbac, ["zetaback.io/zetaback-system.zetaback"]);
    assert!(
        !other_args.contains(&own) && !other_rbac.contains(&own),
        "two releases share a signer: {other_args:?} {other_rbac:?}"
    );
}
