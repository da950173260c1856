//! Running one backup: take (or reuse) the snapshot, `zfs send` it (incremental against the
//! base where asked) and stream it to the target agent; succeed only when the target confirmed
//! the bytes and the transit check (the sha256 reported is the one the target recorded). No
//! Kubernetes here: the runner resolves the target and records status.
//!
//! Backup ids are the snapshots' creation times in seconds (the store layout's `<ts>.full`,
//! `<ts>.incremental.<base-ts>`), so a new snapshot that falls in the second of its base or of
//! an earlier zetaback snapshot is taken again in the next second ([`must_retake`]). A run
//! that fails destroys the snapshot it made, unless the snapshot may be in use
//! ([`snapshot_may_be_in_use`]: then the job's retry reuses it, or pruning removes it later).

use std::time::Instant;

use tracing::{info, warn};
use zetaback_core::api::{BackupJobSpec, BackupType};
use zetaback_core::names::{validate_dataset, validate_snapshot_name};
use zetaback_core::store::StreamId;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;

use crate::answer_check;
use crate::base_keep::{self, Base};
use crate::job_progress::JobProgress;
use crate::transfer::{self, Endpoint, TransferError, Upload};
use crate::zfs::resume;
use crate::zfs::{Capability, SendBase, SendRequest, SnapshotInfo, Zfs, ZfsError};

/// How a job ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub backup_id: String,
    pub bytes: u64,
    /// The stream's sha256 as the target recorded it (none for a replica, whose stream
    /// `zfs receive` checked).
    pub sha256: Option<String>,
    pub bytes_per_second: u64,
    /// Replica mode: the dataset received into.
    pub replica: Option<String>,
    /// What `zfs send -nP` estimated before sending (None where it cannot: zfs-fuse).
    pub estimated_bytes: Option<u64>,
    /// Stream bytes read from `zfs send` (before the transfer's compression; the unit of the
    /// estimate; for a resumed send, only what was re-sent).
    pub stream_bytes: u64,
}

/// Why a job failed (the message goes into the job's status).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    ObjectStore(#[from] zetaback_objstore::ObjStoreError),
}

/// Settings shared by every job of this agent.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Bytes per second, 0 = unlimited.
    pub bandwidth_limit: u64,
    /// Destroy our own snapshots that can no longer be a base (older than the one kept).
    pub prune_snapshots: bool,
    /// Give up on a transfer that made no progress for this long.
    pub idle_timeout: std::time::Duration,
    /// Once the whole stream is sent, how long the target may take to answer
    /// ([`transfer::Upload::answer_timeout`]); then its catalogue is asked
    /// ([`crate::answer_check`]).
    pub answer_timeout: std::time::Duration,
    /// Mutual TLS to the target agents (this agent's certificate and the zetaback CA; each
    /// target must prove it is the node its ZfsHost names); `None`: plaintext HTTP (the
    /// explicit `--insecure-plaintext` mode).
    pub tls: Option<std::sync::Arc<zetaback_core::peer_tls::PeerTls>>,
    /// This host's own keys for object-store targets (`--object-store-credentials`), read at
    /// each job so that rotated keys take effect without a restart.
    pub object_store_credentials: Option<std::path::PathBuf>,
}

/// Refuses a job whose dataset the host does not offer: its ZfsHost's `spec.datasets`
/// (include, then exclude) must select it. A BackupJob is not trusted to name any dataset of
/// the host; the agent checks again what the controller decided.
pub fn check_offered(
    host: &str,
    selector: &zetaback_core::api::DatasetSelector,
    dataset: &str,
) -> Result<(), JobError> {
    let matcher = zetaback_core::selection::DatasetMatcher::new(selector).map_err(|e| {
        JobError::Invalid(format!("host {host}'s spec.datasets cannot be read: {e}"))
    })?;
    if matcher.matches(dataset) {
        Ok(())
    } else {
        Err(JobError::Invalid(format!(
            "dataset {dataset} is not offered by host {host} (its ZfsHost's spec.datasets include/exclude do not select it)"
        )))
    }
}

