//! The last result of an expensive scan (a store directory, a replica root's snapshots),
//! reused while nothing was written through this agent since and it is younger than a maximum
//! age (which bounds how long a change made behind the agent's back goes unseen).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A cached scan result.
#[derive(Debug, Default)]
pub struct ScanCache<T> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    /// Bumped by every write: a scan begun before it is not kept.
    generation: u64,
    last: Option<(u64, Instant, T)>,
}

impl<T> Default for Inner<T> {
    fn default() -> Self {
        Self {
            generation: 0,
            last: None,
        }
    }
}

/// A scan about to run: put its result back with [`ScanCache::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(Option<u64>);

impl<T: Clone> ScanCache<T> {
    /// The cached result if it is current and younger than `max_age`; else a ticket for the
    /// scan to run.
    pub fn get(&self, max_age: Duration) -> Result<T, Ticket> {
        let Ok(inner) = self.inner.lock() else {
            return Err(Ticket(None));
        };
        match &inner.last {
            Some((g, at, value)) if *g == inner.generation && at.elapsed() < max_age => {
                Ok(value.clone())
            }
            _ => Err(Ticket(Some(inner.generation))),
        }
    }

    /// Keeps a scan's result, unless something was written since its ticket was issued.
    pub fn put(&self, ticket: Ticket, value: &T) {
        if let (Some(g), Ok(mut inner)) = (ticket.0, self.inner.lock())
            && inner.generation == g
        {
            inner.last = Some((g, Instant::now(), value.clone()));
        }
    }

    /// Something was written: the next read scans again.
    pub fn invalidate(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.generation += 1;
            inner.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_until_invalidated_or_old() {
        let c = ScanCache::<u32>::default();
        let long = Duration::from_secs(3600);
        let t = c.get(long).expect_err("empty");
        c.put(t, &1);
        assert_eq!(c.get(long), Ok(1));
        c.invalidate();
        let t = c.get(long).expect_err("invalidated");
        c.put(t, &2);
        assert_eq!(c.get(long), Ok(2));
        assert!(c.get(Duration::ZERO).is_err(), "too old");
    }

    #[test]
    fn a_scan_overtaken_by_a_write_is_not_kept() {
        let c = ScanCache::<u32>::default();
        let long = Duration::from_secs(3600);
        let t = c.get(long).expect_err("empty");
        c.invalidate(); // a write while the scan ran
        c.put(t, &1);
        assert!(c.get(long).is_err(), "the stale scan was kept");
    }
}
