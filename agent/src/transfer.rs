//! The sending side of a transfer: streams a reader (the stdout of `zfs send`) to a target
//! agent with `PUT /v1/streams/...`, optionally zstd-compressed and rate-limited, hashing what
//! it sends (the transit check); and reads a stored stream back (`GET`) for restores,
//! verifying its sha256.
//!
//! A stream is only ever ended cleanly (final chunk plus a `x-zetaback-xxh3` trailer, the
//! transit check of [`crate::checksum`]) after the source said it completed (`zfs send` exited
//! 0); otherwise the request is aborted mid-body, and the target discards what it got. The
//! sender does not compute the sha256: the target does, over what it writes, and records it.
//!
//! Memory is bounded: read buffers of [`CHUNK`] bytes come from a small pool and go back to it
//! when hyper has written them (no allocation per chunk), and a channel of at most
//! [`CHANNEL_DEPTH`] chunks sits between the reader and the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE, TRAILER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tracing::debug;
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::error_chain;
use zetaback_core::store::StreamId;

use crate::bufpool::BufPool;
use crate::checksum::Transit;
use crate::ratelimit::RateLimiter;
use zetaback_core::peer_tls::{PeerIdentity, PeerTls};

use crate::wire::{
    ErrorBody, H_BASE_SNAPSHOT, H_COMPRESSION, H_EXPECTED_BYTES, H_POLICY, H_RAW, H_RECEIVE_INTO,
    H_RESUME_TOKEN, H_SHA256, H_SNAPSHOT, H_STORE_PATH, H_XXH3, PutResponse, ResumeTokenResponse,
    routes,
};

/// Chunks in flight between the reader task and the HTTP connection.
pub const CHANNEL_DEPTH: usize = 8;
/// The read size (and the size of each pooled buffer).
pub const CHUNK: usize = 512 * 1024;

/// The request body type of the transfer clients.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// A target agent.
#[derive(Clone)]
pub struct Endpoint {
    /// `http://host:port`, or `https://host:port` with [`Endpoint::tls`].
    pub base: String,
    /// The bearer token sent (empty: none; a TLS endpoint authenticates this agent by its
    /// client certificate instead).
    pub token: String,
    /// Mutual TLS to the peer the caller meant ([`Endpoint::over_tls`]).
    pub tls: Option<PeerTlsTarget>,
}

/// Mutual TLS to a named peer: the client configuration accepts only that peer's
/// certificate from the zetaback CA ([`zetaback_core::peer_tls`]).
#[derive(Clone)]
pub struct PeerTlsTarget {
    pub peer: PeerIdentity,
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("peer", &self.tls.as_ref().map(|t| t.peer.dns_name()))
            .finish()
    }
}

impl Endpoint {
    /// From a ZfsHost's `status.agentEndpoint` (`host:port`, or a full `http://` URL).
    pub fn new(agent_endpoint: &str, token: impl Into<String>) -> Self {
        let base =
            if agent_endpoint.starts_with("http://") || agent_endpoint.starts_with("https://") {
                agent_endpoint.trim_end_matches('/').to_owned()
            } else {
                format!("http://{agent_endpoint}")
            };
        Self {
            base,
            token: token.into(),
            tls: None,
        }
    }

    /// The same endpoint over mutual TLS, to `peer` only (its certificate must name it,
    /// wherever the address leads), with this agent's certificate instead of a bearer token.
    pub fn over_tls(mut self, tls: &PeerTls, peer: PeerIdentity) -> Result<Self, TransferError> {
        let config = tls
            .client_config(&peer)
            .map_err(|e| TransferError::Invalid(format!("TLS to {peer}: {e}")))?;
        self = self.https();
        self.token.clear();
        self.tls = Some(PeerTlsTarget { peer, config });
        Ok(self)
    }

    /// The same endpoint over TLS (`https://`).
    pub fn https(mut self) -> Self {
        if let Some(rest) = self.base.strip_prefix("http://") {
            self.base = format!("https://{rest}");
        }
        self
    }

    fn url(&self, host: &str, dataset: &str, id: &StreamId) -> Result<String, TransferError> {
        let path =
            routes::stream(host, dataset, id).map_err(|e| TransferError::Invalid(e.to_string()))?;
        Ok(format!("{}{path}", self.base))
    }
}