/// The stream id of a job from its snapshots' creation times.
pub fn stream_id(
    backup_type: BackupType,
    ts: i64,
    base_ts: Option<i64>,
) -> Result<StreamId, JobError> {
    match (backup_type, base_ts) {
        (BackupType::Full, _) => Ok(StreamId::Full { ts }),
        (BackupType::Incremental, Some(base_ts)) if base_ts < ts => {
            Ok(StreamId::Incremental { ts, base_ts })
        }
        (BackupType::Incremental, Some(_)) => Err(JobError::Invalid(
            "the base snapshot is not older than the snapshot (taken in the same second?)".into(),
        )),
        (BackupType::Incremental, None) => Err(JobError::Invalid(
            "an incremental needs spec.baseSnapshot".into(),
        )),
    }
}

/// Validates what reaches `zfs` and the store.
pub fn check_spec(spec: &BackupJobSpec) -> Result<(), JobError> {
    let invalid = |e: zetaback_core::names::NameError| JobError::Invalid(e.to_string());
    validate_dataset(&spec.dataset.0).map_err(invalid)?;
    validate_snapshot_name(&spec.snapshot).map_err(invalid)?;
    match (&spec.backup_type, &spec.base_snapshot) {
        (BackupType::Incremental, Some(b)) => validate_snapshot_name(b).map_err(invalid)?,
        (BackupType::Incremental, None) => {
            return Err(JobError::Invalid(
                "an incremental needs spec.baseSnapshot".into(),
            ));
        }
        (BackupType::Full, _) => {}
    }
    if spec.intermediates && spec.backup_type != BackupType::Incremental {
        return Err(JobError::Invalid(
            "intermediates (zfs send -I) is only for an incremental".into(),
        ));
    }
    let targets = [
        spec.target.path.is_some(),
        spec.target.dataset.is_some(),
        spec.target.object_store.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        return Err(JobError::Invalid(
            "target needs exactly one of path, dataset and objectStore".into(),
        ));
    }
    Ok(())
}

/// Whether a snapshot taken at `taken` (seconds) must be taken again in a later second: its
/// backup id (`<ts>.full`, `<ts>.incremental.<base-ts>`) would not be later than `floor`, the
/// newest of the base and the other snapshots zetaback made of the dataset (two backups of one
/// second would have one id, and an incremental must be later than its base).
pub fn must_retake(taken: i64, floor: Option<i64>) -> bool {
    floor.is_some_and(|f| taken <= f)
}

/// Whether a failed job may have left its snapshot in use, so that it must stay: the target
/// may have stored the stream before the connection broke (its answer was lost), a stored
/// stream did not match what was sent (a backup of it exists), or a replica receive on a host
/// that resumes keeps a partial state that refers to it. Every other failure is certain that
/// the snapshot is not used, and it is destroyed.
pub fn snapshot_may_be_in_use(error: &JobError, resumable_replica: bool) -> bool {
    match error {
        JobError::Transfer(
            TransferError::Connection(_)
            | TransferError::Mismatch { .. }
            | TransferError::Unanswered { .. },
        ) => true,
        JobError::Transfer(TransferError::Source(_) | TransferError::Read(_)) => resumable_replica,
        // The manifest's PUT may have reached the bucket before its answer was lost.
        JobError::ObjectStore(zetaback_objstore::ObjStoreError::Request { op: "PUT", .. }) => true,
        _ => false,
    }
}

/// How many times a snapshot is taken again to get a second of its own.
const RETAKES: usize = 3;

/// Runs one backup of `spec` from the local host `host` to `endpoint`. A snapshot this run
/// made and did not use is destroyed whenever it fails (see [`snapshot_may_be_in_use`]).
pub async fn run(
    zfs: &Zfs,
    host: &str,
    spec: &BackupJobSpec,
    policy: Option<&str>,
    endpoint: &Endpoint,
    settings: &JobSettings,
) -> Result<JobOutcome, JobError> {
    run_with_progress(
        zfs,
        host,
        spec,
        policy,
        endpoint,
        settings,
        &JobProgress::new(),
    )
    .await
}

