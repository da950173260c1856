//! The zetaback CA and what it issues (issue 13, Build 4): the controller's CA (made once,
//! kept in a Secret), an agent's key and certificate request, and the certificates the CA
//! signs. ECDSA P-256 keys, rcgen with the *ring* provider.
//!
//! A certificate is never a copy of what a request asked for: [`CertificateAuthority::issue`]
//! takes only the request's public key (after checking the request's signature, so its sender
//! holds the private key) and writes the names itself, for the peer
//! [`super::csr_policy::decide`] allowed.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;

use super::csr_policy::Requested;
use super::names::PeerIdentity;

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from this long before they are issued (clock skew between nodes).
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "zetaback CA";

/// Why a key, request or certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the certificate request is not PEM: {0}")]
    Pem(String),
    #[error("no randomness for a serial number")]
    Random,
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> IssueError {
    move |source| IssueError::Rcgen { what, source }
}

fn serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// The CA that signs every zetaback peer's certificate.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA (a new key, a self-signed certificate valid for ten years).
    pub fn generate() -> Result<Self, IssueError> {
        let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        validity(&mut params, CA_LIFETIME);
        let cert = params
            .self_signed(&key)
            .map_err(rc("self-signing the CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept earlier (its certificate and key, PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("reading the CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate (PEM): what peers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM), to keep it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate naming `peer` (and nothing else) for `public_key`, valid for `lifetime`:
    /// serverAuth and clientAuth, PEM.
    pub fn issue(
        &self,
        peer: &PeerIdentity,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<String, IssueError> {
        let name = peer.dns_name();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, &name);
        params.subject_alt_names = vec![SanType::DnsName(
            name.as_str().try_into().map_err(rc("the peer's name"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        validity(&mut params, lifetime);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rc("signing the certificate"))?;
        Ok(cert.pem())
    }

    /// A new key and a certificate for it naming `peer` (the controller's own): `(cert, key)`,
    /// PEM.
    pub fn issue_with_new_key(
        &self,
        peer: &PeerIdentity,
        lifetime: Duration,
    ) -> Result<(String, String), IssueError> {
        let key = KeyPair::generate().map_err(rc("generating a key"))?;
        let cert = self.issue(peer, &key, lifetime)?;
        Ok((cert, key.serialize_pem()))
    }
}

/// A peer's new key and its certificate request (the agent's side).
pub struct PeerKey {
    key: KeyPair,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerKey").finish_non_exhaustive()
    }
}

impl PeerKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, IssueError> {
        Ok(Self {
            key: KeyPair::generate().map_err(rc("generating a key"))?,
        })
    }

    /// A certificate request (PKCS#10, PEM) for `peer`'s name, signed with this key.
    pub fn request(&self, peer: &PeerIdentity) -> Result<String, IssueError> {
        let name = peer.dns_name();
        let mut params =
            CertificateParams::new(vec![name.clone()]).map_err(rc("the peer's name"))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, &name);
        params
            .serialize_request(&self.key)
            .map_err(rc("making the request"))?
            .pem()
            .map_err(rc("encoding the request"))
    }

    /// The key (PEM), to use with the issued certificate.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A certificate request, read and its signature verified: what it asks for, and the public
/// key a certificate would be issued for.
pub struct ParsedRequest {
    pub requested: Requested,
    pub public_key: rcgen::PublicKey,
}

impl std::fmt::Debug for ParsedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedRequest")
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

/// Reads a PKCS#10 request (PEM) and checks it is signed by the key it carries. `usages`:
/// the CertificateSigningRequest's `spec.usages`.
pub fn parse_request(pem: &str, usages: Vec<String>) -> Result<ParsedRequest, IssueError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| IssueError::Pem(e.to_string()))?;
    parse_request_der(&der, usages)
}

/// [`parse_request`] from DER.
pub fn parse_request_der(
    der: &CertificateSigningRequestDer<'_>,
    usages: Vec<String>,
) -> Result<ParsedRequest, IssueError> {
    let csr = CertificateSigningRequestParams::from_der(der)
        .map_err(rc("reading the certificate request"))?;
    let mut requested = Requested {
        usages,
        is_ca: matches!(csr.params.is_ca, IsCa::Ca(_)),
        ..Requested::default()
    };
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(n) => requested.dns_names.push(n.as_str().to_owned()),
            SanType::IpAddress(ip) => requested.other_names.push(format!("IP:{ip}")),
            SanType::Rfc822Name(e) => requested.other_names.push(format!("email:{}", e.as_str())),
            SanType::URI(u) => requested.other_names.push(format!("URI:{}", u.as_str())),
            other => requested.other_names.push(format!("{other:?}")),
        }
    }
    Ok(ParsedRequest {
        requested,
        public_key: csr.public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_tls::{PeerTls, csr_policy};

    #[test]
    fn a_request_round_trips_into_a_usable_peer_certificate() {
        let ca = CertificateAuthority::generate().expect("ca");
        let ca = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).expect("kept ca");
        let peer = PeerIdentity::node("node-a").expect("node");
        let key = PeerKey::generate().expect("key");
        let parsed = parse_request(&key.request(&peer).expect("csr"), vec![]).expect("parsed");
        assert_eq!(parsed.requested.dns_names, vec!["node-a.node.zetaback.io"]);
        assert!(parsed.requested.other_names.is_empty());
        assert!(!parsed.requested.is_ca);
        let cert = ca
            .issue(&peer, &parsed.public_key, Duration::from_secs(3600))
            .expect("issued");
        let tls = PeerTls::from_pem(
            cert.as_bytes(),
            key.key_pem().as_bytes(),
            ca.cert_pem().as_bytes(),
        )
        .expect("a peer certificate from the CA");
        assert_eq!(tls.identity(), &peer);
        assert!(tls.server_config().is_ok());
        assert!(tls.client_config(&peer).is_ok());
    }

    #[test]
    fn a_request_signed_by_another_key_is_refused() {
        let peer = PeerIdentity::node("node-a").expect("node");
        let pem = PeerKey::generate()
            .expect("key")
            .request(&peer)
            .expect("csr");
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).expect("der");
        assert!(parse_request_der(&der, vec![]).is_ok());
        // Flip one byte of the signature (the request's last bytes).
        let mut forged = der.as_ref().to_vec();
        let last = forged.len() - 2;
        forged[last] ^= 0x01;
        assert!(parse_request_der(&forged.into(), vec![]).is_err());
    }

    #[test]
    fn extra_names_in_a_request_are_seen() {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![
            "node-a.node.zetaback.io".to_owned(),
            "10.1.2.3".to_owned(),
        ])
        .expect("params");
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let parsed = parse_request(&pem, vec![]).expect("parsed");
        assert_eq!(parsed.requested.other_names, vec!["IP:10.1.2.3"]);
        let agents = "system:serviceaccount:zb:zetaback-agent";
        let claim = vec!["node-a".to_owned()];
        let who = csr_policy::Requester {
            username: agents,
            node_claim: Some(&claim),
        };
        assert!(matches!(
            csr_policy::decide(agents, &who, &parsed.requested),
            csr_policy::Verdict::Deny(_)
        ));
    }
}