/// What can go wrong in a transfer.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid transfer: {0}")]
    Invalid(String),
    #[error("connection to the target agent failed: {0}")]
    Connection(String),
    #[error("the target agent refused the stream ({status}): {message}")]
    Rejected { status: StatusCode, message: String },
    #[error("the source failed: {0}")]
    Source(String),
    #[error("reading the stream failed: {0}")]
    Read(String),
    #[error("the target received {target} but {sent} was sent (transit check, xxh3-128 and bytes)")]
    Mismatch { sent: String, target: String },
    /// The whole stream was sent, but the target's answer did not come (the answer timeout, or
    /// the connection broke after the last byte): the target may have stored it.
    #[error("the whole stream was sent ({} bytes) but the target did not answer: {why}", sent.bytes)]
    Unanswered { why: String, sent: Sent },
}

/// What the sender sent, whole: its bytes and their xxh3-128 (the transit check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub xxh3: String,
}

/// The default of [`Upload::answer_timeout`]: longer than a target's own limit on a receive's
/// commit (`--zfs-timeout`, 300 s) plus the fsyncs of a large file.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub host: String,
    pub dataset: String,
    pub id: StreamId,
    pub snapshot: String,
    pub base_snapshot: Option<String>,
    pub compression: Compression,
    /// Replica mode: the target dataset root.
    pub receive_into: Option<String>,
    /// File mode: the store path the job expects.
    pub store_path: Option<String>,
    /// Bytes per second, 0 = unlimited.
    pub bandwidth_limit: u64,
    /// Give up when no progress was made for this long (a cut link sends no reset), while
    /// the stream is being sent.
    pub idle_timeout: Duration,
    /// Once the whole stream is sent: how long the target may take to answer (it fsyncs the
    /// file, or `zfs receive` commits) before the sender stops waiting and asks the target's
    /// catalogue instead ([`TransferError::Unanswered`]).
    pub answer_timeout: Duration,
    /// Replica mode: the stream resumes an interrupted receive (`zfs send -t TOKEN`).
    pub resume_token: Option<String>,
    /// The BackupPolicy the stream is made for, `<namespace>/<name>` (the store records it).
    pub policy: Option<String>,
    /// The stream is `zfs send -w` (raw, encrypted): the store records it.
    pub raw: bool,
}

/// A finished upload: what the target said, and what was sent.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The target's answer; `response.sha256` is what its manifest records.
    pub response: PutResponse,
    pub sent_bytes: u64,
    /// xxh3-128 of what was sent (the transit check).
    pub sent_xxh3: String,
}

/// Resolves when the source finished: `Err(message)` if it failed.
pub type SourceDone = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The TCP connector under every transfer client (Nagle off: a stream's last small frames,
/// the trailer among them, go out at once).
fn tcp() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp
}

/// A transfer client over `connector` (plain TCP, or TLS over it).
fn client_over<C: Connect + Clone + Send + Sync + 'static>(connector: C) -> Client<C, BoxBody> {
    Client::builder(TokioExecutor::new()).build(connector)
}

/// An HTTP client for agent-to-agent transfers.
pub fn client() -> Client<HttpConnector, BoxBody> {
    client_over(tcp())
}

/// An HTTPS-only client for agent-to-agent transfers: the receiving agent's certificate must
/// verify against the configured CA (see [`crate::tls`]); `http://` URLs are refused.
pub type TlsClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// A [`TlsClient`] with this client configuration.
pub fn tls_client(config: Arc<rustls::ClientConfig>) -> TlsClient {
    let mut tcp = tcp();
    // The TLS layer is given https:// URLs; the TCP connector must not refuse them.
    tcp.enforce_http(false);
    client_over(
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(tcp),
    )
}

