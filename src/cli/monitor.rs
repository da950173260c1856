//! The monitoring-plugin answer of `violators` (Nagios/Icinga convention): one status line
//! first, with performance data after `|`, then details; exit 0 OK, 1 WARNING, 2 CRITICAL,
//! 3 UNKNOWN. Pure.
//!
//! * OK: no violators, every policy Ready and its status fresh.
//! * WARNING: some dataset violates its policy (late incremental, last job failed, its host's
//!   agent stopped reporting: its backups so far are intact, and if the silence lasts the
//!   missing backups turn into `NoFullWithin`), or a policy protects nothing (its selector
//!   matches no host, or its hosts report no dataset it covers: `Compliant=False` with reason
//!   `NoHostsSelected`/`NoDatasetsSelected`; a typo must not read as "all is well").
//! * CRITICAL: a violation says no restorable backup can be vouched for (`NoFullWithin`,
//!   `ChainBroken`, `BackupMissing`, `HostNotReporting`), or a policy is not Ready (the
//!   controller cannot evaluate it, or has not reported on it yet).
//! * UNKNOWN: the BackupPolicies could not be read, none was found (a mistyped namespace is
//!   not "all is well"), or a Ready policy's `status.lastEvaluated` is older than the allowed
//!   age (the controller refreshes it every few minutes: an older one is the last answer of a
//!   controller that stopped). A CRITICAL finding still wins: it needs action either way.
//!
//! Performance data: `violators`, `policies`, `stale` (policies whose status is too old) and
//! `status_age` (the oldest Ready policy's status age, in seconds).

use jiff::{SignedDuration, Timestamp};
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
    /// When the controller last evaluated the policy (`status.lastEvaluated`).
    pub last_evaluated: Option<Timestamp>,
    /// The controller's reason when the policy selects nothing to back up
    /// (`NoHostsSelected`, `NoDatasetsSelected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protects_nothing: Option<String>,
}

/// How fresh a policy's status must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub now: Timestamp,
    /// A Ready policy whose status is older than this is stale.
    pub max_age: std::time::Duration,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub state: State,
    pub exit_code: u8,
    /// The status line before its performance data, e.g.
    /// `ZETABACK OK - 0 violators in 3 policies`.
    pub summary: String,
    /// The performance data (`label=value;warn;crit;min;max ...`), empty when nothing is known.
    pub perfdata: String,
}

