//! The agent's listening socket: HTTP/1.1 only (no h2c by accident: hyper-util's `auto`
//! builder, which `axum::serve` uses, answers an HTTP/2 preface too), plaintext or TLS, with
//! a cap on connections served at once (one more is answered `503` and closed) and a time
//! limit on reading a request head (a slow or idle connection is closed instead of holding a
//! slot). Bodies have their own limits in the stream API.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::limits::ListenerLimits;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the `503` to a connection over the cap may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A pause after a failed `accept` (out of file descriptors: the next one would fail too).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\nretry-after: 5\r\ncontent-length: 63\r\n\r\n{\"error\":\"too many connections to this agent; try again later\"}";

/// Where a connection's TLS configuration comes from.
#[derive(Clone)]
enum Tls {
    Fixed(TlsAcceptor),
    /// The peer's current material, read for every connection: a renewed certificate is
    /// served from the next connection on ([`zetaback_core::peer_tls::PeerTls::replace`]).
    Current(Arc<zetaback_core::peer_tls::PeerTls>),
}

impl Tls {
    fn acceptor(&self) -> Option<TlsAcceptor> {
        match self {
            Tls::Fixed(a) => Some(a.clone()),
            Tls::Current(peer) => match peer.server_config() {
                Ok(c) => Some(TlsAcceptor::from(c)),
                Err(e) => {
                    warn!(error = %e, "no TLS configuration");
                    None
                }
            },
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    tls: Option<Arc<ServerConfig>>,
) -> io::Result<()> {
    serve_with(
        listener,
        router,
        limits,
        tls.map(|c| Tls::Fixed(TlsAcceptor::from(c))),
    )
    .await
}

/// As [`serve`], over mutual TLS with `peer`'s current certificate (renewals are served
/// without a restart), or plaintext with `None`.
pub async fn serve_peer(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    peer: Option<Arc<zetaback_core::peer_tls::PeerTls>>,
) -> io::Result<()> {
    serve_with(listener, router, limits, peer.map(Tls::Current)).await
}

async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    tls: Option<Tls>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, max = limits.max_connections, "connection refused: too many at once");
            tokio::spawn(refuse(tcp));
            continue;
        };
        let router = router.clone();
        let acceptor = match &tls {
            None => None,
            Some(t) => match t.acceptor() {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => http1(tcp, router, timeout, peer, None).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => match client_certificate(&tls) {
                            Ok(verified) => http1(tls, router, timeout, peer, verified).await,
                            Err(e) => warn!(%peer, error = %e, "client certificate names no peer"),
                        },
                        Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => warn!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Answers 503 and closes.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        tcp.write_all(OVER_CAP).await?;
        tcp.shutdown().await
    })
    .await;
}

/// The peer a connection's client certificate names (verified against the CA during the
/// handshake); none without one. A certificate from the CA that names no peer is an error.
fn client_certificate(
    tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Result<Option<HeaderValue>, zetaback_core::peer_tls::PeerTlsError> {
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return Ok(None);
    };
    let peer = zetaback_core::peer_tls::identity_of_certificate(cert)?;
    Ok(crate::peer_auth::header_value(&peer))
}

/// One HTTP/1.1 connection (keep-alive; the head of each request within `header_timeout`,
/// which also bounds the idle time between requests). Every request carries the peer its
/// client certificate named, and only that ([`crate::peer_auth::stamp`]).
async fn http1<I>(
    io: I,
    router: axum::Router,
    header_timeout: Duration,
    peer: std::net::SocketAddr,
    verified: Option<HeaderValue>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = TowerToHyperService::new(router);
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            crate::peer_auth::stamp(req.headers_mut(), verified.as_ref());
            hyper::service::Service::call(&inner, req)
        });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
