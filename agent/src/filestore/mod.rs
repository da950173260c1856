//! The target agent's file store: writes streams crash-safely into the layout of
//! [`zetaback_core::store`] and reads them back.
//!
//! Writing a stream: a temporary file `.tmp-<id>-<unique>` in the dataset's directory, hashed
//! (sha256, and xxh3-128 for the transit check) while written, `fsync`ed; then the manifest is
//! written and `fsync`ed under a temporary name of its own (so that a disk that fills up fails
//! there, before anything has its final name); then the stream is hard-linked to its final name
//! (which fails if the name exists: a backup is never overwritten), the manifest likewise (a
//! failure unlinks the stream again), the temporary names removed and the directory `fsync`ed.
//! Until the manifest is in place the stream is not a backup: a crash at any point leaves at
//! most a temporary file (removed at start-up) or a stream without a manifest (ignored by the
//! catalogue, replaced by the next attempt). Archiving: [`archive`].
//!
//! What one source may take (its stream's size, its host's quota, the free-space reserve) is
//! checked before a stream starts and while it is written ([`space`]); a disk that fills up
//! anyway fails the stream with [`FileStoreError::is_out_of_space`], nothing half-written kept.
//! Streams admitted and still being written hold their announced size (or, announcing none,
//! their sender's estimate within what the stream may take, else the reserve) in the store's
//! [`Ledger`] until they end, less what they have written: the next admission counts only the
//! free space nobody was promised.
//! The catalogue is cached until something is written through this store, or for at most
//! [`StoreLimits::catalogue_max_age`] (for changes made behind its back).
//!
//! Streams are written with `O_DIRECT` where the file system allows it, in aligned blocks of
//! [`DIRECT_BLOCK`] bytes (the unaligned tail without it): a backup stream is written once and
//! rarely read, so copying it through the page cache only costs CPU (on the benchmark VM about
//! 0.2–1.3 CPU-seconds per GiB, against 0.07 direct) and evicts useful pages. The final
//! `fsync` is what makes it durable either way.

mod archive;
pub mod space;
mod verify;

pub use verify::{Verified, verify_file};

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::io::Write;

use bytes::Bytes;
use tokio::fs::{self, File, OpenOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{Catalogue, Layout, Manifest, StoreError, StreamId};

use crate::checksum::Received;
use crate::limits::StoreLimits;
use crate::scan_cache::ScanCache;
use crate::space_ledger::{Ledger, Reservation};
use space::{InFlight, SpaceRefusal};

/// What can go wrong in the file store.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup {0} already exists; a source may add backups, never overwrite them")]
    Exists(String),
    #[error("backup {0} is being written by another request")]
    Busy(String),
    #[error("backup {0} not found")]
    NotFound(String),
    #[error("backup {key}: {refusal}")]
    Refused { key: String, refusal: SpaceRefusal },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileStoreError {
    /// The file system is full (or a quota of its own is): `ENOSPC`, `EDQUOT`.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            FileStoreError::Io { source, .. } => {
                let code = source.raw_os_error();
                code.is_some()
                    && (code == Some(rustix::io::Errno::NOSPC.raw_os_error())
                        || code == Some(rustix::io::Errno::DQUOT.raw_os_error()))
            }
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileStoreError + '_ {
    move |source| FileStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn joined(e: tokio::task::JoinError) -> FileStoreError {
    FileStoreError::Io {
        path: PathBuf::new(),
        source: io::Error::other(e),
    }
}

/// Which backup: host, dataset and stream id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackupKey {
    pub host: String,
    pub dataset: String,
    pub id: StreamId,
}

impl std::fmt::Display for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.host, self.dataset, self.id)
    }
}

/// What the manifest records besides what the write measures.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub snapshot: String,
    pub base_snapshot: Option<String>,
    pub compression: Compression,
    /// The BackupPolicy that made it, `<namespace>/<name>` (validated by the caller).
    pub policy: Option<String>,
    /// Sent raw (`zfs send -w`): recorded in the manifest.
    pub raw: bool,
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    layout: Layout,
    shared: Arc<Shared>,
    direct_io: bool,
    limits: StoreLimits,
    /// Test-only: where a store operation stops as if the process had crashed there.
    fake_fault: Option<FakeFault>,
}

