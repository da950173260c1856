//! The queue of a verifier (pure): backups waiting to be re-read, worked off one at a time by
//! one worker, each queued once however often it is asked for. The file store's verifier
//! (the store agent) and the object store's (the controller) both keep one.

use std::collections::VecDeque;

/// At most this many backups wait in a queue; more are refused (the controller asks again).
pub const MAX_QUEUED: usize = 100_000;

/// Why items were not all queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the verify queue is full ({MAX_QUEUED} backups); try again later")]
pub struct QueueFull;

/// Waiting items of kind `T`, identified by `K` ([`Queued::key`]), the one being worked on,
/// and whether a worker runs.
#[derive(Debug, Clone)]
pub struct VerifyQueue<T: Queued> {
    waiting: VecDeque<T>,
    current: Option<T::Key>,
    running: bool,
}

/// An item of a [`VerifyQueue`]: what tells two requests for the same backup apart.
pub trait Queued {
    type Key: PartialEq + Clone;
    fn key(&self) -> Self::Key;
}

impl<T: Queued> Default for VerifyQueue<T> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            current: None,
            running: false,
        }
    }
}

impl<T: Queued> VerifyQueue<T> {
    /// Queues `items`, except those waiting or being worked on already. `Ok(true)` when the
    /// caller must start a worker (none runs and something waits); then the queue counts it
    /// as running until [`take_next`](Self::take_next) finds it empty.
    pub fn submit(&mut self, items: impl IntoIterator<Item = T>) -> Result<bool, QueueFull> {
        for item in items {
            let key = item.key();
            if self.current.as_ref() == Some(&key) || self.waiting.iter().any(|w| w.key() == key) {
                continue;
            }
            if self.waiting.len() >= MAX_QUEUED {
                return Err(QueueFull);
            }
            self.waiting.push_back(item);
        }
        let start = !self.running && !self.waiting.is_empty();
        self.running |= start;
        Ok(start)
    }

    /// The worker's next item (now the current one, until the next call); `None` when the
    /// queue is empty, and the worker must end (the next [`submit`](Self::submit) starts
    /// another).
    pub fn take_next(&mut self) -> Option<T> {
        let item = self.waiting.pop_front();
        self.current = item.as_ref().map(Queued::key);
        self.running = item.is_some();
        item
    }

    /// The key of the item being worked on.
    pub fn current(&self) -> Option<&T::Key> {
        self.current.as_ref()
    }

    /// Items waiting (not counting the current one).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Item(&'static str, u64);

    impl Queued for Item {
        type Key = &'static str;
        fn key(&self) -> &'static str {
            self.0
        }
    }

    fn work(q: &mut VerifyQueue<Item>) -> Option<Item> {
        q.take_next()
    }

    #[test]
    fn each_backup_waits_once_and_one_worker_runs() {
        let mut q = VerifyQueue::default();
        assert_eq!(
            q.submit([Item("a", 1), Item("b", 1), Item("a", 2)]),
            Ok(true)
        );
        assert_eq!(q.waiting(), 2, "a is queued once");
        assert_eq!(q.submit([Item("c", 1)]), Ok(false), "a worker runs already");
        assert_eq!(work(&mut q), Some(Item("a", 1)));
        assert_eq!(q.current(), Some(&"a"));
        assert_eq!(q.submit([Item("a", 3)]), Ok(false));
        assert_eq!(q.waiting(), 2, "a is being read: not queued again");
        assert_eq!(work(&mut q), Some(Item("b", 1)));
        assert_eq!(q.submit([Item("a", 3)]), Ok(false));
        assert_eq!(q.waiting(), 2, "a is no longer current: queued again");
        assert_eq!(work(&mut q), Some(Item("c", 1)));
        assert_eq!(work(&mut q), Some(Item("a", 3)));
        assert_eq!(work(&mut q), None);
        assert_eq!(q.current(), None);
        assert_eq!(
            q.submit([Item("d", 1)]),
            Ok(true),
            "the worker ended: start one"
        );
        assert_eq!(q.submit(Vec::new()), Ok(false));
    }

    #[test]
    fn an_empty_request_starts_nothing_and_a_full_queue_refuses() {
        let mut q = VerifyQueue::<Item>::default();
        assert_eq!(q.submit(Vec::new()), Ok(false));
        q.waiting = (0..MAX_QUEUED).map(|_| Item("x", 0)).collect();
        assert_eq!(q.submit([Item("y", 0)]), Err(QueueFull));
    }
}
