//! A bucket's catalogue kept between reads, so that reading it again costs a listing and
//! nothing more when nothing changed (README "Object-store targets", "Scale").
//!
//! **Why a listing, and not a conditional GET of an index.** Sources write their manifests
//! themselves, each under its own prefix, and may neither read nor write anyone else's: no
//! index object can be kept current by them without races, and one kept by the controller
//! would not show a source's new backup until the controller wrote it. S3 has no conditional
//! LIST (no `If-None-Match` on `ListObjectsV2`), and `start-after` only finds keys after the
//! last one seen: new keys land anywhere in the key order (`<host>/<dataset>/<id>`, any host,
//! any dataset), and a deleted key is never reported. So every read lists its scope (1,000
//! keys a page), and the listing itself is the conditional request: each manifest's ETag,
//! size and modification time come with it, and a manifest whose version is the one read
//! before is not fetched again. Only new or changed manifests are fetched (in parallel); a key
//! that is gone from the listing is gone from the catalogue; a stream without a manifest never
//! shows (as in [`crate::catalogue::read`]).
//!
//! **Scope.** A catalogue covers one source host (`<prefix>/<host>/` and its archive) or one
//! dataset of one host: a Restore reads only the dataset it restores, a policy only its hosts.
//! Each scope's verification records (`<prefix>/.verify/…`, [`crate::verify`]) are listed and
//! read the same way (only new or changed ones fetched) and attached to their backups, so a
//! quarantine shows wherever the catalogue is used.
//!
//! **Memory.** The listing is folded page by page (the keys of streams are not kept, only their
//! sizes); what is kept is one parsed manifest per backup of the scope.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use zetaback_core::store::{Catalogue, Manifest, StoreError, StoredBackup, Verification};

use crate::catalogue::{StreamSlot, fetch_manifest, matches, sort, stream_slot};
use crate::keys::ParsedKey;
use crate::{Keys, ObjStoreError};

/// Manifests fetched at once when many are new (a cold read of a large scope).
pub const PARALLEL_GETS: usize = 32;
/// Host scopes a reader of many hosts (the controller for a policy) reads at once: a listing
/// is one page of 1,000 keys after another, so one host's pages wait on the round trips while
/// others' go. At most `HOSTS_AT_ONCE × PARALLEL_GETS` manifest GETs are in flight.
pub const HOSTS_AT_ONCE: usize = 4;

/// The part of a bucket one cached catalogue covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every backup of one source host, live and archived.
    Host(String),
    /// The backups of one dataset of one source host, live and archived.
    Dataset { host: String, dataset: String },
}

impl Scope {
    /// The key prefixes a read lists (live, archive, verification records).
    fn roots(&self, keys: &Keys) -> Result<[Path; 3], StoreError> {
        Ok(match self {
            Scope::Host(h) => [
                Path::from(keys.host_dir(h, false)?),
                Path::from(keys.host_dir(h, true)?),
                Path::from(keys.verification_dir(h, None)?),
            ],
            Scope::Dataset { host, dataset } => [
                Path::from(keys.dataset_dir(host, dataset, false)?),
                Path::from(keys.dataset_dir(host, dataset, true)?),
                Path::from(keys.verification_dir(host, Some(dataset))?),
            ],
        })
    }

    /// Whether a verification record of (host, dataset) belongs to this scope.
    fn covers_record(&self, host: &str, dataset: &str) -> bool {
        match self {
            Scope::Host(h) => host == h,
            Scope::Dataset {
                host: h,
                dataset: d,
            } => host == h && dataset == d,
        }
    }

    /// Whether a key of the layout belongs to this scope.
    fn covers(&self, p: &ParsedKey) -> bool {
        match self {
            Scope::Host(h) => p.host == *h,
            Scope::Dataset { host, dataset } => p.host == *host && p.dataset == *dataset,
        }
    }
}

/// An object's version as a listing shows it: a rewritten object has another one (its ETag,
/// else its size and time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub etag: Option<String>,
    pub size: u64,
    pub modified_ms: i64,
}

impl Version {
    fn of(meta: &ObjectMeta) -> Self {
        Self {
            etag: meta.e_tag.clone(),
            size: meta.size,
            modified_ms: meta.last_modified.timestamp_millis(),
        }
    }
}

