//! Backend health from a failure ratio: a backend is marked down only when,
//! over the current and the previous window ([`WINDOW_MS`] each), at least
//! `min_failures` of its requests failed (refused, reset, timed out) AND the
//! failures were at least half of its requests. One slow URL, or a few
//! requests a client makes time out on purpose, cannot take out a backend
//! that keeps answering everyone else; a backend that answers nothing is
//! marked down after `min_failures` failures.

use std::sync::Mutex;

/// Length of one counting window, in milliseconds.
pub const WINDOW_MS: u64 = 10_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    answered: u32,
    failed: u32,
}

#[derive(Debug, Default)]
struct Windows {
    /// Index of the current window (time / WINDOW_MS).
    index: u64,
    current: Counts,
    previous: Counts,
}

impl Windows {
    fn roll(&mut self, now_ms: u64) {
        let index = now_ms / WINDOW_MS;
        if index == self.index {
            return;
        }
        self.previous = if index == self.index + 1 {
            self.current
        } else {
            Counts::default()
        };
        self.current = Counts::default();
        self.index = index;
    }
}

/// Answer and failure counts of one backend.
#[derive(Debug, Default)]
pub struct Health {
    windows: Mutex<Windows>,
}

impl Health {
    /// Count an answer (any status).
    pub fn answered(&self, now_ms: u64) {
        let mut w = self.lock();
        w.roll(now_ms);
        w.current.answered = w.current.answered.saturating_add(1);
    }

    /// Count a failure; `true` when the backend should now be marked down
    /// (the counts then start over).
    pub fn failed(&self, now_ms: u64, min_failures: u32) -> bool {
        let mut w = self.lock();
        w.roll(now_ms);
        w.current.failed = w.current.failed.saturating_add(1);
        let failed = w.current.failed.saturating_add(w.previous.failed);
        let answered = w.current.answered.saturating_add(w.previous.answered);
        if failed >= min_failures.max(1) && failed >= answered {
            w.current = Counts::default();
            w.previous = Counts::default();
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        match self.windows.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_dead_backend_goes_down_after_min_failures() {
        let h = Health::default();
        assert!(!h.failed(0, 3));
        assert!(!h.failed(1, 3));
        assert!(h.failed(2, 3));
        // Counts start over.
        assert!(!h.failed(3, 3));
    }

    #[test]
    fn a_few_failures_among_many_answers_do_not() {
        let h = Health::default();
        for t in 0..100 {
            h.answered(t);
        }
        for t in 100..150 {
            assert!(!h.failed(t, 3), "failure at {t}");
        }
        // Past half of the requests: down.
        for t in 150..200 {
            if h.failed(t, 3) {
                return;
            }
        }
        panic!("51 failures out of 151 requests did not mark the backend down");
    }

    #[test]
    fn answers_of_the_previous_window_count_but_not_older_ones() {
        let h = Health::default();
        for _ in 0..10 {
            h.answered(WINDOW_MS - 1);
        }
        // Next window: the 10 answers still weigh against 3 failures.
        for i in 0..3 {
            assert!(!h.failed(WINDOW_MS + i, 3));
        }
        // Two windows later they are forgotten.
        let later = 3 * WINDOW_MS;
        assert!(!h.failed(later, 3));
        assert!(!h.failed(later + 1, 3));
        assert!(h.failed(later + 2, 3));
    }

    proptest! {
        #[test]
        fn never_down_while_answers_outnumber_failures(
            events in proptest::collection::vec(any::<bool>(), 1..200),
            min in 1u32..6,
        ) {
            let h = Health::default();
            let (mut ok, mut bad) = (0u32, 0u32);
            for (t, answered) in events.into_iter().enumerate() {
                let t = t as u64; // all within one window
                if answered {
                    h.answered(t);
                    ok += 1;
                } else {
                    bad += 1;
                    let down = h.failed(t, min);
                    prop_assert_eq!(down, bad >= min && bad >= ok);
                    if down {
                        ok = 0;
                        bad = 0;
                    }
                }
            }
        }
    }
}
