//! Restores from an object-store target: the chain (the full, then each incremental up to the
//! chosen backup) is resolved from the bucket's manifests as for a file store
//! ([`restore::chain_pieces`]), and each piece is streamed from the bucket into `zfs receive`,
//! **verified before applied** as in [`restore`]: the bytes are hashed as they arrive and the
//! last [`restore::HOLD_BACK`] bytes are held back until the whole object's sha256 matched its
//! manifest's, so a corrupted object never commits (ZFS discards a receive that did not get
//! its end). A failed restore leaves nothing behind: a dataset it created is destroyed again.
//!
//! Not yet run by the `Restore` runner (the controller resolves chains from a backup host);
//! used by the agent's tests and tools.

use std::io;
use std::time::Duration;

use async_compression::tokio::bufread::ZstdDecoder;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tracing::{Instrument, info, info_span, warn};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{Catalogue, Manifest, StreamId};
use zetaback_objstore::Keys;
use zetaback_objstore::object_store::{self, ObjectStore, ObjectStoreExt};

use crate::checksum::BackgroundSha256;
use crate::restore::{HOLD_BACK, HoldBack, RestoreError, Restored, chain_pieces, parent_to_create};
use crate::transfer::CHANNEL_DEPTH;
use crate::zfs::inert::{self, HeadGate};
use crate::zfs::{ReceivePurpose, ReceiveRequest, Zfs};

/// Chunks queued for the checksum thread.
const HASH_QUEUE: usize = 16;
/// The buffer between the zstd decoder and `zfs receive`.
const DECODED_BUFFER: usize = 256 * 1024;

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
    if zfs.dataset_exists(into).await? {
        return Err(RestoreError::Exists(into.to_owned()));
    }
    if let Some(parent) = parent_to_create(into)
        && !zfs.dataset_exists(parent).await?
    {
        zfs.create_parents(parent).await?;
    }
    let mut bytes = 0;
    let mut applied = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let manifest = manifest_of(&cat, host, dataset, &piece.id)?;
        let receive = ReceiveRequest {
            target: into.to_owned(),
            force: i > 0,
            resumable: false,
            purpose: ReceivePurpose::Restore,
        };
        let span = info_span!("bucket_piece", backup = %piece.id, n = i + 1, of = pieces.len());
        let result = apply_piece(zfs, store, keys, manifest, &receive)
            .instrument(span)
            .await;
        match result {
            Ok(n) => {
                zfs.set_inert_properties(into).await?;
                info!(backup = %piece.id, bytes = n, "piece verified and applied");
                bytes += n;
                applied.push(piece.id.clone());
            }
            Err(e) => {
                destroy_partial(zfs, into).await;
                return Err(e);
            }
        }
    }
    Ok(Restored {
        chain: applied,
        bytes,
    })
}

/// Destroys the dataset a failed restore created. Retried for a few seconds: right after an
/// aborted receive the dataset can still be busy (zfs-fuse's daemon finishes the receive the
/// killed `zfs` client had started), and `zfs destroy` then fails.
async fn destroy_partial(zfs: &Zfs, into: &str) {
    const TRIES: u32 = 20;
    for attempt in 1..=TRIES {
        match zfs.dataset_exists(into).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => warn!(error = %e, "cannot tell whether the partly restored dataset exists"),
        }
        warn!(dataset = %into, attempt, "destroying the partly restored dataset");
        match zfs.destroy_restored(into).await {
            Ok(()) => return,
            Err(e) if attempt == TRIES => {
                warn!(error = %e, "could not destroy the partly restored dataset");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
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
    manifest: &Manifest,
    receive: &ReceiveRequest,
) -> Result<u64, RestoreError> {
    let sid: StreamId = manifest.id.parse()?;
    let key = keys.stream(&manifest.host, &manifest.dataset, &sid, false)?;
    let body = store.get(&key).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => RestoreError::PieceMissing {
            id: manifest.id.clone(),
            message: format!("object {key} is not in the bucket"),
        },
        e => RestoreError::Unreachable(format!("GET {key}: {e}")),
    })?;
    let mut recv = zfs.receive(receive)?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let raw = StreamReader::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut reader: std::pin::Pin<Box<dyn AsyncBufRead + Send>> = match manifest.compression {
        Compression::Zstd => Box::pin(BufReader::with_capacity(
            DECODED_BUFFER,
            ZstdDecoder::new(BufReader::new(raw)),
        )),
        Compression::None => Box::pin(raw),
    };
    let feeder = feed(body.into_stream(), manifest, tx);
    let caps = zfs.capabilities().clone();
    let stdin = recv.stdin();
    let writer = async move {
        match stdin {
            Some(stdin) => tokio::io::copy_buf(&mut reader, &mut HeadGate::new(stdin, caps)).await,
            None => Err(io::Error::other("zfs receive has no stdin")),
        }
    };
    let (fed, written) = tokio::join!(feeder, writer);
    if let Err(e) = &written
        && let Some(refused) = inert::refusal(e)
    {
        let message = refused.to_string();
        recv.abort().await;
        return Err(RestoreError::Refused {
            id: manifest.id.clone(),
            message,
        });
    }
    match (fed, written) {
        (Err(e), _) => {
            // The receive never got the piece's end: killed, ZFS discards what it had.
            recv.abort().await;
            return Err(e);
        }
        (Ok(_), Err(e)) => {
            return match tokio::time::timeout(Duration::from_secs(30), recv.finish()).await {
                Ok(Err(z)) => Err(z.into()),
                _ => Err(RestoreError::Copy(e.to_string())),
            };
        }
        (Ok(_), Ok(_)) => {}
    }
    recv.finish().await?;
    zfs.snapshot_info(&receive.target, &manifest.snapshot)
        .await
        .map_err(|_| RestoreError::SnapshotMissing {
            id: manifest.id.clone(),
            dataset: receive.target.clone(),
            snapshot: manifest.snapshot.clone(),
        })?;
    Ok(manifest.bytes)
}

/// Reads the object, hashing it, and passes all but the held-back tail to `tx`; the tail
/// follows only if the sha256 and the size match the manifest's.
async fn feed(
    mut body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    manifest: &Manifest,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<u64, RestoreError> {
    let hasher = BackgroundSha256::spawn(HASH_QUEUE);
    let hasher_gone = |_| RestoreError::Copy("the checksum thread stopped".into());
    let gone = || RestoreError::Copy("zfs receive stopped reading".into());
    let mut hold = HoldBack::new(HOLD_BACK);
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let data = match chunk {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return Err(RestoreError::Unreachable(format!(
                    "reading backup {} from the bucket failed after {bytes} bytes: {e}",
                    manifest.id
                )));
            }
        };
        hasher.update(data.clone()).await.map_err(hasher_gone)?;
        bytes += data.len() as u64;
        for c in hold.push(data) {
            tx.send(Ok(c)).await.map_err(|_| gone())?;
        }
    }
    let got = hasher.finish().await.map_err(hasher_gone)?;
    if got != manifest.sha256 || bytes != manifest.bytes {
        let _ = tx.send(Err(io::Error::other("checksum mismatch"))).await;
        return Err(RestoreError::ChecksumMismatch {
            id: manifest.id.clone(),
            got,
            expected: manifest.sha256.clone(),
        });
    }
    for c in hold.release() {
        tx.send(Ok(c)).await.map_err(|_| gone())?;
    }
    Ok(bytes)
}
