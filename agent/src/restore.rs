//! Restores: read a chain (the full, then each incremental up to the chosen backup) from the
//! target agent that stores it and `zfs receive` each piece, in order, into a dataset.
//!
//! **Verified before applied.** Each piece's stored bytes are hashed as they arrive, and the
//! last [`HOLD_BACK`] bytes are held back from `zfs receive` until the whole piece's sha256
//! matched the manifest's. A zfs stream ends with an END record, and a zstd frame's last
//! block decodes only once all of it arrived, so a receive that never got the tail cannot
//! commit: on a mismatch the receive is killed and ZFS discards what it had. A dataset the
//! restore created itself is destroyed again when a later piece fails, so a failed restore
//! leaves the destination as it found it.
//!
//! [`RestoreRunner`] runs `Restore` objects: it watches Restores whose destination is this
//! agent's host and that the controller resolved (a chain, phase Pending), claims one with
//! optimistic concurrency (a status update carrying the resourceVersion read, with
//! `claimedBy`), runs it in a tracing span, reports `bytesDone` at most once a second, and
//! records the outcome. A restore left Running by this agent (a crash or kill) is failed at
//! start-up with a message.
//!
//! Only this host's Restores are read: `spec.destination.host` is a selectable field of the
//! Restore CRD, so the watch and the start-up list of orphans carry the field selector
//! `spec.destination.host=<host>` ([`destination_selector`]) and the apiserver sends no other
//! host's Restores. A bulk Restore's parent names the same destination host as its children
//! but never gets a chain (the controller runs it), so the agent has nothing to do with it
//! either way. Against a CRD installed before it had the field (the apiserver refuses the
//! selector), the runner reads every Restore and filters here, with a warning.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_compression::tokio::bufread::ZstdDecoder;
use bytes::Bytes;
use futures::StreamExt;
use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::io::StreamReader;
use tracing::{Instrument, error, info, info_span, warn};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::api::condition::READY;
use zetaback_core::api::restore::{RestorePhase, RestorePiece};
use zetaback_core::api::{Restore, RestoreStatus, ZfsHost};
use zetaback_core::conditions::{self, Wanted};
use zetaback_core::policy;
use zetaback_core::store::Catalogue;
use zetaback_core::wire::routes;

use crate::checksum::BackgroundSha256;
use crate::transfer::{self, Endpoint, TransferError};
use crate::wire::{H_COMPRESSION, H_READER_VERIFIES, H_SHA256};
use crate::zfs::inert::{self, HeadGate};
use crate::zfs::{ReceivePurpose, ReceiveRequest, Zfs, ZfsError};

/// Stored bytes held back from `zfs receive` until the piece's checksum matched.
pub const HOLD_BACK: usize = 1024 * 1024;

/// Chunks queued for the checksum thread of a restore.
const HASH_QUEUE: usize = 16;
/// The buffer between the zstd decoder and `zfs receive`.
const DECODED_BUFFER: usize = 256 * 1024;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{0}")]
    Store(#[from] zetaback_core::store::StoreError),
    #[error("restore into {0}: the dataset exists (use force to replace it)")]
    Exists(String),
    #[error(
        "restore into {dataset}: the dataset has snapshots of its own (e.g. {dataset}@{example}) that ZFS cannot overwrite with a full stream; destroy them or restore to a new dataset (nothing was changed)"
    )]
    DestinationHasSnapshots { dataset: String, example: String },
    #[error(
        "restore into {dataset}: the dataset has child datasets (e.g. {child}) that replacing it would destroy; restore to a new dataset (nothing was changed)"
    )]
    DestinationHasChildren { dataset: String, child: String },
    #[error("feeding the stream into zfs receive failed: {0}")]
    Copy(String),
    #[error(
        "backup {id}: checksum mismatch (stored bytes hash to {got}, the manifest says {expected}); nothing of it was applied"
    )]
    ChecksumMismatch {
        id: String,
        got: String,
        expected: String,
    },
    #[error("backup {id}: {message}; nothing of it was applied")]
    Refused { id: String, message: String },
    #[error("backup {id} is not stored on the backup host ({message})")]
    PieceMissing { id: String, message: String },
    #[error("after receiving {id}, snapshot {dataset}@{snapshot} is not there")]
    SnapshotMissing {
        id: String,
        dataset: String,
        snapshot: String,
    },
    #[error("drill into {dataset} refused before anything was received: {why}")]
    NotScratch { dataset: String, why: String },
    #[error("{0}")]
    Chain(#[from] policy::ChainError),
    #[error("the stored backups are inconsistent: {0}")]
    Catalogue(#[from] policy::CatalogueError),
    #[error("the backup host is unreachable: {0}")]
    Unreachable(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl RestoreError {
    /// The `Ready=False` reason written to the Restore.
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::ChecksumMismatch { .. } => "ChecksumMismatch",
            RestoreError::Exists(_)
            | RestoreError::DestinationHasSnapshots { .. }
            | RestoreError::DestinationHasChildren { .. } => "DestinationExists",
            RestoreError::PieceMissing { .. }
            | RestoreError::Catalogue(_)
            | RestoreError::Chain(
                policy::ChainError::ChainBroken { .. } | policy::ChainError::Quarantined { .. },
            ) => "ChainBroken",
            RestoreError::Chain(_) => "NotFound",
            RestoreError::Unreachable(_) | RestoreError::Transfer(_) => "StoreUnreachable",
            RestoreError::SnapshotMissing { .. } => "SnapshotMissing",
            RestoreError::Refused { .. } => "StreamRefused",
            RestoreError::NotScratch { .. } => "NotScratch",
            RestoreError::Zfs(_) | RestoreError::Copy(_) => "ReceiveFailed",
            RestoreError::Store(_) | RestoreError::Kube(_) => "Failed",
        }
    }
}

/// What a restore applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub chain: Vec<String>,
    pub bytes: u64,
}

