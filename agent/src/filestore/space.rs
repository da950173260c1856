//! What a stream may take of the store: its own size limit, its host's quota and the free
//! space the store keeps in reserve. The checks are pure (numbers in, a verdict out); the
//! free space comes from `statvfs`, the bytes of streams being written from [`InFlight`], the
//! space promised to streams admitted and still being written from the
//! [`crate::space_ledger`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::StoreLimits;
use crate::space_ledger::Seen;

/// Why a stream may not start or go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceRefusal {
    #[error(
        "the stream is over this agent's limit of {limit} bytes per stream (--max-stream-bytes)"
    )]
    TooLarge { limit: u64 },
    #[error(
        "host {host} is over its quota of {quota} bytes on this store ({used} bytes stored or being written, --host-quota-bytes)"
    )]
    Quota { host: String, quota: u64, used: u64 },
    #[error(
        "the store has {free} bytes free, {held} of them held for streams being written, which leaves less than its reserve of {reserve} bytes plus the {announced} bytes the stream announced (--store-min-free-bytes): no new stream until space is freed"
    )]
    ReserveBeforeStart {
        free: u64,
        /// What streams admitted and still being written may yet write.
        held: u64,
        reserve: u64,
        /// The new stream's announced size (0 when it announced none).
        announced: u64,
    },
    #[error(
        "the store's free space fell to {free} bytes, under half its reserve of {reserve} bytes (--store-min-free-bytes): stream stopped and discarded"
    )]
    ReserveWhileWriting { free: u64, reserve: u64 },
}

/// Bytes free for the agent on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// May a stream of `announced` bytes (if known) start? `stored` and `writing` are its host's
/// bytes in the store and in streams being written; `seen` the free space and what streams
/// admitted before still hold of it (the reserve and the announced size must fit in the rest).
pub fn admit(
    limits: &StoreLimits,
    host: &str,
    announced: Option<u64>,
    stored: u64,
    writing: u64,
    seen: Seen,
) -> Result<(), SpaceRefusal> {
    if let (Some(limit), Some(n)) = (limits.max_stream_bytes, announced)
        && n > limit
    {
        return Err(SpaceRefusal::TooLarge { limit });
    }
    if let Some(quota) = limits.host_quota_bytes {
        let used = stored
            .saturating_add(writing)
            .saturating_add(announced.unwrap_or(0));
        if used > quota || (announced.is_none() && used >= quota) {
            return Err(SpaceRefusal::Quota {
                host: host.to_owned(),
                quota,
                used,
            });
        }
    }
    let reserve = limits.min_free_bytes;
    let size = announced.unwrap_or(0);
    if seen.available() < reserve.saturating_add(size) {
        return Err(SpaceRefusal::ReserveBeforeStart {
            free: seen.free,
            held: seen.held,
            reserve,
            announced: size,
        });
    }
    Ok(())
}

/// What an admitted stream holds of the free space while it is written (see
/// [`crate::space_ledger`]): its announced size, which [`admit`] checked against every limit;
/// else its sender's estimate — a hint from a peer, so never more than the stream may take:
/// its size limit, what is left of its host's quota (`stored` and `writing` as for [`admit`])
/// and the free space above the reserve (a hostile sender announcing an estimate of a
/// petabyte holds at most that, not every other host's streams out of the store); else, with
/// neither, the reserve.
pub fn hold(
    limits: &StoreLimits,
    announced: Option<u64>,
    expected: Option<u64>,
    stored: u64,
    writing: u64,
    seen: Seen,
) -> u64 {
    if let Some(size) = announced {
        return size;
    }
    let Some(estimate) = expected else {
        return limits.min_free_bytes;
    };
    let mut most = seen.available().saturating_sub(limits.min_free_bytes);
    if let Some(limit) = limits.max_stream_bytes {
        most = most.min(limit);
    }
    if let Some(quota) = limits.host_quota_bytes {
        most = most.min(quota.saturating_sub(stored.saturating_add(writing)));
    }
    estimate.min(most)
}

/// May a stream that has `bytes` so far go on? `stored` is its host's bytes in the store when
/// it started, `writing` every stream of the host being written (this one included).
pub fn keep_going(
    limits: &StoreLimits,
    host: &str,
    bytes: u64,
    stored: u64,
    writing: u64,
) -> Result<(), SpaceRefusal> {
    if let Some(limit) = limits.max_stream_bytes
        && bytes > limit
    {
        return Err(SpaceRefusal::TooLarge { limit });
    }
    if let Some(quota) = limits.host_quota_bytes {
        let used = stored.saturating_add(writing);
        if used > quota {
            return Err(SpaceRefusal::Quota {
                host: host.to_owned(),
                quota,
                used,
            });
        }
    }
    Ok(())
}