/// What the clones of a store share.
#[derive(Debug, Default)]
struct Shared {
    /// Backups being written.
    writing: Mutex<HashSet<BackupKey>>,
    /// Bytes of the streams being written, per host.
    in_flight: InFlight,
    /// The space promised to streams admitted and still being written.
    ledger: Ledger,
    cache: ScanCache<Catalogue>,
    /// Full scans of the store directory so far.
    scans: AtomicU64,
}

impl Shared {
    /// Something was written: the next catalogue read scans again.
    fn invalidate(&self) {
        self.cache.invalidate();
    }
}

/// Test-only: a point at which a store operation stops as if the agent had been killed there
/// (nothing after it runs; the operation returns an error naming the fake fault). A fake
/// fault, for crash points that a real kill cannot be timed to hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFault {
    /// Archiving: the stream is in the archive area, the manifest not yet.
    ArchiveBeforeManifestMove,
    /// Archiving: the manifest moved, the live area not yet cleaned.
    ArchiveAfterManifestMove,
}

impl FakeFault {
    fn name(self) -> &'static str {
        match self {
            FakeFault::ArchiveBeforeManifestMove => "archive-before-manifest-move",
            FakeFault::ArchiveAfterManifestMove => "archive-after-manifest-move",
        }
    }
}

/// What a finished stream measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    /// sha256 of the file (what the manifest records).
    pub sha256: String,
    /// xxh3-128 of the file (compared with the sender's transit check).
    pub xxh3: String,
    /// Written with `O_DIRECT` (the file system allowed it).
    pub direct: bool,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

async fn fsync_dir(dir: &Path) -> Result<(), FileStoreError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(joined)?
        .map_err(io_err(dir))
}

