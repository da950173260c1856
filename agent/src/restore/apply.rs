//! Applying a chain, no Kubernetes: each piece read from the store that holds it, hashed as it
//! arrives and fed to `zfs receive` with the last [`HOLD_BACK`] bytes held back until its
//! sha256 matched ([`apply_piece`]); a chain applied in order, resuming after pieces already
//! received ([`apply_chain`]); the policy's chain turned into pieces ([`chain_pieces`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_compression::tokio::bufread::ZstdDecoder;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tracing::{Instrument, info, info_span, warn};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::policy;
use zetaback_core::store::Catalogue;
use zetaback_core::wire::routes;

use crate::checksum::BackgroundSha256;
use crate::transfer::{self, Endpoint, TransferError};
use crate::wire::{H_COMPRESSION, H_READER_VERIFIES, H_SHA256};
use crate::zfs::inert;
use crate::zfs::{
    Patience, ReceiveProcess, ReceivePurpose, ReceiveRequest, Zfs, ZfsError, retry_while,
    retry_while_busy,
};

use super::{RestoreError, Restored};

/// Stored bytes held back from `zfs receive` until the piece's checksum matched.
pub const HOLD_BACK: usize = 1024 * 1024;

/// Chunks queued for the checksum thread of a restore.
const HASH_QUEUE: usize = 16;
/// The buffer between the zstd decoder and `zfs receive`.
const DECODED_BUFFER: usize = 256 * 1024;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;
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
    let reader: std::pin::Pin<Box<dyn AsyncBufRead + Send>> = match compression {
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
    let writer = write_then_close(reader, recv.stdin(), zfs.capabilities().clone());
    let (fed, written) = tokio::join!(feeder, writer);
    let (fed, recv) = copy_ended(recv, &piece.id, fed, written).await?;
    finish_receive(zfs, recv, receive, &piece.id, &piece.snapshot).await?;
    Ok((fed.bytes, fed.sha256))
}

/// Copies `reader` into the receive's stdin, then drops `reader` and with it the channel the
/// feeder sends into: when the receive stops reading early (it refused the stream, or exited),
/// the feeder's next send fails at once ("zfs receive stopped reading") instead of waiting
/// forever on a full channel that nothing reads any more, with the restore hung in
/// `tokio::join!`.
pub(crate) async fn write_then_close<W>(
    mut reader: std::pin::Pin<Box<dyn AsyncBufRead + Send + '_>>,
    stdin: Option<W>,
    caps: crate::zfs::Capabilities,
) -> io::Result<u64>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let written = inert::copy_into_receive(&mut reader, stdin, caps).await;
    drop(reader);
    written
}

/// How a piece's copy into `recv` ended, once its feeder (`fed`) and its writer (`written`)
/// are both done (a file-store or a bucket restore's): the feeder's result and the receive,
/// to be finished, when the receive got the whole piece; otherwise the error to report — the
/// stream's refusal or the feeder's own failure (the receive is killed: ZFS discards what it
/// had), or, when the receive stopped reading, the receive's own message.
pub(crate) async fn copy_ended<T>(
    recv: ReceiveProcess,
    id: &str,
    fed: Result<T, RestoreError>,
    written: io::Result<u64>,
) -> Result<(T, ReceiveProcess), RestoreError> {
    if let Err(e) = &written
        && let Some(refused) = inert::refusal(e)
    {
        let message = refused.to_string();
        recv.abort().await;
        return Err(RestoreError::Refused {
            id: id.to_owned(),
            message,
        });
    }
    // The receive stopped reading (it exits on its own; one that hangs is killed when the
    // timeout drops it): its own message, else `otherwise`.
    let receive_error = |recv: ReceiveProcess, otherwise: RestoreError| async move {
        match tokio::time::timeout(Duration::from_secs(30), recv.finish()).await {
            Ok(Err(z)) => Err(z.into()),
            _ => Err(otherwise),
        }
    };
    match (fed, written) {
        (Err(e), _) if !matches!(e, RestoreError::Copy(_)) => {
            recv.abort().await;
            Err(e)
        }
        (Err(e), _) => receive_error(recv, e).await,
        (Ok(_), Err(e)) => receive_error(recv, RestoreError::Copy(e.to_string())).await,
        (Ok(fed), Ok(_)) => Ok((fed, recv)),
    }
}

