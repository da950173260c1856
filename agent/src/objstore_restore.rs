//! Restores from an object-store target: the chain (the full, then each incremental up to the
//! chosen backup) is resolved from the bucket's manifests as for a file store
//! ([`restore::chain_pieces`]), and each piece is streamed from the bucket into `zfs receive`,
//! **verified before applied** as in [`restore`]: the bytes are hashed as they arrive and the
//! last [`restore::HOLD_BACK`] bytes are held back until the whole object's sha256 matched its
//! manifest's, so a corrupted object never commits (ZFS discards a receive that did not get
//! its end). A failed restore leaves nothing behind: a dataset it created is destroyed again.
//!
//! Two ways in: [`restore`] (the agent's tools and tests: the chain resolved here, from a
//! listing) and [`restore_resolved`] (a `Restore` whose chain the controller resolved from the
//! bucket, `status.objectStore`): then this agent reads with **its own keys**
//! (`--object-store-credentials`) and needs only `s3:GetObject` on the source host's keys: the
//! manifest of each piece (its compression, and its sha256, which must be the one the
//! controller resolved) and the stream, from the live area or else the archive area. No
//! listing, no writes.
//!
//! A `Restore` cut short by a restart of its agent is claimed again (`restore::after_restart`):
//! its destination, which it created (`status.createdDestination`, written before the first
//! receive), keeps the pieces already received (their snapshots, verified when received) and
//! gets the rest on top; holding none, it is destroyed and the chain received from the full
//! ([`destination_plan`]). Its first piece waits (bounded) while ZFS calls the destination busy,
//! as a file-store restore's does (`restore::receive_piece`): a receive into it cut short by
//! the restart may still be wound down.
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_compression::tokio::bufread::ZstdDecoder;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tracing::{Instrument, info, info_span};
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget};
use zetaback_core::store::{Catalogue, Manifest, StreamId};
use zetaback_objstore::object_store::{self, ObjectStore, ObjectStoreExt};
use zetaback_objstore::{Credentials, Keys, explain};

use crate::checksum::BackgroundSha256;
use crate::restore::{
    Coalesce, HOLD_BACK, HoldBack, PieceRequest, RestoreError, Restored, already_received,
    chain_pieces, copy_ended, discard_partial, finish_receive, parent_to_create, receive_piece,
    write_then_close,
};
use crate::transfer::CHANNEL_DEPTH;
use crate::zfs::{ReceivePurpose, ReceiveRequest, Zfs};

/// The buffer between the zstd decoder and `zfs receive`.
const DECODED_BUFFER: usize = 256 * 1024;
/// Blocks queued for the checksum thread.
const HASH_QUEUE: usize = 16;
/// The object's bytes are handed to the checksum thread and to `zfs receive` in blocks of at
/// least this size ([`Coalesce`]), not in the HTTP body's chunks.
const BLOCK: usize = crate::transfer::CHUNK;
/// Idle blocks kept for reuse: about as many as are in flight (queued for the checksum
/// thread, the held-back tail, the channel to the writer, the one being written).
const IDLE_BLOCKS: usize = HASH_QUEUE + HOLD_BACK / BLOCK + CHANNEL_DEPTH + 2;

