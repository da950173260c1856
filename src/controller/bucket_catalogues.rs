//! The controller's copy of the catalogues it reads from buckets, shared by policies and
//! Restores (the bucket stays the source of truth): one [`CachedCatalogue`] per bucket, key
//! prefix, Secret and scope (a source host, or one dataset of it), so a read again lists the
//! scope and fetches only the manifests that are new or changed (`zetaback_objstore::cached`
//! says why a listing and not a conditional GET).
//!
//! * A **Restore** reads its source dataset's scope (a bulk Restore its source host's) now,
//!   every time: it must see the newest backup. A read of an unchanged scope is one listing.
//! * A **policy** reads each of its hosts' scope ([`HOSTS_AT_ONCE`] hosts at once) when it is
//!   cold, older than `max_age`, changed by the controller (retention, archive:
//!   [`BucketCatalogues::invalidate`]), or lacks a backup a succeeded BackupJob names; otherwise
//!   its copy serves without a request.
//! * Entries unused for [`IDLE`] are dropped, so memory follows what is read, one parsed
//!   manifest per backup in the scopes in use.
//!
//! The key holds the namespace and the Secret: a namespace's reads never serve another
//! namespace, whose keys may not be allowed the same bucket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::Client;
use zetaback_core::api::backup_policy::ObjectStoreTarget;
use zetaback_core::store::Catalogue;
use zetaback_objstore::cached::{CachedCatalogue, HOSTS_AT_ONCE, PARALLEL_GETS, Scope};
use zetaback_objstore::{Keys, connect};

use super::store_client::{HostCatalogue, KnownBackup, StoreView};

/// An entry not read for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(15 * 60);

/// Which cached catalogue: the namespace and Secret whose keys read it, the bucket, and the
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EntryKey {
    namespace: String,
    secret: String,
    endpoint: Option<String>,
    region: String,
    bucket: String,
    prefix: Option<String>,
    scope: Scope,
}

impl EntryKey {
    fn new(namespace: &str, target: &ObjectStoreTarget, scope: Scope) -> Self {
        Self {
            namespace: namespace.to_owned(),
            secret: target.credentials_secret.name.as_str().to_owned(),
            endpoint: target.endpoint.clone(),
            region: target.region.clone(),
            bucket: target.bucket.clone(),
            prefix: target.prefix.clone(),
            scope,
        }
    }
}

#[derive(Debug)]
struct Entry {
    cached: CachedCatalogue,
    /// When the last successful read started.
    read_at: Option<Instant>,
    /// Changed by the controller since: read again before use.
    dirty: bool,
    last_used: Instant,
    /// The catalogue of the last read, and its index for policies (built when first asked).
    catalogue: Arc<Catalogue>,
    indexed: Option<Arc<HostCatalogue>>,
    /// Backups succeeded jobs name that the last read did not find (deleted since, most
    /// likely): not a reason to read again until another one is missing.
    missing: HashSet<(String, String)>,
}

impl Entry {
    fn new(scope: Scope) -> Self {
        Self {
            cached: CachedCatalogue::new(scope),
            read_at: None,
            dirty: false,
            last_used: Instant::now(),
            catalogue: Arc::default(),
            indexed: None,
            missing: HashSet::new(),
        }
    }

    fn has(&self, dataset: &str, id: &str) -> bool {
        match &self.indexed {
            Some(i) => i.has(dataset, id),
            None => self
                .catalogue
                .backups
                .iter()
                .any(|b| b.manifest.dataset == dataset && b.manifest.id == id),
        }
    }
}

/// How current a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Read now (a Restore).
    Now,
    /// A copy younger than this serves, unless changed or missing a known backup (a policy).
    MaxAge(Duration),
}

/// Whether an entry must be read before use (pure): cold, dirty, too old, or missing a backup
/// a succeeded job names that the last read did not already miss.
pub fn must_read(
    age: Option<Duration>,
    dirty: bool,
    freshness: Freshness,
    newly_missing: bool,
) -> bool {
    match (age, freshness) {
        (None, _) | (_, Freshness::Now) => true,
        (Some(age), Freshness::MaxAge(max)) => dirty || age >= max || newly_missing,
    }
}

/// Every cached bucket catalogue of the controller ([module docs](self)).
#[derive(Debug)]
pub struct BucketCatalogues {
    max_age: Duration,
    entries: std::sync::Mutex<HashMap<EntryKey, Arc<tokio::sync::Mutex<Entry>>>>,
    /// Reads that listed a scope, and manifests fetched by them (for logs and the bench).
    pub reads: AtomicU64,
    pub fetched: AtomicU64,
}

