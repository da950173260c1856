//! `ZfsHost`: a machine with ZFS pools, served by the node-local agent on `spec.nodeName`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DatasetName, DatasetSelector, NamespaceName, conditions_schema};

/// A machine with ZFS pools. Cluster-scoped: one per machine.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "zetaback.io",
    version = "v1alpha1",
    kind = "ZfsHost",
    plural = "zfshosts",
    shortname = "zh",
    category = "zetaback",
    status = "ZfsHostStatus",
    doc = "A machine with ZFS pools, served by the zetaback agent on its node.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Pools", type_ = "integer", json_path = ".status.poolCount"),
    printcolumn(
        name = "Datasets",
        type_ = "integer",
        json_path = ".status.datasetCount"
    ),
    printcolumn(name = "Agent", type_ = "string", json_path = ".status.agentVersion"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Last Seen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ZfsHostSpec {
    /// The Kubernetes node whose agent serves this host.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// Which datasets the agent reports (and policies may back up).
    #[serde(default)]
    pub datasets: DatasetSelector,
    /// A paused host is listed but gets no new backup jobs and is not counted as a violator
    /// (Zetaback's `offline`).
    #[serde(default)]
    pub paused: bool,
    /// The namespaces whose BackupPolicies may back this host up (or store on it) and whose
    /// Restores may restore its backups or restore to it. Empty: only the operator's own
    /// namespace (where the controller runs). Anything else is refused with `Ready=False`,
    /// reason `Forbidden`, and touches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub allowed_namespaces: Vec<NamespaceName>,
    /// The datasets under which Restores may create datasets on this host: a Restore's
    /// destination must be one of them or lie below one. Empty: no Restore lands on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restore_roots: Vec<DatasetName>,
}

impl ZfsHostSpec {
    /// A host served by the agent on `node_name`, with no namespaces beyond the operator's
    /// and no restore roots.
    pub fn on_node(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_owned(),
            datasets: DatasetSelector::default(),
            paused: false,
            allowed_namespaces: Vec::new(),
            restore_roots: Vec::new(),
        }
    }
}

/// What the agent found on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsHostStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The address where the agent's stream API listens (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<String>,
    /// Optional ZFS features the local `zfs` supports (resumableSend, bookmarks, holds,
    /// rawSend, sendSizeEstimate, compressedSend, parsableList).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zfs_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_count: Option<i32>,
    /// The datasets that match `spec.datasets` (at most 2000 are listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2000))]
    pub datasets: Vec<DatasetStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_count: Option<i32>,
    /// When the agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub free_bytes: Option<u64>,
}

/// One dataset the agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub used_bytes: Option<u64>,
    /// The newest snapshot zetaback made of this dataset (a base for the next incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<String>,
    /// Every snapshot zetaback made of this dataset that still exists (short names, after
    /// `@`): the possible bases for an incremental.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub snapshots: Vec<String>,
    /// The backup class from the `zetaback.io:class` user property, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// True when the `zetaback.io:exclude` user property is `on`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}
