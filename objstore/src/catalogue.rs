//! The catalogue of a bucket: every manifest under the prefix (listed page by page by the
//! client), each one a backup when its stream object is there with the manifest's size, the
//! same rule as the file store's scan (`core/src/store/catalogue.rs`), carrying its
//! verification record (`<prefix>/.verify/…`, [`crate::verify`]) when it has one.

use std::collections::HashMap;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use zetaback_core::store::{Catalogue, Manifest, StoredBackup};

use crate::keys::ParsedKey;
use crate::{Keys, ObjStoreError};

/// Lists the bucket under `keys`' prefix and reads every manifest: the backups (sorted by
/// host, dataset, time, id), and the problems of manifests that do not match their stream.
pub async fn read(store: &dyn ObjectStore, keys: &Keys) -> Result<Catalogue, ObjStoreError> {
    let root = keys.root();
    let objects: Vec<object_store::ObjectMeta> =
        store.list(root.as_ref()).try_collect().await.map_err(|e| {
            ObjStoreError::request("LIST", root.map(|r| r.to_string()).unwrap_or_default(), e)
        })?;
    let mut streams: HashMap<StreamSlot, u64> = HashMap::new();
    let mut manifests = Vec::new();
    let mut records = HashMap::new();
    let mut catalogue = Catalogue::default();
    for o in &objects {
        let Some(p) = keys.parse(o.location.as_ref()) else {
            if let Some((host, dataset, id)) = keys.parse_verification(o.location.as_ref()) {
                let read = fetch_manifest(store, &o.location, o.size)
                    .await?
                    .map(|body| body.and_then(|b| crate::verify::parse_record(&b)));
                match read {
                    Some(Ok(v)) => {
                        records.insert((host, dataset, id.to_string()), v);
                    }
                    Some(Err(why)) => catalogue.problems.push(format!("{}: {why}", o.location)),
                    None => {}
                }
            }
            continue;
        };
        if p.manifest {
            manifests.push((p, o.location.clone(), o.size));
        } else {
            streams.insert(stream_slot(&p), o.size);
        }
    }
    for (p, location, listed_size) in manifests {
        let problem = |why: String| format!("{location}: {why}");
        let Some(&size) = streams.get(&stream_slot(&p)) else {
            catalogue
                .problems
                .push(problem("manifest without its stream".into()));
            continue;
        };
        let body = match fetch_manifest(store, &location, listed_size).await? {
            Some(Ok(body)) => body,
            Some(Err(why)) => {
                catalogue.problems.push(problem(why));
                continue;
            }
            // Deleted between the listing and this read (retention, running at the same
            // time): no longer a backup, not a reason to fail the whole catalogue.
            None => continue,
        };
        match check(&p, &body, size) {
            Ok(manifest) => catalogue.backups.push(StoredBackup {
                manifest,
                archived: p.archived,
                verification: records
                    .get(&(p.host.clone(), p.dataset.clone(), p.id.to_string()))
                    .cloned(),
            }),
            Err(why) => catalogue.problems.push(problem(why)),
        }
    }
    sort(&mut catalogue);
    Ok(catalogue)
}

/// Backups in catalogue order: host, dataset, time, id, live before archived.
pub(crate) fn sort(catalogue: &mut Catalogue) {
    catalogue.backups.sort_by(|a, b| {
        (
            &a.manifest.host,
            &a.manifest.dataset,
            a.manifest.created,
            &a.manifest.id,
            a.archived,
        )
            .cmp(&(
                &b.manifest.host,
                &b.manifest.dataset,
                b.manifest.created,
                &b.manifest.id,
                b.archived,
            ))
    });
}

/// The largest manifest read (a manifest is a few hundred bytes of JSON).
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

fn too_large(bytes: u64) -> String {
    format!(
        "manifest of {bytes} bytes is larger than the limit of {MAX_MANIFEST_BYTES} bytes: not read"
    )
}

/// A manifest's bytes, read only when small: a source may write any object under its own
/// prefix, so a compromised node cannot make every reader of the bucket hold gigabytes.
/// `Some(Err(why))` for one too large (by its listed size, or grown since the listing), `None`
/// when it is gone.
pub(crate) async fn fetch_manifest(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    listed_size: u64,
) -> Result<Option<Result<Vec<u8>, String>>, ObjStoreError> {
    if listed_size > MAX_MANIFEST_BYTES {
        return Ok(Some(Err(too_large(listed_size))));
    }
    match store.get(location).await {
        Ok(found) => Ok(Some(
            read_limited(found, location)
                .await?
                .ok_or_else(|| too_large(MAX_MANIFEST_BYTES + 1)),
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(ObjStoreError::request("GET", location, e)),
    }
}

/// The object's bytes, or `None` once they pass [`MAX_MANIFEST_BYTES`] (the rest is not read).
pub async fn read_limited(
    found: object_store::GetResult,
    location: &object_store::path::Path,
) -> Result<Option<Vec<u8>>, ObjStoreError> {
    let mut body = Vec::new();
    let mut chunks = found.into_stream();
    while let Some(chunk) = chunks
        .try_next()
        .await
        .map_err(|e| ObjStoreError::request("GET", location, e))?
    {
        if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The stream a manifest key belongs with: (archived, host, dataset, id).
pub(crate) type StreamSlot = (bool, String, String, String);

pub(crate) fn stream_slot(p: &ParsedKey) -> StreamSlot {
    (
        p.archived,
        p.host.clone(),
        p.dataset.clone(),
        p.id.to_string(),
    )
}

/// A manifest read from `p`'s key is a backup when it parses, names the backup its key names,
/// and its size is the stream object's.
pub(crate) fn check(p: &ParsedKey, body: &[u8], stream_size: u64) -> Result<Manifest, String> {
    let manifest = Manifest::from_stored_json(body).map_err(|e| e.to_string())?;
    matches(p, &manifest, stream_size)?;
    Ok(manifest)
}

/// Whether a parsed manifest names the backup of its key `p` and the stream's size.
pub(crate) fn matches(p: &ParsedKey, manifest: &Manifest, stream_size: u64) -> Result<(), String> {
    if manifest.id != p.id.to_string() || manifest.host != p.host || manifest.dataset != p.dataset {
        return Err("manifest names another backup than its place in the store".into());
    }
    if manifest.bytes != stream_size {
        return Err(format!(
            "stream has {stream_size} bytes, manifest says {}",
            manifest.bytes
        ));
    }
    Ok(())
}
