//! The sending side of a transfer: streams a reader (the stdout of `zfs send`) to a target
//! agent with `PUT /v1/streams/...`, optionally zstd-compressed and rate-limited, hashing what
//! it sends; and reads a stored stream back (`GET`) for restores, verifying its sha256.
//!
//! A stream is only ever ended cleanly (final chunk plus a `x-zetaback-sha256` trailer) after
//! the source said it completed (`zfs send` exited 0); otherwise the request is aborted
//! mid-body, and the target discards what it got. Memory is bounded: one 256 KiB read buffer
//! and a channel of at most [`CHANNEL_DEPTH`] chunks between the reader and the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE, TRAILER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tracing::debug;
use zetaback::api::backup_policy::Compression;
use zetaback::store::{StreamId, escape_dataset};

use crate::ratelimit::RateLimiter;
use crate::wire::{
    ErrorBody, H_BASE_SNAPSHOT, H_COMPRESSION, H_RECEIVE_INTO, H_SHA256, H_SNAPSHOT, H_STORE_PATH,
    PutResponse,
};

/// Chunks in flight between the reader task and the HTTP connection.
pub const CHANNEL_DEPTH: usize = 8;
/// The read size.
pub const CHUNK: usize = 256 * 1024;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// A target agent.
#[derive(Clone)]
pub struct Endpoint {
    /// `http://host:port`.
    pub base: String,
    pub token: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
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
        }
    }

    fn url(&self, host: &str, dataset: &str, id: &StreamId) -> Result<String, TransferError> {
        let ds = escape_dataset(dataset).map_err(|e| TransferError::Invalid(e.to_string()))?;
        zetaback::store::validate_host(host).map_err(|e| TransferError::Invalid(e.to_string()))?;
        Ok(format!("{}/v1/streams/{host}/{ds}/{id}", self.base))
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
    #[error("the target recorded sha256 {target} but {sent} was sent")]
    Mismatch { sent: String, target: String },
}

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
    /// Give up when no progress was made for this long (a cut link sends no reset).
    pub idle_timeout: Duration,
}

/// A finished upload: what the target said, and what was sent.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub response: PutResponse,
    pub sent_bytes: u64,
    pub sent_sha256: String,
}

/// Resolves when the source finished: `Err(message)` if it failed.
pub type SourceDone = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// An HTTP client for agent-to-agent transfers.
pub fn client() -> Client<HttpConnector, BoxBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Milliseconds since `epoch` of the last progress, shared by the producer and the watchdog.
#[derive(Debug, Clone)]
struct Progress {
    epoch: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn tick(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `idle`.
    async fn stalled(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(idle / 4).await;
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(self.last.load(Ordering::Relaxed)) >= idle_ms {
                return;
            }
        }
    }
}

async fn produce(
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
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut limiter = RateLimiter::new(limit);
    let gone = || TransferError::Connection("the request was aborted".into());
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = match reader.read_buf(&mut buf).await {
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
        hasher.update(&buf);
        bytes += n as u64;
        tx.send(Ok(Frame::data(buf.freeze())))
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
    let sha = hex::encode(hasher.finalize());
    let mut trailers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&sha) {
        trailers.insert(H_SHA256, v);
    }
    tx.send(Ok(Frame::trailers(trailers)))
        .await
        .map_err(|_| gone())?;
    Ok((bytes, sha))
}

fn channel_body(rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>) -> BoxBody {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

async fn error_message(resp: hyper::Response<hyper::body::Incoming>) -> String {
    match resp.into_body().collect().await {
        Ok(b) => {
            let bytes = b.to_bytes();
            serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(e) => e.to_string(),
    }
}

/// Uploads `reader` (a `zfs send` stdout) to `endpoint`; `done` resolves when the source
/// process ended. Returns only once the target confirmed and the checksums agree.
pub async fn upload(
    client: &Client<HttpConnector, BoxBody>,
    endpoint: &Endpoint,
    up: &Upload,
    reader: impl AsyncRead + Send + Unpin + 'static,
    done: SourceDone,
) -> Result<Uploaded, TransferError> {
    let url = endpoint.url(&up.host, &up.dataset, &up.id)?;
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(&url)
        .header(AUTHORIZATION, format!("Bearer {}", endpoint.token))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(TRAILER, H_SHA256)
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
    if let Some(into) = &up.receive_into {
        req = req.header(H_RECEIVE_INTO, into);
    }
    if let Some(p) = &up.store_path {
        req = req.header(H_STORE_PATH, p);
    }
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let req = req
        .body(channel_body(rx))
        .map_err(|e| TransferError::Invalid(e.to_string()))?;
    let progress = Progress::new();
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
        () = progress.stalled(up.idle_timeout) => {
            abort.abort();
            return Err(TransferError::Connection(format!(
                "no progress for {}s (link down or target stuck)",
                up.idle_timeout.as_secs()
            )));
        }
    };
    let resp = match answer {
        Ok(r) => r,
        Err(e) => {
            abort.abort();
            // Prefer the source's own error when it is the cause.
            if let Ok(Ok(Err(src @ TransferError::Source(_)))) =
                tokio::time::timeout(std::time::Duration::from_secs(1), producer).await
            {
                return Err(src);
            }
            return Err(TransferError::Connection(format!("{e:#}")));
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
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| TransferError::Connection(e.to_string()))?
        .to_bytes();
    let response: PutResponse = serde_json::from_slice(&body)
        .map_err(|e| TransferError::Connection(format!("bad answer from the target: {e}")))?;
    let (sent_bytes, sent_sha256) = producer
        .await
        .map_err(|e| TransferError::Source(e.to_string()))??;
    if response.sha256 != sent_sha256 || response.bytes != sent_bytes {
        return Err(TransferError::Mismatch {
            sent: sent_sha256,
            target: response.sha256,
        });
    }
    Ok(Uploaded {
        response,
        sent_bytes,
        sent_sha256,
    })
}

/// A stored stream being read back: decompressed, and failing at its end if its sha256 does
/// not match the manifest's.
pub struct Download {
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    pub sha256: String,
    pub compression: Compression,
}

/// Reads a stored backup from a target agent.
pub async fn download(
    client: &Client<HttpConnector, BoxBody>,
    endpoint: &Endpoint,
    host: &str,
    dataset: &str,
    id: &StreamId,
) -> Result<Download, TransferError> {
    let url = endpoint.url(host, dataset, id)?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(&url)
        .header(AUTHORIZATION, format!("Bearer {}", endpoint.token))
        .body(BodyExt::boxed(
            http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}),
        ))
        .map_err(|e| TransferError::Invalid(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| TransferError::Connection(format!("{e:#}")))?;
    if resp.status() != StatusCode::OK {
        return Err(TransferError::Rejected {
            status: resp.status(),
            message: error_message(resp).await,
        });
    }
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
        Compression::Zstd => Box::pin(ZstdDecoder::new(BufReader::new(raw))),
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
