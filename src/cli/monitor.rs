//! The monitoring-plugin answer of `violators` (Nagios/Icinga convention): one summary line
//! first, then details; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Pure.
//!
//! * OK: no violators and every policy Ready.
//! * WARNING: some dataset violates its policy (late incremental, last job failed, its host's
//!   agent stopped reporting: its backups so far are intact, and if the silence lasts the
//!   missing backups turn into `NoFullWithin`).
//! * CRITICAL: a violation is `NoFullWithin` (no restorable base within the policy), or a
//!   policy is not Ready (the controller cannot evaluate it, or has not reported on it yet).
//! * UNKNOWN: the BackupPolicies could not be read.

use serde::Serialize;

use crate::api::backup_policy::{Violation, ViolationReason};

/// How many violators the summary line names before `and N more`.
pub const NAMED_IN_LINE: usize = 10;

/// The plugin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// The process exit code for this state.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// Whether the controller says it can evaluate a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "ready")]
pub enum Readiness {
    /// `Ready=True`.
    Ready,
    /// `Ready=False` or `Unknown`, with the condition's reason and message.
    NotReady { reason: String, message: String },
    /// No Ready condition yet: the controller has not reported on the policy.
    NoStatus,
}

/// What `violators` knows about one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHealth {
    /// `name`, or `namespace/name` when several namespaces are shown.
    pub policy: String,
    pub readiness: Readiness,
    /// Datasets in violation (may exceed the listed violations, which status caps).
    pub violators: u32,
    pub violations: Vec<Violation>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub state: State,
    pub exit_code: u8,
    /// The first output line, e.g. `ZETABACK OK - 0 violators in 3 policies`.
    pub summary: String,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn is_critical(reason: ViolationReason) -> bool {
    matches!(reason, ViolationReason::NoFullWithin)
}

fn reason_name(reason: ViolationReason) -> &'static str {
    match reason {
        ViolationReason::NoFullWithin => "NoFullWithin",
        ViolationReason::NoBackupWithin => "NoBackupWithin",
        ViolationReason::LastJobFailed => "LastJobFailed",
        ViolationReason::HostUnreachable => "HostUnreachable",
    }
}