/// A client for `endpoint`: over mutual TLS to its named peer when it has one (`https://`
/// only), else plaintext (`http://` only).
pub fn client_for(endpoint: &Endpoint) -> TlsClient {
    let mut tcp = tcp();
    tcp.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match &endpoint.tls {
        Some(t) => builder
            .with_tls_config((*t.config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(tcp),
        // No roots: an https:// URL without a named peer fails its handshake.
        None => builder
            .with_tls_config(plaintext_only_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp),
    };
    client_over(connector)
}

/// A client configuration that trusts nothing (the plaintext client's TLS side).
fn plaintext_only_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(zetaback_core::peer_tls::config::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable_config())
}

/// The ring provider supports the default protocol versions; this is never reached.
#[cold]
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Adds the endpoint's bearer token, if it has one.
fn with_token(builder: http::request::Builder, endpoint: &Endpoint) -> http::request::Builder {
    if endpoint.token.is_empty() {
        builder
    } else {
        builder.header(AUTHORIZATION, format!("Bearer {}", endpoint.token))
    }
}

/// A `GET url` request carrying the endpoint's token and `headers`.
pub(crate) fn get_request(
    endpoint: &Endpoint,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Request<BoxBody>, TransferError> {
    let mut builder = with_token(Request::builder().method(Method::GET).uri(url), endpoint);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(BodyExt::boxed(
            http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}),
        ))
        .map_err(|e| TransferError::Invalid(e.to_string()))
}

/// `GET url` with the endpoint's token; the response if it is 200, else the agent's refusal.
pub(crate) async fn get<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    url: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, TransferError> {
    let req = get_request(endpoint, url, &[])?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| TransferError::Connection(error_chain::format(&e)))?;
    if resp.status() != StatusCode::OK {
        return Err(TransferError::Rejected {
            status: resp.status(),
            message: error_message(resp).await,
        });
    }
    Ok(resp)
}

/// The most a small JSON answer of the stream API may have (a `PutResponse` or a resume
/// token is a few hundred bytes).
pub const MAX_JSON_ANSWER: usize = 64 * 1024;
/// The most a catalogue answer may have (about 400 bytes a backup: 160 000 backups).
pub const MAX_CATALOGUE_ANSWER: usize = 64 * 1024 * 1024;
/// The most of an error answer that is read (the rest is cut off).
pub const MAX_ERROR_ANSWER: usize = 16 * 1024;

/// Up to `limit` bytes of a body; whether there was more (the rest is not read).
pub(crate) async fn read_prefix(
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<(Vec<u8>, bool), hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = limit - out.len();
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                return Ok((out, true));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((out, false))
}

