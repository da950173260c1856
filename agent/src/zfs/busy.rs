//! ZFS's "busy" answers, and retrying an operation while ZFS gives them.
//!
//! zfs-fuse keeps a dataset busy for a while after a receive into it was cut short (its daemon
//! winds the receive down after the killed `zfs` client is gone) and for a moment after a
//! receive mounted it; OpenZFS answers the same while something else holds the dataset. A
//! `zfs` command then fails with one of these lines on its standard error:
//!
//! - `cannot receive new filesystem stream: dataset is busy`, `cannot destroy 'tank/r': dataset
//!   is busy` (libzfs's `zfs_standard_error` for `EBUSY`, zfs-fuse and OpenZFS alike);
//! - `cannot unmount '/tank/r': pool or dataset is busy` (OpenZFS: `EZFS_BUSY` without a
//!   detail), `cannot mount 'tank/r': mountpoint or dataset is busy` (zfs-fuse);
//! - `umount: /tank/r: target is busy.` (older util-linux: `device is busy.`): zfs-fuse unmounts
//!   with umount(8), whose own message comes before libzfs's `cannot unmount '/tank/r': umount
//!   failed: umount child process failed`.
//!
//! [`ZfsError::is_busy`] recognises them; [`retry_while_busy`] retries an operation while it
//! fails with one, within a [`Patience`]. (`pool is busy`, zpool's, is not one: zetaback retries
//! no pool command.)

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::ZfsError;

/// How a line of a `zfs` command's standard error ends when ZFS found a dataset (or its mount)
/// busy, once trailing dots and blanks are gone. Matched at the end of a line, so that a
/// dataset or path named `busy` does not count (dataset names have no spaces).
const BUSY_ENDINGS: &[&str] = &[
    // zfs_standard_error's EBUSY; also the end of "pool or dataset is busy" (EZFS_BUSY) and
    // of zfs-fuse's "mountpoint or dataset is busy".
    ": dataset is busy",
    " or dataset is busy",
    // umount(8), run by zfs-fuse's libzfs.
    ": target is busy",
    ": device is busy",
];

/// Whether a `zfs` command's standard error says ZFS found the dataset busy (pure).
pub fn says_busy(stderr: &str) -> bool {
    stderr.lines().any(|line| {
        let line = line.trim_end().trim_end_matches('.');
        BUSY_ENDINGS.iter().any(|end| line.ends_with(end))
    })
}

impl ZfsError {
    /// The command failed because ZFS found the dataset (or its mount) busy (see the `busy`
    /// module for the texts).
    pub fn is_busy(&self) -> bool {
        self.stderr().is_some_and(says_busy)
    }
}

/// An error that may be ZFS calling a dataset busy (a [`ZfsError`], or an error wrapping one).
pub trait Busy {
    fn is_busy(&self) -> bool;
}

impl Busy for ZfsError {
    fn is_busy(&self) -> bool {
        ZfsError::is_busy(self)
    }
}

/// When to stop retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No try starts once this long has passed since the first started.
    Within(Duration),
    /// At most this many tries in all.
    Tries(u32),
}

/// How long, and how often, an operation is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    pub limit: Limit,
    /// The pause before each new try.
    pub every: Duration,
}

impl Patience {
    /// Tries again every `every` until `within` has passed since the first try started.
    pub const fn within(within: Duration, every: Duration) -> Self {
        Self {
            limit: Limit::Within(within),
            every,
        }
    }

    /// At most `tries` tries in all, `every` apart.
    pub const fn tries(tries: u32, every: Duration) -> Self {
        Self {
            limit: Limit::Tries(tries),
            every,
        }
    }

    /// Whether another try may follow `tried` tries, `elapsed` after the first started (pure).
    pub fn allows_another(&self, tried: u32, elapsed: Duration) -> bool {
        match self.limit {
            Limit::Within(within) => elapsed < within,
            Limit::Tries(tries) => tried < tries,
        }
    }
}

/// Runs `op`, and runs it again (after [`Patience::every`]) while it fails with an error ZFS
/// calls busy, as long as `patience` allows; each retry is logged (warn) with `what` and the
/// dataset. Returns the first success, the first other error, or the last busy error once
/// `patience` is exhausted.
pub async fn retry_while_busy<T, E, F, Fut>(
    what: &str,
    dataset: &str,
    patience: Patience,
    op: F,
) -> Result<T, E>
where
    E: Busy + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_while(
        what,
        dataset,
        patience,
        "ZFS calls the dataset busy",
        E::is_busy,
        op,
    )
    .await
}

