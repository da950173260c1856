//! The response cache (moka, weighed by bytes), the Vary index, hit-for-pass
//! marks and the in-flight map used for request coalescing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_cache_semantics::CachePolicy;
use moka::Expiry;
use moka::sync::Cache;
use tokio::sync::watch;

use crate::config::CacheConfig;
use crate::front::{self, Front};

/// Bytes charged per entry of the owner, Vary and pass caches on top of
/// its key and value (moka's entry with its TTL node, the map slot, the key
/// allocation, allocator slack). Measured with moka 0.12: 200,000 owner
/// entries with 49-byte keys grew RSS by 421 bytes each (pass marks: 405).
pub const ENTRY_OVERHEAD: usize = 384;

/// `X-Cache` on every answer: HIT, MISS, STALE or PASS.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A stored response.
pub struct CachedObject {
    pub status: StatusCode,
    /// Headers as served (hop-by-hop removed, without Content-Length/Age).
    pub headers: HeaderMap,
    /// The whole response head of a plain hit, built once: `headers` plus
    /// `Age: 0`, `X-Cache: HIT`, `Content-Length` and `Via: head_via`. A hit
    /// clones it and replaces the Age value in place (no map growth).
    pub head: HeaderMap,
    /// The Via value `head` was built with (a reload may change it).
    pub head_via: HeaderValue,
    pub body: Bytes,
    pub policy: CachePolicy,
    /// Path and query the policy was made for.
    pub uri: Uri,
    /// Name of the backend that produced it.
    pub backend: Option<Arc<str>>,
    /// Stored at (monotonic) and fresh until.
    pub stored: Instant,
    pub fresh_until: Instant,
    /// End of the grace window (stale-while-revalidate).
    pub grace_until: Instant,
    /// Age at the time of storing (from Age header and Date), in seconds.
    pub initial_age: Duration,
    /// Extra lifetime in the store after the grace window.
    pub keep: Duration,
    /// The (variant) key it is stored under; set by [`Store::insert`].
    pub key: Box<str>,
    /// Set once the store dropped it (replaced, invalidated, expired,
    /// evicted): the hit index ([`crate::front`]) never serves it then.
    retired: AtomicBool,
    /// Hits answered by the hit index, to pass one in
    /// [`front::RECORD_EVERY`] on to moka.
    front_hits: AtomicU32,
    weight: u32,
}