/// The JSON answer in a response's body, of at most `limit` bytes (a larger one is refused
/// without being read whole).
pub(crate) async fn json_answer<T: serde::de::DeserializeOwned>(
    resp: hyper::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<T, TransferError> {
    let (body, more) = read_prefix(resp.into_body(), limit)
        .await
        .map_err(|e| TransferError::Connection(e.to_string()))?;
    if more {
        return Err(TransferError::Connection(format!(
            "the target's answer is too large (over {limit} bytes)"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| TransferError::Connection(format!("bad answer from the target: {e}")))
}

/// Milliseconds since `epoch` of the last progress, shared by the producer and the watchdog;
/// and when the connection took the stream's last frame (its trailers).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    epoch: tokio::time::Instant,
    last: Arc<AtomicU64>,
    /// 0 while the stream is being sent; then 1 + the millisecond the last frame was taken.
    sent_all: Arc<AtomicU64>,
}

/// Why the watchdog gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// Nothing moved for the idle timeout while the stream was being sent.
    NoProgress,
    /// The whole stream was sent and no answer came within the answer timeout.
    NoAnswer,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            sent_all: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The connection took the last frame: from now on the answer timeout applies.
    fn all_sent(&self) {
        self.sent_all
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// Whether the connection took the whole stream.
    fn sent_everything(&self) -> bool {
        self.sent_all.load(Ordering::Relaxed) > 0
    }

    /// Resolves once nothing moved for `idle` while sending, or once the whole stream was
    /// sent `answer` ago ([`watchdog_verdict`]).
    async fn watch(&self, idle: Duration, answer: Duration) -> Stall {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let period = idle.min(answer) / 4;
        loop {
            tokio::time::sleep(period).await;
            let sent_all = self.sent_all.load(Ordering::Relaxed);
            let last = self.last.load(Ordering::Relaxed);
            let sent_all_at = sent_all.checked_sub(1);
            if let Some(stall) =
                watchdog_verdict(self.now_ms(), last, sent_all_at, ms(idle), ms(answer))
            {
                return stall;
            }
        }
    }
}

/// The watchdog's verdict at `now` (ms): while sending, no progress since `last` for `idle`;
/// once everything was sent at `sent_all_at`, no answer for `answer` (the idle timeout no
/// longer counts: a target fsyncing or committing a receive sends nothing until it answers).
pub(crate) fn watchdog_verdict(
    now: u64,
    last: u64,
    sent_all_at: Option<u64>,
    idle: u64,
    answer: u64,
) -> Option<Stall> {
    match sent_all_at {
        Some(at) if now.saturating_sub(at) >= answer => Some(Stall::NoAnswer),
        Some(_) => None,
        None if now.saturating_sub(last) >= idle => Some(Stall::NoProgress),
        None => None,
    }
}

pub(crate) async fn produce(
    reader: impl AsyncRead + Send + Unpin + 'static,
    compression: Compression,
    limit: u64,
    done: SourceDone,
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
    progress: Progress,
) -> Result<(u64, String), TransferError> {
    let mut reader: Box<dyn AsyncRead + Send + Unpin> = match compression {
        Compression::Zstd => Box::new(ZstdEncoder::with_quality(
            BufReader::with_capacity(CHUNK, reader),
            async_compression::Level::Precise(1),
        )),
        Compression::None => Box::new(reader),
    };
    let mut transit = Transit::new();
    let mut bytes = 0u64;
    let mut limiter = RateLimiter::new(limit);
    let pool = BufPool::new(CHUNK, 2 * CHANNEL_DEPTH);
    let gone = || TransferError::Connection("the request was aborted".into());
    loop {
        let mut buf = pool.take();
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let msg = e.to_string();
                let _ = tx.send(Err(e)).await;
                return Err(TransferError::Read(msg));
            }
        };
        if n == 0 {
            break;
        }
        transit.update(&buf[..n]);
        bytes += n as u64;
        tx.send(Ok(Frame::data(pool.freeze(buf, n))))
            .await
            .map_err(|_| gone())?;
        progress.tick();
        limiter.consume(n as u64).await;
        progress.tick();
    }
    // End the body cleanly only if the source completed.
    if let Err(msg) = done.await {
        let _ = tx.send(Err(io::Error::other(msg.clone()))).await;
        return Err(TransferError::Source(msg));
    }
    let sum = transit.hex();
    let mut trailers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&sum) {
        trailers.insert(H_XXH3, v);
    }
    tx.send(Ok(Frame::trailers(trailers)))
        .await
        .map_err(|_| gone())?;
    Ok((bytes, sum))
}

