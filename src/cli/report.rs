//! The data the commands show, shaped from what the cluster and the store say. Pure: every
//! function here takes fetched objects and returns rows; `render_*` turn rows into tables.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use super::filter::Filter;
use super::monitor::{PolicyHealth, Readiness};
use super::table::{self, Table};
use crate::api::condition::{COMPLIANT, READY};
use crate::api::{BackupJob, BackupPolicy, BackupType, JobPhase, ZfsHost};
use crate::policy::{self, PolicyRules};
use crate::selection::{self, DatasetMatcher, HostLabels, PolicyMatcher};
use crate::store::{self, Layout};

/// Where a row's knowledge comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The backup host's catalogue (the store's manifests): the truth.
    Catalogue,
    /// BackupJob history (a fallback: jobs have their own retention and may be gone).
    Jobs,
}

/// One stored backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRow {
    pub namespace: String,
    pub policy: String,
    pub host: String,
    pub dataset: String,
    /// The store's id (`<ts>.full`, `<ts>.incremental.<base-ts>`), or the job name.
    pub id: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    pub created: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    pub archived: bool,
    pub source: Source,
    /// The stream file and its manifest on the backup host (`--files`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

fn kind_name(t: BackupType) -> &'static str {
    match t {
        BackupType::Full => "full",
        BackupType::Incremental => "incremental",
    }
}

/// The ZfsHost names a policy covers, each once: its names, or the hosts its selector matches
/// (the controller's rule, [`selection::covered_host_names`]).
pub fn selected_hosts(policy: &BackupPolicy, hosts: &[ZfsHost]) -> Vec<String> {
    let names: Vec<String> = hosts.iter().map(ResourceExt::name_any).collect();
    selection::covered_host_names(
        &policy.spec.hosts,
        hosts.iter().zip(&names).map(|(h, name)| HostLabels {
            name,
            labels: h.labels(),
        }),
    )
}

