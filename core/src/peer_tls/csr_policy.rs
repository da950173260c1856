//! Whether the zetaback signer issues a CertificateSigningRequest (pure; issue 13, Build 4).
//!
//! Agents ask for their certificate through the Kubernetes CertificateSigningRequest API with
//! their release's signer ([`release_signer_name`]: one per installation of the chart, so two
//! releases in one cluster never answer each other's agents; [`SIGNER_NAME`] outside the
//! chart); the controller of that release is that signer. The apiserver records who made
//! the request (`spec.username`, and the claims of the token: `spec.extra`), which the
//! requester cannot choose. A request is issued only when
//! - it comes from the agents' ServiceAccount,
//! - with a token bound to a pod on a node (the node-name claim the apiserver puts in such
//!   tokens, `authentication.kubernetes.io/node-name`, exactly one value), and
//! - it asks for exactly the name of that node's agent (`<node>.node.zetaback.io`), nothing else
//!   (no other DNS name, no IP address, e-mail or URI, no CA), for the usages a peer needs.
//!
//! Anything else is denied, with the reason. So the agent of node A can never hold a
//! certificate naming node B, whatever it writes into its request.

use super::names::PeerIdentity;

/// The `spec.signerName` of zetaback's CertificateSigningRequests when none is given (a
/// controller and agents run outside the chart; the chart gives each release its own,
/// [`release_signer_name`]).
pub const SIGNER_NAME: &str = "zetaback.io/node";
/// The domain of every zetaback signer name.
pub const SIGNER_DOMAIN: &str = "zetaback.io";

/// The signer of the release `release` installed in `namespace`:
/// `zetaback.io/<namespace>.<release>` (the form the Kubernetes documentation suggests for a
/// signer per namespaced installation). The chart computes the same name.
pub fn release_signer_name(namespace: &str, release: &str) -> String {
    format!("{SIGNER_DOMAIN}/{namespace}.{release}")
}

/// Why a signer name is not one of zetaback's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "signer name {0:?} is not zetaback.io/<name> (<name>: lowercase letters, digits, '-' and '.', at most 253 characters)"
)]
pub struct SignerNameError(pub String);

/// Checks that `name` is a zetaback signer name: `zetaback.io/` then a DNS-subdomain-like path.
pub fn validate_signer_name(name: &str) -> Result<(), SignerNameError> {
    let bad = || SignerNameError(name.to_owned());
    let path = name
        .strip_prefix(SIGNER_DOMAIN)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(bad)?;
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if path.is_empty()
        || path.len() > 253
        || !path.chars().all(ok_char)
        || !edge(path.chars().next())
        || !edge(path.chars().last())
    {
        return Err(bad());
    }
    Ok(())
}
/// The `spec.extra` key of the node a requester's token is bound to.
pub const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
/// The usages an agent's request may list (`spec.usages`).
pub const ALLOWED_USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];

/// Who made a request, as the apiserver recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester<'a> {
    /// `spec.username`.
    pub username: &'a str,
    /// `spec.extra[NODE_NAME_CLAIM]` (absent: the token is bound to no node).
    pub node_claim: Option<&'a [String]>,
}

/// What a request asks for, as its PKCS#10 body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Every other subject alternative name (IP addresses, e-mails, URIs, other names).
    pub other_names: Vec<String>,
    /// Whether it asks to be a CA.
    pub is_ca: bool,
    /// `spec.usages`.
    pub usages: Vec<String>,
}

/// The signer's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Issue a certificate naming this node's agent (and nothing else).
    Issue(PeerIdentity),
    /// Deny, for this reason.
    Deny(String),
}