impl BucketCatalogues {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: std::sync::Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        }
    }

    /// The entry for `key` (made empty if new); drops idle ones.
    fn entry(&self, key: EntryKey) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, e| e.try_lock().map_or(true, |e| e.last_used.elapsed() < IDLE));
        let scope = key.scope.clone();
        map.entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Entry::new(scope))))
            .clone()
    }

    /// Marks every cached scope of `host` in `target`'s bucket as changed (read again before
    /// use): after retention or an archive by the controller.
    pub fn invalidate(&self, namespace: &str, target: &ObjectStoreTarget, host: &str) {
        let map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let probe = EntryKey::new(namespace, target, Scope::Host(String::new()));
        for (k, e) in map.iter() {
            let same_bucket = EntryKey {
                scope: probe.scope.clone(),
                ..k.clone()
            } == probe;
            let of_host = match &k.scope {
                Scope::Host(h) | Scope::Dataset { host: h, .. } => h == host,
            };
            if same_bucket && of_host {
                // A locked entry is being read right now; that read is no older than this
                // change's effects (DELETEs are done), or the next max_age catches it.
                if let Ok(mut e) = e.try_lock() {
                    e.dirty = true;
                }
            }
        }
    }

    /// The catalogue of `scope`, read again if `freshness` asks; the error is a sentence for
    /// a status.
    pub async fn catalogue(
        &self,
        client: &Client,
        namespace: &str,
        target: &ObjectStoreTarget,
        scope: Scope,
        freshness: Freshness,
    ) -> Result<Arc<Catalogue>, String> {
        let entry = self.entry(EntryKey::new(namespace, target, scope));
        let mut e = entry.lock().await;
        self.ensure(&mut e, client, namespace, target, freshness, &[])
            .await?;
        Ok(e.catalogue.clone())
    }

    /// A policy's view of its hosts' backups in the bucket. `known`: backups succeeded jobs
    /// name; a host whose copy lacks one is read again.
    pub async fn view(
        &self,
        client: &Client,
        namespace: &str,
        target: &ObjectStoreTarget,
        hosts: &[String],
        known: &[KnownBackup],
    ) -> Result<StoreView, String> {
        if hosts.is_empty() {
            // Nothing to read, but a bucket the keys cannot read must still show.
            self.probe(client, namespace, target).await?;
        }
        // Several hosts at once ([`HOSTS_AT_ONCE`]); the view keeps the hosts' order.
        let reads = hosts
            .iter()
            .cloned()
            .map(|host| self.read_host(client, namespace, target, host, known));
        let out: Vec<(String, Arc<HostCatalogue>)> = futures::stream::iter(reads)
            .buffered(HOSTS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(StoreView::from_hosts(out))
    }

    /// One host's part of [`Self::view`]: its scope read if it must be, and its index.
    async fn read_host(
        &self,
        client: &Client,
        namespace: &str,
        target: &ObjectStoreTarget,
        host: String,
        known: &[KnownBackup],
    ) -> Result<(String, Arc<HostCatalogue>), String> {
        let entry = self.entry(EntryKey::new(namespace, target, Scope::Host(host.clone())));
        let mut e = entry.lock().await;
        let mine: Vec<(String, String)> = known
            .iter()
            .filter(|(h, _, _)| *h == host)
            .map(|(_, ds, id)| (ds.clone(), id.clone()))
            .collect();
        self.ensure(
            &mut e,
            client,
            namespace,
            target,
            Freshness::MaxAge(self.max_age),
            &mine,
        )
        .await?;
        let indexed = match &e.indexed {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(HostCatalogue::of_host(&e.catalogue, &host));
                e.indexed = Some(i.clone());
                i
            }
        };
        Ok((host, indexed))
    }

    /// Whether the target's keys can list its prefix (one request per page of its first level).
    async fn probe(
        &self,
        client: &Client,
        namespace: &str,
        target: &ObjectStoreTarget,
    ) -> Result<(), String> {
        let creds = super::object_store::credentials(client, namespace, target).await?;
        let store = connect(target, &creds).map_err(|err| err.to_string())?;
        let keys = Keys::new(target.prefix.as_deref());
        store
            .list_with_delimiter(keys.root().as_ref())
            .await
            .map(|_| ())
            .map_err(|err| super::object_store::readable(target, &err.to_string()))
    }

    /// Reads `e` again if it must be ([`must_read`]).
    async fn ensure(
        &self,
        e: &mut Entry,
        client: &Client,
        namespace: &str,
        target: &ObjectStoreTarget,
        freshness: Freshness,
        known: &[(String, String)],
    ) -> Result<(), String> {
        e.last_used = Instant::now();
        let newly_missing = known
            .iter()
            .any(|k| !e.missing.contains(k) && !e.has(&k.0, &k.1));
        if !must_read(
            e.read_at.map(|t| t.elapsed()),
            e.dirty,
            freshness,
            newly_missing,
        ) {
            return Ok(());
        }
        let started = Instant::now();
        let creds = super::object_store::credentials(client, namespace, target).await?;
        let store = connect(target, &creds).map_err(|err| err.to_string())?;
        let keys = Keys::new(target.prefix.as_deref());
        let stats = e
            .cached
            .refresh(store.as_ref(), &keys, PARALLEL_GETS)
            .await
            .map_err(|err| super::object_store::request_sentence(target, &err))?;
        self.reads.fetch_add(1, Relaxed);
        self.fetched.fetch_add(stats.fetched, Relaxed);
        if stats.manifests_changed() || e.read_at.is_none() || e.dirty {
            e.catalogue = Arc::new(e.cached.catalogue());
            e.indexed = None;
        } else {
            // Same manifests; a stream's size may still have changed (compared anew).
            let now = e.cached.catalogue();
            if now.backups.len() != e.catalogue.backups.len()
                || now.problems != e.catalogue.problems
            {
                e.catalogue = Arc::new(now);
                e.indexed = None;
            }
        }
        if let (None, Scope::Host(h)) = (&e.indexed, e.cached.scope()) {
            e.indexed = Some(Arc::new(HostCatalogue::of_host(&e.catalogue, h)));
        }
        e.missing = known
            .iter()
            .filter(|k| !e.has(&k.0, &k.1))
            .cloned()
            .collect();
        e.read_at = Some(started);
        e.dirty = false;
        tracing::debug!(bucket = %target.bucket, scope = ?e.cached.scope(), listed = stats.listed,
            fetched = stats.fetched, reused = stats.reused, gone = stats.gone,
            took_ms = started.elapsed().as_millis() as u64, "bucket catalogue read");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn when_a_copy_is_read_again() {
        let age = |s| Some(Duration::from_secs(s));
        // Cold: always.
        assert!(must_read(None, false, Freshness::MaxAge(MIN), false));
        // A Restore: always, however young the copy.
        assert!(must_read(age(0), false, Freshness::Now, false));
        // A policy: a young, clean copy with every known backup serves.
        assert!(!must_read(age(59), false, Freshness::MaxAge(MIN), false));
        assert!(must_read(age(60), false, Freshness::MaxAge(MIN), false));
        assert!(must_read(age(1), true, Freshness::MaxAge(MIN), false));
        assert!(must_read(age(1), false, Freshness::MaxAge(MIN), true));
    }

    fn target(bucket: &str, secret: &str) -> ObjectStoreTarget {
        serde_json::from_value(serde_json::json!({
            "endpoint": "http://s3.example:8333", "bucket": bucket, "prefix": "p",
            "pathStyle": true, "credentialsSecret": {"name": secret},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn invalidate_marks_only_that_bucket_and_host() {
        let cache = BucketCatalogues::new(MIN);
        let t = target("b", "keys");
        let keys = [
            EntryKey::new("ns", &t, Scope::Host("h1".into())),
            EntryKey::new(
                "ns",
                &t,
                Scope::Dataset {
                    host: "h1".into(),
                    dataset: "tank/a".into(),
                },
            ),
            EntryKey::new("ns", &t, Scope::Host("h2".into())),
            EntryKey::new("ns", &target("other", "keys"), Scope::Host("h1".into())),
            EntryKey::new("ns2", &t, Scope::Host("h1".into())),
        ];
        let entries: Vec<_> = keys.iter().map(|k| cache.entry(k.clone())).collect();
        cache.invalidate("ns", &t, "h1");
        let mut dirty = Vec::new();
        for e in &entries {
            dirty.push(e.lock().await.dirty);
        }
        assert_eq!(dirty, [true, true, false, false, false]);
        // Namespaces and Secrets never share an entry.
        assert_eq!(cache.entries.lock().unwrap().len(), 5);
        let again = cache.entry(EntryKey::new(
            "ns",
            &target("b", "keys2"),
            Scope::Host("h1".into()),
        ));
        assert!(!Arc::ptr_eq(&again, &entries[0]));
    }
}
