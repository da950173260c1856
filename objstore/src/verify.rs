//! Verification of backups in a bucket (`spec.verify` on a `target.objectStore` policy): a
//! stored stream object re-read at a bounded rate and checked against its manifest's sha256
//! and size, with the file store's rules (`zetaback_core::store::verification`: a quarantine is
//! sticky, a recent good check is not repeated, the same paced hash and verdict).
//!
//! **Who reads: the controller, with its own keys.** A bucket has no agent beside its disks:
//! any reader fetches the bytes over the network, so no agent is closer to them than the
//! controller. The controller already holds the keys that may read every host's prefix and
//! write outside them (sources may write only their own `<prefix>/<host>/`, and must not be
//! able to forge or remove a verdict on their own backups), schedules verification for the file
//! store too, and reads the bucket's catalogue, where the records must show.
//!
//! **Records.** One small JSON object per backup, `<prefix>/.verify/<host>/<dataset>/<id>.json`
//! (the file store's `.verify/` layout under the prefix; [`crate::Keys::verification`]), written
//! with the controller's keys. Streams and manifests stay exactly as the source wrote them
//! (a source cannot delete or overwrite, and with `immutableFor` nobody can), so a quarantine
//! is a record with `ok: false`, which the catalogue attaches to its backup
//! ([`crate::cached`], [`crate::catalogue`]); restore resolution, retention, "newest good
//! backup" and the violations then treat it as the file store's quarantine. Retention deletes
//! a backup's record with it.
//!
//! **Bounded memory.** The stream is read in ranged GETs of [`WINDOW`] bytes, each consumed
//! chunk by chunk as it arrives (TCP back-pressure while the pace waits), every range
//! conditional on the first answer's ETag, so a stream rewritten during the read is an error
//! (read again later), not a verdict.

use std::time::Instant;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use zetaback_core::store::verification::{StreamCheck, answer_without_reading};
use zetaback_core::store::{Manifest, StreamId, Verification, Verified};

use crate::catalogue::{MAX_MANIFEST_BYTES, read_limited};
use crate::{Keys, ObjStoreError};

/// Bytes asked for in one ranged GET.
pub const WINDOW: u64 = 16 * 1024 * 1024;

/// One backup of a bucket: (host, dataset, id).
pub type BackupRef<'a> = (&'a str, &'a str, &'a StreamId);

/// The record of backup `b`, if any (an unreadable one is an error: the caller decides).
pub async fn read_record(
    store: &dyn ObjectStore,
    keys: &Keys,
    (host, dataset, id): BackupRef<'_>,
) -> Result<Option<Verification>, ObjStoreError> {
    let key = keys.verification(host, dataset, id)?;
    let found = match store.get(&key).await {
        Ok(f) => f,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(ObjStoreError::request("GET", &key, e)),
    };
    let body = read_limited(found, &key).await?.ok_or_else(|| {
        ObjStoreError::Verify(format!("{key}: larger than {MAX_MANIFEST_BYTES} bytes"))
    })?;
    parse_record(&body)
        .map(Some)
        .map_err(|why| ObjStoreError::Verify(format!("{key}: {why}")))
}

/// A record's JSON.
pub fn parse_record(body: &[u8]) -> Result<Verification, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a verification record: {e}"))
}

/// Writes the record of backup `b` (the controller's keys).
pub async fn write_record(
    store: &dyn ObjectStore,
    keys: &Keys,
    (host, dataset, id): BackupRef<'_>,
    v: &Verification,
) -> Result<(), ObjStoreError> {
    let key = keys.verification(host, dataset, id)?;
    let body = serde_json::to_vec_pretty(v).map_err(|e| ObjStoreError::Verify(e.to_string()))?;
    store
        .put(&key, PutPayload::from(body))
        .await
        .map(|_| ())
        .map_err(|e| ObjStoreError::request("PUT", &key, e))
}