/// The username of `namespace/name`'s ServiceAccount tokens.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Decides a request to this release's signer: `agents` is the agents' ServiceAccount username
/// ([`service_account_username`]).
pub fn decide(agents: &str, who: &Requester<'_>, what: &Requested) -> Verdict {
    if who.username != agents {
        return Verdict::Deny(format!(
            "only the zetaback agents ({agents}) get node certificates, not {}",
            who.username
        ));
    }
    let node = match who.node_claim {
        Some([node]) if !node.is_empty() => node,
        _ => {
            return Verdict::Deny(format!(
                "the request was made with a token bound to no node (no single {NODE_NAME_CLAIM} claim): only an agent's pod on its node gets that node's certificate"
            ));
        }
    };
    let peer = match PeerIdentity::node(node) {
        Ok(p) => p,
        Err(e) => return Verdict::Deny(e.to_string()),
    };
    let own = peer.dns_name();
    let mut asked = what.dns_names.clone();
    asked.sort();
    asked.dedup();
    if asked != [own.as_str()] || !what.other_names.is_empty() {
        let mut all = asked;
        all.extend(what.other_names.iter().cloned());
        return Verdict::Deny(format!(
            "the agent on node {node} may ask only for {own}, not {all:?}"
        ));
    }
    if what.is_ca {
        return Verdict::Deny(format!(
            "the agent on node {node} asked for a CA certificate"
        ));
    }
    if let Some(u) = what
        .usages
        .iter()
        .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return Verdict::Deny(format!(
            "usage {u:?} is not one a zetaback peer needs ({ALLOWED_USAGES:?})"
        ));
    }
    Verdict::Issue(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AGENTS: &str = "system:serviceaccount:zb:zetaback-agent";

    fn node(n: &str) -> Vec<String> {
        vec![n.to_owned()]
    }

    fn asking(names: &[&str]) -> Requested {
        Requested {
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            usages: vec![
                "digital signature".into(),
                "server auth".into(),
                "client auth".into(),
            ],
            ..Requested::default()
        }
    }

    fn from(claim: &[String]) -> Requester<'_> {
        Requester {
            username: AGENTS,
            node_claim: Some(claim),
        }
    }

    #[test]
    fn an_agent_gets_its_own_nodes_name() {
        let a = node("node-a");
        assert_eq!(
            decide(AGENTS, &from(&a), &asking(&["node-a.node.zetaback.io"])),
            Verdict::Issue(PeerIdentity::Node("node-a".into()))
        );
        // The same name twice is still only that name.
        assert!(matches!(
            decide(
                AGENTS,
                &from(&a),
                &asking(&["node-a.node.zetaback.io", "node-a.node.zetaback.io"])
            ),
            Verdict::Issue(_)
        ));
    }

    #[test]
    fn another_nodes_name_is_denied() {
        let a = node("node-a");
        for names in [
            &["node-b.node.zetaback.io"][..],
            &["node-a.node.zetaback.io", "node-b.node.zetaback.io"],
            &["controller.zetaback.io"],
            &["node-a.node.zetaback.io", "controller.zetaback.io"],
            &["node-a"],
            &[],
        ] {
            let v = decide(AGENTS, &from(&a), &asking(names));
            assert!(matches!(v, Verdict::Deny(_)), "{names:?}: {v:?}");
        }
    }

    #[test]
    fn other_requesters_are_denied() {
        let what = asking(&["node-a.node.zetaback.io"]);
        let a = node("node-a");
        let controller = Requester {
            username: "system:serviceaccount:zb:zetaback-controller",
            node_claim: Some(&a),
        };
        let Verdict::Deny(why) = decide(AGENTS, &controller, &what) else {
            panic!("another ServiceAccount was issued a node certificate");
        };
        assert!(why.contains("zetaback-controller"), "{why}");
        let unbound = Requester {
            username: AGENTS,
            node_claim: None,
        };
        assert!(matches!(decide(AGENTS, &unbound, &what), Verdict::Deny(_)));
        let two = vec!["node-a".to_owned(), "node-b".to_owned()];
        assert!(matches!(
            decide(AGENTS, &from(&two), &what),
            Verdict::Deny(_)
        ));
        let empty = vec![String::new()];
        assert!(matches!(
            decide(AGENTS, &from(&empty), &what),
            Verdict::Deny(_)
        ));
        let user = Requester {
            username: "admin",
            node_claim: Some(&a),
        };
        assert!(matches!(decide(AGENTS, &user, &what), Verdict::Deny(_)));
    }

    #[test]
    fn extra_names_ca_and_usages_are_denied() {
        let a = node("node-a");
        let mut ip = asking(&["node-a.node.zetaback.io"]);
        ip.other_names.push("IP:10.0.0.1".into());
        assert!(matches!(decide(AGENTS, &from(&a), &ip), Verdict::Deny(_)));
        let mut ca = asking(&["node-a.node.zetaback.io"]);
        ca.is_ca = true;
        assert!(matches!(decide(AGENTS, &from(&a), &ca), Verdict::Deny(_)));
        let mut signing = asking(&["node-a.node.zetaback.io"]);
        signing.usages.push("cert sign".into());
        assert!(matches!(
            decide(AGENTS, &from(&a), &signing),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn signer_names_are_per_release_and_checked() {
        let name = release_signer_name("backup-system", "zetaback");
        assert_eq!(name, "zetaback.io/backup-system.zetaback");
        assert_eq!(validate_signer_name(&name), Ok(()));
        assert_eq!(validate_signer_name(SIGNER_NAME), Ok(()));
        assert_ne!(
            release_signer_name("ns-a", "zetaback"),
            release_signer_name("ns-b", "zetaback")
        );
        for bad in [
            "",
            "zetaback.io",
            "zetaback.io/",
            "example.com/node",
            "zetaback.io/Node",
            "zetaback.io/-node",
            "zetaback.io/node.",
            "zetaback.io/a/b",
            "kubernetes.io/kube-apiserver-client",
        ] {
            assert!(validate_signer_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever a node's agent asks for, a certificate is only ever issued for its node.
        #[test]
        fn only_the_requesters_node_is_ever_issued(
            claim in "[a-z0-9-]{1,12}",
            names in proptest::collection::vec("[a-z0-9.-]{0,12}(\\.node\\.zetaback\\.io)?", 0..3),
        ) {
            let c = vec![claim.clone()];
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Verdict::Issue(peer) = decide(AGENTS, &from(&c), &asking(&refs)) {
                prop_assert_eq!(peer, PeerIdentity::Node(claim.clone()));
                for n in &names {
                    prop_assert_eq!(n, &format!("{claim}.node.zetaback.io"));
                }
            }
        }
    }
}