/// The datasets a policy covers now, as the controller sees them: on its hosts' status,
/// matching its patterns and classes and not excluded by the dataset's own property. Sorted.
pub fn covered_datasets(
    policy: &BackupPolicy,
    hosts: &[ZfsHost],
) -> Result<Vec<(String, String)>, crate::selection::PatternError> {
    let matcher = PolicyMatcher::new(&policy.spec.datasets)?;
    let selected = selected_hosts(policy, hosts);
    let mut out = Vec::new();
    for h in hosts.iter().filter(|h| selected.contains(&h.name_any())) {
        for d in h.status.iter().flat_map(|s| &s.datasets) {
            if !d.excluded && matcher.matches(&d.name, d.class.as_deref()) {
                out.push((h.name_any(), d.name.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The backups of `policy` in the catalogue: its hosts, datasets matching its patterns (also
/// those no longer on the host), and the filter. With `layout`, each row names its files.
pub fn rows_from_catalogue(
    policy: &BackupPolicy,
    hosts: &[String],
    cat: &store::Catalogue,
    filter: &Filter,
    layout: Option<&Layout>,
) -> Result<Vec<BackupRow>, crate::selection::PatternError> {
    let matcher = DatasetMatcher::new(&policy.spec.datasets)?;
    let mut rows: Vec<BackupRow> = cat
        .backups
        .iter()
        .filter(|b| hosts.contains(&b.manifest.host) && matcher.matches(&b.manifest.dataset))
        .filter(|b| filter.matches(&b.manifest.host, &b.manifest.dataset))
        .map(|b| {
            let m = &b.manifest;
            let files = match (layout, m.stream_id()) {
                (Some(l), Ok(sid)) => [
                    l.stream_path(&m.host, &m.dataset, &sid, b.archived),
                    l.manifest_path(&m.host, &m.dataset, &sid, b.archived),
                ]
                .into_iter()
                .filter_map(Result::ok)
                .map(|p| p.display().to_string())
                .collect(),
                _ => Vec::new(),
            };
            BackupRow {
                namespace: policy.namespace().unwrap_or_default(),
                policy: policy.name_any(),
                host: m.host.clone(),
                dataset: m.dataset.clone(),
                id: m.id.clone(),
                backup_type: m.backup_type,
                created: m.created,
                bytes: Some(m.bytes),
                archived: b.archived,
                source: Source::Catalogue,
                files,
            }
        })
        .collect();
    sort_rows(&mut rows);
    Ok(rows)
}

/// The succeeded BackupJobs of `policy`, as backups (the fallback when the catalogue cannot be
/// read).
pub fn rows_from_jobs(
    policy: &BackupPolicy,
    jobs: &[BackupJob],
    filter: &Filter,
) -> Vec<BackupRow> {
    let mut rows: Vec<BackupRow> = jobs
        .iter()
        .filter(|j| j.spec.policy.as_str() == policy.name_any())
        .filter(|j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == JobPhase::Succeeded)
        })
        .filter(|j| filter.matches(j.spec.host.as_str(), j.spec.dataset.as_str()))
        .filter_map(|j| {
            let st = j.status.as_ref()?;
            let created = st
                .finished_at
                .as_ref()
                .or(st.started_at.as_ref())
                .map(|t| t.0)
                .or_else(|| j.creation_timestamp().map(|t| t.0))?;
            Some(BackupRow {
                namespace: j.namespace().unwrap_or_default(),
                policy: policy.name_any(),
                host: j.spec.host.0.clone(),
                dataset: j.spec.dataset.0.clone(),
                id: st.backup_id.clone().unwrap_or_else(|| j.name_any()),
                backup_type: j.spec.backup_type,
                created,
                bytes: st.bytes,
                archived: false,
                source: Source::Jobs,
                files: Vec::new(),
            })
        })
        .collect();
    sort_rows(&mut rows);
    rows
}

fn sort_rows(rows: &mut [BackupRow]) {
    rows.sort_by(|a, b| {
        (
            &a.namespace,
            &a.policy,
            &a.host,
            &a.dataset,
            a.created,
            &a.id,
        )
            .cmp(&(
                &b.namespace,
                &b.policy,
                &b.host,
                &b.dataset,
                b.created,
                &b.id,
            ))
    });
}

/// The `list` table.
pub fn render_list(rows: &[BackupRow], all_namespaces: bool) -> String {
    let mut headers = vec![
        "POLICY", "HOST", "DATASET", "BACKUP", "TYPE", "CREATED", "SIZE", "WHERE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut t = Table::new(headers);
    for r in rows {
        let mut cells = vec![
            r.policy.clone(),
            r.host.clone(),
            r.dataset.clone(),
            r.id.clone(),
            kind_name(r.backup_type).into(),
            table::time(r.created),
            r.bytes.map(table::bytes).unwrap_or_else(|| "-".into()),
            where_(r).into(),
        ];
        if all_namespaces {
            cells.insert(0, r.namespace.clone());
        }
        t.row(cells);
    }
    t.render()
}

fn where_(r: &BackupRow) -> &'static str {
    match (r.source, r.archived) {
        (Source::Jobs, _) => "job history",
        (Source::Catalogue, true) => "archive",
        (Source::Catalogue, false) => "store",
    }
}

/// One dataset in `summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSummary {
    pub namespace: String,
    pub policy: String,
    pub host: String,
    pub dataset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_full: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_incremental: Option<Timestamp>,
    pub backup_count: usize,
    pub bytes: u64,
    pub source: Source,
    /// Each backup, oldest first (`--detail`, `--files`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupRow>,
}

/// Groups one policy's backups by host and dataset; `covered` datasets without any backup are
/// listed too (with `never`). With `detail`, each summary carries its backups.
pub fn summarize(
    policy: &BackupPolicy,
    source: Source,
    rows: Vec<BackupRow>,
    covered: &[(String, String)],
    filter: &Filter,
    detail: bool,
) -> Vec<DatasetSummary> {
    let mut groups: BTreeMap<(String, String), Vec<BackupRow>> = BTreeMap::new();
    for (h, d) in covered {
        if filter.matches(h, d) {
            groups.entry((h.clone(), d.clone())).or_default();
        }
    }
    for r in rows {
        groups
            .entry((r.host.clone(), r.dataset.clone()))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((host, dataset), backups)| {
            let newest = |t: BackupType| {
                backups
                    .iter()
                    .filter(|b| b.backup_type == t)
                    .map(|b| b.created)
                    .max()
            };
            DatasetSummary {
                namespace: policy.namespace().unwrap_or_default(),
                policy: policy.name_any(),
                last_full: newest(BackupType::Full),
                last_incremental: newest(BackupType::Incremental),
                backup_count: backups.len(),
                bytes: backups.iter().filter_map(|b| b.bytes).sum(),
                source,
                backups: if detail { backups } else { Vec::new() },
                host,
                dataset,
            }
        })
        .collect()
}

/// The `summary` output: one table, or with details a block per dataset.
pub fn render_summary(
    summaries: &[DatasetSummary],
    now: Timestamp,
    all_namespaces: bool,
    detail: bool,
    files: bool,
) -> String {
    let mut headers = vec![
        "POLICY",
        "HOST",
        "DATASET",
        "LAST FULL",
        "LAST INCREMENTAL",
        "BACKUPS",
        "SIZE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let cells = |s: &DatasetSummary| {
        let mut cells = vec![
            s.policy.clone(),
            s.host.clone(),
            s.dataset.clone(),
            table::ago(now, s.last_full),
            table::ago(now, s.last_incremental),
            format!(
                "{}{}",
                s.backup_count,
                if s.source == Source::Jobs {
                    " (jobs)"
                } else {
                    ""
                }
            ),
            table::bytes(s.bytes),
        ];
        if all_namespaces {
            cells.insert(0, s.namespace.clone());
        }
        cells
    };
    if !detail {
        let mut t = Table::new(headers);
        for s in summaries {
            t.row(cells(s));
        }
        return t.render();
    }
    let mut out = String::new();
    for (i, s) in summaries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut head = Table::new(headers.clone());
        head.row(cells(s));
        out.push_str(&head.render());
        if s.backups.is_empty() {
            out.push_str("    (no backups)\n");
            continue;
        }
        let mut sub = vec!["BACKUP", "TYPE", "CREATED", "SIZE", "WHERE"];
        if files {
            sub.push("FILES");
        }
        let mut t = Table::new(sub);
        for b in &s.backups {
            let mut row = vec![
                b.id.clone(),
                kind_name(b.backup_type).into(),
                table::time(b.created),
                b.bytes.map(table::bytes).unwrap_or_else(|| "-".into()),
                where_(b).into(),
            ];
            if files {
                row.push(if b.files.is_empty() {
                    "-".into()
                } else {
                    b.files.join(" ")
                });
            }
            t.row(row);
        }
        out.push_str(&t.render_indented("    "));
    }
    out
}

/// What retention does to a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RetentionAction {
    Delete,
    Archive,
}

/// One backup that retention deletes or moves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRow {
    pub host: String,
    pub dataset: String,
    pub id: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    pub created: Timestamp,
    pub bytes: u64,
    pub archived: bool,
    pub action: RetentionAction,
}

/// What [`crate::policy::plan_retention`] decides now for each covered dataset, as rows
/// (deletions and archive moves), and the datasets whose stored backups are inconsistent
/// (skipped, as the controller skips them).
pub fn retention_rows(
    rules: &PolicyRules,
    cat: &store::Catalogue,
    datasets: &[(String, String)],
    now: Timestamp,
) -> (Vec<RetentionRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (host, dataset) in datasets {
        let stored: Vec<&store::StoredBackup> = cat.of(host, dataset).collect();
        let pc = match policy::DatasetBackups::from_store(stored.iter().copied()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{host}:{dataset}: {e} (skipped)"));
                continue;
            }
        };
        let plan = policy::plan_retention(rules, &pc, now);
        for (ids, action) in [
            (&plan.delete, RetentionAction::Delete),
            (&plan.archive, RetentionAction::Archive),
        ] {
            for id in ids {
                let Some(r) = pc.get(id) else { continue };
                rows.push(RetentionRow {
                    host: host.clone(),
                    dataset: dataset.clone(),
                    id: id.clone(),
                    backup_type: r.kind,
                    created: r.created,
                    bytes: r.bytes,
                    archived: r.archived,
                    action,
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (&a.host, &a.dataset, a.created, &a.id).cmp(&(&b.host, &b.dataset, b.created, &b.id))
    });
    (rows, problems)
}

/// The table of retention rows of one action.
pub fn render_retention(rows: &[&RetentionRow], now: Timestamp) -> String {
    let mut t = Table::new([
        "HOST", "DATASET", "BACKUP", "TYPE", "CREATED", "AGE", "SIZE", "WHERE",
    ]);
    for r in rows {
        t.row([
            r.host.clone(),
            r.dataset.clone(),
            r.id.clone(),
            kind_name(r.backup_type).into(),
            table::time(r.created),
            table::age(now, r.created),
            table::bytes(r.bytes),
            if r.archived { "archive" } else { "store" }.into(),
        ]);
    }
    t.render()
}

/// A dataset with stored backups that its host no longer reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disappeared {
    pub namespace: String,
    pub policy: String,
    pub host: String,
    pub dataset: String,
    pub backup_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Timestamp>,
    /// Why it counts as gone.
    pub reason: String,
}

/// The datasets of `policy` in the catalogue that are not in their host's status (a host whose
/// agent never reported is skipped: nothing is known; a host that no longer exists has lost
/// every dataset).
pub fn disappeared(
    policy: &BackupPolicy,
    selected: &[String],
    hosts: &[ZfsHost],
    cat: &store::Catalogue,
    filter: &Filter,
) -> Result<Vec<Disappeared>, crate::selection::PatternError> {
    let matcher = DatasetMatcher::new(&policy.spec.datasets)?;
    let mut stored: BTreeMap<(String, String), (usize, Timestamp)> = BTreeMap::new();
    for b in &cat.backups {
        let m = &b.manifest;
        if selected.contains(&m.host)
            && matcher.matches(&m.dataset)
            && filter.matches(&m.host, &m.dataset)
        {
            let e = stored
                .entry((m.host.clone(), m.dataset.clone()))
                .or_insert((0, m.created));
            e.0 += 1;
            e.1 = e.1.max(m.created);
        }
    }
    let mut out = Vec::new();
    for ((host, dataset), (count, last)) in stored {
        let reason = match hosts.iter().find(|h| h.name_any() == host) {
            None => "the ZfsHost no longer exists".to_owned(),
            Some(h) => match &h.status {
                None => continue,
                Some(s) => {
                    let present: BTreeSet<&str> =
                        s.datasets.iter().map(|d| d.name.as_str()).collect();
                    if present.contains(dataset.as_str()) {
                        continue;
                    }
                    "not reported by the host".to_owned()
                }
            },
        };
        out.push(Disappeared {
            namespace: policy.namespace().unwrap_or_default(),
            policy: policy.name_any(),
            host,
            dataset,
            backup_count: count,
            last_backup: Some(last),
            reason,
        });
    }
    Ok(out)
}

/// What `violators` needs from a policy's status, with the filter applied to its violations.
pub fn policy_health(policy: &BackupPolicy, display: String, filter: &Filter) -> PolicyHealth {
    let status = policy.status.clone().unwrap_or_default();
    let readiness = match status.conditions.iter().find(|c| c.type_ == READY) {
        None => Readiness::NoStatus,
        Some(c) if c.status == "True" => Readiness::Ready,
        Some(c) => Readiness::NotReady {
            reason: c.reason.clone(),
            message: c.message.clone(),
        },
    };
    let violations: Vec<_> = status
        .violations
        .into_iter()
        .filter(|v| filter.matches_violation(&v.host, &v.dataset))
        .collect();
    let violators = if filter.is_everything() {
        u32::try_from(status.violators.max(0)).unwrap_or(0)
    } else {
        violations
            .iter()
            .map(|v| (&v.host, &v.dataset))
            .collect::<BTreeSet<_>>()
            .len() as u32
    };
    // Only for the whole policy: a host/dataset filter asks about particular datasets.
    let protects_nothing = status
        .conditions
        .iter()
        .find(|c| c.type_ == COMPLIANT && c.status == "False")
        .filter(|c| {
            filter.is_everything()
                && matches!(c.reason.as_str(), "NoHostsSelected" | "NoDatasetsSelected")
        })
        .map(|c| c.reason.clone());
    PolicyHealth {
        policy: display,
        readiness,
        violators,
        violations,
        last_evaluated: status.last_evaluated.map(|t| t.0),
        protects_nothing,
    }
}

/// The tables after the summary line of `violators`.
pub fn render_violators(health: &[PolicyHealth], gone: &[Disappeared], now: Timestamp) -> String {
    let mut out = String::new();
    let mut t = Table::new(["POLICY", "HOST", "DATASET", "REASON", "SINCE", "MESSAGE"]);
    for p in health {
        for v in &p.violations {
            t.row([
                p.policy.clone(),
                v.host.clone(),
                if v.dataset.is_empty() {
                    "(all)".to_owned()
                } else {
                    v.dataset.clone()
                },
                format!("{:?}", v.reason),
                v.since
                    .as_ref()
                    .map(|s| table::ago(now, Some(s.0)))
                    .unwrap_or_else(|| "-".into()),
                v.message.clone().unwrap_or_default(),
            ]);
        }
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }
    let mut nr = Table::new(["POLICY", "READY", "REASON", "MESSAGE"]);
    for p in health {
        match &p.readiness {
            Readiness::Ready => {}
            Readiness::NotReady { reason, message } => {
                nr.row([p.policy.as_str(), "False", reason, message]);
            }
            Readiness::NoStatus => {
                nr.row([
                    p.policy.as_str(),
                    "-",
                    "NoStatus",
                    "the controller has not reported on this policy yet",
                ]);
            }
        }
    }
    if !nr.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&nr.render());
    }
    if !gone.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Datasets with backups that their host no longer has:\n");
        let mut g = Table::new([
            "POLICY",
            "HOST",
            "DATASET",
            "BACKUPS",
            "LAST BACKUP",
            "REASON",
        ]);
        for d in gone {
            g.row([
                d.policy.clone(),
                d.host.clone(),
                d.dataset.clone(),
                d.backup_count.to_string(),
                table::ago(now, d.last_backup),
                d.reason.clone(),
            ]);
        }
        out.push_str(&g.render());
    }
    out
}

#[cfg(test)]
mod selection_tests;
#[cfg(test)]
mod tests;
