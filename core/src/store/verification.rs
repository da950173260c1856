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
//!
//! The same rules serve both stores that re-read streams, the file store (the store agent
//! reads its disk) and the object store (the controller reads the bucket): whether a backup
//! needs reading at all ([`answer_without_reading`]), the paced hash of what is read
//! ([`StreamCheck`]) and the verdict ([`Verification::judge`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// What a verification pass did with one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The stream was read and judged; the record was written.
    Checked(Verification),
    /// The backup was quarantined before: not read again.
    AlreadyQuarantined(Verification),
    /// The backup was verified good at or after the asked time: not read again.
    Recent(Verification),
}

/// The answer for a backup whose record is `existing` without reading it, when there is one:
/// a quarantine is sticky, and a backup verified good at or after `not_verified_since` was
/// read recently enough. `None`: read it.
pub fn answer_without_reading(
    existing: Option<Verification>,
    not_verified_since: Option<jiff::Timestamp>,
) -> Option<Verified> {
    match existing {
        Some(v) if v.quarantined() => Some(Verified::AlreadyQuarantined(v)),
        Some(v) if not_verified_since.is_some_and(|t| v.verified_at >= t) => {
            Some(Verified::Recent(v))
        }
        _ => None,
    }
}

/// How long a reader that has read `bytes` bytes in `elapsed` waits before it reads on, to
/// stay at `rate` bytes per second on average since it started (0: unlimited).
pub fn pace_delay(bytes: u64, rate: u64, elapsed: Duration) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(elapsed)
}

/// A stored stream being re-read: its sha256 and size so far, paced to a rate. The caller
/// reads (a file, an object's ranges), hands each chunk to [`update`](Self::update) and waits
/// as long as it answers, then [`judge`](Self::judge)s against the manifest.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    hasher: Sha256,
    rate: u64,
    bytes: u64,
}

impl StreamCheck {
    /// A check read at most `rate` bytes per second (0: unlimited).
    pub fn new(rate: u64) -> Self {
        Self {
            hasher: Sha256::new(),
            rate,
            bytes: 0,
        }
    }

    /// Hashes the next `chunk`, read `elapsed` after the read began; how long to wait before
    /// reading on.
    pub fn update(&mut self, chunk: &[u8], elapsed: Duration) -> Duration {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        pace_delay(self.bytes, self.rate, elapsed)
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// (bytes read, sha256 hex).
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }

    /// The verdict, at `verified_at`, on what was read against the manifest's size and sha256.
    pub fn judge(
        self,
        verified_at: jiff::Timestamp,
        want_bytes: u64,
        want_sha256: &str,
    ) -> Verification {
        let (bytes, sha256) = self.finish();
        Verification::judge(verified_at, bytes, sha256, want_bytes, want_sha256)
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
    fn quarantines_are_sticky_and_recent_checks_are_not_repeated() {
        let good = Verification::judge(at(100), 1, "a".into(), 1, "a");
        let bad = Verification::judge(at(100), 1, "b".into(), 1, "a");
        assert_eq!(answer_without_reading(None, None), None);
        assert_eq!(answer_without_reading(None, Some(at(1))), None);
        assert_eq!(answer_without_reading(Some(good.clone()), None), None);
        assert_eq!(
            answer_without_reading(Some(good.clone()), Some(at(100))),
            Some(Verified::Recent(good.clone())),
            "verified exactly at the asked time counts"
        );
        assert_eq!(answer_without_reading(Some(good), Some(at(101))), None);
        for since in [None, Some(at(1)), Some(at(1000))] {
            assert_eq!(
                answer_without_reading(Some(bad.clone()), since),
                Some(Verified::AlreadyQuarantined(bad.clone()))
            );
        }
    }

    #[test]
    fn a_stream_check_hashes_counts_paces_and_judges() {
        let mut c = StreamCheck::new(1000);
        assert_eq!(
            c.update(b"hello ", Duration::ZERO),
            Duration::from_millis(6)
        );
        assert_eq!(
            c.update(b"world", Duration::from_millis(5)),
            Duration::from_millis(6),
            "11 bytes at 1000/s are due at 11 ms"
        );
        assert_eq!(c.update(b"", Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(c.bytes(), 11);
        // sha256("hello world")
        let want = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        assert!(c.clone().judge(at(1), 11, want).ok);
        let v = c.judge(at(1), 11, &"0".repeat(64));
        assert!(v.quarantined() && v.sha256 == want, "{v:?}");
        let mut unlimited = StreamCheck::new(0);
        assert_eq!(unlimited.update(&[0; 4096], Duration::ZERO), Duration::ZERO);
        assert_eq!(
            pace_delay(500, 1000, Duration::from_millis(2000)),
            Duration::ZERO
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