/// One manifest as it was read: its version and what it said (or why it is not a backup).
#[derive(Debug, Clone)]
struct Read {
    version: Version,
    parsed: Result<Manifest, String>,
}

/// Which backup a verification record is about: (host, dataset, id).
type RecordSlot = (String, String, String);

/// One verification record as it was read: its version and what it said (or why it is
/// unreadable).
#[derive(Debug, Clone)]
struct RecordRead {
    slot: RecordSlot,
    version: Version,
    parsed: Result<Verification, String>,
}

/// A manifest the listing showed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub parsed: ParsedKey,
    pub version: Version,
}

/// What one read did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Objects the listing showed in the scope (streams and manifests).
    pub listed: u64,
    /// Manifests fetched (new or changed since the last read).
    pub fetched: u64,
    /// Manifests whose earlier read was kept (same version).
    pub reused: u64,
    /// Manifests gone since the last read.
    pub gone: u64,
}

impl ReadStats {
    /// Whether the catalogue may differ from the last read's: a manifest came, went or
    /// changed. (A stream's size is compared anew on every read, see [`assemble`].)
    pub fn manifests_changed(&self) -> bool {
        self.fetched > 0 || self.gone > 0
    }
}

/// Which manifests to fetch and which earlier reads to keep (pure): a listed manifest whose
/// version equals the one read before is kept, any other is fetched. Earlier reads of keys no
/// longer listed are dropped (counted in `gone`).
pub fn plan(
    previous: &HashMap<String, impl HasVersion>,
    listed: &[Listed],
) -> (Vec<usize>, Vec<usize>, u64) {
    plan_versions(
        previous,
        listed.iter().map(|l| (l.key.as_str(), &l.version)),
    )
}

/// [`plan`] over (key, version) pairs (manifests, verification records).
pub fn plan_versions<'a>(
    previous: &HashMap<String, impl HasVersion>,
    listed: impl IntoIterator<Item = (&'a str, &'a Version)>,
) -> (Vec<usize>, Vec<usize>, u64) {
    let mut fetch = Vec::new();
    let mut keep = Vec::new();
    let mut seen = HashSet::new();
    for (i, (key, version)) in listed.into_iter().enumerate() {
        seen.insert(key);
        match previous.get(key) {
            Some(before) if before.version() == version && version.etag.is_some() => keep.push(i),
            _ => fetch.push(i),
        }
    }
    let gone = previous
        .keys()
        .filter(|k| !seen.contains(k.as_str()))
        .count() as u64;
    (keep, fetch, gone)
}

/// What [`plan`] compares.
pub trait HasVersion {
    fn version(&self) -> &Version;
}

impl HasVersion for Read {
    fn version(&self) -> &Version {
        &self.version
    }
}

impl HasVersion for Version {
    fn version(&self) -> &Version {
        self
    }
}

/// The catalogue of the manifests read and the streams listed (pure): a manifest is a backup
/// when it parsed, names its own key's backup and its stream is there with its size, the rule
/// of [`crate::catalogue::read`]; each backup carries its verification record, if any.
fn assemble<'a>(
    manifests: impl IntoIterator<Item = (&'a str, &'a ParsedKey, &'a Result<Manifest, String>)>,
    streams: &HashMap<StreamSlot, u64>,
    records: &HashMap<RecordSlot, Verification>,
) -> Catalogue {
    let mut catalogue = Catalogue::default();
    for (key, p, parsed) in manifests {
        let problem = |why: &str| format!("{key}: {why}");
        let Some(&size) = streams.get(&stream_slot(p)) else {
            catalogue
                .problems
                .push(problem("manifest without its stream"));
            continue;
        };
        let checked = parsed
            .as_ref()
            .map_err(String::clone)
            .and_then(|m| matches(p, m, size).map(|()| m));
        match checked {
            Ok(manifest) => catalogue.backups.push(StoredBackup {
                manifest: manifest.clone(),
                archived: p.archived,
                verification: records
                    .get(&(p.host.clone(), p.dataset.clone(), p.id.to_string()))
                    .cloned(),
            }),
            Err(why) => catalogue.problems.push(problem(&why)),
        }
    }
    sort(&mut catalogue);
    catalogue
}

