//! Where things live in a backup store (Zetaback's layout; README "Architecture"):
//!
//! ```text
//! <root>/<host>/<dataset, '/' escaped as '+'>/<unix-ts>.full
//! <root>/<host>/<dataset, '/' escaped as '+'>/<unix-ts>.full.json        (its manifest)
//! <root>/<host>/<dataset, '/' escaped as '+'>/<unix-ts>.incremental.<base-ts>
//! <root>/<host>/<dataset, '/' escaped as '+'>/<unix-ts>.incremental.<base-ts>.json
//! <root>/.archive/<host>/<escaped dataset>/...                            (same, archived)
//! <root>/<host>/<escaped dataset>/.tmp-<id>-<unique>                     (being written)
//! ```
//!
//! The escaping is reversible and safe: `+` never occurs in a valid dataset name (letters,
//! digits, `-_.:` and `/`), so `tank/db` ⇄ `tank+db`; an escaped name begins with a letter, so
//! it is never `.`, `..`, hidden, or the archive directory; and it never contains `/`. Host
//! names are Kubernetes object names (lower-case DNS-1123), which begin with a letter or digit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use super::StoreError;
use crate::api::BackupType;
use crate::names::{OBJECT_NAME_PATTERN, validate_dataset};

/// The directory under the store root that holds archived backups.
pub const ARCHIVE_DIR: &str = ".archive";
/// The directory under the store root that holds verification records (see
/// [`super::verification`]): `<root>/.verify/<host>/<escaped dataset>/<id>.json`.
pub const VERIFY_DIR: &str = ".verify";
/// Temporary files (streams being written) begin with this; they are never backups.
pub const TEMP_PREFIX: &str = ".tmp-";
/// A manifest is the stream's file name plus this.
pub const MANIFEST_SUFFIX: &str = ".json";
/// What stands for `/` in a dataset's directory name.
pub const ESCAPE: char = '+';

static HOST: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(OBJECT_NAME_PATTERN).expect("constant pattern compiles")
});

/// Validates a host (ZfsHost object name) for use as a directory name.
pub fn validate_host(host: &str) -> Result<(), StoreError> {
    if host.is_empty() || host.len() > 253 || !HOST.is_match(host) {
        return Err(StoreError::InvalidHost(host.to_owned()));
    }
    Ok(())
}

/// `tank/db` → `tank+db` (after validating the dataset name).
pub fn escape_dataset(dataset: &str) -> Result<String, StoreError> {
    validate_dataset(dataset)?;
    Ok(dataset.replace('/', &ESCAPE.to_string()))
}

/// `tank+db` → `tank/db` (and validates the result, so `..`, `/` or junk are refused).
pub fn unescape_dataset(escaped: &str) -> Result<String, StoreError> {
    if escaped.contains('/') {
        return Err(StoreError::InvalidEscapedDataset(escaped.to_owned()));
    }
    let dataset = escaped.replace(ESCAPE, "/");
    validate_dataset(&dataset)
        .map_err(|_| StoreError::InvalidEscapedDataset(escaped.to_owned()))?;
    Ok(dataset)
}

/// The name of a stored stream: `<unix-ts>.full` or `<unix-ts>.incremental.<base-ts>`, where
/// the times are the creation times (seconds since the epoch) of the snapshot and its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    Full { ts: i64 },
    Incremental { ts: i64, base_ts: i64 },
}

impl StreamId {
    /// The snapshot's time.
    pub fn ts(&self) -> i64 {
        match *self {
            StreamId::Full { ts } | StreamId::Incremental { ts, .. } => ts,
        }
    }

    /// The base snapshot's time, for an incremental.
    pub fn base_ts(&self) -> Option<i64> {
        match *self {
            StreamId::Full { .. } => None,
            StreamId::Incremental { base_ts, .. } => Some(base_ts),
        }
    }

    /// Full or incremental.
    pub fn backup_type(&self) -> BackupType {
        match self {
            StreamId::Full { .. } => BackupType::Full,
            StreamId::Incremental { .. } => BackupType::Incremental,
        }
    }

    /// The manifest's file name.
    pub fn manifest_name(&self) -> String {
        format!("{self}{MANIFEST_SUFFIX}")
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Full { ts } => write!(f, "{ts}.full"),
            StreamId::Incremental { ts, base_ts } => write!(f, "{ts}.incremental.{base_ts}"),
        }
    }
}

fn parse_ts(s: &str) -> Option<i64> {
    // Canonical decimal only (no sign, no leading zeros), so that parse ∘ display = id.
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

impl FromStr for StreamId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::InvalidStreamId(s.to_owned());
        let parts: Vec<&str> = s.split('.').collect();
        match parts.as_slice() {
            [ts, "full"] => Ok(StreamId::Full {
                ts: parse_ts(ts).ok_or_else(bad)?,
            }),
            [ts, "incremental", base] => {
                let ts = parse_ts(ts).ok_or_else(bad)?;
                let base_ts = parse_ts(base).ok_or_else(bad)?;
                if base_ts >= ts {
                    return Err(bad());
                }
                Ok(StreamId::Incremental { ts, base_ts })
            }
            _ => Err(bad()),
        }
    }
}

/// Is this file name a temporary file (a stream being written, never a backup)?
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with(TEMP_PREFIX)
}