/// [`retry_while_busy`] for another transient failure: `op` is run again while it fails with
/// an error `transient` accepts (`because` says what such a failure means, for the log).
pub async fn retry_while<T, E, F, Fut, P>(
    what: &str,
    dataset: &str,
    patience: Patience,
    because: &str,
    transient: P,
    mut op: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: Fn(&E) -> bool,
{
    let started = Instant::now();
    let mut tried = 0u32;
    loop {
        tried += 1;
        match op().await {
            Err(e) if transient(&e) && patience.allows_another(tried, started.elapsed()) => {
                warn!(
                    %dataset,
                    error = %e,
                    attempt = tried,
                    "{what}: {because}; trying again in {:?}",
                    patience.every
                );
                tokio::time::sleep(patience.every).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::zfs::CommandLine;

    fn failed(stderr: &str) -> ZfsError {
        ZfsError::Failed {
            command: CommandLine(vec!["zfs".into(), "destroy".into(), "tank/r".into()]),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn zfs_fuse_and_openzfs_busy_answers_are_busy() {
        for stderr in [
            // zfs-fuse and OpenZFS: zfs_standard_error(EBUSY).
            "cannot receive new filesystem stream: dataset is busy",
            "cannot destroy 'tank/r': dataset is busy",
            "cannot destroy snapshot tank/r@zetaback-1: dataset is busy",
            // OpenZFS: EZFS_BUSY's own text (an unmount refused).
            "cannot unmount '/tank/r': pool or dataset is busy",
            // zfs-fuse: a mount refused.
            "cannot mount 'tank/r': mountpoint or dataset is busy",
            // zfs-fuse unmounts with umount(8): its line, then libzfs's.
            "umount: /run/zetaback/zfs/tank/r: target is busy.\ncannot unmount '/run/zetaback/zfs/tank/r': umount failed: umount child process failed",
            "umount: /tank/r: device is busy.\n        (In some cases useful info about processes that use\n         the device is found by lsof(8) or fuser(1))\ncannot unmount '/tank/r': umount failed: umount child process failed",
        ] {
            assert!(says_busy(stderr), "{stderr:?}");
            assert!(failed(stderr).is_busy(), "{stderr:?}");
        }
    }

    #[test]
    fn other_failures_and_busy_names_are_not_busy() {
        for stderr in [
            "cannot receive new filesystem stream: destination exists",
            "cannot open 'tank/busy': dataset does not exist",
            "cannot destroy 'tank/busy': dataset does not exist",
            "cannot open 'tank/dataset-is-busy': dataset does not exist",
            // OpenZFS's EBUSY of a resumable receive's leftover: not transient.
            "cannot receive new filesystem stream: destination tank/r contains partially-complete state from \"zfs receive -s\".",
            // zpool's, not a zfs command's.
            "cannot destroy 'tank': pool is busy",
            "",
        ] {
            assert!(!says_busy(stderr), "{stderr:?}");
        }
        // Only a failed command's stderr counts.
        let timeout = ZfsError::Timeout {
            command: CommandLine(vec!["zfs".into(), "destroy".into(), "tank/busy".into()]),
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_busy());
        assert!(
            !ZfsError::NotOurs {
                snapshot: "tank/r@dataset is busy".into()
            }
            .is_busy()
        );
    }

    #[test]
    fn patience_bounds_by_time_or_by_tries() {
        let within = Patience::within(Duration::from_secs(30), Duration::from_secs(1));
        assert!(within.allows_another(1, Duration::ZERO));
        assert!(within.allows_another(1000, Duration::from_millis(29_999)));
        assert!(!within.allows_another(1, Duration::from_secs(30)));
        let tries = Patience::tries(3, Duration::from_millis(250));
        assert!(tries.allows_another(1, Duration::from_secs(3600)));
        assert!(tries.allows_another(2, Duration::ZERO));
        assert!(!tries.allows_another(3, Duration::ZERO));
    }

    const QUICK: Patience = Patience::tries(4, Duration::from_millis(1));

    #[tokio::test]
    async fn a_busy_operation_is_tried_again_until_it_succeeds() {
        let calls = Cell::new(0);
        let r: Result<u32, ZfsError> = retry_while_busy("destroying", "tank/r", QUICK, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(failed("cannot destroy 'tank/r': dataset is busy"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.expect("succeeds on the third try"), 3);
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn another_error_ends_it_at_once_and_the_last_busy_error_ends_it_when_patience_is_out() {
        let calls = Cell::new(0);
        let r: Result<(), ZfsError> = retry_while_busy("destroying", "tank/r", QUICK, || {
            calls.set(calls.get() + 1);
            async { Err(failed("cannot destroy 'tank/r': dataset does not exist")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1, "not busy: not tried again");

        let calls = Cell::new(0);
        let r: Result<(), ZfsError> = retry_while_busy("destroying", "tank/r", QUICK, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Err(failed(&format!("try {n}: dataset is busy"))) }
        })
        .await;
        let e = r.expect_err("still busy");
        assert_eq!(calls.get(), 4, "the tries the patience allows");
        assert_eq!(e.stderr(), Some("try 4: dataset is busy"), "the last error");
    }

    #[tokio::test]
    async fn a_deadline_stops_the_retries() {
        let calls = Cell::new(0);
        let within = Duration::from_millis(30);
        let patience = Patience::within(within, Duration::from_millis(10));
        let started = Instant::now();
        let r: Result<(), ZfsError> = retry_while_busy("receiving", "tank/r", patience, || {
            calls.set(calls.get() + 1);
            async {
                Err(failed(
                    "cannot receive new filesystem stream: dataset is busy",
                ))
            }
        })
        .await;
        assert!(r.expect_err("busy throughout").is_busy());
        // Tries at least 10 ms apart, none after the one that found the deadline passed.
        assert!((2..=4).contains(&calls.get()), "{} tries", calls.get());
        assert!(started.elapsed() >= within);
    }

    #[tokio::test]
    async fn another_transient_failure_with_its_own_test() {
        let calls = Cell::new(0);
        let r: Result<&str, String> = retry_while(
            "looking",
            "tank/r",
            QUICK,
            "it vanished",
            |e: &String| e.contains("does not exist"),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n == 1 {
                        Err("cannot open 'tank/r': dataset does not exist".to_owned())
                    } else {
                        Ok("there")
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok("there"));
        assert_eq!(calls.get(), 2);
    }
}