/// One scope's catalogue, kept between reads ([module docs](self)).
#[derive(Debug)]
pub struct CachedCatalogue {
    scope: Scope,
    /// Each manifest key of the scope with its last read.
    manifests: HashMap<String, (ParsedKey, Read)>,
    /// Each verification record key of the scope with its last read.
    records: HashMap<String, RecordRead>,
    /// The stream sizes of the last listing.
    streams: HashMap<StreamSlot, u64>,
}

impl CachedCatalogue {
    /// An empty catalogue of `scope` (the first [`refresh`](Self::refresh) reads it whole).
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            manifests: HashMap::new(),
            records: HashMap::new(),
            streams: HashMap::new(),
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Manifests held.
    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    /// Lists the scope and fetches what is new or changed (`parallel` GETs at once); on
    /// success the kept catalogue is the listing's, on failure it is left as it was.
    pub async fn refresh(
        &mut self,
        store: &dyn ObjectStore,
        keys: &Keys,
        parallel: usize,
    ) -> Result<ReadStats, ObjStoreError> {
        let mut streams = HashMap::new();
        let mut listed = Vec::new();
        let mut listed_records: Vec<(String, Version, RecordSlot)> = Vec::new();
        let mut count = 0u64;
        for root in self.scope.roots(keys)? {
            let mut pages = store.list(Some(&root));
            while let Some(meta) = pages
                .try_next()
                .await
                .map_err(|e| ObjStoreError::request("LIST", &root, e))?
            {
                let Some(p) = keys.parse(meta.location.as_ref()) else {
                    if let Some((host, dataset, id)) =
                        keys.parse_verification(meta.location.as_ref())
                        && self.scope.covers_record(&host, &dataset)
                    {
                        count += 1;
                        listed_records.push((
                            meta.location.to_string(),
                            Version::of(&meta),
                            (host, dataset, id.to_string()),
                        ));
                    }
                    continue;
                };
                if !self.scope.covers(&p) {
                    continue;
                }
                count += 1;
                if p.manifest {
                    listed.push(Listed {
                        key: meta.location.to_string(),
                        version: Version::of(&meta),
                        parsed: p,
                    });
                } else {
                    streams.insert(stream_slot(&p), meta.size);
                }
            }
        }
        let previous: HashMap<String, Version> = self
            .manifests
            .iter()
            .map(|(k, (_, r))| (k.clone(), r.version.clone()))
            .collect();
        let (keep, fetch, gone) = plan(&previous, &listed);
        drop(previous);
        let fetched: Vec<Option<(usize, Read)>> = futures::stream::iter(fetch.iter().copied())
            .map(|i| {
                let l = &listed[i];
                async move {
                    let location = Path::from(l.key.as_str());
                    // Deleted since the listing (retention at the same time): not a backup.
                    let Some(body) = fetch_manifest(store, &location, l.version.size).await? else {
                        return Ok::<_, ObjStoreError>(None);
                    };
                    let parsed = body
                        .and_then(|b| Manifest::from_stored_json(&b).map_err(|e| e.to_string()));
                    Ok(Some((
                        i,
                        Read {
                            version: l.version.clone(),
                            parsed,
                        },
                    )))
                }
            })
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        let (records, records_stats) = self
            .refresh_records(store, listed_records, parallel)
            .await?;
        let mut next = HashMap::with_capacity(listed.len());
        let stats = ReadStats {
            listed: count,
            fetched: fetch.len() as u64 + records_stats.fetched,
            reused: keep.len() as u64 + records_stats.reused,
            gone: gone + records_stats.gone,
        };
        let mut listed: Vec<Option<Listed>> = listed.into_iter().map(Some).collect();
        for i in keep {
            if let Some(l) = listed[i].take()
                && let Some(before) = self.manifests.remove(&l.key)
            {
                next.insert(l.key, before);
            }
        }
        for (i, read) in fetched.into_iter().flatten() {
            if let Some(l) = listed[i].take() {
                next.insert(l.key, (l.parsed, read));
            }
        }
        self.manifests = next;
        self.records = records;
        self.streams = streams;
        Ok(stats)
    }

