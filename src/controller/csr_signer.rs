//! The signer of the CertificateSigningRequest API (issue 13, Build 4), one per release of the
//! chart (`zetaback.io/<namespace>.<release>`, [`SignerConfig::signer_name`]): agents ask for their node's certificate, the controller approves and signs it only when the
//! apiserver's record of who asked (the request's `spec.username` and the node-name claim of
//! the token it was made with) matches the one name asked for
//! ([`zetaback_core::peer_tls::csr_policy::decide`]); anything else is denied with the reason.
//! The certificate carries the request's public key and names the signer wrote, never the
//! request's own ([`zetaback_core::peer_tls::issue`]).
//!
//! Requests to other signers (another release's agents) are left alone: neither approved nor
//! denied, so two releases in one cluster each sign their own agents.
//!
//! Every replica runs it (approving and signing are writes with the object's resourceVersion:
//! of two replicas handling one request, one write fails and is logged), so agents get their
//! certificates while no replica leads.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};
use zetaback_core::peer_tls::csr_policy::{NODE_NAME_CLAIM, Requester, Verdict, decide};
use zetaback_core::peer_tls::issue::{CertificateAuthority, IssueError, parse_request};

/// The shortest certificate the signer issues (as the Kubernetes API's own minimum).
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);

/// The signer's settings.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// The agents' ServiceAccount username (`system:serviceaccount:<ns>:zetaback-agent`).
    pub agents_username: String,
    /// The longest certificate issued; also the lifetime of a request naming none.
    pub max_lifetime: Duration,
    /// The `spec.signerName` this controller answers
    /// ([`zetaback_core::peer_tls::csr_policy::release_signer_name`] in the chart); requests to
    /// any other signer are not its business.
    pub signer_name: String,
}

/// Why one request was not handled (logged; the watch goes on).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what} CertificateSigningRequest {name}: {source}")]
    Write {
        what: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("signing CertificateSigningRequest {name}: {source}")]
    Sign {
        name: String,
        #[source]
        source: IssueError,
    },
}

/// Handles every request to `config.signer_name` until the watch ends (never, short of a panic).
pub async fn run(client: Client, ca: Arc<CertificateAuthority>, config: SignerConfig) {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let watch = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("spec.signerName={}", config.signer_name)),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(watch);
    while let Some(event) = watch.next().await {
        match event {
            Ok(csr) => {
                if let Err(e) = handle(&api, &ca, &config, &csr).await {
                    warn!(error = %e, "certificate request not handled");
                }
            }
            Err(e) => warn!(error = %e, "watching CertificateSigningRequests"),
        }
    }
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn condition(kind: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        ..CertificateSigningRequestCondition::default()
    }
}

/// What to do with `csr`: `None` when it is already done (issued, denied or failed) or is for
/// another signer (another release's: left alone, not denied).
pub fn verdict(csr: &CertificateSigningRequest, config: &SignerConfig) -> Option<Verdict> {
    if csr.spec.signer_name != config.signer_name {
        return None;
    }
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if issued || has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return None;
    }
    let spec = &csr.spec;
    let who = Requester {
        username: spec.username.as_deref().unwrap_or_default(),
        node_claim: spec
            .extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME_CLAIM))
            .map(Vec::as_slice),
    };
    let pem = String::from_utf8_lossy(&spec.request.0);
    Some(
        match parse_request(&pem, spec.usages.clone().unwrap_or_default()) {
            Ok(parsed) => decide(&config.agents_username, &who, &parsed.requested),
            Err(e) => Verdict::Deny(format!("unreadable request: {e}")),
        },
    )
}

