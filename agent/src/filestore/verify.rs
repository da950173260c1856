//! Re-reading a stored stream and checking it against its manifest (`spec.verify`), at a
//! bounded read rate, and recording the result durably in the store (see
//! [`zetaback_core::store::verification`]): the record is written under a temporary name,
//! fsynced, renamed into place and its directory fsynced, so a crash leaves the old record or
//! the new one. A quarantined backup (a record with `ok: false`) is not read again.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};
use zetaback_core::store::Verification;
pub use zetaback_core::store::Verified;
use zetaback_core::store::verification::{self, StreamCheck, answer_without_reading};

use super::{BackupKey, FileStore, FileStoreError, io_err, joined, unique};

/// Read size while verifying.
const CHUNK: usize = 1024 * 1024;

impl FileStore {
    /// The verification record of a backup, if any.
    pub async fn verification(
        &self,
        key: &BackupKey,
    ) -> Result<Option<Verification>, FileStoreError> {
        let (layout, key) = (self.layout.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            verification::read(&layout, &key.host, &key.dataset, &key.id)
        })
        .await
        .map_err(joined)?
        .map_err(FileStoreError::from)
    }

    /// Re-reads backup `key` at most `rate` bytes per second (0: unlimited), checks its size
    /// and sha256 against its manifest and records the result, unless it is quarantined
    /// already or was verified good at or after `not_verified_since`. `progress` is called
    /// with the bytes read so far after each chunk.
    pub async fn verify(
        &self,
        key: &BackupKey,
        rate: u64,
        not_verified_since: Option<jiff::Timestamp>,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<Verified, FileStoreError> {
        if let Some(done) =
            answer_without_reading(self.verification(key).await?, not_verified_since)
        {
            return Ok(done);
        }
        let (file, manifest) = self.open(key).await?;
        let file = file.into_std().await;
        let check = tokio::task::spawn_blocking(move || read_paced(file, rate, progress))
            .await
            .map_err(joined)?
            .map_err(|e| io_err(Path::new(&manifest.id))(e))?;
        let v = check.judge(
            jiff::Timestamp::now(),
            manifest.bytes,
            manifest.stored_sha256().map_err(FileStoreError::Store)?,
        );
        if v.quarantined() {
            warn!(backup = %key, problem = v.problem.as_deref().unwrap_or(""), "stored stream is corrupt: quarantined");
        } else {
            info!(backup = %key, bytes = v.bytes, "stored stream verified");
        }
        let path = self
            .layout
            .verification_path(&key.host, &key.dataset, &key.id)?;
        let text = serde_json::to_vec_pretty(&v).map_err(|e| FileStoreError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        tokio::task::spawn_blocking(move || write_record(&path, &text))
            .await
            .map_err(joined)??;
        self.shared.invalidate();
        Ok(Verified::Checked(v))
    }

    /// Removes a backup's verification record (after the backup was deleted).
    pub(super) async fn forget_verification(&self, key: &BackupKey) -> Result<(), FileStoreError> {
        let path = self
            .layout
            .verification_path(&key.host, &key.dataset, &key.id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// Reads the file at `path` as verification does ([`read_paced`]): (bytes, sha256 hex).
pub fn verify_file(path: &Path, rate: u64) -> io::Result<(u64, String)> {
    Ok(read_paced(std::fs::File::open(path)?, rate, |_| {})?.finish())
}

/// Reads `file` to its end in [`CHUNK`]s, at most `rate` bytes per second on average (0:
/// unlimited), hashing it ([`StreamCheck`], shared with the object store's verifier).
fn read_paced(
    mut file: std::fs::File,
    rate: u64,
    progress: impl Fn(u64),
) -> io::Result<StreamCheck> {
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    let mut check = StreamCheck::new(rate);
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let wait = check.update(&buf[..n], start.elapsed());
        progress(check.bytes());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    // What was read need not stay cached: verification reads each stream once a period.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    Ok(check)
}

/// Writes a record crash-safely: temporary name, fsync, rename, fsync of the directory.
fn write_record(path: &Path, text: &[u8]) -> Result<(), FileStoreError> {
    let dir = path.parent().unwrap_or(path).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp: PathBuf = dir.join(format!(
        ".tmp-{}-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        unique()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}