    /// The verification records of the listing: those unchanged since the last read kept,
    /// the others fetched (small, bounded reads); the new map and what it took.
    async fn refresh_records(
        &self,
        store: &dyn ObjectStore,
        listed: Vec<(String, Version, RecordSlot)>,
        parallel: usize,
    ) -> Result<(HashMap<String, RecordRead>, ReadStats), ObjStoreError> {
        let (keep, fetch, gone) = plan_versions(
            &self
                .records
                .iter()
                .map(|(k, r)| (k.clone(), r.version.clone()))
                .collect::<HashMap<_, _>>(),
            listed.iter().map(|(k, v, _)| (k.as_str(), v)),
        );
        let stats = ReadStats {
            listed: listed.len() as u64,
            fetched: fetch.len() as u64,
            reused: keep.len() as u64,
            gone,
        };
        let mut next = HashMap::with_capacity(listed.len());
        for i in keep {
            let key = &listed[i].0;
            if let Some(before) = self.records.get(key) {
                next.insert(key.clone(), before.clone());
            }
        }
        let fetched: Vec<Option<(usize, Result<Verification, String>)>> =
            futures::stream::iter(fetch.iter().copied())
                .map(|i| {
                    let (key, version, _) = &listed[i];
                    async move {
                        let location = Path::from(key.as_str());
                        Ok::<_, ObjStoreError>(
                            fetch_manifest(store, &location, version.size)
                                .await?
                                .map(|body| {
                                    (i, body.and_then(|b| crate::verify::parse_record(&b)))
                                }),
                        )
                    }
                })
                .buffer_unordered(parallel.max(1))
                .try_collect()
                .await?;
        for (i, parsed) in fetched.into_iter().flatten() {
            let (key, version, slot) = &listed[i];
            next.insert(
                key.clone(),
                RecordRead {
                    slot: slot.clone(),
                    version: version.clone(),
                    parsed,
                },
            );
        }
        Ok((next, stats))
    }

