//! What a replica stream may take of the pool it is received into: the same checks as the
//! file store's ([`crate::filestore::space`]: the size limit per stream, the host's quota, the
//! free-space reserve), with the pool's numbers from `zfs get -Hp used,available` instead of
//! `statvfs`.
//!
//! - The free space is the replica root's `available` (the pool's free space less quotas and
//!   reservations on the way). The reserve is `--replica-min-free-bytes`, or by default 5 % of
//!   the pool, at most 1 GiB (ZFS keeps its own 3.2 % on top).
//! - A host's stored bytes are the `used` of `<root>/<host>` summed over the replica roots
//!   (its replicas with their snapshots), plus its replica streams being received.
//! - While a stream is received, the free space is what was free at the start less what has
//!   arrived since (re-read from ZFS every [`RECHECK_BYTES`]; the lower of the two counts). A
//!   stream that would leave less than half the reserve is stopped, and its receive aborted.
//! - Streams admitted into a pool and still being received hold their announced size (or,
//!   announcing none, their sender's estimate, else the pool's reserve) in the pool's
//!   [`Ledgers`] entry until they end: the next
//!   admission counts the free space less those holds. A replica stream holds all of it until
//!   it ends, received bytes included: ZFS counts them in `available` only once their
//!   transaction group is synced, so they cannot be told apart from bytes still to come.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

use crate::filestore::space::{self, InFlight, SpaceRefusal};
use crate::limits::StoreLimits;
use crate::space_ledger::{Ledgers, Reservation};
use crate::zfs::Zfs;

use super::ApiError;

/// The default reserve is this share of the pool (1/20: 5 %)…
const AUTO_RESERVE_DIVISOR: u64 = 20;
/// …at most this much.
const AUTO_RESERVE_MAX: u64 = 1024 * 1024 * 1024;
/// Bytes received between two reads of the pool's free space while a stream is received.
pub const RECHECK_BYTES: u64 = 64 * 1024 * 1024;

/// The reserve kept on a pool of `pool_size` bytes: the configured one, else the default.
pub fn reserve(configured: Option<u64>, pool_size: u64) -> u64 {
    configured.unwrap_or_else(|| (pool_size / AUTO_RESERVE_DIVISOR).min(AUTO_RESERVE_MAX))
}

/// The free space while writing: what was free at the last reading less what arrived since.
pub fn free_now(free_at_reading: u64, bytes_at_reading: u64, bytes: u64) -> u64 {
    free_at_reading.saturating_sub(bytes.saturating_sub(bytes_at_reading))
}

