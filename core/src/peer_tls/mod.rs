//! TLS between zetaback's parts, with both ends authenticated (issue 13, finding 5).
//!
//! Every agent and the controller hold a certificate from the zetaback CA that names who they
//! are ([`names`]): the agent of node N is `N.node.zetaback.io`, the controller is
//! `controller.zetaback.io`. A client names the peer it means to reach (the node of the
//! ZfsHost it wants, from the ZfsHost's `spec.nodeName`, which agents cannot write) and
//! accepts only a certificate from the CA for that name, whatever address the peer's
//! `status.agentEndpoint` gave ([`config::PeerTls::client_config`]): a forged endpoint leads to
//! a failed handshake, before a token or a byte of a stream is sent. The store takes its
//! callers' identity from their client certificate ([`config::identity_of_certificate`]), so
//! agents and the controller send no bearer token a store could replay elsewhere.

pub mod config;
pub mod csr_policy;
pub mod issue;
pub mod names;
pub mod reload;
pub mod renewal;

pub use config::{PeerTls, PeerTlsError, ReaderTls, identity_of_certificate};
pub use names::{CONTROLLER_NAME, NODE_DOMAIN, NameError, PeerIdentity};
