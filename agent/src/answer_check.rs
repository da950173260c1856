//! When a stream was sent whole but the target's answer never came (the answer timeout, or
//! the connection broke after the last byte: [`TransferError::Unanswered`]), the target may
//! well have stored it: a slow fsync or `zfs receive` commit, an answer lost on the way. Rather
//! than fail a backup that exists (and have the controller send it again), the source asks the
//! target's catalogue for the backup's id, for a bounded while, and accepts it only if the
//! stored bytes are exactly what was sent: same length and same xxh3-128 (the manifest records
//! the transit check of what arrived). Anything else leaves the failure as it was.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use tracing::{info, warn};
use zetaback_core::store::{Catalogue, StreamId};

use crate::transfer::{self, BoxBody, Endpoint, Sent, TransferError};
use crate::wire::{PutResponse, routes};

/// The longest the source keeps asking the catalogue after an unanswered stream (or the
/// answer timeout, if shorter).
pub const MAX_CHECK_WINDOW: Duration = Duration::from_secs(60);

/// What the target's catalogue says about the backup that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Stored, and exactly what was sent: the manifest's sha256.
    Stored { sha256: Option<String> },
    /// Not (yet) there.
    Absent,
    /// A backup of that id is there but it is not what was sent (or its manifest cannot
    /// say: written before manifests recorded the xxh3).
    Different(String),
}

/// Looks for `dataset`'s backup `id` in `catalogue` and compares it with what was sent.
pub fn find(catalogue: &Catalogue, dataset: &str, id: &StreamId, sent: &Sent) -> Found {
    let id = id.to_string();
    let Some(stored) = catalogue
        .backups
        .iter()
        .find(|b| b.manifest.dataset == dataset && b.manifest.id == id && !b.archived)
    else {
        return Found::Absent;
    };
    let m = &stored.manifest;
    match &m.xxh3 {
        None => Found::Different(format!(
            "{id} is stored but its manifest records no xxh3 to compare (an older target)"
        )),
        Some(x) if *x == sent.xxh3 && m.bytes == sent.bytes => Found::Stored {
            sha256: m.sha256.clone(),
        },
        Some(x) => Found::Different(format!(
            "{id} is stored as {} bytes, xxh3 {x}; {} bytes, xxh3 {} were sent",
            m.bytes, sent.bytes, sent.xxh3
        )),
    }
}

/// Where the source's upload went.
#[derive(Debug, Clone)]
pub struct Sending<'a> {
    pub host: &'a str,
    pub dataset: &'a str,
    pub id: &'a StreamId,
    /// Replica mode: the replica root.
    pub receive_into: Option<&'a str>,
}

