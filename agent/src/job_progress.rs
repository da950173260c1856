//! How far a running backup is: the stream size `zfs send -nP` estimated before the send
//! (OpenZFS; none on zfs-fuse), the stream bytes read from `zfs send` so far, and from the two
//! the time left ([`eta`]). The job fills a [`JobProgress`]; the runner publishes a
//! [`ProgressReport`] of it in the BackupJob's status every few seconds, which the CLI's
//! progress bar shows. Without an estimate there is no total and no ETA: only bytes so far.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// No estimate recorded (an estimate of `u64::MAX` bytes cannot happen).
const NO_ESTIMATE: u64 = u64::MAX;

/// The progress of one job, shared between the job (writer) and whoever reports it.
#[derive(Debug, Clone)]
pub struct JobProgress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    estimate: AtomicU64,
    sent: AtomicU64,
    /// Milliseconds after `epoch` when the first stream byte was read (0: not yet).
    first_byte_ms: AtomicU64,
    epoch: Instant,
}

/// What is published: the status fields `estimatedBytes`, `bytesSent`, `etaSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressReport {
    pub estimated_bytes: Option<u64>,
    pub bytes_sent: u64,
    pub eta_seconds: Option<u64>,
}

impl Default for JobProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl JobProgress {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                estimate: AtomicU64::new(NO_ESTIMATE),
                sent: AtomicU64::new(0),
                first_byte_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Records the stream size `zfs send -nP` estimated.
    pub fn set_estimate(&self, bytes: u64) {
        self.inner
            .estimate
            .store(bytes.min(NO_ESTIMATE - 1), Ordering::Relaxed);
    }

    /// The estimate, if one was made.
    pub fn estimate(&self) -> Option<u64> {
        match self.inner.estimate.load(Ordering::Relaxed) {
            NO_ESTIMATE => None,
            n => Some(n),
        }
    }

    /// Counts `n` more stream bytes read.
    fn add_sent(&self, n: u64) {
        if n > 0 && self.inner.first_byte_ms.load(Ordering::Relaxed) == 0 {
            let ms = u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.inner.first_byte_ms.store(ms.max(1), Ordering::Relaxed);
        }
        self.inner.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Stream bytes read so far.
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// The report as of now.
    pub fn report(&self) -> ProgressReport {
        let sent = self.sent();
        let first = self.inner.first_byte_ms.load(Ordering::Relaxed);
        let elapsed = match first {
            0 => Duration::ZERO,
            ms => self
                .inner
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(ms)),
        };
        ProgressReport {
            estimated_bytes: self.estimate(),
            bytes_sent: sent,
            eta_seconds: self.estimate().and_then(|e| eta(sent, e, elapsed)),
        }
    }

    /// Wraps a reader (the `zfs send` stdout) so that every byte read from it is counted.
    pub fn counting<R>(&self, reader: R) -> CountingReader<R> {
        CountingReader {
            reader,
            progress: self.clone(),
        }
    }
}

/// The status fields of a report (a merge patch's `status`): `etaSeconds` is null (removed)
/// when there is none.
pub fn status_fields(report: &ProgressReport) -> serde_json::Value {
    serde_json::json!({
        "estimatedBytes": report.estimated_bytes,
        "bytesSent": report.bytes_sent,
        "etaSeconds": report.eta_seconds,
    })
}

/// Seconds left to send `estimate` bytes when `sent` took `elapsed`, at that rate. None
/// before anything moved (no rate yet); 0 once the estimate is reached (an estimate can be a
/// little short of the real stream: the rest is not "negative time").
pub fn eta(sent: u64, estimate: u64, elapsed: Duration) -> Option<u64> {
    if sent >= estimate {
        return Some(0);
    }
    let secs = elapsed.as_secs_f64();
    if sent == 0 || secs <= 0.0 {
        return None;
    }
    let rate = sent as f64 / secs;
    let left = (estimate - sent) as f64 / rate;
    Some(left.ceil() as u64)
}

/// A reader that counts what passes through it into a [`JobProgress`].
#[derive(Debug)]
pub struct CountingReader<R> {
    reader: R,
    progress: JobProgress,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.reader).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.progress
                .add_sent((buf.filled().len().saturating_sub(before)) as u64);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn eta_at_the_rate_so_far() {
        let s = Duration::from_secs;
        assert_eq!(eta(0, 100, s(5)), None, "no rate before a byte moved");
        assert_eq!(eta(10, 100, Duration::ZERO), None);
        assert_eq!(eta(50, 100, s(10)), Some(10));
        assert_eq!(eta(25, 100, s(10)), Some(30));
        assert_eq!(eta(1, 3, s(1)), Some(2));
        assert_eq!(eta(100, 100, s(10)), Some(0));
        assert_eq!(eta(120, 100, s(10)), Some(0), "past a short estimate");
        assert_eq!(eta(1, u64::MAX - 1, s(1)), Some(u64::MAX), "saturates");
    }

    #[test]
    fn no_estimate_means_no_total_and_no_eta() {
        let p = JobProgress::new();
        assert_eq!(p.report(), ProgressReport::default());
        p.add_sent(10);
        assert_eq!(
            p.report(),
            ProgressReport {
                estimated_bytes: None,
                bytes_sent: 10,
                eta_seconds: None
            }
        );
        p.set_estimate(10);
        assert_eq!(p.report().eta_seconds, Some(0));
        assert_eq!(p.report().estimated_bytes, Some(10));
    }

    #[test]
    fn status_fields_are_the_crd_names() {
        let with = status_fields(&ProgressReport {
            estimated_bytes: Some(100),
            bytes_sent: 40,
            eta_seconds: Some(3),
        });
        assert_eq!(
            with,
            serde_json::json!({"estimatedBytes": 100, "bytesSent": 40, "etaSeconds": 3})
        );
        let parsed: zetaback_core::api::BackupJobStatus =
            serde_json::from_value(with).expect("the status type reads them");
        assert_eq!(
            (
                parsed.estimated_bytes,
                parsed.bytes_sent,
                parsed.eta_seconds
            ),
            (Some(100), Some(40), Some(3))
        );
        let without = status_fields(&ProgressReport {
            estimated_bytes: None,
            bytes_sent: 40,
            eta_seconds: None,
        });
        assert_eq!(
            without,
            serde_json::json!({"estimatedBytes": null, "bytesSent": 40, "etaSeconds": null})
        );
    }

    #[tokio::test]
    async fn every_byte_read_is_counted() {
        let data = vec![7u8; 100_000];
        let p = JobProgress::new();
        p.set_estimate(200_000);
        let mut r = p.counting(&data[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        assert_eq!(out.len(), data.len());
        assert_eq!(p.sent(), 100_000);
        // A rate exists once time passed since the first byte.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = p.report();
        assert_eq!((r.bytes_sent, r.estimated_bytes), (100_000, Some(200_000)));
        assert!(r.eta_seconds.is_some(), "{r:?}");
    }
}