/// Waits for a piece's `zfs receive` (fed the whole piece) to end, and confirms the snapshot
/// it received is there (a file-store or a bucket restore's). zfs-fuse reports "I/O error"
/// after a `receive -F` of a full stream has replaced an existing dataset, although the stream
/// was applied: ZFS creates the received snapshot only once the whole stream is in, so where
/// it is there, the piece counts.
pub(crate) async fn finish_receive(
    zfs: &Zfs,
    recv: ReceiveProcess,
    receive: &ReceiveRequest,
    id: &str,
    snapshot: &str,
) -> Result<(), RestoreError> {
    if let Err(e) = recv.finish().await {
        let applied = receive.force && zfs.snapshot_info(&receive.target, snapshot).await.is_ok();
        if !applied {
            return Err(e.into());
        }
        warn!(error = %e, %snapshot, "zfs receive reported an error, but the snapshot it received is there: the piece counts");
    }
    if let Err(e) = zfs.snapshot_info(&receive.target, snapshot).await {
        warn!(error = %e, "restored snapshot not found");
        return Err(RestoreError::SnapshotMissing {
            id: id.to_owned(),
            dataset: receive.target.clone(),
            snapshot: snapshot.to_owned(),
        });
    }
    Ok(())
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
pub async fn already_received(zfs: &Zfs, into: &str, pieces: &[PieceRequest]) -> usize {
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

/// Whether the destination exists and how many pieces of the chain it already holds. A
/// destination that disappears while it is looked at (a receive cut short being wound down:
/// zfs-fuse's daemon removes its partial dataset after the killed client is gone) is looked at
/// again, for at most [`BUSY_WAIT`].
async fn destination_state(zfs: &Zfs, req: &ChainRequest) -> Result<(bool, usize), RestoreError> {
    // (A destination found absent is not looked at further: only one that existed can
    // disappear, and `dataset_exists` says "does not exist" as `false`.)
    let disappeared = |e: &RestoreError| matches!(e, RestoreError::Zfs(z) if z.stderr().is_some_and(|e| e.contains("does not exist")));
    retry_while(
        "looking at the destination",
        &req.into,
        BUSY_WAIT,
        "it disappeared while it was looked at (a receive cut short being wound down)",
        disappeared,
        move || async move {
            let existed = zfs.dataset_exists(&req.into).await?;
            let skip = pieces_already_there(zfs, req, existed).await?;
            Ok((existed, skip))
        },
    )
    .await
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
    let (existed, skip) = destination_state(zfs, req).await?;
    if skip > 0 {
        info!(
            dataset = %req.into,
            pieces = skip,
            "the destination already holds the first pieces of the chain; continuing after them"
        );
    }
    // The parents made here are this restore's: destroyed again, when empty, if it fails.
    let mut created = Vec::new();
    if let Some(parent) = parent_to_create(&req.into)
        && !zfs.dataset_exists(parent).await?
    {
        info!(%parent, "creating the missing parent datasets");
        created = zfs.create_parents(parent).await?;
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
        // The first piece this call receives waits while ZFS calls the destination busy.
        let (client, receive) = (&client, &receive);
        let outcome = receive_piece(&req.into, i == skip, progress, move || {
            let span = info_span!("piece", backup = %piece.id, n = i + 1, of = req.pieces.len());
            apply_piece(zfs, client, src, piece, receive, req.verify, progress).instrument(span)
        })
        .await;
        match outcome {
            Ok((n, sha)) => {
                zfs.set_inert_properties(&req.into).await?;
                info!(backup = %piece.id, bytes = n, sha256 = %sha, "piece verified and applied");
                bytes += n;
                applied.push(piece.id.clone());
                on_piece(i, &sha);
            }
            Err(e) => {
                if !existed {
                    discard_partial(zfs, &req.into).await;
                    if let Err(why) = zfs.remove_empty_created(&created).await {
                        warn!(error = %why, "could not destroy the empty parents this restore had created");
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

/// How long the first piece of a restore waits while ZFS calls its destination busy (and a
/// destination that disappears while it is looked at is looked at again), trying again every
/// second.
const BUSY_WAIT: Patience = Patience::within(Duration::from_secs(30), Duration::from_secs(1));

/// Receives one piece with `receive` (a file-store or a bucket restore's). The first piece a
/// restore receives (`first`) is received again, for at most [`BUSY_WAIT`], while ZFS calls the
/// destination busy: a receive into it cut short by a killed agent may still be wound down
/// (zfs-fuse's daemon finishes it after the killed `zfs` client is gone). `progress` is set
/// back to what it was before the first try whenever a try starts, so a refused try's bytes
/// are not counted.
pub(crate) async fn receive_piece<T, F, Fut>(
    dataset: &str,
    first: bool,
    progress: &AtomicU64,
    mut receive: F,
) -> Result<T, RestoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RestoreError>>,
{
    if !first {
        return receive().await;
    }
    let before = progress.load(Ordering::Relaxed);
    retry_while_busy("receiving the first piece", dataset, BUSY_WAIT, || {
        progress.store(before, Ordering::Relaxed);
        receive()
    })
    .await
}

/// How long a failed restore keeps trying to remove the dataset it created, and how often.
const DISCARD: Patience = Patience::within(Duration::from_secs(30), Duration::from_millis(500));

/// Removes the dataset a failed restore created (it did not exist before), before the failure
/// is reported (a file-store or a bucket restore's). After a later piece failed it holds the
/// earlier pieces; after the first piece's receive was killed, ZFS discards it on its own, but
/// zfs-fuse does so in its daemon after the killed client is gone, so a status written at once
/// could name a failed restore whose dataset still existed. Retried within [`DISCARD`] while the dataset is busy (the daemon's
/// own clean-up), and on any other failure too: the wind-down may answer otherwise meanwhile
/// (the dataset vanishing between the look and the destroy).
pub(crate) async fn discard_partial(zfs: &Zfs, dataset: &str) {
    let discarded = retry_while(
        "destroying the partly restored dataset",
        dataset,
        DISCARD,
        "it failed (ZFS may still be winding the receive down)",
        |_| true,
        move || async move {
            if zfs.dataset_exists(dataset).await? {
                warn!(%dataset, "destroying the partly restored dataset");
                zfs.destroy_restored(dataset).await?;
            }
            Ok::<_, ZfsError>(())
        },
    )
    .await;
    if let Err(e) = discarded {
        warn!(error = %e, %dataset, "could not destroy the partly restored dataset");
    }
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
            e @ policy::PiecesError::NoSha256 { .. } => RestoreError::PieceMissing {
                id: id.to_owned(),
                message: e.to_string(),
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
