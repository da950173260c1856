//! Real identities for agents started against the local apiserver: the agents' and the
//! controller's ServiceAccounts in the test's namespace, a Node object, a Pod of the agents'
//! ServiceAccount on it (no kubelet runs it), and tokens minted with the TokenRequest API
//! (the agent's bound to the pod, audience `zetaback-store`). Stores check them with
//! TokenReview.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};

use super::Tokens;

const AGENT_SA: &str = "zetaback-agent";
const CONTROLLER_SA: &str = "zetaback-controller";
const AUDIENCE: &str = "zetaback-store";

async fn mint(client: &kube::Client, ns: &str, sa: &str, pod: Option<(&str, &str)>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![AUDIENCE.into()]),
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    api.create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// Makes `tokens` real: ServiceAccounts in `ns`, the Node `node` and an agent Pod on it; the
/// source token becomes the pod's (so it is the agent of every ZfsHost on `node`), the admin
/// token the controller's, and every agent started with `tokens` checks callers by
/// TokenReview. Delete the node with [`delete_node`].
pub async fn kube_identities(client: &kube::Client, ns: &str, node: &str, tokens: &mut Tokens) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for name in [AGENT_SA, CONTROLLER_SA] {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("ServiceAccount {name}: {e}"),
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(node, &DeleteParams::default()).await;
    for _ in 0..100 {
        if nodes.get_opt(node).await.ok().flatten().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let n = Node {
        metadata: ObjectMeta {
            name: Some(node.into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes
        .create(&PostParams::default(), &n)
        .await
        .unwrap_or_else(|e| panic!("Node {node}: {e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("agent".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(AGENT_SA.into()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("zetaback-agent:test".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("Pod {ns}/agent: {e}"))
        .metadata
        .uid
        .expect("uid");
    let agent = mint(client, ns, AGENT_SA, Some(("agent", &uid))).await;
    let controller = mint(client, ns, CONTROLLER_SA, None).await;
    std::fs::write(&tokens.source, agent).expect("agent token");
    std::fs::write(&tokens.admin, controller).expect("controller token");
    tokens.kube_args = vec![
        format!("--controller-service-account={ns}/{CONTROLLER_SA}"),
        format!("--agent-service-account={ns}/{AGENT_SA}"),
    ];
}

/// Deletes the agent Pod of `ns` at once (no kubelet finishes a graceful deletion, which
/// would hold the namespace in Terminating) and the Node object `node` (cleanup; errors
/// ignored).
pub async fn delete_node(client: &kube::Client, ns: &str, node: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let _ = pods.delete("agent", &now).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(node, &DeleteParams::default()).await;
}
