//! An average-rate bandwidth limit: after each chunk, wait until the bytes sent so far are
//! within `rate` bytes per second since the start.

use std::time::Duration;

use tokio::time::Instant;

/// Paces a sender to at most `rate` bytes per second on average.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl RateLimiter {
    /// A limiter at `rate` bytes per second (0 = unlimited).
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// How long to wait after `n` more bytes.
    pub fn delay_after(&mut self, n: u64, elapsed: Duration) -> Duration {
        self.sent += n;
        zetaback_core::store::verification::pace_delay(self.sent, self.rate, elapsed)
    }

    /// Accounts for `n` bytes sent and sleeps as needed.
    pub async fn consume(&mut self, n: u64) {
        let wait = self.delay_after(n, self.start.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate() {
        let mut l = RateLimiter::new(1000);
        assert_eq!(
            l.delay_after(500, Duration::ZERO),
            Duration::from_millis(500)
        );
        assert_eq!(
            l.delay_after(500, Duration::from_millis(2000)),
            Duration::ZERO
        );
        let mut u = RateLimiter::new(0);
        assert_eq!(u.delay_after(1 << 30, Duration::ZERO), Duration::ZERO);
    }
}
