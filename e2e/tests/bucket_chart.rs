//! The chart's object-store credentials, on the real apiserver: the controller may read the
//! Secrets its object-store policies name (`controller.objectStoreSecrets`: get on that Secret,
//! in its namespace, nothing else), and a source agent reads only its own node's keys (a file on
//! the node, `agent.objectStore.credentialsPath`, mounted read-only): the agents'
//! ServiceAccount still reads no Secret at all.

use zetaback_e2e::{Env, text};

/// `kubectl auth can-i VERB RESOURCE -n NS --as WHO`.
fn can_i(env: &Env, who: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = env.kubectl(&["auth", "can-i", verb, resource, "-n", ns, "--as", who]);
    text(&out.stdout).trim() == "yes"
}

/// `helm template` of the chart with `values` (YAML) as release `release` in `ns`.
fn render(env: &Env, release: &str, ns: &str, values: &str) -> String {
    let file = std::env::temp_dir().join(format!("{release}-values.yaml"));
    std::fs::write(&file, values).expect("values file");
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        release,
        &chart.to_string_lossy(),
        "--namespace",
        ns,
        "--kube-version",
        "1.37.2",
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The agents' DaemonSet of rendered manifests.
fn daemonset(manifests: &str) -> serde_yaml::Value {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet")
}

#[test]
fn bucket_credentials_are_readable_only_by_whom_needs_them() {
    let env = Env::get();
    let ns = env.namespace("bucket-chart");
    let path = "/etc/zetaback/s3-credentials.json";
    let values = format!(
        "controller:\n  objectStoreSecrets:\n    - {{namespace: {ns}, name: bucket-keys}}\n\
         agent:\n  objectStore:\n    credentialsPath: {path}\n"
    );
    let manifests = render(env, &ns, &ns, &values);
    let applied = env.kubectl_stdin(&["apply", "-f", "-"], &manifests);
    assert!(
        applied.status.success(),
        "apply refused: {}",
        text(&applied.stderr)
    );

    let controller = format!("system:serviceaccount:{ns}:zetaback-controller");
    let agent = format!("system:serviceaccount:{ns}:zetaback-agent");
    let other_ns = format!("{ns}-other");
    let expectations = [
        (&controller, "get", "secrets/bucket-keys", ns.as_str(), true),
        (&controller, "get", "secrets/another", ns.as_str(), false),
        (&controller, "list", "secrets", ns.as_str(), false),
        (&controller, "watch", "secrets", ns.as_str(), false),
        (
            &controller,
            "update",
            "secrets/bucket-keys",
            ns.as_str(),
            false,
        ),
        (
            &controller,
            "get",
            "secrets/bucket-keys",
            other_ns.as_str(),
            false,
        ),
        (&agent, "get", "secrets/bucket-keys", ns.as_str(), false),
        (&agent, "list", "secrets", ns.as_str(), false),
    ];
    let wrong: Vec<String> = expectations
        .iter()
        .filter(|(who, verb, res, in_ns, allowed)| can_i(env, who, verb, res, in_ns) != *allowed)
        .map(|(who, verb, res, in_ns, allowed)| {
            format!("{who} {verb} {res} -n {in_ns}: expected allowed={allowed}")
        })
        .collect();

    // The agent gets its node's keys file, read-only, and is told where it is.
    let ds = daemonset(&manifests);
    let pod = &ds["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .map(|s| s.iter().filter_map(|a| a.as_str()).collect())
        .unwrap_or_default();
    let volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| {
            v.iter()
                .find(|v| v["hostPath"]["path"].as_str() == Some(path))
        })
        .cloned();
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .and_then(|v| v.iter().find(|m| m["mountPath"].as_str() == Some(path)))
        .cloned();

    // Without the values, nothing of it is rendered.
    let plain = render(env, &ns, &ns, "{}\n");

    let out = env.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
        "-l",
        &format!("app.kubernetes.io/instance={ns}"),
    ]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let _ = env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);

    assert!(
        wrong.is_empty(),
        "RBAC for object-store keys differs from the plan:\n{}",
        wrong.join("\n")
    );
    assert!(
        args.contains(&format!("--object-store-credentials={path}").as_str()),
        "{args:?}"
    );
    let volume = volume.expect("a hostPath volume of the keys file");
    assert_eq!(
        volume["hostPath"]["type"].as_str(),
        Some("File"),
        "{volume:?}"
    );
    let mount = mount.expect("the keys file mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true), "{mount:?}");
    // Without object-store values nothing of them is rendered, and no Secret is readable but
    // the controller's own CA (tls.mode csr: Role zetaback-controller-ca, its Secret only).
    let other_secret_rights = plain
        .split("\n---")
        .filter(|doc| !doc.contains("-controller-ca\n"))
        .any(|doc| doc.contains("resources: [secrets]"));
    assert!(
        !plain.contains("object-store") && !other_secret_rights,
        "rendered without object-store values: {plain}"
    );
}