impl Verdict {
    /// The first output line: the summary, then ` | ` and the performance data if any.
    pub fn line(&self) -> String {
        if self.perfdata.is_empty() {
            self.summary.clone()
        } else {
            format!("{} | {}", self.summary, self.perfdata)
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn is_critical(reason: ViolationReason) -> bool {
    matches!(
        reason,
        ViolationReason::NoFullWithin
            | ViolationReason::Corrupt
            | ViolationReason::DrillFailed
            | ViolationReason::ChainBroken
            | ViolationReason::BackupMissing
            | ViolationReason::HostNotReporting
    )
}

fn reason_name(reason: ViolationReason) -> &'static str {
    match reason {
        ViolationReason::NoFullWithin => "NoFullWithin",
        ViolationReason::NoBackupWithin => "NoBackupWithin",
        ViolationReason::LastJobFailed => "LastJobFailed",
        ViolationReason::HostUnreachable => "HostUnreachable",
        ViolationReason::HostNotReporting => "HostNotReporting",
        ViolationReason::ChainBroken => "ChainBroken",
        ViolationReason::BackupMissing => "BackupMissing",
        ViolationReason::Corrupt => "Corrupt",
        ViolationReason::RpoMissed => "RpoMissed",
        ViolationReason::DrillFailed => "DrillFailed",
        ViolationReason::NoDrillWithin => "NoDrillWithin",
        ViolationReason::RtoMissed => "RtoMissed",
    }
}

/// An age in its largest whole unit: `45s`, `21m`, `5h`, `3d`.
pub fn short_age(age: SignedDuration) -> String {
    let s = age.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How old a Ready policy's status is, if too old: `Some(None)` when it has no
/// `lastEvaluated` at all (written by a controller that predates it, or by hand).
fn staleness(p: &PolicyHealth, fresh: Freshness) -> Option<Option<SignedDuration>> {
    if p.readiness != Readiness::Ready {
        return None;
    }
    let max = SignedDuration::try_from(fresh.max_age).unwrap_or(SignedDuration::MAX);
    match p.last_evaluated {
        None => Some(None),
        Some(t) => {
            let age = fresh.now.duration_since(t);
            (age > max).then_some(Some(age))
        }
    }
}

/// Judges the policies (at least one: see [`nothing_found`]).
pub fn assess(policies: &[PolicyHealth], fresh: Freshness) -> Verdict {
    let total: u64 = policies.iter().map(|p| u64::from(p.violators)).sum();
    // host:dataset -> reasons, in first-seen order.
    let mut named: Vec<(String, Vec<&'static str>)> = Vec::new();
    for v in policies.iter().flat_map(|p| &p.violations) {
        // A host-wide violation (its datasets unknown) names no dataset.
        let key = if v.dataset.is_empty() {
            v.host.clone()
        } else {
            format!("{}:{}", v.host, v.dataset)
        };
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
    let empty: Vec<String> = policies
        .iter()
        .filter_map(|p| {
            p.protects_nothing
                .as_ref()
                .map(|why| format!("{} ({why})", p.policy))
        })
        .collect();
    let stale: Vec<(&str, Option<SignedDuration>)> = policies
        .iter()
        .filter_map(|p| staleness(p, fresh).map(|age| (p.policy.as_str(), age)))
        .collect();
    let state = if critical {
        State::Critical
    } else if !stale.is_empty() {
        State::Unknown
    } else if total > 0 || !empty.is_empty() {
        State::Warning
    } else {
        State::Ok
    };
    let mut summary = format!("ZETABACK {} - ", state.label());
    // How old the stale statuses are: the oldest, or "never" when one has no stamp.
    let stale_age = || {
        if stale.iter().any(|(_, a)| a.is_none()) {
            "without an evaluation time".to_owned()
        } else {
            let oldest = stale
                .iter()
                .filter_map(|(_, a)| *a)
                .max()
                .unwrap_or_default();
            format!("not refreshed for {}", short_age(oldest))
        }
    };
    let stale_names = || {
        let names: Vec<&str> = stale.iter().map(|(p, _)| *p).take(NAMED_IN_LINE).collect();
        let more = stale.len().saturating_sub(names.len());
        let mut text = names.join(", ");
        if more > 0 {
            text.push_str(&format!(", and {more} more"));
        }
        text
    };
    if state == State::Unknown {
        summary.push_str(&format!(
            "status of {} {} (allowed {}; is the controller running?): {}; last known: ",
            plural(stale.len() as u64, "policy", "policies"),
            stale_age(),
            short_age(SignedDuration::try_from(fresh.max_age).unwrap_or(SignedDuration::MAX)),
            stale_names()
        ));
    }
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
    if !empty.is_empty() {
        summary.push_str("; protects nothing: ");
        summary.push_str(&empty.join(", "));
    }
    if !not_ready.is_empty() {
        summary.push_str("; not Ready: ");
        summary.push_str(&not_ready.join(", "));
    }
    if state != State::Unknown && !stale.is_empty() {
        summary.push_str(&format!("; status {}: {}", stale_age(), stale_names()));
    }
    let oldest = policies
        .iter()
        .filter(|p| p.readiness == Readiness::Ready)
        .filter_map(|p| p.last_evaluated)
        .map(|t| fresh.now.duration_since(t).as_secs().max(0))
        .max();
    let mut perfdata = format!(
        "violators={total};;;0 policies={};;;0 stale={};;;0",
        policies.len(),
        stale.len()
    );
    if let Some(age) = oldest {
        perfdata.push_str(&format!(
            " status_age={age}s;;{};0",
            fresh.max_age.as_secs()
        ));
    }
    Verdict {
        state,
        exit_code: state.exit_code(),
        summary,
        perfdata,
    }
}

/// The verdict when no BackupPolicy was found `where_` (e.g. `in namespace ops`): UNKNOWN,
/// since a mistyped namespace must not read as "nothing violates".
pub fn nothing_found(where_: &str) -> Verdict {
    Verdict {
        state: State::Unknown,
        exit_code: State::Unknown.exit_code(),
        summary: format!(
            "ZETABACK UNKNOWN - no BackupPolicy found {where_} (a mistyped namespace? -A checks every namespace)"
        ),
        perfdata: "violators=0;;;0 policies=0;;;0".into(),
    }
}

/// The verdict when the API could not be read.
pub fn unknown(why: &str) -> Verdict {
    let first_line = why.lines().next().unwrap_or_default();
    Verdict {
        state: State::Unknown,
        exit_code: State::Unknown.exit_code(),
        summary: format!("ZETABACK UNKNOWN - {first_line}"),
        perfdata: String::new(),
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
            last_evaluated: Some(ts(NOW - 60)),
            protects_nothing: None,
        }
    }

    const NOW: i64 = 1_000_000;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn fresh() -> Freshness {
        Freshness {
            now: ts(NOW),
            max_age: std::time::Duration::from_secs(900),
        }
    }

    #[test]
    fn all_compliant_is_ok() {
        let ps = ["a", "b", "c"].map(|n| policy(n, Readiness::Ready, vec![]));
        let verdict = assess(&ps, fresh());
        assert_eq!(verdict.summary, "ZETABACK OK - 0 violators in 3 policies");
        assert_eq!((verdict.state, verdict.exit_code), (State::Ok, 0));
        assert_eq!(
            assess(&ps[..1], fresh()).summary,
            "ZETABACK OK - 0 violators in 1 policy"
        );
        assert_eq!(
            verdict.line(),
            "ZETABACK OK - 0 violators in 3 policies | violators=0;;;0 policies=3;;;0 stale=0;;;0 status_age=60s;;900;0"
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
        let verdict = assess(&ps, fresh());
        assert_eq!(
            verdict.summary,
            "ZETABACK WARNING - 2 violators: db-1:tank/pg (NoBackupWithin,LastJobFailed), db-2:tank/x (LastJobFailed)"
        );
        assert_eq!(verdict.exit_code, 1);
    }

    #[test]
    fn missing_fulls_and_unready_policies_are_critical_unreachable_hosts_warn() {
        let verdict = assess(
            &[policy(
                "a",
                Readiness::Ready,
                vec![v("db-1", "tank/pg", ViolationReason::NoFullWithin)],
            )],
            fresh(),
        );
        assert_eq!(verdict.state, State::Critical);
        assert_eq!(verdict.exit_code, 2);
        assert!(
            verdict
                .summary
                .starts_with("ZETABACK CRITICAL - 1 violator: db-1:tank/pg (")
        );
        let verdict = assess(
            &[policy(
                "a",
                Readiness::Ready,
                vec![v("db-1", "tank/pg", ViolationReason::HostUnreachable)],
            )],
            fresh(),
        );
        assert_eq!(verdict.state, State::Warning);
        assert_eq!(verdict.exit_code, 1);
        let verdict = assess(
            &[
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
            ],
            fresh(),
        );
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
        let verdict = assess(&[p], fresh());
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
            assess(&[counted_only], fresh()).summary,
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

    #[test]
    fn no_policy_found_is_unknown() {
        let verdict = nothing_found("in namespace opps");
        assert_eq!((verdict.state, verdict.exit_code), (State::Unknown, 3));
        assert!(
            verdict
                .line()
                .starts_with("ZETABACK UNKNOWN - no BackupPolicy found in namespace opps"),
            "{}",
            verdict.line()
        );
        assert!(verdict.line().ends_with("| violators=0;;;0 policies=0;;;0"));
    }

    #[test]
    fn a_status_the_controller_stopped_refreshing_is_unknown_with_its_age() {
        let mut old = policy("a", Readiness::Ready, vec![]);
        old.last_evaluated = Some(ts(NOW - 21 * 60));
        let ok = policy("b", Readiness::Ready, vec![]);
        let verdict = assess(&[old.clone(), ok.clone()], fresh());
        assert_eq!((verdict.state, verdict.exit_code), (State::Unknown, 3));
        assert_eq!(
            verdict.line(),
            "ZETABACK UNKNOWN - status of 1 policy not refreshed for 21m (allowed 15m; is the controller running?): a; last known: 0 violators in 2 policies | violators=0;;;0 policies=2;;;0 stale=1;;;0 status_age=1260s;;900;0"
        );
        // Exactly at the limit it is still fresh.
        old.last_evaluated = Some(ts(NOW - 900));
        assert_eq!(assess(&[old.clone()], fresh()).state, State::Ok);
        // No evaluation time at all (a status written without one): unknown too.
        old.last_evaluated = None;
        let verdict = assess(&[old.clone()], fresh());
        assert_eq!(verdict.state, State::Unknown);
        assert!(
            verdict.summary.contains("without an evaluation time"),
            "{}",
            verdict.summary
        );
        // A CRITICAL finding still wins, and names the stale status.
        let bad = policy(
            "c",
            Readiness::Ready,
            vec![v("db-1", "", ViolationReason::HostNotReporting)],
        );
        old.last_evaluated = Some(ts(NOW - 3 * 3600));
        let verdict = assess(&[old, bad], fresh());
        assert_eq!(verdict.state, State::Critical);
        assert!(
            verdict
                .summary
                .ends_with("; status not refreshed for 3h: a"),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn unknown_datasets_and_lost_backups_are_critical() {
        for reason in [
            ViolationReason::HostNotReporting,
            ViolationReason::ChainBroken,
            ViolationReason::BackupMissing,
            ViolationReason::Corrupt,
        ] {
            let verdict = assess(
                &[policy("a", Readiness::Ready, vec![v("h", "d", reason)])],
                fresh(),
            );
            assert_eq!(verdict.state, State::Critical, "{reason:?}");
        }
        assert_eq!(short_age(SignedDuration::from_secs(119)), "119s");
        assert_eq!(short_age(SignedDuration::from_secs(7199)), "119m");
        assert_eq!(short_age(SignedDuration::from_secs(7200)), "2h");
        assert_eq!(short_age(SignedDuration::from_secs(3 * 86_400 + 5)), "3d");
    }
}
