//! `BackupPolicy`: which hosts and datasets are backed up, how often, for how long, and where.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ByteSizeString, Conditions, DatasetName, DatasetSelector, DurationString, ObjectName,
    RetentionString, conditions_schema,
};
use crate::duration::{cel_is_duration, cel_seconds};

/// A ZFS backup policy for a set of hosts and datasets. Its status answers "are we compliant?".
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "zetaback.io",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    shortname = "bp",
    category = "zetaback",
    namespaced,
    status = "BackupPolicyStatus",
    doc = "A ZFS backup policy: which hosts and datasets, how often full and incremental backups are due, how long each is kept, and where they go.",
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.hosts"),
    printcolumn(name = "Datasets", type_ = "integer", json_path = ".status.datasets"),
    printcolumn(name = "Violators", type_ = "integer", json_path = ".status.violators"),
    printcolumn(
        name = "Compliant",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Compliant\")].status"
    ),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastBackup"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(format!(
    "!{} || !{} || {} < {}",
    cel_is_duration("self.incremental.every"),
    cel_is_duration("self.full.every"),
    cel_seconds("self.incremental.every"),
    cel_seconds("self.full.every")
)).message("incremental.every must be shorter than full.every (an incremental is due between fulls)").field_path(".incremental.every"))]
#[x_kube(validation = Rule::new("!has(self.verify) || !has(self.target.dataset)").message("verify re-reads stored streams (files under target.path, objects under target.objectStore); a replica target (target.dataset) is checked by zfs scrub on its pool").field_path(".verify"))]
#[x_kube(validation = Rule::new("!has(self.drill) || has(self.target.path)").message("drill restores backups stored as files (target.path); a replica or object-store target cannot be drilled yet").field_path(".drill"))]
#[x_kube(validation = Rule::new("!has(self.objectives) || !has(self.objectives.rto) || has(self.drill)").message("objectives.rto is measured by restore drills: set drill too").field_path(".objectives.rto"))]
#[x_kube(validation = Rule::new("!has(self.archive) || !has(self.target.dataset)").message("archive applies to backups stored as files (target.path); a replica target (target.dataset) keeps its snapshots until retention deletes them").field_path(".archive"))]
#[x_kube(validation = Rule::new(format!(
    "!has(self.archive) || !has(self.target.objectStore) || !has(self.target.objectStore.immutableFor) || !{} || !{} || {} >= {}",
    cel_is_duration("self.target.objectStore.immutableFor"),
    cel_is_duration("self.archive.after"),
    cel_seconds("self.archive.after"),
    cel_seconds("self.target.objectStore.immutableFor")
)).message("archive.after must not be shorter than target.objectStore.immutableFor: archiving moves a backup to the archive prefix, which deletes the original, and a locked object cannot be deleted before its lock expires").field_path(".archive.after"))]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// Which ZfsHosts this policy covers.
    pub hosts: HostSelector,
    /// Which datasets on those hosts: name patterns and, optionally, backup classes.
    #[serde(default)]
    pub datasets: PolicyDatasets,
    /// How often a full backup is due and how long full backups are kept.
    pub full: Schedule,
    /// How often an incremental backup is due and how long incrementals are kept.
    pub incremental: IncrementalSchedule,
    /// When backups move to the archive area and how long they stay there. Only for backups
    /// stored as files (`target.path`): a replica (`target.dataset`) has no archive area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,
    /// Where backup streams go.
    pub target: Target,
    /// How streams are compressed in transit and at rest.
    #[serde(default)]
    pub compression: Compression,
    /// How late a backup may be before its dataset counts as a violator.
    #[serde(default = "default_grace")]
    pub grace: DurationString,
    /// Limits on concurrent jobs.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// A suspended policy schedules nothing but still reports violators.
    #[serde(default)]
    pub suspend: bool,
    /// How many finished BackupJobs are kept per dataset (BackupJobs are history; the store
    /// holds the record of what is backed up).
    #[serde(default)]
    pub job_history: JobHistory,
    /// Re-read every stored stream on a schedule and check it against its manifest (sha256
    /// and size): a stream that no longer matches is quarantined (see [`VerifySpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Recovery objectives: a dataset whose newest restorable backup is older than `rpo` is
    /// an `RpoMissed` violator; one whose last restore drill took longer than `rto` is an
    /// `RtoMissed` violator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Objectives>,
    /// Scheduled restore drills: each covered dataset's backups are restored on a schedule
    /// into a scratch dataset, verified, timed (the measured RTO) and destroyed again (see
    /// [`DrillSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSpec>,
}

