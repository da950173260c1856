//! The target agent's HTTP API (axum):
//!
//! - `PUT /v1/streams/{host}/{dataset}/{id}`: add a backup stream (only host `{host}`'s own agent). `dataset` has
//!   `/` escaped as `+`; `id` is `<ts>.full` or `<ts>.incremental.<base-ts>`. Headers:
//!   `x-zetaback-snapshot`, `x-zetaback-base-snapshot` (incrementals), `x-zetaback-compression`,
//!   and either nothing (file store) or `x-zetaback-receive-into: <dataset>` (replica mode:
//!   `zfs receive` into `<dataset>/<host>/<source dataset>`). The `x-zetaback-xxh3` trailer
//!   (the transit check) and, file store only, a `x-zetaback-sha256` trailer, when announced
//!   in `Trailer`, must match. A file store records the stream's sha256 (re-checked by every
//!   restore); a replica records none (`zfs receive` checks the stream). Answers 201 with
//!   [`PutResponse`].
//! - `GET /v1/streams/{host}/{dataset}/{id}`: read a stored stream back (restores); the body is
//!   verified against the manifest's sha256 while sent, and cut short if it does not match,
//!   unless the request says `x-zetaback-reader-verifies: sha256` (a restore checks every
//!   piece itself before its end reaches `zfs receive`; hashing twice only costs CPU).
//! - `DELETE /v1/streams/{host}/{dataset}/{id}` and `POST /v1/archive/{host}/{dataset}/{id}`
//!   (also `POST /v1/streams/.../{id}/archive`): the controller only.
//!
//! Every request carries its caller's own bearer token ([`crate::identity`]: a projected
//! ServiceAccount token checked by TokenReview in Kubernetes); [`crate::identity::rules`] says
//! who may do what.
//! - `GET /v1/catalogue[?host=H]`: the store's [`zetaback_core::store::Catalogue`], plus every
//!   replica: a replica receive records its manifest (JSON, the same fields as a stored file's)
//!   in the user property `zetaback.io:manifest` of the received snapshot, and only snapshots
//!   that carry one are listed, so a replica counts once received and its checksum recorded.
//! - `POST /v1/verify` (the controller): queue stored backups to be re-read at a bounded rate and
//!   checked against their manifests ([`crate::verifier`]); `GET /v1/verify`: its progress.
//!   `GET` of a quarantined backup's stream is refused (409).
//! - `GET /healthz`.
//!
//! Unauthenticated → 401, not allowed → 403, malformed → 400, existing → 409; in each case
//! nothing is touched. Bodies are streamed chunk by chunk (memory bounded by hyper's buffers,
//! back-pressure through TCP).
//!
//! Against a hostile or broken client ([`StoreLimits`], [`crate::listener`]): a body that does
//! not begin like a ZFS send stream is refused (400, [`crate::stream_header`]; zstd bodies are
//! checked decompressed, with the decoder's window limited); a stream over the size limit gets
//! 413, a host over its quota or a store under its free-space reserve 507 (also when the disk
//! fills up anyway), a stream that finds no upload or download slot within the wait 503.
//! The catalogue is answered from a cached scan, invalidated by every write through this
//! agent.

mod replica_space;

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_compression::tokio::write::ZstdDecoder;
use async_compression::zstd::DParameter;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info, info_span, warn};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::names::{validate_dataset, validate_snapshot_name};
use zetaback_core::store::{
    Catalogue, Manifest, StoredBackup, StreamId, unescape_dataset, validate_host,
};

use crate::bufpool::BufPool;
use crate::checksum::Received;
use crate::filestore::space::{InFlight, SpaceRefusal};
use crate::filestore::{BackupKey, FileStore, FileStoreError, StreamMeta};
use crate::identity::{AuthError, Authenticator, Caller, Operation, authorize, bearer};
use crate::limits::{ListenerLimits, StoreLimits};
use crate::scan_cache::ScanCache;
use crate::space_ledger::Ledgers;
use crate::stream_header::{self, Verdict};
use crate::verifier::{Verifier, VerifyQueueError};
use crate::wire::{
    CatalogueQuery, ErrorBody, H_BASE_SNAPSHOT, H_COMPRESSION, H_EXPECTED_BYTES, H_FORCE, H_POLICY,
    H_RAW, H_READER_VERIFIES, H_RECEIVE_INTO, H_RESUME_TOKEN, H_SHA256, H_SNAPSHOT, H_STORE_PATH,
    H_XXH3, PutResponse, ResumeTokenQuery, ResumeTokenResponse, VerifyRequest, VerifyStatus,
    routes,
};
use crate::zfs::inert::{self, HeadGate};
use crate::zfs::{
    Capability, Patience, ReceivePurpose, ReceiveRequest, Zfs, ZfsError, retry_while_busy,
};

/// Replica mode settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub zfs: Zfs,
    /// Datasets streams may be received under (`x-zetaback-receive-into` must be one).
    pub roots: Vec<String>,
    /// Whether `zfs receive -F` may be used (when the request asks for it with
    /// `x-zetaback-force: true`).
    pub allow_force: bool,
}

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Who callers are (TokenReview in Kubernetes; a static table without it).
    pub auth: Arc<dyn Authenticator>,
    /// The controller's key for restore grants (none: another host's backups are never
    /// served).
    pub grant_key: Option<Arc<crate::identity::grants::GrantKey>>,
    pub store: Option<FileStore>,
    pub replica: Option<ReplicaConfig>,
    /// A stream that sends nothing for this long is abandoned (a cut link sends no reset).
    pub idle_timeout: Duration,
    /// What one client may take.
    pub limits: StoreLimits,
    receiving: Arc<Mutex<HashSet<String>>>,
    /// Held while a replica stream makes its missing parents and while a failed one's empty
    /// parents are destroyed, so that neither sees the other half done: a removal that read
    /// `receiving` before a new stream claimed its target cannot destroy a parent that stream
    /// is making a child under ([`remove_made_when_empty`]).
    replica_parents: Arc<tokio::sync::Mutex<()>>,
    /// Bytes of the replica streams being received, per source host (for the quota).
    replica_in_flight: InFlight,
    /// The space promised to the replica streams being received, per pool.
    replica_ledgers: Ledgers,
    /// Upload and download slots (`limits.max_uploads`, `limits.max_downloads`).
    uploads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    /// The replicas' part of the catalogue (a `zfs list` per root), reused like the file
    /// store's scan.
    replica_cache: Arc<ScanCache<Catalogue>>,
    /// Re-reads stored streams on request (`POST /v1/verify`); with a file store only.
    verifier: Option<Verifier>,
    /// Agents and the controller must come with their client certificate (a TLS store):
    /// their bearer tokens are refused ([`crate::peer_auth`]).
    pub certificates_required: bool,
}