impl FileStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            layout: Layout::new(root),
            shared: Arc::default(),
            direct_io: true,
            limits: StoreLimits::default(),
            fake_fault: None,
        }
    }

    /// Sets the limits on streams, hosts and free space.
    pub fn with_limits(mut self, limits: &StoreLimits) -> Self {
        self.limits = limits.clone();
        self
    }

    /// Test-only: stop at `fault` as if the agent had been killed there (see [`FakeFault`]).
    pub fn with_fake_fault(mut self, fault: FakeFault) -> Self {
        self.fake_fault = Some(fault);
        self
    }

    /// Bytes streams admitted and still being written may yet write (their holds).
    pub fn held_bytes(&self) -> u64 {
        self.shared.ledger.held()
    }

    /// Full scans of the store directory this store (and its clones) made so far.
    pub fn scans(&self) -> u64 {
        self.shared.scans.load(Ordering::Relaxed)
    }

    /// Whether streams are written with `O_DIRECT` where possible (default: yes).
    pub fn with_direct_io(mut self, direct: bool) -> Self {
        self.direct_io = direct;
        self
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Start-up, before serving: removes the temporary files a crash left and finishes the
    /// archives a crash cut short. Returns how many of each.
    pub async fn recover(&self) -> Result<(usize, usize), FileStoreError> {
        let removed = self.remove_stale_temporaries().await?;
        let layout = self.layout.clone();
        let finished = tokio::task::spawn_blocking(move || archive::recover(&layout))
            .await
            .map_err(joined)??;
        self.shared.invalidate();
        Ok((removed, finished))
    }

    /// Removes temporary files left by a crash (call at start-up, before serving).
    pub async fn remove_stale_temporaries(&self) -> Result<usize, FileStoreError> {
        let root = self.layout.root().to_path_buf();
        tokio::task::spawn_blocking(move || remove_temporaries(&root))
            .await
            .map_err(joined)?
    }

    /// The catalogue of backups: the last scan while nothing was written through this store
    /// since and it is younger than the limits' `catalogue_max_age`; else a new scan.
    pub async fn catalogue(&self) -> Result<Catalogue, FileStoreError> {
        let ticket = match self.shared.cache.get(self.limits.catalogue_max_age) {
            Ok(cat) => return Ok(cat),
            Err(ticket) => ticket,
        };
        let root = self.layout.root().to_path_buf();
        self.shared.scans.fetch_add(1, Ordering::Relaxed);
        let cat = tokio::task::spawn_blocking(move || zetaback_core::store::scan(&root))
            .await
            .map_err(joined)??;
        self.shared.cache.put(ticket, &cat);
        Ok(cat)
    }

    /// Bytes `host` has in the store (live and archived), from the catalogue.
    async fn stored_bytes(&self, host: &str) -> Result<u64, FileStoreError> {
        if self.limits.host_quota_bytes.is_none() {
            return Ok(0);
        }
        Ok(self
            .catalogue()
            .await?
            .backups
            .iter()
            .filter(|b| b.manifest.host == host)
            .map(|b| b.manifest.bytes)
            .fold(0u64, u64::saturating_add))
    }

    fn free_bytes(&self) -> Result<u64, FileStoreError> {
        free_bytes_at(self.layout.root())
    }

    /// Starts writing a new backup. Refuses an existing one (409) or one being written.
    pub async fn begin(&self, key: BackupKey) -> Result<PendingStream, FileStoreError> {
        self.begin_sized(key, None).await
    }

    /// Starts writing a new backup of `announced` bytes, if known. Refuses an existing one
    /// (409), one being written, and one over the limits ([`FileStoreError::Refused`]).
    pub async fn begin_sized(
        &self,
        key: BackupKey,
        announced: Option<u64>,
    ) -> Result<PendingStream, FileStoreError> {
        self.begin_expecting(key, announced, None).await
    }

    /// As [`FileStore::begin_sized`], for a stream whose sender estimated it at `expected`
    /// bytes: without an `announced` size, that is what it holds of the free space while it
    /// is written (checked only against what is held; the estimate is not a limit).
    pub async fn begin_expecting(
        &self,
        key: BackupKey,
        announced: Option<u64>,
        expected: Option<u64>,
    ) -> Result<PendingStream, FileStoreError> {
        let stream = self
            .layout
            .stream_path(&key.host, &key.dataset, &key.id, false)?;
        let manifest = self
            .layout
            .manifest_path(&key.host, &key.dataset, &key.id, false)?;
        let archived = self
            .layout
            .manifest_path(&key.host, &key.dataset, &key.id, true)?;
        if fs::try_exists(&manifest).await.unwrap_or(true)
            || fs::try_exists(&archived).await.unwrap_or(true)
        {
            return Err(FileStoreError::Exists(key.to_string()));
        }
        let stored = self.stored_bytes(&key.host).await?;
        let refused = |refusal| FileStoreError::Refused {
            key: key.to_string(),
            refusal,
        };
        let writing = self.shared.in_flight.bytes(&key.host);
        let free = self.free_bytes()?;
        // A stream that announces no size holds its sender's estimate, within what it may
        // take, else as much as the reserve: the margin the operator chose for what cannot be
        // foreseen ([`space::hold`]).
        let reservation = self
            .shared
            .ledger
            .admit(free, |seen| {
                space::admit(&self.limits, &key.host, announced, stored, writing, seen)?;
                Ok(space::hold(
                    &self.limits,
                    announced,
                    expected,
                    stored,
                    writing,
                    seen,
                ))
            })
            .map_err(refused)?;
        {
            let mut writing = self
                .shared
                .writing
                .lock()
                .map_err(|_| FileStoreError::Busy(key.to_string()))?;
            if !writing.insert(key.clone()) {
                return Err(FileStoreError::Busy(key.to_string()));
            }
        }
        let claim = Claim {
            key: key.clone(),
            shared: self.shared.clone(),
        };
        let dir = self.layout.dataset_dir(&key.host, &key.dataset, false)?;
        fs::create_dir_all(&dir).await.map_err(io_err(&dir))?;
        let temp = self
            .layout
            .temp_path(&key.host, &key.dataset, &key.id, &unique())?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(io_err(&temp))?;
        debug!(path = %temp.display(), "writing stream");
        let writer = Writer::spawn(
            file.into_std().await,
            self.direct_io,
            reservation.landed_counter(),
        );
        let host_bytes = self.shared.in_flight.of(&key.host);
        Ok(PendingStream {
            key,
            dir,
            stream,
            manifest,
            temp: Some(temp),
            writer,
            block: None,
            written: None,
            bytes: 0,
            limits: self.limits.clone(),
            root: self.layout.root().to_path_buf(),
            stored_at_start: stored,
            host_bytes,
            claim,
            _reservation: reservation,
        })
    }

    /// Opens a stored backup (live or archived) for reading.
    pub async fn open(&self, key: &BackupKey) -> Result<(File, Manifest), FileStoreError> {
        for archived in [false, true] {
            let mpath = self
                .layout
                .manifest_path(&key.host, &key.dataset, &key.id, archived)?;
            let text = match fs::read(&mpath).await {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&mpath)(e)),
            };
            let manifest = Manifest::from_stored_json(&text)?;
            let spath = self
                .layout
                .stream_path(&key.host, &key.dataset, &key.id, archived)?;
            let file = File::open(&spath).await.map_err(io_err(&spath))?;
            return Ok((file, manifest));
        }
        Err(FileStoreError::NotFound(key.to_string()))
    }

    /// Deletes a backup (manifest first, so a crash leaves a stream that is no backup).
    pub async fn delete(&self, key: &BackupKey) -> Result<(), FileStoreError> {
        let result = self.delete_files(key).await;
        if result.is_ok() {
            self.forget_verification(key).await?;
        }
        self.shared.invalidate();
        result
    }

    async fn delete_files(&self, key: &BackupKey) -> Result<(), FileStoreError> {
        let mut found = false;
        for archived in [false, true] {
            let m = self
                .layout
                .manifest_path(&key.host, &key.dataset, &key.id, archived)?;
            let s = self
                .layout
                .stream_path(&key.host, &key.dataset, &key.id, archived)?;
            match fs::remove_file(&m).await {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&m)(e)),
            }
            match fs::remove_file(&s).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&s)(e)),
            }
            if found {
                if let Some(dir) = m.parent() {
                    fsync_dir(dir).await?;
                }
                break;
            }
        }
        if found {
            Ok(())
        } else {
            Err(FileStoreError::NotFound(key.to_string()))
        }
    }

    /// Moves a backup into the archive area: atomic (one rename of its manifest moves it; a
    /// crash at any point leaves it listed once) and idempotent (the retry, or [`Self::recover`]
    /// at start-up, finishes a move cut short). See [`archive`].
    pub async fn archive(&self, key: &BackupKey) -> Result<(), FileStoreError> {
        let names = archive::Names::of(&self.layout, key)?;
        let (key2, fault, root) = (
            key.clone(),
            self.fake_fault,
            self.layout.root().to_path_buf(),
        );
        let result = tokio::task::spawn_blocking(move || {
            archive::archive(&names, &key2, &|point| fake_crash(fault, point, &root))
        })
        .await
        .map_err(joined)
        .and_then(|r| r);
        self.shared.invalidate();
        result.map(|_| ())
    }
}