/// Scheduled restore drills. Every `every`, each covered dataset with a restorable backup is
/// restored (through an ordinary `Restore`, marked as a drill) into a new scratch dataset
/// `<root>/<restore name>` on `destination.host`; the restore checks every piece's sha256
/// against its manifest before it is applied and the restored snapshots afterwards, records
/// the time from the drill's start to its verification (the measured RTO), and destroys the
/// scratch dataset. The destination host's agent runs a drill only when `root` exists there
/// and carries the ZFS user property `zetaback.io:scratch=on` (set by the host's
/// administrator), and never into an existing dataset. A failed drill makes the dataset a
/// `DrillFailed` violator; a dataset without a successful drill for `every` plus the policy's
/// grace a `NoDrillWithin` violator.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillSpec {
    /// How often each dataset is drilled, e.g. 30d.
    pub every: DurationString,
    /// Where drills restore to.
    pub destination: DrillDestination,
    /// How many datasets are drilled at once (those drilled longest ago first).
    #[serde(default = "default_drills_per_run")]
    #[schemars(range(min = 1, max = 16))]
    #[schemars(with = "i32")]
    pub datasets_per_run: u32,
    /// Finished drill Restores kept per dataset (the history shown in the status).
    #[serde(default = "default_drill_keep")]
    #[schemars(range(min = 1, max = 20))]
    #[schemars(with = "i32")]
    pub keep: u32,
    /// Every `olderEvery`-th drill of a dataset restores its oldest restorable backup (an
    /// older chain) instead of the newest; 0: always the newest.
    #[serde(default = "default_drill_older_every")]
    #[schemars(range(min = 0, max = 100))]
    #[schemars(with = "i32")]
    pub older_every: u32,
    /// A drill not finished within this long (default 6h) is ended as failed (its Restore is
    /// marked `Failed`, reason `DrillTimedOut`), freeing its place under `datasetsPerRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
}

fn default_drills_per_run() -> u32 {
    1
}
fn default_drill_keep() -> u32 {
    3
}
fn default_drill_older_every() -> u32 {
    4
}

/// The host and scratch root a drill restores into.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.root.contains('/')").message("drill.destination.root must be a dataset below a pool (e.g. tank/drills), not a whole pool: each drill creates and destroys a scratch dataset under it").field_path(".root"))]
#[serde(rename_all = "camelCase")]
pub struct DrillDestination {
    /// The ZfsHost whose agent receives the drills.
    pub host: ObjectName,
    /// The scratch dataset drills are restored under (each into a new child, destroyed after
    /// the drill). It must exist on the host with the user property `zetaback.io:scratch=on`.
    pub root: DatasetName,
}

/// Recovery objectives of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Objectives {
    /// Recovery point objective: the newest restorable backup of each dataset is at most
    /// this old, e.g. 26h (no grace is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<DurationString>,
    /// Recovery time objective: the last restore drill of each dataset (`spec.drill`) took at
    /// most this long from its start to its verified end, e.g. 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<DurationString>,
}

