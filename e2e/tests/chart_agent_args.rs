//! The agent's arguments as the chart renders them from its values: settings that exist only
//! as agent flags reach the DaemonSet (today `agent.answerTimeoutSeconds` →
//! `--answer-timeout`), with the agent's own default when the value is not set.

use zetaback_e2e::{Env, text};

/// The agent container's args of the chart rendered with `values` (YAML).
fn agent_args(env: &Env, release: &str, values: &str) -> Vec<String> {
    use serde::Deserialize as _;
    let file = std::env::temp_dir().join(format!("{release}-{}-values.yaml", std::process::id()));
    std::fs::write(&file, values).expect("values file");
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        release,
        &chart.to_string_lossy(),
        "--namespace",
        release,
        "--kube-version",
        "1.37.2",
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    let manifests = text(&out.stdout);
    let daemonset = serde_yaml::Deserializer::from_str(&manifests)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("the agent's args")
        .iter()
        .map(|a| a.as_str().expect("a string arg").to_owned())
        .collect()
}

#[test]
fn the_answer_timeout_is_a_chart_value() {
    let env = Env::get();
    let default = format!(
        "--answer-timeout={}",
        zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT.as_secs()
    );
    let args = agent_args(env, "answer-default", "{}\n");
    assert!(
        args.contains(&default),
        "without the value the agent does not get its own default {default}: {args:?}"
    );
    let args = agent_args(env, "answer-set", "agent:\n  answerTimeoutSeconds: 1800\n");
    assert!(
        args.iter().any(|a| a == "--answer-timeout=1800"),
        "agent.answerTimeoutSeconds does not reach the agent: {args:?}"
    );
    assert_eq!(
        args.iter()
            .filter(|a| a.starts_with("--answer-timeout"))
            .count(),
        1,
        "{args:?}"
    );
}