/// [`run`], telling `progress` the estimate and every stream byte sent.
pub async fn run_with_progress(
    zfs: &Zfs,
    host: &str,
    spec: &BackupJobSpec,
    policy: Option<&str>,
    endpoint: &Endpoint,
    settings: &JobSettings,
    progress: &JobProgress,
) -> Result<JobOutcome, JobError> {
    check_spec(spec)?;
    let dataset = spec.dataset.0.as_str();
    // The base first: a job whose base is gone (no snapshot, no bookmark) fails before it
    // makes anything.
    let base = match &spec.base_snapshot {
        Some(b) if spec.backup_type == BackupType::Incremental => {
            Some(base_keep::resolve(zfs, dataset, b).await?)
        }
        _ => None,
    };
    let (snap, made) =
        take_snapshot(zfs, dataset, &spec.snapshot, base.as_ref().map(|b| &b.info)).await?;
    let result = back_up(
        zfs,
        host,
        spec,
        policy,
        endpoint,
        settings,
        &snap,
        base.as_ref(),
        progress,
    )
    .await;
    match result {
        Ok(outcome) => {
            // The snapshot sent is the base of the next incremental: held and bookmarked,
            // the previous base released.
            base_keep::keep_as_base(zfs, dataset, &snap).await;
            if settings.prune_snapshots {
                // Keep the base of the next incremental: for a full, the snapshot sent; for an
                // incremental, its base (the last full or the previous one) and the snapshot sent.
                let keep_from = base.as_ref().map_or(snap.creation, |b| b.info.creation);
                prune(zfs, dataset, keep_from).await;
            }
            Ok(outcome)
        }
        Err(e) => {
            let resumable_replica =
                spec.target.dataset.is_some() && zfs.capabilities().has(Capability::ResumableSend);
            if made && !snapshot_may_be_in_use(&e, resumable_replica) {
                destroy_unused(zfs, dataset, &snap.name).await;
            } else if made {
                info!(snapshot = %snap.full_name(), "kept the snapshot: the stream may have been stored (a retry reuses it)");
            }
            Err(e)
        }
    }
}

/// Destroys a snapshot this run made and did not use (a failure here is logged: the snapshot
/// is zetaback's, so a later prune removes it).
async fn destroy_unused(zfs: &Zfs, dataset: &str, name: &str) {
    match zfs.destroy_own_snapshot(dataset, name).await {
        Ok(()) => {
            info!(snapshot = %format!("{dataset}@{name}"), "destroyed the snapshot of a failed backup")
        }
        Err(e) => warn!(error = %e, "could not destroy the unused snapshot {dataset}@{name}"),
    }
}

