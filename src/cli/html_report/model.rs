//! The compliance report's data, built from the API objects and the store's catalogue rows.
//! Pure: no I/O, no clock (the time is an input).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::backup_policy::DrillResult;
use crate::api::{BackupPolicy, BackupType};
use crate::cli::report::BackupRow;

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub generated: Timestamp,
    pub policies: Vec<PolicyReport>,
}

/// One BackupPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReport {
    pub namespace: String,
    pub name: String,
    /// The recovery point objective (`objectives.rpo`), if any.
    pub rpo: Option<SignedDuration>,
    /// The recovery time objective (`objectives.rto`), if any.
    pub rto: Option<SignedDuration>,
    /// Why the catalogue could not be read, if it could not (the rows then come from jobs).
    pub store_note: Option<String>,
    pub datasets: Vec<DatasetReport>,
}

impl PolicyReport {
    pub fn compliant(&self) -> bool {
        self.datasets.iter().all(DatasetReport::compliant)
    }
}

/// The last restore drill of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSummary {
    pub started: Timestamp,
    pub result: DrillResult,
    pub message: Option<String>,
}

/// One covered dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetReport {
    pub host: String,
    pub dataset: String,
    /// Its violations now: (reason, message).
    pub violations: Vec<(String, String)>,
    /// Stored backups (live, not archived) and of those the fulls (each starts a chain).
    pub backups: usize,
    pub chains: usize,
    pub archived: usize,
    /// Bytes of its stored backups (live and archived).
    pub bytes: u64,
    /// When the newest backup was taken, and its age now (RPO now).
    pub newest: Option<Timestamp>,
    pub rpo_now: Option<SignedDuration>,
    /// The last successful drill's measured recovery time (RTO).
    pub rto: Option<SignedDuration>,
    pub last_verified: Option<Timestamp>,
    pub quarantined: usize,
    pub last_drill: Option<DrillSummary>,
    /// The age of the newest backup over time: (moment, age then), in time order. It rises
    /// between backups and falls to zero at each one (a saw-tooth); the last point is now.
    pub age: Vec<(Timestamp, SignedDuration)>,
}

