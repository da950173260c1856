//! The JSON manifest written beside each stored stream. A stream without a valid manifest is
//! not a backup.

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::layout::{StreamId, validate_host};
use crate::api::BackupType;
use crate::api::backup_policy::Compression;
use crate::names::{validate_dataset, validate_snapshot_name};

/// The manifest format version written by this code.
pub const MANIFEST_VERSION: u32 = 1;

/// What is known about one stored backup stream: `<id>.json` beside the stream `<id>`.
///
/// ```json
/// {"version":1,"id":"1700086400.incremental.1700000000","host":"db-1","dataset":"tank/db",
///  "snapshot":"zb-1700086400","baseSnapshot":"zb-1700000000","type":"incremental",
///  "bytes":45880,"sha256":"…64 hex…","compression":"zstd","created":"2023-11-15T22:13:20Z"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The manifest format version ([`MANIFEST_VERSION`]).
    #[serde(default = "default_version")]
    pub version: u32,
    /// The stream's file name, e.g. `1700000000.full`; also the backup's id.
    pub id: String,
    /// The source ZfsHost.
    pub host: String,
    /// The source dataset.
    pub dataset: String,
    /// The snapshot sent (short name, after `@`).
    pub snapshot: String,
    /// For an incremental: the snapshot it was taken against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_snapshot: Option<String>,
    /// Full or incremental.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// Bytes of the stored file (after compression).
    pub bytes: u64,
    /// sha256 of the stored file, lower-case hex: every stored stream (file store, bucket) has
    /// one, re-checked by every restore and verification. A replica's manifest has none: its
    /// stream was checked by `zfs receive` itself (ZFS's own stream checksums) and in transit
    /// by [`Self::xxh3`], and nothing could re-read the stream to check a sha256 later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How the stored file is compressed (`none` or `zstd`).
    pub compression: Compression,
    /// When the snapshot was taken (the id's time), RFC 3339.
    pub created: jiff::Timestamp,
    /// The BackupPolicy that made the backup, `<namespace>/<name>` (sent by the source from its
    /// BackupJob): retention and archiving act only on their own policy's backups. Absent in
    /// manifests written before it existed (no policy deletes those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// xxh3-128 of the stored bytes as they arrived (the transit check, lower-case hex): a
    /// sender whose answer was lost compares it with what it sent. Absent in manifests
    /// written before it existed, and in a bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// The stream was sent raw (`zfs send -w`, an encrypted dataset): its blocks as encrypted
    /// on the source's disk, so that receiving it needs no key and leaves the dataset locked.
    /// `false` also in manifests written before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
}

/// Checks a policy reference `<namespace>/<name>` (a namespace name and an object name).
pub fn validate_policy_ref(text: &str) -> Result<(), StoreError> {
    static NAMESPACE: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(crate::names::NAMESPACE_NAME_PATTERN).ok());
    static OBJECT: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(crate::names::OBJECT_NAME_PATTERN).ok());
    let ok = text.split_once('/').is_some_and(|(ns, name)| {
        ns.len() <= 63
            && name.len() <= 253
            && NAMESPACE.as_ref().is_some_and(|r| r.is_match(ns))
            && OBJECT.as_ref().is_some_and(|r| r.is_match(name))
    });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidPolicyRef(text.to_owned()))
    }
}

/// Whether `text` is exactly `len` lower-case hex digits.
fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn default_version() -> u32 {
    MANIFEST_VERSION
}

impl Manifest {
    /// The parsed id.
    pub fn stream_id(&self) -> Result<StreamId, StoreError> {
        self.id.parse()
    }

    /// Checks that the manifest is self-consistent: valid names, an id whose type and time
    /// match `type` and `created`, a base snapshot exactly for incrementals, a sha256.
    pub fn validate(&self) -> Result<StreamId, StoreError> {
        let bad = |why: &str| StoreError::InvalidManifest {
            id: self.id.clone(),
            reason: why.to_owned(),
        };
        let id = self.stream_id()?;
        validate_host(&self.host)?;
        validate_dataset(&self.dataset)?;
        validate_snapshot_name(&self.snapshot)?;
        if id.backup_type() != self.backup_type {
            return Err(bad("type does not match the id"));
        }
        if id.ts() != self.created.as_second() {
            return Err(bad("created does not match the id's time"));
        }
        match (&self.base_snapshot, self.backup_type) {
            (Some(b), BackupType::Incremental) => validate_snapshot_name(b)?,
            (None, BackupType::Full) => {}
            _ => return Err(bad("baseSnapshot must be set exactly for an incremental")),
        }
        match (&self.sha256, &self.xxh3) {
            (Some(s), _) if !is_lower_hex(s, 64) => {
                return Err(bad("sha256 is not 64 lower-case hex digits"));
            }
            (None, None) => return Err(bad("it records no checksum (neither sha256 nor xxh3)")),
            _ => {}
        }
        if let Some(p) = &self.policy {
            validate_policy_ref(p)?;
        }
        if let Some(x) = &self.xxh3
            && !is_lower_hex(x, 32)
        {
            return Err(bad("xxh3 is not 32 lower-case hex digits"));
        }
        if self.version > MANIFEST_VERSION {
            return Err(bad("written by a newer zetaback"));
        }
        Ok(id)
    }