/// The request body: the producer's frames, telling `progress` when the connection takes the
/// trailers (the stream's last frame).
fn channel_body(
    rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    progress: Progress,
) -> BoxBody {
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let progress = progress.clone();
        async move {
            let item = rx.recv().await?;
            if item.as_ref().is_ok_and(Frame::is_trailers) {
                progress.all_sent();
            }
            Some((item, rx))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// The error an answer carries (its first [`MAX_ERROR_ANSWER`] bytes).
pub(crate) async fn error_message(resp: hyper::Response<hyper::body::Incoming>) -> String {
    match read_prefix(resp.into_body(), MAX_ERROR_ANSWER).await {
        Ok((bytes, more)) => {
            let text = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            if more {
                format!("{text} (cut off)")
            } else {
                text
            }
        }
        Err(e) => e.to_string(),
    }
}

/// Uploads `reader` (a `zfs send` stdout) to `endpoint`; `done` resolves when the source
/// process ended. Returns only once the target confirmed and the checksums agree.
pub async fn upload<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    up: &Upload,
    reader: impl AsyncRead + Send + Unpin + 'static,
    done: SourceDone,
) -> Result<Uploaded, TransferError> {
    upload_expecting(client, endpoint, up, None, reader, done).await
}

/// As [`upload`], telling the target the stream's estimated size (`expected` bytes, from
/// `zfs send -nP`), which it holds of its free space while the stream is written
/// ([`H_EXPECTED_BYTES`]).
pub async fn upload_expecting<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    up: &Upload,
    expected: Option<u64>,
    reader: impl AsyncRead + Send + Unpin + 'static,
    done: SourceDone,
) -> Result<Uploaded, TransferError> {
    let url = endpoint.url(&up.host, &up.dataset, &up.id)?;
    let mut req = with_token(Request::builder().method(Method::PUT).uri(&url), endpoint)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(TRAILER, H_XXH3)
        .header(H_SNAPSHOT, &up.snapshot)
        .header(
            H_COMPRESSION,
            match up.compression {
                Compression::Zstd => "zstd",
                Compression::None => "none",
            },
        );
    if let Some(b) = &up.base_snapshot {
        req = req.header(H_BASE_SNAPSHOT, b);
    }
    if let Some(policy) = &up.policy {
        req = req.header(H_POLICY, policy);
    }
    if let Some(into) = &up.receive_into {
        req = req.header(H_RECEIVE_INTO, into);
    }
    if let Some(p) = &up.store_path {
        req = req.header(H_STORE_PATH, p);
    }
    if let Some(t) = &up.resume_token {
        req = req.header(H_RESUME_TOKEN, t);
    }
    if up.raw {
        req = req.header(H_RAW, "true");
    }
    if let Some(n) = expected {
        req = req.header(H_EXPECTED_BYTES, n.to_string());
    }
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let progress = Progress::new();
    let req = req
        .body(channel_body(rx, progress.clone()))
        .map_err(|e| TransferError::Invalid(e.to_string()))?;
    let producer = tokio::spawn(produce(
        reader,
        up.compression,
        up.bandwidth_limit,
        done,
        tx,
        progress.clone(),
    ));
    let abort = producer.abort_handle();
    debug!(%url, "uploading");
    let answer = tokio::select! {
        r = client.request(req) => r,
        stall = progress.watch(up.idle_timeout, up.answer_timeout) => {
            if stall == Stall::NoAnswer {
                let why = format!(
                    "no answer {}s after the whole stream was sent (--answer-timeout)",
                    up.answer_timeout.as_secs()
                );
                return Err(unanswered(producer, why).await);
            }
            abort.abort();
            return Err(TransferError::Connection(format!(
                "no progress for {}s (link down or target stuck)",
                up.idle_timeout.as_secs()
            )));
        }
    };
    let resp = match answer {
        Ok(r) => r,
        Err(e) if progress.sent_everything() && !refused_by_the_peer(&error_chain::format(&e)) => {
            let why = format!("the connection broke: {}", error_chain::format(&e));
            return Err(unanswered(producer, why).await);
        }
        Err(e) => {
            abort.abort();
            // Prefer the source's own error when it is the cause.
            if let Ok(Ok(Err(src @ TransferError::Source(_)))) =
                tokio::time::timeout(std::time::Duration::from_secs(1), producer).await
            {
                return Err(src);
            }
            return Err(TransferError::Connection(error_chain::format(&e)));
        }
    };
    let status = resp.status();
    if status != StatusCode::CREATED {
        abort.abort();
        return Err(TransferError::Rejected {
            status,
            message: error_message(resp).await,
        });
    }
    let response: PutResponse = json_answer(resp, MAX_JSON_ANSWER).await?;
    let (sent_bytes, sent_xxh3) = producer
        .await
        .map_err(|e| TransferError::Source(e.to_string()))??;
    // The target compared the trailer already (it refuses a mismatch); comparing its echo here
    // as well means neither side has to trust the other's word.
    if response.xxh3.as_deref() != Some(sent_xxh3.as_str()) || response.bytes != sent_bytes {
        return Err(TransferError::Mismatch {
            sent: format!("{sent_bytes} bytes, xxh3 {sent_xxh3}"),
            target: format!(
                "{} bytes, xxh3 {}",
                response.bytes,
                response.xxh3.as_deref().unwrap_or("(none)")
            ),
        });
    }
    Ok(Uploaded {
        response,
        sent_bytes,
        sent_xxh3,
    })
}

