//! Agents write only their own objects, and the apiserver is what says so: the chart's
//! ValidatingAdmissionPolicy keys every write of the agent's ServiceAccount on the node-name
//! claim of its token (`authentication.kubernetes.io/node-name`, present in tokens bound to a
//! pod that runs on a node). Tested on the real apiserver with the chart's rendered templates:
//! two Nodes, the agent's ServiceAccount, one Pod per node (no kubelet: the objects suffice to
//! bind tokens to), tokens minted with TokenRequest bound to each pod, then forged writes from
//! one node's identity to the other node's ZfsHost, BackupJob and Restore.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use zetaback::api::{BackupJob, Restore, ZfsHost};
use zetaback_e2e::{Env, eventually, text};

/// `helm template RELEASE charts/zetaback --namespace NS`: the chart's own templates.
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

fn apply(env: &Env, yaml: &str) {
    let out = env.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
}

/// A token of the agent's ServiceAccount bound to `pod` (TokenRequest), or unbound.
fn agent_token(env: &Env, ns: &str, pod: Option<&str>) -> String {
    let mut args = vec!["create", "token", "zetaback-agent", "-n", ns];
    if let Some(pod) = pod {
        args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
    }
    let out = env.kubectl(&args);
    assert!(out.status.success(), "create token: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// The message of a refused write, or `None` when the apiserver accepted it.
fn refusal<T>(result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(e)) => Some(format!("{} ({})", e.message, e.code)),
        Err(e) => panic!("not an apiserver answer: {e}"),
    }
}

