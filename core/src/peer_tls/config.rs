//! rustls configurations for [`super`]: a peer's certificate, key and the zetaback CA (PEM, as
//! in a Kubernetes TLS Secret), the server side (client certificates from the CA verified when
//! presented) and the client side (the server must hold a certificate from the CA that names
//! the peer the client meant, and the client presents its own). rustls with the *ring*
//! provider.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::names::{NameError, PeerIdentity};

/// Why TLS cannot be set up, or a certificate names no peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Pem { what: String, message: String },
    #[error("{0}: no certificate in it")]
    NoCertificate(String),
    #[error("the certificate is not usable: {0}")]
    Certificate(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto every TLS connection between zetaback's parts uses: ring's, with its cipher
/// suites in an order that prefers AES-128-GCM (TLS 1.3, then 1.2) over ring's first choice,
/// AES-256-GCM. Both are AEADs rustls considers safe; AES-128 does 10 rounds where AES-256
/// does 14, which shows on a backup stream that is encrypted and decrypted at hundreds of MB/s
/// on the same cores as `zfs send` and `zfs receive`. The client's order decides (rustls
/// servers follow it), and every part of zetaback builds its configurations from here.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(suite_preference);
    Arc::new(provider)
}

/// Where a cipher suite goes in [`provider`]'s order (lower first): TLS 1.3 before 1.2, as
/// ring has them, and in each AES-128-GCM first (a stable sort keeps ring's order otherwise).
fn suite_preference(suite: &rustls::SupportedCipherSuite) -> (bool, bool) {
    let tls12 = matches!(suite, rustls::SupportedCipherSuite::Tls12(_));
    let aes128 = matches!(
        suite.suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    );
    (tls12, !aes128)
}

