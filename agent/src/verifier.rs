//! The store's verifier: a queue of stored backups to re-read and check against their
//! manifests (`POST /v1/verify`, sent by the controller, which decides what is due from each
//! policy's `spec.verify`), worked off one backup at a time by one task, each read paced to
//! its request's rate, so verification never takes more than that rate of the store's disk
//! however many requests arrive. Results are recorded in the store
//! ([`FileStore::verify`]); the catalogue carries them to the controller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{Instrument, info_span, warn};
use zetaback_core::store::verify_queue::{QueueFull, Queued, VerifyQueue};
use zetaback_core::store::{StreamId, validate_host};
use zetaback_core::wire::{VerifyCurrent, VerifyRequest, VerifyStatus};

use crate::filestore::{BackupKey, FileStore, Verified};

pub use zetaback_core::store::verify_queue::MAX_QUEUED;

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum VerifyQueueError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Full(#[from] QueueFull),
}

/// One backup waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    key: BackupKey,
    rate: u64,
    not_verified_since: Option<jiff::Timestamp>,
}

impl Queued for Item {
    type Key = BackupKey;
    fn key(&self) -> BackupKey {
        self.key.clone()
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VerifyQueue<Item>,
    /// The backup being read and how far.
    current: Option<VerifyCurrent>,
}

/// The verifier of one file store (clones share it).
#[derive(Debug, Clone)]
pub struct Verifier {
    store: FileStore,
    state: Arc<Mutex<State>>,
    verified: Arc<AtomicU64>,
    corrupt: Arc<AtomicU64>,
    bytes_read: Arc<AtomicU64>,
}

impl Verifier {
    pub fn new(store: FileStore) -> Self {
        Self {
            store,
            state: Arc::default(),
            verified: Arc::default(),
            corrupt: Arc::default(),
            bytes_read: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the verifier is doing.
    pub fn status(&self) -> VerifyStatus {
        let st = self.lock();
        VerifyStatus {
            current: st.current.clone(),
            queued: st.queue.waiting(),
            verified: self.verified.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }

    /// Queues the request's backups (a backup already waiting or being read is not queued
    /// twice) and starts the worker if it is idle.
    pub fn submit(&self, req: &VerifyRequest) -> Result<VerifyStatus, VerifyQueueError> {
        validate_host(&req.host).map_err(|e| VerifyQueueError::Invalid(e.to_string()))?;
        zetaback_core::names::validate_dataset(&req.dataset)
            .map_err(|e| VerifyQueueError::Invalid(e.to_string()))?;
        let mut items = Vec::with_capacity(req.ids.len());
        for id in &req.ids {
            let id: StreamId = id.parse().map_err(|e: zetaback_core::store::StoreError| {
                VerifyQueueError::Invalid(e.to_string())
            })?;
            items.push(Item {
                key: BackupKey {
                    host: req.host.clone(),
                    dataset: req.dataset.clone(),
                    id,
                },
                rate: req.rate,
                not_verified_since: req.not_verified_since,
            });
        }
        let start = self.lock().queue.submit(items)?;
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.work().await }.instrument(info_span!("verifier")));
        }
        Ok(self.status())
    }

    /// Works off the queue, then ends (the next request starts it again).
    async fn work(self) {
        loop {
            let item = {
                let mut st = self.lock();
                let next = st.queue.take_next();
                st.current = next.as_ref().map(|item| VerifyCurrent {
                    host: item.key.host.clone(),
                    dataset: item.key.dataset.clone(),
                    id: item.key.id.to_string(),
                    done: 0,
                    total: 0,
                });
                match next {
                    Some(item) => item,
                    None => return,
                }
            };
            let state = self.state.clone();
            let bytes_read = self.bytes_read.clone();
            let last = Arc::new(AtomicU64::new(0));
            let progress = move |done: u64| {
                let before = last.swap(done, Ordering::Relaxed);
                bytes_read.fetch_add(done.saturating_sub(before), Ordering::Relaxed);
                if let Ok(mut st) = state.lock()
                    && let Some(c) = st.current.as_mut()
                {
                    c.done = done;
                }
            };
            if let Ok(Some(total)) = self.size_of(&item.key).await
                && let Some(c) = self.lock().current.as_mut()
            {
                c.total = total;
            }
            let span = info_span!("verify", backup = %item.key);
            match self
                .store
                .verify(&item.key, item.rate, item.not_verified_since, progress)
                .instrument(span)
                .await
            {
                Ok(Verified::Checked(v)) => {
                    self.verified.fetch_add(1, Ordering::Relaxed);
                    if v.quarantined() {
                        self.corrupt.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Verified::AlreadyQuarantined(_) | Verified::Recent(_)) => {}
                // Gone (deleted or expired meanwhile) or unreadable: nothing recorded; an I/O
                // error is no proof of corruption, and the controller asks again.
                Err(e) => warn!(backup = %item.key, error = %e, "could not verify"),
            }
        }
    }

    async fn size_of(
        &self,
        key: &BackupKey,
    ) -> Result<Option<u64>, crate::filestore::FileStoreError> {
        let (_, manifest) = self.store.open(key).await?;
        Ok(Some(manifest.bytes))
    }
}