impl CachedObject {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key_len: usize,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        policy: CachePolicy,
        uri: Uri,
        backend: Option<Arc<str>>,
        ttl: Duration,
        grace: Duration,
        keep: Duration,
        now: SystemTime,
        via: &HeaderValue,
    ) -> Self {
        let stored = Instant::now();
        let fresh_until = stored + ttl;
        let grace_until = fresh_until + grace;
        let initial_age = policy.age(now);
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        // Measured (bench/fallback): a small object costs about 5.5 KiB of
        // heap beyond its body (object and policy header maps, moka entry,
        // keys, allocator slack); err on the high side so RSS stays within
        // maxSize plus a fixed overhead.
        // The prebuilt head shares the values; its own tables cost about
        // 80 bytes per header.
        let head = served_head(&headers, body.len(), via);
        // Keys: moka's, the object's own (`key`) and the policy's URI.
        let weight = key_len * 3 + body.len() + header_bytes * 4 + head.len() * 80 + 4096;
        Self {
            status,
            headers,
            head,
            head_via: via.clone(),
            body,
            policy,
            uri,
            backend,
            stored,
            fresh_until,
            grace_until,
            initial_age,
            keep,
            key: Box::default(),
            retired: AtomicBool::new(false),
            front_hits: AtomicU32::new(0),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Mark it dropped by the store (see [`crate::front`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Count a hit answered by the hit index; true for the hits that must
    /// reach moka too.
    fn front_hit_recorded(&self) -> bool {
        self.front_hits
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .is_multiple_of(front::RECORD_EVERY)
    }

    /// Current Age in seconds.
    pub fn age_secs(&self) -> u64 {
        self.age_secs_at(Instant::now())
    }

    /// Age in seconds at `now` (a time the caller already read).
    pub fn age_secs_at(&self, now: Instant) -> u64 {
        (self.initial_age + now.saturating_duration_since(self.stored)).as_secs()
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    pub fn in_grace(&self, now: Instant) -> bool {
        now < self.grace_until
    }
}

/// The head of a plain (no Range, not conditional) answer from a stored
/// object, in the order the headers were always sent: the stored headers,
/// Age, X-Cache, Content-Length, then Via.
fn served_head(headers: &HeaderMap, body_len: usize, via: &HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        h.append(name.clone(), value.clone());
    }
    h.insert(header::AGE, HeaderValue::from_static("0"));
    h.insert(&X_CACHE, HeaderValue::from_static("HIT"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    h.append(header::VIA, via.clone());
    h
}

struct ObjectExpiry;

impl Expiry<String, Arc<CachedObject>> for ObjectExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedObject>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(
            value
                .grace_until
                .saturating_duration_since(created_at)
                .saturating_add(value.keep),
        )
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<CachedObject>,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// Response cache plus the Vary index and hit-for-pass marks.
pub struct Store {
    pub objects: Cache<String, Arc<CachedObject>>,
    /// The hit index in front of `objects` ([`crate::front`]).
    front: Arc<Front>,
    /// primary key -> header names the stored variants vary on
    pub vary: Cache<String, Arc<Vec<HeaderName>>>,
    /// primary keys recently found uncacheable
    pub pass: Cache<String, ()>,
    pub max_object_size: u64,
    sizing: (u64, Duration, u64),
    /// Set once any response had Vary / any key was marked pass, so the
    /// common case does a single lookup per hit.
    any_vary: AtomicBool,
    any_pass: AtomicBool,
}

impl Store {
    pub fn new(cfg: &CacheConfig) -> Self {
        let front = Arc::new(Front::new());
        let dropped = front.clone();
        let objects = Cache::builder()
            .max_capacity(cfg.max_size)
            .weigher(|k: &String, v: &Arc<CachedObject>| {
                v.weight
                    .saturating_add(u32::try_from(k.len()).unwrap_or(u32::MAX))
            })
            .expire_after(ObjectExpiry)
            // Every removal, whatever its cause, leaves the hit index too.
            .eviction_listener(move |_key, obj: Arc<CachedObject>, _cause| {
                obj.retire();
                dropped.forget(&obj);
            })
            .build();
        // Keys are client-chosen URLs: bound these by bytes, not by count.
        let vary = Cache::builder()
            .max_capacity(cfg.index_max_size)
            .weigher(|k: &String, v: &Arc<Vec<HeaderName>>| {
                let names: usize = v.iter().map(|n| n.as_str().len() + 16).sum();
                u32::try_from(k.len() + names + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_idle(Duration::from_secs(3600))
            .build();
        let pass = Cache::builder()
            .max_capacity(cfg.index_max_size)
            .weigher(|k: &String, _: &()| {
                u32::try_from(k.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(cfg.pass_ttl.max(Duration::from_millis(1)))
            .build();
        Self {
            objects,
            front,
            vary,
            pass,
            max_object_size: cfg.max_object_size,
            sizing: (cfg.max_size, cfg.pass_ttl, cfg.index_max_size),
            any_vary: AtomicBool::new(false),
            any_pass: AtomicBool::new(false),
        }
    }

    /// Whether a new config can keep using this store.
    pub fn compatible(&self, cfg: &CacheConfig) -> bool {
        self.sizing == (cfg.max_size, cfg.pass_ttl, cfg.index_max_size)
    }

    /// The object stored under a variant key, for a fresh-hit lookup: from
    /// the hit index when it is there (one hit in
    /// [`front::RECORD_EVERY`] still goes through moka), else from moka,
    /// and then remembered in the index.
    pub fn get_hit(&self, key: &str) -> Option<Arc<CachedObject>> {
        if let Some(obj) = self.front.get(key)
            && !obj.front_hit_recorded()
        {
            return Some(obj);
        }
        let obj = self.objects.get(key)?;
        self.front.remember(&obj);
        Some(obj)
    }

    /// Objects in the hit index.
    pub fn front_len(&self) -> usize {
        self.front.len()
    }

    /// Key of the variant this request maps to (the primary key itself,
    /// borrowed, unless the key's responses vary).
    pub fn variant_key<'a>(&self, primary: &'a str, req: &HeaderMap) -> Cow<'a, str> {
        if !self.any_vary.load(Ordering::Relaxed) {
            return Cow::Borrowed(primary);
        }
        match self.vary.get(primary) {
            Some(names) => Cow::Owned(crate::key::variant_key(primary, &names, req)),
            None => Cow::Borrowed(primary),
        }
    }

    /// Store a response under its variant key: the primary key plus the
    /// request's values of `names` (the Vary'd headers the fill sent).
    pub fn insert(
        &self,
        primary: &str,
        req: &HeaderMap,
        names: Vec<HeaderName>,
        mut obj: CachedObject,
    ) -> Arc<CachedObject> {
        let key = crate::key::variant_key(primary, &names, req);
        obj.key = key.as_str().into();
        if names.is_empty() {
            if self.any_vary.load(Ordering::Relaxed) {
                self.vary.invalidate(primary);
            }
        } else {
            self.any_vary.store(true, Ordering::Relaxed);
            self.vary.insert(primary.to_string(), Arc::new(names));
        }
        if self.any_pass.load(Ordering::Relaxed) {
            self.pass.invalidate(primary);
        }
        let obj = Arc::new(obj);
        self.objects.insert(key, obj.clone());
        obj
    }

    /// Send this key straight to the backends for `passTtl` (hit-for-pass).
    pub fn mark_pass(&self, primary: &str) {
        self.any_pass.store(true, Ordering::Relaxed);
        self.pass.insert(primary.to_string(), ());
    }

    /// Whether this key is currently marked pass.
    pub fn is_pass(&self, primary: &str) -> bool {
        self.any_pass.load(Ordering::Relaxed) && self.pass.contains_key(primary)
    }

    /// Forget everything stored for a primary key (unsafe method succeeded).
    pub fn invalidate(&self, primary: &str, req: &HeaderMap) {
        let key = self.variant_key(primary, req);
        self.objects.invalidate(key.as_ref());
        self.objects.invalidate(primary);
        self.vary.invalidate(primary);
    }
}

/// Coalescing: one leader per key fetches, others wait for it.
#[derive(Default)]
pub struct Inflight {
    map: Mutex<HashMap<String, watch::Sender<()>>>,
}

/// Held by the leader; waking waiters when dropped.
pub struct LeaderGuard {
    inflight: Arc<Inflight>,
    key: String,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        let sender = match self.inflight.map.lock() {
            Ok(mut m) => m.remove(&self.key),
            Err(poisoned) => poisoned.into_inner().remove(&self.key),
        };
        drop(sender);
    }
}

/// Outcome of joining a flight.
pub enum Flight {
    Leader(LeaderGuard),
    Waiter(watch::Receiver<()>),
}

impl Inflight {
    /// Become the leader for `key`, or get a receiver that completes when
    /// the current leader is done.
    pub fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut m = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = m.get(key) {
            return Flight::Waiter(tx.subscribe());
        }
        let (tx, _rx) = watch::channel(());
        m.insert(key.to_string(), tx);
        Flight::Leader(LeaderGuard {
            inflight: self.clone(),
            key: key.to_string(),
        })
    }

    /// Become leader only if nobody is (for background refreshes).
    pub fn try_lead(self: &Arc<Self>, key: &str) -> Option<LeaderGuard> {
        match self.join(key) {
            Flight::Leader(g) => Some(g),
            Flight::Waiter(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wait until the leader drops its guard.
pub async fn wait(mut rx: watch::Receiver<()>) {
    // Err means the sender was dropped: the leader is done.
    while rx.changed().await.is_ok() {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh 200 with `body`, cacheable for 60 s, whose key is `key_len` bytes long: the
    /// fixture of this module's tests and of `front`'s.
    pub(crate) fn fresh_object(key_len: usize, body: Bytes) -> CachedObject {
        let uri: Uri = "/x".parse().expect("uri");
        let now = SystemTime::now();
        let policy = crate::storability::make_policy(
            &uri,
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
            Duration::from_secs(60),
            now,
        );
        CachedObject::new(
            key_len,
            StatusCode::OK,
            HeaderMap::new(),
            body,
            policy,
            uri,
            None,
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::ZERO,
            now,
            &HeaderValue::from_static("1.1 test"),
        )
    }

    fn object(body: &str) -> CachedObject {
        fresh_object(8, Bytes::from(body.to_string()))
    }

    #[test]
    fn hits_never_see_what_the_store_dropped() {
        let store = Store::new(&CacheConfig {
            max_size: 64 * 1024,
            ..CacheConfig::default()
        });
        let req = HeaderMap::new();
        let a = store.insert("h/a", &req, vec![], object("one"));
        assert!(Arc::ptr_eq(&store.get_hit("h/a").expect("hit"), &a));
        assert_eq!(store.front_len(), 1, "a hit is remembered");
        // Replaced: every later hit (from the index or moka) is the new one.
        let b = store.insert("h/a", &req, vec![], object("two"));
        assert!(a.is_retired());
        for _ in 0..3 * front::RECORD_EVERY {
            assert!(Arc::ptr_eq(&store.get_hit("h/a").expect("hit"), &b));
        }
        // Invalidated (an unsafe method succeeded): no hit at all.
        store.invalidate("h/a", &req);
        assert!(b.is_retired());
        assert!(store.get_hit("h/a").is_none());
        assert_eq!(store.front_len(), 0);
        // Evicted for size (or refused admission): 200 objects of at least
        // 4 KiB each in 64 KiB, each hit as soon as it is stored.
        let all: Vec<_> = (0..200)
            .map(|i| {
                let key = format!("h/f{i}");
                let obj = store.insert(&key, &req, vec![], object(&key));
                let _ = store.get_hit(&key);
                store.objects.run_pending_tasks();
                (key, obj)
            })
            .collect();
        store.objects.run_pending_tasks();
        let dropped = all.iter().filter(|(_, o)| o.is_retired()).count();
        assert!(dropped > 150, "only {dropped} of 200 dropped");
        for (key, obj) in &all {
            match store.front.get(key) {
                Some(o) => {
                    assert!(Arc::ptr_eq(&o, obj), "{key}");
                    let held = store.objects.get(key).expect("the store holds it");
                    assert!(Arc::ptr_eq(&held, obj), "{key}");
                }
                None => assert!(
                    obj.is_retired() || store.objects.get(key).is_none(),
                    "{key} is held but was not remembered"
                ),
            }
        }
        assert!(store.front_len() as u64 <= store.objects.entry_count());
    }

    #[tokio::test]
    async fn coalescing_one_leader() {
        let inf = Arc::new(Inflight::default());
        let g = match inf.join("k") {
            Flight::Leader(g) => g,
            Flight::Waiter(_) => panic!("first must lead"),
        };
        let rx = match inf.join("k") {
            Flight::Waiter(rx) => rx,
            Flight::Leader(_) => panic!("second must wait"),
        };
        assert!(inf.try_lead("k").is_none());
        let waiter = tokio::spawn(wait(rx));
        drop(g);
        waiter.await.expect("waiter finishes");
        assert!(inf.is_empty());
        assert!(inf.try_lead("k").is_some());
    }
}