/// Judges the policies.
pub fn assess(policies: &[PolicyHealth]) -> Verdict {
    let total: u64 = policies.iter().map(|p| u64::from(p.violators)).sum();
    // host:dataset -> reasons, in first-seen order.
    let mut named: Vec<(String, Vec<&'static str>)> = Vec::new();
    for v in policies.iter().flat_map(|p| &p.violations) {
        let key = format!("{}:{}", v.host, v.dataset);
        let reason = reason_name(v.reason);
        match named.iter_mut().find(|(k, _)| *k == key) {
            Some((_, reasons)) if !reasons.contains(&reason) => reasons.push(reason),
            Some(_) => {}
            None => named.push((key, vec![reason])),
        }
    }
    let not_ready: Vec<String> = policies
        .iter()
        .filter_map(|p| match &p.readiness {
            Readiness::Ready => None,
            Readiness::NotReady { reason, .. } => Some(format!("{} ({reason})", p.policy)),
            Readiness::NoStatus => Some(format!("{} (no status yet)", p.policy)),
        })
        .collect();
    let critical = !not_ready.is_empty()
        || policies
            .iter()
            .flat_map(|p| &p.violations)
            .any(|v| is_critical(v.reason));
    // The count is what status says; a listed violation counts even if a stale count is 0.
    let total = total.max(named.len() as u64);
    let state = if critical {
        State::Critical
    } else if total > 0 {
        State::Warning
    } else {
        State::Ok
    };
    let mut summary = format!("ZETABACK {} - ", state.label());
    if total == 0 {
        summary.push_str(&format!(
            "0 violators in {}",
            plural(policies.len() as u64, "policy", "policies")
        ));
    } else {
        summary.push_str(&plural(total, "violator", "violators"));
        let shown: Vec<String> = named
            .iter()
            .take(NAMED_IN_LINE)
            .map(|(k, reasons)| format!("{k} ({})", reasons.join(",")))
            .collect();
        if !shown.is_empty() {
            summary.push_str(": ");
            summary.push_str(&shown.join(", "));
            let unnamed = total.saturating_sub(shown.len() as u64);
            if unnamed > 0 {
                summary.push_str(&format!(", and {unnamed} more"));
            }
        }
    }
    if !not_ready.is_empty() {
        summary.push_str("; not Ready: ");
        summary.push_str(&not_ready.join(", "));
    }
    Verdict {
        state,
        exit_code: state.exit_code(),
        summary,
    }
}

/// The verdict when the API could not be read.
pub fn unknown(why: &str) -> Verdict {
    let first_line = why.lines().next().unwrap_or_default();
    Verdict {
        state: State::Unknown,
        exit_code: State::Unknown.exit_code(),
        summary: format!("ZETABACK UNKNOWN - {first_line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(host: &str, dataset: &str, reason: ViolationReason) -> Violation {
        Violation {
            host: host.into(),
            dataset: dataset.into(),
            reason,
            since: None,
            message: None,
        }
    }

    fn policy(name: &str, readiness: Readiness, violations: Vec<Violation>) -> PolicyHealth {
        PolicyHealth {
            policy: name.into(),
            readiness,
            violators: violations.len() as u32,
            violations,
        }
    }

    #[test]
    fn all_compliant_is_ok() {
        let ps = ["a", "b", "c"].map(|n| policy(n, Readiness::Ready, vec![]));
        let verdict = assess(&ps);
        assert_eq!(verdict.summary, "ZETABACK OK - 0 violators in 3 policies");
        assert_eq!((verdict.state, verdict.exit_code), (State::Ok, 0));
        assert_eq!(
            assess(&ps[..1]).summary,
            "ZETABACK OK - 0 violators in 1 policy"
        );
        assert_eq!(
            assess(&[]).summary,
            "ZETABACK OK - 0 violators in 0 policies"
        );
    }

    #[test]
    fn late_backups_warn() {
        let ps = [
            policy(
                "a",
                Readiness::Ready,
                vec![
                    v("db-1", "tank/pg", ViolationReason::NoBackupWithin),
                    v("db-1", "tank/pg", ViolationReason::LastJobFailed),
                ],
            ),
            policy(
                "b",
                Readiness::Ready,
                vec![v("db-2", "tank/x", ViolationReason::LastJobFailed)],
            ),
        ];
        let mut ps = ps.to_vec();
        ps[0].violators = 1;
        let verdict = assess(&ps);
        assert_eq!(
            verdict.summary,
            "ZETABACK WARNING - 2 violators: db-1:tank/pg (NoBackupWithin,LastJobFailed), db-2:tank/x (LastJobFailed)"
        );
        assert_eq!(verdict.exit_code, 1);
    }

    #[test]
    fn missing_fulls_and_unready_policies_are_critical_unreachable_hosts_warn() {
        let verdict = assess(&[policy(
            "a",
            Readiness::Ready,
            vec![v("db-1", "tank/pg", ViolationReason::NoFullWithin)],
        )]);
        assert_eq!(verdict.state, State::Critical);
        assert_eq!(verdict.exit_code, 2);
        assert!(
            verdict
                .summary
                .starts_with("ZETABACK CRITICAL - 1 violator: db-1:tank/pg (")
        );
        let verdict = assess(&[policy(
            "a",
            Readiness::Ready,
            vec![v("db-1", "tank/pg", ViolationReason::HostUnreachable)],
        )]);
        assert_eq!(verdict.state, State::Warning);
        assert_eq!(verdict.exit_code, 1);
        let verdict = assess(&[
            policy("a", Readiness::Ready, vec![]),
            policy(
                "ns/b",
                Readiness::NotReady {
                    reason: "StoreUnreachable".into(),
                    message: "x".into(),
                },
                vec![],
            ),
            policy("c", Readiness::NoStatus, vec![]),
        ]);
        assert_eq!(
            verdict.summary,
            "ZETABACK CRITICAL - 0 violators in 3 policies; not Ready: ns/b (StoreUnreachable), c (no status yet)"
        );
        assert_eq!(verdict.exit_code, 2);
    }

    #[test]
    fn long_lists_are_cut_and_uncounted_violators_mentioned() {
        let many: Vec<Violation> = (0..15)
            .map(|i| v("h", &format!("tank/d{i}"), ViolationReason::NoBackupWithin))
            .collect();
        let mut p = policy("a", Readiness::Ready, many);
        p.violators = 60; // status lists at most 50
        let verdict = assess(&[p]);
        assert!(
            verdict
                .summary
                .starts_with("ZETABACK WARNING - 60 violators: h:tank/d0 (NoBackupWithin), ")
        );
        assert!(
            verdict
                .summary
                .ends_with("h:tank/d9 (NoBackupWithin), and 50 more"),
            "{}",
            verdict.summary
        );
        let mut counted_only = policy("a", Readiness::Ready, vec![]);
        counted_only.violators = 2;
        assert_eq!(
            assess(&[counted_only]).summary,
            "ZETABACK WARNING - 2 violators"
        );
    }

    #[test]
    fn unknown_is_one_line() {
        let verdict = unknown("cannot list BackupPolicies: connection refused\nmore");
        assert_eq!(
            verdict.summary,
            "ZETABACK UNKNOWN - cannot list BackupPolicies: connection refused"
        );
        assert_eq!(verdict.exit_code, 3);
    }
}
