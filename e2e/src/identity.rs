//! Real identities for a fleet, issued by the local apiserver: the agents', the controller's
//! and the catalogue readers' ServiceAccounts, a Node object per host and a Pod of the agents'
//! ServiceAccount on it (no kubelet runs it: the objects are what a token is bound to), and
//! tokens minted with the TokenRequest API, bound to those pods, for the store's audience.
//! The store agents check them with TokenReview, as in a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};

/// The agents' ServiceAccount (every host's agent runs as it).
pub const AGENT_SA: &str = "zetaback-agent";
/// The controller's ServiceAccount.
pub const CONTROLLER_SA: &str = "zetaback-controller";
/// The catalogue readers' ServiceAccount (`kubectl zetaback`).
pub const READER_SA: &str = "zetaback-reader";
/// The audience of the stores' tokens.
pub const AUDIENCE: &str = "zetaback-store";
/// How long minted tokens live (a test fleet lives minutes).
const TOKEN_SECONDS: i64 = 3600;

/// Creates the three ServiceAccounts in `ns` (an existing one is kept).
pub async fn service_accounts(client: &kube::Client, ns: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for name in [AGENT_SA, CONTROLLER_SA, READER_SA] {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {ns}/{name}: {e}"),
        }
    }
}

/// The store agents' arguments naming the fleet's ServiceAccounts.
pub fn store_args(ns: &str) -> Vec<String> {
    vec![
        format!("--controller-service-account={ns}/{CONTROLLER_SA}"),
        format!("--agent-service-account={ns}/{AGENT_SA}"),
        format!("--reader-service-account={ns}/{READER_SA}"),
    ]
}

/// Creates the Node object `name` (replacing a leftover of that name), labelled with the
/// namespace that owns it.
pub async fn node(client: &kube::Client, name: &str, ns: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    crate::eventually(
        "old node gone",
        std::time::Duration::from_secs(20),
        || async {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("e2e".to_owned(), ns.to_owned())])),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    api.create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
}

/// Deletes the Node object `name` (errors ignored: cleanup).
pub async fn delete_node(client: &kube::Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Creates the Pod `name` of the agents' ServiceAccount on `node` and returns its uid.
pub async fn agent_pod(client: &kube::Client, ns: &str, name: &str, node: &str) -> String {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(AGENT_SA.into()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("zetaback-agent:e2e".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let created = api
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create Pod {ns}/{name}: {e}"));
    created.metadata.uid.expect("a created pod has a uid")
}

/// A token of `ns/sa` for `audience` (None: the apiserver's own), bound to the pod
/// `(name, uid)` if given.
pub async fn mint(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: Option<&str>,
    pod: Option<(&str, &str)>,
) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(TOKEN_SECONDS),
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
    let answer = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    answer
        .status
        .and_then(|s| s.token)
        .expect("a TokenRequest answer has a token")
}

/// Deletes the Pod `ns/name` at once (no kubelet runs it, so a graceful deletion would never
/// finish and would hold its namespace in Terminating); errors ignored: cleanup.
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let _ = api.delete(name, &now).await;
}