/// Holds back the last `keep` bytes of a stream (pure).
#[derive(Debug, Default)]
pub struct HoldBack {
    held: VecDeque<Bytes>,
    len: usize,
    keep: usize,
}

impl HoldBack {
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            ..Default::default()
        }
    }

    /// Takes a chunk; returns the chunks that may go on (all but the last `keep` bytes).
    pub fn push(&mut self, chunk: Bytes) -> Vec<Bytes> {
        self.len += chunk.len();
        self.held.push_back(chunk);
        let mut out = Vec::new();
        while let Some(front) = self.held.front() {
            if self.len - front.len() < self.keep {
                break;
            }
            self.len -= front.len();
            if let Some(c) = self.held.pop_front() {
                out.push(c);
            }
        }
        out
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.len
    }

    /// Everything held (once the stream is verified).
    pub fn release(self) -> Vec<Bytes> {
        self.held.into()
    }
}

/// One piece to apply.
#[derive(Debug, Clone)]
pub struct PieceRequest {
    pub id: String,
    /// The snapshot the piece ends at (confirmed on the destination afterwards).
    pub snapshot: String,
    /// The manifest's sha256, when known in advance (else the store's header is used).
    pub sha256: Option<String>,
}

/// Where pieces come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub endpoint: Endpoint,
    pub host: String,
    pub dataset: String,
    /// Give up when no byte arrived for this long.
    pub idle_timeout: Duration,
    /// The largest zstd window a compressed piece may ask for (2^N bytes).
    pub zstd_window_log_max: u32,
    /// The controller's grant to read these backups of another host (`status.grant`).
    pub grant: Option<String>,
}

/// Reads the catalogue of one source host from a target agent.
pub async fn catalogue(endpoint: &Endpoint, host: &str) -> Result<Catalogue, RestoreError> {
    zetaback_core::store::validate_host(host)?;
    let client = transfer::client_for(endpoint);
    let url = format!("{}{}", endpoint.base, routes::catalogue(Some(host)));
    let resp = transfer::get(&client, endpoint, &url).await?;
    Ok(transfer::json_answer(resp, transfer::MAX_CATALOGUE_ANSWER).await?)
}

/// The request for a stored piece. With `verify` the restore checks the piece's sha256 itself
/// before the piece's end reaches `zfs receive`, and tells the store it need not hash it too.
fn piece_request(
    endpoint: &Endpoint,
    url: String,
    verify: bool,
    grant: Option<&str>,
) -> Result<Request<BoxBody>, RestoreError> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if verify {
        headers.push((H_READER_VERIFIES, "sha256"));
    }
    if let Some(g) = grant {
        headers.push((zetaback_core::grant::H_GRANT, g));
    }
    Ok(transfer::get_request(endpoint, &url, &headers)?)
}

/// What the feeding side saw of one piece.
struct Fed {
    bytes: u64,
    sha256: String,
}

/// Reads the stored piece, hashing it, and passes all but the held-back tail to `tx`; the
/// tail follows only if the sha256 matched.
async fn feed(
    mut body: hyper::body::Incoming,
    piece: &PieceRequest,
    (expected, length): (&str, Option<u64>),
    keep: usize,
    idle: Duration,
    progress: &AtomicU64,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<Fed, RestoreError> {
    let hasher = BackgroundSha256::spawn(HASH_QUEUE);
    let hasher_gone = |_| RestoreError::Copy("the checksum thread stopped".into());
    let mut hold = HoldBack::new(keep);
    let mut bytes = 0u64;
    let gone = || RestoreError::Copy("zfs receive stopped reading".into());
    let body_error = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                break Some(format!(
                    "no data for {}s from the backup host",
                    idle.as_secs()
                ));
            }
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(e.to_string()),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        hasher.update(data.clone()).await.map_err(hasher_gone)?;
        bytes += data.len() as u64;
        progress.fetch_add(data.len() as u64, Ordering::Relaxed);
        for c in hold.push(data) {
            tx.send(Ok(c)).await.map_err(|_| gone())?;
        }
    };
    let got = hasher.finish().await.map_err(hasher_gone)?;
    let complete = length.is_none_or(|l| l == bytes);
    if got != expected && (body_error.is_none() || (complete && length.is_some())) {
        let _ = tx.send(Err(io::Error::other("checksum mismatch"))).await;
        return Err(RestoreError::ChecksumMismatch {
            id: piece.id.clone(),
            got,
            expected: expected.to_owned(),
        });
    }
    if let Some(e) = body_error {
        let _ = tx.send(Err(io::Error::other(e.clone()))).await;
        return Err(RestoreError::Unreachable(format!(
            "reading backup {} failed after {bytes} bytes: {e}",
            piece.id
        )));
    }
    for c in hold.release() {
        tx.send(Ok(c)).await.map_err(|_| gone())?;
    }
    Ok(Fed { bytes, sha256: got })
}

