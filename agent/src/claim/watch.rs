//! The watch → claim → run loop the BackupJob runner and the Restore runner share: watch this
//! host's objects (a reflector store of every event), and on each event or finished run claim
//! the claimable ones, oldest first, each in its own task and tracing span — at most
//! [`Worker::capacity`] at a time and one per [`Worker::lock`] (a dataset is backed up or
//! restored by one run at a time).
//!
//! What to claim, how to claim it and what a run does stay with each runner ([`Worker`]); the
//! order, the bookkeeping of what runs and the wake-ups live here once.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{Instrument, error, info, warn};

/// One kind of claimable work (BackupJobs, Restores) as the shared loop drives it.
pub trait Worker: Send + Sync + 'static {
    /// The watched kind.
    type Object: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;
    /// Why a claim or a run's last write failed (logged; the loop goes on).
    type Error: Display + Send;
    /// The kind's name in log lines.
    const KIND: &'static str;

    /// At most this many runs at once.
    fn capacity(&self) -> usize;
    /// Whether this agent may claim `obj` now (its host's, waiting, not being deleted).
    fn claimable(&self, obj: &Self::Object) -> bool;
    /// What two runs must not hold at once (the dataset backed up or restored into).
    fn lock(&self, obj: &Self::Object) -> String;
    /// The claim itself (`Ok(None)`: another agent was first, or the object is gone).
    fn try_claim(
        &self,
        obj: &Self::Object,
    ) -> impl Future<Output = Result<Option<Self::Object>, Self::Error>> + Send;
    /// The tracing span a claimed object's run goes in.
    fn span(&self, claimed: &Self::Object) -> tracing::Span;
    /// Runs a claimed object and records its outcome.
    fn run_claimed(
        self: Arc<Self>,
        claimed: Self::Object,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Whether `obj`, no longer claimable, still needs this worker (e.g. the scratch dataset
    /// of a drill that was ended while it ran); none do by default.
    fn needs_sweep(&self, _obj: &Self::Object) -> bool {
        false
    }
    /// Looks after one object [`Worker::needs_sweep`] named, under its lock, at most once
    /// per object while the watch runs.
    fn sweep(
        self: Arc<Self>,
        obj: Self::Object,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async move {
            drop(obj);
            Ok(())
        }
    }
}

/// `namespace/name`: an object's key in logs and in the set of running ones.
pub fn key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// What runs now: the objects' keys and their locks.
#[derive(Debug, Default)]
struct Running {
    objects: HashSet<String>,
    locks: HashSet<String>,
}

/// Watches `W::Object` (every namespace, narrowed by `config`) and claims and runs what
/// `worker` finds claimable, until the watch ends.
pub async fn watch_and_run<W: Worker>(worker: Arc<W>, client: Client, config: watcher::Config) {
    let api: Api<DeserializeGuard<W::Object>> = Api::all(client);
    let (reader, writer) = reflector::store();
    // Every watch event, not just applied objects: the reflector's store takes in the
    // initial list only at InitDone, so scheduling on the InitApply events alone missed
    // objects that existed before the watch started until some later event came.
    let mut events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .boxed();
    let running = Arc::new(Mutex::new(Running::default()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    // Objects swept (or being swept) since the watch started.
    let mut swept: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return,
                Some(Err(e)) => { warn!(error = %e, kind = W::KIND, "watch error"); continue; }
                Some(Ok(_)) => {}
            },
            Some(()) = done_rx.recv() => {}
        }
        sweep_leftovers(&worker, &reader, &running, &done_tx, &mut swept);
        claim_pending(&worker, &reader, &running, &done_tx).await;
    }
}

/// Starts [`Worker::sweep`] for each object that needs it, once, when its lock is free.
fn sweep_leftovers<W: Worker>(
    worker: &Arc<W>,
    reader: &Store<DeserializeGuard<W::Object>>,
    running: &Arc<Mutex<Running>>,
    done: &mpsc::UnboundedSender<()>,
    swept: &mut HashSet<String>,
) {
    let leftovers: Vec<W::Object> = reader
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .filter(|o| worker.needs_sweep(o))
        .collect();
    for obj in leftovers {
        let (k, lock) = (key(&obj), worker.lock(&obj));
        {
            let Ok(mut r) = running.lock() else { return };
            // An object still running looks after itself.
            if r.locks.contains(&lock) || swept.contains(&k) {
                continue;
            }
            r.locks.insert(lock.clone());
        }
        swept.insert(k.clone());
        let span = tracing::info_span!("sweep", kind = W::KIND, object = %k);
        let (this, running, done) = (worker.clone(), running.clone(), done.clone());
        tokio::spawn(
            async move {
                if let Err(e) = this.sweep(obj).await {
                    warn!(kind = W::KIND, error = %e, "cleaning up after an ended object failed");
                }
                if let Ok(mut r) = running.lock() {
                    r.locks.remove(&lock);
                }
                let _ = done.send(());
            }
            .instrument(span),
        );
    }
}

