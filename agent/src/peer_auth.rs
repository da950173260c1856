//! Callers known by their client certificate (issue 13, finding 5). Over TLS, the agents and
//! the controller present a certificate from the zetaback CA naming who they are
//! ([`zetaback_core::peer_tls`]); the listener verifies it during the handshake and passes
//! the name it states to the store in an internal header, [`H_PEER`], after removing any
//! header of that name the client sent ([`stamp`]). The store then takes the caller from the
//! certificate ([`caller_of_certificate`]) and, on a TLS store, refuses a bearer token from
//! anyone but a catalogue reader ([`token_allowed`]): an agent's or the controller's token
//! that a store received could otherwise be replayed to another store for its lifetime.

use http::{HeaderMap, HeaderValue};
use zetaback_core::peer_tls::PeerIdentity;

use crate::identity::{AuthError, Authenticator, Caller};

/// The internal header carrying the peer the client certificate names (set by the listener
/// only; a client's own is removed).
pub const H_PEER: &str = "x-zetaback-internal-peer-certificate";

/// Removes any [`H_PEER`] the client sent, and sets the one the handshake verified.
pub fn stamp(headers: &mut HeaderMap, verified: Option<&HeaderValue>) {
    headers.remove(H_PEER);
    if let Some(v) = verified {
        headers.insert(H_PEER, v.clone());
    }
}

/// The header value for a verified peer.
pub fn header_value(peer: &PeerIdentity) -> Option<HeaderValue> {
    HeaderValue::from_str(&peer.dns_name()).ok()
}

/// The caller a verified client certificate names, if the connection had one.
pub async fn caller_of_certificate(
    auth: &dyn Authenticator,
    headers: &HeaderMap,
) -> Result<Option<Caller>, AuthError> {
    let Some(value) = headers.get(H_PEER) else {
        return Ok(None);
    };
    let peer = value
        .to_str()
        .ok()
        .and_then(PeerIdentity::from_dns_name)
        .ok_or_else(|| AuthError::Unauthenticated("a client certificate naming no peer".into()))?;
    match peer {
        PeerIdentity::Controller => Ok(Some(Caller::Controller)),
        PeerIdentity::Node(node) => {
            let hosts = auth.hosts_of_node(&node).await?;
            Ok(Some(Caller::Agent { node, hosts }))
        }
    }
}

/// Whether a caller known by a bearer token is accepted: on a store that takes client
/// certificates, only readers (the CLI) still use tokens.
pub fn token_allowed(caller: &Caller, certificates_required: bool) -> Result<(), String> {
    match caller {
        _ if !certificates_required => Ok(()),
        Caller::Reader => Ok(()),
        other => Err(format!(
            "{other} must authenticate with its client certificate on this store (TLS); its bearer token is refused, so a token one store received cannot be replayed to another"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_own_peer_header_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(H_PEER, HeaderValue::from_static("controller.zetaback.io"));
        stamp(&mut h, None);
        assert!(h.get(H_PEER).is_none());
        h.insert(H_PEER, HeaderValue::from_static("controller.zetaback.io"));
        h.append(H_PEER, HeaderValue::from_static("controller.zetaback.io"));
        let verified = header_value(&PeerIdentity::Node("n1".into()));
        stamp(&mut h, verified.as_ref());
        let all: Vec<_> = h.get_all(H_PEER).iter().collect();
        assert_eq!(all, vec![&HeaderValue::from_static("n1.node.zetaback.io")]);
    }

    #[test]
    fn tokens_on_a_certificate_store_are_for_readers_only() {
        let agent = Caller::agent("n1", ["h1"]);
        assert!(token_allowed(&agent, false).is_ok());
        assert!(token_allowed(&Caller::Controller, false).is_ok());
        assert!(token_allowed(&Caller::Reader, true).is_ok());
        let e = token_allowed(&agent, true).expect_err("agent token refused");
        assert!(e.contains("client certificate"), "{e}");
        assert!(token_allowed(&Caller::Controller, true).is_err());
    }
}
