//! A backup stream into the bucket: a multipart upload fed part by part as the stream
//! arrives, hashed with sha256 as it goes, checked against the server's size once complete, and
//! only then its manifest, so that a stream without its manifest is never a backup. On any
//! failure the multipart upload is aborted (nothing is visible; a bucket lifecycle rule that
//! aborts incomplete multipart uploads after a day is still advised for uploads whose agent died
//! mid-way).
//!
//! **Speed.** Each full part uploads in its own task, so parts are on the wire while the next
//! one is read (earlier, parts were only driven while the reader waited for room, so the reader
//! and the wire took turns); several go at once, up to [`BYTES_IN_FLIGHT`] (4 parts of 8 MiB,
//! as `rclone` uploads 4 chunks at once). The stream's sha256 runs on a blocking thread one part
//! behind the reader ([`PartHasher`]): the reader copies the next part while the last one is
//! hashed.
//!
//! **Memory bound** (the parts' buffers; a slow server slows the reader down, nothing queues
//! beyond this): parts uploading hold at most [`BYTES_IN_FLIGHT`] (32 MiB), or one part when a
//! part is larger than that ([`may_start`]); plus the part being filled; plus the part being
//! hashed, which is also one of those uploading unless hashing is slower than the wire. So at
//! most `max(32 MiB, part) + 2 × part`: 48 MiB with the 8 MiB parts of a stream's first 8 GB
//! (typically 40 MiB), 64 MiB with 16 MiB parts (up to 24 GB), then `4 × part` (parts grow
//! to [`MAX_PART_SIZE`] for a stream of up to about 2 TiB).

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{MANIFEST_VERSION, Manifest, StreamId};

use crate::{Keys, ObjStoreError};

/// The bytes of parts uploading at once (4 parts of 8 MiB; 2 of 16 MiB; then 1).
pub const BYTES_IN_FLIGHT: usize = 32 << 20;
/// The first parts' size. S3 allows 10,000 parts of at least 5 MiB (but the last).
pub const FIRST_PART_SIZE: usize = 8 << 20;
/// Parts of one size before the size doubles.
pub const PARTS_PER_SIZE: usize = 1000;
/// The largest part (S3's limit is 5 GiB; memory is what bounds it here).
pub const MAX_PART_SIZE: usize = 256 << 20;

/// The size of part `index` (0-based): 8 MiB for the first 1000 parts (8 GB), doubling every
/// 1000 parts up to 256 MiB, so 10,000 parts hold about 2 TiB while a stream of a few GB never
/// needs more than 48 MiB of buffers (module doc).
pub fn part_size(index: usize) -> usize {
    let doublings = u32::try_from(index / PARTS_PER_SIZE)
        .unwrap_or(u32::MAX)
        .min(16);
    FIRST_PART_SIZE
        .checked_shl(doublings)
        .unwrap_or(MAX_PART_SIZE)
        .min(MAX_PART_SIZE)
}

/// Whether a part of `len` bytes may start uploading while parts of `in_flight` bytes are still
/// on the wire: always when none are (a part larger than [`BYTES_IN_FLIGHT`] goes alone),
/// otherwise only within [`BYTES_IN_FLIGHT`].
pub fn may_start(in_flight: usize, len: usize) -> bool {
    in_flight == 0 || in_flight.saturating_add(len) <= BYTES_IN_FLIGHT
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
        sha256: Some(sha256),
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
    info!(key = %stream_key, bytes, sha256 = manifest.sha256.as_deref().unwrap_or_default(), "stored in the object store");
    Ok(manifest)
}

/// Feeds the parts; returns the bytes sent and their sha256. On an error every part still
/// uploading is stopped (and waited for) before the caller aborts the upload.
async fn send_parts<S>(
    upload: &mut dyn MultipartUpload,
    key: &Path,
    chunks: S,
) -> Result<(u64, String), ObjStoreError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let mut window = Window::new(key);
    let fed = feed(upload, &mut window, chunks).await;
    let result = match fed {
        Ok(fed) => window.drain().await.map(|()| fed),
        Err(e) => Err(e),
    };
    if result.is_err() {
        window.parts.shutdown().await;
    }
    let (bytes, hasher) = result?;
    Ok((bytes, hasher.finish().await?))
}