/// Scheduled verification of stored backups: each stored stream is re-read and hashed by the
/// store at least once per `every` (counted from its creation or its last verification), at
/// most `rate` bytes per second. A stream whose sha256 or size no longer matches its manifest
/// is quarantined in the store: it is never restored from and never the newest backup, the
/// backups that depend on it are unrestorable, the dataset's next backup is a full, and the
/// dataset is a `Corrupt` violator until that full is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// How often each stored stream is re-read, e.g. 7d.
    pub every: DurationString,
    /// Bytes per second the store reads at most while verifying, e.g. 50Mi.
    #[serde(default = "default_verify_rate")]
    pub rate: ByteSizeString,
}

impl VerifySpec {
    /// The period and the rate in bytes per second.
    pub fn parsed(&self) -> Result<(std::time::Duration, u64), String> {
        let every = self
            .every
            .duration()
            .map_err(|e| format!("verify.every: {e}"))?;
        let rate = self.rate.bytes().map_err(|e| format!("verify.rate: {e}"))?;
        Ok((every, rate))
    }
}

fn default_verify_rate() -> ByteSizeString {
    ByteSizeString("50Mi".into())
}

/// Which datasets a policy covers: `include`/`exclude` name patterns (exclusion wins) and,
/// when `classes` is set, only datasets whose `zetaback.io:class` user property is one of
/// them (Zetaback's `com.omniti.labs.zetaback:class`). All conditions must hold: a dataset is
/// covered when its name is included, not excluded, and (if `classes` is set) its class is
/// listed. `""` in `classes` stands for "no class set".
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDatasets {
    #[serde(flatten)]
    pub patterns: DatasetSelector,
    /// Backup classes (values of the `zetaback.io:class` user property) this policy covers;
    /// `""` means datasets without a class. Unset or empty: every class, and none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(format!("self.all(c, c == '' || c.matches('{CLASS_PATTERN}'))")).message("classes are zetaback.io:class values: 1-63 letters, digits, '_', '.', ':' or '-', starting and ending with a letter or digit (\"\" selects datasets without a class)"))]
    pub classes: Vec<ClassName>,
}

impl std::ops::Deref for PolicyDatasets {
    type Target = DatasetSelector;
    fn deref(&self) -> &DatasetSelector {
        &self.patterns
    }
}

/// What a class name may look like (also checked by the controller).
pub const CLASS_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,61}[A-Za-z0-9])?$";

/// A backup class: the value of a dataset's `zetaback.io:class` user property (`""`: none).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct ClassName(#[schemars(length(max = 63))] pub String);

impl ClassName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClassName {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// How many finished BackupJobs are kept per dataset, as CronJob's
/// `successfulJobsHistoryLimit`/`failedJobsHistoryLimit`. Pending and Running jobs are never
/// deleted; failed jobs of an ongoing run of failures are kept (up to 8) whatever `failed`
/// says, so the retry backoff and the `LastJobFailed` violation still see the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobHistory {
    /// Succeeded jobs kept per dataset (at least 1: the newest success ends a failure run).
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    #[schemars(with = "i32")]
    pub successful: u32,
    /// Failed jobs kept per dataset (besides an ongoing run of failures).
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    #[schemars(with = "i32")]
    pub failed: u32,
}

fn default_history() -> u32 {
    1
}

impl Default for JobHistory {
    fn default() -> Self {
        Self {
            successful: default_history(),
            failed: default_history(),
        }
    }
}

fn default_grace() -> DurationString {
    DurationString("15m".into())
}

/// Hosts by name or by label selector (exactly one).
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.names) != has(self.selector)").message("hosts needs exactly one of names or selector"))]
#[serde(rename_all = "camelCase")]
pub struct HostSelector {
    /// ZfsHost names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub names: Option<Vec<ObjectName>>,
    /// A label selector over ZfsHosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Frequency and retention of full backups.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(keep_at_least_every()).message("keep must be at least every: a backup must be kept until the next one is due").field_path(".keep"))]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// How often a backup is due, e.g. 7d.
    pub every: DurationString,
    /// How long backups are kept: an age (30d) or COUNTxAGE bins (4x1w,12x30d).
    pub keep: RetentionString,
}

