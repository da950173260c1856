//! `Restore`: bring a dataset back from its backups, verified piece by piece.
//!
//! A Restore names one dataset (`source.dataset`), or several for a *bulk* restore
//! (`source.datasets`: names or patterns, as Zetaback's range selection did). A bulk Restore's
//! `destination.dataset` is a base: each source dataset `pool/a/b` is restored to
//! `<base>/pool/a/b`. The controller runs a bulk Restore as one child Restore per dataset
//! (named `<parent>-<hash>`, owned by and labelled with the parent) and gathers their
//! outcome into the parent's `status.datasets`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DatasetName, DatasetPattern, ObjectName, conditions_schema};

/// The label on a bulk Restore's children naming their parent Restore.
pub const BULK_PARENT_LABEL: &str = "zetaback.io/bulk-restore";

/// A restore of one dataset (or several, by pattern) from stored backups.
/// `spec.destination.host` is a selectable field: an agent lists and watches only the
/// Restores it receives (`--field-selector spec.destination.host=H`).
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
        name = "Datasets",
        type_ = "string",
        json_path = ".spec.source.datasets"
    ),
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
    ),
    selectable = ".spec.destination.host"
)]
#[kube(validation = Rule::new("!has(self.spec.source.datasets) || size(self.metadata.name) <= 63").message("a bulk Restore's name must be at most 63 characters: its child Restores carry it in the label zetaback.io/bulk-restore"))]
#[x_kube(validation = Rule::new("!has(self.drill) || !self.drill || !self.force").message("a drill never replaces an existing dataset: drill and force cannot both be true"))]
#[x_kube(validation = Rule::new("!has(self.drill) || !self.drill || has(self.source.dataset)").message("a drill restores one dataset (source.dataset), not a bulk restore (source.datasets)"))]
#[x_kube(validation = Rule::new("!has(self.drill) || !self.drill || self.verify").message("a drill verifies what it restores: drill needs verify: true"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Restore's spec cannot be changed; create a new Restore"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    pub source: RestoreSource,
    pub destination: RestoreDestination,
    /// Allow restoring over an existing dataset. Where it holds the first pieces of this same
    /// chain (an interrupted restore), the rest is received on top of them. Any other dataset
    /// is replaced by the restored one (`zfs receive -F`), unless it has snapshots or child
    /// datasets of its own, which that would destroy: such a destination is refused before
    /// anything is sent (remove them first, or restore to a new dataset).
    #[serde(default)]
    pub force: bool,
    /// Check every piece's checksum before it reaches `zfs receive` (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// A restore drill (made by a policy's `spec.drill`): the destination must be a new
    /// dataset directly under a dataset that carries the ZFS user property
    /// `zetaback.io:scratch=on` on the destination host (the agent refuses anything else
    /// before receiving a byte); once restored and verified, the agent checks that every
    /// restored snapshot exists, records when it was verified (`status.verifiedAt`) and
    /// destroys the destination again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

/// The ZFS user property that marks a dataset as a scratch root for restore drills.
pub const SCRATCH_PROPERTY: &str = "zetaback.io:scratch";
/// How many times a bucket restore is claimed at most (the first run and the runs after
/// restarts of its agent) before a restart fails it `Interrupted`.
pub const RESTORE_ATTEMPTS: u32 = 3;
/// The label on a drill's Restore naming the BackupPolicy that made it.
pub const DRILL_POLICY_LABEL: &str = "zetaback.io/drill-policy";
/// The annotation on a drill's Restore with its number among the drills of its dataset
/// (1, 2, …): what `drill.olderEvery` counts, since `drill.keep` prunes the older Restores.
pub const DRILL_NUMBER_ANNOTATION: &str = "zetaback.io/drill-number";

fn default_true() -> bool {
    true
}