/// Takes the job's snapshot, or reuses the one an earlier attempt of this job made; returns
/// it and whether this call made it. A new snapshot is always later (in whole seconds) than
/// the base and every other snapshot zetaback made of the dataset: one that falls in the same
/// second is destroyed and taken again in the next second.
async fn take_snapshot(
    zfs: &Zfs,
    dataset: &str,
    name: &str,
    base: Option<&SnapshotInfo>,
) -> Result<(SnapshotInfo, bool), JobError> {
    let base_ts = base.map(|b| b.creation);
    match zfs.snapshot_info(dataset, name).await {
        Ok(s) if s.managed && !must_retake(s.creation, base_ts) => {
            info!(snapshot = %s.full_name(), "reusing the snapshot of an earlier attempt");
            return Ok((s, false));
        }
        Ok(s) if s.managed => {
            // An earlier attempt's snapshot in its base's second: never usable, never stored.
            warn!(snapshot = %s.full_name(), "taking again the snapshot of an earlier attempt: it is not later than its base");
            zfs.destroy_own_snapshot(dataset, name).await?;
        }
        Ok(s) => {
            return Err(JobError::Invalid(format!(
                "{} exists and was not made by zetaback",
                s.full_name()
            )));
        }
        Err(_) => {}
    }
    let others = zfs
        .inventory(Some(dataset))
        .await?
        .snapshots_of(dataset)
        .filter(|s| s.managed && s.name != name)
        .map(|s| s.creation)
        .max();
    let floor = base_ts.max(others);
    for _ in 0..RETAKES {
        zfs.snapshot(dataset, name).await?;
        let snap = match zfs.snapshot_info(dataset, name).await {
            Ok(s) => s,
            Err(e) => {
                destroy_unused(zfs, dataset, name).await;
                return Err(e.into());
            }
        };
        if !must_retake(snap.creation, floor) {
            return Ok((snap, true));
        }
        info!(snapshot = %snap.full_name(), creation = snap.creation, ?floor, "taken in the second of an earlier snapshot: taking it again in the next second");
        zfs.destroy_own_snapshot(dataset, name).await?;
        if let Some(f) = floor
            && !wait_past(f).await
        {
            return Err(JobError::Invalid(format!(
                "an earlier snapshot of {dataset} or its base is dated {f}, in the future of this host's clock: not taking {name} before it"
            )));
        }
    }
    Err(JobError::Invalid(format!(
        "could not take {dataset}@{name} later than its base or the previous backup (the clock does not move?)"
    )))
}

/// The longest wait for the clock to pass an earlier snapshot's second (more means the clock
/// went back: not waited for).
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Sleeps until the wall clock is past the second `ts`; false (without sleeping) when that
/// is more than [`MAX_WAIT`] away.
async fn wait_past(ts: i64) -> bool {
    let now = jiff::Timestamp::now();
    let Ok(target) = jiff::Timestamp::from_second(ts.saturating_add(1)) else {
        return false;
    };
    match std::time::Duration::try_from(target.duration_since(now)) {
        Ok(d) if d > MAX_WAIT => false,
        Ok(d) => {
            tokio::time::sleep(d + std::time::Duration::from_millis(20)).await;
            true
        }
        Err(_) => true, // already past
    }
}