impl ServerState {
    pub fn new(
        auth: Arc<dyn Authenticator>,
        store: Option<FileStore>,
        replica: Option<ReplicaConfig>,
    ) -> Self {
        Self {
            auth,
            grant_key: None,
            store,
            replica,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            limits: StoreLimits::default(),
            receiving: Arc::default(),
            replica_parents: Arc::default(),
            replica_in_flight: InFlight::default(),
            replica_ledgers: Ledgers::default(),
            uploads: Arc::new(Semaphore::new(StoreLimits::default().max_uploads)),
            downloads: Arc::new(Semaphore::new(StoreLimits::default().max_downloads)),
            replica_cache: Arc::default(),
            verifier: None,
            certificates_required: false,
        }
        .with_limits(StoreLimits::default())
    }

    /// Sets the limits (the file store's too).
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.store = self.store.map(|s| s.with_limits(&limits));
        self.verifier = self.store.clone().map(Verifier::new);
        self.uploads = Arc::new(Semaphore::new(limits.max_uploads.max(1)));
        self.downloads = Arc::new(Semaphore::new(limits.max_downloads.max(1)));
        self.limits = limits;
        self
    }

    /// A slot of `slots` (uploads or downloads), waiting up to `limits.slot_wait`; 503 when
    /// none came free.
    async fn slot(
        &self,
        slots: &Arc<Semaphore>,
        what: &str,
        max: usize,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.limits.slot_wait, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many {what} at once on this agent (at most {max}, --max-{what}); try again later"
                ),
            )),
        }
    }

    /// Sets the controller's key for restore grants.
    pub fn with_grant_key(mut self, key: crate::identity::grants::GrantKey) -> Self {
        self.grant_key = Some(Arc::new(key));
        self
    }

    /// Agents and the controller authenticate with client certificates only (TLS).
    pub fn with_certificates_required(mut self) -> Self {
        self.certificates_required = true;
        self
    }

    /// Sets the idle timeout.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

/// The default idle timeout of a stream.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The read size of a stored stream sent back (and of each pooled buffer).
const STORED_CHUNK: usize = 1024 * 1024;
/// Chunks read ahead of the connection when a stored stream is sent back.
const STORED_READ_AHEAD: usize = 4;

/// An error answer.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, axum::Json(ErrorBody { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<FileStoreError> for ApiError {
    fn from(e: FileStoreError) -> Self {
        let status = match &e {
            FileStoreError::Store(_) => StatusCode::BAD_REQUEST,
            FileStoreError::Exists(_) | FileStoreError::Busy(_) => StatusCode::CONFLICT,
            FileStoreError::NotFound(_) => StatusCode::NOT_FOUND,
            FileStoreError::Refused {
                refusal: SpaceRefusal::TooLarge { .. },
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            FileStoreError::Refused { .. } => StatusCode::INSUFFICIENT_STORAGE,
            FileStoreError::Io { .. } if e.is_out_of_space() => {
                return Self(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("no space left on the store: {e}"),
                );
            }
            FileStoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e.to_string())
    }
}

impl From<ZfsError> for ApiError {
    fn from(e: ZfsError) -> Self {
        let status = match &e {
            ZfsError::Name(_) => StatusCode::BAD_REQUEST,
            ZfsError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e.to_string())
    }
}

/// The router.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(|| async { "ok" }))
        .route(routes::CATALOGUE, get(catalogue))
        .route(
            routes::STREAM,
            put(put_stream).get(get_stream).delete(delete_stream),
        )
        .route(routes::RESUME_TOKEN, get(resume_token))
        .route(routes::VERIFY, post(verify_submit).get(verify_status))
        .route(routes::STREAM_ARCHIVE, post(archive))
        .route(routes::ARCHIVE, post(archive))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_request(
            crate::unread_body::linger_on_refusal,
        ))
        .with_state(Arc::new(state))
}

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: ServerState) -> io::Result<()> {
    serve_with(listener, state, ListenerLimits::default()).await
}

/// Serves the API on `listener` (plaintext HTTP/1.1) with these connection limits until the
/// future is dropped.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ServerState,
    limits: ListenerLimits,
) -> io::Result<()> {
    crate::listener::serve(listener, router(state), limits, None).await
}

/// Authenticates the caller: by its client certificate ([`crate::peer_auth`]), else by its
/// bearer token (on a TLS store, readers only); 401 without either, 503 when it cannot be
/// checked now.
async fn authenticate(state: &ServerState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unavailable = |e: AuthError| match e {
        AuthError::Unauthenticated(m) => ApiError(StatusCode::UNAUTHORIZED, m),
        AuthError::Unavailable(m) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the caller cannot be checked now: {m}"),
        ),
    };
    if let Some(caller) = crate::peer_auth::caller_of_certificate(state.auth.as_ref(), headers)
        .await
        .map_err(unavailable)?
    {
        return Ok(caller);
    }
    let caller = authenticate_token(state, headers).await?;
    crate::peer_auth::token_allowed(&caller, state.certificates_required).map_err(|m| {
        warn!(%caller, "bearer token refused on a TLS store");
        ApiError(StatusCode::UNAUTHORIZED, m)
    })?;
    Ok(caller)
}

/// The caller its bearer token names.
async fn authenticate_token(state: &ServerState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing bearer token".into(),
        ));
    };
    state.auth.authenticate(token).await.map_err(|e| match e {
        AuthError::Unauthenticated(m) => ApiError(StatusCode::UNAUTHORIZED, m),
        AuthError::Unavailable(m) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the caller's token cannot be checked now: {m}"),
        ),
    })
}

/// Authenticates the caller and checks that it may do `op` (403 with the reason).
async fn require(
    state: &ServerState,
    headers: &HeaderMap,
    op: Operation<'_>,
) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers).await?;
    // A malformed host is a bad request, whoever asks.
    if let Some(host) = op.host() {
        validate_host(host).map_err(|e| ApiError::bad(e.to_string()))?;
    }
    if let Err(refused) = authorize(&caller, op) {
        warn!(%caller, reason = %refused, "request refused");
        return Err(ApiError(StatusCode::FORBIDDEN, refused.0));
    }
    Ok(caller)
}