/// Is `free` still enough for a stream being written (half the reserve)?
pub fn enough_while_writing(limits: &StoreLimits, free: u64) -> Result<(), SpaceRefusal> {
    let reserve = limits.min_free_bytes;
    if free < reserve / 2 {
        return Err(SpaceRefusal::ReserveWhileWriting { free, reserve });
    }
    Ok(())
}

/// Bytes of the streams being written, per source host.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl InFlight {
    /// The counter of `host` (created at 0).
    pub fn of(&self, host: &str) -> Arc<AtomicU64> {
        match self.0.lock() {
            Ok(mut m) => m.entry(host.to_owned()).or_default().clone(),
            // A poisoned map only loses the sharing of counts: a fresh counter still works.
            Err(_) => Arc::default(),
        }
    }

    /// The bytes being written for `host`.
    pub fn bytes(&self, host: &str) -> u64 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(host).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(stream: Option<u64>, quota: Option<u64>, reserve: u64) -> StoreLimits {
        StoreLimits {
            max_stream_bytes: stream,
            host_quota_bytes: quota,
            min_free_bytes: reserve,
            ..StoreLimits::default()
        }
    }

    fn free(free: u64) -> Seen {
        Seen { free, held: 0 }
    }

    #[test]
    fn admission() {
        let none = limits(None, None, 0);
        assert_eq!(admit(&none, "h", None, 0, 0, free(0)), Ok(()));
        assert_eq!(
            admit(&none, "h", Some(10), u64::MAX, u64::MAX, free(10)),
            Ok(())
        );
        // Without a reserve, a stream announced larger than the free space still cannot fit.
        assert!(matches!(
            admit(&none, "h", Some(11), 0, 0, free(10)),
            Err(SpaceRefusal::ReserveBeforeStart { .. })
        ));
        let l = limits(Some(100), Some(1000), 50);
        assert_eq!(admit(&l, "h", Some(100), 0, 0, free(150)), Ok(()));
        assert_eq!(
            admit(&l, "h", Some(101), 0, 0, free(10_000)),
            Err(SpaceRefusal::TooLarge { limit: 100 })
        );
        // Unknown length: not refused for size up front (stopped while written).
        assert_eq!(admit(&l, "h", None, 0, 0, free(10_000)), Ok(()));
        // The quota counts stored, being written and announced bytes.
        assert_eq!(admit(&l, "h", Some(100), 800, 100, free(10_000)), Ok(()));
        assert!(matches!(
            admit(&l, "h", Some(100), 800, 101, free(10_000)),
            Err(SpaceRefusal::Quota { used: 1001, .. })
        ));
        // With nothing announced, a host exactly at its quota may not start another.
        assert!(matches!(
            admit(&l, "h", None, 1000, 0, free(10_000)),
            Err(SpaceRefusal::Quota { .. })
        ));
        assert_eq!(admit(&l, "h", None, 999, 0, free(10_000)), Ok(()));
        // The reserve, plus what is announced, must be free.
        assert_eq!(admit(&l, "h", None, 0, 0, free(50)), Ok(()));
        assert_eq!(
            admit(&l, "h", None, 0, 0, free(49)),
            Err(SpaceRefusal::ReserveBeforeStart {
                free: 49,
                held: 0,
                reserve: 50,
                announced: 0,
            })
        );
        assert!(admit(&l, "h", Some(10), 0, 0, free(59)).is_err());
        assert_eq!(admit(&l, "h", Some(10), 0, 0, free(60)), Ok(()));
        // What streams admitted before still hold is not free for this one.
        let seen = Seen {
            free: 160,
            held: 100,
        };
        assert_eq!(admit(&l, "h", Some(10), 0, 0, seen), Ok(()));
        assert_eq!(
            admit(&l, "h", Some(11), 0, 0, seen),
            Err(SpaceRefusal::ReserveBeforeStart {
                free: 160,
                held: 100,
                reserve: 50,
                announced: 11,
            })
        );
        assert!(
            admit(
                &l,
                "h",
                None,
                0,
                0,
                Seen {
                    free: 149,
                    held: 100
                }
            )
            .is_err()
        );
        assert_eq!(
            admit(
                &l,
                "h",
                None,
                0,
                0,
                Seen {
                    free: 150,
                    held: 100
                }
            ),
            Ok(())
        );
        // More held than free (bytes promised but not yet written): nothing is available.
        assert!(admit(&none, "h", Some(1), 0, 0, Seen { free: 10, held: 20 }).is_err());
        assert_eq!(
            admit(&none, "h", None, 0, 0, Seen { free: 10, held: 20 }),
            Ok(())
        );
        // Saturation, not overflow.
        let q = limits(None, Some(10), u64::MAX);
        assert!(matches!(
            admit(&q, "h", Some(u64::MAX), u64::MAX, u64::MAX, free(u64::MAX)),
            Err(SpaceRefusal::Quota { used: u64::MAX, .. })
        ));
    }

    #[test]
    fn a_hold_is_the_announced_size_else_the_estimate_within_the_limits_else_the_reserve() {
        let none = limits(None, None, 0);
        let l = limits(Some(100), Some(1000), 50);
        // An announced size is held as it is (admit checked it against the limits).
        assert_eq!(hold(&l, Some(70), Some(5), 0, 0, free(10_000)), 70);
        assert_eq!(hold(&none, Some(0), None, 0, 0, free(0)), 0);
        // Neither announced nor estimated: the reserve.
        assert_eq!(hold(&l, None, None, 0, 0, free(10_000)), 50);
        assert_eq!(hold(&none, None, None, 0, 0, free(10_000)), 0);
        // An estimate within every limit is held as it is.
        assert_eq!(hold(&l, None, Some(60), 0, 0, free(10_000)), 60);
        // A larger one, never more than the stream's size limit...
        assert_eq!(hold(&l, None, Some(u64::MAX), 0, 0, free(10_000)), 100);
        // ...what is left of its host's quota (stored and being written count)...
        assert_eq!(hold(&l, None, Some(u64::MAX), 900, 30, free(10_000)), 70);
        assert_eq!(hold(&l, None, Some(u64::MAX), 2000, 0, free(10_000)), 0);
        // ...or the free space above the reserve, less what others hold.
        assert_eq!(hold(&l, None, Some(u64::MAX), 0, 0, free(120)), 70);
        let seen = Seen {
            free: 120,
            held: 40,
        };
        assert_eq!(hold(&l, None, Some(u64::MAX), 0, 0, seen), 30);
        assert_eq!(hold(&none, None, Some(u64::MAX), 0, 0, free(500)), 500);
        assert_eq!(hold(&none, None, Some(u64::MAX), 0, 0, free(0)), 0);
        // Saturation, not overflow.
        let q = limits(None, Some(u64::MAX), u64::MAX);
        assert_eq!(
            hold(&q, None, Some(u64::MAX), u64::MAX, u64::MAX, free(u64::MAX)),
            0
        );
    }

    #[test]
    fn while_writing() {
        let l = limits(Some(100), Some(1000), 50);
        assert_eq!(keep_going(&l, "h", 100, 900, 100), Ok(()));
        assert_eq!(
            keep_going(&l, "h", 101, 0, 101),
            Err(SpaceRefusal::TooLarge { limit: 100 })
        );
        assert!(matches!(
            keep_going(&l, "h", 50, 951, 50),
            Err(SpaceRefusal::Quota { used: 1001, .. })
        ));
        assert_eq!(enough_while_writing(&l, 25), Ok(()));
        assert_eq!(
            enough_while_writing(&l, 24),
            Err(SpaceRefusal::ReserveWhileWriting {
                free: 24,
                reserve: 50
            })
        );
        assert_eq!(enough_while_writing(&limits(None, None, 0), 0), Ok(()));
    }

    #[test]
    fn in_flight_counts_per_host() {
        let f = InFlight::default();
        f.of("a").fetch_add(5, Ordering::Relaxed);
        f.of("a").fetch_add(7, Ordering::Relaxed);
        f.of("b").fetch_add(1, Ordering::Relaxed);
        assert_eq!(f.bytes("a"), 12);
        assert_eq!(f.bytes("b"), 1);
        assert_eq!(f.bytes("c"), 0);
    }

    #[test]
    fn free_bytes_of_a_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(d.path()).expect("statvfs") > 0);
        assert!(free_bytes(&d.path().join("missing")).is_err());
    }
}