/// The manifest of backup `b` and whether it is archived (live first: a backup in both areas,
/// an archive cut short, is live); `None` when it is in neither (deleted meanwhile).
async fn find_manifest(
    store: &dyn ObjectStore,
    keys: &Keys,
    (host, dataset, id): BackupRef<'_>,
) -> Result<Option<(Manifest, bool)>, ObjStoreError> {
    for archived in [false, true] {
        let key = keys.manifest(host, dataset, id, archived)?;
        let found = match store.get(&key).await {
            Ok(f) => f,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(ObjStoreError::request("GET", &key, e)),
        };
        let body = read_limited(found, &key).await?.ok_or_else(|| {
            ObjStoreError::Verify(format!("{key}: larger than {MAX_MANIFEST_BYTES} bytes"))
        })?;
        let m = Manifest::from_stored_json(&body)?;
        return Ok(Some((m, archived)));
    }
    Ok(None)
}

/// Re-reads backup `b` at most `rate` bytes per second (0: unlimited), checks its size and
/// sha256 against its manifest and records the result in the bucket, unless it is quarantined
/// already or was verified good at or after `not_verified_since` (the file store's rules).
/// `progress` is called with the bytes read so far. A backup gone from the bucket is
/// [`ObjStoreError::Verify`] (nothing recorded: no proof of anything).
pub async fn verify(
    store: &dyn ObjectStore,
    keys: &Keys,
    b: BackupRef<'_>,
    rate: u64,
    not_verified_since: Option<jiff::Timestamp>,
    progress: impl Fn(u64),
) -> Result<Verified, ObjStoreError> {
    if let Some(done) =
        answer_without_reading(read_record(store, keys, b).await?, not_verified_since)
    {
        return Ok(done);
    }
    let (host, dataset, id) = b;
    let Some((manifest, archived)) = find_manifest(store, keys, b).await? else {
        return Err(ObjStoreError::Verify(format!(
            "backup {host}:{dataset}@{id} is no longer in the bucket"
        )));
    };
    let key = keys.stream(host, dataset, id, archived)?;
    let check = read_paced(store, &key, rate, progress).await?;
    let v = check.judge(
        jiff::Timestamp::now(),
        manifest.bytes,
        manifest.stored_sha256()?,
    );
    if v.quarantined() {
        tracing::warn!(%key, problem = v.problem.as_deref().unwrap_or(""),
            "stored stream object is corrupt: quarantined");
    } else {
        tracing::info!(%key, bytes = v.bytes, "stored stream object verified");
    }
    write_record(store, keys, b, &v).await?;
    Ok(Verified::Checked(v))
}

/// Reads the object at `key` to its end in ranged GETs of [`WINDOW`] bytes, each conditional
/// on the ETag a HEAD saw first, hashing and pacing it ([`StreamCheck`]).
pub async fn read_paced(
    store: &dyn ObjectStore,
    key: &Path,
    rate: u64,
    progress: impl Fn(u64),
) -> Result<StreamCheck, ObjStoreError> {
    let meta = store
        .head(key)
        .await
        .map_err(|e| ObjStoreError::request("HEAD", key, e))?;
    let mut check = StreamCheck::new(rate);
    let started = Instant::now();
    while check.bytes() < meta.size {
        let from = check.bytes();
        let options = GetOptions {
            range: Some(GetRange::Bounded(from..meta.size.min(from + WINDOW))),
            if_match: meta.e_tag.clone(),
            ..Default::default()
        };
        let found = match store.get_opts(key, options).await {
            Ok(f) => f,
            Err(object_store::Error::Precondition { .. }) => {
                return Err(ObjStoreError::Verify(format!(
                    "{key} changed while it was read; it is read again on the next pass"
                )));
            }
            Err(e) => return Err(ObjStoreError::request("GET", key, e)),
        };
        let mut chunks = found.into_stream();
        while let Some(chunk) = chunks
            .try_next()
            .await
            .map_err(|e| ObjStoreError::request("GET", key, e))?
        {
            let wait = check.update(&chunk, started.elapsed());
            progress(check.bytes());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        if check.bytes() == from {
            // The server sent nothing for a range inside the object: never loop on it.
            return Err(ObjStoreError::Verify(format!(
                "{key}: no bytes at offset {from} of {}",
                meta.size
            )));
        }
    }
    Ok(check)
}