/// Writes a new file and fsyncs it, on a blocking thread with `std::fs`: tokio's `File`
/// reports a failed write (a full disk) only on a later write or flush, not on `sync_all`, so
/// a manifest written through it could come out empty with no error.
async fn write_synced(path: &Path, data: Vec<u8>) -> Result<(), FileStoreError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)?;
        f.write_all(&data)?;
        f.sync_all()
    })
    .await
    .map_err(joined)?
    .map_err(io_err(path))
}

/// Free bytes on the file system of `path`, or of its nearest existing ancestor (the store
/// root is created by the first stream).
fn free_bytes_at(path: &Path) -> Result<u64, FileStoreError> {
    let mut at = path;
    loop {
        match space::free_bytes(at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(p) => at = p,
                None => return Err(io_err(path)(e)),
            },
            other => return other.map_err(io_err(path)),
        }
    }
}

/// Fails with a fake crash if `point` is the configured fake fault.
fn fake_crash(
    configured: Option<FakeFault>,
    point: FakeFault,
    root: &Path,
) -> Result<(), FileStoreError> {
    if configured == Some(point) {
        warn!(
            fault = point.name(),
            "fake fault: stopping here as if killed"
        );
        return Err(FileStoreError::Io {
            path: root.to_path_buf(),
            source: io::Error::other(format!("fake fault {}: stopped here", point.name())),
        });
    }
    Ok(())
}

