//! The hit index: a small sharded hash table in front of the response cache
//! (moka) that answers a hit's lookup with one hashed probe instead of
//! moka's (its epoch pin, read recording and the housekeeping that applies
//! the recorded reads).
//!
//! It holds only objects moka holds: an object enters on a hit that went
//! through moka, and leaves when moka drops it (the store's eviction
//! listener retires the object and calls [`Front::forget`] for every
//! removal: replaced, invalidated, expired, evicted for size). A retired
//! object is never served, also when a lookup races with its removal: the
//! flag is set before the removal, and [`Front::remember`] checks it under
//! the same shard lock. It holds no key of its own (each object knows its
//! key), so it costs a pointer per entry and never more entries than moka
//! has.
//!
//! Moka still has to see reads, or its eviction would take the most used
//! objects for unused ones: one hit in [`RECORD_EVERY`] of each object goes
//! through moka as well (and the first hit of every object does).

use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;

use crate::cache::CachedObject;

/// One hit of an object in this many is also looked up in moka.
pub const RECORD_EVERY: u32 = 8;

/// Shards, each behind its own lock (worker threads rarely meet).
const SHARDS: usize = 16;

type Shard = HashTable<Arc<CachedObject>>;

/// The index; one per [`crate::cache::Store`].
pub struct Front {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Front {
    fn default() -> Self {
        Self::new()
    }
}

impl Front {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The shard of a hash: bits the table itself does not use for its
    /// bucket index (low bits) or its control bytes (top 7 bits).
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let i = usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0);
        match self.shards[i].lock() {
            Ok(g) => g,
            // A panic while holding the lock cannot leave a table half
            // updated in a way that matters here (entries are only pointers).
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The live object remembered under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        shard
            .find(hash, |o| &*o.key == key)
            .filter(|o| !o.is_retired())
            .cloned()
    }

    /// Remember an object moka just returned, under its key (replacing
    /// whatever was remembered under that key). A retired object is not
    /// remembered.
    pub fn remember(&self, obj: &Arc<CachedObject>) {
        let hash = self.hash(&obj.key);
        let mut shard = self.shard(hash);
        // Under the lock: `forget` of this object either ran before (then
        // the flag is already visible) or runs after and removes it.
        if obj.is_retired() {
            return;
        }
        match shard.find_mut(hash, |o| o.key == obj.key) {
            Some(slot) => *slot = obj.clone(),
            None => {
                shard.insert_unique(hash, obj.clone(), |o| self.hash(&o.key));
            }
        }
    }

    /// Drop `obj` (and only it: a newer object under the same key stays).
    /// The caller has retired it first.
    pub fn forget(&self, obj: &Arc<CachedObject>) {
        let hash = self.hash(&obj.key);
        let mut shard = self.shard(hash);
        if let Ok(entry) = shard.find_entry(hash, |o| Arc::ptr_eq(o, obj)) {
            entry.remove();
        }
    }

    /// Objects remembered (all shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(g) => g.len(),
                Err(p) => p.into_inner().len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn object(key: &str, body: &'static str) -> Arc<CachedObject> {
        let mut obj =
            crate::cache::tests::fresh_object(key.len(), Bytes::from_static(body.as_bytes()));
        obj.key = key.into();
        Arc::new(obj)
    }

    #[test]
    fn remembers_by_key_and_serves_nothing_retired() {
        let front = Front::new();
        let a = object("h/a", "a");
        let b = object("h/b", "b");
        front.remember(&a);
        front.remember(&b);
        assert!(Arc::ptr_eq(&front.get("h/a").expect("a"), &a));
        assert!(Arc::ptr_eq(&front.get("h/b").expect("b"), &b));
        assert!(front.get("h/c").is_none());
        assert!(front.get("h/a?").is_none());
        // Retired but not yet forgotten (a lookup racing with the removal).
        a.retire();
        assert!(front.get("h/a").is_none());
        // A retired object is not remembered again.
        front.forget(&a);
        front.remember(&a);
        assert!(front.get("h/a").is_none());
        assert_eq!(front.len(), 1);
    }

    #[test]
    fn forgetting_an_old_object_keeps_its_replacement() {
        let front = Front::new();
        let old = object("h/k", "old");
        let new = object("h/k", "new");
        front.remember(&old);
        front.remember(&new);
        assert_eq!(front.len(), 1, "one entry per key");
        old.retire();
        front.forget(&old);
        assert!(Arc::ptr_eq(&front.get("h/k").expect("new stays"), &new));
        new.retire();
        front.forget(&new);
        assert!(front.get("h/k").is_none());
        assert!(front.is_empty());
    }

    #[test]
    fn many_keys_in_all_shards() {
        let front = Front::new();
        let objs: Vec<_> = (0..2000)
            .map(|i| object(&format!("h/f{i}.txt"), "x"))
            .collect();
        for o in &objs {
            front.remember(o);
        }
        assert_eq!(front.len(), objs.len());
        for (i, o) in objs.iter().enumerate() {
            let got = front.get(&format!("h/f{i}.txt")).expect("found");
            assert!(Arc::ptr_eq(&got, o), "{i}");
        }
        for o in objs.iter().step_by(2) {
            o.retire();
            front.forget(o);
        }
        assert_eq!(front.len(), objs.len() / 2);
        for (i, o) in objs.iter().enumerate() {
            assert_eq!(front.get(&o.key).is_some(), i % 2 == 1, "{i}");
        }
    }
}
