//! The store's authenticator in Kubernetes: a caller's bearer token is a projected
//! ServiceAccount token with the store's audience ([`super::STORE_AUDIENCE`]); the apiserver
//! checks it (TokenReview: signature, expiry, audience, and that the pod it is bound to still
//! exists) and says whose it is. The controller's ServiceAccount is the controller; the
//! agents' ServiceAccount is an agent only with a token bound to a pod on a node (the review's
//! `authentication.kubernetes.io/node-name`), and that agent serves the ZfsHosts whose
//! `spec.nodeName` is that node. Answers are cached briefly (a bounded cache keyed by the
//! token's sha256; refusals for a shorter while), so a stream costs no review per request.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Api;
use kube::api::{ListParams, PostParams};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use zetaback_core::api::ZfsHost;

use super::{AuthError, Authenticator, Caller};

/// The TokenReview `user.extra` key naming the node of the pod a token is bound to.
pub const NODE_NAME_KEY: &str = "authentication.kubernetes.io/node-name";
/// The TokenReview `user.extra` key naming that pod.
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
/// How long an accepted token's caller is reused.
pub const ACCEPTED_TTL: Duration = Duration::from_secs(30);
/// How long a refused token stays refused without asking again.
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most (each of the two caches).
pub const CACHE_CAPACITY: u64 = 4096;

/// A ServiceAccount, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// The username the apiserver gives its tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccountRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

/// Whose tokens the store accepts.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// The audience tokens must carry.
    pub audience: String,
    /// The controller's ServiceAccount.
    pub controller: ServiceAccountRef,
    /// The agents' ServiceAccount (every node's agent runs as it; the node comes from the
    /// pod the token is bound to).
    pub agents: ServiceAccountRef,
    /// ServiceAccounts allowed to read catalogues (`kubectl zetaback`).
    pub readers: Vec<ServiceAccountRef>,
}

/// Who a reviewed token is, before the node is mapped to hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewed {
    Controller,
    Reader,
    AgentOn { node: String, pod: Option<String> },
}

/// What a TokenReview's status means for the store (pure).
pub fn classify(
    cfg: &TokenReviewConfig,
    status: &TokenReviewStatus,
) -> Result<Reviewed, AuthError> {
    let refuse = |why: String| Err(AuthError::Unauthenticated(why));
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return refuse(format!("the token was refused by the apiserver: {why}"));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.contains(&cfg.audience) {
        return refuse(format!(
            "the token is not for audience {} (it is for {audiences:?})",
            cfg.audience
        ));
    }
    let Some(user) = &status.user else {
        return refuse("the token review names no user".into());
    };
    let username = user.username.as_deref().unwrap_or_default();
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if username == cfg.controller.username() {
        return Ok(Reviewed::Controller);
    }
    if username == cfg.agents.username() {
        return match extra(NODE_NAME_KEY) {
            Some(node) => Ok(Reviewed::AgentOn {
                node,
                pod: extra(POD_NAME_KEY),
            }),
            None => refuse(format!(
                "{username}'s token is not bound to a pod on a node (no {NODE_NAME_KEY}): an agent must present its pod's projected token"
            )),
        };
    }
    if cfg.readers.iter().any(|r| r.username() == username) {
        return Ok(Reviewed::Reader);
    }
    refuse(format!(
        "{username} is neither the controller ({}) nor an agent ({}) nor a reader",
        cfg.controller.username(),
        cfg.agents.username()
    ))
}

/// The ZfsHosts a node serves.
pub fn hosts_of_node<'a>(
    node: &str,
    hosts: impl IntoIterator<Item = &'a ZfsHost>,
) -> BTreeSet<String> {
    hosts
        .into_iter()
        .filter(|h| h.spec.node_name == node)
        .filter_map(|h| h.metadata.name.clone())
        .collect()
}