/// The HTTP answer to a refusal: 413 for a stream over the size limit, 507 otherwise.
pub fn refusal_status(refusal: &SpaceRefusal) -> StatusCode {
    match refusal {
        SpaceRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// Why a replica stream is refused, in a sentence naming the flag that sets the limit.
pub fn describe(target: &str, refusal: &SpaceRefusal) -> String {
    let why = match refusal {
        SpaceRefusal::ReserveBeforeStart {
            free,
            held,
            reserve,
            announced,
        } => format!(
            "its pool has {free} bytes free, {held} of them held for replica streams being received, which leaves less than the reserve of {reserve} bytes plus the {announced} bytes the stream announced (--replica-min-free-bytes): no new replica stream until space is freed"
        ),
        SpaceRefusal::ReserveWhileWriting { free, reserve } => format!(
            "its pool's free space would fall to {free} bytes, under half the reserve of {reserve} bytes (--replica-min-free-bytes): stream stopped and its receive aborted"
        ),
        SpaceRefusal::Quota { host, quota, used } => format!(
            "host {host} is over its quota of {quota} bytes of replicas ({used} bytes received or being received, --host-quota-bytes)"
        ),
        SpaceRefusal::TooLarge { .. } => refusal.to_string(),
    };
    format!("replica {target} refused: {why}")
}

fn refused(target: &str, refusal: SpaceRefusal) -> ApiError {
    ApiError(refusal_status(&refusal), describe(target, &refusal))
}

/// The space of a replica stream being received: counted in its host's bytes in flight while
/// it lives.
pub struct ReplicaSpace {
    limits: StoreLimits,
    reserve: u64,
    zfs: Zfs,
    /// The dataset whose `available` is the free space (the root, or its nearest ancestor).
    measured: String,
    target: String,
    host: String,
    stored: u64,
    host_bytes: Arc<AtomicU64>,
    bytes: u64,
    free_at_reading: u64,
    bytes_at_reading: u64,
    /// What this stream holds in its pool's ledger, released when it is dropped.
    _reservation: Reservation,
}

impl ReplicaSpace {
    /// Admits a stream of `announced` bytes (if known) from `host` into `target` under `root`
    /// (one of `roots`), or refuses it before anything is received. `ledgers` holds the space
    /// promised to the streams being received, per pool: this one holds its announced size,
    /// else its sender's estimate (`expected`) within what it may take, else the reserve.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        zfs: &Zfs,
        limits: &StoreLimits,
        in_flight: &InFlight,
        ledgers: &Ledgers,
        roots: &[String],
        root: &str,
        target: &str,
        host: &str,
        announced: Option<u64>,
        expected: Option<u64>,
    ) -> Result<Self, ApiError> {
        let (measured, free) = nearest_available(zfs, root).await?;
        let pool = root.split('/').next().unwrap_or(root);
        let pool_size = zfs
            .space(pool)
            .await?
            .map_or(0, |s| s.used.saturating_add(s.available));
        let reserve = reserve(limits.replica_min_free_bytes, pool_size);
        let mut stored = 0u64;
        for r in roots {
            if let Some(s) = zfs.space(&format!("{r}/{host}")).await? {
                stored = stored.saturating_add(s.used);
            }
        }
        let host_bytes = in_flight.of(host);
        let checks = StoreLimits {
            min_free_bytes: reserve,
            ..limits.clone()
        };
        let writing = host_bytes.load(Ordering::Relaxed);
        let reservation = ledgers
            .of(pool)
            .admit(free, |seen| {
                space::admit(&checks, host, announced, stored, writing, seen)?;
                Ok(space::hold(
                    &checks, announced, expected, stored, writing, seen,
                ))
            })
            .map_err(|r| refused(target, r))?;
        Ok(Self {
            limits: checks,
            reserve,
            zfs: zfs.clone(),
            measured,
            target: target.to_owned(),
            host: host.to_owned(),
            stored,
            host_bytes,
            bytes: 0,
            free_at_reading: free,
            bytes_at_reading: 0,
            _reservation: reservation,
        })
    }

    /// Counts `n` more bytes received; refuses the stream when it goes over its size limit or
    /// its host's quota, or would leave less than half the reserve free.
    pub async fn take(&mut self, n: u64) -> Result<(), ApiError> {
        self.bytes = self.bytes.saturating_add(n);
        let writing = self
            .host_bytes
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        space::keep_going(&self.limits, &self.host, self.bytes, self.stored, writing)
            .map_err(|r| refused(&self.target, r))?;
        if self.reserve == 0 {
            return Ok(());
        }
        if self.bytes.saturating_sub(self.bytes_at_reading) >= RECHECK_BYTES {
            let estimate = free_now(self.free_at_reading, self.bytes_at_reading, self.bytes);
            let read = self
                .zfs
                .space(&self.measured)
                .await?
                .map_or(estimate, |s| s.available);
            self.free_at_reading = estimate.min(read);
            self.bytes_at_reading = self.bytes;
        }
        let free = free_now(self.free_at_reading, self.bytes_at_reading, self.bytes);
        space::enough_while_writing(&self.limits, free).map_err(|r| refused(&self.target, r))
    }
}

impl Drop for ReplicaSpace {
    fn drop(&mut self) {
        self.host_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The `available` of `dataset`, or of its nearest existing ancestor (a replica root is made
/// by the first stream), with the dataset it was read from.
async fn nearest_available(zfs: &Zfs, dataset: &str) -> Result<(String, u64), ApiError> {
    let mut at = dataset;
    loop {
        if let Some(s) = zfs.space(at).await? {
            return Ok((at.to_owned(), s.available));
        }
        match at.rsplit_once('/') {
            Some((parent, _)) => at = parent,
            None => {
                return Err(ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("pool {at} of replica root {dataset} does not exist"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn the_default_reserve_is_five_percent_of_the_pool_at_most_a_gibibyte() {
        assert_eq!(reserve(None, 0), 0);
        assert_eq!(reserve(None, 100 * 1024 * 1024), 5 * 1024 * 1024);
        assert_eq!(reserve(None, 20 * GIB), GIB);
        assert_eq!(reserve(None, 100 * GIB), GIB);
        assert_eq!(reserve(Some(0), 100 * GIB), 0);
        assert_eq!(reserve(Some(7), 1), 7);
    }

    #[test]
    fn free_space_counts_down_as_bytes_arrive() {
        assert_eq!(free_now(100, 0, 0), 100);
        assert_eq!(free_now(100, 0, 30), 70);
        assert_eq!(free_now(100, 40, 50), 90);
        assert_eq!(free_now(100, 0, 500), 0);
        // A reading taken after more bytes than counted (never happens) counts as none.
        assert_eq!(free_now(100, 60, 50), 100);
    }

    #[test]
    fn refusals_name_the_replica_flags() {
        let m = describe(
            "p/r/h/d",
            &SpaceRefusal::ReserveBeforeStart {
                free: 1,
                held: 3,
                reserve: 2,
                announced: 4,
            },
        );
        assert!(m.starts_with("replica p/r/h/d refused: "), "{m}");
        assert!(m.contains("--replica-min-free-bytes"), "{m}");
        assert!(m.contains("3 of them held for replica streams"), "{m}");
        let m = describe(
            "t",
            &SpaceRefusal::ReserveWhileWriting {
                free: 1,
                reserve: 2,
            },
        );
        assert!(
            m.contains("--replica-min-free-bytes") && m.contains("aborted"),
            "{m}"
        );
        let m = describe(
            "t",
            &SpaceRefusal::Quota {
                host: "h".into(),
                quota: 1,
                used: 2,
            },
        );
        assert!(
            m.contains("--host-quota-bytes") && m.contains("host h"),
            "{m}"
        );
    }

    #[test]
    fn refusals_answer_413_or_507() {
        assert_eq!(
            refusal_status(&SpaceRefusal::TooLarge { limit: 1 }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        for r in [
            SpaceRefusal::Quota {
                host: "h".into(),
                quota: 1,
                used: 2,
            },
            SpaceRefusal::ReserveBeforeStart {
                free: 1,
                held: 0,
                reserve: 2,
                announced: 0,
            },
            SpaceRefusal::ReserveWhileWriting {
                free: 1,
                reserve: 2,
            },
        ] {
            assert_eq!(refusal_status(&r), StatusCode::INSUFFICIENT_STORAGE);
        }
    }
}