/// Frequency and retention of incremental backups, and what they are taken against.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(keep_at_least_every()).message("keep must be at least every: a backup must be kept until the next one is due").field_path(".keep"))]
#[serde(rename_all = "camelCase")]
pub struct IncrementalSchedule {
    /// How often an incremental is due, e.g. 1d.
    pub every: DurationString,
    /// How long incrementals are kept.
    pub keep: RetentionString,
    /// `lastFull` (Zetaback: each incremental is against the last full, so a restore needs at
    /// most two pieces) or `previous` (chained: smaller, a restore replays the chain).
    #[serde(default)]
    pub against: IncrementalBase,
}

/// What an incremental is taken against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IncrementalBase {
    #[default]
    LastFull,
    Previous,
}

/// The CEL rule "a plain-age keep is at least every" (grids are checked by span in the
/// controller, since CEL cannot parse them cheaply).
fn keep_at_least_every() -> String {
    format!(
        "!{} || !{} || {} >= {}",
        cel_is_duration("self.keep"),
        cel_is_duration("self.every"),
        cel_seconds("self.keep"),
        cel_seconds("self.every")
    )
}

/// When backups move to the archive area, and how long they stay there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// Backups older than this move to the archive area (`<root>/.archive/...`).
    pub after: DurationString,
    /// How long archived backups are kept.
    pub keep: RetentionString,
}

/// Where streams go: a directory on a ZfsHost (Zetaback's file layout), a dataset there
/// (replica mode, `zfs receive`), or an S3-compatible bucket (`objectStore`, no backup host:
/// the sources upload themselves). Exactly one of `path`, `dataset` and `objectStore`.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("[has(self.path), has(self.dataset), has(self.objectStore)].filter(x, x).size() == 1").message("target needs exactly one of path (store streams as files), dataset (receive into a pool) or objectStore (upload into an S3 bucket)"))]
#[x_kube(validation = Rule::new("has(self.objectStore) != has(self.host)").message("target.host names the backup host of a path or dataset target; an objectStore target has no backup host (the sources upload to the bucket), so give host exactly when path or dataset is set"))]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The ZfsHost whose agent stores the backups (for `path` and `dataset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<ObjectName>,
    /// A directory on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..') && !self.contains('//')").message("target.path must be an absolute path without '..' or '//'"))]
    #[x_kube(validation = Rule::new("!self.matches('[[:cntrl:]]')").message("target.path must not contain control characters (a newline, a tab, NUL): the agents pass it in an HTTP header"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// A dataset on that host that receives the streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetName>,
    /// An S3-compatible bucket the source agents upload into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreTarget>,
}

impl Target {
    /// What the `perTarget` cap counts jobs by: the backup host, or for an object store its
    /// endpoint, bucket and prefix (every policy writing there shares the slots).
    pub fn key(&self) -> String {
        match (&self.host, &self.object_store) {
            (Some(h), _) => h.0.clone(),
            (None, Some(o)) => format!(
                "s3:{}/{}/{}",
                o.endpoint.as_deref().unwrap_or(""),
                o.bucket,
                o.prefix.as_deref().unwrap_or("")
            ),
            (None, None) => String::new(),
        }
    }

    /// The backup host's name (`""` for an object-store target, which has none).
    pub fn host_name(&self) -> &str {
        self.host.as_ref().map_or("", ObjectName::as_str)
    }
}

