//! Who is calling the store: every caller presents its own bearer token (in Kubernetes, a
//! projected ServiceAccount token whose audience is the store's, checked with a TokenReview:
//! [`tokenreview`]), which an [`Authenticator`] turns into a [`Caller`]; [`rules`] then says
//! what that caller may do. There is no secret shared by all nodes: an agent's token names its
//! pod and node, and the store maps the node to the ZfsHosts it serves.
//!
//! [`static_map`] is a fixed token → caller table for stores that run without Kubernetes
//! (`--no-kube`: tests on real ZFS without an apiserver, a plain backup server).

pub mod grants;
pub mod rules;
pub mod static_map;
pub mod tokenreview;

use std::collections::BTreeSet;
use std::fmt;

use futures::future::BoxFuture;
use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use rules::{Forbidden, Operation, authorize};
pub use static_map::StaticIdentities;
pub use tokenreview::{TokenReviewConfig, TokenReviewer};

/// The audience the store's tokens must carry (a token minted for the apiserver, or for any
/// other audience, is refused).
pub const STORE_AUDIENCE: &str = "zetaback-store";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The agent on `node`, which serves `hosts` (the ZfsHosts whose `spec.nodeName` is its
    /// node; none when no ZfsHost names the node).
    Agent {
        node: String,
        hosts: BTreeSet<String>,
    },
    /// The controller: retention (delete), archiving, catalogues.
    Controller,
    /// A reader of catalogues only (`kubectl zetaback`).
    Reader,
}

impl Caller {
    /// An agent of `node` serving `hosts`.
    pub fn agent<I, S>(node: &str, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Caller::Agent {
            node: node.to_owned(),
            hosts: hosts.into_iter().map(Into::into).collect(),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Agent { node, hosts } if hosts.is_empty() => {
                write!(f, "the agent of node {node} (which serves no ZfsHost)")
            }
            Caller::Agent { node, hosts } => {
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                write!(f, "the agent of node {node} (host {})", hosts.join(", "))
            }
            Caller::Controller => f.write_str("the controller"),
            Caller::Reader => f.write_str("a catalogue reader"),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token is not valid, or not for this audience, or names no caller the store knows
    /// (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token could not be checked now (the apiserver is unreachable: 503).
    #[error("the caller's token cannot be checked now: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a caller.
pub trait Authenticator: Send + Sync + fmt::Debug {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;

    /// The ZfsHosts the agent of `node` serves (for a caller known by its client certificate,
    /// [`crate::peer_auth`]).
    fn hosts_of_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, AuthError>>;
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().expect("header"));
        h
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn callers_say_who_they_are() {
        assert_eq!(
            Caller::agent("n1", ["db-1", "db-2"]).to_string(),
            "the agent of node n1 (host db-1, db-2)"
        );
        assert_eq!(
            Caller::agent("n1", Vec::<String>::new()).to_string(),
            "the agent of node n1 (which serves no ZfsHost)"
        );
    }
}
