//! The backup store: the on-disk layout of stored `zfs send` streams and their manifests
//! ([`layout`], [`manifest`]) and a scanner that rebuilds the catalogue of backups from a store
//! directory ([`catalogue`]). The store is the source of truth (README "Architecture"): the
//! controller's view of what is backed up is rebuilt from it.
//!
//! Pure: plain `std::fs`, no async runtime. The target agent writes stores (agent crate); the
//! controller reads catalogues (through the agent's `GET /v1/catalogue`).

pub mod catalogue;
pub mod future;
pub mod layout;
pub mod manifest;
pub mod verification;
pub mod verify_queue;

use std::path::{Path, PathBuf};

pub use catalogue::{Catalogue, StoredBackup, scan};
pub use layout::{Layout, StreamId, escape_dataset, unescape_dataset, validate_host};
pub use manifest::{MANIFEST_VERSION, Manifest, validate_policy_ref};
pub use verification::{StreamCheck, Verification, Verified};

/// What can go wrong with store names, manifests and scans.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error("host {0:?} is not a valid ZfsHost name")]
    InvalidHost(String),
    #[error("{0:?} is not an escaped dataset name (use '+' for '/')")]
    InvalidEscapedDataset(String),
    #[error("{0:?} is not a stream id (<unix-ts>.full or <unix-ts>.incremental.<base-ts>)")]
    InvalidStreamId(String),
    #[error("{0:?} is not a policy reference (<namespace>/<name>)")]
    InvalidPolicyRef(String),
    #[error("manifest {id}: {reason}")]
    InvalidManifest { id: String, reason: String },
    #[error("manifest JSON: {0}")]
    ManifestJson(String),
    #[error("restore chain of {id} is broken: {missing} is missing")]
    BrokenChain { id: String, missing: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