/// A read of a stored backup: by its host's own agent, or by the destination of a restore
/// with the controller's grant for it ([`zetaback_core::grant`]).
async fn require_read(
    state: &ServerState,
    headers: &HeaderMap,
    key: &BackupKey,
) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers).await?;
    let refused = match authorize(&caller, Operation::GetStream { host: &key.host }) {
        Ok(()) => return Ok(caller),
        Err(refused) => refused,
    };
    let forbid = |m: String| {
        warn!(%caller, reason = %m, "read refused");
        ApiError(StatusCode::FORBIDDEN, m)
    };
    let (Some(grant), Caller::Agent { hosts, .. }) =
        (header_str(headers, zetaback_core::grant::H_GRANT)?, &caller)
    else {
        return Err(forbid(refused.0));
    };
    let Some(key_source) = &state.grant_key else {
        return Err(forbid(format!(
            "{}; this store checks no restore grants",
            refused.0
        )));
    };
    let public = key_source.public_key().await.map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the restore grant cannot be checked now: {e}"),
        )
    })?;
    let checked = zetaback_core::grant::verify(grant, &public).and_then(|g| {
        g.allows(
            hosts,
            &key.host,
            &key.dataset,
            &key.id.to_string(),
            jiff::Timestamp::now().as_second(),
        )
        .map(|()| g)
    });
    match checked {
        Ok(g) => {
            info!(%caller, restore = %g.restore, backup = %key, "read under a restore grant");
            Ok(caller)
        }
        Err(e) => Err(forbid(format!("{}; {e}", refused.0))),
    }
}

fn key_of(host: &str, dataset: &str, id: &str) -> Result<BackupKey, ApiError> {
    validate_host(host).map_err(|e| ApiError::bad(e.to_string()))?;
    let dataset = unescape_dataset(dataset).map_err(|e| ApiError::bad(e.to_string()))?;
    let id: StreamId = id
        .parse()
        .map_err(|e: zetaback_core::store::StoreError| ApiError::bad(e.to_string()))?;
    Ok(BackupKey {
        host: host.to_owned(),
        dataset,
        id,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad(format!("header {name} is not ASCII")))
        })
        .transpose()
}

/// What a PUT asks for, validated before anything is touched.
struct PutPlan {
    key: BackupKey,
    meta: StreamMeta,
    receive_into: Option<String>,
    /// Replica mode: the stream resumes from this token (`zfs send -t`).
    resume_token: Option<String>,
    force: bool,
    /// The checksum trailers the request announced in `Trailer` (must arrive and match).
    expect: Expected,
    /// The body's `Content-Length`, when it has one.
    announced: Option<u64>,
    /// The sender's estimate of the body's size ([`H_EXPECTED_BYTES`]): held of the free
    /// space while the stream is written when there is no `Content-Length`.
    expected: Option<u64>,
}

/// Which checksum trailers were announced.
#[derive(Debug, Clone, Copy, Default)]
struct Expected {
    sha256: bool,
    xxh3: bool,
}

fn plan_put(
    state: &ServerState,
    headers: &HeaderMap,
    host: &str,
    dataset: &str,
    id: &str,
) -> Result<PutPlan, ApiError> {
    let key = key_of(host, dataset, id)?;
    // A backup dated in the future would never be superseded (issue 13, finding 2).
    let now = jiff::Timestamp::now();
    if zetaback_core::store::future::is_future(key.id.ts(), now) {
        return Err(ApiError::bad(format!(
            "backup id {} is dated in the future (more than {}s ahead of this host's clock, {now}); refused",
            key.id,
            zetaback_core::store::future::MAX_CLOCK_SKEW_SECONDS
        )));
    }
    let snapshot = header_str(headers, H_SNAPSHOT)?
        .ok_or_else(|| {
            ApiError::bad(format!(
                "header {H_SNAPSHOT} (the snapshot sent) is required"
            ))
        })?
        .to_owned();
    validate_snapshot_name(&snapshot).map_err(|e| ApiError::bad(e.to_string()))?;
    let base_snapshot = header_str(headers, H_BASE_SNAPSHOT)?.map(str::to_owned);
    match (&key.id, &base_snapshot) {
        (StreamId::Full { .. }, Some(_)) => {
            return Err(ApiError::bad(format!(
                "a full stream has no {H_BASE_SNAPSHOT}"
            )));
        }
        (StreamId::Incremental { .. }, None) => {
            return Err(ApiError::bad(format!(
                "an incremental stream needs {H_BASE_SNAPSHOT}"
            )));
        }
        (_, Some(b)) => validate_snapshot_name(b).map_err(|e| ApiError::bad(e.to_string()))?,
        _ => {}
    }
    let compression = match header_str(headers, H_COMPRESSION)? {
        None | Some("none") => Compression::None,
        Some("zstd") => Compression::Zstd,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "{H_COMPRESSION} must be none or zstd, not {other:?}"
            )));
        }
    };
    let receive_into = header_str(headers, H_RECEIVE_INTO)?.map(str::to_owned);
    let policy = header_str(headers, H_POLICY)?.map(str::to_owned);
    if let Some(p) = &policy {
        zetaback_core::store::validate_policy_ref(p).map_err(|e| ApiError::bad(e.to_string()))?;
    }
    let raw = match header_str(headers, H_RAW)? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "{H_RAW} must be true or false, not {other:?}"
            )));
        }
    };
    let resume_token = header_str(headers, H_RESUME_TOKEN)?.map(str::to_owned);
    if let Some(t) = &resume_token {
        if receive_into.is_none() {
            return Err(ApiError::bad(format!(
                "{H_RESUME_TOKEN} is only for replica streams"
            )));
        }
        if t.is_empty()
            || t.starts_with('-')
            || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ApiError::bad(format!(
                "{H_RESUME_TOKEN} is not a resume token"
            )));
        }
    }
    match (&receive_into, &state.replica, &state.store) {
        (Some(into), Some(replica), _) => {
            validate_dataset(into).map_err(|e| ApiError::bad(e.to_string()))?;
            if !replica.roots.iter().any(|r| r == into) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!("this agent does not receive replicas into {into}"),
                ));
            }
        }
        (Some(_), None, _) => {
            return Err(ApiError::bad("this agent does not accept replicas"));
        }
        (None, _, None) => return Err(ApiError::bad("this agent has no file store")),
        (None, _, Some(store)) => {
            if let Some(path) = header_str(headers, H_STORE_PATH)? {
                let root = store.layout().root();
                if std::path::Path::new(path) != root {
                    return Err(ApiError::bad(format!(
                        "this agent stores backups under {}, not {path}",
                        root.display()
                    )));
                }
            }
        }
    }
    let force = header_str(headers, H_FORCE)? == Some("true");
    if force && !state.replica.as_ref().is_some_and(|r| r.allow_force) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this agent does not allow zfs receive -F".into(),
        ));
    }
    let announced = |name: &str| {
        headers
            .get_all(header::TRAILER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(name)))
    };
    let expect = Expected {
        sha256: announced(H_SHA256),
        xxh3: announced(H_XXH3),
    };
    // A replica records no sha256 (`zfs receive` checks the stream): refused before a byte
    // is applied rather than after the whole stream.
    if expect.sha256 && receive_into.is_some() {
        return Err(ApiError::bad(format!(
            "a replica stream is checked in transit with {H_XXH3}; the {H_SHA256} trailer cannot be checked in this mode"
        )));
    }
    let length = header_str(headers, header::CONTENT_LENGTH.as_str())?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad("Content-Length is not a number"))
        })
        .transpose()?;
    if let (Some(n), Some(limit)) = (length, state.limits.max_stream_bytes)
        && n > limit
    {
        return Err(too_large(limit));
    }
    let expected = header_str(headers, H_EXPECTED_BYTES)?
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad(format!(
                    "{H_EXPECTED_BYTES} must be a number of bytes, not {v:?}"
                ))
            })
        })
        .transpose()?;
    Ok(PutPlan {
        key,
        meta: StreamMeta {
            snapshot,
            base_snapshot,
            compression,
            policy,
            raw,
        },
        receive_into,
        resume_token,
        force,
        expect,
        announced: length,
        expected,
    })
}

