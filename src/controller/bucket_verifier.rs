//! Verification of backups in buckets (`spec.verify` on a `target.objectStore` policy), run by
//! the controller with the keys of each policy's Secret: the policy's plan asks for the same
//! `VerifyRequest`s as for a file store ([`super::backup_policy`]), and instead of posting them
//! to a store agent the controller queues them here. One worker re-reads one stream object at
//! a time at its request's rate (`zetaback_objstore::verify`: bounded memory, the file store's
//! rules and verdict) and records the result under `<prefix>/.verify/`; the bucket's
//! catalogue then carries it to every policy and Restore ([`super::bucket_catalogues`] is told
//! to read that host again), so quarantine, dependants, the next full, `Corrupt`, its Event,
//! `quarantined_backups` and `lastVerified` follow from the same policy code as for a file
//! store.
//!
//! Why the controller reads (and not an agent): see `zetaback_objstore::verify`. One queue
//! serves every bucket, as one verifier serves a file store: verification never takes more
//! than one request's rate of the controller's network, however many policies ask.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::Client;
use tracing::{Instrument, info, info_span, warn};
use zetaback_core::api::backup_policy::ObjectStoreTarget;
use zetaback_core::store::StreamId;
use zetaback_core::store::Verified;
use zetaback_core::store::verify_queue::{Queued, VerifyQueue};
use zetaback_core::wire::VerifyRequest;
use zetaback_objstore::{Keys, connect};

use super::bucket_catalogues::BucketCatalogues;

/// One backup waiting, with the namespace and target whose keys read it.
#[derive(Debug, Clone)]
struct Item {
    namespace: String,
    target: ObjectStoreTarget,
    host: String,
    dataset: String,
    id: StreamId,
    rate: u64,
    not_verified_since: Option<jiff::Timestamp>,
}

/// A backup of a bucket as the queue tells requests apart: the same object asked for by two
/// policies (the same bucket and prefix) is read once.
type ItemKey = (
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    String,
);

impl Queued for Item {
    type Key = ItemKey;
    fn key(&self) -> ItemKey {
        (
            self.target.endpoint.clone(),
            self.target.bucket.clone(),
            self.target.prefix.clone(),
            self.host.clone(),
            self.dataset.clone(),
            self.id.to_string(),
        )
    }
}

/// The controller's bucket verifier ([module docs](self)).
pub struct BucketVerifier {
    client: Client,
    buckets: Arc<BucketCatalogues>,
    queue: Mutex<VerifyQueue<Item>>,
    /// Backups read and judged, and how many of them were corrupt (for logs and tests).
    pub verified: AtomicU64,
    pub corrupt: AtomicU64,
}

impl BucketVerifier {
    pub fn new(client: Client, buckets: Arc<BucketCatalogues>) -> Self {
        Self {
            client,
            buckets,
            queue: Mutex::default(),
            verified: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VerifyQueue<Item>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues the backups of `requests` (a policy's plan) of `target`'s bucket, read with the
    /// keys of `namespace`'s Secret, and starts the worker if it is idle. A request that names
    /// an invalid id, or finds the queue full, is logged; the policy asks again.
    pub fn submit(
        self: &Arc<Self>,
        namespace: &str,
        target: &ObjectStoreTarget,
        requests: &[VerifyRequest],
    ) {
        let mut items = Vec::new();
        for req in requests {
            for id in &req.ids {
                match id.parse::<StreamId>() {
                    Ok(id) => items.push(Item {
                        namespace: namespace.to_owned(),
                        target: target.clone(),
                        host: req.host.clone(),
                        dataset: req.dataset.clone(),
                        id,
                        rate: req.rate,
                        not_verified_since: req.not_verified_since,
                    }),
                    Err(e) => warn!(host = %req.host, dataset = %req.dataset, %id, error = %e,
                        "not a backup id: not verified"),
                }
            }
        }
        let count = items.len();
        let start = match self.lock().submit(items) {
            Ok(start) => start,
            Err(e) => {
                warn!(bucket = %target.bucket, error = %e, "verification not queued; will retry");
                return;
            }
        };
        if count > 0 {
            info!(bucket = %target.bucket, backups = count, "bucket verification requested");
        }
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.work().await }.instrument(info_span!("bucket_verifier")));
        }
    }

    /// Backups waiting (not counting the one being read).
    pub fn waiting(&self) -> usize {
        self.lock().waiting()
    }

    /// Works off the queue, then ends (the next request starts it again).
    async fn work(self: Arc<Self>) {
        loop {
            let next = self.lock().take_next();
            let Some(item) = next else { return };
            let span = info_span!("verify", bucket = %item.target.bucket,
                backup = %format!("{}:{}@{}", item.host, item.dataset, item.id));
            match self.verify_one(&item).instrument(span).await {
                Ok(Verified::Checked(v)) => {
                    self.verified.fetch_add(1, Relaxed);
                    if v.quarantined() {
                        self.corrupt.fetch_add(1, Relaxed);
                    }
                    // The verdict is in the bucket: the catalogue must show it.
                    self.buckets
                        .invalidate(&item.namespace, &item.target, &item.host);
                }
                Ok(Verified::AlreadyQuarantined(_) | Verified::Recent(_)) => {}
                // Gone, changed while read, unreachable: nothing recorded (no proof of
                // corruption); the policy asks again.
                Err(e) => warn!(host = %item.host, dataset = %item.dataset, id = %item.id,
                    error = %e, "could not verify"),
            }
        }
    }

    async fn verify_one(&self, item: &Item) -> Result<Verified, String> {
        let creds =
            super::object_store::credentials(&self.client, &item.namespace, &item.target).await?;
        let store = connect(&item.target, &creds).map_err(|e| e.to_string())?;
        let keys = Keys::new(item.target.prefix.as_deref());
        zetaback_objstore::verify::verify(
            store.as_ref(),
            &keys,
            (&item.host, &item.dataset, &item.id),
            item.rate,
            item.not_verified_since,
            |_| {},
        )
        .await
        .map_err(|e| e.to_string())
    }
}
