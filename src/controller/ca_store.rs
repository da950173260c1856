//! The zetaback CA, kept by the controller (issue 13, Build 4: the chart works out of the box
//! with mutual TLS, without cert-manager). The first controller to start makes the CA and
//! keeps it in a Secret of its namespace (`tls.crt`, `tls.key`); every later start, and every
//! other replica, reads that Secret (two first starts racing: the one whose create lost reads
//! the winner's). Its certificate, the only part agents need, is published in ConfigMap
//! [`CA_CONFIGMAP`] (entry [`CA_CERT_ENTRY`]), which agents may read and only the controller
//! writes. The controller signs its own certificate with it ([`own_tls`]) and the agents' through
//! the CertificateSigningRequest API ([`super::csr_signer`]).
//!
//! Rotating the CA (README, "Rotating the zetaback CA"): the Secret may also hold
//! [`TRUSTED_ENTRY`], CA certificates trusted besides the signing one (the next CA before it
//! signs, the previous one after). The controller trusts them and publishes them with the
//! signing CA's certificate in the ConfigMap ([`Kept::bundle`]), so during the overlap
//! certificates from both CAs are accepted everywhere.

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
/// The Secret entry with CA certificates trusted besides the signing CA (PEM, optional).
pub const TRUSTED_ENTRY: &str = "trusted.crt";
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

/// The CA kept in a Secret, and what is trusted with it.
pub struct Kept {
    /// The signing CA (`tls.crt`, `tls.key`).
    pub ca: CertificateAuthority,
    /// The CA certificates peers trust (PEM): the signing CA's, then [`TRUSTED_ENTRY`]'s.
    pub bundle: String,
}

fn kept(secret: &Secret, ns: &str, name: &str) -> Result<Kept, CaStoreError> {
    let ca = read(secret, ns, name)?;
    let mut bundle = ca.cert_pem().trim_end().to_owned();
    bundle.push('\n');
    if let Ok(trusted) = entry(secret, TRUSTED_ENTRY, ns, name) {
        let trusted = trusted.trim();
        if !trusted.is_empty() {
            bundle.push_str(trusted);
            bundle.push('\n');
        }
    }
    Ok(Kept { ca, bundle })
}

/// The CA kept in Secret `namespace/name`, made and kept there if there is none.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<CertificateAuthority, CaStoreError> {
    Ok(load_or_create_kept(client, namespace, name).await?.ca)
}

/// [`load_or_create`], with the certificates trusted besides the CA.
pub async fn load_or_create_kept(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Kept, CaStoreError> {
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
        return kept(&secret, namespace, name);
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
        Ok(created) => {
            info!(%namespace, secret = %name, "made the zetaback CA");
            kept(&created, namespace, name)
        }
        // Another replica made it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(name).await.map_err(kube_err("reading Secret"))?;
            kept(&secret, namespace, name)
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
    publish_bundle(client, namespace, ca.cert_pem()).await
}

/// Publishes the CA certificates peers trust (`bundle`, PEM) in ConfigMap [`CA_CONFIGMAP`].
pub async fn publish_bundle(
    client: &kube::Client,
    namespace: &str,
    bundle: &str,
) -> Result<(), CaStoreError> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CA_CERT_ENTRY.to_owned(),
            bundle.to_owned(),
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
    own_tls_trusting(ca, ca.cert_pem())
}

/// [`own_tls`], trusting the CA certificates of `bundle` (PEM).
pub fn own_tls_trusting(
    ca: &CertificateAuthority,
    bundle: &str,
) -> Result<Arc<PeerTls>, CaStoreError> {
    let (cert, key) = ca.issue_with_new_key(&PeerIdentity::Controller, CONTROLLER_CERT_LIFETIME)?;
    Ok(Arc::new(PeerTls::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        bundle.as_bytes(),
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
    let Kept { ca, bundle } = load_or_create_kept(client, namespace, secret).await?;
    publish_bundle(client, namespace, &bundle).await?;
    let tls = own_tls_trusting(&ca, &bundle)?;
    info!(
        trusted_cas = bundle.matches("BEGIN CERTIFICATE").count(),
        agents = %config.agents_username,
        max_lifetime_seconds = config.max_lifetime.as_secs(),
        signer = %config.signer_name,
        "mutual TLS with the controller as the zetaback CA; signing its agents' requests"
    );
    tokio::spawn(super::csr_signer::run(client.clone(), Arc::new(ca), config));
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_bundle_is_the_signing_ca_then_the_trusted_ones() {
        let (signing, other) = (
            CertificateAuthority::generate().expect("ca"),
            CertificateAuthority::generate().expect("ca"),
        );
        let key = signing.key_pem();
        let alone = kept(
            &secret(&[("tls.crt", signing.cert_pem()), ("tls.key", &key)]),
            "ns",
            "ca",
        )
        .expect("kept");
        assert_eq!(alone.bundle.trim(), signing.cert_pem().trim());
        let both = kept(
            &secret(&[
                ("tls.crt", signing.cert_pem()),
                ("tls.key", &key),
                (TRUSTED_ENTRY, other.cert_pem()),
            ]),
            "ns",
            "ca",
        )
        .expect("kept");
        assert_eq!(
            both.bundle,
            format!(
                "{}\n{}\n",
                signing.cert_pem().trim(),
                other.cert_pem().trim()
            )
        );
        assert_eq!(both.ca.cert_pem(), signing.cert_pem());
        // Both verify as trust anchors.
        own_tls_trusting(&both.ca, &both.bundle).expect("controller TLS trusting both");
    }
}
