//! How the controller (and the CLI) reach a backup host's agent: over mutual TLS to the node
//! the backup host's ZfsHost names (issue 13, finding 5), or in the explicit plaintext mode.
//!
//! An endpoint is written `node@address` ([`peer_address`]): `address` comes from the ZfsHost's
//! `status.agentEndpoint` (which its agent writes) and only says where to connect; `node` comes
//! from its `spec.nodeName` (which agents cannot write) and is the peer the certificate must
//! name ([`zetaback_core::peer_tls`]). [`route`] splits a request URL into the peer to verify
//! and the URL to send; [`Clients`] keeps one HTTPS client per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use zetaback_core::peer_tls::{PeerIdentity, PeerTls, ReaderTls};

/// How this client authenticates over TLS.
#[derive(Debug, Clone)]
pub enum ClientTls {
    /// With its certificate (the controller): no bearer token is sent.
    Mutual(Arc<PeerTls>),
    /// With a reader's bearer token (the CLI), the store verified all the same.
    Reader(Arc<ReaderTls>),
}

/// A client for one store: plaintext, or mutual TLS to one peer.
#[derive(Clone)]
pub enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    /// Sends `req`.
    pub fn request(&self, req: hyper::Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Tls(c) => c.request(req),
        }
    }
}

/// `node@endpoint`: the agent at `endpoint`, which over TLS must prove it is `node`'s.
pub fn peer_address(node: &str, endpoint: &str) -> String {
    format!("{node}@{endpoint}")
}

/// A ZfsHost's store endpoint, `node@address` (none before its agent published an address).
pub fn endpoint_of(host: &zetaback_core::api::ZfsHost) -> Option<String> {
    let address = host.status.as_ref()?.agent_endpoint.as_deref()?;
    Some(peer_address(&host.spec.node_name, address))
}

/// A request URL, split: the node named before `@` (if any), and the URL without it.
pub fn route(url: &str) -> (Option<&str>, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (None, url.to_owned());
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.split_once('@') {
        Some((node, addr)) => (Some(node), format!("{scheme}://{addr}{path}")),
        None => (None, url.to_owned()),
    }
}

/// Why a request cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("TLS is on but the endpoint names no node to verify (expected node@address)")]
    NoPeer,
    #[error("{0}")]
    Peer(String),
}

/// One HTTPS client per peer (TLS), or one plaintext client.
#[derive(Clone)]
pub struct Clients {
    tls: Option<ClientTls>,
    /// Per peer: the client, and the generation of this controller's certificate it was made
    /// with (a renewed certificate makes new clients, [`PeerTls::replace`]).
    by_peer: Arc<Mutex<HashMap<String, (u64, HttpClient)>>>,
    plaintext: HttpClient,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    c
}

/// An HTTPS-only client with this configuration.
fn build_tls(config: rustls::ClientConfig) -> HttpClient {
    let mut tcp = connector();
    tcp.enforce_http(false);
    let c = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    HttpClient::Tls(Client::builder(TokioExecutor::new()).build(c))
}

impl Clients {
    /// Mutual TLS with `tls`, or plaintext (`None`: the explicit `--insecure-plaintext`).
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self {
            tls,
            by_peer: Arc::default(),
            plaintext: HttpClient::Plain(Client::builder(TokioExecutor::new()).build(connector())),
        }
    }

    /// The client and URL for `url` (`scheme://[node@]address/path`).
    pub fn for_url(&self, url: &str) -> Result<(HttpClient, String), RouteError> {
        let (node, clean) = route(url);
        let Some(tls) = &self.tls else {
            return Ok((self.plaintext.clone(), clean));
        };
        let node = node.ok_or(RouteError::NoPeer)?;
        let clean = match clean.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => clean,
        };
        let mut cache = self
            .by_peer
            .lock()
            .map_err(|_| RouteError::Peer("client cache poisoned".into()))?;
        let generation = match tls {
            ClientTls::Mutual(t) => t.generation(),
            ClientTls::Reader(_) => 0,
        };
        if let Some((g, c)) = cache.get(node)
            && *g == generation
        {
            return Ok((c.clone(), clean));
        }
        let peer = PeerIdentity::node(node).map_err(|e| RouteError::Peer(e.to_string()))?;
        let config = match tls {
            ClientTls::Mutual(t) => t.client_config(&peer),
            ClientTls::Reader(t) => t.client_config(&peer),
        }
        .map_err(|e| RouteError::Peer(e.to_string()))?;
        let client = build_tls((*config).clone());
        cache.insert(node.to_owned(), (generation, client.clone()));
        Ok((client, clean))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_peer_and_address() {
        assert_eq!(
            route("http://node-b@10.0.0.5:7790/v1/catalogue?host=a"),
            (
                Some("node-b"),
                "http://10.0.0.5:7790/v1/catalogue?host=a".to_owned()
            )
        );
        assert_eq!(
            route("http://10.0.0.5:7790/v1/catalogue"),
            (None, "http://10.0.0.5:7790/v1/catalogue".to_owned())
        );
        // An '@' in the path is not a peer.
        assert_eq!(
            route("http://10.0.0.5:7790/v1/streams/a@b"),
            (None, "http://10.0.0.5:7790/v1/streams/a@b".to_owned())
        );
        assert_eq!(
            route(&format!(
                "http://{}/v1/verify",
                peer_address("n1", "store.example:7790")
            )),
            (Some("n1"), "http://store.example:7790/v1/verify".to_owned())
        );
    }

    #[test]
    fn plaintext_clients_drop_the_peer_from_the_url() {
        let plain = Clients::new(None);
        let (_, url) = plain.for_url("http://n1@127.0.0.1:1/x").expect("plaintext");
        assert_eq!(url, "http://127.0.0.1:1/x");
    }
}