/// An S3-compatible bucket: where, which credentials, and how objects are kept. Keys are laid
/// out as in a file store, under `prefix`: `<prefix>/<host>/<dataset, '/' as '+'>/<id>` and
/// `<id>.json` (its manifest, written last), `<prefix>/.archive/...` for archived backups.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreTarget {
    /// The S3 endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://seaweedfs-s3.storage:8333`. Unset: AWS S3 of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#@[:space:]]+/?$')").message("objectStore.endpoint must be an http:// or https:// URL with a host (and port) only, no path, query or credentials, e.g. https://s3.example.com:9000"))]
    pub endpoint: Option<String>,
    /// The bucket (it must exist: it is not created).
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$') && !self.contains('..')").message("objectStore.bucket must be an S3 bucket name: 3-63 lower-case letters, digits, '.' or '-', beginning and ending with a letter or digit"))]
    pub bucket: String,
    /// A key prefix under which this policy's backups live (no leading or trailing `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$') && !self.split('/').exists(p, p == '.' || p == '..' || p == '.archive')").message("objectStore.prefix must be path segments of letters, digits, '_', '.' or '-' separated by single '/', without a leading or trailing '/' and without '.', '..' or '.archive' segments"))]
    pub prefix: Option<String>,
    /// The region requests are signed for (SeaweedFS and most S3-compatible servers accept
    /// any; `us-east-1` by default).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9-]+$')").message("objectStore.region must be lower-case letters, digits and '-', e.g. us-east-1"))]
    pub region: String,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`) instead of virtual-hosted style
    /// (`<bucket>.<endpoint>/<key>`); most self-hosted servers need `true`.
    #[serde(default)]
    pub path_style: bool,
    /// The Secret (in the policy's namespace) with the controller's credentials for the
    /// bucket, keys `accessKeyId` and `secretAccessKey`: it lists, reads, archives and deletes.
    /// Source agents use their own, narrower credentials (see the agent's
    /// `--object-store-credentials`): they can write only their host's prefix.
    pub credentials_secret: SecretName,
    /// The storage class archived backups are copied to (e.g. `GLACIER_IR`, `COLD`); unset:
    /// archived backups keep the class they were written with and only move to the archive
    /// prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z][A-Z0-9_]*$')").message("objectStore.archiveStorageClass must be an S3 storage class name in capitals, e.g. STANDARD_IA or GLACIER_IR"))]
    pub archive_storage_class: Option<String>,
    /// S3 Object Lock: every object is written with a retention of this long (compliance
    /// mode), so nobody, the controller included, can delete it earlier. The bucket must have
    /// Object Lock enabled. Retention never tries to delete a backup before its lock expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_for: Option<DurationString>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// The name of a Secret in the policy's namespace.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    /// The Secret's name.
    pub name: ObjectName,
}

/// Stream compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    None,
    #[default]
    Zstd,
}

/// Limits on how many jobs run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// This policy's jobs at once on one source host.
    #[serde(default = "default_per_host")]
    #[schemars(range(min = 1, max = 64))]
    #[schemars(with = "i32")]
    pub per_host: u32,
    /// Jobs at once into the target host, counted over every policy that sends to it: a
    /// policy starts a job only while fewer than its `perTarget` BackupJobs (its own and other
    /// policies', Pending or Running, whose `target.host` is this host, in the namespaces the
    /// controller watches) are in flight. Policies sharing a backup host share its slots, each
    /// under its own cap. Due backups start oldest-due first within the caps. Two policies
    /// deciding at the same instant may briefly exceed it by their own new jobs.
    #[serde(default = "default_per_target")]
    #[schemars(range(min = 1, max = 256))]
    #[schemars(with = "i32")]
    pub per_target: u32,
}

fn default_per_host() -> u32 {
    1
}
fn default_per_target() -> u32 {
    4
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            per_host: default_per_host(),
            per_target: default_per_target(),
        }
    }
}

/// The compliance answer and a compact summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hosts matched.
    #[serde(default)]
    pub hosts: i32,
    /// Datasets covered.
    #[serde(default)]
    pub datasets: i32,
    /// Datasets not backed up within the policy.
    #[serde(default)]
    pub violators: i32,
    /// The violators (the first 50; `violators` counts all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub violations: Vec<Violation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0))]
    pub bytes_stored: Option<u64>,
    /// The `requestedAt` of the last `zetaback.io/backup-now` request acted on: recorded once
    /// every dataset it selected has had its forced job created (or has a backup of the asked
    /// kind taken since the request). Until then the request stays pending: datasets waiting
    /// for a slot under the caps start one after another, a host that is unreachable gets its
    /// backup when it is back; a paused host's datasets are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_now_handled: Option<Time>,
    /// When the controller last evaluated the policy. Written with every status change and
    /// otherwise at least every 5 minutes (the controller's `--status-heartbeat`), so a status
    /// older than a few of those means the controller is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Time>,
    /// The `requestedAt` of the last `zetaback.io/verify-now` request the controller acted on
    /// (asked its store to verify the selected datasets' backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_now_handled: Option<Time>,
    /// The `requestedAt` of the newest `zetaback.io/drill-now` request answered, with every
    /// older one: each dataset they selected that has a restorable backup has had a drill
    /// started for them (its Restore carries `zetaback.io/drill-now-request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_now_handled: Option<Time>,
    /// Per dataset with `spec.verify`: when all its stored backups were last verified, and
    /// the backups found corrupt (quarantined). Datasets with quarantined backups first; at
    /// most 200 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub verification: Vec<DatasetVerification>,
    /// Per dataset: its recovery point now (the age of the newest restorable backup) and, with
    /// `spec.drill`, its last restore drill and measured recovery time. Datasets whose last
    /// drill failed first; at most 200 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub recovery: Vec<DatasetRecovery>,
    /// Per covered dataset with a stored backup: the newest backup the controller saw in the
    /// store's catalogue (or, while that one is missing and the policy still keeps it, the
    /// one that went missing). What `BackupMissing` compares the catalogue with: unlike a
    /// BackupJob (garbage-collected, deletable), it stays as long as the dataset is covered.
    /// At most 5000 entries (datasets beyond rely on their newest succeeded BackupJob).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub newest_stored: Vec<StoredBackupSeen>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}

