//! A backup stream into the bucket: a multipart upload fed part by part as the stream
//! arrives (bounded memory: the part being filled plus at most [`MAX_PARTS_IN_FLIGHT`] parts
//! on the wire; a slow server slows the reader down), hashed with sha256 as it goes, checked
//! against the server's size once complete, and only then its manifest, so that a stream
//! without its manifest is never a backup. On any failure the multipart upload is aborted
//! (nothing is visible; a bucket lifecycle rule that aborts incomplete multipart uploads after
//! a day is still advised for uploads whose agent died mid-way).

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{MANIFEST_VERSION, Manifest, StreamId};

use crate::{Keys, ObjStoreError};

/// Parts uploading at once.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;
/// The first parts' size. S3 allows 10,000 parts of at least 5 MiB (but the last).
pub const FIRST_PART_SIZE: usize = 8 << 20;
/// Parts of one size before the size doubles.
pub const PARTS_PER_SIZE: usize = 1000;
/// The largest part (S3's limit is 5 GiB; memory is what bounds it here).
pub const MAX_PART_SIZE: usize = 256 << 20;

/// The size of part `index` (0-based): 8 MiB for the first 1000 parts (8 GB), doubling every
/// 1000 parts up to 256 MiB, so 10,000 parts hold about 2 TiB while a stream of a few GB never
/// needs more than 3 × 8 MiB of memory.
pub fn part_size(index: usize) -> usize {
    let doublings = u32::try_from(index / PARTS_PER_SIZE)
        .unwrap_or(u32::MAX)
        .min(16);
    FIRST_PART_SIZE
        .checked_shl(doublings)
        .unwrap_or(MAX_PART_SIZE)
        .min(MAX_PART_SIZE)
}

/// The backup being uploaded.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    pub host: String,
    pub dataset: String,
    pub id: StreamId,
    pub snapshot: String,
    pub base_snapshot: Option<String>,
    pub compression: Compression,
    /// The policy that made it (`<namespace>/<name>`): retention deletes only its own.
    pub policy: Option<String>,
}

/// Uploads `chunks` (the stream as it is stored, compressed or not) as backup `spec` and
/// writes its manifest; returns the manifest. A backup whose manifest exists is refused
/// before anything is sent (backups are never overwritten).
pub async fn upload<S>(
    store: &dyn ObjectStore,
    keys: &Keys,
    spec: &UploadSpec,
    chunks: S,
) -> Result<Manifest, ObjStoreError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let stream_key = keys.stream(&spec.host, &spec.dataset, &spec.id, false)?;
    let manifest_key = keys.manifest(&spec.host, &spec.dataset, &spec.id, false)?;
    // A GET, not a HEAD: an answer to HEAD has no body, so a refusal would lose the server's
    // reason (SignatureDoesNotMatch, NoSuchBucket, AccessDenied) on its way to the status.
    match store.get(&manifest_key).await {
        Ok(_) => return Err(ObjStoreError::AlreadyStored(spec.id.to_string())),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(ObjStoreError::request("GET", &manifest_key, e)),
    }
    let mut upload = store
        .put_multipart(&stream_key)
        .await
        .map_err(|e| ObjStoreError::request("CreateMultipartUpload", &stream_key, e))?;
    let sent = match send_parts(upload.as_mut(), &stream_key, chunks).await {
        Ok(sent) => sent,
        Err(e) => {
            abort(upload.as_mut(), &stream_key).await;
            return Err(e);
        }
    };
    if let Err(e) = upload.complete().await {
        abort(upload.as_mut(), &stream_key).await;
        return Err(ObjStoreError::request(
            "CompleteMultipartUpload",
            &stream_key,
            e,
        ));
    }
    let (bytes, sha256) = sent;
    let stored = store
        .head(&stream_key)
        .await
        .map_err(|e| ObjStoreError::request("HEAD", &stream_key, e))?;
    if stored.size != bytes {
        return Err(ObjStoreError::SizeMismatch {
            key: stream_key.to_string(),
            stored: stored.size,
            sent: bytes,
        });
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: spec.id.to_string(),
        host: spec.host.clone(),
        dataset: spec.dataset.clone(),
        snapshot: spec.snapshot.clone(),
        base_snapshot: spec.base_snapshot.clone(),
        backup_type: spec.id.backup_type(),
        bytes,
        sha256,
        compression: spec.compression,
        created: jiff::Timestamp::from_second(spec.id.ts()).map_err(|e| {
            zetaback_core::store::StoreError::InvalidManifest {
                id: spec.id.to_string(),
                reason: e.to_string(),
            }
        })?,
        policy: spec.policy.clone(),
        xxh3: None,
        raw: false,
    };
    debug_assert!(manifest.backup_type == BackupType::Full || manifest.base_snapshot.is_some());
    manifest.validate()?;
    store
        .put(&manifest_key, PutPayload::from(manifest.to_json()?))
        .await
        .map_err(|e| ObjStoreError::request("PUT", &manifest_key, e))?;
    info!(key = %stream_key, bytes, sha256 = %manifest.sha256, "stored in the object store");
    Ok(manifest)
}

/// Feeds the parts; returns the bytes sent and their sha256.
async fn send_parts<S>(
    upload: &mut dyn MultipartUpload,
    key: &Path,
    mut chunks: S,
) -> Result<(u64, String), ObjStoreError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut index = 0usize;
    let mut part = BytesMut::with_capacity(part_size(0));
    let mut in_flight: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
    let failed = |e: object_store::Error| ObjStoreError::request("UploadPart", key, e);
    while let Some(chunk) = chunks.next().await {
        let mut chunk = chunk.map_err(|e| ObjStoreError::Source(e.to_string()))?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            let room = part_size(index) - part.len();
            let take = room.min(chunk.len());
            part.extend_from_slice(&chunk.split_to(take));
            if part.len() == part_size(index) {
                while in_flight.len() >= MAX_PARTS_IN_FLIGHT {
                    if let Some(r) = in_flight.next().await {
                        r.map_err(failed)?;
                    }
                }
                let full = std::mem::replace(&mut part, BytesMut::new()).freeze();
                in_flight.push(upload.put_part(PutPayload::from(full)));
                index += 1;
                part = BytesMut::with_capacity(part_size(index));
            }
        }
    }
    if !part.is_empty() || index == 0 {
        in_flight.push(upload.put_part(PutPayload::from(part.freeze())));
    }
    while let Some(r) = in_flight.next().await {
        r.map_err(failed)?;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

async fn abort(upload: &mut dyn MultipartUpload, key: &Path) {
    match upload.abort().await {
        Ok(()) => info!(%key, "aborted the incomplete multipart upload"),
        Err(e) => {
            warn!(%key, error = %e, "could not abort the multipart upload (a lifecycle rule removes it)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_start_small_and_grow_within_s3s_limits() {
        assert_eq!(part_size(0), 8 << 20);
        assert_eq!(part_size(999), 8 << 20);
        assert_eq!(part_size(1000), 16 << 20);
        assert_eq!(part_size(5000), 256 << 20);
        assert_eq!(part_size(usize::MAX), MAX_PART_SIZE);
        // Every part but the last is at least S3's minimum, and 10,000 parts hold > 1 TiB.
        let total: u64 = (0..10_000).map(|i| part_size(i) as u64).sum();
        assert!(total > 1 << 40, "{total}");
        assert!((0..10_000).all(|i| part_size(i) >= 5 << 20));
    }
}