impl DatasetReport {
    pub fn compliant(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The objective `d` as a duration, if it parses.
fn objective(d: Option<&crate::api::common::DurationString>) -> Option<SignedDuration> {
    SignedDuration::try_from(d?.duration().ok()?).ok()
}

/// The saw-tooth of the newest backup's age, from the first backup to `now`.
pub fn age_series(mut taken: Vec<Timestamp>, now: Timestamp) -> Vec<(Timestamp, SignedDuration)> {
    taken.sort();
    taken.dedup();
    let mut out = Vec::new();
    let mut previous: Option<Timestamp> = None;
    for t in taken.into_iter().filter(|t| *t <= now) {
        if let Some(p) = previous {
            out.push((t, t.duration_since(p)));
        }
        out.push((t, SignedDuration::ZERO));
        previous = Some(t);
    }
    if let Some(p) = previous {
        out.push((now, now.duration_since(p)));
    }
    out
}

/// The report of `policies`, each with its backups (`rows`, keyed by `namespace/name`: the
/// catalogue's or, with a note, the job history's) at `now`.
pub fn build(
    policies: &[BackupPolicy],
    rows: &BTreeMap<String, (Vec<BackupRow>, Option<String>)>,
    now: Timestamp,
) -> Report {
    let mut out = Vec::new();
    for p in policies {
        let namespace = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let status = p.status.clone().unwrap_or_default();
        let (backups, store_note) = rows
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .unwrap_or_default();
        // Every dataset the status or the store knows of.
        let mut keys: BTreeMap<(String, String), ()> = BTreeMap::new();
        for r in &status.recovery {
            keys.insert((r.host.clone(), r.dataset.clone()), ());
        }
        for v in &status.verification {
            keys.insert((v.host.clone(), v.dataset.clone()), ());
        }
        for v in &status.violations {
            keys.insert((v.host.clone(), v.dataset.clone()), ());
        }
        for b in &backups {
            keys.insert((b.host.clone(), b.dataset.clone()), ());
        }
        let datasets = keys
            .into_keys()
            .map(|(host, dataset)| {
                let mine: Vec<&BackupRow> = backups
                    .iter()
                    .filter(|b| b.host == host && b.dataset == dataset)
                    .collect();
                let live: Vec<&&BackupRow> = mine.iter().filter(|b| !b.archived).collect();
                let newest = live.iter().map(|b| b.created).max();
                let recovery = status
                    .recovery
                    .iter()
                    .find(|r| r.host == host && r.dataset == dataset);
                let verification = status
                    .verification
                    .iter()
                    .find(|v| v.host == host && v.dataset == dataset);
                DatasetReport {
                    violations: status
                        .violations
                        .iter()
                        .filter(|v| v.host == host && v.dataset == dataset)
                        .map(|v| {
                            (
                                format!("{:?}", v.reason),
                                v.message.clone().unwrap_or_default(),
                            )
                        })
                        .collect(),
                    backups: live.len(),
                    chains: live
                        .iter()
                        .filter(|b| b.backup_type == BackupType::Full)
                        .count(),
                    archived: mine.len() - live.len(),
                    bytes: mine.iter().filter_map(|b| b.bytes).sum(),
                    newest,
                    rpo_now: newest.map(|t| now.duration_since(t)),
                    rto: recovery
                        .and_then(|r| r.rto_seconds)
                        .map(SignedDuration::from_secs),
                    last_verified: verification.and_then(|v| v.last_verified.as_ref().map(|t| t.0)),
                    quarantined: verification.map_or(0, |v| v.quarantined.len()),
                    last_drill: recovery.and_then(|r| r.last_drill.as_ref()).map(|d| {
                        DrillSummary {
                            started: d.started_at.0,
                            result: d.result,
                            message: d.message.clone(),
                        }
                    }),
                    age: age_series(live.iter().map(|b| b.created).collect(), now),
                    host,
                    dataset,
                }
            })
            .collect();
        out.push(PolicyReport {
            rpo: objective(p.spec.objectives.as_ref().and_then(|o| o.rpo.as_ref())),
            rto: objective(p.spec.objectives.as_ref().and_then(|o| o.rto.as_ref())),
            namespace,
            name,
            store_note,
            datasets,
        });
    }
    Report {
        generated: now,
        policies: out,
    }
}

/// One dataset's numbers, flat (`report -o json|yaml`, and the table).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetNumbers {
    pub namespace: String,
    pub policy: String,
    pub host: String,
    pub dataset: String,
    pub compliant: bool,
    pub violations: Vec<String>,
    pub backups: usize,
    pub chains: usize,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_now_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_objective_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_objective_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillResult>,
}

/// The report's numbers, one row per dataset.
pub fn numbers(r: &Report) -> Vec<DatasetNumbers> {
    r.policies
        .iter()
        .flat_map(|p| {
            p.datasets.iter().map(move |d| DatasetNumbers {
                namespace: p.namespace.clone(),
                policy: p.name.clone(),
                host: d.host.clone(),
                dataset: d.dataset.clone(),
                compliant: d.compliant(),
                violations: d.violations.iter().map(|(r, _)| r.clone()).collect(),
                backups: d.backups,
                chains: d.chains,
                bytes: d.bytes,
                rpo_now_seconds: d.rpo_now.map(|x| x.as_secs()),
                rpo_objective_seconds: p.rpo.map(|x| x.as_secs()),
                rto_seconds: d.rto.map(|x| x.as_secs()),
                rto_objective_seconds: p.rto.map(|x| x.as_secs()),
                last_verified: d.last_verified,
                last_drill: d.last_drill.as_ref().map(|x| x.result),
            })
        })
        .collect()
}

/// The numbers as a text table.
pub fn table(rows: &[DatasetNumbers]) -> String {
    if rows.is_empty() {
        return "No datasets found.\n".into();
    }
    let secs = |s: Option<i64>| s.map_or("-".to_owned(), |s| format!("{s}s"));
    let mut out = String::from(
        "POLICY\tHOST\tDATASET\tCOMPLIANT\tBACKUPS\tCHAINS\tBYTES\tRPO NOW\tRTO\tVIOLATIONS\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{}/{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.namespace,
            r.policy,
            r.host,
            r.dataset,
            if r.compliant { "yes" } else { "no" },
            r.backups,
            r.chains,
            r.bytes,
            secs(r.rpo_now_seconds),
            secs(r.rto_seconds),
            r.violations.join(","),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_policy::{DatasetRecovery, DrillRecord, Violation, ViolationReason};
    use crate::cli::report::Source;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("ts")
    }

    #[test]
    fn the_age_is_a_saw_tooth_ending_now() {
        let h = SignedDuration::from_hours;
        assert_eq!(age_series(vec![], ts(0)), vec![]);
        assert_eq!(
            age_series(vec![ts(7200), ts(0), ts(0)], ts(10_800)),
            vec![
                (ts(0), h(0)),
                (ts(7200), h(2)),
                (ts(7200), h(0)),
                (ts(10_800), h(1)),
            ]
        );
        // A backup dated after now (clock skew) is left out.
        assert_eq!(
            age_series(vec![ts(0), ts(99)], ts(10)),
            vec![(ts(0), h(0)), (ts(10), SignedDuration::from_secs(10))]
        );
    }

    fn row(dataset: &str, t: BackupType, created: i64, bytes: u64, archived: bool) -> BackupRow {
        BackupRow {
            namespace: "ops".into(),
            policy: "p".into(),
            host: "h".into(),
            dataset: dataset.into(),
            id: format!("{created}"),
            backup_type: t,
            created: ts(created),
            bytes: Some(bytes),
            archived,
            source: Source::Catalogue,
            files: Vec::new(),
        }
    }

    #[test]
    fn the_model_gathers_each_datasets_numbers_from_status_and_store() {
        let mut p: BackupPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "p", "namespace": "ops"},
            "spec": {
                "hosts": {"names": ["h"]}, "datasets": {"include": ["tank/a"]},
                "target": {"host": "b", "path": "/srv/zb"},
                "full": {"every": "7d", "keep": "28d"},
                "incremental": {"every": "1d", "keep": "2w"},
                "objectives": {"rpo": "26h", "rto": "1h"},
            },
        }))
        .expect("policy");
        p.status = Some(crate::api::BackupPolicyStatus {
            violations: vec![Violation {
                host: "h".into(),
                dataset: "tank/b".into(),
                reason: ViolationReason::DrillFailed,
                since: None,
                message: Some("checksum mismatch".into()),
            }],
            recovery: vec![DatasetRecovery {
                host: "h".into(),
                dataset: "tank/a".into(),
                newest_restorable: None,
                rto_seconds: Some(42),
                last_good_drill: None,
                last_drill: Some(DrillRecord {
                    restore: "drill-p-1".into(),
                    backup: String::new(),
                    result: DrillResult::Succeeded,
                    started_at: Time(ts(50)),
                    finished_at: None,
                    rto_seconds: Some(42),
                    bytes: None,
                    message: None,
                }),
                next_drill: None,
            }],
            ..Default::default()
        });
        let rows = [(
            "ops/p".to_owned(),
            (
                vec![
                    row("tank/a", BackupType::Full, 0, 1000, false),
                    row("tank/a", BackupType::Incremental, 3600, 10, false),
                    row("tank/a", BackupType::Full, -900_000, 900, true),
                    row("tank/b", BackupType::Full, 100, 5, false),
                ],
                None,
            ),
        )]
        .into_iter()
        .collect();
        let r = build(std::slice::from_ref(&p), &rows, ts(7200));
        let pol = &r.policies[0];
        assert_eq!(pol.rpo, Some(SignedDuration::from_hours(26)));
        assert_eq!(pol.rto, Some(SignedDuration::from_hours(1)));
        assert!(!pol.compliant());
        let a = &pol.datasets[0];
        assert_eq!((a.dataset.as_str(), a.compliant()), ("tank/a", true));
        assert_eq!((a.backups, a.chains, a.archived, a.bytes), (2, 1, 1, 1910));
        assert_eq!(a.newest, Some(ts(3600)));
        assert_eq!(a.rpo_now, Some(SignedDuration::from_hours(1)));
        assert_eq!(a.rto, Some(SignedDuration::from_secs(42)));
        assert_eq!(
            a.last_drill.as_ref().map(|d| d.result),
            Some(DrillResult::Succeeded)
        );
        assert_eq!(a.age.len(), 4);
        let b = &pol.datasets[1];
        assert_eq!(b.dataset, "tank/b");
        assert_eq!(
            b.violations,
            vec![("DrillFailed".to_owned(), "checksum mismatch".to_owned())]
        );
    }
}