/// Restores backup `id` of `host:dataset` from the bucket into the new dataset `into`.
pub async fn restore(
    zfs: &Zfs,
    store: &dyn ObjectStore,
    keys: &Keys,
    (host, dataset, id): (&str, &str, &str),
    into: &str,
) -> Result<Restored, RestoreError> {
    let cat = zetaback_objstore::catalogue::read(store, keys)
        .await
        .map_err(|e| RestoreError::Unreachable(e.to_string()))?;
    let pieces = chain_pieces(&cat, host, dataset, id)?;
    let located = pieces
        .iter()
        .map(|p| {
            manifest_of(&cat, host, dataset, &p.id).map(|m| Located {
                manifest: m.clone(),
                archived: false,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = Into {
        dataset: into,
        force: false,
        owned: false,
    };
    apply_chain(
        zfs,
        store,
        keys,
        &located,
        &target,
        &AtomicU64::new(0),
        |_| {},
    )
    .await
}

/// Runs a claimed `Restore` whose chain is in the bucket `target` (its `status.objectStore`):
/// the chain from the status, read with this agent's keys; a drill's restored snapshots are
/// checked as for a file store. Marks `pieces` verified as they are applied (a bucket piece is
/// always checked against its sha256, whatever `verify` says). `owned`: the destination, if it
/// exists, is this Restore's own (created by an earlier attempt).
pub async fn run_claimed(
    zfs: &Zfs,
    credentials: Option<&Path>,
    target: &ObjectStoreTarget,
    r: &zetaback_core::api::Restore,
    owned: bool,
    progress: &AtomicU64,
    pieces: &mut [zetaback_core::api::restore::RestorePiece],
) -> Result<Restored, RestoreError> {
    let st = r.status.clone().unwrap_or_default();
    let chain: Vec<ResolvedPiece> = st
        .chain
        .iter()
        .map(|id| ResolvedPiece {
            id: id.clone(),
            sha256: st
                .pieces
                .iter()
                .find(|p| &p.id == id)
                .map(|p| p.sha256.clone())
                .unwrap_or_default(),
        })
        .collect();
    let into = r.spec.destination.dataset.as_str();
    let done = restore_resolved(
        zfs,
        credentials,
        target,
        (r.spec.source.host.as_str(), r.spec.source.dataset_name()),
        &chain,
        into,
        (r.spec.force, owned),
        progress,
        |i| {
            if let Some(p) = chain
                .get(i)
                .and_then(|c| pieces.iter_mut().find(|p| p.id == c.id))
            {
                p.verified = Some(true);
            }
        },
    )
    .await?;
    if r.spec.drill {
        let restored: Vec<(String, String)> = st
            .pieces
            .iter()
            .map(|p| (p.id.clone(), p.snapshot.clone()))
            .collect();
        crate::drill::check_restored(zfs, into, &restored).await?;
    }
    Ok(done)
}

/// One piece of a Restore the controller resolved: its id and the sha256 it resolved.
#[derive(Debug, Clone)]
pub struct ResolvedPiece {
    pub id: String,
    pub sha256: String,
}

/// Restores the chain `pieces` of `host:dataset` from `target`'s bucket into `into`, reading
/// with this agent's own keys (`credentials`, the `--object-store-credentials` file);
/// `on_piece` is told the index of each piece applied. `(force, owned)`: what may be done with
/// an existing `into` ([`destination_plan`]).
#[allow(clippy::too_many_arguments)]
pub async fn restore_resolved(
    zfs: &Zfs,
    credentials: Option<&Path>,
    target: &ObjectStoreTarget,
    (host, dataset): (&str, &str),
    pieces: &[ResolvedPiece],
    into: &str,
    (force, owned): (bool, bool),
    progress: &AtomicU64,
    on_piece: impl FnMut(usize),
) -> Result<Restored, RestoreError> {
    let path = credentials.ok_or_else(|| {
        RestoreError::Unreachable(format!(
            "the chain is in bucket {} and this agent has no object-store credentials (--object-store-credentials) to read it with",
            target.bucket
        ))
    })?;
    let creds =
        Credentials::from_file(path).map_err(|e| RestoreError::Unreachable(e.to_string()))?;
    let store = zetaback_objstore::connect(target, &creds)
        .map_err(|e| RestoreError::Unreachable(e.to_string()))?;
    let keys = Keys::new(target.prefix.as_deref());
    let mut located = Vec::with_capacity(pieces.len());
    for p in pieces {
        let found = locate(store.as_ref(), &keys, (host, dataset, &p.id), target).await?;
        if !p.sha256.is_empty() && found.manifest.sha256.as_deref() != Some(p.sha256.as_str()) {
            return Err(RestoreError::PieceMissing {
                id: p.id.clone(),
                message: format!(
                    "the bucket's manifest now says sha256 {}, the chain was resolved with {}: the backup changed since",
                    found.manifest.sha256.as_deref().unwrap_or("(none)"),
                    p.sha256
                ),
            });
        }
        located.push(found);
    }
    let into = Into {
        dataset: into,
        force,
        owned,
    };
    apply_chain(
        zfs,
        store.as_ref(),
        &keys,
        &located,
        &into,
        progress,
        on_piece,
    )
    .await
}

/// A piece's manifest and where its stream is.
struct Located {
    manifest: Manifest,
    archived: bool,
}

/// The destination of a restore.
struct Into<'a> {
    dataset: &'a str,
    /// Replace an existing dataset.
    force: bool,
    /// An existing dataset is this restore's own, from an earlier attempt.
    owned: bool,
}

/// What a bucket restore does with its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationPlan {
    /// Absent: the chain received from the full; destroyed again if the restore fails.
    Create,
    /// This restore's own, from an attempt cut short: the pieces it holds stay and the rest is
    /// received on top (holding none, it is destroyed and the chain received from the full);
    /// destroyed if the restore fails.
    Continue,
    /// Someone else's, and `force`: replaced by the full (`zfs receive -F`); left if the
    /// restore fails.
    Replace,
    /// Someone else's, without `force`: refused, untouched.
    Refuse,
}

/// The plan for a destination that `existed` (pure): `owned` (created by an earlier attempt of
/// the same restore) wins over `force`, so a restore claimed again never replaces what it
/// received.
pub fn destination_plan(existed: bool, owned: bool, force: bool) -> DestinationPlan {
    match (existed, owned, force) {
        (false, _, _) => DestinationPlan::Create,
        (true, true, _) => DestinationPlan::Continue,
        (true, false, true) => DestinationPlan::Replace,
        (true, false, false) => DestinationPlan::Refuse,
    }
}

/// Reads backup `id`'s manifest from the live area, else from the archive area.
async fn locate(
    store: &dyn ObjectStore,
    keys: &Keys,
    (host, dataset, id): (&str, &str, &str),
    target: &ObjectStoreTarget,
) -> Result<Located, RestoreError> {
    let sid: StreamId = id.parse()?;
    for archived in [false, true] {
        let key = keys.manifest(host, dataset, &sid, archived)?;
        let body = match store.get(&key).await {
            // Read within a size limit: the manifest was written by the source, which may be
            // another (compromised) node.
            Ok(found) => match zetaback_objstore::catalogue::read_limited(found, &key).await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => {
                    return Err(RestoreError::PieceMissing {
                        id: id.to_owned(),
                        message: format!(
                            "{key} is larger than {} bytes: not a manifest",
                            zetaback_objstore::catalogue::MAX_MANIFEST_BYTES
                        ),
                    });
                }
                Err(e) => {
                    return Err(RestoreError::Unreachable(format!(
                        "GET {key} in bucket {}: {e}",
                        target.bucket
                    )));
                }
            },
            Err(e) => Err(e),
        };
        match body {
            Ok(body) => {
                let manifest = Manifest::from_stored_json(&body)?;
                if manifest.id != id || manifest.host != host || manifest.dataset != dataset {
                    return Err(RestoreError::PieceMissing {
                        id: id.to_owned(),
                        message: format!("{key} names another backup"),
                    });
                }
                return Ok(Located { manifest, archived });
            }
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(unreachable(target, &format!("GET {key}"), &e)),
        }
    }
    Err(RestoreError::PieceMissing {
        id: id.to_owned(),
        message: format!(
            "no manifest of it in bucket {}, live or archived",
            target.bucket
        ),
    })
}

/// A failed request as a readable sentence (the server's S3 error code, not its XML).
fn unreachable(target: &ObjectStoreTarget, what: &str, e: &object_store::Error) -> RestoreError {
    RestoreError::Unreachable(format!(
        "{what} in bucket {}: {}",
        target.bucket,
        explain::brief(&e.to_string())
    ))
}

/// Applies `pieces` in order into `into` (creating missing parents); destroys a dataset it
/// created when a piece fails.
async fn apply_chain(
    zfs: &Zfs,
    store: &dyn ObjectStore,
    keys: &Keys,
    pieces: &[Located],
    into: &Into<'_>,
    progress: &AtomicU64,
    mut on_piece: impl FnMut(usize),
) -> Result<Restored, RestoreError> {
    let existed = zfs.dataset_exists(into.dataset).await?;
    let plan = destination_plan(existed, into.owned, into.force);
    let skip = match plan {
        DestinationPlan::Refuse => return Err(RestoreError::Exists(into.dataset.to_owned())),
        DestinationPlan::Create | DestinationPlan::Replace => 0,
        DestinationPlan::Continue => continue_on(zfs, into.dataset, pieces).await?,
    };
    if let Some(parent) = parent_to_create(into.dataset)
        && !zfs.dataset_exists(parent).await?
    {
        zfs.create_parents(parent).await?;
    }
    let mut bytes = 0;
    let mut applied = Vec::new();
    // Received on an earlier attempt, verified then (nothing unverified reaches zfs receive).
    for (i, piece) in pieces.iter().enumerate().take(skip) {
        applied.push(piece.manifest.id.clone());
        on_piece(i);
    }
    for (i, piece) in pieces.iter().enumerate().skip(skip) {
        let manifest = &piece.manifest;
        let receive = ReceiveRequest {
            target: into.dataset.to_owned(),
            force: i > 0 || plan == DestinationPlan::Replace,
            resumable: false,
            purpose: ReceivePurpose::Restore,
        };
        // The first piece this call receives waits while ZFS calls the destination busy (a
        // receive into it cut short by a killed agent may still be wound down), as a file-store
        // restore's does.
        let receive = &receive;
        let result = receive_piece(into.dataset, i == skip, progress, move || {
            let span =
                info_span!("bucket_piece", backup = %manifest.id, n = i + 1, of = pieces.len());
            apply_piece(zfs, store, keys, piece, receive, progress).instrument(span)
        })
        .await;
        match result {
            Ok(n) => {
                zfs.set_inert_properties(into.dataset).await?;
                info!(backup = %manifest.id, bytes = n, "piece verified and applied");
                bytes += n;
                applied.push(manifest.id.clone());
                on_piece(i);
            }
            Err(e) => {
                if plan != DestinationPlan::Replace {
                    discard_partial(zfs, into.dataset).await;
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

/// How many pieces at the start of the chain this restore's own destination holds (an
/// earlier attempt received them); holding none, the destination (a receive that never
/// finished) is destroyed first, so the chain is received from the full.
async fn continue_on(zfs: &Zfs, dataset: &str, pieces: &[Located]) -> Result<usize, RestoreError> {
    let names: Vec<PieceRequest> = pieces
        .iter()
        .map(|p| PieceRequest {
            id: p.manifest.id.clone(),
            snapshot: p.manifest.snapshot.clone(),
            sha256: None,
        })
        .collect();
    let skip = already_received(zfs, dataset, &names).await;
    if skip > 0 {
        info!(
            %dataset,
            pieces = skip,
            "this restore's destination holds the first pieces of the chain from an attempt cut short; continuing after them"
        );
        return Ok(skip);
    }
    discard_partial(zfs, dataset).await;
    if zfs.dataset_exists(dataset).await? {
        return Err(RestoreError::Exists(dataset.to_owned()));
    }
    Ok(0)
}

/// The live manifest of backup `id`.
fn manifest_of<'a>(
    cat: &'a Catalogue,
    host: &str,
    dataset: &str,
    id: &str,
) -> Result<&'a Manifest, RestoreError> {
    cat.backups
        .iter()
        .find(|b| {
            b.manifest.host == host
                && b.manifest.dataset == dataset
                && b.manifest.id == id
                && !b.archived
        })
        .map(|b| &b.manifest)
        .ok_or_else(|| RestoreError::PieceMissing {
            id: id.to_owned(),
            message: "no live manifest in the bucket".into(),
        })
}

/// Streams one stored object into `zfs receive`, its end held back until its sha256 matched
/// `manifest`'s; then confirms the snapshot exists. Returns the stored bytes.
async fn apply_piece(
    zfs: &Zfs,
    store: &dyn ObjectStore,
    keys: &Keys,
    piece: &Located,
    receive: &ReceiveRequest,
    progress: &AtomicU64,
) -> Result<u64, RestoreError> {
    let manifest = &piece.manifest;
    let sid: StreamId = manifest.id.parse()?;
    let key = keys.stream(&manifest.host, &manifest.dataset, &sid, piece.archived)?;
    let body = store.get(&key).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => RestoreError::PieceMissing {
            id: manifest.id.clone(),
            message: format!("object {key} is not in the bucket"),
        },
        e => RestoreError::Unreachable(format!("GET {key}: {}", explain::brief(&e.to_string()))),
    })?;
    let mut recv = zfs.receive(receive)?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let raw = StreamReader::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let reader: std::pin::Pin<Box<dyn AsyncBufRead + Send>> = match manifest.compression {
        Compression::Zstd => Box::pin(BufReader::with_capacity(
            DECODED_BUFFER,
            ZstdDecoder::new(BufReader::new(raw)),
        )),
        Compression::None => Box::pin(raw),
    };
    let feeder = feed(body.into_stream(), manifest, tx, progress);
    let writer = write_then_close(reader, recv.stdin(), zfs.capabilities().clone());
    let (fed, written) = tokio::join!(feeder, writer);
    let (_, recv) = copy_ended(recv, &manifest.id, fed, written).await?;
    finish_receive(zfs, recv, receive, &manifest.id, &manifest.snapshot).await?;
    Ok(manifest.bytes)
}

/// Reads the object, hashing it, and passes all but the held-back tail to `tx`; the tail
/// follows only if the sha256 and the size match the manifest's.
///
/// The sha256 runs on a thread of its own ([`BackgroundSha256`], fed the same blocks, no
/// copies): hashing in this task instead saved 0.05–0.1 s of CPU per GiB (the hand-overs) but
/// not time, and lost time when the machine was busy (bench/objectstore, restore: the hash,
/// ~0.6 s per GiB, then sat between the socket and `zfs receive` instead of beside them).
async fn feed(
    body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    manifest: &Manifest,
    tx: mpsc::Sender<io::Result<Bytes>>,
    progress: &AtomicU64,
) -> Result<u64, RestoreError> {
    let expected = manifest
        .stored_sha256()
        .map_err(|e| RestoreError::PieceMissing {
            id: manifest.id.clone(),
            message: e.to_string(),
        })?;
    let hasher = BackgroundSha256::spawn(HASH_QUEUE);
    let hasher_gone = |_| RestoreError::Copy("the checksum thread stopped".into());
    let gone = || RestoreError::Copy("zfs receive stopped reading".into());
    let mut hold = HoldBack::new(HOLD_BACK);
    let mut blocks = Coalesce::new(BLOCK, IDLE_BLOCKS);
    let mut ready = Vec::new();
    let mut bytes = 0u64;
    // Fused: after its end, the body is asked once more while the last block is passed on.
    let mut body = body.fuse();
    loop {
        match body.next().await {
            Some(Ok(data)) => {
                bytes += data.len() as u64;
                progress.fetch_add(data.len() as u64, Ordering::Relaxed);
                blocks.push(data, &mut ready);
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return Err(RestoreError::Unreachable(format!(
                    "reading backup {} from the bucket failed after {bytes} bytes: {e}",
                    manifest.id
                )));
            }
            None => match blocks.flush() {
                Some(last) => ready.push(last),
                None => break,
            },
        }
        for block in ready.drain(..) {
            hasher.update(block.clone()).await.map_err(hasher_gone)?;
            for c in hold.push(block) {
                tx.send(Ok(c)).await.map_err(|_| gone())?;
            }
        }
    }
    let got = hasher.finish().await.map_err(hasher_gone)?;
    if got != expected || bytes != manifest.bytes {
        let _ = tx.send(Err(io::Error::other("checksum mismatch"))).await;
        return Err(RestoreError::ChecksumMismatch {
            id: manifest.id.clone(),
            got,
            expected: expected.to_owned(),
        });
    }
    for c in hold.release() {
        tx.send(Ok(c)).await.map_err(|_| gone())?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{DestinationPlan, destination_plan};

    #[test]
    fn a_restore_continues_on_its_own_destination_and_never_touches_another_without_force() {
        use DestinationPlan::*;
        // (existed, owned, force)
        assert_eq!(destination_plan(false, false, false), Create);
        assert_eq!(destination_plan(false, true, false), Create);
        assert_eq!(destination_plan(false, false, true), Create);
        assert_eq!(destination_plan(true, true, false), Continue);
        // Its own wins over force: what it received is continued, not replaced.
        assert_eq!(destination_plan(true, true, true), Continue);
        assert_eq!(destination_plan(true, false, true), Replace);
        assert_eq!(destination_plan(true, false, false), Refuse);
    }
}