fn too_large(limit: u64) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the stream is over this agent's limit of {limit} bytes per stream (--max-stream-bytes)"
        ),
    )
}

/// The next piece of a request body.
enum Piece {
    Data(Bytes),
    Trailers(Trailers),
    End,
}

/// The checksum trailers that arrived.
#[derive(Debug, Clone, Default)]
struct Trailers {
    sha256: Option<String>,
    xxh3: Option<String>,
}

async fn next_piece(body: &mut Body, idle: Duration) -> Result<Piece, ApiError> {
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("stream stalled: nothing received for {}s", idle.as_secs()),
                )
            })?;
        match frame {
            None => return Ok(Piece::End),
            Some(Err(e)) => {
                return Err(ApiError::bad(format!("stream interrupted: {e}")));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        return Ok(Piece::Data(data));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let get = |name: &str| {
                            trailers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        return Ok(Piece::Trailers(Trailers {
                            sha256: get(H_SHA256),
                            xxh3: get(H_XXH3),
                        }));
                    }
                }
            },
        }
    }
}

/// Compares the trailers that arrived with what was received: a mismatch is corruption in
/// transit (422), an announced trailer that never came means the stream is incomplete (400).
/// Returns whether at least one checksum was checked.
fn check_trailers(
    expect: Expected,
    got: &Trailers,
    sha256: Option<&str>,
    xxh3: &str,
) -> Result<bool, ApiError> {
    let mut checked = false;
    for (name, announced, theirs, ours) in [
        (H_XXH3, expect.xxh3, &got.xxh3, Some(xxh3)),
        (H_SHA256, expect.sha256, &got.sha256, sha256),
    ] {
        match (theirs, ours) {
            (Some(t), Some(o)) if t == o => checked = true,
            (Some(t), Some(o)) => {
                return Err(ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("stream corrupted in transit: sender's {name} {t}, received {o}"),
                ));
            }
            (Some(_), None) => {
                return Err(ApiError::bad(format!(
                    "{name} trailer cannot be checked in this mode; send {H_XXH3}"
                )));
            }
            (None, _) if announced => {
                return Err(ApiError::bad(format!(
                    "the announced {name} trailer did not arrive: stream incomplete"
                )));
            }
            (None, _) => {}
        }
    }
    Ok(checked)
}

