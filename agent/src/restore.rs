//! Restoring from a file store: read the chain (the full, then each incremental up to the
//! chosen backup) from the target agent and `zfs receive` each into a dataset, verifying every
//! stream's sha256 on the way (a mismatch aborts the receive, so nothing unverified lands).

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tracing::info;
use zetaback::store::{Catalogue, StreamId};

use crate::transfer::{self, Endpoint, TransferError};
use crate::zfs::{ReceiveRequest, Zfs, ZfsError};

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{0}")]
    Store(#[from] zetaback::store::StoreError),
    #[error("restore into {0}: the dataset exists (use force to replace it)")]
    Exists(String),
    #[error("copying the stream into zfs receive failed: {0}")]
    Copy(String),
}

/// What a restore applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub chain: Vec<String>,
    pub bytes: u64,
}

/// Reads the catalogue of one source host from a target agent.
pub async fn catalogue(endpoint: &Endpoint, host: &str) -> Result<Catalogue, RestoreError> {
    zetaback::store::validate_host(host)?;
    let client = transfer::client();
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/v1/catalogue?host={host}", endpoint.base))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", endpoint.token),
        )
        .body(BodyExt::boxed(
            http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {}),
        ))
        .map_err(|e| TransferError::Invalid(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| TransferError::Connection(format!("{e:#}")))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| TransferError::Connection(e.to_string()))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(TransferError::Rejected {
            status,
            message: String::from_utf8_lossy(&body).into_owned(),
        }
        .into());
    }
    serde_json::from_slice(&body).map_err(|e| TransferError::Read(format!("catalogue: {e}")).into())
}

/// Restores backup `id` of `host:dataset` into the dataset `into`.
pub async fn restore(
    zfs: &Zfs,
    endpoint: &Endpoint,
    host: &str,
    dataset: &str,
    id: &str,
    into: &str,
    force: bool,
) -> Result<Restored, RestoreError> {
    let cat = catalogue(endpoint, host).await?;
    let chain = cat.restore_chain(host, dataset, id)?;
    if zfs.dataset_exists(into).await? && !force {
        return Err(RestoreError::Exists(into.to_owned()));
    }
    let client = transfer::client();
    let mut bytes = 0;
    let mut applied = Vec::new();
    for (i, b) in chain.iter().enumerate() {
        let sid: StreamId = b.manifest.id.parse()?;
        let mut dl = transfer::download(&client, endpoint, host, dataset, &sid).await?;
        let mut recv = zfs.receive(&ReceiveRequest {
            target: into.to_owned(),
            force: force && i == 0,
            resumable: false,
        })?;
        let copied = match recv.stdin() {
            Some(stdin) => tokio::io::copy(&mut dl.reader, stdin).await,
            None => Err(std::io::Error::other("no stdin")),
        };
        match copied {
            Ok(n) => {
                recv.finish().await?;
                bytes += n;
            }
            Err(e) => {
                recv.abort().await;
                return Err(RestoreError::Copy(e.to_string()));
            }
        }
        if i == 0 && chain.len() > 1 {
            // Incrementals need the dataset unmodified since the last snapshot.
            zfs.protect_replica(into).await?;
        }
        info!(backup = %b.manifest.id, "applied");
        applied.push(b.manifest.id.clone());
    }
    if chain.len() > 1 {
        zfs.unprotect(into).await?;
    }
    Ok(Restored {
        chain: applied,
        bytes,
    })
}