/// Reads `chunks` into parts and starts each full one (the last may be short; an empty stream
/// is one empty part).
async fn feed<S>(
    upload: &mut dyn MultipartUpload,
    window: &mut Window,
    mut chunks: S,
) -> Result<(u64, PartHasher), ObjStoreError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let mut hasher = PartHasher::new();
    let mut bytes = 0u64;
    let mut index = 0usize;
    let mut part = BytesMut::with_capacity(part_size(0));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ObjStoreError::Source(e.to_string()))?;
        bytes += chunk.len() as u64;
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let size = part_size(index);
            let take = (size - part.len()).min(rest.len());
            part.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if part.len() == size {
                let full = std::mem::take(&mut part).freeze();
                hasher.add(full.clone()).await?;
                window.start(upload, full).await?;
                index += 1;
                part = BytesMut::with_capacity(part_size(index));
            }
        }
    }
    if !part.is_empty() || index == 0 {
        let last = part.freeze();
        hasher.add(last.clone()).await?;
        window.start(upload, last).await?;
    }
    Ok((bytes, hasher))
}

/// The parts uploading, each in its own task, and their bytes.
struct Window {
    parts: JoinSet<Result<usize, object_store::Error>>,
    bytes: usize,
    key: Path,
}

impl Window {
    fn new(key: &Path) -> Self {
        Self {
            parts: JoinSet::new(),
            bytes: 0,
            key: key.clone(),
        }
    }

    /// Starts uploading `part` (its number is the order of the calls), once there is room.
    async fn start(
        &mut self,
        upload: &mut dyn MultipartUpload,
        part: Bytes,
    ) -> Result<(), ObjStoreError> {
        // Parts already done free their room (and a failed one fails the upload early).
        while let Some(done) = self.parts.try_join_next() {
            self.finished(done)?;
        }
        while !may_start(self.bytes, part.len()) {
            match self.parts.join_next().await {
                Some(done) => self.finished(done)?,
                None => break,
            }
        }
        let len = part.len();
        let put = upload.put_part(PutPayload::from(part));
        self.parts.spawn(async move { put.await.map(|()| len) });
        self.bytes += len;
        Ok(())
    }

    /// Waits for every part.
    async fn drain(&mut self) -> Result<(), ObjStoreError> {
        while let Some(done) = self.parts.join_next().await {
            self.finished(done)?;
        }
        Ok(())
    }

    fn finished(
        &mut self,
        done: Result<Result<usize, object_store::Error>, tokio::task::JoinError>,
    ) -> Result<(), ObjStoreError> {
        let len = done
            .map_err(|e| ObjStoreError::Task(format!("a part upload of {}: {e}", self.key)))?
            .map_err(|e| ObjStoreError::request("UploadPart", &self.key, e))?;
        self.bytes = self.bytes.saturating_sub(len);
        Ok(())
    }
}

/// The stream's sha256, each part hashed on a blocking thread while the reader fills the next
/// one (at most one part at a time: [`PartHasher::add`] waits for the previous part first).
struct PartHasher {
    idle: Option<Sha256>,
    busy: Option<JoinHandle<Sha256>>,
}

impl PartHasher {
    fn new() -> Self {
        Self {
            idle: Some(Sha256::new()),
            busy: None,
        }
    }

    /// The hash of every part added so far.
    async fn settled(&mut self) -> Result<Sha256, ObjStoreError> {
        if let Some(busy) = self.busy.take() {
            return busy
                .await
                .map_err(|e| ObjStoreError::Task(format!("hashing the stream: {e}")));
        }
        Ok(self.idle.take().unwrap_or_default())
    }

    /// Hashes `part` after the parts added before it.
    async fn add(&mut self, part: Bytes) -> Result<(), ObjStoreError> {
        let mut hasher = self.settled().await?;
        self.busy = Some(tokio::task::spawn_blocking(move || {
            hasher.update(&part);
            hasher
        }));
        Ok(())
    }