/// Streams one piece from the store into `zfs receive`, verified before its end is applied;
/// then confirms the snapshot exists. Returns the stored bytes and their sha256.
pub async fn apply_piece(
    zfs: &Zfs,
    client: &transfer::TlsClient,
    src: &Source,
    piece: &PieceRequest,
    receive: &ReceiveRequest,
    verify: bool,
    progress: &AtomicU64,
) -> Result<(u64, String), RestoreError> {
    let path = routes::stream(&src.host, &src.dataset, &piece.id)?;
    let url = format!("{}{path}", src.endpoint.base);
    let resp = client
        .request(piece_request(
            &src.endpoint,
            url,
            verify,
            src.grant.as_deref(),
        )?)
        .await
        .map_err(|e| RestoreError::Unreachable(format!("{e:#}")))?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = transfer::error_message(resp).await;
        if status == StatusCode::NOT_FOUND {
            return Err(RestoreError::PieceMissing {
                id: piece.id.clone(),
                message: body,
            });
        }
        return Err(TransferError::Rejected {
            status,
            message: body,
        }
        .into());
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let announced = header(H_SHA256);
    let expected = match (&piece.sha256, &announced) {
        (Some(e), Some(a)) if e != a => {
            return Err(RestoreError::ChecksumMismatch {
                id: piece.id.clone(),
                got: a.clone(),
                expected: e.clone(),
            });
        }
        (Some(e), _) => e.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => {
            return Err(TransferError::Read(format!("no {H_SHA256} header")).into());
        }
    };
    let compression = match header(H_COMPRESSION).as_deref() {
        Some("zstd") => Compression::Zstd,
        _ => Compression::None,
    };
    let length = header(CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<u64>().ok());

    let mut recv = zfs.receive(receive)?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(transfer::CHANNEL_DEPTH);
    let raw = StreamReader::new(tokio_stream_of(rx));
    // Buffered readers, copied with `copy_buf`: each received chunk (or decoded block) goes
    // to the pipe as it is, without a pass through `copy`'s 8 KiB buffer (a copy and eight
    // times the write calls).
    let mut reader: std::pin::Pin<Box<dyn AsyncBufRead + Send>> = match compression {
        Compression::Zstd => Box::pin(BufReader::with_capacity(
            DECODED_BUFFER,
            ZstdDecoder::with_params(
                BufReader::new(raw),
                &[async_compression::zstd::DParameter::window_log_max(
                    src.zstd_window_log_max,
                )],
            ),
        )),
        Compression::None => Box::pin(raw),
    };
    let keep = if verify { HOLD_BACK } else { 0 };
    let feeder = feed(
        resp.into_body(),
        piece,
        (&expected, length),
        keep,
        src.idle_timeout,
        progress,
        tx,
    );
    let caps = zfs.capabilities().clone();
    let stdin = recv.stdin();
    let writer = async move {
        match stdin {
            // A stream that carries properties never reaches a receive that cannot
            // override them (zfs-fuse): see zfs::inert.
            Some(stdin) => tokio::io::copy_buf(&mut reader, &mut HeadGate::new(stdin, caps)).await,
            None => Err(io::Error::other("zfs receive has no stdin")),
        }
    };
    let (fed, written) = tokio::join!(feeder, writer);
    if let Err(e) = &written
        && let Some(refused) = inert::refusal(e)
    {
        let refused = refused.to_string();
        recv.abort().await;
        return Err(RestoreError::Refused {
            id: piece.id.clone(),
            message: refused,
        });
    }
    let fed = match (fed, written) {
        (Err(e), _) if !matches!(e, RestoreError::Copy(_)) => {
            recv.abort().await;
            return Err(e);
        }
        (Err(e), _) => {
            // The receive stopped reading: prefer its own message (it exits on its own; a
            // receive that hangs is killed when the timeout drops it).
            return match tokio::time::timeout(Duration::from_secs(30), recv.finish()).await {
                Ok(Err(z)) => Err(z.into()),
                _ => Err(e),
            };
        }
        (Ok(_), Err(e)) => {
            return match tokio::time::timeout(Duration::from_secs(30), recv.finish()).await {
                Ok(Err(z)) => Err(z.into()),
                _ => Err(RestoreError::Copy(e.to_string())),
            };
        }
        (Ok(fed), Ok(_)) => fed,
    };
    if let Err(e) = recv.finish().await {
        // zfs-fuse reports "I/O error" after a `receive -F` of a full stream has replaced an
        // existing dataset, although the stream was applied. ZFS creates the received
        // snapshot only once the whole stream is in, so where it is there, the piece counts.
        let applied = receive.force
            && zfs
                .snapshot_info(&receive.target, &piece.snapshot)
                .await
                .is_ok();
        if !applied {
            return Err(e.into());
        }
        warn!(error = %e, snapshot = %piece.snapshot, "zfs receive reported an error, but the snapshot it received is there: the piece counts");
    }
    if let Err(e) = zfs.snapshot_info(&receive.target, &piece.snapshot).await {
        warn!(error = %e, "restored snapshot not found");
        return Err(RestoreError::SnapshotMissing {
            id: piece.id.clone(),
            dataset: receive.target.clone(),
            snapshot: piece.snapshot.clone(),
        });
    }
    Ok((fed.bytes, fed.sha256))
}