/// Cluster-scoped objects of the test, deleted also when it fails.
struct Cleanup<'a> {
    env: &'a Env,
    release: String,
    nodes: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let label = format!("app.kubernetes.io/instance={}", self.release);
        self.env.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            &label,
            "--ignore-not-found",
        ]);
        for node in &self.nodes {
            self.env.kubectl(&[
                "delete",
                "zfshost,node",
                node,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        self.env
            .kubectl(&["delete", "namespace", &self.release, "--wait=false"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_only_its_own_nodes_objects() {
    let env = Env::get();
    let ns = env.namespace("tenancy-writes");
    let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let _cleanup = Cleanup {
        env,
        release: ns.clone(),
        nodes: vec![node_a.clone(), node_b.clone()],
    };
    // The chart as released (its own release name, so its cluster-scoped objects are its own).
    apply(env, &render(env, &ns, &ns));

    // Two nodes, each with its ZfsHost (named after the node, as the chart's agent serves it)
    // and a Pod of the agent's ServiceAccount bound to it.
    for (node, pod) in [(&node_a, "agent-a"), (&node_b, "agent-b")] {
        apply(
            env,
            &format!(
                r#"
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
---
apiVersion: zetaback.io/v1alpha1
kind: ZfsHost
metadata: {{name: {node}}}
spec: {{nodeName: {node}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: zetaback-agent
  containers: [{{name: agent, image: zetaback-agent:test}}]
---
apiVersion: zetaback.io/v1alpha1
kind: BackupJob
metadata: {{name: job-{pod}, namespace: {ns}}}
spec: {{policy: p, host: {node}, dataset: tank/data, type: full, snapshot: zb-1700000000, target: {{host: {node}, path: /var/lib/zetaback}}}}
---
apiVersion: zetaback.io/v1alpha1
kind: Restore
metadata: {{name: restore-{pod}, namespace: {ns}}}
spec:
  source: {{host: {node}, dataset: tank/data}}
  destination: {{host: {node}, dataset: tank/restored}}
"#
            ),
        );
    }
    let as_a = env
        .client_with_token(&agent_token(env, &ns, Some("agent-a")))
        .await;
    let hosts_a: Api<ZfsHost> = Api::all(as_a.clone());
    let jobs_a: Api<BackupJob> = Api::namespaced(as_a.clone(), &ns);
    let restores_a: Api<Restore> = Api::namespaced(as_a.clone(), &ns);
    let forged = Patch::Merge(serde_json::json!({
        "status": {"agentEndpoint": "attacker.example:7468"}
    }));
    let pp = PatchParams::default();

    // The policy takes effect once the apiserver has loaded it (a second or so): wait for the
    // first refusal of node A writing node B's ZfsHost status.
    let message = eventually(
        "node A's write to node B's ZfsHost status refused by the apiserver",
        Duration::from_secs(30),
        || async { refusal(hosts_a.patch_status(&node_b, &pp, &forged).await) },
    )
    .await;
    println!("refused: {message}");
    assert!(
        message.contains(&node_a) && message.contains("its own ZfsHost"),
        "the refusal says who may write what: {message}"
    );
    // A forged write tried before the policy was loaded may have landed: the admin puts node
    // B's status back, and the same forged write is refused again.
    let as_admin: Api<ZfsHost> = Api::all(env.client().await);
    as_admin
        .patch_status(
            &node_b,
            &pp,
            &Patch::Merge(serde_json::json!({"status": {"agentEndpoint": "127.0.0.1:7469"}})),
        )
        .await
        .expect("the admin resets node B's status");
    refusal(hosts_a.patch_status(&node_b, &pp, &forged).await)
        .expect("node A's forged write to node B's ZfsHost status, once the policy is loaded");

    // Its own ZfsHost, BackupJob and Restore: accepted.
    let own = Patch::Merge(serde_json::json!({
        "status": {"agentEndpoint": "127.0.0.1:7468"}
    }));
    hosts_a
        .patch_status(&node_a, &pp, &own)
        .await
        .expect("node A writes its own ZfsHost's status");
    let claim = Patch::Merge(serde_json::json!({
        "status": {"phase": "Running", "claimedBy": format!("{node_a}@{node_a}")}
    }));
    jobs_a
        .patch_status("job-agent-a", &pp, &claim)
        .await
        .expect("node A claims its own BackupJob");
    restores_a
        .patch_status("restore-agent-a", &pp, &claim)
        .await
        .expect("node A claims its own Restore");

    // Node B's: refused, each with a sentence.
    let job = refusal(jobs_a.patch_status("job-agent-b", &pp, &claim).await)
        .expect("node A's claim of node B's BackupJob was accepted");
    println!("refused: {job}");
    assert!(job.contains("BackupJobs of its own node"), "{job}");
    let restore = refusal(
        restores_a
            .patch_status("restore-agent-b", &pp, &claim)
            .await,
    )
    .expect("node A's claim of node B's Restore was accepted");
    println!("refused: {restore}");
    assert!(restore.contains("Restores to its own node"), "{restore}");
    let b: ZfsHost = Api::all(env.client().await)
        .get(&node_b)
        .await
        .expect("get B");
    assert_ne!(
        b.status.and_then(|s| s.agent_endpoint).as_deref(),
        Some("attacker.example:7468"),
        "node B's status kept what node A forged"
    );

    // The chart's agent serves the ZfsHost named after its node: another one that names node
    // A as its node is not its to write (BackupJobs and Restores name hosts by name).
    apply(
        env,
        &format!(
            "apiVersion: zetaback.io/v1alpha1\nkind: ZfsHost\nmetadata: {{name: {node_a}-alias}}\nspec: {{nodeName: {node_a}}}\n"
        ),
    );
    let alias = refusal(
        hosts_a
            .patch_status(&format!("{node_a}-alias"), &pp, &own)
            .await,
    );
    env.kubectl(&["delete", "zfshost", &format!("{node_a}-alias")]);
    assert!(alias.is_some(), "node A wrote a ZfsHost not named after it");

    // A token of the agent's ServiceAccount not bound to a pod carries no node: refused.
    let unbound = env.client_with_token(&agent_token(env, &ns, None)).await;
    let unbound = refusal(
        Api::<ZfsHost>::all(unbound)
            .patch_status(&node_a, &pp, &own)
            .await,
    )
    .expect("a token without a node claim wrote a ZfsHost's status");
    println!("refused: {unbound}");
    assert!(unbound.contains("bound to the agent's pod"), "{unbound}");
}