/// The claimable objects of the store, oldest first (then by `namespace/name`).
fn pending<W: Worker>(worker: &W, reader: &Store<DeserializeGuard<W::Object>>) -> Vec<W::Object> {
    let mut pending: Vec<W::Object> = reader
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .filter(|o| worker.claimable(o))
        .collect();
    pending.sort_by_key(|o| (o.meta().creation_timestamp.clone().map(|t| t.0), key(o)));
    pending
}

/// Claims what it can of the pending objects and starts a task for each one claimed.
async fn claim_pending<W: Worker>(
    worker: &Arc<W>,
    reader: &Store<DeserializeGuard<W::Object>>,
    running: &Arc<Mutex<Running>>,
    done: &mpsc::UnboundedSender<()>,
) {
    for obj in pending(worker.as_ref(), reader) {
        let (k, lock) = (key(&obj), worker.lock(&obj));
        {
            let Ok(r) = running.lock() else { return };
            if r.objects.len() >= worker.capacity().max(1) {
                return;
            }
            if r.objects.contains(&k) || r.locks.contains(&lock) {
                continue;
            }
        }
        let claimed = match worker.try_claim(&obj).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                warn!(kind = W::KIND, object = %k, error = %e, "claiming failed");
                continue;
            }
        };
        {
            let Ok(mut r) = running.lock() else { return };
            r.objects.insert(k.clone());
            r.locks.insert(lock.clone());
        }
        let span = worker.span(&claimed);
        let (this, running, done) = (worker.clone(), running.clone(), done.clone());
        tokio::spawn(
            async move {
                info!("claimed");
                if let Err(e) = this.run_claimed(claimed).await {
                    error!(kind = W::KIND, error = %e, "could not record the outcome");
                }
                if let Ok(mut r) = running.lock() {
                    r.objects.remove(&k);
                    r.locks.remove(&lock);
                }
                let _ = done.send(());
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kube::runtime::watcher::Event;

    use super::*;

    /// Claims nothing: only [`pending`]'s choice is looked at.
    struct Picky;

    impl Worker for Picky {
        type Object = ConfigMap;
        type Error = String;
        const KIND: &'static str = "ConfigMap";
        fn capacity(&self) -> usize {
            1
        }
        fn claimable(&self, obj: &ConfigMap) -> bool {
            obj.labels().get("waiting").is_some_and(|v| v == "yes")
        }
        fn lock(&self, obj: &ConfigMap) -> String {
            obj.name_any()
        }
        async fn try_claim(&self, _: &ConfigMap) -> Result<Option<ConfigMap>, String> {
            Ok(None)
        }
        fn span(&self, _: &ConfigMap) -> tracing::Span {
            tracing::Span::none()
        }
        async fn run_claimed(self: Arc<Self>, _: ConfigMap) -> Result<(), String> {
            Ok(())
        }
    }

    fn object(ns: &str, name: &str, created: i64, waiting: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(created).expect("time"),
                )),
                labels: Some(
                    [(
                        "waiting".to_owned(),
                        if waiting { "yes" } else { "no" }.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn pending_is_the_claimable_objects_oldest_first_then_by_namespace_and_name() {
        let (reader, mut writer) = reflector::store::<DeserializeGuard<ConfigMap>>();
        for obj in [
            object("b", "x", 20, true),
            object("a", "y", 20, true),
            object("a", "x", 20, true),
            object("c", "late", 30, true),
            object("c", "early", 10, true),
            object("c", "earliest-but-running", 5, false),
        ] {
            writer.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(obj))));
        }
        let order: Vec<String> = pending(&Picky, &reader).iter().map(key).collect();
        assert_eq!(order, ["c/early", "a/x", "a/y", "b/x", "c/late"]);
    }
}
