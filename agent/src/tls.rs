//! TLS building blocks from before mutual TLS: a server configuration from a certificate and
//! key without client authentication, and a client that verifies the server against a CA for
//! the URL's own host name (a catalogue reader's view; tests use it as the client that
//! replays a token). Agents and the controller use [`zetaback_core::peer_tls`] instead: mutual
//! TLS, the server pinned to the node the caller meant. PEM files (a Kubernetes TLS Secret:
//! `tls.crt`, `tls.key`, `ca.crt`), rustls with the *ring* provider.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// What can go wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto and cipher-suite order every zetaback part uses (`peer_tls::config::provider`).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    zetaback_core::peer_tls::config::provider()
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The server side: this agent's certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: the CA that signed the receiving agents' certificates.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: ca.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    // ALPN is set by the connector (`enable_http1`).
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` (HTTP/1.1), with the default connection limits
/// (see [`crate::listener`]); a failed or slow handshake is logged and dropped.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    config: Arc<ServerConfig>,
) -> io::Result<()> {
    crate::listener::serve(
        listener,
        router,
        crate::limits::ListenerLimits::default(),
        Some(config),
    )
    .await
}