/// TokenReview through the apiserver, cached.
pub struct TokenReviewer {
    client: kube::Client,
    cfg: TokenReviewConfig,
    accepted: moka::sync::Cache<[u8; 32], Caller>,
    refused: moka::sync::Cache<[u8; 32], AuthError>,
    /// Node → the ZfsHosts it serves, for callers known by their certificate (30 s).
    node_hosts_cache: moka::sync::Cache<String, BTreeSet<String>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, cfg: TokenReviewConfig) -> Self {
        Self {
            client,
            cfg,
            accepted: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ACCEPTED_TTL)
                .build(),
            refused: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(REFUSED_TTL)
                .build(),
            node_hosts_cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ACCEPTED_TTL)
                .build(),
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![self.cfg.audience.clone()]),
                token: token.to_owned(),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        match classify(&self.cfg, &status)? {
            Reviewed::Controller => Ok(Caller::Controller),
            Reviewed::Reader => Ok(Caller::Reader),
            Reviewed::AgentOn { node, pod } => {
                let hosts = self.node_hosts(&node).await?;
                debug!(%node, ?pod, ?hosts, "agent authenticated");
                Ok(Caller::Agent { node, hosts })
            }
        }
    }

    /// The ZfsHosts whose `spec.nodeName` is `node`, read now.
    async fn node_hosts(&self, node: &str) -> Result<BTreeSet<String>, AuthError> {
        let hosts: Api<ZfsHost> = Api::all(self.client.clone());
        let list = hosts
            .list(&ListParams::default())
            .await
            .map_err(|e| AuthError::Unavailable(format!("listing ZfsHosts: {e}")))?;
        Ok(hosts_of_node(node, &list.items))
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(caller) = self.accepted.get(&key) {
                return Ok(caller);
            }
            if let Some(why) = self.refused.get(&key) {
                return Err(why);
            }
            match self.review(token).await {
                Ok(caller) => {
                    self.accepted.insert(key, caller.clone());
                    Ok(caller)
                }
                Err(e @ AuthError::Unauthenticated(_)) => {
                    warn!(error = %e, "store token refused");
                    self.refused.insert(key, e.clone());
                    Err(e)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn hosts_of_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, AuthError>> {
        Box::pin(async move {
            if let Some(hosts) = self.node_hosts_cache.get(node) {
                return Ok(hosts);
            }
            let hosts = self.node_hosts(node).await?;
            self.node_hosts_cache.insert(node.to_owned(), hosts.clone());
            Ok(hosts)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn cfg() -> TokenReviewConfig {
        TokenReviewConfig {
            audience: "zetaback-store".into(),
            controller: "zb/controller".parse().expect("sa"),
            agents: "zb/agent".parse().expect("sa"),
            readers: vec!["zb/reader".parse().expect("sa")],
        }
    }

    fn status(user: &str, audiences: &[&str], node: Option<&str>) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if let Some(n) = node {
            extra.insert(NODE_NAME_KEY.to_owned(), vec![n.to_owned()]);
            extra.insert(POD_NAME_KEY.to_owned(), vec!["agent-x".to_owned()]);
        }
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(extra),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn who_a_review_names() {
        let c = cfg();
        let aud = &["zetaback-store"];
        assert_eq!(
            classify(
                &c,
                &status("system:serviceaccount:zb:controller", aud, None)
            ),
            Ok(Reviewed::Controller)
        );
        assert_eq!(
            classify(
                &c,
                &status("system:serviceaccount:zb:agent", aud, Some("n1"))
            ),
            Ok(Reviewed::AgentOn {
                node: "n1".into(),
                pod: Some("agent-x".into())
            })
        );
        assert_eq!(
            classify(&c, &status("system:serviceaccount:zb:reader", aud, None)),
            Ok(Reviewed::Reader)
        );
        // An agent token not bound to a pod on a node, another audience, another account,
        // an unauthenticated review: refused.
        for (s, says) in [
            (
                status("system:serviceaccount:zb:agent", aud, None),
                "not bound to a pod",
            ),
            (
                status(
                    "system:serviceaccount:zb:agent",
                    &["https://kubernetes.default.svc"],
                    Some("n1"),
                ),
                "not for audience",
            ),
            (
                status("system:serviceaccount:zb:other", aud, Some("n1")),
                "neither",
            ),
            (
                status("system:serviceaccount:other:controller", aud, None),
                "neither",
            ),
            (
                TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("token expired".into()),
                    ..TokenReviewStatus::default()
                },
                "token expired",
            ),
            (TokenReviewStatus::default(), "not authenticated"),
        ] {
            match classify(&c, &s) {
                Err(AuthError::Unauthenticated(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn service_account_refs() {
        let r: ServiceAccountRef = "ns/name".parse().expect("ok");
        assert_eq!(r.username(), "system:serviceaccount:ns:name");
        for bad in ["ns", "/name", "ns/", "a/b/c", ""] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_serve_their_hosts() {
        let host = |name: &str, node: &str| {
            let mut h = ZfsHost::new(name, zetaback_core::api::ZfsHostSpec::on_node(node));
            h.metadata.name = Some(name.into());
            h
        };
        let all = [host("db-1", "n1"), host("db-2", "n2"), host("db-3", "n1")];
        assert_eq!(
            hosts_of_node("n1", &all).into_iter().collect::<Vec<_>>(),
            vec!["db-1", "db-3"]
        );
        assert!(hosts_of_node("n9", &all).is_empty());
    }
}