async fn put_stream(
    State(state): State<Arc<ServerState>>,
    Path((host, dataset, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<PutResponse>), ApiError> {
    require(&state, &headers, Operation::PutStream { host: &host }).await?;
    let plan = plan_put(&state, &headers, &host, &dataset, &id)?;
    let span = info_span!("put_stream", backup = %plan.key, replica = plan.receive_into.as_deref());
    let result = async move {
        let _slot = state
            .slot(&state.uploads, "uploads", state.limits.max_uploads)
            .await?;
        let resp = match &plan.receive_into {
            None => put_file(&state, plan, body).await?,
            Some(into) => {
                let into = into.clone();
                let put = put_replica(&state, plan, &into, body).await;
                state.replica_cache.invalidate();
                put?
            }
        };
        info!(
            bytes = resp.bytes,
            sha256 = resp.sha256.as_deref().unwrap_or("none (a replica)"),
            verified = resp.verified,
            "stored"
        );
        Ok((StatusCode::CREATED, axum::Json(resp)))
    }
    .instrument(span.clone())
    .await;
    if let Err(ApiError(status, message)) = &result {
        span.in_scope(|| warn!(%status, %message, "stream refused"));
    }
    result
}

async fn put_file(
    state: &ServerState,
    plan: PutPlan,
    mut body: Body,
) -> Result<PutResponse, ApiError> {
    let store = state
        .store
        .as_ref()
        .ok_or_else(|| ApiError::bad("this agent has no file store"))?;
    let mut pending = store
        .begin_expecting(plan.key.clone(), plan.announced, plan.expected)
        .await?;
    let head = sniff(state, &mut body, plan.meta.compression, plan.meta.raw).await?;
    let mut trailers = head.trailers.unwrap_or_default();
    for data in head.pieces {
        pending.write(data).await?;
    }
    let mut ended = head.ended;
    while !ended {
        match next_piece(&mut body, state.idle_timeout).await {
            Ok(Piece::Data(data)) => pending.write(data).await?,
            Ok(Piece::Trailers(t)) => trailers = t,
            Ok(Piece::End) => ended = true,
            Err(e) => {
                warn!(
                    bytes = pending.bytes(),
                    "upload interrupted; discarding the partial stream"
                );
                return Err(e);
            }
        }
    }
    let written = pending.finish().await?;
    let verified = check_trailers(plan.expect, &trailers, Some(&written.sha256), &written.xxh3)?;
    let manifest = pending.commit(plan.meta).await?;
    Ok(PutResponse {
        backup_id: manifest.id,
        bytes: manifest.bytes,
        sha256: manifest.sha256,
        xxh3: Some(written.xxh3),
        verified,
        replica: None,
    })
}

/// The first pieces of a body, read until they show it is a ZFS send stream.
struct Head {
    pieces: Vec<Bytes>,
    /// Trailers, if they came already.
    trailers: Option<Trailers>,
    /// The body ended within these pieces.
    ended: bool,
}

/// Reads the body's first pieces until its beginning shows that it is a ZFS send stream
/// (decompressed first when it is zstd, with the window limited); refuses it (400) when it is
/// not one, or when its first record contradicts the sender's raw claim (`claimed_raw`, which
/// the manifest records: [`stream_header::Begin::check_raw_claim`]). The pieces read are
/// handed back, to be written first.
async fn sniff(
    state: &ServerState,
    body: &mut Body,
    compression: Compression,
    claimed_raw: bool,
) -> Result<Head, ApiError> {
    let mut head = Head {
        pieces: Vec::new(),
        trailers: None,
        ended: false,
    };
    let mut seen: Vec<u8> = Vec::new();
    loop {
        match next_piece(body, state.idle_timeout).await? {
            Piece::Data(data) => {
                let room = match compression {
                    Compression::None => stream_header::HEADER_LEN,
                    Compression::Zstd => stream_header::MAX_COMPRESSED_PREFIX,
                }
                .saturating_sub(seen.len());
                seen.extend_from_slice(&data[..data.len().min(room)]);
                head.pieces.push(data);
            }
            Piece::Trailers(t) => head.trailers = Some(t),
            Piece::End => head.ended = true,
        }
        let verdict = match compression {
            Compression::None if head.ended => stream_header::check_complete(&seen),
            Compression::None => stream_header::check(&seen),
            Compression::Zstd => {
                stream_header::check_zstd(&seen, head.ended, state.limits.zstd_window_log_max).await
            }
        };
        match verdict {
            Verdict::Stream(begin) => {
                return match begin.check_raw_claim(claimed_raw) {
                    Ok(()) => Ok(head),
                    Err(why) => Err(ApiError::bad(format!("{H_RAW} does not match: {why}"))),
                };
            }
            Verdict::NotAStream(why) => {
                return Err(ApiError::bad(format!(
                    "the body is not a ZFS send stream: {why}"
                )));
            }
            Verdict::NeedMore if head.ended => {
                return Err(ApiError::bad(
                    "the body is not a ZFS send stream: it is too short",
                ));
            }
            Verdict::NeedMore => {}
        }
    }
}

/// Releases a replica target on drop.
struct ReceivingClaim(Arc<Mutex<HashSet<String>>>, String);

impl Drop for ReceivingClaim {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(&self.1);
        }
    }
}

