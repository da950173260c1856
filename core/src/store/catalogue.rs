//! Scanning a store directory into a catalogue of backups. Only a stream with a valid,
//! matching manifest is a backup; temporary files, streams without a manifest, manifests
//! without a stream, and files that do not belong to the layout are ignored (and reported
//! as problems where they look like a damaged backup).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::layout::{
    ARCHIVE_DIR, MANIFEST_SUFFIX, StreamId, is_temporary, unescape_dataset, validate_host,
};
use super::manifest::Manifest;

/// One backup found in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredBackup {
    #[serde(flatten)]
    pub manifest: Manifest,
    /// In the archive area (`<root>/.archive/...`).
    pub archived: bool,
    /// What the last verification of the stored stream found (`spec.verify`), if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<super::Verification>,
}

/// Everything found in a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalogue {
    /// Backups, sorted by host, dataset, time, id.
    pub backups: Vec<StoredBackup>,
    /// Things that look like damaged backups (a manifest that does not parse or does not
    /// match its stream), one line each. Temporary files are not problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Catalogue {
    /// The backups of one dataset, oldest first.
    pub fn of<'a>(
        &'a self,
        host: &'a str,
        dataset: &'a str,
    ) -> impl Iterator<Item = &'a StoredBackup> + 'a {
        self.backups
            .iter()
            .filter(move |b| b.manifest.host == host && b.manifest.dataset == dataset)
    }

    /// The manifest of backup `id` of one dataset: the live copy's when the backup is in both
    /// areas (a move to the archive that was interrupted), as
    /// [`DatasetBackups::from_store`](crate::policy::DatasetBackups::from_store) counts it.
    pub fn manifest<'a>(
        &'a self,
        host: &'a str,
        dataset: &'a str,
        id: &str,
    ) -> Option<&'a Manifest> {
        self.of(host, dataset)
            .filter(|b| b.manifest.id == id)
            .min_by_key(|b| b.archived)
            .map(|b| &b.manifest)
    }
}

fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let ft = entry.file_type().map_err(|e| StoreError::io(dir, e))?;
        if ft.is_dir()
            && let Some(name) = entry.file_name().to_str()
        {
            out.push((name.to_owned(), entry.path()));
        }
    }
    Ok(out)
}

fn scan_area(base: &Path, archived: bool, catalogue: &mut Catalogue) -> Result<(), StoreError> {
    for (host, host_dir) in subdirs(base)? {
        if host == ARCHIVE_DIR || validate_host(&host).is_err() {
            continue;
        }
        for (escaped, ds_dir) in subdirs(&host_dir)? {
            let Ok(dataset) = unescape_dataset(&escaped) else {
                continue;
            };
            scan_dataset(&ds_dir, &host, &dataset, archived, catalogue)?;
        }
    }
    Ok(())
}

fn scan_dataset(
    dir: &Path,
    host: &str,
    dataset: &str,
    archived: bool,
    catalogue: &mut Catalogue,
) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_temporary(&name) || name.starts_with('.') {
            continue;
        }
        let Some(id_text) = name.strip_suffix(MANIFEST_SUFFIX) else {
            continue; // a stream: found through its manifest
        };
        let Ok(id) = id_text.parse::<StreamId>() else {
            continue;
        };
        let stream = dir.join(id.to_string());
        let problem = |why: String| format!("{}: {why}", dir.join(&name).display());
        let stream_meta = match fs::metadata(&stream) {
            Ok(m) if m.is_file() => m,
            _ => {
                catalogue
                    .problems
                    .push(problem("manifest without its stream".into()));
                continue;
            }
        };
        let text = match fs::read(entry.path()) {
            Ok(t) => t,
            Err(e) => {
                catalogue.problems.push(problem(e.to_string()));
                continue;
            }
        };
        let manifest = match Manifest::from_stored_json(&text) {
            Ok(m) => m,
            Err(e) => {
                catalogue.problems.push(problem(e.to_string()));
                continue;
            }
        };
        if manifest.id != id.to_string() || manifest.host != host || manifest.dataset != dataset {
            catalogue.problems.push(problem(
                "manifest names another backup than its place in the store".into(),
            ));
            continue;
        }
        if manifest.bytes != stream_meta.len() {
            catalogue.problems.push(problem(format!(
                "stream has {} bytes, manifest says {}",
                stream_meta.len(),
                manifest.bytes
            )));
            continue;
        }
        catalogue.backups.push(StoredBackup {
            manifest,
            archived,
            verification: None,
        });
    }
    Ok(())
}