/// Whether a failed request's error chain is the peer refusing the connection itself (a TLS
/// alert, an untrusted certificate, an answer that is not HTTP), not a connection lost after the
/// stream: such a target stored nothing, so it is a plain connection error, not
/// [`TransferError::Unanswered`]. (A small stream is taken whole by the socket before the peer's
/// refusal arrives: TLS 1.3 lets the client send before the server judged its certificate.)
fn refused_by_the_peer(chain: &str) -> bool {
    const REFUSALS: [&str; 5] = [
        "received fatal alert",
        "invalid peer certificate",
        "peer is incompatible",
        "peer misbehaved",
        "invalid HTTP",
    ];
    REFUSALS.iter().any(|r| chain.contains(r))
}

/// The error for a stream sent whole whose answer did not come: [`TransferError::Unanswered`]
/// with what the producer sent (it has finished: the connection took its trailers), or a
/// connection error if it cannot say.
async fn unanswered(
    producer: tokio::task::JoinHandle<Result<(u64, String), TransferError>>,
    why: String,
) -> TransferError {
    let abort = producer.abort_handle();
    match tokio::time::timeout(Duration::from_secs(1), producer).await {
        Ok(Ok(Ok((bytes, xxh3)))) => TransferError::Unanswered {
            why,
            sent: Sent { bytes, xxh3 },
        },
        _ => {
            abort.abort();
            TransferError::Connection(why)
        }
    }
}

/// The resume token an interrupted resumable receive left for `host`'s `dataset` under the
/// replica root `into` on the target agent (OpenZFS targets; `None` elsewhere).
pub async fn resume_token<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    host: &str,
    dataset: &str,
    into: &str,
) -> Result<Option<String>, TransferError> {
    let path = routes::resume_token(host, dataset, into)
        .map_err(|e| TransferError::Invalid(e.to_string()))?;
    let url = format!("{}{path}", endpoint.base);
    let resp = get(client, endpoint, &url).await?;
    let answer: ResumeTokenResponse = json_answer(resp, MAX_JSON_ANSWER).await?;
    Ok(answer.token)
}

/// A stored stream being read back: decompressed, and failing at its end if its sha256 does
/// not match the manifest's.
pub struct Download {
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    pub sha256: String,
    pub compression: Compression,
}

/// Reads a stored backup from a target agent.
pub async fn download<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    host: &str,
    dataset: &str,
    id: &StreamId,
) -> Result<Download, TransferError> {
    let url = endpoint.url(host, dataset, id)?;
    let resp = get(client, endpoint, &url).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let sha256 =
        header(H_SHA256).ok_or_else(|| TransferError::Read(format!("no {H_SHA256} header")))?;
    let compression = match header(H_COMPRESSION).as_deref() {
        Some("zstd") => Compression::Zstd,
        _ => Compression::None,
    };
    let data = resp
        .into_body()
        .into_data_stream()
        .map_err(io::Error::other);
    let verified = verify_stream(data, sha256.clone());
    let raw = StreamReader::new(verified);
    let reader: Pin<Box<dyn AsyncRead + Send>> = match compression {
        Compression::Zstd => Box::pin(ZstdDecoder::with_params(
            BufReader::new(raw),
            &[async_compression::zstd::DParameter::window_log_max(
                crate::limits::DEFAULT_ZSTD_WINDOW_LOG_MAX,
            )],
        )),
        Compression::None => Box::pin(raw),
    };
    Ok(Download {
        reader,
        sha256,
        compression,
    })
}

