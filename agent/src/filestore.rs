//! The target agent's file store: writes streams crash-safely into the layout of
//! [`zetaback::store`] and reads them back.
//!
//! Writing a stream: a temporary file `.tmp-<id>-<unique>` in the dataset's directory, hashed
//! (sha256) while written, `fsync`ed, then hard-linked to its final name (which fails if the
//! name exists: a backup is never overwritten), the temporary name removed, the manifest written
//! the same way, and the directory `fsync`ed. Until the manifest is in place the stream is not a
//! backup: a crash at any point leaves at most a temporary file (removed at start-up) or a
//! stream without a manifest (ignored by the catalogue, replaced by the next attempt).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use zetaback::api::BackupType;
use zetaback::api::backup_policy::Compression;
use zetaback::store::{Catalogue, Layout, Manifest, StoreError, StreamId};

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileStoreError + '_ {
    move |source| FileStoreError::Io {
        path: path.to_path_buf(),
        source,
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
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    layout: Layout,
    writing: Arc<Mutex<HashSet<BackupKey>>>,
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
        .map_err(|e| FileStoreError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other(e),
        })?
        .map_err(io_err(dir))
}

impl FileStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            layout: Layout::new(root),
            writing: Arc::default(),
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Removes temporary files left by a crash (call at start-up, before serving).
    pub async fn remove_stale_temporaries(&self) -> Result<usize, FileStoreError> {
        let root = self.layout.root().to_path_buf();
        tokio::task::spawn_blocking(move || remove_temporaries(&root))
            .await
            .map_err(|e| FileStoreError::Io {
                path: PathBuf::new(),
                source: io::Error::other(e),
            })?
    }

    /// The catalogue of backups.
    pub async fn catalogue(&self) -> Result<Catalogue, FileStoreError> {
        let root = self.layout.root().to_path_buf();
        tokio::task::spawn_blocking(move || zetaback::store::scan(&root))
            .await
            .map_err(|e| FileStoreError::Io {
                path: PathBuf::new(),
                source: io::Error::other(e),
            })?
            .map_err(FileStoreError::from)
    }

    /// Starts writing a new backup. Refuses an existing one (409) or one being written.
    pub async fn begin(&self, key: BackupKey) -> Result<PendingStream, FileStoreError> {
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
        {
            let mut writing = self
                .writing
                .lock()
                .map_err(|_| FileStoreError::Busy(key.to_string()))?;
            if !writing.insert(key.clone()) {
                return Err(FileStoreError::Busy(key.to_string()));
            }
        }
        let claim = Claim {
            key: key.clone(),
            writing: self.writing.clone(),
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
        let writer = Writer::spawn(file.into_std().await);
        Ok(PendingStream {
            key,
            dir,
            stream,
            manifest,
            temp: Some(temp),
            writer,
            sha256: None,
            bytes: 0,
            _claim: claim,
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
            let manifest = Manifest::from_json(&text)?;
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

    /// Moves a backup into the archive area (idempotent: a crash half-way is finished by the
    /// next call).
    pub async fn archive(&self, key: &BackupKey) -> Result<(), FileStoreError> {
        let l = &self.layout;
        let (s, m) = (
            l.stream_path(&key.host, &key.dataset, &key.id, false)?,
            l.manifest_path(&key.host, &key.dataset, &key.id, false)?,
        );
        let (as_, am) = (
            l.stream_path(&key.host, &key.dataset, &key.id, true)?,
            l.manifest_path(&key.host, &key.dataset, &key.id, true)?,
        );
        if !fs::try_exists(&m).await.map_err(io_err(&m))? {
            return if fs::try_exists(&am).await.map_err(io_err(&am))? {
                Ok(())
            } else {
                Err(FileStoreError::NotFound(key.to_string()))
            };
        }
        let adir = l.dataset_dir(&key.host, &key.dataset, true)?;
        fs::create_dir_all(&adir).await.map_err(io_err(&adir))?;
        // Stream first, then the manifest: the archive copy becomes a backup only when both
        // are there; the live copy stops being one when its manifest is gone.
        fs::rename(&s, &as_).await.map_err(io_err(&s))?;
        fs::rename(&m, &am).await.map_err(io_err(&m))?;
        fsync_dir(&adir).await?;
        if let Some(dir) = m.parent() {
            fsync_dir(dir).await?;
        }
        Ok(())
    }
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
                && zetaback::store::layout::is_temporary(&entry.file_name().to_string_lossy())
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
    writing: Arc<Mutex<HashSet<BackupKey>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writing.lock() {
            w.remove(&self.key);
        }
    }
}

/// Chunks queued between the request and the writer thread.
const WRITER_DEPTH: usize = 8;

/// Hashes and writes chunks on a blocking thread, fed through a bounded channel (so the
/// request's task keeps receiving while the disk writes, without copying the chunks), and
/// fsyncs the file at the end.
#[derive(Debug)]
struct Writer {
    tx: Option<mpsc::Sender<Bytes>>,
    handle: Option<JoinHandle<io::Result<Sha256>>>,
}

impl Writer {
    fn spawn(mut file: std::fs::File) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITER_DEPTH);
        let handle = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk)?;
            }
            file.sync_all()?;
            Ok(hasher)
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits for the thread; its error if it failed.
    async fn join(&mut self) -> io::Result<Sha256> {
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
    sha256: Option<String>,
    bytes: u64,
    _claim: Claim,
}