fn config_error(e: impl std::fmt::Display) -> PeerTlsError {
    PeerTlsError::Config(e.to_string())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PeerTlsError::Pem {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PeerTlsError::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

/// The peer a certificate names (its DNS names; exactly one zetaback name).
pub fn identity_of_certificate(cert: &CertificateDer<'_>) -> Result<PeerIdentity, PeerTlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| PeerTlsError::Certificate(format!("{e:?}")))?;
    Ok(PeerIdentity::of_names(parsed.valid_dns_names())?)
}

fn roots_of(ca: &[u8]) -> Result<Arc<RootCertStore>, PeerTlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca, "CA bundle")? {
        roots
            .add(c)
            .map_err(|e| PeerTlsError::Certificate(format!("CA bundle: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A client without a certificate of its own (a catalogue reader, the CLI, which authenticates
/// with a reader's bearer token): it verifies that the store is the peer it meant.
#[derive(Debug)]
pub struct ReaderTls {
    roots: Arc<RootCertStore>,
}

impl ReaderTls {
    /// From the zetaback CA bundle (PEM file).
    pub fn from_file(ca: &Path) -> Result<Self, PeerTlsError> {
        Ok(Self {
            roots: roots_of(&read(ca)?)?,
        })
    }

    /// The client side, to reach `peer` (as [`PeerTls::client_config`], without a client
    /// certificate).
    pub fn client_config(&self, peer: &PeerIdentity) -> Result<Arc<ClientConfig>, PeerTlsError> {
        let verifier = Pinned::new(self.roots.clone(), peer)?;
        Ok(Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_error)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth(),
        ))
    }
}

/// This peer's TLS material: its certificate chain and key, and the CA it trusts. The
/// material can be replaced while in use ([`PeerTls::replace`]: a renewed certificate, a new
/// CA bundle) by one naming the same peer: connections made after it use the new material,
/// without a restart.
pub struct PeerTls {
    identity: PeerIdentity,
    current: RwLock<Arc<Material>>,
    generation: AtomicU64,
}

/// One certificate, key and CA bundle, with the server configuration made of them.
struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("identity", &self.identity)
            .field("generation", &self.generation())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    std::fs::read(path).map_err(|e| PeerTlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The server side: this peer's certificate; a client certificate, when one is sent, must come
/// from the CA (a client may also come without one: catalogue readers with a bearer token; the
/// store decides what such a caller may do).
fn server_config_of(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PeerTlsError> {
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(config_error)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl PeerTls {
    /// From PEM files: `cert` (chain, leaf first), `key`, `ca` (the zetaback CA bundle).
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, PeerTlsError> {
        let (c, k, a) = (read(cert)?, read(key)?, read(ca)?);
        Self::from_pem(&c, &k, &a).map_err(|e| match e {
            PeerTlsError::Pem { what, message } => PeerTlsError::Pem {
                what: format!(
                    "{what} ({})",
                    [cert, key, ca].map(|p| p.display().to_string()).join(", ")
                ),
                message,
            },
            other => other,
        })
    }

    /// From PEM text (the key must be the certificate's: checked here).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, PeerTlsError> {
        let chain = certificates(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| PeerTlsError::Pem {
            what: "private key".into(),
            message: e.to_string(),
        })?;
        let roots = roots_of(ca)?;
        let identity = identity_of_certificate(&chain[0])?;
        let server = server_config_of(&roots, &chain, &key)?;
        if let Ok(signing) = provider().key_provider.load_private_key(key.clone_key()) {
            let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
            certified.keys_match().map_err(|e| {
                PeerTlsError::Certificate(format!("the key is not the certificate's: {e}"))
            })?;
        }
        Ok(Self {
            identity,
            current: RwLock::new(Arc::new(Material {
                roots,
                chain,
                key,
                server,
            })),
            generation: AtomicU64::new(0),
        })
    }

    /// Who this peer's certificate says it is (the same for every replacement).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The validity and serial of the certificate in use now (its leaf).
    pub fn validity(&self) -> Result<super::renewal::Validity, super::renewal::ValidityError> {
        super::renewal::validity_of_leaf(&self.material().chain)
    }

    /// How many times the material was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn material(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Uses `next`'s certificate, key and CA from now on. `next` must name the same peer (a
    /// renewal cannot turn this agent into another node's).
    pub fn replace(&self, next: PeerTls) -> Result<(), PeerTlsError> {
        if next.identity != self.identity {
            return Err(PeerTlsError::Certificate(format!(
                "the new certificate names {}, not {} (kept the current one)",
                next.identity.dns_name(),
                self.identity.dns_name()
            )));
        }
        let material = next.material();
        match self.current.write() {
            Ok(mut m) => *m = material,
            Err(poisoned) => *poisoned.into_inner() = material,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The server side, with the current material (see [`server_config_of`]).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PeerTlsError> {
        Ok(self.material().server.clone())
    }

    /// The client side, to reach `peer`: the server must present a certificate from the CA
    /// naming `peer` (whatever host or address the URL has); this peer presents its own
    /// (the current material).
    pub fn client_config(&self, peer: &PeerIdentity) -> Result<Arc<ClientConfig>, PeerTlsError> {
        let m = self.material();
        let verifier = Pinned::new(m.roots.clone(), peer)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
            .map_err(config_error)?;
        Ok(Arc::new(config))
    }
}

/// The CA's usual verification, for the name of the peer the client meant instead of the
/// URL's host: the endpoint (an address a ZfsHost's status gives) only says where to connect.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl Pinned {
    fn new(roots: Arc<RootCertStore>, peer: &PeerIdentity) -> Result<Self, PeerTlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(config_error)?;
        let expected = ServerName::try_from(peer.dns_name()).map_err(config_error)?;
        Ok(Self { inner, expected })
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod cipher_order_tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_in_each_version_and_no_suite_is_lost() {
        let ring = rustls::crypto::ring::default_provider();
        let ours = provider();
        let names = |suites: &[rustls::SupportedCipherSuite]| {
            suites.iter().map(|s| s.suite()).collect::<Vec<_>>()
        };
        let mut theirs = names(&ring.cipher_suites);
        let ordered = names(&ours.cipher_suites);
        assert_eq!(ordered[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let first12 = ours
            .cipher_suites
            .iter()
            .position(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .expect("TLS 1.2 suites are kept");
        assert!(
            ours.cipher_suites[..first12]
                .iter()
                .all(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_))),
            "{ordered:?}"
        );
        assert!(
            matches!(
                ordered[first12],
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ),
            "{ordered:?}"
        );
        let mut sorted = ordered.clone();
        theirs.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, theirs, "the same suites, in another order");
    }
}
