//! The zetaback CA, kept by the controller (issue 13, Build 4: the chart works out of the box
//! with mutual TLS, without cert-manager). The first controller to start makes the CA and
//! keeps it in a Secret of its namespace (`tls.crt`, `tls.key`); every later start, and every
//! other replica, reads that Secret (two first starts racing: the one whose create lost reads
//! the winner's). Its certificate, the only part agents need, is published in ConfigMap
//! [`CA_CONFIGMAP`] (entry [`CA_CERT_ENTRY`]), which agents may read and only the controller
//! writes. The controller signs its own certificate with it ([`own_tls`]) and the agents' through
//! the CertificateSigningRequest API ([`super::csr_signer`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tracing::info;
use zetaback_core::peer_tls::issue::{CertificateAuthority, IssueError};
use zetaback_core::peer_tls::{PeerIdentity, PeerTls, PeerTlsError};

/// The ConfigMap holding the CA certificate for agents.
pub const CA_CONFIGMAP: &str = "zetaback-ca";
/// Its entry with the CA certificate (PEM).
pub const CA_CERT_ENTRY: &str = "ca.crt";
/// The chart's name for the Secret keeping the CA.
pub const DEFAULT_CA_SECRET: &str = "zetaback-ca";
/// How long the controller's own certificate is valid (it makes a new one at every start).
pub const CONTROLLER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the CA cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error("{what} {namespace}/{name}: {source}")]
    Kube {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} holds no {entry}")]
    Missing {
        namespace: String,
        name: String,
        entry: &'static str,
    },
    #[error("the CA in Secret {namespace}/{name}: {source}")]
    Unusable {
        namespace: String,
        name: String,
        #[source]
        source: IssueError,
    },
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Tls(#[from] PeerTlsError),
}

fn entry(secret: &Secret, key: &'static str, ns: &str, name: &str) -> Result<String, CaStoreError> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .ok_or_else(|| CaStoreError::Missing {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            entry: key,
        })
}

fn read(secret: &Secret, ns: &str, name: &str) -> Result<CertificateAuthority, CaStoreError> {
    let cert = entry(secret, "tls.crt", ns, name)?;
    let key = entry(secret, "tls.key", ns, name)?;
    CertificateAuthority::from_pem(&cert, &key).map_err(|source| CaStoreError::Unusable {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// The CA kept in Secret `namespace/name`, made and kept there if there is none.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<CertificateAuthority, CaStoreError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |what: &'static str| {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        move |source| CaStoreError::Kube {
            what,
            namespace,
            name,
            source: Box::new(source),
        }
    };
    if let Some(secret) = api
        .get_opt(name)
        .await
        .map_err(kube_err("reading Secret"))?
    {
        return read(&secret, namespace, name);
    }
    let ca = CertificateAuthority::generate()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "zetaback".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            ("tls.key".to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(%namespace, secret = %name, "made the zetaback CA");
            Ok(ca)
        }
        // Another replica made it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(name).await.map_err(kube_err("reading Secret"))?;
            read(&secret, namespace, name)
        }
        Err(e) => Err(kube_err("creating Secret")(e)),
    }
}

/// Publishes the CA certificate in ConfigMap [`CA_CONFIGMAP`] of `namespace`.
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    ca: &CertificateAuthority,
) -> Result<(), CaStoreError> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CA_CERT_ENTRY.to_owned(),
            ca.cert_pem().to_owned(),
        )])),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            CA_CONFIGMAP,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map(|_| ())
        .map_err(|source| CaStoreError::Kube {
            what: "publishing ConfigMap",
            namespace: namespace.to_owned(),
            name: CA_CONFIGMAP.to_owned(),
            source: Box::new(source),
        })
}

/// The controller's own TLS: a new key and a certificate naming `controller.zetaback.io`,
/// signed by `ca` (no request needed: the controller holds the CA).
pub fn own_tls(ca: &CertificateAuthority) -> Result<Arc<PeerTls>, CaStoreError> {
    let (cert, key) = ca.issue_with_new_key(&PeerIdentity::Controller, CONTROLLER_CERT_LIFETIME)?;
    Ok(Arc::new(PeerTls::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        ca.cert_pem().as_bytes(),
    )?))
}

/// The CA of Secret `namespace/secret` (made if there is none), published; the signer of
/// agents' requests started in the background; the controller's own TLS returned.
pub async fn start_signer(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
    config: super::csr_signer::SignerConfig,
) -> Result<Arc<PeerTls>, CaStoreError> {
    let ca = load_or_create(client, namespace, secret).await?;
    publish(client, namespace, &ca).await?;
    let tls = own_tls(&ca)?;
    info!(
        agents = %config.agents_username,
        max_lifetime_seconds = config.max_lifetime.as_secs(),
        "mutual TLS with the controller as the zetaback CA; signing {}",
        zetaback_core::peer_tls::csr_policy::SIGNER_NAME
    );
    tokio::spawn(super::csr_signer::run(client.clone(), Arc::new(ca), config));
    Ok(tls)
}