fn tokio_stream_of(
    rx: mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// The parent to create before receiving into `dataset` (none for a pool's child).
pub fn parent_to_create(dataset: &str) -> Option<&str> {
    let (parent, _) = dataset.rsplit_once('/')?;
    parent.contains('/').then_some(parent)
}

/// Settings of one chain restore.
#[derive(Debug, Clone)]
pub struct ChainRequest {
    pub pieces: Vec<PieceRequest>,
    pub into: String,
    pub force: bool,
    pub verify: bool,
}

/// How many pieces at the start of the chain are already on an existing destination (their
/// snapshots exist there, in order): what an interrupted restore of the same chain received.
async fn already_received(zfs: &Zfs, into: &str, pieces: &[PieceRequest]) -> usize {
    let mut n = 0;
    for p in pieces {
        if p.snapshot.is_empty() || zfs.snapshot_info(into, &p.snapshot).await.is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// How many pieces of a chain are already on the destination, deciding whether the chain may
/// go there at all. Without `force` an existing destination is refused. With `force`, a
/// destination that already holds the first pieces of the chain (an interrupted restore of
/// the same chain) gets the rest on top; any other existing dataset is replaced by the full
/// (`zfs receive -F`), unless it has snapshots or child datasets of its own, which that
/// would destroy (ZFS refuses the first anyway): those are refused before anything is sent.
async fn pieces_already_there(
    zfs: &Zfs,
    req: &ChainRequest,
    existed: bool,
) -> Result<usize, RestoreError> {
    if !existed {
        return Ok(0);
    }
    if !req.force {
        return Err(RestoreError::Exists(req.into.clone()));
    }
    let skip = already_received(zfs, &req.into, &req.pieces).await;
    if skip > 0 {
        return Ok(skip);
    }
    let inventory = zfs.inventory(Some(&req.into)).await?;
    if let Some(s) = inventory.snapshots_of(&req.into).next() {
        return Err(RestoreError::DestinationHasSnapshots {
            dataset: req.into.clone(),
            example: s.name.clone(),
        });
    }
    if let Some(child) = inventory.datasets.iter().find(|d| d.name != req.into) {
        return Err(RestoreError::DestinationHasChildren {
            dataset: req.into.clone(),
            child: child.name.clone(),
        });
    }
    Ok(0)
}

/// Applies a chain in order into `req.into`, creating missing parents; `on_piece` is told
/// after each piece (its index and sha256). On a failure, a dataset this call created is
/// destroyed again. What `force` allows is decided by [`pieces_already_there`].
///
/// Pieces already on the target (an interrupted restore of the same chain, e.g. a crash of
/// this agent) are not sent again: the rest is received with `-F` on top of them (ZFS
/// applies an incremental only onto the exact snapshot it was taken from, by guid, so a
/// same-named but different snapshot makes the receive fail rather than mix data). Pieces
/// already there were verified when they were received (nothing unverified reaches `zfs
/// receive`), and `on_piece` is told about them too, with an empty checksum.
pub async fn apply_chain(
    zfs: &Zfs,
    src: &Source,
    req: &ChainRequest,
    progress: &AtomicU64,
    mut on_piece: impl FnMut(usize, &str),
) -> Result<Restored, RestoreError> {
    let existed = zfs.dataset_exists(&req.into).await?;
    let skip = pieces_already_there(zfs, req, existed).await?;
    if skip > 0 {
        info!(
            dataset = %req.into,
            pieces = skip,
            "the destination already holds the first pieces of the chain; continuing after them"
        );
    }
    if let Some(parent) = parent_to_create(&req.into)
        && !zfs.dataset_exists(parent).await?
    {
        info!(%parent, "creating the missing parent datasets");
        zfs.create_parents(parent).await?;
    }
    let client = transfer::client_for(&src.endpoint);
    let mut bytes = 0;
    let mut applied = Vec::new();
    for (i, piece) in req.pieces.iter().enumerate().take(skip) {
        applied.push(piece.id.clone());
        on_piece(i, "");
    }
    for (i, piece) in req.pieces.iter().enumerate().skip(skip) {
        let receive = ReceiveRequest {
            target: req.into.clone(),
            // -F: replacing an existing dataset (force), or an incremental onto the dataset
            // this restore just received (zfs-fuse may have touched it when mounting).
            force: i > 0 || existed,
            resumable: false,
            purpose: ReceivePurpose::Restore,
        };
        let span = info_span!("piece", backup = %piece.id, n = i + 1, of = req.pieces.len());
        match apply_piece(zfs, &client, src, piece, &receive, req.verify, progress)
            .instrument(span)
            .await
        {
            Ok((n, sha)) => {
                zfs.set_inert_properties(&req.into).await?;
                info!(backup = %piece.id, bytes = n, sha256 = %sha, "piece verified and applied");
                bytes += n;
                applied.push(piece.id.clone());
                on_piece(i, &sha);
            }
            Err(e) => {
                if !existed && i > 0 {
                    warn!(dataset = %req.into, "destroying the partly restored dataset");
                    if let Err(d) = zfs.destroy_restored(&req.into).await {
                        warn!(error = %d, "could not destroy the partly restored dataset");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(Restored {
        chain: applied,
        bytes,
    })
}

/// The pieces that restore backup `id` of `host:dataset`, in order, live and archived
/// backups alike, resolved by [`policy::restore_pieces`] as the controller resolves Restores;
/// each piece carries the sha256 of its manifest (the live copy's when a backup is in both
/// areas).
pub fn chain_pieces(
    cat: &Catalogue,
    host: &str,
    dataset: &str,
    id: &str,
) -> Result<Vec<PieceRequest>, RestoreError> {
    let backups = policy::DatasetBackups::from_store(cat.of(host, dataset))?;
    let target = policy::RestoreTarget::Id(id.to_owned());
    let pieces =
        policy::restore_pieces(&backups, cat, host, dataset, &target).map_err(|e| match e {
            policy::PiecesError::Chain(e) => RestoreError::Chain(e),
            policy::PiecesError::NoManifest { id } => RestoreError::PieceMissing {
                id,
                message: "no manifest in the catalogue".into(),
            },
        })?;
    Ok(pieces
        .into_iter()
        .map(|p| PieceRequest {
            id: p.id,
            snapshot: p.snapshot,
            sha256: Some(p.sha256),
        })
        .collect())
}

/// Restores backup `id` of `host:dataset` into the dataset `into` (the agent's `restore`
/// subcommand: no Kubernetes).
pub async fn restore(
    zfs: &Zfs,
    endpoint: &Endpoint,
    host: &str,
    dataset: &str,
    id: &str,
    into: &str,
    force: bool,
) -> Result<Restored, RestoreError> {
    let cat = catalogue(endpoint, host).await?;
    let req = ChainRequest {
        pieces: chain_pieces(&cat, host, dataset, id)?,
        into: into.to_owned(),
        force,
        verify: true,
    };
    let src = Source {
        endpoint: endpoint.clone(),
        host: host.to_owned(),
        dataset: dataset.to_owned(),
        grant: None,
        idle_timeout: Duration::from_secs(120),
        zstd_window_log_max: crate::limits::DEFAULT_ZSTD_WINDOW_LOG_MAX,
    };
    apply_chain(zfs, &src, &req, &AtomicU64::new(0), |_, _| {}).await
}

/// Settings of the restore runner.
#[derive(Debug, Clone)]
pub struct RestoreRunnerConfig {
    /// This agent's ZfsHost.
    pub host_name: String,
    /// Written to `status.claimedBy`.
    pub agent_id: String,
    /// This agent's own token for the backup host's agent (read again for every restore).
    pub token: crate::auth::TokenFile,
    pub idle_timeout: Duration,
    /// How often `bytesDone` is written at most.
    pub progress_every: Duration,
    /// The largest zstd window a compressed piece may ask for (2^N bytes).
    pub zstd_window_log_max: u32,
    /// Mutual TLS to the backup host's agent ([`crate::job::JobSettings::tls`]).
    pub tls: Option<Arc<zetaback_core::peer_tls::PeerTls>>,
    /// This host's own object-store keys, for restores from a bucket (`status.objectStore`).
    pub object_store_credentials: Option<std::path::PathBuf>,
}

/// The field selector of the Restores whose destination is `host`.
pub fn destination_selector(host: &str) -> String {
    crate::claim::field_selector("spec.destination.host", host)
}

/// Whether a Restore is for this host, resolved, and waiting to be claimed.
pub fn is_claimable(r: &Restore, host: &str) -> bool {
    r.spec.destination.host.as_str() == host
        && r.metadata.deletion_timestamp.is_none()
        && r.status.as_ref().is_some_and(|s| {
            s.phase == RestorePhase::Pending && !s.chain.is_empty() && s.claimed_by.is_none()
        })
}

/// Whether a Restore was left running by this agent.
pub fn is_orphaned(r: &Restore, host: &str, agent_id: &str) -> bool {
    r.spec.destination.host.as_str() == host
        && r.status.as_ref().is_some_and(|s| {
            s.phase == RestorePhase::Running && s.claimed_by.as_deref() == Some(agent_id)
        })
}

fn ready(status: &RestoreStatus, ok: bool, reason: &str, message: &str) -> Vec<serde_json::Value> {
    let wanted = Wanted {
        type_: READY,
        status: ok,
        reason,
        message: message.to_owned(),
        observed_generation: status.observed_generation,
    };
    conditions::set(&status.conditions, &wanted, Time(jiff::Timestamp::now()))
        .into_iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}

/// The status patch that ends a restore (pure but for the clock).
pub fn outcome_patch(
    status: &RestoreStatus,
    result: &Result<Restored, RestoreError>,
    pieces: &[RestorePiece],
    into: &str,
) -> serde_json::Value {
    let now = Time(jiff::Timestamp::now());
    match result {
        Ok(r) => {
            let all_verified = pieces.iter().all(|p| p.verified == Some(true));
            let message = format!(
                "restored {} piece(s), {} bytes, into {into}",
                r.chain.len(),
                r.bytes
            );
            serde_json::json!({"status": {
                "phase": RestorePhase::Succeeded,
                "verified": all_verified,
                "bytesDone": r.bytes,
                "pieces": pieces,
                "finishedAt": now,
                "message": message,
                "conditions": ready(status, true, "Succeeded", &message),
            }})
        }
        Err(e) => {
            let message = e.to_string();
            serde_json::json!({"status": {
                "phase": RestorePhase::Failed,
                "verified": false,
                "pieces": pieces,
                "finishedAt": now,
                "message": message,
                "conditions": ready(status, false, e.reason(), &message),
            }})
        }
    }
}

/// Runs Restores whose destination is this host.
pub struct RestoreRunner {
    client: kube::Client,
    zfs: Zfs,
    cfg: RestoreRunnerConfig,
}

fn key(r: &Restore) -> String {
    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any())
}

impl RestoreRunner {
    pub fn new(client: kube::Client, zfs: Zfs, cfg: RestoreRunnerConfig) -> Self {
        Self { client, zfs, cfg }
    }

    fn api(&self, r: &Restore) -> Api<Restore> {
        Api::namespaced(self.client.clone(), &r.namespace().unwrap_or_default())
    }

    /// The field selector of this host's Restores when the CRD has `spec.destination.host` as
    /// a selectable field; `None` otherwise: then every Restore is read (and filtered here).
    pub async fn host_selector(&self) -> Result<Option<String>, RestoreError> {
        let fields = destination_selector(&self.cfg.host_name);
        Ok(crate::claim::selectable::<Restore>(&self.client, &fields).await?)
    }

    /// Fails the restores this agent left running before a restart.
    pub async fn recover(&self) -> Result<usize, RestoreError> {
        let (list, _) = crate::claim::scoped(self.host_selector().await?.as_deref());
        self.recover_listed(&list).await
    }

    async fn recover_listed(&self, list: &ListParams) -> Result<usize, RestoreError> {
        let (host, agent) = (&self.cfg.host_name, &self.cfg.agent_id);
        let failed = crate::claim::fail_orphans_listed::<Restore>(
            &self.client,
            list,
            |r| is_orphaned(r, host, agent),
            |r| {
                let st = r.status.clone().unwrap_or_default();
                let message = format!(
                    "interrupted: the agent restarted while this restore ran; {} may hold a partial restore (a new Restore of the same source with force: true continues after the pieces it holds)",
                    r.spec.destination.dataset.as_str()
                );
                serde_json::json!({"status": {
                    "phase": RestorePhase::Failed,
                    "verified": false,
                    "finishedAt": Time(jiff::Timestamp::now()),
                    "message": message,
                    "conditions": ready(&st, false, "Interrupted", &message),
                }})
            },
        )
        .await?;
        for r in &failed {
            warn!(restore = %r, "failed a restore interrupted by a restart");
        }
        Ok(failed.len())
    }

    /// Claims a restore; `None` if another agent got it or it is no longer claimable.
    pub async fn claim(&self, r: &Restore) -> Result<Option<Restore>, RestoreError> {
        if !is_claimable(r, &self.cfg.host_name) {
            return Ok(None);
        }
        let mut claimed = r.clone();
        let mut st = r.status.clone().unwrap_or_default();
        st.phase = RestorePhase::Running;
        st.claimed_by = Some(self.cfg.agent_id.clone());
        st.started_at = Some(Time(jiff::Timestamp::now()));
        st.bytes_done = Some(0);
        st.message = Some(format!("running on {}", self.cfg.agent_id));
        claimed.status = Some(st);
        Ok(crate::claim::claim(&self.api(r), &claimed).await?)
    }

    async fn store_endpoint(&self, st: &RestoreStatus) -> Result<Endpoint, RestoreError> {
        // The store host's current endpoint, else the one the controller saw; over TLS, its
        // node (from its spec, which agents cannot write) is the peer that must answer.
        let mut ep = None;
        let mut node = None;
        if let Some(h) = &st.store_host {
            let host = Api::<ZfsHost>::all(self.client.clone()).get_opt(h).await?;
            node = host.as_ref().map(|h| h.spec.node_name.clone());
            ep = host.and_then(|h| h.status).and_then(|s| s.agent_endpoint);
        }
        let ep = ep.or_else(|| st.store_endpoint.clone()).ok_or_else(|| {
            RestoreError::Unreachable("the status names no backup host endpoint".into())
        })?;
        let token = self
            .cfg
            .token
            .read()
            .map_err(|e| RestoreError::Unreachable(format!("this agent's token: {e}")))?;
        let endpoint = Endpoint::new(&ep, token);
        let Some(tls) = &self.cfg.tls else {
            return Ok(endpoint);
        };
        let node = node.ok_or_else(|| {
            RestoreError::Unreachable(
                "TLS is on and the status names no backup host whose node could be verified".into(),
            )
        })?;
        let peer = zetaback_core::peer_tls::PeerIdentity::node(&node)
            .map_err(|e| RestoreError::Unreachable(e.to_string()))?;
        endpoint
            .over_tls(tls, peer)
            .map_err(|e| RestoreError::Unreachable(e.to_string()))
    }

    /// Runs a claimed restore and records the outcome.
    pub async fn execute(&self, r: Restore) -> Result<(), RestoreError> {
        let st = r.status.clone().unwrap_or_default();
        let api = self.api(&r);
        let name = r.name_any();
        let progress = Arc::new(AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let reporter = {
            let (api, name, progress, every) = (
                api.clone(),
                name.clone(),
                progress.clone(),
                self.cfg.progress_every,
            );
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop_rx.changed() => return,
                    }
                    let now = progress.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        let patch = serde_json::json!({"status": {"bytesDone": now}});
                        if let Err(e) = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                        {
                            warn!(error = %e, "could not report progress");
                        }
                    }
                }
            })
        };
        let mut pieces = st.pieces.clone();
        let drill = r.spec.drill;
        let into = r.spec.destination.dataset.as_str().to_owned();
        // A drill's destination is checked before anything else: only a new dataset under a
        // scratch root is ever received into, and only then cleaned up.
        let guard = if drill {
            crate::drill::check_destination(&self.zfs, &into).await
        } else {
            Ok(())
        };
        let guard_passed = guard.is_ok();
        // Where the chain is: a backup host's endpoint, or (Err) the bucket it is read from.
        let source = match st.object_store.clone().filter(|_| guard_passed) {
            Some(bucket) => Ok(Err(bucket)),
            None => guard.and(self.store_endpoint(&st).await).map(Ok),
        };
        let result = match source {
            Err(e) => Err(e),
            Ok(Err(bucket)) => {
                let creds = self.cfg.object_store_credentials.as_deref();
                crate::objstore_restore::run_claimed(
                    &self.zfs,
                    creds,
                    &bucket,
                    &r,
                    &progress,
                    &mut pieces,
                )
                .await
            }
            Ok(Ok(endpoint)) => {
                let src = Source {
                    endpoint,
                    host: r.spec.source.host.as_str().to_owned(),
                    dataset: r.spec.source.dataset_name().to_owned(),
                    idle_timeout: self.cfg.idle_timeout,
                    zstd_window_log_max: self.cfg.zstd_window_log_max,
                    grant: st.grant.clone(),
                };
                let req = ChainRequest {
                    pieces: st
                        .chain
                        .iter()
                        .map(|id| {
                            let p = st.pieces.iter().find(|p| &p.id == id);
                            PieceRequest {
                                id: id.clone(),
                                snapshot: p.map(|p| p.snapshot.clone()).unwrap_or_default(),
                                sha256: p.map(|p| p.sha256.clone()).filter(|s| !s.is_empty()),
                            }
                        })
                        .collect(),
                    into: r.spec.destination.dataset.as_str().to_owned(),
                    force: r.spec.force,
                    verify: r.spec.verify,
                };
                let applied = apply_chain(&self.zfs, &src, &req, &progress, |i, _sha| {
                    if let Some(p) = pieces.get_mut(i) {
                        p.verified = Some(r.spec.verify);
                    }
                })
                .await;
                match applied {
                    Ok(done) if drill => {
                        let restored: Vec<(String, String)> = req
                            .pieces
                            .iter()
                            .map(|p| (p.id.clone(), p.snapshot.clone()))
                            .collect();
                        crate::drill::check_restored(&self.zfs, &into, &restored)
                            .await
                            .map(|()| done)
                    }
                    other => other,
                }
            }
        };
        // The end of a drill's measured recovery time: verified, before the clean-up.
        let verified_at = (drill && result.is_ok()).then(|| Time(jiff::Timestamp::now()));
        let scratch_destroyed = if drill && guard_passed {
            Some(crate::drill::clean_up(&self.zfs, &into).await)
        } else {
            None
        };
        let _ = stop_tx.send(true);
        let _ = reporter.await;
        match &result {
            Ok(done) => info!(chain = ?done.chain, bytes = done.bytes, "restore succeeded"),
            Err(e) => warn!(error = %e, reason = e.reason(), "restore failed"),
        }
        let mut patch = outcome_patch(
            &st,
            &result,
            &pieces,
            &format!(
                "{}:{}",
                r.spec.destination.host.as_str(),
                r.spec.destination.dataset.as_str()
            ),
        );
        if drill && let Some(status) = patch.get_mut("status") {
            status["verifiedAt"] = serde_json::json!(verified_at);
            status["scratchDestroyed"] = serde_json::json!(scratch_destroyed);
        }
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Watches and runs restores until the watch ends.
    pub async fn run(self: Arc<Self>) -> Result<(), RestoreError> {
        // One probe for both the orphan list and the watch.
        let (list, config) = crate::claim::scoped(self.host_selector().await?.as_deref());
        let n = self.recover_listed(&list).await?;
        if n > 0 {
            info!(failed = n, "failed restores interrupted by a restart");
        }
        let api: Api<DeserializeGuard<Restore>> = Api::all(self.client.clone());
        let (reader, writer) = reflector::store();
        // Every watch event, not just applied objects: the reflector's store takes in the
        // initial list only at InitDone, so scheduling on the InitApply events alone missed
        // jobs that existed before the watch started until some later event came.
        let mut events = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        // Destination datasets being restored: one restore per dataset at a time.
        let running: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    None => return Ok(()),
                    Some(Err(e)) => { warn!(error = %e, "Restore watch error"); continue; }
                    Some(Ok(_)) => {}
                },
                Some(()) = done_rx.recv() => {}
            }
            let mut pending: Vec<Restore> = reader
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok().cloned())
                .filter(|r| is_claimable(r, &self.cfg.host_name))
                .collect();
            pending.sort_by_key(|r| (r.metadata.creation_timestamp.clone().map(|t| t.0), key(r)));
            for r in pending {
                let dest = r.spec.destination.dataset.as_str().to_owned();
                if running.lock().map(|s| s.contains(&dest)).unwrap_or(true) {
                    continue;
                }
                let claimed = match self.claim(&r).await {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(restore = %key(&r), error = %e, "claiming failed");
                        continue;
                    }
                };
                if let Ok(mut s) = running.lock() {
                    s.insert(dest.clone());
                }
                let span = info_span!("restore", restore = %key(&r),
                    source = %format!("{}:{}", r.spec.source.host.as_str(), r.spec.source.dataset_name()),
                    destination = %dest);
                let (this, running, done) = (self.clone(), running.clone(), done_tx.clone());
                tokio::spawn(
                    async move {
                        info!("claimed");
                        if let Err(e) = this.execute(claimed).await {
                            error!(error = %e, "could not record the restore's outcome");
                        }
                        if let Ok(mut s) = running.lock() {
                            s.remove(&dest);
                        }
                        let _ = done.send(());
                    }
                    .instrument(span),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_back_keeps_the_tail() {
        let mut h = HoldBack::new(10);
        assert!(h.push(Bytes::from_static(b"12345")).is_empty());
        assert!(h.push(Bytes::from_static(b"67890")).is_empty());
        // 15 bytes: the first chunk may go, 10 stay.
        let out = h.push(Bytes::from_static(b"abcde"));
        assert_eq!(out, [Bytes::from_static(b"12345")]);
        assert_eq!(h.held(), 10);
        // A big chunk: everything before it goes; it stays (it holds the tail).
        let out = h.push(Bytes::from(vec![0u8; 50]));
        assert_eq!(out.len(), 2);
        assert_eq!(h.held(), 50);
        assert_eq!(h.release().len(), 1);
        let mut none = HoldBack::new(0);
        assert_eq!(none.push(Bytes::from_static(b"x")).len(), 1);
    }

    #[test]
    fn parents() {
        assert_eq!(parent_to_create("tank/a/b/c"), Some("tank/a/b"));
        assert_eq!(parent_to_create("tank/a"), None);
        assert_eq!(parent_to_create("tank"), None);
    }

    fn restore(host: &str, status: Option<RestoreStatus>) -> Restore {
        let mut r = Restore::new(
            "r",
            serde_json::from_value(serde_json::json!({
                "source": {"host": "src", "dataset": "tank/a"},
                "destination": {"host": host, "dataset": "tank/b"},
            }))
            .expect("spec"),
        );
        r.status = status;
        r
    }

    #[test]
    fn claimable_and_orphaned() {
        let resolved = RestoreStatus {
            chain: vec!["1.full".into()],
            ..Default::default()
        };
        assert!(is_claimable(&restore("h", Some(resolved.clone())), "h"));
        assert!(!is_claimable(&restore("x", Some(resolved.clone())), "h"));
        assert!(!is_claimable(&restore("h", None), "h"), "not resolved yet");
        let running = RestoreStatus {
            phase: RestorePhase::Running,
            claimed_by: Some("h@n".into()),
            ..resolved
        };
        assert!(!is_claimable(&restore("h", Some(running.clone())), "h"));
        assert!(is_orphaned(
            &restore("h", Some(running.clone())),
            "h",
            "h@n"
        ));
        assert!(!is_orphaned(&restore("h", Some(running)), "h", "other"));
    }

    fn stored(id: &str, base: Option<&str>, archived: bool) -> zetaback_core::store::StoredBackup {
        let sid: zetaback_core::store::StreamId = id.parse().expect("id");
        zetaback_core::store::StoredBackup {
            manifest: zetaback_core::store::Manifest {
                version: zetaback_core::store::MANIFEST_VERSION,
                id: id.to_owned(),
                host: "h".into(),
                dataset: "tank/a".into(),
                snapshot: format!("zetaback-{}", sid.ts()),
                base_snapshot: base.map(str::to_owned),
                backup_type: sid.backup_type(),
                bytes: 10,
                sha256: format!("{:064x}", sid.ts() * 2 + i64::from(archived)),
                compression: Compression::None,
                created: jiff::Timestamp::from_second(sid.ts()).expect("ts"),
                policy: None,
            },
            archived,
            verification: None,
        }
    }

    #[test]
    fn chain_pieces_follow_the_policy_catalogue() {
        let cat = Catalogue {
            backups: vec![
                stored("100.full", None, true),
                stored("100.full", None, false),
                stored("200.incremental.100", Some("zetaback-100"), true),
                stored("300.incremental.200", Some("zetaback-200"), false),
                stored("400.incremental.100", Some("zetaback-100"), false),
            ],
            problems: vec![],
        };
        let pieces = chain_pieces(&cat, "h", "tank/a", "300.incremental.200").expect("chain");
        let ids: Vec<_> = pieces.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["100.full", "200.incremental.100", "300.incremental.200"]
        );
        assert_eq!(pieces[1].snapshot, "zetaback-200");
        // The live copy's checksum when a backup is in both areas; the archived one else.
        assert_eq!(pieces[0].sha256, Some(format!("{:064x}", 200)));
        assert_eq!(pieces[1].sha256, Some(format!("{:064x}", 401)));
        let pieces = chain_pieces(&cat, "h", "tank/a", "400.incremental.100").expect("chain");
        assert_eq!(pieces.len(), 2);

        let broken = Catalogue {
            backups: vec![
                stored("100.full", None, false),
                stored("300.incremental.200", Some("zetaback-200"), false),
            ],
            problems: vec![],
        };
        let e = chain_pieces(&broken, "h", "tank/a", "300.incremental.200").expect_err("broken");
        assert_eq!(e.reason(), "ChainBroken", "{e}");
        let e = chain_pieces(&broken, "h", "tank/a", "999.full").expect_err("missing");
        assert_eq!(e.reason(), "NotFound", "{e}");
    }

    #[test]
    fn outcome_reasons() {
        let e = RestoreError::ChecksumMismatch {
            id: "1.full".into(),
            got: "a".into(),
            expected: "b".into(),
        };
        let p = outcome_patch(&RestoreStatus::default(), &Err(e), &[], "h:tank/b");
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(p["status"]["conditions"][0]["reason"], "ChecksumMismatch");
        let ok = Restored {
            chain: vec!["1.full".into()],
            bytes: 3,
        };
        let piece = RestorePiece {
            id: "1.full".into(),
            verified: Some(true),
            ..Default::default()
        };
        let p = outcome_patch(&RestoreStatus::default(), &Ok(ok), &[piece], "h:tank/b");
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(p["status"]["verified"], true);
    }
}