    /// The sha256 of every part added, in hex.
    async fn finish(mut self) -> Result<String, ObjStoreError> {
        Ok(hex::encode(self.settled().await?.finalize()))
    }
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

    #[test]
    fn parts_start_while_they_fit_the_window_and_a_large_one_goes_alone() {
        let mib = 1 << 20;
        // Four 8 MiB parts at once, not five.
        assert!(may_start(0, 8 * mib));
        assert!(may_start(24 * mib, 8 * mib));
        assert!(!may_start(32 * mib, 8 * mib));
        assert!(!may_start(25 * mib, 8 * mib));
        // Two 16 MiB parts; a 16 MiB part waits while three 8 MiB ones are on the wire.
        assert!(may_start(16 * mib, 16 * mib));
        assert!(!may_start(24 * mib, 16 * mib));
        // A part larger than the window starts only alone, so the reader never waits forever.
        assert!(may_start(0, 256 * mib));
        assert!(!may_start(1, 256 * mib));
        assert!(!may_start(usize::MAX, 1));
        // The bound the module doc states: the bytes uploading never pass the window, or one part.
        for size in [1usize, 5 * mib, 8 * mib, 16 * mib, 32 * mib, 256 * mib] {
            let mut on_wire = 0;
            while may_start(on_wire, size) {
                on_wire += size;
            }
            assert!(on_wire <= BYTES_IN_FLIGHT.max(size), "{size}: {on_wire}");
            assert!(on_wire >= size, "{size}: nothing may start");
        }
    }

    fn spec(ts: i64) -> UploadSpec {
        UploadSpec {
            host: "h1".into(),
            dataset: "tank/a".into(),
            id: StreamId::Full { ts },
            snapshot: "s1".into(),
            base_snapshot: None,
            compression: Compression::None,
            policy: None,
        }
    }

    /// A deterministic, non-repeating stream of `len` bytes in chunks of odd sizes.
    fn stream_bytes(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunked(
        data: &[u8],
        chunk: usize,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let chunks: Vec<_> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_many_parts_is_stored_in_order_with_its_sha256() {
        // 5 full parts and a short last one: more than the window holds, so parts finish out
        // of order while later ones are read.
        let data = stream_bytes(5 * FIRST_PART_SIZE + 12_345);
        let store = object_store::memory::InMemory::new();
        let keys = Keys::new(Some("p"));
        let m = upload(&store, &keys, &spec(100), chunked(&data, 700_001))
            .await
            .unwrap();
        assert_eq!(m.bytes, data.len() as u64);
        assert_eq!(m.sha256, Some(hex::encode(Sha256::digest(&data))));
        let key = keys
            .stream("h1", "tank/a", &StreamId::Full { ts: 100 }, false)
            .unwrap();
        let stored = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert!(
            stored == data,
            "the stored stream differs from what was sent"
        );
        let manifest = keys
            .manifest("h1", "tank/a", &StreamId::Full { ts: 100 }, false)
            .unwrap();
        assert!(store.get(&manifest).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_stream_is_one_empty_object() {
        let store = object_store::memory::InMemory::new();
        let keys = Keys::new(None);
        let m = upload(&store, &keys, &spec(7), chunked(&[], 1))
            .await
            .unwrap();
        assert_eq!(m.bytes, 0);
        assert_eq!(m.sha256, Some(hex::encode(Sha256::digest(b""))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_failing_after_several_parts_leaves_nothing_visible() {
        let data = stream_bytes(3 * FIRST_PART_SIZE);
        let mut chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        chunks.push(Err(std::io::Error::other("zfs send died")));
        let store = object_store::memory::InMemory::new();
        let keys = Keys::new(None);
        let err = upload(&store, &keys, &spec(9), futures::stream::iter(chunks))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("zfs send died"), "{err}");
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(listed.is_empty(), "{listed:?}");
    }
}