/// At most this many datasets are listed in `status.newestStored`.
pub const MAX_LISTED_NEWEST_STORED: usize = 5000;

/// The newest backup of one dataset seen in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredBackupSeen {
    pub host: String,
    pub dataset: String,
    /// The backup's id in the store.
    pub id: String,
    #[serde(rename = "type")]
    pub backup_type: crate::api::backup_job::BackupType,
    /// When its snapshot was taken.
    pub created: Time,
}

/// At most this many datasets are listed in `status.recovery`.
pub const MAX_LISTED_RECOVERY: usize = 200;

/// The recovery point and time of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRecovery {
    pub host: String,
    pub dataset: String,
    /// When the newest restorable backup was taken: the recovery point now (its age is
    /// compared with `objectives.rpo`; not written as an age, which would change the status
    /// every second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_restorable: Option<Time>,
    /// The measured recovery time of the last successful drill, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    /// When the last successful drill finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_drill: Option<Time>,
    /// The newest drill (running or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillRecord>,
    /// When the next drill of the dataset is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drill: Option<Time>,
}

/// One restore drill, as its Restore recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillRecord {
    /// The drill's Restore (in the policy's namespace).
    pub restore: String,
    /// The backup restored (empty: the newest).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup: String,
    pub result: DrillResult,
    pub started_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// From the drill's start to its verified end, in seconds (a successful drill only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    /// Stream bytes restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a drill went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DrillResult {
    Running,
    Succeeded,
    Failed,
}

/// At most this many datasets are listed in `status.verification`.
pub const MAX_LISTED_VERIFICATIONS: usize = 200;

