//! A backup job whose target is an object store: `zfs send` goes through the same producer as
//! an upload to a store agent (compression, bandwidth limit, the source's exit status) and from
//! there into a multipart upload in the bucket (`zetaback_objstore::upload`), signed with this
//! host's own keys (`--object-store-credentials`).

use std::collections::HashSet;
use std::io;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};
use zetaback_core::api::BackupJobSpec;
use zetaback_core::api::backup_policy::ObjectStoreTarget;
use zetaback_core::store::{Manifest, StreamId};
use zetaback_objstore::object_store::ObjectStore;
use zetaback_objstore::pending::Requests;
use zetaback_objstore::upload::{UploadSpec, upload};
use zetaback_objstore::{Credentials, Keys, ObjStoreError, connect_locked};

use crate::job::{JobError, JobOutcome, JobSettings};
use crate::job_progress::JobProgress;
use crate::transfer::{self, CHANNEL_DEPTH, SourceDone, TransferError};
use crate::zfs::{SendRequest, Zfs};

/// Sends `req` and uploads it as backup `id` of `spec` into `target`'s bucket.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    zfs: &Zfs,
    host: &str,
    spec: &BackupJobSpec,
    policy: Option<&str>,
    settings: &JobSettings,
    target: &ObjectStoreTarget,
    req: &SendRequest,
    id: StreamId,
    base: Option<String>,
    progress: &JobProgress,
) -> Result<JobOutcome, JobError> {
    let path = settings.object_store_credentials.as_deref().ok_or_else(|| {
        JobError::Invalid(
            "this agent has no object-store credentials (--object-store-credentials): it cannot upload into a bucket".into(),
        )
    })?;
    let creds = Credentials::from_file(path)?;
    // immutableFor: every object of this backup locked until its time plus that long.
    let lock_until = match &target.immutable_for {
        None => None,
        Some(d) => {
            let d = d
                .duration()
                .map_err(|e| JobError::Invalid(format!("objectStore.immutableFor: {e}")))?;
            Some(
                zetaback_objstore::lock::locked_until(&id, d).ok_or_else(|| {
                    JobError::Invalid("objectStore.immutableFor is too long".into())
                })?,
            )
        }
    };
    let store = connect_locked(target, &creds, lock_until)?;
    let keys = Keys::new(target.prefix.as_deref());
    let up = UploadSpec {
        host: host.to_owned(),
        dataset: spec.dataset.0.clone(),
        id,
        snapshot: spec.snapshot.clone(),
        base_snapshot: base,
        compression: spec.compression,
        policy: policy.map(str::to_owned),
    };
    let span = info_span!("object_store_upload", bucket = %target.bucket, backup = %id);
    let stream_key = keys
        .stream(host, &spec.dataset.0, &id, false)
        .map_err(ObjStoreError::from)?
        .to_string();
    let _running = Running::register(stream_key);
    async move {
        abort_orphans(target, &creds, &keys, host, &spec.dataset.0).await;
        let mut child = zfs.send(req)?;
        let stdout = child
            .take_stdout()
            .ok_or_else(|| JobError::Invalid("zfs send has no stdout".into()))?;
        let done: SourceDone =
            Box::pin(async move { child.wait().await.map_err(|e| e.to_string()) });
        let started = Instant::now();
        let manifest = upload_reader(
            store.as_ref(),
            &keys,
            &up,
            progress.counting(stdout),
            settings.bandwidth_limit,
            done,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        info!(bytes = manifest.bytes, secs, "uploaded");
        Ok(JobOutcome {
            backup_id: manifest.id.clone(),
            bytes: manifest.bytes,
            sha256: manifest.sha256.clone(),
            bytes_per_second: (manifest.bytes as f64 / secs) as u64,
            replica: None,
            estimated_bytes: progress.estimate(),
            stream_bytes: progress.sent(),
        })
    }
    .instrument(span)
    .await
}

/// Uploads `reader` (a `zfs send` stdout; `done` resolves when that process ended) as backup
/// `up`: through the producer every transfer uses (`up.compression`, the bandwidth limit, the
/// source's exit status) into a multipart upload ([`upload`]). Also what
/// `bench/objectstore`'s `upload-stdin` runs.
pub async fn upload_reader(
    store: &dyn ObjectStore,
    keys: &Keys,
    up: &UploadSpec,
    reader: impl AsyncRead + Send + Unpin + 'static,
    bandwidth_limit: u64,
    done: SourceDone,
) -> Result<Manifest, JobError> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let producer = tokio::spawn(transfer::produce(
        reader,
        up.compression,
        bandwidth_limit,
        done,
        tx,
        transfer::Progress::new(),
    ));
    // Data frames are the stream; the trailer (the transit checksum) ends it; an error
    // (the source failed) fails the upload, which is then aborted.
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some((Ok::<Bytes, io::Error>(data), rx)),
                    Err(_trailers) => continue,
                },
                Err(e) => return Some((Err(e), rx)),
            }
        }
    })
    .boxed();
    let uploaded = upload(store, keys, up, chunks).await;
    let produced = producer.await;
    match (uploaded, produced) {
        (Ok(m), Ok(Ok(_))) => Ok(m),
        // The source's own failure is the cause of a failed upload...
        (_, Ok(Err(e @ (TransferError::Source(_) | TransferError::Read(_))))) => Err(e.into()),
        // ...otherwise the bucket's answer is (the producer only saw its reader go away).
        (Err(e), _) => Err(e.into()),
        (Ok(_), Ok(Err(e))) => Err(e.into()),
        (Ok(_), Err(e)) => Err(ObjStoreError::Source(e.to_string()).into()),
    }
}

/// The stream keys this agent process is uploading now: any other incomplete upload under one
/// of its datasets is an orphan of a process that died (one agent per host; the host is in
/// every key).
static RUNNING: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A stream key in [`RUNNING`] while the upload runs.
struct Running(String);

impl Running {
    fn register(key: String) -> Self {
        if let Ok(mut set) = RUNNING.lock() {
            set.insert(key.clone());
        }
        Self(key)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut set) = RUNNING.lock() {
            set.remove(&self.0);
        }
    }
}

/// Aborts the incomplete multipart uploads under `host:dataset`'s key directory that this
/// process is not running (a killed agent's parts, invisible but billed). Best effort: a
/// failure is logged, the upload goes on (a bucket lifecycle rule is the backstop).
async fn abort_orphans(
    target: &ObjectStoreTarget,
    creds: &Credentials,
    keys: &Keys,
    host: &str,
    dataset: &str,
) {
    let result = async {
        let dir = format!("{}/", keys.dataset_dir(host, dataset, false)?);
        let requests = Requests::new(target, creds)?;
        let mut aborted = 0usize;
        for p in requests.list(&dir).await? {
            let ours = RUNNING.lock().map(|s| s.contains(&p.key)).unwrap_or(true);
            if ours {
                continue;
            }
            requests.abort(&p).await?;
            info!(key = %p.key, upload = %p.upload_id, "aborted an incomplete upload left by a previous agent process");
            aborted += 1;
        }
        Ok::<usize, ObjStoreError>(aborted)
    }
    .await;
    if let Err(e) = result {
        warn!(error = %e, "could not look for incomplete uploads to abort; uploading anyway");
    }
}
