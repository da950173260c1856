//! Moving a backup into the bucket's archive area (`<prefix>/.archive/...`), crash-safely and
//! idempotently, like the file store's archive (`agent/src/filestore/archive.rs`).
//!
//! An object store has no rename, so the move is four requests, the manifest last as always
//! (a backup is its manifest):
//!
//! 1. the stream is copied to its archive key (server-side CopyObject, into the target's
//!    `archiveStorageClass` when set);
//! 2. the manifest is copied to its archive key (kept in the default class: the catalogue
//!    reads every manifest); the backup is now in both areas, which the catalogue counts once,
//!    as live (`core/src/policy/catalogue.rs`);
//! 3. the live manifest is deleted: the backup is archived;
//! 4. the live stream is deleted.
//!
//! Killed after 1: an archived stream without a manifest, never a backup; the retry copies it
//! again. After 2: the backup is still live, the retry runs every step again. After 3: a live
//! stream without its manifest (invisible, but billed): [`finish`] of the backup (the retry, or
//! [`leftovers`] found when the dataset is archived again) deletes it, since the archived
//! manifest exists. Each step can run twice: a copy overwrites with the same bytes and a DELETE of
//! a missing key succeeds.
//!
//! Limits: CopyObject copies at most 5 GiB; a larger stream's archive fails (`EntityTooLarge`
//! or the server's equivalent) and is retried, never half done (UploadPartCopy is not done).
//! An archive class that needs a restore before reading (S3 `GLACIER`, `DEEP_ARCHIVE`) makes
//! restores fail until the object is restored by hand; `GLACIER_IR` or `STANDARD_IA` do not.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use zetaback_core::store::StreamId;

use crate::pending::Requests;
use crate::{Keys, ObjStoreError};

/// What [`archive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// Moved now (the four steps, or those a cut-short run left).
    Moved,
    /// It was archived already (a live stream left by a cut-short run was deleted).
    Already,
}

/// The four keys of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub live_stream: Path,
    pub live_manifest: Path,
    pub archived_stream: Path,
    pub archived_manifest: Path,
}

impl Names {
    pub fn of(
        keys: &Keys,
        host: &str,
        dataset: &str,
        id: &StreamId,
    ) -> Result<Self, ObjStoreError> {
        Ok(Self {
            live_stream: keys.stream(host, dataset, id, false)?,
            live_manifest: keys.manifest(host, dataset, id, false)?,
            archived_stream: keys.stream(host, dataset, id, true)?,
            archived_manifest: keys.manifest(host, dataset, id, true)?,
        })
    }
}

async fn exists(store: &dyn ObjectStore, key: &Path) -> Result<bool, ObjStoreError> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(ObjStoreError::request("HEAD", key, e)),
    }
}

async fn delete(store: &dyn ObjectStore, key: &Path) -> Result<(), ObjStoreError> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(ObjStoreError::request("DELETE", key, e)),
    }
}

/// Moves backup `id` of `host:dataset` into the archive area (see the module documentation).
/// `requests` signs the copies (they carry the storage class); `store` does the rest.
pub async fn archive(
    store: &dyn ObjectStore,
    requests: &Requests<'_>,
    keys: &Keys,
    (host, dataset, id): (&str, &str, &StreamId),
    storage_class: Option<&str>,
) -> Result<Archived, ObjStoreError> {
    let n = Names::of(keys, host, dataset, id)?;
    if !exists(store, &n.live_manifest).await? {
        if !exists(store, &n.archived_manifest).await? {
            return Err(ObjStoreError::request(
                "HEAD",
                &n.live_manifest,
                object_store::Error::NotFound {
                    path: n.live_manifest.to_string(),
                    source: "neither the live nor the archived manifest exists".into(),
                },
            ));
        }
        delete(store, &n.live_stream).await?;
        return Ok(Archived::Already);
    }
    requests
        .copy(
            n.live_stream.as_ref(),
            n.archived_stream.as_ref(),
            storage_class,
        )
        .await?;
    requests
        .copy(n.live_manifest.as_ref(), n.archived_manifest.as_ref(), None)
        .await?;
    delete(store, &n.live_manifest).await?;
    delete(store, &n.live_stream).await?;
    Ok(Archived::Moved)
}

/// Live streams of `host:dataset` whose manifest is gone and whose archived manifest exists:
/// what an archive killed between its steps 3 and 4 left (pure over a listing of the live
/// dataset directory and the archived one).
pub fn leftovers(keys: &Keys, live: &[Path], archived: &[Path]) -> Vec<Path> {
    let parsed = |keys: &Keys, p: &Path| keys.parse(p.as_ref());
    let archived_manifests: std::collections::HashSet<String> = archived
        .iter()
        .filter_map(|p| parsed(keys, p))
        .filter(|k| k.archived && k.manifest)
        .map(|k| k.id.to_string())
        .collect();
    let live_manifests: std::collections::HashSet<String> = live
        .iter()
        .filter_map(|p| parsed(keys, p))
        .filter(|k| !k.archived && k.manifest)
        .map(|k| k.id.to_string())
        .collect();
    live.iter()
        .filter(|p| {
            parsed(keys, p).is_some_and(|k| {
                let id = k.id.to_string();
                !k.archived
                    && !k.manifest
                    && !live_manifests.contains(&id)
                    && archived_manifests.contains(&id)
            })
        })
        .cloned()
        .collect()
}

/// Deletes the [`leftovers`] of `host:dataset` (two listings of its directories); how many.
pub async fn finish(
    store: &dyn ObjectStore,
    keys: &Keys,
    host: &str,
    dataset: &str,
) -> Result<usize, ObjStoreError> {
    use futures::TryStreamExt;
    let list = |archived: bool| async move {
        let dir = Path::from(keys.dataset_dir(host, dataset, archived)?);
        store
            .list(Some(&dir))
            .map_ok(|o| o.location)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| ObjStoreError::request("LIST", &dir, e))
    };
    let (live, archived) = (list(false).await?, list(true).await?);
    let found = leftovers(keys, &live, &archived);
    for key in &found {
        delete(store, key).await?;
        tracing::warn!(%key, "deleted a live stream an interrupted archive left");
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_live_streams_of_archived_backups_only() {
        let keys = Keys::new(Some("p"));
        let id = |s: &str| s.parse::<StreamId>().unwrap();
        let n1 = Names::of(&keys, "h", "tank/db", &id("100.full")).unwrap();
        let n2 = Names::of(&keys, "h", "tank/db", &id("200.full")).unwrap();
        let n3 = Names::of(&keys, "h", "tank/db", &id("300.full")).unwrap();
        // 100: cut short after step 3 (live stream left, archived manifest there).
        // 200: in both areas (cut short after step 2): live, nothing to delete.
        // 300: live only, a stream of an upload in progress (no manifest anywhere).
        let live = vec![
            n1.live_stream.clone(),
            n2.live_stream.clone(),
            n2.live_manifest.clone(),
            n3.live_stream.clone(),
        ];
        let archived = vec![
            n1.archived_stream.clone(),
            n1.archived_manifest.clone(),
            n2.archived_stream.clone(),
            n2.archived_manifest.clone(),
        ];
        assert_eq!(leftovers(&keys, &live, &archived), vec![n1.live_stream]);
        assert!(leftovers(&keys, &live, &[]).is_empty());
    }
}
