//! Who a zetaback certificate names (pure). The agent of node N: the DNS name
//! `N.node.zetaback.io`; the controller: `controller.zetaback.io`. A certificate used between
//! zetaback's parts names exactly one of them.

use std::fmt;

/// The domain under which agents' certificates name their node.
pub const NODE_DOMAIN: &str = "node.zetaback.io";
/// The name in the controller's certificate.
pub const CONTROLLER_NAME: &str = "controller.zetaback.io";

/// A peer, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerIdentity {
    /// The agent running on this Kubernetes node.
    Node(String),
    /// The controller.
    Controller,
}

/// Why a name is not a zetaback identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a node name (a DNS subdomain: lower-case letters, digits, '-' and '.')")]
    BadNode(String),
    #[error(
        "the certificate names no zetaback peer (expected <node>.{NODE_DOMAIN} or {CONTROLLER_NAME}); it names {0:?}"
    )]
    None(Vec<String>),
    #[error("the certificate names more than one zetaback peer: {0:?}")]
    Several(Vec<String>),
}

/// A Kubernetes node name: a DNS-1123 subdomain.
fn valid_node(node: &str) -> bool {
    let total = node.len() + 1 + NODE_DOMAIN.len();
    !node.is_empty()
        && total <= 253
        && node.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl PeerIdentity {
    /// The agent of `node`.
    pub fn node(node: &str) -> Result<Self, NameError> {
        if valid_node(node) {
            Ok(PeerIdentity::Node(node.to_owned()))
        } else {
            Err(NameError::BadNode(node.to_owned()))
        }
    }

    /// The DNS name a certificate of this peer carries.
    pub fn dns_name(&self) -> String {
        match self {
            PeerIdentity::Node(n) => format!("{n}.{NODE_DOMAIN}"),
            PeerIdentity::Controller => CONTROLLER_NAME.to_owned(),
        }
    }

    /// The peer a DNS name names, if it is a zetaback name (case-insensitive, as DNS).
    pub fn from_dns_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        if name == CONTROLLER_NAME {
            return Some(PeerIdentity::Controller);
        }
        let node = name.strip_suffix(NODE_DOMAIN)?.strip_suffix('.')?;
        PeerIdentity::node(node).ok()
    }

    /// The one zetaback peer among a certificate's DNS names; none or several is an error
    /// (a certificate must not speak for two peers).
    pub fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, NameError> {
        let names: Vec<&str> = names.into_iter().collect();
        let mut found: Vec<PeerIdentity> = names
            .iter()
            .filter_map(|n| PeerIdentity::from_dns_name(n))
            .collect();
        found.dedup();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(NameError::None(
                names.iter().map(|s| s.to_string()).collect(),
            )),
            _ => Err(NameError::Several(
                found.iter().map(PeerIdentity::dns_name).collect(),
            )),
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Node(n) => write!(f, "the agent of node {n}"),
            PeerIdentity::Controller => f.write_str("the controller"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        let n = PeerIdentity::node("worker-1.rack2").expect("node");
        assert_eq!(n.dns_name(), "worker-1.rack2.node.zetaback.io");
        assert_eq!(PeerIdentity::from_dns_name(&n.dns_name()), Some(n));
        assert_eq!(
            PeerIdentity::from_dns_name("controller.zetaback.io"),
            Some(PeerIdentity::Controller)
        );
        assert_eq!(
            PeerIdentity::from_dns_name("Node-A.NODE.zetaback.io"),
            Some(PeerIdentity::Node("node-a".into()))
        );
    }

    #[test]
    fn other_names_are_no_peer() {
        for name in [
            "node.zetaback.io",
            ".node.zetaback.io",
            "*.node.zetaback.io",
            "a.node.zetaback.io.evil.com",
            "anode.zetaback.io",
            "a_b.node.zetaback.io",
            "-a.node.zetaback.io",
            "a..b.node.zetaback.io",
            "controller.zetaback.io.",
            "127.0.0.1",
            "",
        ] {
            assert_eq!(PeerIdentity::from_dns_name(name), None, "{name}");
        }
        assert!(PeerIdentity::node("").is_err());
        assert!(PeerIdentity::node("UPPER").is_err());
        assert!(PeerIdentity::node(&"a".repeat(240)).is_err());
    }

    #[test]
    fn a_certificate_names_exactly_one_peer() {
        assert_eq!(
            PeerIdentity::of_names(["127.0.0.1", "a.node.zetaback.io", "a.node.zetaback.io"]),
            Ok(PeerIdentity::Node("a".into()))
        );
        assert!(matches!(
            PeerIdentity::of_names(["a.node.zetaback.io", "b.node.zetaback.io"]),
            Err(NameError::Several(_))
        ));
        assert!(matches!(
            PeerIdentity::of_names(["a.node.zetaback.io", "controller.zetaback.io"]),
            Err(NameError::Several(_))
        ));
        assert!(matches!(
            PeerIdentity::of_names(["backup-1"]),
            Err(NameError::None(_))
        ));
    }

    proptest! {
        #[test]
        fn every_valid_node_round_trips(node in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}") {
            let id = PeerIdentity::node(&node).expect("valid");
            prop_assert_eq!(PeerIdentity::from_dns_name(&id.dns_name()), Some(id));
        }

        #[test]
        fn no_other_string_parses_to_the_controller(s in "\\PC{0,40}") {
            if PeerIdentity::from_dns_name(&s) == Some(PeerIdentity::Controller) {
                prop_assert_eq!(s.to_ascii_lowercase(), CONTROLLER_NAME);
            }
        }
    }
}