/// The verification state of one dataset's stored backups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVerification {
    pub host: String,
    pub dataset: String,
    /// Every stored backup of the dataset (quarantined ones aside) was verified at or after
    /// this time; unset while one has never been verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<Time>,
    /// When the next stored backup is due to be verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verify: Option<Time>,
    /// Stored backups due to be verified now (asked of the store, not yet found verified);
    /// while a `verify-now` request covers the dataset, those the request still waits for.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(with = "i32")]
    pub pending: u32,
    /// The dataset's quarantined backups (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub quarantined: Vec<QuarantinedBackup>,
}

/// A backup whose stored stream no longer matched its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedBackup {
    /// The backup's id in the store.
    pub backup: String,
    /// When the mismatch was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<Time>,
    /// What did not match.
    pub problem: String,
    /// The stored backups whose chain needs this one (unrestorable while it is quarantined).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub dependents: Vec<String>,
}

/// How often the controller refreshes `status.lastEvaluated` of a policy whose status did not
/// change otherwise. One status write per policy per heartbeat (1000 policies: about 3 writes a
/// second) bounds the load on the apiserver and on everyone watching BackupPolicies, and the
/// write does not start a reconcile loop: the reconcile it may trigger finds a fresh stamp and
/// writes nothing. A reconcile runs at least every minute, so the stamp is at most a heartbeat
/// plus a minute old while the controller runs.
pub const STATUS_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(300);

/// A dataset that is not backed up within its policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub host: String,
    pub dataset: String,
    pub reason: ViolationReason,
    /// Since when the dataset has been in violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a dataset violates its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ViolationReason {
    /// No full backup within `full.every` (+ grace).
    NoFullWithin,
    /// No backup of any kind within `incremental.every` (+ grace).
    NoBackupWithin,
    /// The last backup job failed.
    LastJobFailed,
    /// The host's agent has not reported.
    HostUnreachable,
    /// Nothing is known of the host's datasets: no ZfsHost of that name exists, its agent never
    /// reported, or its last report is stale and listed none of the policy's datasets (the
    /// violation's `dataset` is empty: it stands for all of them).
    HostNotReporting,
    /// The newest stored backup cannot be restored: a backup of its chain is not stored (or
    /// the store's manifests of the dataset do not form a catalogue at all).
    ChainBroken,
    /// The backup the newest succeeded job stored is gone from the store, though the policy
    /// still keeps it.
    BackupMissing,
    /// A stored stream no longer matches its manifest (found by `spec.verify`): it is
    /// quarantined, and no full backup was stored since. Ends when one is.
    Corrupt,
    /// The newest restorable backup is older than `objectives.rpo`.
    RpoMissed,
    /// The dataset's last restore drill failed (`spec.drill`).
    DrillFailed,
    /// No restore drill of the dataset succeeded within `drill.every` (+ grace).
    NoDrillWithin,
    /// The last successful restore drill took longer than `objectives.rto`.
    RtoMissed,
}

/// The annotation `kubectl zetaback backup` sets to ask for a backup now.
pub const BACKUP_NOW_ANNOTATION: &str = "zetaback.io/backup-now";
/// The annotation on a BackupJob that a `backup-now` request forced: the request's
/// `requestedAt` (RFC 3339). A request is handled once every dataset it selected has one.
pub const BACKUP_NOW_REQUEST_ANNOTATION: &str = "zetaback.io/backup-now-request";
/// The annotation `kubectl zetaback verify` sets to ask for the verification of stored
/// backups now: a [`VerifyNowRequest`] as JSON (a newer request replaces an older one).
pub const VERIFY_NOW_ANNOTATION: &str = "zetaback.io/verify-now";

/// The value of [`VERIFY_NOW_ANNOTATION`]: which datasets (all when unset) and when it was
/// asked; every stored backup of them not verified since is re-read by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyNowRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    pub requested_at: jiff::Timestamp,
}

impl VerifyNowRequest {
    /// Whether the request covers this dataset.
    pub fn selects(&self, host: &str, dataset: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
            && self.dataset.as_deref().is_none_or(|d| d == dataset)
    }
}