/// Passes chunks through, hashing them; at the end, an error instead of a clean end if the
/// hash does not match.
fn verify_stream(
    inner: impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
    expected: String,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    futures::stream::unfold(Some((inner, Sha256::new())), move |state| {
        let expected = expected.clone();
        async move {
            let (mut inner, mut hasher) = state?;
            match inner.next().await {
                Some(Ok(b)) => {
                    hasher.update(&b);
                    Some((Ok(b), Some((inner, hasher))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None => {
                    let got = hex::encode(hasher.finalize());
                    (got != expected).then(|| {
                        (
                            Err(io::Error::other(format!(
                                "downloaded stream has sha256 {got}, expected {expected}"
                            ))),
                            None,
                        )
                    })
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_peers_refusal_is_no_unanswered_stream_but_a_lost_connection_is() {
        for refused in [
            "client error (SendRequest): connection error: received fatal alert: UnknownCA",
            "client error (Connect): invalid peer certificate: UnknownIssuer",
            "client error (SendRequest): invalid HTTP version parsed",
        ] {
            assert!(refused_by_the_peer(refused), "{refused}");
        }
        for lost in [
            "client error (SendRequest): connection closed before message completed",
            "client error (SendRequest): connection error: Connection reset by peer (os error 104)",
            "client error (SendRequest): broken pipe",
        ] {
            assert!(!refused_by_the_peer(lost), "{lost}");
        }
    }

    use axum::Json;
    use axum::extract::Query;
    use axum::routing::get;

    use super::*;

    /// An agent stand-in: a resume token for `into=pool/ok`, a refusal (404, the store's JSON
    /// error) for anything else, and an answer that is not JSON for `into=pool/garbled`.
    async fn stand_in() -> Endpoint {
        async fn token(
            Query(q): Query<std::collections::HashMap<String, String>>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            match q.get("into").map(String::as_str) {
                Some("pool/ok") => Json(ResumeTokenResponse {
                    token: Some("1-abc".into()),
                })
                .into_response(),
                Some("pool/garbled") => "not json".into_response(),
                _ => (
                    StatusCode::NOT_FOUND,
                    Json(ErrorBody {
                        error: "no such replica".into(),
                    }),
                )
                    .into_response(),
            }
        }
        let app = axum::Router::new()
            .route("/v1/resume-token/{host}/{dataset}", get(token))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(ErrorBody {
                        error: "no such backup".into(),
                    }),
                )
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint::new(&addr.to_string(), "t")
    }

    #[test]
    fn the_idle_timeout_counts_while_sending_and_the_answer_timeout_after() {
        let (idle, answer) = (15_000, 600_000);
        // (now, last progress, everything sent at) → verdict
        let cases = [
            (14_999, 0, None, None),
            (15_000, 0, None, Some(Stall::NoProgress)),
            (40_000, 30_000, None, None),
            // Sent whole at 1 s: a silent target is waited for far past the idle timeout...
            (100_000, 1_000, Some(1_000), None),
            (600_999, 1_000, Some(1_000), None),
            // ...but not past the answer timeout.
            (601_000, 1_000, Some(1_000), Some(Stall::NoAnswer)),
        ];
        for (now, last, sent_all_at, want) in cases {
            assert_eq!(
                watchdog_verdict(now, last, sent_all_at, idle, answer),
                want,
                "now={now} last={last} sent_all_at={sent_all_at:?}"
            );
        }
        // An answer timeout shorter than the idle timeout still applies only once all is sent.
        assert_eq!(watchdog_verdict(5_000, 4_000, None, 15_000, 3_000), None);
        assert_eq!(
            watchdog_verdict(5_000, 4_000, Some(2_000), 15_000, 3_000),
            Some(Stall::NoAnswer)
        );
    }

    #[tokio::test]
    async fn gets_answer_json_or_the_agents_refusal() {
        let ep = stand_in().await;
        let c = client();
        assert_eq!(
            resume_token(&c, &ep, "h1", "tank/db", "pool/ok")
                .await
                .expect("token"),
            Some("1-abc".to_owned())
        );
        match resume_token(&c, &ep, "h1", "tank/db", "pool/other").await {
            Err(TransferError::Rejected { status, message }) => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(message, "no such replica");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        match resume_token(&c, &ep, "h1", "tank/db", "pool/garbled").await {
            Err(TransferError::Connection(m)) => {
                assert!(m.starts_with("bad answer from the target"), "{m}")
            }
            other => panic!("expected a bad answer, got {other:?}"),
        }
        let id = StreamId::Full { ts: 1_764_115_200 };
        match download(&c, &ep, "h1", "tank/db", &id).await {
            Err(TransferError::Rejected { status, message }) => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(message, "no such backup");
            }
            Err(e) => panic!("expected a refusal, got {e:?}"),
            Ok(_) => panic!("expected a refusal, got a download"),
        }
    }
}