async fn handle(
    api: &Api<CertificateSigningRequest>,
    ca: &CertificateAuthority,
    config: &SignerConfig,
    csr: &CertificateSigningRequest,
) -> Result<(), SignError> {
    let name = csr.name_any();
    let Some(verdict) = verdict(csr, config) else {
        return Ok(());
    };
    let approved = has_condition(csr, "Approved");
    let write = |what: &'static str| {
        let name = name.clone();
        move |source| SignError::Write { what, name, source }
    };
    let peer = match verdict {
        Verdict::Deny(message) => {
            warn!(csr = %name, username = ?csr.spec.username, %message, "certificate request denied");
            // Approved by someone else (an administrator): the signer still does not sign,
            // and says why (Failed, through status).
            let (kind, reason) = if approved {
                ("Failed", "ZetabackIdentityMismatch")
            } else {
                ("Denied", "ZetabackIdentityMismatch")
            };
            let mut conditions = csr
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            conditions.push(condition(kind, reason, message));
            let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
            let pp = PatchParams::default();
            if approved {
                api.patch_status(&name, &pp, &patch)
                    .await
                    .map_err(write("marking failed"))?;
            } else {
                api.patch_approval(&name, &pp, &patch)
                    .await
                    .map_err(write("denying"))?;
            }
            return Ok(());
        }
        Verdict::Issue(peer) => peer,
    };
    if !approved {
        let patch = Patch::Merge(json!({"status": {"conditions": [condition(
            "Approved",
            "ZetabackNodeIdentity",
            format!("the request comes from {peer}, by its token's node-name claim"),
        )]}}));
        api.patch_approval(&name, &PatchParams::default(), &patch)
            .await
            .map_err(write("approving"))?;
    }
    let pem = String::from_utf8_lossy(&csr.spec.request.0);
    let parsed = parse_request(&pem, Vec::new()).map_err(|source| SignError::Sign {
        name: name.clone(),
        source,
    })?;
    let asked = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(config.max_lifetime);
    let lifetime = asked.clamp(MIN_LIFETIME, config.max_lifetime.max(MIN_LIFETIME));
    let cert = ca
        .issue(&peer, &parsed.public_key, lifetime)
        .map_err(|source| SignError::Sign {
            name: name.clone(),
            source,
        })?;
    let patch = Patch::Merge(json!({"status": {"certificate": ByteString(cert.into_bytes())}}));
    api.patch_status(&name, &PatchParams::default(), &patch)
        .await
        .map_err(write("writing the certificate of"))?;
    info!(csr = %name, %peer, lifetime_seconds = lifetime.as_secs(), "issued a node certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use zetaback_core::peer_tls::PeerIdentity;
    use zetaback_core::peer_tls::csr_policy::release_signer_name;
    use zetaback_core::peer_tls::issue::PeerKey;

    fn config(signer: &str) -> SignerConfig {
        SignerConfig {
            agents_username: "system:serviceaccount:rel-a:zetaback-agent".into(),
            max_lifetime: Duration::from_secs(3600),
            signer_name: signer.to_owned(),
        }
    }

    /// A request from `username` (token bound to node-a) for node-a's name, to `signer`.
    fn request(signer: &str, username: &str) -> CertificateSigningRequest {
        let peer = PeerIdentity::node("node-a").expect("node");
        let pem = PeerKey::generate()
            .expect("key")
            .request(&peer)
            .expect("csr");
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: signer.to_owned(),
                username: Some(username.to_owned()),
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                extra: Some(
                    [(NODE_NAME_CLAIM.to_owned(), vec!["node-a".to_owned()])]
                        .into_iter()
                        .collect(),
                ),
                ..CertificateSigningRequestSpec::default()
            },
            ..CertificateSigningRequest::default()
        }
    }

    #[test]
    fn another_releases_requests_are_left_alone() {
        let (ours, theirs) = (
            release_signer_name("rel-a", "zetaback"),
            release_signer_name("rel-b", "zetaback"),
        );
        let mine = config(&ours);
        // Our agent, our signer: issued.
        let own = request(&ours, "system:serviceaccount:rel-a:zetaback-agent");
        assert!(matches!(verdict(&own, &mine), Some(Verdict::Issue(_))));
        // Another release's agent asking its own signer: neither issued nor denied by us.
        let other = request(&theirs, "system:serviceaccount:rel-b:zetaback-agent");
        assert_eq!(verdict(&other, &mine), None);
        // Another release's agent asking OUR signer: denied (only our agents get ours).
        let intruder = request(&ours, "system:serviceaccount:rel-b:zetaback-agent");
        assert!(matches!(verdict(&intruder, &mine), Some(Verdict::Deny(_))));
    }
}
