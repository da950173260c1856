//! The memory all cache fills in flight may hold at once (`cache.maxFillBytes`): each fill's
//! copy of the body it is storing is bounded by `maxObjectSize`, and their sum by this budget.
//! A fill that cannot get the bytes it needs streams through uncached (its client is answered
//! from the backend as it is now, nothing is stored, and the key is not marked uncacheable:
//! the next request fills it again when memory is free). Refusing with 503 instead would fail
//! a request the backend is answering anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The shared budget.
#[derive(Debug)]
pub struct FillBudget {
    limit: u64,
    used: AtomicU64,
}

impl FillBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes held by fills now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A reservation of `bytes`, or `None` when the budget cannot spare them.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut r = Reservation {
            budget: self.clone(),
            bytes: 0,
        };
        r.grow_to(bytes).then_some(r)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }
}

/// Bytes one fill holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<FillBudget>,
    bytes: u64,
}

impl Reservation {
    /// Grows the reservation to `total` bytes (nothing when it holds that much already);
    /// false, unchanged, when the budget cannot spare the difference.
    pub fn grow_to(&mut self, total: u64) -> bool {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        if !self.budget.take(more) {
            return false;
        }
        self.bytes = total;
        true
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let b = FillBudget::new(100);
        let mut a = b.reserve(60).expect("60 of 100");
        assert_eq!(b.used(), 60);
        assert!(b.reserve(41).is_none(), "only 40 left");
        assert_eq!(b.used(), 60, "a refusal takes nothing");
        let c = b.reserve(40).expect("40 left");
        assert!(!a.grow_to(61), "nothing left");
        assert_eq!(a.bytes(), 60);
        assert!(a.grow_to(10), "already held");
        drop(c);
        assert!(a.grow_to(100));
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(0).is_some());
        assert!(b.reserve(u64::MAX).is_none(), "no overflow");
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let b = FillBudget::new(1000);
        let held: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..50).filter_map(|_| b.reserve(7)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(held.len(), 1000 / 7);
        assert!(b.used() <= 1000);
        drop(held);
        assert_eq!(b.used(), 0);
    }
}