/// Scans the store at `root` (live and archive areas). A missing root is an empty store.
pub fn scan(root: &Path) -> Result<Catalogue, StoreError> {
    let mut catalogue = Catalogue::default();
    scan_area(root, false, &mut catalogue)?;
    scan_area(&root.join(ARCHIVE_DIR), true, &mut catalogue)?;
    catalogue.backups.sort_by(|a, b| {
        let key = |s: &StoredBackup| {
            (
                s.manifest.host.clone(),
                s.manifest.dataset.clone(),
                s.manifest.created,
                s.manifest.id.clone(),
                s.archived,
            )
        };
        key(a).cmp(&key(b))
    });
    super::verification::attach(root, &mut catalogue);
    catalogue.problems.sort();
    Ok(catalogue)
}

#[cfg(test)]
mod tests {
    use super::super::layout::Layout;
    use super::super::manifest::tests::sample;
    use super::*;

    fn put(layout: &Layout, m: &Manifest, archived: bool, stream_len: usize) {
        let id: StreamId = m.id.parse().expect("id");
        let s = layout
            .stream_path(&m.host, &m.dataset, &id, archived)
            .expect("path");
        fs::create_dir_all(s.parent().expect("dir")).expect("mkdir");
        fs::write(&s, vec![7u8; stream_len]).expect("stream");
        fs::write(
            layout
                .manifest_path(&m.host, &m.dataset, &id, archived)
                .expect("path"),
            m.to_json().expect("json"),
        )
        .expect("manifest");
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zb-store-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn scans_backups_and_ignores_the_rest() {
        let root = tempdir();
        let layout = Layout::new(&root);
        let full = sample("1700000000.full", None);
        let incr = sample("1700086400.incremental.1700000000", Some("zb-1700000000"));
        let old = sample("1600000000.full", None);
        put(&layout, &full, false, 10);
        put(&layout, &incr, false, 10);
        put(&layout, &old, true, 10);
        let dir = layout.dataset_dir("db-1", "tank/db", false).expect("dir");
        // A partial stream being written, a stream without a manifest, junk, a short stream.
        fs::write(dir.join(".tmp-1700172800.full-abc"), b"partial").expect("tmp");
        fs::write(dir.join("1700172800.full"), b"no manifest").expect("orphan");
        fs::write(dir.join("README"), b"x").expect("junk");
        let short = sample("1700259200.full", None);
        put(&layout, &short, false, 3);
        fs::create_dir_all(root.join("Not_A_Host")).expect("junk dir");

        let cat = scan(&root).expect("scan");
        let ids: Vec<_> = cat
            .backups
            .iter()
            .map(|b| (b.manifest.id.as_str(), b.archived))
            .collect();
        assert_eq!(
            ids,
            [
                ("1600000000.full", true),
                ("1700000000.full", false),
                ("1700086400.incremental.1700000000", false)
            ]
        );
        assert_eq!(cat.problems.len(), 1, "{:?}", cat.problems);
        assert!(cat.problems[0].contains("3 bytes"));

        // The scan is what restores resolve chains on (through the policy catalogue): the
        // incremental's base is found by its stream time, the archived full counts too.
        let policy = crate::policy::DatasetBackups::from_store(cat.of("db-1", "tank/db"))
            .expect("consistent");
        let target = crate::policy::RestoreTarget::Id("1700086400.incremental.1700000000".into());
        let chain = policy.restore_chain(&target).expect("chain");
        let ids: Vec<_> = chain.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            ["1700000000.full", "1700086400.incremental.1700000000"]
        );
        let old = crate::policy::RestoreTarget::Id("1600000000.full".into());
        let chain = policy.restore_chain(&old).expect("archived full");
        assert!(chain.len() == 1 && chain[0].archived);
        assert!(
            policy
                .restore_chain(&crate::policy::RestoreTarget::Id("1.full".into()))
                .is_err()
        );

        let json = serde_json::to_value(&cat).expect("json");
        assert_eq!(json["backups"][0]["archived"], true);
        assert_eq!(json["backups"][0]["type"], "full");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_root_is_empty() {
        let cat = scan(Path::new("/nonexistent/zetaback-store")).expect("scan");
        assert!(cat.backups.is_empty());
    }
}
