//! The space promised to streams admitted and still being written, so that two streams that
//! each fit alone are not both admitted when together they do not (issue 14).
//!
//! The free space read from the file system (`statvfs`) or the pool (`zfs get available`)
//! only counts what has been written. A stream admitted a moment ago has written next to
//! nothing, so the next admission, reading the free space, would promise the same bytes
//! again. The ledger remembers what every admitted stream may still write:
//!
//! - an admitted stream **holds** what the caller's check decides, seeing the free space and
//!   the other holds (the agent's stores: the announced size, `Content-Length`; else the
//!   sender's estimate, `x-zetaback-expected-bytes`, never more than the stream may take — its
//!   size limit, what is left of its host's quota, the free space above the reserve — so that
//!   a hostile sender announcing a huge estimate cannot hold other hosts' streams out; else
//!   the free-space reserve: the margin the operator keeps for what cannot be foreseen);
//! - what the stream has written and the free-space reading already counts (**landed**,
//!   reported by the writer through [`Reservation::landed`]) no longer counts against the
//!   hold: a stream is never counted twice. A writer that cannot tell when its bytes reach
//!   the free-space reading (a ZFS receive: `available` changes only when a transaction group
//!   is synced) reports nothing, and its stream holds everything until it ends;
//! - the next admission sees the free space less what every admitted stream still holds
//!   ([`Seen::available`]); the check and the new hold happen under one lock, so two
//!   admissions at once cannot both take the same bytes;
//! - the hold is released when its [`Reservation`] is dropped: the stream committed, failed,
//!   was refused later, or its request was cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What an admission sees: the free space read, and what admitted streams still hold of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The free space as read from the file system or pool.
    pub free: u64,
    /// Bytes admitted streams may still write (their holds less what landed).
    pub held: u64,
}

impl Seen {
    /// The free space a new stream may count on.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.held)
    }
}

/// What a stream holding `hold` bytes still holds once `landed` of them are written.
pub fn still_held(hold: u64, landed: u64) -> u64 {
    hold.saturating_sub(landed)
}

/// One admitted stream.
#[derive(Debug)]
struct Entry {
    hold: u64,
    landed: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Book {
    next: u64,
    entries: BTreeMap<u64, Entry>,
}

impl Book {
    fn held(&self) -> u64 {
        self.entries
            .values()
            .map(|e| still_held(e.hold, e.landed.load(Ordering::Relaxed)))
            .fold(0u64, u64::saturating_add)
    }
}

/// The holds of the streams admitted into one file system or pool. Clones share the book.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Book>>);

impl Ledger {
    fn book(&self) -> MutexGuard<'_, Book> {
        // The book is changed by single insertions and removals: a panic elsewhere while it
        // was locked cannot leave it half-changed, so a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a stream if `check` accepts what it sees (the free space `free` and what admitted
    /// streams still hold): the stream then holds the bytes `check` returns; `check`'s refusal
    /// otherwise. The check and the hold happen under the ledger's lock.
    pub fn admit<E>(
        &self,
        free: u64,
        check: impl FnOnce(Seen) -> Result<u64, E>,
    ) -> Result<Reservation, E> {
        let mut book = self.book();
        let hold = check(Seen {
            free,
            held: book.held(),
        })?;
        let id = book.next;
        book.next = book.next.wrapping_add(1);
        let landed = Arc::new(AtomicU64::new(0));
        book.entries.insert(
            id,
            Entry {
                hold,
                landed: landed.clone(),
            },
        );
        Ok(Reservation {
            ledger: self.clone(),
            id,
            landed,
        })
    }

    /// Bytes the admitted streams still hold.
    pub fn held(&self) -> u64 {
        self.book().held()
    }

    /// Streams admitted and not yet finished.
    pub fn streams(&self) -> usize {
        self.book().entries.len()
    }
}

/// An admitted stream's hold, released on drop.
#[derive(Debug)]
pub struct Reservation {
    ledger: Ledger,
    id: u64,
    landed: Arc<AtomicU64>,
}

impl Reservation {
    /// `n` more bytes of the stream are written where the free-space reading counts them.
    pub fn landed(&self, n: u64) {
        self.landed.fetch_add(n, Ordering::Relaxed);
    }