fn remove_temporaries(root: &Path) -> Result<usize, FileStoreError> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file()
                && zetaback_core::store::layout::is_temporary(&entry.file_name().to_string_lossy())
            {
                warn!(path = %path.display(), "removing a stream left half-written by a crash");
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Marks a backup as being written; released on drop.
#[derive(Debug)]
struct Claim {
    key: BackupKey,
    shared: Arc<Shared>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.writing.lock() {
            w.remove(&self.key);
        }
    }
}

/// Blocks queued between the request and the writer thread.
const WRITER_DEPTH: usize = 4;
/// Hashed blocks waiting for the write thread.
const HASHED_DEPTH: usize = 2;

/// The size of the blocks the writer hashes and writes (each one `O_DIRECT` write).
pub const DIRECT_BLOCK: usize = 2 * 1024 * 1024;
/// The alignment `O_DIRECT` needs for buffers, offsets and sizes (a page; enough for every
/// common logical block size).
const DIRECT_ALIGN: usize = 4096;

/// Turns `O_DIRECT` on or off for `file`; false where the file system refuses it.
fn set_direct(file: &std::fs::File, on: bool) -> bool {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let Ok(flags) = fcntl_getfl(file) else {
        return false;
    };
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    match fcntl_setfl(file, flags) {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, on, "O_DIRECT could not be changed; writing through the page cache");
            false
        }
    }
}

/// A page-aligned buffer of [`DIRECT_BLOCK`] bytes, filled from the request's chunks.
///
/// Copying each received chunk into a block at once (instead of queueing hyper's `Bytes`)
/// lets hyper reuse its read buffer: holding its chunks made it allocate a fresh one for every
/// socket read, and the page faults of those cost about 15% of the receiving agent's CPU.
struct Block {
    backing: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let backing = vec![0u8; DIRECT_BLOCK + DIRECT_ALIGN];
        let offset = backing
            .as_ptr()
            .align_offset(DIRECT_ALIGN)
            .min(DIRECT_ALIGN);
        Self {
            backing,
            offset,
            len: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.backing[self.offset..self.offset + self.len]
    }

    fn is_full(&self) -> bool {
        self.len == DIRECT_BLOCK
    }

    /// Copies as much of `data` as fits; returns how much.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_BLOCK - self.len);
        let at = self.offset + self.len;
        self.backing[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// Blocks the writer has finished with, for the next ones.
#[derive(Clone, Default)]
struct BlockPool(Arc<Mutex<Vec<Block>>>);

impl BlockPool {
    fn take(&self) -> Block {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .map(|mut b| {
                b.len = 0;
                b
            })
            .unwrap_or_else(Block::new)
    }

    fn put(&self, b: Block) {
        if let Ok(mut v) = self.0.lock() {
            v.push(b);
        }
    }
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockPool")
    }
}

/// Writes one block: full blocks directly; a partial block (only ever the last one) in its
/// aligned part directly and its tail through the page cache.
fn write_block(
    file: &mut std::fs::File,
    block: &Block,
    direct: &mut bool,
    ended: &mut bool,
) -> io::Result<()> {
    if *ended {
        return Err(io::Error::other("a block after the last (partial) block"));
    }
    let data = block.data();
    if !*direct {
        return file.write_all(data);
    }
    if block.is_full() {
        return file.write_all(data);
    }
    *ended = true;
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    file.write_all(&data[..aligned])?;
    if aligned < data.len() {
        if !set_direct(file, false) {
            return Err(io::Error::other("could not turn O_DIRECT off for the tail"));
        }
        *direct = false;
        file.write_all(&data[aligned..])?;
    }
    Ok(())
}

/// Hashes and writes blocks, fed through a bounded channel (so the request's task keeps
/// receiving while the disk writes), and fsyncs the file at the end. Two stages, each a
/// thread: one hashes a block and hands it on, the other writes it, so the sha256 (about
/// 0.6 s per GiB) of one block overlaps the write of the one before instead of adding to it.
#[derive(Debug)]
struct Writer {
    tx: Option<mpsc::Sender<Block>>,
    handle: Option<JoinHandle<io::Result<(Received, bool)>>>,
    pool: BlockPool,
}

impl Writer {
    /// `landed` counts the bytes whose write(2) returned (the free space counts them).
    fn spawn(mut file: std::fs::File, direct_io: bool, landed: Arc<AtomicU64>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Block>(WRITER_DEPTH);
        let pool = BlockPool::default();
        let back = pool.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let (to_disk, hashed) = std::sync::mpsc::sync_channel::<Block>(HASHED_DEPTH);
            let disk = std::thread::Builder::new()
                .name("zetaback-write".into())
                .spawn(move || -> io::Result<bool> {
                    let used_direct = direct_io && set_direct(&file, true);
                    let (mut direct, mut ended) = (used_direct, false);
                    while let Ok(block) = hashed.recv() {
                        write_block(&mut file, &block, &mut direct, &mut ended)?;
                        landed.fetch_add(block.len as u64, Ordering::Relaxed);
                        back.put(block);
                    }
                    file.sync_all()?;
                    Ok(used_direct)
                })?;
            let mut sums = Received::new(true);
            while let Some(block) = rx.blocking_recv() {
                sums.update(block.data());
                if to_disk.send(block).is_err() {
                    break; // the write failed: its error comes from the join below
                }
            }
            drop(to_disk);
            let used_direct = disk
                .join()
                .map_err(|_| io::Error::other("the write thread panicked"))??;
            Ok((sums, used_direct))
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
            pool,
        }
    }

