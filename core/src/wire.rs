//! The backup store's HTTP protocol, between agents and from the controller and CLI: header
//! names, the routes and the paths that reach them ([`routes`]), query parameters and the
//! JSON answers.

pub mod routes;

use serde::{Deserialize, Serialize};

/// The snapshot sent (short name).
pub const H_SNAPSHOT: &str = "x-zetaback-snapshot";
/// The base snapshot of an incremental (short name).
pub const H_BASE_SNAPSHOT: &str = "x-zetaback-base-snapshot";
/// `none` or `zstd`: how the body is compressed.
pub const H_COMPRESSION: &str = "x-zetaback-compression";
/// Replica mode: receive into `<this dataset>/<host>/<dataset>` instead of storing a file.
pub const H_RECEIVE_INTO: &str = "x-zetaback-receive-into";
/// File mode: the store path the job expects (must be this agent's store root).
pub const H_STORE_PATH: &str = "x-zetaback-store-path";
/// Replica mode, OpenZFS: the body is `zfs send -t <this token>`, resuming an interrupted
/// resumable receive (the token the target reported for its dataset).
pub const H_RESUME_TOKEN: &str = "x-zetaback-resume-token";
/// `true`: replica mode may replace the receiving dataset (`zfs receive -F`); refused unless
/// the target agent allows it.
pub const H_FORCE: &str = "x-zetaback-force";
/// File mode: the BackupPolicy that made the backup, `<namespace>/<name>` (recorded in the
/// manifest: retention deletes only its own policy's backups).
pub const H_POLICY: &str = "x-zetaback-policy";
/// The sha256 of the body: a header on downloads (and accepted as an upload trailer).
pub const H_SHA256: &str = "x-zetaback-sha256";
/// On a download request: `sha256` when the reader checks the body against the manifest's
/// sha256 itself (and applies nothing unchecked), so the store need not hash it too.
pub const H_READER_VERIFIES: &str = "x-zetaback-reader-verifies";
/// The transit check of an upload: xxh3-128 of the body, as a trailer (see the agent's
/// `checksum` module).
pub const H_XXH3: &str = "x-zetaback-xxh3";
/// `true`: the body was sent raw (`zfs send -w`, an encrypted dataset); the manifest records it.
pub const H_RAW: &str = "x-zetaback-raw";
/// An upload whose length is not known in advance (chunked): the sender's estimate of its
/// size in bytes (`zfs send -nP`, before compression). Not a limit: the store holds that much
/// of its free space for the stream while it is written, so that streams admitted meanwhile
/// do not count on the same bytes.
pub const H_EXPECTED_BYTES: &str = "x-zetaback-expected-bytes";

/// The answer to a successful `PUT /v1/streams/...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutResponse {
    /// The stored backup's id (`<ts>.full`, ...).
    pub backup_id: String,
    /// Bytes received (as sent: compressed if the body was).
    pub bytes: u64,
    /// sha256 of the bytes received (what the manifest records); none for a replica (see
    /// [`crate::store::Manifest::sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// xxh3-128 of the bytes received (the transit check; the sender compares it with its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// The sender's checksum trailer was present and matched.
    pub verified: bool,
    /// Replica mode: the dataset received into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The answer to `GET /v1/resume-token/{host}/{dataset}?into=ROOT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeTokenResponse {
    /// The token an interrupted resumable receive left on the replica, if any.
    pub token: Option<String>,
}

/// The query of [`routes::CATALOGUE`]: `?host=H` limits the catalogue to one source host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueQuery {
    pub host: Option<String>,
}

/// The query of [`routes::RESUME_TOKEN`]: `?into=ROOT`, the replica root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeTokenQuery {
    pub into: String,
}

/// The body of `POST /v1/verify` ([`routes::VERIFY`], admin token): re-read these stored
/// backups of one dataset and check each against its manifest, at most `rate` bytes per
/// second. Queued; answered at once with [`VerifyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    pub host: String,
    pub dataset: String,
    /// Backup ids (stream ids) of the dataset.
    pub ids: Vec<String>,
    /// Bytes per second (0: unlimited).
    pub rate: u64,
    /// Skip a backup whose last good verification is at or after this time (so a request
    /// repeated before the asker saw the result reads nothing twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_verified_since: Option<jiff::Timestamp>,
}

/// The answer to `GET /v1/verify` (and to a `POST`): what the store's verifier is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyStatus {
    /// The backup being read now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<VerifyCurrent>,
    /// Backups waiting (not counting the current one).
    pub queued: usize,
    /// Backups verified since the agent started (good or not).
    pub verified: u64,
    /// Of those, found corrupt (quarantined).
    pub corrupt: u64,
    /// Bytes read by verification since the agent started.
    pub bytes_read: u64,
}

/// The backup the verifier is reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyCurrent {
    pub host: String,
    pub dataset: String,
    pub id: String,
    /// Bytes read so far.
    pub done: u64,
    /// The stream's size.
    pub total: u64,
}
