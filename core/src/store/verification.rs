//! Verification records: what the store found when it last re-read a stored stream and
//! checked it against its manifest (`spec.verify`). One small JSON file per backup under
//! `<root>/.verify/<host>/<escaped dataset>/<id>.json` (see [`Layout::verification_path`]),
//! outside the areas the catalogue scans, so the stream and manifest stay exactly as the
//! source wrote them and moving a backup to the archive leaves its record valid.
//!
//! A record with `ok: false` **quarantines** the backup: the catalogue still lists it (so
//! retention expires it as usual and the status can show it), but the policy logic never
//! restores from it, never counts it as the newest backup, and treats every backup whose chain
//! needs it as unrestorable. A quarantine is sticky: a later pass does not re-read the stream.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::catalogue::Catalogue;
use super::layout::{Layout, StreamId};

/// The result of re-reading one stored stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When the check finished.
    pub verified_at: jiff::Timestamp,
    /// The stream matched its manifest's sha256 and size.
    pub ok: bool,
    /// Bytes read.
    pub bytes: u64,
    /// The sha256 of what was read (lower-case hex).
    pub sha256: String,
    /// For a mismatch: what did not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Verification {
    /// The verdict of reading `bytes` bytes hashing to `sha256` against what the manifest
    /// says (`want_bytes`, `want_sha256`).
    pub fn judge(
        verified_at: jiff::Timestamp,
        bytes: u64,
        sha256: String,
        want_bytes: u64,
        want_sha256: &str,
    ) -> Self {
        let problem = if bytes != want_bytes {
            Some(format!(
                "the stream has {bytes} bytes, its manifest says {want_bytes}"
            ))
        } else if sha256 != want_sha256 {
            Some(format!(
                "the stream's sha256 is {sha256}, its manifest says {want_sha256}"
            ))
        } else {
            None
        };
        Self {
            verified_at,
            ok: problem.is_none(),
            bytes,
            sha256,
            problem,
        }
    }

    /// True when the backup is quarantined.
    pub fn quarantined(&self) -> bool {
        !self.ok
    }
}

/// Reads the record of backup `id` of `host:dataset`, if any. An unreadable record is an
/// error (the caller decides), a missing one is `None`.
pub fn read(
    layout: &Layout,
    host: &str,
    dataset: &str,
    id: &StreamId,
) -> Result<Option<Verification>, StoreError> {
    let path = layout.verification_path(host, dataset, id)?;
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| StoreError::ManifestJson(format!("{}: {e}", path.display())))
}

/// Attaches each backup's verification record (if any) to the catalogue of the store at
/// `root`. A record that cannot be read is reported as a problem and ignored.
pub fn attach(root: &Path, catalogue: &mut Catalogue) {
    let layout = Layout::new(root);
    let mut problems = Vec::new();
    for b in &mut catalogue.backups {
        let m = &b.manifest;
        let Ok(id) = m.stream_id() else { continue };
        match read(&layout, &m.host, &m.dataset, &id) {
            Ok(v) => b.verification = v,
            Err(e) => problems.push(format!("verification record of {}: {e}", m.id)),
        }
    }
    catalogue.problems.extend(problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn judges_size_first_then_hash() {
        let good = Verification::judge(at(5), 10, "ab".into(), 10, "ab");
        assert!(good.ok && good.problem.is_none() && !good.quarantined());
        let short = Verification::judge(at(5), 9, "ab".into(), 10, "ab");
        assert!(short.quarantined());
        assert!(
            short
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("9 bytes"))
        );
        let flipped = Verification::judge(at(5), 10, "cd".into(), 10, "ab");
        assert!(flipped.quarantined());
        assert!(
            flipped
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("sha256 is cd"))
        );
    }

    #[test]
    fn records_round_trip_through_the_layout() {
        let root = std::env::temp_dir().join(format!("zb-verify-rec-{}", std::process::id()));
        let layout = Layout::new(&root);
        let id: StreamId = "1700000000.full".parse().expect("id");
        assert_eq!(read(&layout, "db-1", "tank/db", &id).expect("read"), None);
        let path = layout
            .verification_path("db-1", "tank/db", &id)
            .expect("path");
        assert!(path.starts_with(root.join(".verify/db-1/tank+db")));
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        let v = Verification::judge(at(7), 3, "x".into(), 4, "y");
        fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
        assert_eq!(
            read(&layout, "db-1", "tank/db", &id).expect("read"),
            Some(v)
        );
        fs::write(&path, b"{").expect("write");
        assert!(read(&layout, "db-1", "tank/db", &id).is_err());
        let _ = fs::remove_dir_all(&root);
    }
}