/// The annotation `kubectl zetaback drill` sets to ask for restore drills now: a JSON list of
/// [`DrillNowRequest`]s, oldest first (requests queue up like `backup-now`'s; the controller
/// records `status.drillNowHandled`).
pub const DRILL_NOW_ANNOTATION: &str = "zetaback.io/drill-now";
/// The annotation on a drill Restore started for `drill-now` requests: the `requestedAt` of
/// the newest request it answers (RFC 3339); it answers the older ones of its dataset too.
pub const DRILL_NOW_REQUEST_ANNOTATION: &str = "zetaback.io/drill-now-request";

/// One request in the value of [`DRILL_NOW_ANNOTATION`]: which datasets (all when unset) and
/// when it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillNowRequest {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
    pub requested_at: jiff::Timestamp,
}

impl DrillNowRequest {
    /// Whether the request covers this dataset.
    pub fn selects(&self, host: &str, dataset: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
            && self.dataset.as_deref().is_none_or(|d| d == dataset)
    }
}

/// The requests in a [`DRILL_NOW_ANNOTATION`] value.
pub fn parse_drill_now(value: &str) -> Result<Vec<DrillNowRequest>, serde_json::Error> {
    serde_json::from_str(value)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The annotation that asks the controller to reconcile (retention, archive) now.
pub const RECONCILE_NOW_ANNOTATION: &str = "zetaback.io/reconcile-now";

/// One request in the value of [`BACKUP_NOW_ANNOTATION`]: which datasets (all when unset),
/// which kind (the policy decides when unset), and when it was asked (a request is acted on
/// once). The annotation holds a JSON list of them (requests queue up; see
/// [`parse_backup_now`]); a single object is read as a list of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupNowRequest {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default, rename = "type")]
    pub backup_type: Option<super::BackupType>,
    pub requested_at: jiff::Timestamp,
}

/// Why the value of [`BACKUP_NOW_ANNOTATION`] cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the {BACKUP_NOW_ANNOTATION} annotation is neither a request nor a list of requests: {0}")]
pub struct BackupNowError(#[from] serde_json::Error);

/// The requests in a [`BACKUP_NOW_ANNOTATION`] value: a JSON list, or one object (as written
/// before requests queued).
pub fn parse_backup_now(value: &str) -> Result<Vec<BackupNowRequest>, BackupNowError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<BackupNowRequest>),
        One(BackupNowRequest),
    }
    Ok(match serde_json::from_str(value)? {
        OneOrMany::Many(list) => list,
        OneOrMany::One(one) => vec![one],
    })
}

impl BackupPolicySpec {
    /// Validates what the schema's CEL cannot: retention grids must span at least `every`.
    pub fn check(&self) -> Result<(), String> {
        for (what, every, keep) in [
            ("full", &self.full.every, &self.full.keep),
            (
                "incremental",
                &self.incremental.every,
                &self.incremental.keep,
            ),
        ] {
            let every = every.duration().map_err(|e| format!("{what}.every: {e}"))?;
            let keep = keep.retention().map_err(|e| format!("{what}.keep: {e}"))?;
            if keep.span() < every {
                return Err(format!(
                    "{what}.keep spans less than {what}.every: a backup must be kept until the next one is due"
                ));
            }
        }
        if let Some(v) = &self.verify {
            v.parsed()?;
        }
        if let Some(rpo) = self.objectives.as_ref().and_then(|o| o.rpo.as_ref()) {
            rpo.duration().map_err(|e| format!("objectives.rpo: {e}"))?;
        }
        if let Some(rto) = self.objectives.as_ref().and_then(|o| o.rto.as_ref()) {
            rto.duration().map_err(|e| format!("objectives.rto: {e}"))?;
        }
        if let Some(d) = &self.drill {
            d.every
                .duration()
                .map_err(|e| format!("drill.every: {e}"))?;
        }
        Ok(())
    }
}