async fn put_replica(
    state: &ServerState,
    plan: PutPlan,
    into: &str,
    mut body: Body,
) -> Result<PutResponse, ApiError> {
    let replica = state
        .replica
        .as_ref()
        .ok_or_else(|| ApiError::bad("this agent does not accept replicas"))?;
    let zfs = &replica.zfs;
    let target = format!("{into}/{}/{}", plan.key.host, plan.key.dataset);
    validate_dataset(&target).map_err(|e| ApiError::bad(e.to_string()))?;
    let claim = {
        let mut r = state
            .receiving
            .lock()
            .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned".into()))?;
        if !r.insert(target.clone()) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("{target} is already receiving a stream"),
            ));
        }
        ReceivingClaim(state.receiving.clone(), target.clone())
    };
    let resumable = zfs.capabilities().has(Capability::ResumableSend);
    let mut exists = zfs.dataset_exists(&target).await?;
    // OpenZFS: an interrupted `receive -s` left a token. A stream that names it resumes;
    // a fresh stream first discards the partial state.
    let current = if resumable && exists {
        zfs.resume_token(&target).await?
    } else {
        None
    };
    let resuming = match (&plan.resume_token, &current) {
        (Some(theirs), Some(ours)) if theirs == ours => true,
        (Some(_), _) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "the resume token is not {target}'s current one (or this host cannot resume); send the stream from the start"
                ),
            ));
        }
        (None, Some(_)) => {
            warn!(%target, "discarding the partial state of an interrupted receive");
            zfs.abort_partial_receive(&target).await?;
            exists = zfs.dataset_exists(&target).await?;
            false
        }
        (None, None) => false,
    };
    match plan.key.id {
        _ if resuming => {}
        StreamId::Full { .. } if exists && !plan.force => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("replica {target} exists; a full stream would replace it"),
            ));
        }
        StreamId::Incremental { .. } if !exists => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("replica {target} does not exist; send a full stream first"),
            ));
        }
        _ => {}
    }
    // Refused before a byte is read or a dataset made when it cannot fit.
    let mut space = replica_space::ReplicaSpace::admit(
        zfs,
        &state.limits,
        &state.replica_in_flight,
        &state.replica_ledgers,
        &replica.roots,
        into,
        &target,
        &plan.key.host,
        plan.announced,
        plan.expected,
    )
    .await?;
    let head = sniff(state, &mut body, plan.meta.compression, plan.meta.raw).await?;
    // The parents this stream makes for a new replica are its own, and so is the new replica
    // itself unless a resumable receive keeps its partial state: destroyed again, when still
    // empty, if the stream fails ([`remove_made_when_empty`]).
    let mut made = if !exists && let Some((parent, _)) = target.rsplit_once('/') {
        let _making = state.replica_parents.lock().await;
        zfs.create_parents(parent).await?
    } else {
        Vec::new()
    };
    if !exists && !resumable {
        made.push(target.clone());
    }
    let result: Result<PutResponse, ApiError> = async {
        let mut recv = zfs.receive(&ReceiveRequest {
            target: target.clone(),
            force: plan.force && !resuming,
            resumable,
            purpose: ReceivePurpose::Replica,
        })?;
        // Only the xxh3 transit check (>10 GB/s), inline: `zfs receive` checks the stream itself
        // (ZFS's own checksums), and no sha256 is recorded that nothing could re-check later.
        let mut sums = Received::new(false);
        let mut trailers = head.trailers.clone().unwrap_or_default();
        let window = [DParameter::window_log_max(state.limits.zstd_window_log_max)];
        let copy: Result<String, ApiError> = async {
            let Some(stdin) = recv.stdin() else {
                return Err(ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no stdin".into(),
                ));
            };
            // A stream that carries properties never reaches a receive that cannot override
            // them (zfs-fuse): see zfs::inert.
            let gate = HeadGate::new(stdin, zfs.capabilities().clone());
            let mut sink: Box<dyn tokio::io::AsyncWrite + Send + Unpin + '_> =
                match plan.meta.compression {
                    Compression::Zstd => Box::new(ZstdDecoder::with_params(gate, &window)),
                    Compression::None => Box::new(gate),
                };
            let broken = |e: io::Error| match inert::refusal(&e) {
                Some(refused) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, refused.to_string()),
                None => ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("zfs receive stopped reading: {e}"),
                ),
            };
            let mut first = head.pieces.into_iter();
            let ended = head.ended;
            loop {
                let piece = match first.next() {
                    Some(data) => Piece::Data(data),
                    None if ended => Piece::End,
                    None => next_piece(&mut body, state.idle_timeout).await?,
                };
                match piece {
                    Piece::Data(data) => {
                        sums.update(&data);
                        space.take(data.len() as u64).await?;
                        sink.write_all(&data).await.map_err(broken)?;
                    }
                    Piece::Trailers(t) => trailers = t,
                    Piece::End => break,
                }
            }
            let (_, xxh3) = sums.clone().finish();
            check_trailers(plan.expect, &trailers, None, &xxh3)?;
            sink.shutdown().await.map_err(broken)?;
            Ok(xxh3)
        }
        .await;
        let bytes = sums.bytes;
        let xxh3 = match copy {
            Ok(sums) => {
                recv.finish().await?;
                sums
            }
            Err(e) => {
                warn!(bytes, "replica stream interrupted; aborting zfs receive");
                recv.abort().await;
                return Err(e);
            }
        };
        if matches!(plan.key.id, StreamId::Full { .. }) {
            zfs.protect_replica(&target).await?;
        }
        zfs.set_inert_properties(&target).await?;
        // The replica counts as a backup only once its manifest is recorded on the received
        // snapshot (the catalogue lists snapshots that carry one).
        let manifest = replica_manifest(&plan, bytes, &xxh3)?;
        let json = serde_json::to_string(&manifest).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the manifest: {e}"),
            )
        })?;
        zfs.set_manifest(&target, &plan.meta.snapshot, &json)
            .await?;
        let verified = trailers.xxh3.as_deref() == Some(xxh3.as_str());
        Ok(PutResponse {
            backup_id: plan.key.id.to_string(),
            bytes,
            sha256: None,
            xxh3: Some(xxh3),
            verified,
            replica: Some(target.clone()),
        })
    }
    .await;
    // This stream is over: another one for the same target may begin (and then keeps the
    // parents it finds).
    drop(claim);
    if result.is_err() && !made.is_empty() {
        tokio::spawn(
            remove_made_when_empty(
                zfs.clone(),
                target.clone(),
                made,
                state.receiving.clone(),
                state.replica_parents.clone(),
            )
            .instrument(tracing::Span::current()),
        );
    }
    result
}

/// How long a failed receive's partial dataset may take to disappear (zfs-fuse removes it
/// after the killed `zfs receive` exited) before its parents are looked at anyway.
const PARTIAL_RECEIVE_GONE_WAIT: Duration = Duration::from_secs(15);

/// How long the destroy of an empty parent is tried again while zfs-fuse calls it busy (it
/// may, just after the failed receive below it wound down).
const EMPTY_PARENT_BUSY_WAIT: Patience =
    Patience::within(Duration::from_secs(10), Duration::from_millis(250));

/// After a failed receive into `target`, destroys what the stream made (`made`, top down:
/// the parents it created, and the new replica itself when no resumable receive keeps its
/// partial state) that is empty: no child, no snapshot, and no other stream being received
/// into or under it. zfs-fuse removes a killed receive's partial dataset in its daemon, after
/// the client exited, and sometimes leaves it (seen in CI: the parents then stayed too); one
/// left after [`PARTIAL_RECEIVE_GONE_WAIT`] is destroyed here, so that the next full backup
/// of the dataset finds no empty dataset in its way. Never a dataset that existed before the
/// stream, nor one holding a snapshot (`zfs destroy` without `-r`).
async fn remove_made_when_empty(
    zfs: Zfs,
    target: String,
    made: Vec<String>,
    receiving: Arc<Mutex<HashSet<String>>>,
    parents: Arc<tokio::sync::Mutex<()>>,
) {
    let step = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    while waited < PARTIAL_RECEIVE_GONE_WAIT && zfs.dataset_exists(&target).await.unwrap_or(false) {
        tokio::time::sleep(step).await;
        waited += step;
    }
    let removed = retry_while_busy(
        "destroying what a failed replica stream made and left empty",
        &target,
        EMPTY_PARENT_BUSY_WAIT,
        || remove_free_levels(&zfs, &made, &receiving, &parents),
    )
    .await;
    match removed {
        Ok(removed) if !removed.is_empty() => {
            info!(
                ?removed,
                "destroyed what a failed replica stream had made and left empty"
            )
        }
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "could not destroy what a failed replica stream had made and left empty")
        }
    }
}

/// One try of [`remove_made_when_empty`], holding the parents lock (`parents`) throughout:
/// the levels of `made` (top down) that no stream is being received into or under, destroyed
/// bottom up when empty. A stream that claimed its target before the lock was taken is seen in
/// `receiving` and keeps what it needs; one that claims it later makes its parents after this
/// try, finding them gone if they were.
async fn remove_free_levels(
    zfs: &Zfs,
    made: &[String],
    receiving: &Mutex<HashSet<String>>,
    parents: &tokio::sync::Mutex<()>,
) -> Result<Vec<String>, ZfsError> {
    let _removing = parents.lock().await;
    let busy: Vec<String> = match receiving.lock() {
        Ok(r) => r.iter().cloned().collect(),
        Err(_) => return Ok(Vec::new()),
    };
    let free: Vec<String> = made
        .iter()
        .take_while(|level| {
            let under = format!("{level}/");
            !busy.iter().any(|t| t == *level || t.starts_with(&under))
        })
        .cloned()
        .collect();
    zfs.remove_empty_created(&free).await
}