impl PendingStream {
    fn temp_path(&self) -> PathBuf {
        self.temp.clone().unwrap_or_else(|| self.stream.clone())
    }

    /// Appends a chunk (waits while the writer is [`WRITER_DEPTH`] chunks behind).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), FileStoreError> {
        let n = chunk.len() as u64;
        let sent = match &self.writer.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped: report its error.
            let err = match self.writer.join().await {
                Err(e) => e,
                Ok(_) => io::Error::other("stream already finished"),
            };
            return Err(io_err(&self.temp_path())(err));
        }
        self.bytes += n;
        Ok(())
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the stream: waits for the writes and the fsync; returns its sha256 (lower-case hex).
    pub async fn finish(&mut self) -> Result<String, FileStoreError> {
        if let Some(sha) = &self.sha256 {
            return Ok(sha.clone());
        }
        let hasher = self
            .writer
            .join()
            .await
            .map_err(io_err(&self.temp_path()))?;
        let sha = hex::encode(hasher.finalize());
        self.sha256 = Some(sha.clone());
        Ok(sha)
    }

    /// Makes the stream a backup: fsync, link into place (never replacing), manifest, fsync.
    pub async fn commit(mut self, meta: StreamMeta) -> Result<Manifest, FileStoreError> {
        let sha256 = self.finish().await?;
        let Some(temp) = self.temp.clone() else {
            return Err(FileStoreError::Io {
                path: self.stream.clone(),
                source: io::Error::other("stream already finished"),
            });
        };
        let manifest = Manifest {
            version: zetaback::store::MANIFEST_VERSION,
            id: self.key.id.to_string(),
            host: self.key.host.clone(),
            dataset: self.key.dataset.clone(),
            snapshot: meta.snapshot,
            base_snapshot: meta.base_snapshot,
            backup_type: self.key.id.backup_type(),
            bytes: self.bytes,
            sha256,
            compression: meta.compression,
            created: jiff::Timestamp::from_second(self.key.id.ts()).map_err(|e| {
                FileStoreError::Store(StoreError::InvalidManifest {
                    id: self.key.id.to_string(),
                    reason: e.to_string(),
                })
            })?,
        };
        manifest.validate()?;
        debug_assert!(matches!(
            manifest.backup_type,
            BackupType::Full | BackupType::Incremental
        ));
        // A stream without a manifest is a leftover of a crash between link and manifest:
        // not a backup, so it may be replaced.
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
        match fs::hard_link(&temp, &self.stream).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(FileStoreError::Exists(self.key.to_string()));
            }
            Err(e) => return Err(io_err(&self.stream)(e)),
        }
        fs::remove_file(&temp).await.map_err(io_err(&temp))?;
        self.temp = None;
        // The manifest: its own temporary file, fsync, then link into place.
        let mtemp = self.dir.join(format!(
            "{}{}.json-{}",
            zetaback::store::layout::TEMP_PREFIX,
            self.key.id,
            unique()
        ));
        let json = manifest.to_json()?;
        let result = async {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&mtemp)
                .await
                .map_err(io_err(&mtemp))?;
            f.write_all(&json).await.map_err(io_err(&mtemp))?;
            f.sync_all().await.map_err(io_err(&mtemp))?;
            drop(f);
            match fs::hard_link(&mtemp, &self.manifest).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Err(FileStoreError::Exists(self.key.to_string()))
                }
                Err(e) => Err(io_err(&self.manifest)(e)),
            }
        }
        .await;
        let _ = fs::remove_file(&mtemp).await;
        result?;
        fsync_dir(&self.dir).await?;
        Ok(manifest)
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            debug!(path = %temp.display(), "discarding an incomplete stream");
            let _ = std::fs::remove_file(&temp);
        }
    }
}