/// Holds the snapshot (and its base, unless that is a bookmark), sends it, releases the holds.
#[allow(clippy::too_many_arguments)]
async fn back_up(
    zfs: &Zfs,
    host: &str,
    spec: &BackupJobSpec,
    policy: Option<&str>,
    endpoint: &Endpoint,
    settings: &JobSettings,
    snap: &SnapshotInfo,
    base: Option<&Base>,
    progress: &JobProgress,
) -> Result<JobOutcome, JobError> {
    let dataset = spec.dataset.0.as_str();
    let id = stream_id(
        spec.backup_type,
        snap.creation,
        base.map(|b| b.info.creation),
    )?;
    let holds = zfs.capabilities().has(Capability::Holds);
    let mut held = Vec::new();
    if holds {
        let held_base = base.filter(|b| !b.bookmark).map(|b| &b.info);
        for s in std::iter::once(snap).chain(held_base) {
            match zfs.hold(dataset, &s.name, false).await {
                Ok(()) => held.push(s.name.clone()),
                Err(e) => warn!(error = %e, "could not hold {}", s.full_name()),
            }
        }
    }
    let result = send_and_upload(
        zfs, host, spec, policy, endpoint, settings, id, base, progress,
    )
    .await;
    for name in held {
        if let Err(e) = zfs.hold(dataset, &name, true).await {
            warn!(error = %e, "could not release the hold on {dataset}@{name}");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn send_and_upload(
    zfs: &Zfs,
    host: &str,
    spec: &BackupJobSpec,
    policy: Option<&str>,
    endpoint: &Endpoint,
    settings: &JobSettings,
    id: StreamId,
    base: Option<&Base>,
    progress: &JobProgress,
) -> Result<JobOutcome, JobError> {
    let dataset = spec.dataset.0.clone();
    let raw = zfs.must_send_raw(&dataset).await?;
    if raw {
        info!(%dataset, "the dataset is encrypted: sending it raw (zfs send -w), the key stays on this host");
    }
    let req = SendRequest {
        dataset: dataset.clone(),
        snapshot: spec.snapshot.clone(),
        base: base.map(|b| SendBase {
            name: b.info.name.clone(),
            intermediates: spec.intermediates,
            bookmark: b.bookmark,
        }),
        compressed: false,
        raw,
        estimate: false,
    };
    // The estimate only feeds progress: a host that cannot make one (zfs-fuse) or a failed
    // estimate sends all the same, without a total or an ETA.
    match zfs.estimate(&req).await {
        Ok(Some(estimate)) => {
            info!(estimate, "estimated stream size (zfs send -nP)");
            progress.set_estimate(estimate);
        }
        Ok(None) => info!("no stream size estimate on this host: progress without a total"),
        Err(e) => warn!(error = %e, "the stream size estimate failed: progress without a total"),
    }
    let base = base.map(|b| b.info.name.clone());
    if let Some(target) = &spec.target.object_store {
        return crate::objstore_job::send(
            zfs, host, spec, policy, settings, target, &req, id, base, progress,
        )
        .await;
    }
    let up = Upload {
        host: host.to_owned(),
        dataset,
        id,
        snapshot: spec.snapshot.clone(),
        base_snapshot: base,
        compression: spec.compression,
        receive_into: spec.target.dataset.as_ref().map(|d| d.0.clone()),
        store_path: spec.target.path.clone(),
        bandwidth_limit: settings.bandwidth_limit,
        idle_timeout: settings.idle_timeout,
        answer_timeout: settings.answer_timeout,
        resume_token: None,
        policy: policy.map(str::to_owned),
        raw,
    };
    let sending = answer_check::Sending {
        host,
        dataset: &req.dataset,
        id: &id,
        receive_into: spec.target.dataset.as_ref().map(|d| d.0.as_str()),
    };
    let started = Instant::now();
    if settings.tls.is_some() && endpoint.tls.is_none() {
        // Never plaintext, nor TLS to whoever answers, when TLS is on.
        return Err(JobError::Invalid(format!(
            "TLS is on but the target {} names no peer to verify",
            endpoint.base
        )));
    }
    let client = transfer::client_for(endpoint);
    let uploaded = match send_with(&client, endpoint, zfs, &req, up, progress).await {
        // The target may have stored it all the same: accepted if it stored exactly that.
        Err(JobError::Transfer(e @ TransferError::Unanswered { .. })) => {
            warn!(error = %e, "asking the target whether it stored the backup");
            let window = settings.answer_timeout.min(answer_check::MAX_CHECK_WINDOW);
            let response = answer_check::confirm(&client, endpoint, &sending, e, window).await?;
            transfer::Uploaded {
                sent_bytes: response.bytes,
                sent_xxh3: response.xxh3.clone().unwrap_or_default(),
                response,
            }
        }
        other => other?,
    };
    let secs = started.elapsed().as_secs_f64().max(0.001);
    Ok(JobOutcome {
        backup_id: uploaded.response.backup_id,
        bytes: uploaded.sent_bytes,
        sha256: uploaded.response.sha256,
        bytes_per_second: (uploaded.sent_bytes as f64 / secs) as u64,
        replica: uploaded.response.replica,
        estimated_bytes: progress.estimate(),
        stream_bytes: progress.sent(),
    })
}

/// Starts the send and streams it. Replica mode on a host with resumable send (OpenZFS): if
/// an earlier attempt was cut short, the target holds a resume token for the replica, and the
/// send resumes from it (`zfs send -t`) instead of starting over; the target checks that the
/// token is still the current one.
async fn send_with<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, transfer::BoxBody>,
    endpoint: &Endpoint,
    zfs: &Zfs,
    req: &SendRequest,
    mut up: Upload,
    progress: &JobProgress,
) -> Result<transfer::Uploaded, JobError> {
    if let Some(into) = &up.receive_into
        && zfs.capabilities().has(Capability::ResumableSend)
    {
        match transfer::resume_token(client, endpoint, &up.host, &up.dataset, into).await {
            Ok(token) => up.resume_token = token,
            Err(e) => {
                warn!(error = %e, "could not ask the target for a resume token; sending from the start")
            }
        }
    }
    if let Some(token) = up.resume_token.take() {
        // The target chose this token: use it only if it names exactly this job's stream.
        match token_is_the_jobs(zfs, req, &token).await {
            Ok(()) => up.resume_token = Some(token),
            Err(why) => {
                warn!(reason = %why, "refusing the target's resume token; sending the stream from the start")
            }
        }
    }
    let mut send = match &up.resume_token {
        Some(token) => {
            info!("resuming an interrupted transfer from the target's resume token");
            // The estimate made before was the whole stream's: the remainder's replaces it.
            match zfs.estimate_resume(token).await {
                Ok(Some(rest)) => {
                    info!(
                        estimate = rest,
                        "estimated size of the resumed remainder (zfs send -nP -t)"
                    );
                    progress.set_estimate(rest);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "the resumed send's size estimate failed: keeping the full stream's")
                }
            }
            zfs.send_resume(token)?
        }
        None => zfs.send(req)?,
    };
    let stdout = send
        .take_stdout()
        .ok_or_else(|| JobError::Invalid("zfs send has no stdout".into()))?;
    let done: transfer::SourceDone =
        Box::pin(async move { send.wait().await.map_err(|e| e.to_string()) });
    // The estimate (the resumed remainder's when resuming) is held by the store for the stream.
    Ok(transfer::upload_expecting(
        client,
        endpoint,
        &up,
        progress.estimate(),
        progress.counting(stdout),
        done,
    )
    .await?)
}

/// Decodes a resume token (`zfs send -nvt`) and checks that it resumes this job's snapshot
/// from this job's base ([`resume::check_token`]).
async fn token_is_the_jobs(zfs: &Zfs, req: &SendRequest, token: &str) -> Result<(), String> {
    let contents = zfs
        .decode_resume_token(token)
        .await
        .map_err(|e| format!("decoding it failed: {e}"))?;
    let toguid = zfs
        .guid(&req.dataset, &req.snapshot, false)
        .await
        .map_err(|e| e.to_string())?;
    let fromguid = match &req.base {
        Some(base) => Some(
            zfs.guid(&req.dataset, &base.name, base.bookmark)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    resume::check_token(
        &contents,
        &resume::ExpectedSend {
            toname: format!("{}@{}", req.dataset, req.snapshot),
            toguid,
            fromguid,
        },
    )
}

/// Destroys our own snapshots of `dataset` created before `keep_from`.
async fn prune(zfs: &Zfs, dataset: &str, keep_from: i64) {
    let inv = match zfs.inventory(Some(dataset)).await {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "could not list snapshots to prune");
            return;
        }
    };
    for s in inv
        .snapshots_of(dataset)
        .filter(|s| s.managed && s.creation < keep_from)
    {
        match zfs.destroy_own_snapshot(dataset, &s.name).await {
            Ok(()) => {
                info!(snapshot = %s.full_name(), "destroyed a snapshot no longer needed as a base");
                // Its bookmark (made when it was backed up) is no longer a base either.
                if zfs.capabilities().has(Capability::Bookmarks)
                    && zfs.bookmark_creation(dataset, &s.name).await.is_ok()
                    && let Err(e) = zfs.destroy_bookmark(dataset, &s.name).await
                {
                    warn!(error = %e, "could not destroy the bookmark {dataset}#{}", s.name);
                }
            }
            Err(e) => warn!(error = %e, "could not destroy {}", s.full_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backup_type: BackupType, base: Option<&str>, intermediates: bool) -> BackupJobSpec {
        use zetaback_core::api::backup_policy::{Compression, Target};
        BackupJobSpec {
            policy: "p".into(),
            host: "h1".into(),
            dataset: "tank/db".into(),
            backup_type,
            base_snapshot: base.map(str::to_owned),
            snapshot: "zetaback-3".into(),
            target: Target {
                host: Some("backup-1".into()),
                path: None,
                dataset: Some("backup/r".into()),
                object_store: None,
            },
            compression: Compression::None,
            intermediates,
        }
    }

    #[test]
    fn a_dataset_the_host_does_not_offer_is_refused() {
        let selector: zetaback_core::api::DatasetSelector = serde_json::from_value(
            serde_json::json!({"include": ["tank/**"], "exclude": ["tank/secret/**", "tank/secret"]}),
        )
        .expect("selector");
        assert!(check_offered("h", &selector, "tank/db").is_ok());
        let e = check_offered("h", &selector, "tank/secret").expect_err("excluded");
        assert!(e.to_string().contains("not offered by host h"), "{e}");
        assert!(check_offered("h", &selector, "tank/secret/x").is_err());
        assert!(
            check_offered("h", &selector, "other/db").is_err(),
            "not included"
        );
    }

    #[test]
    fn intermediates_only_for_incrementals() {
        check_spec(&spec(BackupType::Incremental, Some("zetaback-1"), true)).expect("valid");
        check_spec(&spec(BackupType::Incremental, Some("zetaback-1"), false)).expect("valid");
        check_spec(&spec(BackupType::Full, None, false)).expect("valid");
        let e = check_spec(&spec(BackupType::Full, None, true)).expect_err("-I on a full");
        assert!(e.to_string().contains("only for an incremental"), "{e}");
        assert!(check_spec(&spec(BackupType::Incremental, None, true)).is_err());
    }

    #[test]
    fn ids() {
        assert_eq!(
            stream_id(BackupType::Full, 10, None)
                .expect("id")
                .to_string(),
            "10.full"
        );
        assert_eq!(
            stream_id(BackupType::Incremental, 10, Some(5))
                .expect("id")
                .to_string(),
            "10.incremental.5"
        );
        assert!(stream_id(BackupType::Incremental, 10, Some(10)).is_err());
        assert!(stream_id(BackupType::Incremental, 10, None).is_err());
    }

    #[test]
    fn retake_until_later_than_the_floor() {
        assert!(!must_retake(10, None));
        assert!(must_retake(10, Some(10)));
        assert!(must_retake(9, Some(10)));
        assert!(!must_retake(11, Some(10)));
        // What must_retake lets through always makes a valid incremental id.
        for taken in 0..5 {
            for base in 0..5 {
                if !must_retake(taken, Some(base)) {
                    stream_id(BackupType::Incremental, taken, Some(base)).expect("valid id");
                }
            }
        }
    }

    #[test]
    fn which_failures_keep_the_snapshot() {
        let conn = JobError::Transfer(TransferError::Connection("reset".into()));
        let refused = JobError::Transfer(TransferError::Rejected {
            status: http::StatusCode::BAD_REQUEST,
            message: "no".into(),
        });
        let source = JobError::Transfer(TransferError::Source("zfs send failed".into()));
        let mismatch = JobError::Transfer(TransferError::Mismatch {
            sent: "a".into(),
            target: "b".into(),
        });
        let unanswered = JobError::Transfer(TransferError::Unanswered {
            why: "no answer".into(),
            sent: transfer::Sent {
                bytes: 1,
                xxh3: "0".repeat(32),
            },
        });
        for resumable in [false, true] {
            assert!(snapshot_may_be_in_use(&unanswered, resumable));
            assert!(snapshot_may_be_in_use(&conn, resumable));
            assert!(snapshot_may_be_in_use(&mismatch, resumable));
            assert!(!snapshot_may_be_in_use(&refused, resumable));
            assert!(!snapshot_may_be_in_use(
                &JobError::Invalid("x".into()),
                resumable
            ));
        }
        assert!(!snapshot_may_be_in_use(&source, false));
        assert!(snapshot_may_be_in_use(&source, true));
    }
}