    /// Queues a block; false if the writer thread stopped (its error comes from `join`).
    async fn send(&self, block: Block) -> bool {
        match &self.tx {
            Some(tx) => tx.send(block).await.is_ok(),
            None => false,
        }
    }

    /// Waits for the thread; its error if it failed.
    async fn join(&mut self) -> io::Result<(Received, bool)> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h.await.map_err(io::Error::other)?,
            None => Err(io::Error::other("stream already finished")),
        }
    }
}

/// A stream being written. Dropped without [`PendingStream::commit`], its temporary file is
/// removed and nothing is visible.
#[derive(Debug)]
pub struct PendingStream {
    key: BackupKey,
    dir: PathBuf,
    stream: PathBuf,
    manifest: PathBuf,
    temp: Option<PathBuf>,
    writer: Writer,
    /// The block being filled.
    block: Option<Block>,
    written: Option<Written>,
    bytes: u64,
    limits: StoreLimits,
    /// The store root (its free space is checked as the stream grows).
    root: PathBuf,
    /// The host's bytes in the store when this stream started.
    stored_at_start: u64,
    /// The host's bytes being written (this stream's included while it lives).
    host_bytes: Arc<AtomicU64>,
    claim: Claim,
    /// The space this stream holds in the store's ledger, released when it is dropped
    /// (committed, failed or cut off).
    _reservation: Reservation,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({} bytes)", self.len)
    }
}

impl PendingStream {
    fn temp_path(&self) -> PathBuf {
        self.temp.clone().unwrap_or_else(|| self.stream.clone())
    }

    /// The writer stopped: its error.
    async fn writer_failed(&mut self) -> FileStoreError {
        let err = match self.writer.join().await {
            Err(e) => e,
            Ok(_) => io::Error::other("stream already finished"),
        };
        io_err(&self.temp_path())(err)
    }

