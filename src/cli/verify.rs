//! `kubectl zetaback verify POLICY [--host H] [--dataset D]`: asks the controller to have the
//! store re-read every stored backup of the selected datasets now (the
//! `zetaback.io/verify-now` annotation), follows the policy's status until the controller
//! reports them verified, and answers by the monitoring-plugin convention: OK (0) when no
//! selected dataset has a quarantined backup, WARNING (1) when quarantined backups remain but
//! a newer full healed their datasets, CRITICAL (2) when a dataset is `Corrupt`, UNKNOWN (3)
//! when the answer did not come within `--timeout`.
//!
//! [`progress`] is the pure part: what the status says about one request.

use crate::api::BackupPolicyStatus;
use crate::api::backup_policy::{VerifyNowRequest, ViolationReason};

use super::monitor::State;

/// What a policy's status says about a verify-now request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The controller acted on this request (or a newer one).
    pub handled: bool,
    /// Selected datasets in the status's verification list.
    pub datasets: usize,
    /// Of those, datasets with nothing left to verify.
    pub done: usize,
    /// Backups still to verify.
    pub pending: u64,
    /// Quarantined backups of the selected datasets.
    pub quarantined: usize,
    /// Selected datasets that are `Corrupt` violators (quarantined, not healed).
    pub corrupt: usize,
}

impl Progress {
    /// Every selected backup was verified.
    pub fn finished(&self) -> bool {
        self.handled && self.pending == 0
    }

    /// The verdict once finished (UNKNOWN before).
    pub fn state(&self) -> State {
        match self {
            p if !p.finished() => State::Unknown,
            p if p.corrupt > 0 => State::Critical,
            p if p.quarantined > 0 => State::Warning,
            _ => State::Ok,
        }
    }

    /// The monitoring-plugin line: state, summary, performance data.
    pub fn line(&self) -> String {
        let state = self.state();
        let summary = if self.finished() {
            format!(
                "{} dataset(s) verified, {} quarantined backup(s), {} corrupt dataset(s)",
                self.datasets, self.quarantined, self.corrupt
            )
        } else if self.handled {
            format!(
                "not finished: {} of {} dataset(s) verified, {} backup(s) pending",
                self.done, self.datasets, self.pending
            )
        } else {
            "the controller has not acted on the request".to_owned()
        };
        format!(
            "VERIFY {} - {summary} | datasets={} pending={} quarantined={} corrupt={}",
            state.label(),
            self.datasets,
            self.pending,
            self.quarantined,
            self.corrupt
        )
    }
}

/// What `status` says about `request`.
pub fn progress(status: Option<&BackupPolicyStatus>, request: &VerifyNowRequest) -> Progress {
    let Some(st) = status else {
        return Progress {
            handled: false,
            datasets: 0,
            done: 0,
            pending: 0,
            quarantined: 0,
            corrupt: 0,
        };
    };
    let handled = st
        .verify_now_handled
        .as_ref()
        .is_some_and(|t| t.0 >= request.requested_at);
    let selected: Vec<_> = st
        .verification
        .iter()
        .filter(|v| request.selects(&v.host, &v.dataset))
        .collect();
    Progress {
        handled,
        datasets: selected.len(),
        done: selected.iter().filter(|v| v.pending == 0).count(),
        pending: selected.iter().map(|v| u64::from(v.pending)).sum(),
        quarantined: selected.iter().map(|v| v.quarantined.len()).sum(),
        corrupt: st
            .violations
            .iter()
            .filter(|v| {
                v.reason == ViolationReason::Corrupt && request.selects(&v.host, &v.dataset)
            })
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::{DatasetVerification, QuarantinedBackup, Violation};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).expect("ts")
    }

    fn entry(dataset: &str, pending: u32, quarantined: usize) -> DatasetVerification {
        DatasetVerification {
            host: "h".into(),
            dataset: dataset.into(),
            last_verified: None,
            next_verify: None,
            pending,
            quarantined: (0..quarantined)
                .map(|i| QuarantinedBackup {
                    backup: format!("{i}.full"),
                    found: None,
                    problem: "sha256".into(),
                    dependents: Vec::new(),
                })
                .collect(),
        }
    }

    fn status(
        handled: i64,
        entries: Vec<DatasetVerification>,
        corrupt: &[&str],
    ) -> BackupPolicyStatus {
        BackupPolicyStatus {
            verify_now_handled: Some(Time(ts(handled))),
            verification: entries,
            violations: corrupt
                .iter()
                .map(|d| Violation {
                    host: "h".into(),
                    dataset: (*d).into(),
                    reason: ViolationReason::Corrupt,
                    since: None,
                    message: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts() {
        let req = VerifyNowRequest {
            host: None,
            dataset: None,
            requested_at: ts(100),
        };
        let one = |d: &str| VerifyNowRequest {
            dataset: Some(d.into()),
            ..req.clone()
        };
        // (status, request, finished, state)
        let cases = [
            (None, req.clone(), false, State::Unknown),
            (
                Some(status(99, vec![entry("a", 0, 0)], &[])),
                req.clone(),
                false,
                State::Unknown,
            ),
            (
                Some(status(100, vec![entry("a", 2, 0)], &[])),
                req.clone(),
                false,
                State::Unknown,
            ),
            (
                Some(status(100, vec![entry("a", 0, 0), entry("b", 0, 0)], &[])),
                req.clone(),
                true,
                State::Ok,
            ),
            (
                Some(status(100, vec![entry("a", 0, 1)], &[])),
                req.clone(),
                true,
                State::Warning,
            ),
            (
                Some(status(100, vec![entry("a", 0, 1)], &["a"])),
                req.clone(),
                true,
                State::Critical,
            ),
            // Another dataset's trouble is not this request's.
            (
                Some(status(
                    100,
                    vec![entry("a", 0, 0), entry("b", 3, 1)],
                    &["b"],
                )),
                one("a"),
                true,
                State::Ok,
            ),
            (
                Some(status(
                    100,
                    vec![entry("a", 0, 0), entry("b", 3, 1)],
                    &["b"],
                )),
                one("b"),
                false,
                State::Unknown,
            ),
        ];
        for (st, r, finished, state) in cases {
            let p = progress(st.as_ref(), &r);
            assert_eq!((p.finished(), p.state()), (finished, state), "{st:?} {r:?}");
            assert!(
                p.line()
                    .starts_with(&format!("VERIFY {} - ", state.label())),
                "{}",
                p.line()
            );
        }
    }
}
