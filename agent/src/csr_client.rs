//! The agent's certificate through the CertificateSigningRequest API (issue 13, Build 4):
//! at start the agent makes a key (kept in memory only), asks its release's signer
//! ([`CsrSettings::signer_name`]: the release's controller,
//! [`zetaback_core::peer_tls::csr_policy`]) for a certificate naming its node,
//! waits for it, and reads the zetaback CA from the controller's ConfigMap. The request is
//! made with the agent pod's own credentials, so the apiserver records the node its token is
//! bound to; the signer issues nothing else.

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::info;
use zetaback_core::peer_tls::issue::{IssueError, PeerKey};
use zetaback_core::peer_tls::{NameError, PeerIdentity, PeerTls, PeerTlsError};

/// The ConfigMap entry holding the CA certificate (the controller's `ca_store`).
pub const CA_CERT_ENTRY: &str = "ca.crt";
/// The usages asked for.
pub const USAGES: [&str; 3] = ["digital signature", "server auth", "client auth"];

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct CsrSettings {
    /// The node this agent runs on (the name asked for).
    pub node: String,
    /// The ConfigMap with the zetaback CA, `(namespace, name)`.
    pub ca_configmap: (String, String),
    /// The certificate's lifetime asked for (`spec.expirationSeconds`).
    pub lifetime: Duration,
    /// How long to wait for the certificate before giving up.
    pub wait: Duration,
    /// The signer asked (`spec.signerName`): the release's, which its controller answers.
    pub signer_name: String,
}

/// Why no certificate was had.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("CertificateSigningRequest {name} was {kind}: {message}")]
    Refused {
        name: String,
        kind: String,
        message: String,
    },
    #[error(
        "no certificate for CertificateSigningRequest {name} within {seconds} s (is the zetaback controller running? is it the signer of this request's signerName?)"
    )]
    Timeout { name: String, seconds: u64 },
    #[error("ConfigMap {0} holds no {CA_CERT_ENTRY}")]
    NoCa(String),
    #[error("the issued certificate: {0}")]
    Tls(#[from] PeerTlsError),
    #[error("the issued certificate names {got}, not {wanted}")]
    WrongPeer { got: String, wanted: String },
}

/// An issued certificate in use.
#[derive(Debug)]
pub struct Obtained {
    pub tls: PeerTls,
    /// The CertificateSigningRequest it came from.
    pub request: String,
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CsrError {
    let what = what.into();
    move |source| CsrError::Kube { what, source }
}

/// The request object for `node`'s certificate, to `signer`.
pub fn request_object(
    node: &str,
    csr_pem: &str,
    lifetime: Duration,
    signer: &str,
) -> CertificateSigningRequest {
    // generateName is at most 253 - 5 characters; node names are DNS subdomains.
    let prefix: String = format!("zetaback-{node}-").chars().take(200).collect();
    CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            labels: Some(
                [("app.kubernetes.io/name".to_owned(), "zetaback".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: signer.to_owned(),
            usages: Some(USAGES.iter().map(|u| u.to_string()).collect()),
            expiration_seconds: i32::try_from(lifetime.as_secs()).ok(),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Asks for this node's certificate and waits for it.
pub async fn obtain(client: &kube::Client, settings: &CsrSettings) -> Result<Obtained, CsrError> {
    let peer = PeerIdentity::node(&settings.node)?;
    let key = PeerKey::generate()?;
    let csr_pem = key.request(&peer)?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(
            &PostParams::default(),
            &request_object(
                &settings.node,
                &csr_pem,
                settings.lifetime,
                &settings.signer_name,
            ),
        )
        .await
        .map_err(kube_err("creating a CertificateSigningRequest"))?;
    let name = created.metadata.name.unwrap_or_default();
    info!(csr = %name, signer = %settings.signer_name, node = %settings.node, "asked for this node's certificate");
    let cert = wait_for_certificate(&api, &name, settings.wait).await?;
    let (ns, cm) = &settings.ca_configmap;
    let ca = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(cm)
        .await
        .map_err(kube_err(format!("reading ConfigMap {ns}/{cm}")))?
        .data
        .and_then(|d| d.get(CA_CERT_ENTRY).cloned())
        .ok_or_else(|| CsrError::NoCa(format!("{ns}/{cm}")))?;
    let tls = PeerTls::from_pem(&cert, key.key_pem().as_bytes(), ca.as_bytes())?;
    if tls.identity() != &peer {
        return Err(CsrError::WrongPeer {
            got: tls.identity().dns_name(),
            wanted: peer.dns_name(),
        });
    }
    info!(csr = %name, identity = %peer.dns_name(), "certificate issued");
    Ok(Obtained { tls, request: name })
}

/// The certificate of request `name` once issued (denied or failed: an error).
pub async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    wait: Duration,
) -> Result<Vec<u8>, CsrError> {
    let start = Instant::now();
    loop {
        let csr = api.get(name).await.map_err(kube_err(format!(
            "reading CertificateSigningRequest {name}"
        )))?;
        let status = csr.status.unwrap_or_default();
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(CsrError::Refused {
                name: name.to_owned(),
                kind: c.type_.to_lowercase(),
                message: c.message.unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(cert.0);
        }
        if start.elapsed() >= wait {
            return Err(CsrError::Timeout {
                name: name.to_owned(),
                seconds: wait.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