/// The manifest of a received replica: as for a stored file, with the bytes and xxh3 of the
/// stream as it arrived (compressed if it travelled compressed), and no sha256 (see
/// [`Manifest::sha256`]).
fn replica_manifest(plan: &PutPlan, bytes: u64, xxh3: &str) -> Result<Manifest, ApiError> {
    let id = &plan.key.id;
    let manifest = Manifest {
        version: zetaback_core::store::MANIFEST_VERSION,
        id: id.to_string(),
        host: plan.key.host.clone(),
        dataset: plan.key.dataset.clone(),
        snapshot: plan.meta.snapshot.clone(),
        base_snapshot: plan.meta.base_snapshot.clone(),
        backup_type: id.backup_type(),
        bytes,
        sha256: None,
        compression: plan.meta.compression,
        created: jiff::Timestamp::from_second(id.ts())
            .map_err(|e| ApiError::bad(format!("stream id {id}: {e}")))?,
        policy: plan.meta.policy.clone(),
        xxh3: Some(xxh3.to_owned()),
        raw: plan.meta.raw,
    };
    manifest
        .validate()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(manifest)
}

/// The replica manifests under `root`, each checked against where it was found (a manifest
/// on `<root>/<host>/<dataset>@<snapshot>` must name that host, dataset and snapshot).
async fn replica_backups(
    zfs: &Zfs,
    root: &str,
    cat: &mut Catalogue,
) -> Result<Vec<StoredBackup>, ZfsError> {
    let mut out = Vec::new();
    for (dataset, snapshot, json) in zfs.manifests(root).await? {
        let checked = Manifest::from_json(json.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let expected = format!("{root}/{}/{}", m.host, m.dataset);
                if expected == dataset && m.snapshot == snapshot {
                    Ok(m)
                } else {
                    Err(format!("it names {expected}@{}", m.snapshot))
                }
            });
        match checked {
            Ok(manifest) => out.push(StoredBackup {
                manifest,
                archived: false,
                verification: None,
            }),
            Err(why) => cat.problems.push(format!(
                "replica {dataset}@{snapshot}: its manifest does not match ({why})"
            )),
        }
    }
    Ok(out)
}

/// Every replica root's backups (and problems), from the cache while it is current.
async fn replica_catalogue(
    state: &ServerState,
    replica: &ReplicaConfig,
) -> Result<Catalogue, ApiError> {
    let ticket = match state.replica_cache.get(state.limits.catalogue_max_age) {
        Ok(cat) => return Ok(cat),
        Err(ticket) => ticket,
    };
    let mut cat = Catalogue::default();
    for root in &replica.roots {
        let found = replica_backups(&replica.zfs, root, &mut cat).await?;
        cat.backups.extend(found);
    }
    state.replica_cache.put(ticket, &cat);
    Ok(cat)
}

/// The file store's catalogue plus every replica (an agent may have either or both). A stored
/// file and a replica of the same backup id are one backup: the file is listed. A replica
/// root that cannot be read fails the whole answer (a partial catalogue would look like
/// missing backups).
async fn full_catalogue(state: &ServerState) -> Result<Catalogue, ApiError> {
    let mut cat = match (&state.store, &state.replica) {
        (Some(store), _) => store.catalogue().await?,
        (None, Some(_)) => Catalogue::default(),
        (None, None) => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                "this agent has neither a file store nor replicas".into(),
            ));
        }
    };
    if let Some(replica) = &state.replica {
        let mut seen: HashSet<(String, String, String)> = cat
            .backups
            .iter()
            .map(|b| {
                let m = &b.manifest;
                (m.host.clone(), m.dataset.clone(), m.id.clone())
            })
            .collect();
        let replicas = replica_catalogue(state, replica).await?;
        cat.problems.extend(replicas.problems);
        for b in replicas.backups {
            let m = &b.manifest;
            if seen.insert((m.host.clone(), m.dataset.clone(), m.id.clone())) {
                cat.backups.push(b);
            }
        }
        cat.backups.sort_by(|a, b| {
            let (a, b) = (&a.manifest, &b.manifest);
            (&a.host, &a.dataset, a.created, &a.id).cmp(&(&b.host, &b.dataset, b.created, &b.id))
        });
    }
    Ok(cat)
}

async fn get_stream(
    State(state): State<Arc<ServerState>>,
    Path((host, dataset, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_of(&host, &dataset, &id)?;
    require_read(&state, &headers, &key).await?;
    let store = state
        .store
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "this agent has no file store".into()))?;
    if let Some(v) = store.verification(&key).await?
        && v.quarantined()
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "backup {key} is quarantined: {}",
                v.problem
                    .as_deref()
                    .unwrap_or("its stream no longer matches its manifest")
            ),
        ));
    }
    let (file, manifest) = store.open(&key).await?;
    let sha256 = manifest
        .stored_sha256()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .to_owned();
    // The slot is held until the whole body was sent (it moves into the body stream).
    let slot = state
        .slot(&state.downloads, "downloads", state.limits.max_downloads)
        .await?;
    // A reader that checks the sha256 itself before applying what it read (a restore) says
    // so; the store then does not hash the same bytes a second time.
    let reader_verifies = headers
        .get(H_READER_VERIFIES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("sha256"));
    let check = (!reader_verifies).then(|| StoredCheck {
        expected: sha256.clone(),
        label: key.to_string(),
    });
    let chunks = read_stored(file.into_std().await, check);
    let stream = futures::stream::unfold((chunks, slot), |(mut rx, slot)| async move {
        rx.recv().await.map(|item| (item, (rx, slot)))
    });
    let compression = match manifest.compression {
        Compression::Zstd => "zstd",
        Compression::None => "none",
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, manifest.bytes)
        .header(H_SHA256, &sha256)
        .header(H_COMPRESSION, compression)
        .header(H_SNAPSHOT, &manifest.snapshot)
        .body(Body::from_stream(stream.boxed()))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// What the store checks a stored stream against while it sends it.
struct StoredCheck {
    /// The manifest's sha256.
    expected: String,
    /// The backup, for messages.
    label: String,
}