    /// Appends a chunk: copied into the current block at once (the chunk is released); a
    /// full block goes to the writer (waits while it is [`WRITER_DEPTH`] blocks behind). A
    /// stream over its size limit or its host's quota, or with the store's free space under
    /// half the reserve, is refused ([`FileStoreError::Refused`]; dropped, it leaves nothing).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), FileStoreError> {
        let mut data = &chunk[..];
        while !data.is_empty() {
            let block = self.block.get_or_insert_with(|| self.writer.pool.take());
            let n = block.push(data);
            data = &data[n..];
            self.bytes += n as u64;
            self.host_bytes.fetch_add(n as u64, Ordering::Relaxed);
            space::keep_going(
                &self.limits,
                &self.key.host,
                self.bytes,
                self.stored_at_start,
                self.host_bytes.load(Ordering::Relaxed),
            )
            .map_err(|refusal| FileStoreError::Refused {
                key: self.key.to_string(),
                refusal,
            })?;
            if block.is_full()
                && let Some(full) = self.block.take()
            {
                self.check_free_space()?;
                if !self.writer.send(full).await {
                    return Err(self.writer_failed().await);
                }
            }
        }
        Ok(())
    }

    fn refused(&self, refusal: SpaceRefusal) -> FileStoreError {
        FileStoreError::Refused {
            key: self.key.to_string(),
            refusal,
        }
    }

    /// The free space must stay above half the reserve while a stream is written.
    fn check_free_space(&self) -> Result<(), FileStoreError> {
        if self.limits.min_free_bytes == 0 {
            return Ok(());
        }
        let free = free_bytes_at(&self.root)?;
        space::enough_while_writing(&self.limits, free).map_err(|r| self.refused(r))
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the stream: waits for the writes and the fsync; returns what was written.
    pub async fn finish(&mut self) -> Result<Written, FileStoreError> {
        if let Some(w) = &self.written {
            return Ok(w.clone());
        }
        if let Some(last) = self.block.take()
            && last.len > 0
            && !self.writer.send(last).await
        {
            return Err(self.writer_failed().await);
        }
        let (sums, direct) = self
            .writer
            .join()
            .await
            .map_err(io_err(&self.temp_path()))?;
        let bytes = sums.bytes;
        let (sha256, xxh3) = sums.finish();
        let Some(sha256) = sha256 else {
            return Err(io_err(&self.temp_path())(io::Error::other(
                "the writer computed no sha256",
            )));
        };
        if bytes != self.bytes {
            return Err(io_err(&self.temp_path())(io::Error::other(format!(
                "the writer wrote {bytes} bytes of {}",
                self.bytes
            ))));
        }
        // Everything is on disk now: the reserve must still be there.
        self.check_free_space()?;
        let w = Written {
            bytes,
            sha256,
            xxh3,
            direct,
        };
        self.written = Some(w.clone());
        Ok(w)
    }

    /// Makes the stream a backup: the manifest written and fsynced under a temporary name,
    /// then the stream linked into place (never replacing), then the manifest; the directory
    /// fsynced. A failure after the stream got its name unlinks it again: a full disk never
    /// leaves a stream without its manifest.
    pub async fn commit(mut self, meta: StreamMeta) -> Result<Manifest, FileStoreError> {
        let Written { sha256, xxh3, .. } = self.finish().await?;
        let Some(temp) = self.temp.clone() else {
            return Err(FileStoreError::Io {
                path: self.stream.clone(),
                source: io::Error::other("stream already finished"),
            });
        };
        let manifest = Manifest {
            version: zetaback_core::store::MANIFEST_VERSION,
            id: self.key.id.to_string(),
            host: self.key.host.clone(),
            dataset: self.key.dataset.clone(),
            snapshot: meta.snapshot,
            base_snapshot: meta.base_snapshot,
            backup_type: self.key.id.backup_type(),
            bytes: self.bytes,
            sha256: Some(sha256),
            compression: meta.compression,
            policy: meta.policy,
            created: jiff::Timestamp::from_second(self.key.id.ts()).map_err(|e| {
                FileStoreError::Store(StoreError::InvalidManifest {
                    id: self.key.id.to_string(),
                    reason: e.to_string(),
                })
            })?,
            xxh3: Some(xxh3),
            raw: meta.raw,
        };
        manifest.validate()?;
        debug_assert!(matches!(
            manifest.backup_type,
            BackupType::Full | BackupType::Incremental
        ));
        // The manifest first, under its own temporary name: this is where a full disk fails,
        // before anything has its final name.
        let mtemp = self.dir.join(format!(
            "{}{}.json-{}",
            zetaback_core::store::layout::TEMP_PREFIX,
            self.key.id,
            unique()
        ));
        let json = manifest.to_json()?;
        let result = async {
            write_synced(&mtemp, json).await?;
            self.link_into_place(&temp, &mtemp).await
        }
        .await;
        let _ = fs::remove_file(&mtemp).await;
        result?;
        fs::remove_file(&temp).await.map_err(io_err(&temp))?;
        self.temp = None;
        fsync_dir(&self.dir).await?;
        self.claim.shared.invalidate();
        Ok(manifest)
    }

    /// Links the stream, then the manifest, to their final names; if the manifest cannot
    /// be linked, the stream's name is removed again.
    async fn link_into_place(&self, temp: &Path, mtemp: &Path) -> Result<(), FileStoreError> {
        // A stream without a manifest is a leftover of a crash between the two links: not a
        // backup, so it may be replaced.
        if fs::try_exists(&self.stream)
            .await
            .map_err(io_err(&self.stream))?
            && !fs::try_exists(&self.manifest)
                .await
                .map_err(io_err(&self.manifest))?
        {
            warn!(path = %self.stream.display(), "replacing a stream that never got its manifest");
            fs::remove_file(&self.stream)
                .await
                .map_err(io_err(&self.stream))?;
        }
        match fs::hard_link(temp, &self.stream).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(FileStoreError::Exists(self.key.to_string()));
            }
            Err(e) => return Err(io_err(&self.stream)(e)),
        }
        let linked = match fs::hard_link(mtemp, &self.manifest).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                FileStoreError::Exists(self.key.to_string())
            }
            Err(e) => io_err(&self.manifest)(e),
        };
        if let Err(e) = fs::remove_file(&self.stream).await {
            warn!(path = %self.stream.display(), error = %e, "could not unlink a stream whose manifest failed");
        }
        Err(linked)
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        self.host_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        if let Some(temp) = self.temp.take() {
            debug!(path = %temp.display(), "discarding an incomplete stream");
            let _ = std::fs::remove_file(&temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{sha256_of, transit_of};

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Whether `dir`'s file system takes O_DIRECT (ext4 does, tmpfs did not before 6.6).
    fn supports_direct(dir: &Path) -> bool {
        let f = std::fs::File::create(dir.join("probe")).expect("probe");
        let ok = set_direct(&f, true);
        let _ = std::fs::remove_file(dir.join("probe"));
        ok
    }

    /// Sizes around every boundary of the aligned writer: empty, below and at one alignment
    /// unit, at and past one staging block, several blocks plus an unaligned tail; chunks of
    /// odd sizes. The file must hold exactly the bytes, and both hashes must be of them.
    #[tokio::test]
    async fn writes_exactly_the_bytes_direct_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let direct_here = supports_direct(dir.path());
        for direct in [true, false] {
            let store = FileStore::new(dir.path()).with_direct_io(direct);
            for (i, n) in [
                0,
                1,
                4095,
                4096,
                DIRECT_BLOCK - 1,
                DIRECT_BLOCK,
                DIRECT_BLOCK + 1,
                3 * DIRECT_BLOCK + 12_345,
            ]
            .into_iter()
            .enumerate()
            {
                let bytes = data(n);
                let key = BackupKey {
                    host: "h1".into(),
                    dataset: format!("tank/d{}", u8::from(direct)),
                    id: StreamId::Full {
                        ts: 1_700_000_000 + i as i64,
                    },
                };
                let mut p = store.begin(key.clone()).await.expect("begin");
                for chunk in bytes.chunks(300_007) {
                    p.write(Bytes::copy_from_slice(chunk)).await.expect("write");
                }
                let w = p.finish().await.expect("finish");
                assert_eq!(w.bytes, n as u64);
                assert_eq!(w.sha256, sha256_of(&bytes));
                assert_eq!(w.xxh3, transit_of(&bytes));
                assert_eq!(w.direct, direct && direct_here, "size {n}");
                let m = p
                    .commit(StreamMeta {
                        snapshot: "s".into(),
                        base_snapshot: None,
                        compression: zetaback_core::api::backup_policy::Compression::None,
                        policy: None,
                        raw: false,
                    })
                    .await
                    .expect("commit");
                let (mut f, _) = store.open(&key).await.expect("open");
                let mut back = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut f, &mut back)
                    .await
                    .expect("read");
                assert!(back == bytes, "size {n}, direct {direct}: contents differ");
                assert_eq!(m.sha256, Some(sha256_of(&back)));
            }
        }
    }
}