/// Paths in a store rooted at `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A store at `root` (an absolute directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The archive area.
    pub fn archive_root(&self) -> PathBuf {
        self.root.join(ARCHIVE_DIR)
    }

    fn dir_under(&self, base: PathBuf, host: &str, dataset: &str) -> Result<PathBuf, StoreError> {
        validate_host(host)?;
        Ok(base.join(host).join(escape_dataset(dataset)?))
    }

    /// `<root>/<host>/<escaped dataset>` (or its archive twin).
    pub fn dataset_dir(
        &self,
        host: &str,
        dataset: &str,
        archived: bool,
    ) -> Result<PathBuf, StoreError> {
        let base = if archived {
            self.archive_root()
        } else {
            self.root.clone()
        };
        self.dir_under(base, host, dataset)
    }

    /// The stream file of a backup.
    pub fn stream_path(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
        archived: bool,
    ) -> Result<PathBuf, StoreError> {
        Ok(self
            .dataset_dir(host, dataset, archived)?
            .join(id.to_string()))
    }

    /// The manifest of a backup.
    pub fn manifest_path(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
        archived: bool,
    ) -> Result<PathBuf, StoreError> {
        Ok(self
            .dataset_dir(host, dataset, archived)?
            .join(id.manifest_name()))
    }

    /// The verification record of a backup (one per backup, whichever area it is in: an
    /// archived stream is the same file, hard-linked, as the live one was).
    pub fn verification_path(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
    ) -> Result<PathBuf, StoreError> {
        Ok(self
            .dir_under(self.root.join(VERIFY_DIR), host, dataset)?
            .join(id.manifest_name()))
    }

    /// A temporary file name for a stream being written (`unique` tells writers apart).
    pub fn temp_path(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
        unique: &str,
    ) -> Result<PathBuf, StoreError> {
        Ok(self
            .dataset_dir(host, dataset, false)?
            .join(format!("{TEMP_PREFIX}{id}-{unique}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stream_ids_round_trip() {
        for s in [
            "1700000000.full",
            "1700086400.incremental.1700000000",
            "0.full",
        ] {
            let id: StreamId = s.parse().expect(s);
            assert_eq!(id.to_string(), s);
        }
        let id: StreamId = "1700086400.incremental.1700000000".parse().expect("id");
        assert_eq!(id.base_ts(), Some(1_700_000_000));
        assert_eq!(id.backup_type(), BackupType::Incremental);
        assert_eq!(id.manifest_name(), "1700086400.incremental.1700000000.json");
    }

    #[test]
    fn stream_ids_refuse_junk() {
        for bad in [
            "",
            "full",
            ".full",
            "-1.full",
            "+1.full",
            "01.full",
            "1.full.json",
            "1.incremental",
            "1.incremental.2",
            "1.incremental.1",
            "1.diff.0",
            "../1.full",
            "1.full/..",
            "99999999999999999.full",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escaping_is_reversible_and_safe() {
        assert_eq!(escape_dataset("tank/db/pg").expect("ok"), "tank+db+pg");
        assert_eq!(unescape_dataset("tank+db+pg").expect("ok"), "tank/db/pg");
        for bad in [
            "..", ".", "", "tank/db", "+tank", "tank++db", "tank+", ".archive", "-x",
        ] {
            assert!(unescape_dataset(bad).is_err(), "{bad:?}");
        }
        for bad in ["tank/../x", "../x", "tank//x", "tank+x"] {
            assert!(escape_dataset(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_object_names() {
        assert!(validate_host("backup-1.example").is_ok());
        for bad in ["", ".archive", "..", "Host", "a/b", "-a", "a_b"] {
            assert!(validate_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        let l = Layout::new("/srv/zb");
        let id = StreamId::Full { ts: 5 };
        assert_eq!(
            l.stream_path("h1", "tank/db", &id, false).expect("path"),
            PathBuf::from("/srv/zb/h1/tank+db/5.full")
        );
        assert_eq!(
            l.manifest_path("h1", "tank/db", &id, true).expect("path"),
            PathBuf::from("/srv/zb/.archive/h1/tank+db/5.full.json")
        );
        let t = l.temp_path("h1", "tank/db", &id, "ab12").expect("path");
        assert!(is_temporary(
            &t.file_name().expect("name").to_string_lossy()
        ));
        assert!(l.stream_path("../x", "tank", &id, false).is_err());
    }

    proptest! {
        #[test]
        fn escape_round_trips(ds in "[A-Za-z][A-Za-z0-9_.:-]{0,8}(/[A-Za-z0-9_:][A-Za-z0-9_.:-]{0,8}){0,4}") {
            let e = escape_dataset(&ds).expect("valid dataset");
            prop_assert!(!e.contains('/'));
            prop_assert!(!e.starts_with('.'));
            prop_assert_eq!(unescape_dataset(&e).expect("unescapes"), ds);
        }

        #[test]
        fn stream_ids_round_trip_any(ts in 1i64..999_999_999_999, d in 1i64..1_000_000) {
            let f = StreamId::Full { ts };
            prop_assert_eq!(f.to_string().parse::<StreamId>().expect("full"), f);
            let i = StreamId::Incremental { ts, base_ts: (ts - d).max(0) };
            if i.base_ts() < Some(ts) {
                prop_assert_eq!(i.to_string().parse::<StreamId>().expect("incr"), i);
            }
        }
    }
}