/// Reads a stored stream on a blocking thread into pooled buffers, handed on without a copy,
/// at most [`STORED_READ_AHEAD`] chunks ahead of the connection. With `check`, the bytes are
/// hashed as read and a mismatch with the manifest ends the stream with an error instead of
/// its last chunk's clean end (the reader sees a broken body, never a complete wrong one).
fn read_stored(
    mut file: std::fs::File,
    check: Option<StoredCheck>,
) -> tokio::sync::mpsc::Receiver<io::Result<Bytes>> {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel(STORED_READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        // Sequential read-ahead: a hint only; a refusal changes nothing but speed.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        let pool = BufPool::new(STORED_CHUNK, 2 * STORED_READ_AHEAD);
        let mut hasher = check.as_ref().map(|_| Sha256::new());
        loop {
            let mut buf = pool.take();
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if tx.blocking_send(Ok(pool.freeze(buf, n))).is_err() {
                return; // the reader went away
            }
        }
        if let (Some(hasher), Some(check)) = (hasher, check) {
            let got = hex::encode(hasher.finalize());
            if got != check.expected {
                let (label, expected) = (&check.label, &check.expected);
                warn!(backup = %label, %got, %expected, "stored stream does not match its manifest");
                let _ = tx.blocking_send(Err(io::Error::other(format!(
                    "stored stream {label} is corrupt: sha256 {got}, manifest says {expected}"
                ))));
            }
        }
    });
    rx
}

async fn delete_stream(
    State(state): State<Arc<ServerState>>,
    Path((host, dataset, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require(&state, &headers, Operation::Delete { host: &host }).await?;
    let key = key_of(&host, &dataset, &id)?;
    let stored = match &state.store {
        Some(store) => match store.delete(&key).await {
            Ok(()) => true,
            Err(FileStoreError::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        },
        None => false,
    };
    let replica = if stored {
        Ok(false)
    } else {
        delete_replica(&state, &key).await
    };
    state.replica_cache.invalidate();
    if !stored && !replica? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("backup {key} not found"),
        ));
    }
    info!(backup = %key, "deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a replica backup: destroys the received snapshot whose manifest names `key`
/// (only a snapshot that carries zetaback's manifest). False if there is none.
async fn delete_replica(state: &ServerState, key: &BackupKey) -> Result<bool, ApiError> {
    let Some(replica) = &state.replica else {
        return Ok(false);
    };
    let id = key.id.to_string();
    for root in &replica.roots {
        let target = format!("{root}/{}/{}", key.host, key.dataset);
        validate_dataset(&target).map_err(|e| ApiError::bad(e.to_string()))?;
        if !replica.zfs.dataset_exists(&target).await? {
            continue;
        }
        for (dataset, snapshot, json) in replica.zfs.manifests(&target).await? {
            let Ok(m) = Manifest::from_json(json.as_bytes()) else {
                continue;
            };
            if dataset == target && m.id == id && m.snapshot == snapshot {
                replica
                    .zfs
                    .destroy_replica_snapshot(&dataset, &snapshot)
                    .await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

async fn archive(
    State(state): State<Arc<ServerState>>,
    Path((host, dataset, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require(&state, &headers, Operation::Archive { host: &host }).await?;
    let key = key_of(&host, &dataset, &id)?;
    let store = state
        .store
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "this agent has no file store".into()))?;
    store.archive(&key).await?;
    info!(backup = %key, "archived");
    Ok(StatusCode::NO_CONTENT)
}

/// The resume token an interrupted resumable receive left on `<into>/<host>/<dataset>`
/// (OpenZFS; always none on zfs-fuse, which cannot resume).
async fn resume_token(
    State(state): State<Arc<ServerState>>,
    Path((host, dataset)): Path<(String, String)>,
    Query(q): Query<ResumeTokenQuery>,
    headers: HeaderMap,
) -> Result<axum::Json<ResumeTokenResponse>, ApiError> {
    require(&state, &headers, Operation::ResumeToken { host: &host }).await?;
    validate_host(&host).map_err(|e| ApiError::bad(e.to_string()))?;
    let dataset = unescape_dataset(&dataset).map_err(|e| ApiError::bad(e.to_string()))?;
    validate_dataset(&q.into).map_err(|e| ApiError::bad(e.to_string()))?;
    let replica = state
        .replica
        .as_ref()
        .ok_or_else(|| ApiError::bad("this agent does not accept replicas"))?;
    if !replica.roots.contains(&q.into) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this agent does not receive replicas into {}", q.into),
        ));
    }
    let target = format!("{}/{host}/{dataset}", q.into);
    let token = if replica.zfs.dataset_exists(&target).await? {
        replica.zfs.resume_token(&target).await?
    } else {
        None
    };
    Ok(axum::Json(ResumeTokenResponse { token }))
}

/// The answer carries an `ETag` (a hash of the body); a request whose `If-None-Match` names it
/// gets `304 Not Modified` without a body, so the controller can keep its copy cheaply.
async fn catalogue(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<CatalogueQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(
        &state,
        &headers,
        Operation::Catalogue {
            host: q.host.as_deref(),
        },
    )
    .await?;
    let mut cat = full_catalogue(&state).await?;
    if let Some(host) = q.host {
        validate_host(&host).map_err(|e| ApiError::bad(e.to_string()))?;
        cat.backups.retain(|b| b.manifest.host == host);
    }
    let body = serde_json::to_vec(&cat).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the catalogue: {e}"),
        )
    })?;
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let tag = HeaderValue::from_str(&etag)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    Ok((
        [
            (header::ETAG, tag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

fn verifier(state: &ServerState) -> Result<&Verifier, ApiError> {
    state
        .verifier
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "this agent has no file store".into()))
}

/// `POST /v1/verify`: queues stored backups to be re-read and checked (the controller).
async fn verify_submit(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    axum::Json(req): axum::Json<VerifyRequest>,
) -> Result<(StatusCode, axum::Json<VerifyStatus>), ApiError> {
    require(&state, &headers, Operation::Verify).await?;
    match verifier(&state)?.submit(&req) {
        Ok(status) => Ok((StatusCode::ACCEPTED, axum::Json(status))),
        Err(e @ VerifyQueueError::Invalid(_)) => Err(ApiError::bad(e.to_string())),
        Err(e @ VerifyQueueError::Full(_)) => {
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// `GET /v1/verify`: what the verifier is doing (the controller).
async fn verify_status(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<axum::Json<VerifyStatus>, ApiError> {
    require(&state, &headers, Operation::Verify).await?;
    Ok(axum::Json(verifier(&state)?.status()))
}
