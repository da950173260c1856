//! `Restore`: bring a dataset back from its backups, verified piece by piece.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DatasetName, ObjectName, conditions_schema};

/// A restore of one dataset (or several, by pattern) from stored backups.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "zetaback.io",
    version = "v1alpha1",
    kind = "Restore",
    plural = "restores",
    shortname = "zr",
    category = "zetaback",
    namespaced,
    status = "RestoreStatus",
    doc = "A restore of a dataset from its backups to a host, verified by checksum.",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source.dataset"),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destination.dataset"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verified", type_ = "boolean", json_path = ".status.verified"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Restore's spec cannot be changed; create a new Restore"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    pub source: RestoreSource,
    pub destination: RestoreDestination,
    /// Allow receiving into an existing dataset (it is rolled back and overwritten).
    #[serde(default)]
    pub force: bool,
    /// Check every piece's checksum before it reaches `zfs receive` (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
}

fn default_true() -> bool {
    true
}

/// What to restore: a host's dataset at a point in time, or a specific backup.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.at) && has(self.backup))").message("source takes at most one of at (a point in time) or backup (a backup id)"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// The ZfsHost the backups were taken from.
    pub host: ObjectName,
    /// The dataset backed up.
    pub dataset: DatasetName,
    /// Restore the newest backup at or before this time (default: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// Restore this backup (the id shown by `kubectl zetaback list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub backup: Option<String>,
    /// Search the archive area too.
    #[serde(default)]
    pub include_archive: bool,
}

/// Where to restore to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreDestination {
    pub host: ObjectName,
    pub dataset: DatasetName,
}

/// Restore progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestorePhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// What the restore did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: RestorePhase,
    /// The backups applied, in order (a full, then incrementals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// The pieces of the chain with their stored size and checksum, and whether each was
    /// verified before it reached `zfs receive`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<RestorePiece>,
    /// The ZfsHost whose agent stores the backups (resolved by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_host: Option<String>,
    /// That agent's stream API (`host:port`) when the chain was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_endpoint: Option<String>,
    /// The agent running the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}

/// One stream of a restore chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePiece {
    /// The backup id (`<ts>.full` or `<ts>.incremental.<base-ts>`).
    pub id: String,
    /// The snapshot the stream ends at (short name, after `@`).
    pub snapshot: String,
    /// Stored bytes.
    #[schemars(with = "i64")]
    pub bytes: u64,
    /// The manifest's sha256 of the stored stream.
    pub sha256: String,
    /// True once the stream's sha256 matched (before its end reached `zfs receive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}