/// After `error` ([`TransferError::Unanswered`]), asks the target's catalogue for the backup
/// until it is there or `window` has passed; the answer the target would have given if it is
/// stored as sent, else the error (an [`TransferError::Unanswered`] that names the check, or a
/// [`TransferError::Mismatch`] when something else is stored under that id).
pub async fn confirm<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    sending: &Sending<'_>,
    error: TransferError,
    window: Duration,
) -> Result<PutResponse, TransferError> {
    let TransferError::Unanswered { why, sent } = error else {
        return Err(error);
    };
    let url = format!("{}{}", endpoint.base, routes::catalogue(Some(sending.host)));
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(500);
    let mut last_problem = String::from("it is not in the target's catalogue");
    loop {
        match read_catalogue(client, endpoint, &url).await {
            Ok(cat) => match find(&cat, sending.dataset, sending.id, &sent) {
                Found::Stored { sha256 } => {
                    info!(backup = %sending.id, bytes = sent.bytes, %why, "the target's answer did not come, but it stored the backup exactly as sent: accepted");
                    return Ok(PutResponse {
                        backup_id: sending.id.to_string(),
                        bytes: sent.bytes,
                        sha256,
                        xxh3: Some(sent.xxh3),
                        verified: true,
                        replica: sending
                            .receive_into
                            .map(|into| format!("{into}/{}/{}", sending.host, sending.dataset)),
                    });
                }
                Found::Different(what) => {
                    return Err(TransferError::Mismatch {
                        sent: format!("{} bytes, xxh3 {}", sent.bytes, sent.xxh3),
                        target: what,
                    });
                }
                Found::Absent => {}
            },
            Err(e) => {
                warn!(error = %e, "asking the target's catalogue for an unanswered backup failed");
                last_problem = format!("its catalogue could not be read: {e}");
            }
        }
        if started.elapsed() + pause > window {
            return Err(TransferError::Unanswered {
                why: format!(
                    "{why}; {last_problem} after {}s",
                    started.elapsed().as_secs()
                ),
                sent,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn read_catalogue<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, BoxBody>,
    endpoint: &Endpoint,
    url: &str,
) -> Result<Catalogue, TransferError> {
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        transfer::get(client, endpoint, url),
    )
    .await
    .map_err(|_| TransferError::Connection("no answer in 30s".into()))??;
    transfer::json_answer(resp, transfer::MAX_CATALOGUE_ANSWER).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use zetaback_core::api::backup_policy::Compression;
    use zetaback_core::store::{MANIFEST_VERSION, Manifest, StoredBackup};

    fn stored(dataset: &str, id: &str, bytes: u64, xxh3: Option<&str>) -> StoredBackup {
        let sid: StreamId = id.parse().expect("id");
        StoredBackup {
            manifest: Manifest {
                version: MANIFEST_VERSION,
                id: id.into(),
                host: "h1".into(),
                dataset: dataset.into(),
                snapshot: format!("zetaback-{}", sid.ts()),
                base_snapshot: sid.base_ts().map(|t| format!("zetaback-{t}")),
                backup_type: sid.backup_type(),
                bytes,
                sha256: Some("c".repeat(64)),
                compression: Compression::None,
                created: jiff::Timestamp::from_second(sid.ts()).expect("ts"),
                policy: None,
                xxh3: xxh3.map(str::to_owned),
                raw: false,
            },
            archived: false,
            verification: None,
        }
    }

    #[test]
    fn only_the_same_bytes_under_the_same_id_and_dataset_are_accepted() {
        let id: StreamId = "1700000100.full".parse().expect("id");
        let sent = Sent {
            bytes: 1000,
            xxh3: "a".repeat(32),
        };
        let xa = "a".repeat(32);
        let xb = "b".repeat(32);
        let cat = |b: Vec<StoredBackup>| Catalogue {
            backups: b,
            problems: vec![],
        };
        let cases: Vec<(Vec<StoredBackup>, Option<Found>)> = vec![
            (
                vec![stored("tank/db", "1700000100.full", 1000, Some(&xa))],
                Some(Found::Stored {
                    sha256: Some("c".repeat(64)),
                }),
            ),
            (vec![], Some(Found::Absent)),
            // Another dataset's backup of the same second is not ours.
            (
                vec![stored("tank/other", "1700000100.full", 1000, Some(&xa))],
                Some(Found::Absent),
            ),
            // Another id of the same dataset is not ours.
            (
                vec![stored("tank/db", "1700000099.full", 1000, Some(&xa))],
                Some(Found::Absent),
            ),
            (
                vec![stored("tank/db", "1700000100.full", 999, Some(&xa))],
                None,
            ),
            (
                vec![stored("tank/db", "1700000100.full", 1000, Some(&xb))],
                None,
            ),
            (vec![stored("tank/db", "1700000100.full", 1000, None)], None),
        ];
        for (backups, want) in cases {
            let got = find(&cat(backups.clone()), "tank/db", &id, &sent);
            match want {
                Some(w) => assert_eq!(got, w, "{backups:?}"),
                None => assert!(matches!(got, Found::Different(_)), "{got:?} {backups:?}"),
            }
        }
        // An archived copy is not the upload that just ended.
        let mut archived = stored("tank/db", "1700000100.full", 1000, Some(&xa));
        archived.archived = true;
        assert_eq!(
            find(&cat(vec![archived]), "tank/db", &id, &sent),
            Found::Absent
        );
    }
}