    /// The counter behind [`Reservation::landed`], for a writer on another thread.
    pub fn landed_counter(&self) -> Arc<AtomicU64> {
        self.landed.clone()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ledger.book().entries.remove(&self.id);
    }
}

/// One ledger per key (a replica pool's name), created on first use.
#[derive(Debug, Clone, Default)]
pub struct Ledgers(Arc<Mutex<BTreeMap<String, Ledger>>>);

impl Ledgers {
    /// The ledger of `key`.
    pub fn of(&self, key: &str) -> Ledger {
        // Ledgers are only ever added: a poisoned map is still good.
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(key.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check the stores make: a stream of `need` bytes fits in what is available, and
    /// then holds them.
    fn fits(need: u64) -> impl FnOnce(Seen) -> Result<u64, Seen> {
        move |seen| {
            if seen.available() >= need {
                Ok(need)
            } else {
                Err(seen)
            }
        }
    }

    #[test]
    fn what_is_seen_is_the_free_space_less_the_holds() {
        assert_eq!(Seen { free: 10, held: 3 }.available(), 7);
        assert_eq!(Seen { free: 10, held: 10 }.available(), 0);
        assert_eq!(Seen { free: 3, held: 10 }.available(), 0);
        assert_eq!(
            Seen {
                free: u64::MAX,
                held: 0
            }
            .available(),
            u64::MAX
        );
    }

    #[test]
    fn what_a_stream_still_holds() {
        assert_eq!(still_held(10, 0), 10);
        assert_eq!(still_held(10, 4), 6);
        assert_eq!(still_held(10, 10), 0);
        // A stream that wrote more than it announced holds nothing more (never negative).
        assert_eq!(still_held(10, 11), 0);
    }

    #[test]
    fn two_streams_that_fit_alone_but_not_together() {
        let ledger = Ledger::default();
        let a = ledger.admit(100, fits(60)).expect("the first fits");
        assert_eq!(ledger.held(), 60);
        let refused = ledger.admit(100, fits(60)).expect_err("not both");
        assert_eq!(
            refused,
            Seen {
                free: 100,
                held: 60
            }
        );
        // A refused admission holds nothing.
        assert_eq!((ledger.held(), ledger.streams()), (60, 1));
        // What still fits next to the first is admitted.
        let b = ledger.admit(100, fits(40)).expect("40 of the 100 are left");
        assert_eq!(ledger.held(), 100);
        assert!(ledger.admit(100, fits(1)).is_err());
        // A stream of nothing fits even a full ledger.
        let c = ledger.admit(100, fits(0)).expect("nothing fits");
        drop((a, b, c));
        assert_eq!((ledger.held(), ledger.streams()), (0, 0));
    }

    #[test]
    fn holds_are_released_on_drop_whatever_ended_the_stream() {
        let ledger = Ledger::default();
        let a = ledger.admit(100, fits(70)).expect("a");
        // The stream failed (or was cut, or refused later): its reservation goes with it.
        drop(a);
        assert_eq!(ledger.held(), 0);
        let b = ledger.admit(100, fits(70)).expect("b after a failed");
        // The stream committed: likewise, once its writer is done with the reservation.
        b.landed(70);
        drop(b);
        assert_eq!(ledger.streams(), 0);
        // A stream still being written while others come and go keeps its hold.
        let long = ledger.admit(100, fits(50)).expect("long");
        for _ in 0..3 {
            let short = ledger.admit(100, fits(50)).expect("short");
            assert!(ledger.admit(100, fits(1)).is_err());
            drop(short);
        }
        assert_eq!(ledger.held(), 50);
        drop(long);
        assert_eq!(ledger.held(), 0);
    }

    #[test]
    fn bytes_that_landed_are_not_counted_twice() {
        let ledger = Ledger::default();
        let a = ledger.admit(100, fits(60)).expect("a");
        // 40 bytes written: the free space read now is 60 and the stream may write 20 more.
        a.landed(40);
        assert_eq!(ledger.held(), 20);
        ledger
            .admit(60, fits(40))
            .expect("40 of the 60 free are not promised");
        assert!(ledger.admit(60, fits(41)).is_err());
        // Past its announced size a stream holds nothing (the writing checks stop it).
        a.landed(1000);
        assert_eq!(ledger.held(), 0);
        // The counter handed to a writer thread is the same one.
        let b = ledger.admit(100, fits(30)).expect("b");
        let counter = b.landed_counter();
        std::thread::spawn(move || counter.fetch_add(10, Ordering::Relaxed))
            .join()
            .expect("thread");
        assert_eq!(ledger.held(), 20);
    }

    #[test]
    fn holds_saturate_instead_of_overflowing() {
        let ledger = Ledger::default();
        let _a = ledger.admit(0, |_| Ok::<u64, ()>(u64::MAX)).expect("a");
        let _b = ledger.admit(0, |_| Ok::<u64, ()>(u64::MAX)).expect("b");
        assert_eq!(ledger.held(), u64::MAX);
        assert_eq!(
            ledger.admit(u64::MAX, fits(1)).expect_err("all held"),
            Seen {
                free: u64::MAX,
                held: u64::MAX
            }
        );
    }

    #[test]
    fn concurrent_admissions_never_promise_the_same_bytes() {
        let ledger = Ledger::default();
        let admitted: Vec<_> = (0..16)
            .map(|_| {
                let l = ledger.clone();
                std::thread::spawn(move || l.admit(100, fits(10)).ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let kept: Vec<_> = admitted.into_iter().flatten().collect();
        assert_eq!(kept.len(), 10, "exactly ten holds of 10 fit in 100");
        assert_eq!(ledger.held(), 100);
        drop(kept);
        assert_eq!(ledger.held(), 0);
    }

    #[test]
    fn each_key_has_its_own_ledger() {
        let ledgers = Ledgers::default();
        let _a = ledgers.of("pool-a").admit(100, fits(80)).expect("a");
        assert_eq!(ledgers.of("pool-a").held(), 80);
        assert_eq!(ledgers.of("pool-b").held(), 0);
        ledgers
            .of("pool-b")
            .admit(100, fits(80))
            .expect("another pool has its own space");
        assert!(ledgers.of("pool-a").admit(100, fits(80)).is_err());
    }
}