    /// The catalogue of the last successful read.
    pub fn catalogue(&self) -> Catalogue {
        let mut records = HashMap::with_capacity(self.records.len());
        let mut problems = Vec::new();
        for (key, r) in &self.records {
            match &r.parsed {
                Ok(v) => {
                    records.insert(r.slot.clone(), v.clone());
                }
                Err(why) => problems.push(format!("{key}: {why}")),
            }
        }
        let mut catalogue = assemble(
            self.manifests
                .iter()
                .map(|(k, (p, r))| (k.as_str(), p, &r.parsed)),
            &self.streams,
            &records,
        );
        problems.sort();
        catalogue.problems.extend(problems);
        catalogue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(etag: Option<&str>, size: u64) -> Version {
        Version {
            etag: etag.map(str::to_owned),
            size,
            modified_ms: 1,
        }
    }

    fn listed(key: &str, etag: Option<&str>) -> Listed {
        Listed {
            key: key.into(),
            parsed: Keys::new(None).parse(key).unwrap(),
            version: version(etag, 100),
        }
    }

    #[test]
    fn only_new_or_changed_manifests_are_fetched() {
        let previous: HashMap<String, Version> = [
            ("h/tank/1.full.json", Some("a")),
            ("h/tank/2.full.json", Some("b")),
            ("h/tank/3.full.json", Some("c")),
            ("h/tank/4.full.json", None),
        ]
        .into_iter()
        .map(|(k, e)| (k.to_owned(), version(e, 100)))
        .collect();
        let now = [
            listed("h/tank/1.full.json", Some("a")), // unchanged: kept
            listed("h/tank/2.full.json", Some("B")), // rewritten: fetched
            listed("h/tank/4.full.json", None),      // no ETag: always fetched
            listed("h/tank/5.full.json", Some("e")), // new: fetched
        ];
        let (keep, fetch, gone) = plan(&previous, &now);
        assert_eq!(keep, [0]);
        assert_eq!(fetch, [1, 2, 3]);
        assert_eq!(gone, 1, "3.full.json is gone");
        // A size or time change with the same ETag is a change too.
        let mut bigger = listed("h/tank/1.full.json", Some("a"));
        bigger.version.size = 101;
        assert_eq!(plan(&previous, &[bigger]).1, [0]);
        // A cold read fetches everything.
        let (keep, fetch, gone) = plan(&HashMap::<String, Version>::new(), &now);
        assert_eq!((keep.len(), fetch.len(), gone), (0, 4, 0));
    }

    fn manifest(id: &str, bytes: u64) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "version": 1, "host": "h", "dataset": "tank", "id": id,
            "snapshot": "s", "created": "2026-01-01T00:00:00Z",
            "type": "full", "bytes": bytes, "sha256": "0".repeat(64), "compression": "none",
        }))
        .unwrap()
    }

    #[test]
    fn a_manifest_is_a_backup_only_with_its_stream_of_its_size() {
        let keys = Keys::new(None);
        let p = |k: &str| keys.parse(k).unwrap();
        let (k1, k2, k3, k4) = (
            "h/tank/1.full.json",
            "h/tank/2.full.json",
            "h/tank/3.full.json",
            "h/tank/4.full.json",
        );
        let (p1, p2, p3, p4) = (p(k1), p(k2), p(k3), p(k4));
        let streams: HashMap<StreamSlot, u64> = [
            (stream_slot(&p("h/tank/1.full")), 10),
            (stream_slot(&p("h/tank/2.full")), 11),
            (stream_slot(&p("h/tank/4.full")), 10),
        ]
        .into_iter()
        .collect();
        let reads = [
            (k1, &p1, Ok(manifest("1.full", 10))),
            (k2, &p2, Ok(manifest("2.full", 10))), // size differs
            (k3, &p3, Ok(manifest("3.full", 10))), // no stream
            (k4, &p4, Err("not JSON".to_owned())),
        ];
        let bad = Verification::judge(jiff::Timestamp::UNIX_EPOCH, 10, "x".into(), 10, "y");
        let records: HashMap<RecordSlot, Verification> =
            [(("h".into(), "tank".into(), "1.full".into()), bad.clone())]
                .into_iter()
                .collect();
        let cat = assemble(
            reads.iter().map(|(k, p, r)| (*k, *p, r)),
            &streams,
            &records,
        );
        assert_eq!(
            cat.backups
                .iter()
                .map(|b| b.manifest.id.as_str())
                .collect::<Vec<_>>(),
            ["1.full"]
        );
        assert_eq!(
            cat.backups[0].verification,
            Some(bad),
            "the backup carries its record"
        );
        assert_eq!(cat.problems.len(), 3, "{:?}", cat.problems);
        assert!(cat.problems.iter().any(|p| p.contains("11 bytes")));
        assert!(
            cat.problems
                .iter()
                .any(|p| p.contains("without its stream"))
        );
        assert!(cat.problems.iter().any(|p| p.contains("not JSON")));
        // A manifest naming another backup than its key is refused.
        let wrong = [(k1, &p1, Ok(manifest("9.full", 10)))];
        let cat = assemble(
            wrong.iter().map(|(k, p, r)| (*k, *p, r)),
            &streams,
            &HashMap::new(),
        );
        assert!(cat.backups.is_empty() && cat.problems.len() == 1);
    }

    #[test]
    fn scopes_cover_their_host_or_dataset() {
        let keys = Keys::new(Some("pre"));
        let host = Scope::Host("h".into());
        let ds = Scope::Dataset {
            host: "h".into(),
            dataset: "tank/a".into(),
        };
        let k = |key: &str| keys.parse(key).unwrap();
        assert!(host.covers(&k("pre/h/tank+b/1.full")));
        assert!(!host.covers(&k("pre/h2/tank+b/1.full")));
        assert!(ds.covers(&k("pre/.archive/h/tank+a/1.full.json")));
        assert!(!ds.covers(&k("pre/h/tank+a+b/1.full.json")));
        let roots = ds.roots(&keys).unwrap();
        assert_eq!(roots[0].as_ref(), "pre/h/tank+a");
        assert_eq!(roots[1].as_ref(), "pre/.archive/h/tank+a");
        assert_eq!(roots[2].as_ref(), "pre/.verify/h/tank+a");
        assert!(ds.covers_record("h", "tank/a") && !ds.covers_record("h", "tank/b"));
        assert!(host.covers_record("h", "tank/b") && !host.covers_record("h2", "tank/b"));
        let roots = host.roots(&keys).unwrap();
        assert_eq!(roots[1].as_ref(), "pre/.archive/h");
        assert_eq!(roots[2].as_ref(), "pre/.verify/h");
        assert!(Scope::Host("../x".into()).roots(&keys).is_err());
    }
}
