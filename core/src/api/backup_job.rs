//! `BackupJob`: one `zfs send` of one dataset, created by the controller and run by the source
//! host's agent. BackupJobs are history; the backup store is the source of truth.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup_policy::{Compression, Target};
use super::common::{Conditions, DatasetName, ObjectName, conditions_schema};

/// One backup of one dataset, run by the agent of `spec.host`. `spec.host` is a selectable
/// field: an agent lists and watches only its own jobs (`--field-selector spec.host=H`).
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "zetaback.io",
    version = "v1alpha1",
    kind = "BackupJob",
    plural = "backupjobs",
    shortname = "bj",
    category = "zetaback",
    namespaced,
    status = "BackupJobStatus",
    doc = "One full or incremental zfs send of one dataset, run by the source host's agent.",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Dataset", type_ = "string", json_path = ".spec.dataset"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.host"
)]
#[x_kube(validation = Rule::new("!has(self.intermediates) || !self.intermediates || (self.type == 'incremental' && has(self.baseSnapshot))").message("intermediates (zfs send -I) is only for an incremental with a baseSnapshot").field_path(".intermediates"))]
#[x_kube(validation = Rule::new("self.type != 'incremental' || has(self.baseSnapshot)").message("an incremental needs baseSnapshot, the snapshot it is taken against").field_path(".baseSnapshot"))]
#[serde(rename_all = "camelCase")]
pub struct BackupJobSpec {
    /// The BackupPolicy that asked for this job.
    pub policy: ObjectName,
    /// The source ZfsHost.
    pub host: ObjectName,
    pub dataset: DatasetName,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// For an incremental: the snapshot (short name, after `@`) it is taken against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = snapshot_rule())]
    pub base_snapshot: Option<String>,
    /// The snapshot to take and send (short name).
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = snapshot_rule())]
    pub snapshot: String,
    pub target: Target,
    #[serde(default)]
    pub compression: Compression,
    /// For an incremental: send every snapshot between baseSnapshot and snapshot as well
    /// (`zfs send -I`), so that the target also gets the intermediate snapshots (a replica
    /// then has the source's whole history; a stored stream restores all of them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intermediates: bool,
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackupType {
    Full,
    Incremental,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: JobPhase,
    /// The agent that claimed the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Stream bytes written to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes_per_second: Option<u64>,
    /// The stream's size as `zfs send -nP` estimated it before sending (OpenZFS); absent
    /// where the source cannot estimate (zfs-fuse): progress then has no total and no ETA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub estimated_bytes: Option<u64>,
    /// Stream bytes read from `zfs send` so far (the unit of `estimatedBytes`: before the
    /// transfer's compression), updated every few seconds while the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes_sent: Option<u64>,
    /// Seconds left at the rate so far (only with an estimate; absent once done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub eta_seconds: Option<u64>,
    /// The stream's sha256, as the target recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The id of the stored backup (its manifest's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How often an agent claimed the job (never negative: the controller reads it unsigned).
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0))]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}

/// The CEL rule for a snapshot's short name: what [`crate::names::validate_snapshot_name`]
/// accepts (the agent refuses anything else), with the refusal in words.
fn snapshot_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "self.matches(r'{}') && self != '.' && self != '..'",
        crate::names::SNAPSHOT_NAME_PATTERN
    ))
    .message(kube::core::Message::Expression(
        r#"'"' + self + '" is not a snapshot name: use letters, digits and -_.: only (the part after @, not beginning with - and not . or ..)'"#
            .into(),
    ))
}