    /// Parses and validates a manifest file's text.
    pub fn from_json(text: &[u8]) -> Result<Self, StoreError> {
        let m: Manifest =
            serde_json::from_slice(text).map_err(|e| StoreError::ManifestJson(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Parses and validates the manifest of a stored stream (a file store's or a bucket's):
    /// as [`Self::from_json`], and it must record the stream's sha256.
    pub fn from_stored_json(text: &[u8]) -> Result<Self, StoreError> {
        let m = Self::from_json(text)?;
        m.stored_sha256()?;
        Ok(m)
    }

    /// The sha256 a stored stream is checked against; an error for a manifest without one
    /// (a replica's, or a forged one), which must never pass for verified.
    pub fn stored_sha256(&self) -> Result<&str, StoreError> {
        self.sha256
            .as_deref()
            .ok_or_else(|| StoreError::InvalidManifest {
                id: self.id.clone(),
                reason: "it records no sha256, so the stream cannot be verified".to_owned(),
            })
    }

    /// The manifest as pretty JSON (what is written to disk).
    pub fn to_json(&self) -> Result<Vec<u8>, StoreError> {
        let mut v =
            serde_json::to_vec_pretty(self).map_err(|e| StoreError::ManifestJson(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(id: &str, base: Option<&str>) -> Manifest {
        let sid: StreamId = id.parse().expect("id");
        Manifest {
            version: MANIFEST_VERSION,
            id: id.into(),
            host: "db-1".into(),
            dataset: "tank/db".into(),
            snapshot: format!("zb-{}", sid.ts()),
            base_snapshot: base.map(str::to_owned),
            backup_type: sid.backup_type(),
            bytes: 10,
            sha256: Some("a".repeat(64)),
            compression: Compression::Zstd,
            created: jiff::Timestamp::from_second(sid.ts()).expect("ts"),
            policy: None,
            xxh3: None,
            raw: false,
        }
    }

    #[test]
    fn policy_references_are_namespace_slash_name() {
        for ok in ["ns/p", "team-a/nightly.db", "a/b"] {
            assert!(validate_policy_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ns", "/p", "ns/", "NS/p", "ns/p/q", "ns/../p", "-ns/p", "ns/p\n",
        ] {
            assert!(validate_policy_ref(bad).is_err(), "{bad}");
        }
        let mut m = sample("1700000000.full", None);
        m.policy = Some("ns/p".into());
        let text = m.to_json().expect("json");
        assert_eq!(Manifest::from_json(&text).expect("valid").policy, m.policy);
        m.policy = Some("no-slash".into());
        assert!(m.validate().is_err());
    }

    #[test]
    fn json_shape() {
        let m = sample("1700086400.incremental.1700000000", Some("zb-1700000000"));
        let v: serde_json::Value = serde_json::from_slice(&m.to_json().expect("json")).expect("v");
        assert_eq!(v["type"], "incremental");
        assert_eq!(v["baseSnapshot"], "zb-1700000000");
        assert_eq!(v["created"], "2023-11-15T22:13:20Z");
        assert_eq!(v["compression"], "zstd");
        assert_eq!(
            Manifest::from_json(&m.to_json().expect("json")).expect("back"),
            m
        );
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = sample("1700000000.full", None);
        assert!(m.validate().is_ok());
        m.base_snapshot = Some("x".into());
        assert!(m.validate().is_err());
        let mut m = sample("1700000000.full", None);
        m.created = jiff::Timestamp::from_second(1).expect("ts");
        assert!(m.validate().is_err());
        let mut m = sample("1700000000.full", None);
        m.sha256 = Some("XYZ".into());
        assert!(m.validate().is_err());
        let mut m = sample("1700000000.full", None);
        m.sha256 = None;
        assert!(m.validate().is_err(), "no checksum at all");
        m.xxh3 = Some("b".repeat(32));
        let replica = m.validate();
        assert!(
            replica.is_ok(),
            "a replica's manifest: xxh3 only: {replica:?}"
        );
        let text = m.to_json().expect("json");
        assert!(Manifest::from_json(&text).is_ok());
        assert!(
            Manifest::from_stored_json(&text).is_err(),
            "a stored stream's manifest needs its sha256"
        );
        let mut m = sample("1700000000.full", None);
        m.dataset = "../etc".into();
        assert!(m.validate().is_err());
        assert!(Manifest::from_json(b"{}").is_err());
    }
}
