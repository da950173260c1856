//! A fixed token → caller table, for a store that runs without Kubernetes (`--no-kube`,
//! `--identities-file`): tests on real ZFS without an apiserver, a plain backup server. Each
//! caller has a token of its own (a host's agent, the controller); nothing is shared by all
//! nodes. Tokens are kept only as sha256 digests. The Kubernetes deployment never uses it
//! (TokenReview: [`super::tokenreview`]).

use std::collections::HashMap;
use std::path::Path;

use futures::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AuthError, Authenticator, Caller};

/// One entry of an identities file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    token: String,
    /// `controller`, `reader`, or absent for an agent.
    #[serde(default)]
    role: Option<String>,
    /// An agent's node (default: its first host).
    #[serde(default)]
    node: Option<String>,
    /// The hosts an agent serves.
    #[serde(default)]
    hosts: Vec<String>,
}

/// Why an identities file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesFileError {
    #[error("reading identities file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("identities file {path} does not parse: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("identities file {path}: {why}")]
    Invalid { path: String, why: String },
}

/// Tokens and who presents them.
#[derive(Clone, Default)]
pub struct StaticIdentities {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl std::fmt::Debug for StaticIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticIdentities")
            .field("callers", &self.by_digest.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StaticIdentities {
    pub fn new() -> Self {
        Self::default()
    }

    /// `token` is `caller`'s.
    pub fn with(mut self, token: &str, caller: Caller) -> Self {
        self.by_digest.insert(digest(token), caller);
        self
    }

    /// `token` is the agent of `host` (on a node of the same name).
    pub fn agent(self, token: &str, host: &str) -> Self {
        self.with(token, Caller::agent(host, [host]))
    }

    /// `token` is the controller's.
    pub fn controller(self, token: &str) -> Self {
        self.with(token, Caller::Controller)
    }

    /// Reads a JSON list of `{"token": …, "hosts": [...], "node": …}` (an agent) and
    /// `{"token": …, "role": "controller" | "reader"}`.
    pub fn from_file(path: &Path) -> Result<Self, IdentitiesFileError> {
        let p = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| IdentitiesFileError::Read {
            path: p.clone(),
            source,
        })?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&text).map_err(|source| IdentitiesFileError::Parse {
                path: p.clone(),
                source,
            })?;
        let invalid = |why: String| IdentitiesFileError::Invalid {
            path: p.clone(),
            why,
        };
        let mut out = Self::new();
        for e in entries {
            let token = e.token.trim();
            if token.is_empty() {
                return Err(invalid("an entry has an empty token".into()));
            }
            let caller = match (e.role.as_deref(), e.hosts.is_empty()) {
                (Some("controller"), true) => Caller::Controller,
                (Some("reader"), true) => Caller::Reader,
                (None, false) => {
                    for h in &e.hosts {
                        zetaback_core::store::validate_host(h)
                            .map_err(|err| invalid(err.to_string()))?;
                    }
                    let node = e.node.clone().unwrap_or_else(|| e.hosts[0].clone());
                    Caller::agent(&node, e.hosts.clone())
                }
                (role, _) => {
                    return Err(invalid(format!(
                        "an entry must have hosts (an agent) or role controller|reader, not role {role:?} with hosts {:?}",
                        e.hosts
                    )));
                }
            };
            if out.by_digest.insert(digest(token), caller).is_some() {
                return Err(invalid("two entries have the same token".into()));
            }
        }
        Ok(out)
    }
}

impl Authenticator for StaticIdentities {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let found = self.by_digest.get(&digest(token)).cloned();
        Box::pin(async move {
            found.ok_or_else(|| AuthError::Unauthenticated("unknown bearer token".into()))
        })
    }

    fn hosts_of_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<std::collections::BTreeSet<String>, AuthError>> {
        let hosts = self
            .by_digest
            .values()
            .filter_map(|c| match c {
                Caller::Agent { node: n, hosts } if n == node => Some(hosts.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        Box::pin(async move { Ok(hosts) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_map_to_their_callers() {
        let ids = StaticIdentities::new().agent("ta", "db-a").controller("tc");
        assert_eq!(
            ids.authenticate("ta").await,
            Ok(Caller::agent("db-a", ["db-a"]))
        );
        assert_eq!(ids.authenticate("tc").await, Ok(Caller::Controller));
        assert!(ids.authenticate("t").await.is_err());
        assert!(ids.authenticate("").await.is_err());
        let hosts = ids.hosts_of_node("db-a").await.expect("hosts");
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            vec!["db-a".to_owned()]
        );
        assert!(ids.hosts_of_node("db-b").await.expect("hosts").is_empty());
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ids.json");
        let write = |s: &str| std::fs::write(&path, s).expect("write");
        write(
            r#"[{"token":"a","hosts":["db-a"],"node":"n1"},{"token":"c","role":"controller"},{"token":"r","role":"reader"}]"#,
        );
        let ids = StaticIdentities::from_file(&path).expect("parses");
        assert_eq!(
            ids.by_digest.get(&digest("a")),
            Some(&Caller::agent("n1", ["db-a"]))
        );
        assert_eq!(ids.by_digest.get(&digest("r")), Some(&Caller::Reader));
        for bad in [
            r#"[{"token":"a","hosts":["db-a"]},{"token":"a","role":"controller"}]"#,
            r#"[{"token":"","role":"controller"}]"#,
            r#"[{"token":"a","role":"admin"}]"#,
            r#"[{"token":"a","role":"controller","hosts":["x"]}]"#,
            r#"[{"token":"a","hosts":["../x"]}]"#,
            r#"[{"token":"a"}]"#,
        ] {
            write(bad);
            assert!(StaticIdentities::from_file(&path).is_err(), "{bad}");
        }
    }
}
