//! Moving a backup into the archive area, crash-safely and idempotently, and finishing at
//! start-up a move that a crash cut short.
//!
//! A backup is its manifest (the catalogue lists a stream only through it). So the stream
//! first gets a second name in the archive area (a hard link: the live backup stays whole),
//! then one `rename` moves the manifest (the backup is archived, in one atomic step), then the
//! stream's live name goes. Killed anywhere, the catalogue lists the backup exactly once, and
//! the retry, or [`recover`] at start-up, completes the move. A store left by an agent before
//! this order, which moved the stream first and could be killed before its manifest followed
//! (the backup then vanished from the catalogue and every retry failed), is completed too.
//!
//! Plain `std::fs`: run on a blocking thread.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use zetaback_core::store::layout::{ARCHIVE_DIR, MANIFEST_SUFFIX, is_temporary};
use zetaback_core::store::{Layout, StreamId, unescape_dataset, validate_host};

use super::{BackupKey, FakeFault, FileStoreError, io_err};

/// The four names of one backup.
#[derive(Debug, Clone)]
pub(super) struct Names {
    live_stream: PathBuf,
    live_manifest: PathBuf,
    archived_stream: PathBuf,
    archived_manifest: PathBuf,
}

impl Names {
    pub(super) fn of(layout: &Layout, key: &BackupKey) -> Result<Self, FileStoreError> {
        let (h, d, id) = (&key.host, &key.dataset, &key.id);
        Ok(Self {
            live_stream: layout.stream_path(h, d, id, false)?,
            live_manifest: layout.manifest_path(h, d, id, false)?,
            archived_stream: layout.stream_path(h, d, id, true)?,
            archived_manifest: layout.manifest_path(h, d, id, true)?,
        })
    }

    /// A move cut short: the live manifest names a stream that already went to the archive
    /// (an older agent), or the manifest moved and the live stream is left over.
    fn half_moved(&self) -> io::Result<bool> {
        let live_manifest = exists(&self.live_manifest)?;
        Ok(
            (live_manifest && !exists(&self.live_stream)? && exists(&self.archived_stream)?)
                || (!live_manifest
                    && exists(&self.archived_manifest)?
                    && exists(&self.live_stream)?),
        )
    }
}

/// What [`archive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Archived {
    Moved,
    /// It was archived already (a crash may have left its live stream: removed).
    Already,
}

fn exists(p: &Path) -> io::Result<bool> {
    p.try_exists()
}

fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    let (a, b) = (fs::metadata(a)?, fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn fsync_dir(dir: &Path) -> Result<(), FileStoreError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(p)
}

fn remove_if_there(p: &Path) -> Result<bool, FileStoreError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(p)(e)),
    }
}

/// Moves the backup named by `n` into the archive area (see the module documentation).
/// `fault` is the test-only fake crash hook.
pub(super) fn archive(
    n: &Names,
    key: &BackupKey,
    fault: &dyn Fn(FakeFault) -> Result<(), FileStoreError>,
) -> Result<Archived, FileStoreError> {
    if !exists(&n.live_manifest).map_err(io_err(&n.live_manifest))? {
        if !exists(&n.archived_manifest).map_err(io_err(&n.archived_manifest))? {
            return Err(FileStoreError::NotFound(key.to_string()));
        }
        // Archived; a crash after the manifest moved may have left the live stream. Nothing
        // writes this id meanwhile (a new stream is refused while the backup exists).
        if remove_if_there(&n.live_stream)? {
            info!(backup = %key, "removed the live stream an interrupted archive left");
            fsync_dir(parent(&n.live_stream))?;
        }
        return Ok(Archived::Already);
    }
    let adir = parent(&n.archived_stream);
    fs::create_dir_all(adir).map_err(io_err(adir))?;
    let live = exists(&n.live_stream).map_err(io_err(&n.live_stream))?;
    let archived = exists(&n.archived_stream).map_err(io_err(&n.archived_stream))?;
    match (live, archived) {
        (true, false) => {
            fs::hard_link(&n.live_stream, &n.archived_stream).map_err(io_err(&n.archived_stream))?
        }
        (true, true) => {
            // Either this move's own link (a retry) or a stray stream without a manifest in
            // the archive area (never a backup): only the first may stay.
            if !same_file(&n.live_stream, &n.archived_stream).map_err(io_err(&n.live_stream))? {
                warn!(path = %n.archived_stream.display(), "replacing an archived stream that has no manifest");
                fs::remove_file(&n.archived_stream).map_err(io_err(&n.archived_stream))?;
                fs::hard_link(&n.live_stream, &n.archived_stream)
                    .map_err(io_err(&n.archived_stream))?;
            }
        }
        (false, true) => {
            info!(backup = %key, "finishing an archive cut short after its stream moved");
        }
        (false, false) => {
            return Err(FileStoreError::Io {
                path: n.live_stream.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "the manifest's stream is missing (a damaged backup: not archived)",
                ),
            });
        }
    }
    fsync_dir(adir)?;
    fault(FakeFault::ArchiveBeforeManifestMove)?;
    // The one step that moves the backup.
    fs::rename(&n.live_manifest, &n.archived_manifest).map_err(io_err(&n.live_manifest))?;
    fsync_dir(adir)?;
    fsync_dir(parent(&n.live_manifest))?;
    fault(FakeFault::ArchiveAfterManifestMove)?;
    if remove_if_there(&n.live_stream)? {
        fsync_dir(parent(&n.live_stream))?;
    }
    Ok(Archived::Moved)
}

/// Finishes every archive a crash cut short under `layout`'s live area; returns how many.
pub(super) fn recover(layout: &Layout) -> Result<usize, FileStoreError> {
    let mut finished = 0;
    for (host, dataset, dir) in dataset_dirs(layout.root())? {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut ids = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) {
                continue;
            }
            let id = name.strip_suffix(MANIFEST_SUFFIX).unwrap_or(&name);
            if let Ok(id) = id.parse::<StreamId>() {
                ids.insert(id);
            }
        }
        for id in ids {
            let key = BackupKey {
                host: host.clone(),
                dataset: dataset.clone(),
                id,
            };
            let names = Names::of(layout, &key)?;
            if names.half_moved().map_err(io_err(&dir))? {
                archive(&names, &key, &|_| Ok(()))?;
                warn!(backup = %key, "finished an archive that a crash cut short");
                finished += 1;
            }
        }
    }
    Ok(finished)
}

/// `(host, dataset, directory)` of every dataset directory in the live area.
fn dataset_dirs(root: &Path) -> Result<Vec<(String, String, PathBuf)>, FileStoreError> {
    let mut out = Vec::new();
    for (host, host_dir) in subdirs(root)? {
        if host == ARCHIVE_DIR || validate_host(&host).is_err() {
            continue;
        }
        for (escaped, dir) in subdirs(&host_dir)? {
            if let Ok(dataset) = unescape_dataset(&escaped) {
                out.push((host.clone(), dataset, dir));
            }
        }
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, FileStoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            Some((name, e.path()))
        })
        .collect())
}