/// What to restore: a host's dataset (or several) at a point in time, or a specific backup.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.at) && has(self.backup))").message("source takes at most one of at (a point in time) or backup (a backup id)"))]
#[x_kube(validation = Rule::new("has(self.dataset) != has(self.datasets)").message("source takes exactly one of dataset (one dataset) or datasets (a bulk restore: several dataset names or patterns)"))]
#[x_kube(validation = Rule::new("!(has(self.datasets) && has(self.backup))").message("a bulk restore (datasets) cannot name a backup id, which belongs to one dataset: give at (a point in time, used for every dataset) or neither (each dataset's newest backup)"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// The ZfsHost the backups were taken from.
    pub host: ObjectName,
    /// The dataset backed up (one dataset; exclusive with `datasets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetName>,
    /// A bulk restore: the datasets backed up, as names or patterns (`tank/**` is tank and
    /// everything under it; `**` is every dataset of the host that has backups). Each must
    /// match at least one dataset with backups. The destination dataset is then a base: each
    /// dataset `pool/a/b` is restored to `<base>/pool/a/b`. Exclusive with `dataset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64))]
    pub datasets: Vec<DatasetPattern>,
    /// Restore the newest backup at or before this time (default: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// Restore this backup (the id shown by `kubectl zetaback list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = Rule::new(r"self.matches(r'^(0|[1-9][0-9]{0,11})\.(full|incremental\.(0|[1-9][0-9]{0,11}))$')").message(Message::Expression(r#"'"' + self + '" is not a backup id: ids look like 1700000000.full or 1700086400.incremental.1700000000 (kubectl zetaback list shows them)'"#.into())))]
    pub backup: Option<String>,
    /// Search the archive area too.
    #[serde(default)]
    pub include_archive: bool,
}

impl RestoreSource {
    /// The one dataset of a single restore, or `""` for a bulk restore. Only single
    /// Restores ever get a chain, so an agent running a Restore always sees a name here.
    pub fn dataset_name(&self) -> &str {
        self.dataset.as_ref().map_or("", DatasetName::as_str)
    }

    /// Whether this names several datasets (`datasets`), run as child Restores.
    pub fn is_bulk(&self) -> bool {
        !self.datasets.is_empty()
    }
}

/// Where to restore to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreDestination {
    /// The ZfsHost whose agent receives the restore (the source host or another).
    pub host: ObjectName,
    /// The dataset to create; for a bulk restore, the base under which each source dataset
    /// is recreated by its full name (`<base>/pool/a/b`). Missing parents are created.
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
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
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
    /// The controller's signed grant letting the destination host's agent read the chain's
    /// backups of the source host (scoped to them and to the destination, expiring;
    /// `zetaback_core::grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// When the chain is in an object store: the bucket it is read from (the policy's
    /// `target.objectStore`, copied by the controller). The destination agent reads it with
    /// its own keys (`--object-store-credentials`, which need `s3:GetObject` on the source's
    /// prefix); `credentialsSecret` (the controller's keys) is never read by an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<super::backup_policy::ObjectStoreTarget>,
    /// The agent running the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// A drill: when every piece was applied and checked and the restored snapshots were
    /// found (the end of the measured recovery time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// A drill: whether the scratch dataset was destroyed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_destroyed: Option<bool>,
    /// How many times an agent has claimed this restore. A restore from a bucket whose agent
    /// was restarted while it ran is claimed again (up to 3 times in all), where a file-store
    /// restore is failed `Interrupted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub attempts: Option<u32>,
    /// The destination did not exist when this restore began and is its own: written by the
    /// agent before the first piece is received, so a restore claimed again after an
    /// interruption continues on what it received (or starts over) and a failed one destroys
    /// it, while a dataset that was there before is never touched without `force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_destination: Option<bool>,
    /// A bulk restore: one row per dataset, each run by a child Restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<BulkDataset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}

/// One dataset of a bulk restore, and how its child Restore is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkDataset {
    /// The source dataset.
    pub source: String,
    /// Where it is restored to (`<base>/<source>`).
    pub destination: String,
    /// The child Restore that restores it.
    pub restore: String,
    /// The child's phase (Pending until it is created and resolved).
    #[serde(default)]
    pub phase: RestorePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Stored bytes of its chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes_done: Option<u64>,
    /// The child's message (its reason first, when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    #[schemars(with = "i64", range(min = 0))]
    pub bytes: u64,
    /// The manifest's sha256 of the stored stream.
    pub sha256: String,
    /// True once the stream's sha256 matched (before its end reached `zfs receive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}
