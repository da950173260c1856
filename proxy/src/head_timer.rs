//! The header-read timeout of one client connection (`limits.headerRead`),
//! without a timer registration per request.
//!
//! hyper asks its [`Timer`] for a new sleep each time it starts reading a
//! request head, and drops it once the head is complete; with tokio's timer
//! that is an allocation, a timer-wheel insertion and a removal for every
//! request. Here the sleep only records its deadline in the connection's
//! [`HeadClock`], and one tokio sleep per connection (the watchdog, run by
//! the connection's task: [`HeadClock::check`] tells it when to look next)
//! wakes up at most about twice per `headerRead` and fires the sleep whose
//! deadline passed. hyper's own logic then ends the connection as it does
//! with tokio's timer: the same deadline (taken when the head's reading
//! starts; bytes trickling in do not extend it), the same error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

#[derive(Default)]
struct State {
    /// Generation of the latest sleep (hyper holds at most one at a time).
    generation: u64,
    /// Its deadline; `None` when no head is being read.
    deadline: Option<Instant>,
    /// The latest sleep has fired.
    fired: bool,
    /// The task polling it.
    waker: Option<Waker>,
}

/// Shared by a connection's hyper timer ([`HeadClock::timer`]) and its
/// watchdog ([`HeadClock::check`]).
#[derive(Clone, Default)]
pub struct HeadClock {
    state: Arc<Mutex<State>>,
}

impl HeadClock {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            // Every update leaves the state whole: a panic elsewhere
            // cannot have broken it.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The hyper timer of this connection.
    pub fn timer(&self) -> HeadTimer {
        HeadTimer {
            clock: self.clone(),
        }
    }

    /// The watchdog's step at `now`: fire the sleep in force if its deadline
    /// passed; returns when to look again (its deadline if one is set and
    /// still ahead, else `now + period`).
    pub fn check(&self, now: Instant, period: Duration) -> Instant {
        let mut s = self.lock();
        let (next, wake) = match s.deadline {
            Some(deadline) if deadline <= now => {
                s.fired = true;
                s.deadline = None;
                (later(now, period), s.waker.take())
            }
            Some(deadline) => (deadline, None),
            None => (later(now, period), None),
        };
        drop(s);
        if let Some(w) = wake {
            w.wake();
        }
        next
    }

    /// Whether a head is being read under a deadline (for tests).
    pub fn armed(&self) -> bool {
        self.lock().deadline.is_some()
    }
}

/// `now + period`, or a day from now if that does not fit an `Instant`.
fn later(now: Instant, period: Duration) -> Instant {
    now.checked_add(period)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}

/// hyper's [`Timer`] for one connection: its sleeps only set the deadline.
pub struct HeadTimer {
    clock: HeadClock,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let mut s = self.clock.lock();
        s.generation = s.generation.wrapping_add(1);
        s.deadline = Some(deadline);
        s.fired = false;
        let generation = s.generation;
        drop(s);
        Box::pin(HeadSleep {
            clock: self.clock.clone(),
            generation,
        })
    }
}

/// A sleep handed to hyper; ready once the watchdog fired it.
struct HeadSleep {
    clock: HeadClock,
    generation: u64,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.clock.lock();
        if s.generation != self.generation {
            // Superseded by a newer sleep: this one never fires.
            return Poll::Pending;
        }
        if s.fired {
            return Poll::Ready(());
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        let mut s = self.clock.lock();
        if s.generation == self.generation {
            s.deadline = None;
            s.fired = false;
        }
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        sleep.as_mut().poll(&mut cx)
    }

    #[test]
    fn a_sleep_fires_once_its_deadline_passed_and_not_before() {
        let clock = HeadClock::new();
        let period = Duration::from_secs(10);
        let t0 = Instant::now();
        assert_eq!(clock.check(t0, period), t0 + period, "nothing armed");
        let mut sleep = clock.timer().sleep_until(t0 + Duration::from_secs(3));
        assert!(clock.armed());
        assert!(poll_once(&mut sleep).is_pending());
        // Before the deadline: look again at the deadline.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(clock.check(t1, period), t0 + Duration::from_secs(3));
        assert!(poll_once(&mut sleep).is_pending());
        // At the deadline: fired.
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(clock.check(t3, period), t3 + period);
        assert!(poll_once(&mut sleep).is_ready());
    }

    #[test]
    fn a_completed_head_disarms_and_a_new_head_gets_a_new_deadline() {
        let clock = HeadClock::new();
        let timer = clock.timer();
        let period = Duration::from_secs(10);
        let t0 = Instant::now();
        let first = timer.sleep_until(t0 + Duration::from_secs(1));
        drop(first); // the head was read in time
        assert!(!clock.armed());
        let late = t0 + Duration::from_secs(5);
        assert_eq!(clock.check(late, period), late + period, "nothing fired");
        let mut second = timer.sleep_until(late + Duration::from_secs(1));
        assert!(poll_once(&mut second).is_pending(), "a new deadline");
        // `reset` (hyper's default: a new sleep replacing the old one)
        // leaves the new deadline armed when the old sleep is dropped.
        timer.reset(&mut second, late + Duration::from_secs(2));
        assert!(clock.armed());
        let t = late + Duration::from_secs(1);
        assert_eq!(clock.check(t, period), late + Duration::from_secs(2));
        assert!(poll_once(&mut second).is_pending());
        let t = late + Duration::from_secs(2);
        clock.check(t, period);
        assert!(poll_once(&mut second).is_ready());
    }

    #[tokio::test]
    async fn the_watchdog_wakes_the_task_waiting_on_the_sleep() {
        let clock = HeadClock::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        let sleep = clock.timer().sleep_until(deadline);
        let waiter = tokio::spawn(sleep);
        let watchdog = clock.clone();
        tokio::spawn(async move {
            loop {
                let next = watchdog.check(Instant::now(), Duration::from_millis(20));
                tokio::time::sleep_until(next.into()).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("fired in time")
            .expect("task");
        assert!(Instant::now() >= deadline);
    }
}
