//! `kubectl zetaback restore -i`: walks a person through a restore, as Zetaback's interactive
//! restore did, then runs it exactly as the non-interactive command does
//! ([`super::restore::create_and_follow`]).
//!
//! The questions, in order: the source host (hosts with backups in the catalogue), its
//! datasets (several may be marked: a bulk restore), the point in time (each dataset's
//! newest backup, or one of the listed backups with its type, time, size and chain), the
//! destination host (default: the source host), the destination dataset or base (default
//! `<first pool>/restore/<dataset>` or `<first pool>/restore`), whether to replace
//! destinations that exist, and after a summary of what goes where, a confirmation. Lists
//! are filtered by typing and walked with the arrow keys (inquire). Esc or Ctrl-C cancels
//! at any question; nothing is created before the confirmation.
//!
//! Everything but the prompts is pure: the [`Inventory`] and the choice lists and labels,
//! the [`Plan`] (spec and summary) the answers lead to, and [`choose`], which asks through
//! a [`Prompter`] so a test can answer with a script.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use kube::ResourceExt;

use super::cluster::{Cluster, Scope};
use super::error::CliError;
use super::restore::{RestoreArgs, build_spec, create_and_follow, default_name_of};
use super::table::{bytes, time};
use super::{Connect, GlobalArgs, Io};
use crate::api::{RestoreSpec, ZfsHost};
use crate::policy::{BackupKind, DatasetBackups, RestoreTarget};
use crate::store::StoredBackup;

/// Asks the questions. The terminal implementation is [`Terminal`]; tests script answers.
pub trait Prompter {
    /// One of `options` (its index), the cursor starting at `start`.
    fn select(
        &mut self,
        message: &str,
        options: &[String],
        help: &str,
        start: usize,
    ) -> Result<usize, CliError>;
    /// At least one of `options` (their indexes, ascending).
    fn multi_select(
        &mut self,
        message: &str,
        options: &[String],
        help: &str,
    ) -> Result<Vec<usize>, CliError>;
    /// A line of text, starting as `initial`, accepted only when `validate` says so.
    fn text(
        &mut self,
        message: &str,
        initial: &str,
        help: &str,
        validate: fn(&str) -> Result<(), String>,
    ) -> Result<String, CliError>;
    /// Yes or no.
    fn confirm(&mut self, message: &str, default: bool) -> Result<bool, CliError>;
}

/// The stored backups the questions are about: one copy per (host, dataset, id), the live
/// one preferred over an archived one, sorted by host, dataset, time.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    backups: Vec<StoredBackup>,
}

impl Inventory {
    pub fn new(backups: impl IntoIterator<Item = StoredBackup>) -> Self {
        let mut unique: BTreeMap<(String, String, String), StoredBackup> = BTreeMap::new();
        for b in backups {
            let key = (
                b.manifest.host.clone(),
                b.manifest.dataset.clone(),
                b.manifest.id.clone(),
            );
            match unique.get(&key) {
                Some(kept) if !kept.archived => {}
                _ => {
                    unique.insert(key, b);
                }
            }
        }
        let mut backups: Vec<StoredBackup> = unique.into_values().collect();
        backups.sort_by(|a, b| {
            (&a.manifest.host, &a.manifest.dataset, a.manifest.created).cmp(&(
                &b.manifest.host,
                &b.manifest.dataset,
                b.manifest.created,
            ))
        });
        Self { backups }
    }

    pub fn is_empty(&self) -> bool {
        self.backups.is_empty()
    }

    fn of_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a StoredBackup> + 'a {
        self.backups.iter().filter(move |b| b.manifest.host == host)
    }
}

/// A source host with backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChoice {
    pub host: String,
    pub datasets: usize,
    pub backups: usize,
    pub bytes: u64,
    pub newest: Timestamp,
}

/// The hosts that have backups, sorted by name (pure).
pub fn host_choices(inv: &Inventory) -> Vec<HostChoice> {
    let mut by_host: BTreeMap<&str, Vec<&StoredBackup>> = BTreeMap::new();
    for b in &inv.backups {
        by_host.entry(&b.manifest.host).or_default().push(b);
    }
    by_host
        .into_iter()
        .map(|(host, bs)| HostChoice {
            host: host.to_owned(),
            datasets: bs
                .iter()
                .map(|b| &b.manifest.dataset)
                .collect::<BTreeSet<_>>()
                .len(),
            backups: bs.len(),
            bytes: bs.iter().map(|b| b.manifest.bytes).sum(),
            newest: bs
                .iter()
                .map(|b| b.manifest.created)
                .max()
                .unwrap_or_default(),
        })
        .collect()
}

fn pad(s: &str, width: usize) -> String {
    format!("{s:<width$}")
}

/// One label per host, aligned (pure).
pub fn host_labels(hosts: &[HostChoice]) -> Vec<String> {
    let w = hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
    hosts
        .iter()
        .map(|h| {
            format!(
                "{}  {} dataset(s), {} backup(s), {}, newest {}",
                pad(&h.host, w),
                h.datasets,
                h.backups,
                bytes(h.bytes),
                time(h.newest)
            )
        })
        .collect()
}

/// One stored backup as the questions show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLine {
    pub id: String,
    pub kind: BackupKind,
    pub created: Timestamp,
    pub bytes: u64,
    pub archived: bool,
    /// The chain that restores it (ids, full first), or why it cannot be restored.
    pub chain: Result<Vec<String>, String>,
    /// Whether any piece of that chain is in the archive area.
    pub chain_archived: bool,
    /// Stored bytes of the whole chain.
    pub chain_bytes: u64,
}

/// A dataset of the chosen host with its backups, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetChoice {
    pub dataset: String,
    pub backups: Vec<BackupLine>,
}

impl DatasetChoice {
    /// The backup restored for a point in time (`None`: the newest).
    pub fn at(&self, at: Option<Timestamp>) -> Option<&BackupLine> {
        match at {
            None => self.backups.last(),
            Some(t) => self.backups.iter().rev().find(|b| b.created <= t),
        }
    }
}

fn kind_word(k: BackupKind) -> &'static str {
    match k {
        BackupKind::Full => "full",
        BackupKind::Incremental => "incremental",
    }
}

/// The datasets of `host` with their backups and each backup's chain (pure).
pub fn dataset_choices(inv: &Inventory, host: &str) -> Vec<DatasetChoice> {
    let mut by_dataset: BTreeMap<&str, Vec<&StoredBackup>> = BTreeMap::new();
    for b in inv.of_host(host) {
        by_dataset.entry(&b.manifest.dataset).or_default().push(b);
    }
    by_dataset
        .into_iter()
        .map(|(dataset, bs)| {
            let cat = DatasetBackups::from_store(bs.iter().copied());
            let backups = bs
                .iter()
                .map(|b| {
                    let m = &b.manifest;
                    let chain = match &cat {
                        Err(e) => Err(e.to_string()),
                        Ok(c) => c
                            .restore_chain(&RestoreTarget::Id(m.id.clone()))
                            .map(|rs| rs.into_iter().cloned().collect::<Vec<_>>())
                            .map_err(|e| e.to_string()),
                    };
                    BackupLine {
                        id: m.id.clone(),
                        kind: m.backup_type,
                        created: m.created,
                        bytes: m.bytes,
                        archived: b.archived,
                        chain_archived: chain.as_ref().is_ok_and(|c| c.iter().any(|r| r.archived)),
                        chain_bytes: chain
                            .as_ref()
                            .map(|c| c.iter().map(|r| r.bytes).sum())
                            .unwrap_or(0),
                        chain: chain.map(|c| c.into_iter().map(|r| r.id).collect()),
                    }
                })
                .collect();
            DatasetChoice {
                dataset: dataset.to_owned(),
                backups,
            }
        })
        .collect()
}

/// One label per dataset: how many backups of each type, the newest, and what restoring
/// the newest applies (pure).
pub fn dataset_labels(datasets: &[DatasetChoice]) -> Vec<String> {
    let w = datasets.iter().map(|d| d.dataset.len()).max().unwrap_or(0);
    datasets
        .iter()
        .map(|d| {
            let fulls = d
                .backups
                .iter()
                .filter(|b| b.kind == BackupKind::Full)
                .count();
            let incs = d.backups.len() - fulls;
            let newest = match d.backups.last() {
                Some(b) => format!(
                    "newest {} {} ({}), {}",
                    kind_word(b.kind),
                    time(b.created),
                    bytes(b.bytes),
                    chain_words(b)
                ),
                None => "no backups".into(),
            };
            format!(
                "{}  {fulls} full + {incs} incremental; {newest}",
                pad(&d.dataset, w)
            )
        })
        .collect()
}

fn chain_words(b: &BackupLine) -> String {
    match &b.chain {
        Ok(c) => format!("chain of {} ({})", c.len(), bytes(b.chain_bytes)),
        Err(e) => format!("cannot be restored: {e}"),
    }
}

/// A backup as a point-in-time choice: time, type, size, chain (pure).
pub fn backup_label(b: &BackupLine) -> String {
    let chain = match &b.chain {
        Ok(c) => format!("chain: {}", c.join(" → ")),
        Err(e) => format!("CANNOT BE RESTORED: {e}"),
    };
    let archived = if b.archived { " [archive]" } else { "" };
    format!(
        "{}  {:<11}  {:>9}  {chain}{archived}",
        time(b.created),
        kind_word(b.kind),
        bytes(b.bytes)
    )
}

/// A point in time to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// Each dataset's newest backup.
    Newest,
    /// This backup (one dataset).
    Backup(String),
    /// The newest backup at or before this time (every dataset).
    At(Timestamp),
}

/// The points in time to offer for these datasets, with their labels: the newest first,
/// then one dataset's backups newest first, or for several datasets each distinct backup
/// time, newest first, saying what each dataset gets then (pure).
pub fn point_choices(datasets: &[&DatasetChoice]) -> Vec<(Point, String)> {
    let mut out = vec![(
        Point::Newest,
        if datasets.len() == 1 {
            format!(
                "newest backup ({})",
                datasets[0]
                    .backups
                    .last()
                    .map(|b| format!("{} {}", kind_word(b.kind), time(b.created)))
                    .unwrap_or_default()
            )
        } else {
            "newest backup of each dataset".into()
        },
    )];
    if let [one] = datasets {
        out.extend(
            one.backups
                .iter()
                .rev()
                .map(|b| (Point::Backup(b.id.clone()), backup_label(b))),
        );
        return out;
    }
    let times: BTreeSet<Timestamp> = datasets
        .iter()
        .flat_map(|d| d.backups.iter().map(|b| b.created))
        .collect();
    for t in times.into_iter().rev() {
        let each: Vec<String> = datasets
            .iter()
            .map(|d| match d.at(Some(t)) {
                Some(b) => format!("{} {}", d.dataset, kind_word(b.kind)),
                None => format!("{} nothing", d.dataset),
            })
            .collect();
        out.push((
            Point::At(t),
            format!("at {}  ({})", time(t), each.join(", ")),
        ));
    }
    out
}

/// The destination hosts (every ZfsHost, by name) with their pools; the source host first
/// when it exists, as the default (pure).
pub fn destination_hosts(hosts: &[ZfsHost], source: &str) -> (Vec<String>, Vec<String>, usize) {
    let mut names: Vec<String> = hosts.iter().map(|h| h.name_any()).collect();
    names.sort();
    let labels = names
        .iter()
        .map(|n| {
            let pools: Vec<String> = pools_of(hosts, n);
            let suffix = if n == source { ", the source host" } else { "" };
            format!("{n}  (pools: {}{suffix})", pools.join(", "))
        })
        .collect();
    let start = names.iter().position(|n| n == source).unwrap_or(0);
    (names, labels, start)
}

/// The pools a host's datasets live in (the datasets it reports are those its ZfsHost
/// selects), else the pools it reports: where a restore onto it can go.
fn pools_of(hosts: &[ZfsHost], name: &str) -> Vec<String> {
    let Some(st) = hosts
        .iter()
        .find(|h| h.name_any() == name)
        .and_then(|h| h.status.as_ref())
    else {
        return Vec::new();
    };
    let selected: BTreeSet<String> = st
        .datasets
        .iter()
        .filter(|d| !d.excluded)
        .filter_map(|d| d.name.split('/').next())
        .map(str::to_owned)
        .collect();
    if selected.is_empty() {
        st.pools.iter().map(|p| p.name.clone()).collect()
    } else {
        selected.into_iter().collect()
    }
}

/// The suggested destination: `<pool>/restore/<dataset>` for one dataset, `<pool>/restore`
/// as the base of several, with the first pool of the destination host's datasets (or the
/// source dataset's pool when the host reports none) (pure).
pub fn default_destination(pools: &[String], datasets: &[&str]) -> String {
    let pool = pools
        .first()
        .map(String::as_str)
        .or_else(|| datasets.first().and_then(|d| d.split('/').next()))
        .unwrap_or("tank");
    match datasets {
        [one] => format!("{pool}/restore/{one}"),
        _ => format!("{pool}/restore"),
    }
}

/// Where each dataset goes: (source, destination) (pure).
pub fn destinations(datasets: &[&str], dest: &str) -> Vec<(String, String)> {
    match datasets {
        [one] => vec![((*one).to_owned(), dest.to_owned())],
        many => many
            .iter()
            .map(|d| {
                (
                    (*d).to_owned(),
                    crate::controller::restore::bulk_destination(dest, d),
                )
            })
            .collect(),
    }
}

/// The destinations the destination host already has (pure).
pub fn existing(hosts: &[ZfsHost], dest_host: &str, targets: &[(String, String)]) -> Vec<String> {
    let have: BTreeSet<&str> = hosts
        .iter()
        .find(|h| h.name_any() == dest_host)
        .and_then(|h| h.status.as_ref())
        .map(|s| s.datasets.iter().map(|d| d.name.as_str()).collect())
        .unwrap_or_default();
    targets
        .iter()
        .filter(|(_, d)| have.contains(d.as_str()))
        .map(|(_, d)| d.clone())
        .collect()
}

/// What the person chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub host: String,
    pub datasets: Vec<String>,
    pub point: Point,
    pub dest_host: String,
    pub dest_dataset: String,
    pub force: bool,
}

/// A restore ready to be confirmed: its spec and the summary shown before the confirmation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub answers: Answers,
    pub spec: RestoreSpec,
    pub summary: String,
}

/// Turns answers into the spec and the summary of what is restored where (pure).
pub fn plan(answers: Answers, choices: &[DatasetChoice]) -> Result<Plan, CliError> {
    let chosen: Vec<&DatasetChoice> = answers
        .datasets
        .iter()
        .filter_map(|d| choices.iter().find(|c| &c.dataset == d))
        .collect();
    let at = match &answers.point {
        Point::At(t) => Some(*t),
        _ => None,
    };
    let line_of = |c: &DatasetChoice| -> Option<BackupLine> {
        match &answers.point {
            Point::Backup(id) => c.backups.iter().find(|b| &b.id == id).cloned(),
            Point::Newest => c.at(None).cloned(),
            Point::At(t) => c.at(Some(*t)).cloned(),
        }
    };
    let include_archive = chosen
        .iter()
        .filter_map(|c| line_of(c))
        .any(|b| b.chain_archived);
    let backup = match &answers.point {
        Point::Backup(id) => Some(id.as_str()),
        _ => None,
    };
    let spec = build_spec(
        &answers.host,
        &answers.datasets,
        at,
        backup,
        &answers.dest_host,
        &answers.dest_dataset,
        answers.force,
        include_archive,
    )?;
    let names: Vec<&str> = answers.datasets.iter().map(String::as_str).collect();
    let targets = destinations(&names, &answers.dest_dataset);
    let when = match &answers.point {
        Point::Newest => "the newest backup".to_owned(),
        Point::Backup(id) => format!("backup {id}"),
        Point::At(t) => format!("the newest backup at or before {}", time(*t)),
    };
    let mut s = format!(
        "Restore {} dataset(s) of {} ({when}) to {}:\n",
        names.len(),
        answers.host,
        answers.dest_host
    );
    let w = targets.iter().map(|(src, _)| src.len()).max().unwrap_or(0) + answers.host.len() + 1;
    for (src, dst) in &targets {
        let what = match chosen
            .iter()
            .find(|c| &c.dataset == src)
            .and_then(|c| line_of(c))
        {
            Some(b) => match &b.chain {
                Ok(chain) => format!(
                    "{} piece(s), {} ({} {})",
                    chain.len(),
                    bytes(b.chain_bytes),
                    kind_word(b.kind),
                    time(b.created)
                ),
                Err(e) => format!("CANNOT BE RESTORED: {e}"),
            },
            None => "NO BACKUP at that time: the restore will be refused".into(),
        };
        s.push_str(&format!(
            "  {}  →  {}:{dst}\n      {what}\n",
            pad(&format!("{}:{src}", answers.host), w),
            answers.dest_host
        ));
    }
    if names.len() > 1 {
        s.push_str(
            "  (one child Restore per dataset, one at a time; missing parents are created)\n",
        );
    }
    if answers.force {
        s.push_str("  existing destinations are REPLACED (force)\n");
    }
    if include_archive {
        s.push_str("  pieces from the archive area are used\n");
    }
    s.push_str("  every piece's sha256 is checked before it reaches zfs receive\n");
    Ok(Plan {
        answers,
        spec,
        summary: s,
    })
}

fn valid_dataset(s: &str) -> Result<(), String> {
    crate::names::validate_dataset(s.trim()).map_err(|e| e.to_string())
}

/// Asks every question up to (not including) the confirmation and returns the plan (pure
/// but for the prompter). `host` preselects the source host (from `--host`).
pub fn choose(
    p: &mut dyn Prompter,
    inv: &Inventory,
    hosts: &[ZfsHost],
    host: Option<&str>,
) -> Result<Plan, CliError> {
    let sources = host_choices(inv);
    if sources.is_empty() {
        return Err(CliError::Usage(
            "no backups found: no BackupPolicy in this namespace stores backups in files, or none was taken yet".into(),
        ));
    }
    let start = host
        .and_then(|h| sources.iter().position(|s| s.host == h))
        .unwrap_or(0);
    let i = p.select(
        "Source host (hosts with backups):",
        &host_labels(&sources),
        "↑↓ to move, type to filter, enter to choose, esc to cancel",
        start,
    )?;
    let source = sources[i].host.clone();
    let choices = dataset_choices(inv, &source);
    let picked = p.multi_select(
        &format!("Datasets of {source} to restore (mark several for a bulk restore):"),
        &dataset_labels(&choices),
        "space to mark, → all, ← none, type to filter, enter when done, esc to cancel",
    )?;
    let chosen: Vec<&DatasetChoice> = picked.iter().filter_map(|i| choices.get(*i)).collect();
    if chosen.is_empty() {
        return Err(CliError::Usage("no dataset was chosen".into()));
    }
    let names: Vec<&str> = chosen.iter().map(|c| c.dataset.as_str()).collect();
    let points = point_choices(&chosen);
    let labels: Vec<String> = points.iter().map(|(_, l)| l.clone()).collect();
    let i = p.select(
        "Point in time:",
        &labels,
        "the newest, or a listed backup (type, time, size, chain)",
        0,
    )?;
    let point = points[i].0.clone();
    let (dest_names, dest_labels, start) = destination_hosts(hosts, &source);
    if dest_names.is_empty() {
        return Err(CliError::Usage("no ZfsHost exists to restore to".into()));
    }
    let i = p.select("Destination host:", &dest_labels, "", start)?;
    let dest_host = dest_names[i].clone();
    let suggestion = default_destination(&pools_of(hosts, &dest_host), &names);
    let (question, help) = if names.len() == 1 {
        (
            format!("Restore {} to which dataset on {dest_host}?", names[0]),
            "missing parent datasets are created",
        )
    } else {
        (
            format!("Base dataset on {dest_host} (each dataset D goes to BASE/D)?"),
            "e.g. tank/restore: tank/db is restored to tank/restore/tank/db",
        )
    };
    let mut initial = suggestion;
    loop {
        let dest = p
            .text(&question, &initial, help, valid_dataset)?
            .trim()
            .to_owned();
        let targets = destinations(&names, &dest);
        let exists = existing(hosts, &dest_host, &targets);
        let force = if exists.is_empty() {
            false
        } else if p.confirm(
            &format!(
                "{dest_host} already has {}: replace (force)?",
                exists.join(", ")
            ),
            false,
        )? {
            true
        } else {
            initial = dest;
            continue;
        };
        let answers = Answers {
            host: source.clone(),
            datasets: names.iter().map(|n| (*n).to_owned()).collect(),
            point: point.clone(),
            dest_host: dest_host.clone(),
            dest_dataset: dest,
            force,
        };
        return plan(answers, &choices);
    }
}

/// The terminal: inquire's prompts (arrow keys, type-to-filter).
pub struct Terminal;

fn prompt_error(e: inquire::InquireError) -> CliError {
    use inquire::InquireError as E;
    match e {
        E::OperationCanceled | E::OperationInterrupted => CliError::Cancelled,
        E::NotTTY => CliError::Usage(
            "-i asks questions and needs a terminal; give --host, --dataset and --to instead"
                .into(),
        ),
        other => CliError::Prompt(other.to_string()),
    }
}

/// How a chosen option is echoed after the question: its first column (the name or the
/// time), not the whole line (pure).
pub fn answer_text(label: &str) -> String {
    label.split("  ").next().unwrap_or(label).trim().to_owned()
}

impl Prompter for Terminal {
    fn select(
        &mut self,
        message: &str,
        options: &[String],
        help: &str,
        start: usize,
    ) -> Result<usize, CliError> {
        let mut prompt = inquire::Select::new(message, options.to_vec())
            .with_starting_cursor(start)
            .with_page_size(12)
            .with_formatter(&|o| answer_text(o.value));
        if !help.is_empty() {
            prompt = prompt.with_help_message(help);
        }
        prompt.raw_prompt().map(|o| o.index).map_err(prompt_error)
    }

    fn multi_select(
        &mut self,
        message: &str,
        options: &[String],
        help: &str,
    ) -> Result<Vec<usize>, CliError> {
        inquire::MultiSelect::new(message, options.to_vec())
            .with_help_message(help)
            .with_page_size(12)
            .with_formatter(&|marked| {
                marked
                    .iter()
                    .map(|o| answer_text(o.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .with_validator(|marked: &[inquire::list_option::ListOption<&String>]| {
                Ok(if marked.is_empty() {
                    inquire::validator::Validation::Invalid(
                        "mark at least one dataset with space".into(),
                    )
                } else {
                    inquire::validator::Validation::Valid
                })
            })
            .raw_prompt()
            .map(|v| v.into_iter().map(|o| o.index).collect())
            .map_err(prompt_error)
    }

    fn text(
        &mut self,
        message: &str,
        initial: &str,
        help: &str,
        validate: fn(&str) -> Result<(), String>,
    ) -> Result<String, CliError> {
        inquire::Text::new(message)
            .with_initial_value(initial)
            .with_help_message(help)
            .with_validator(move |s: &str| {
                Ok(match validate(s) {
                    Ok(()) => inquire::validator::Validation::Valid,
                    Err(m) => inquire::validator::Validation::Invalid(m.into()),
                })
            })
            .prompt()
            .map_err(prompt_error)
    }

    fn confirm(&mut self, message: &str, default: bool) -> Result<bool, CliError> {
        inquire::Confirm::new(message)
            .with_default(default)
            .prompt()
            .map_err(prompt_error)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    // The prompts block; off the runtime, so the client's connections stay served.
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Prompt(e.to_string()))?
}

/// Runs `restore -i`: reads the catalogue, asks, confirms, then creates and follows the
/// Restore as the non-interactive command does.
pub async fn execute(
    args: RestoreArgs,
    global: &GlobalArgs,
    how: Connect,
    io: &mut Io<'_>,
) -> Result<u8, CliError> {
    if !io.interactive {
        return Err(CliError::Usage(
            "-i asks questions and needs a terminal on standard input; give --host, --dataset and --to instead".into(),
        ));
    }
    let token = super::commands::token(global)?;
    let (client, default_ns) = super::commands::connect(global, how).await?;
    let ns = global.namespace.clone().unwrap_or(default_ns);
    let mut cluster = Cluster::new(client.clone(), token, super::commands::store_ca(global)?);
    let policies = cluster.policies(&Scope::Namespace(ns.clone())).await?;
    let hosts = cluster.hosts().await?;
    let mut backups = Vec::new();
    for p in policies.iter().filter(|p| p.spec.target.path.is_some()) {
        match cluster.catalogue(p, &hosts).await {
            Ok(c) => backups.extend(c.backups),
            Err(e) => writeln!(
                io.err,
                "warning: the backups of policy {ns}/{} cannot be read: {e}",
                p.name_any()
            )?,
        }
    }
    io.out.flush()?;
    let inv = Inventory::new(backups);
    let preselect = args.host.clone();
    let plan = blocking(move || choose(&mut Terminal, &inv, &hosts, preselect.as_deref())).await?;
    writeln!(io.out, "{}", plan.summary)?;
    io.out.flush()?;
    let default = !plan.spec.force;
    let go = blocking(move || Terminal.confirm("Start this restore?", default)).await?;
    if !go {
        return Err(CliError::Cancelled);
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name_of(&plan.spec, Timestamp::now().as_second()));
    create_and_follow(client, &ns, &name, plan.spec, true, io).await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::api::zfs_host::{ZfsHostSpec, ZfsHostStatus};

    fn stored(host: &str, dataset: &str, id: &str, bytes: u64, archived: bool) -> StoredBackup {
        let sid: crate::store::StreamId = id.parse().expect("id");
        let m = serde_json::from_value(serde_json::json!({
            "id": id, "host": host, "dataset": dataset, "snapshot": format!("s{}", sid.ts()),
            "type": if id.contains("incremental") { "incremental" } else { "full" },
            "bytes": bytes, "sha256": "x", "compression": "none",
            "created": Timestamp::from_second(sid.ts()).expect("ts"),
        }))
        .expect("manifest");
        StoredBackup {
            manifest: m,
            archived,
            verification: None,
        }
    }

    fn inventory() -> Inventory {
        Inventory::new([
            stored("db-1", "tank/db", "1000.full", 4096, false),
            stored("db-1", "tank/db", "2000.incremental.1000", 1024, false),
            stored("db-1", "tank/db", "1000.full", 4096, true),
            stored("db-1", "tank/www", "1500.full", 2048, false),
            stored("web-1", "pool/site", "1200.full", 100, true),
            stored("web-1", "pool/broken", "1300.incremental.1250", 10, false),
        ])
    }

    fn zfs_host(name: &str, pools: &[&str], datasets: &[&str]) -> ZfsHost {
        let mut h = ZfsHost::new(
            name,
            ZfsHostSpec {
                node_name: name.into(),
                datasets: Default::default(),
                paused: false,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        h.status = Some(
            serde_json::from_value::<ZfsHostStatus>(serde_json::json!({
                "pools": pools.iter().map(|p| serde_json::json!({"name": p, "health": "ONLINE"})).collect::<Vec<_>>(),
                "datasets": datasets.iter().map(|d| serde_json::json!({"name": d})).collect::<Vec<_>>(),
            }))
            .expect("status"),
        );
        h
    }

    #[test]
    fn hosts_and_datasets_are_listed_with_their_backups() {
        let inv = inventory();
        let hosts = host_choices(&inv);
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            (hosts[0].host.as_str(), hosts[0].datasets, hosts[0].backups),
            ("db-1", 2, 3),
            "an archived copy of a live backup counts once"
        );
        let labels = host_labels(&hosts);
        assert!(
            labels[0].starts_with(
                "db-1   2 dataset(s), 3 backup(s), 7.0 KiB, newest 1970-01-01T00:33:20Z"
            ),
            "{}",
            labels[0]
        );
        let ds = dataset_choices(&inv, "db-1");
        assert_eq!(ds[0].dataset, "tank/db");
        assert_eq!(
            ds[0].backups[1].chain,
            Ok(vec![
                "1000.full".to_owned(),
                "2000.incremental.1000".to_owned()
            ])
        );
        assert_eq!(ds[0].backups[1].chain_bytes, 5120);
        let labels = dataset_labels(&ds);
        assert_eq!(
            labels[0],
            "tank/db   1 full + 1 incremental; newest incremental 1970-01-01T00:33:20Z (1.0 KiB), chain of 2 (5.0 KiB)"
        );
        let web = dataset_choices(&inv, "web-1");
        assert!(
            dataset_labels(&web)[0].contains("cannot be restored"),
            "{:?}",
            dataset_labels(&web)
        );
        assert!(
            web[1].backups[0].chain_archived,
            "pool/site's only full is archived"
        );
    }

    #[test]
    fn points_in_time_for_one_and_for_several() {
        let inv = inventory();
        let ds = dataset_choices(&inv, "db-1");
        let one = point_choices(&[&ds[0]]);
        assert_eq!(one.len(), 3);
        assert_eq!(one[1].0, Point::Backup("2000.incremental.1000".into()));
        assert_eq!(
            one[1].1,
            "1970-01-01T00:33:20Z  incremental    1.0 KiB  chain: 1000.full → 2000.incremental.1000"
        );
        let both = point_choices(&[&ds[0], &ds[1]]);
        let labels: Vec<&str> = both.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "newest backup of each dataset",
                "at 1970-01-01T00:33:20Z  (tank/db incremental, tank/www full)",
                "at 1970-01-01T00:25:00Z  (tank/db full, tank/www full)",
                "at 1970-01-01T00:16:40Z  (tank/db full, tank/www nothing)",
            ]
        );
    }

    #[test]
    fn destinations_default_and_map_under_a_base() {
        let pools = vec!["backup".to_owned()];
        assert_eq!(
            default_destination(&pools, &["tank/db"]),
            "backup/restore/tank/db"
        );
        assert_eq!(
            default_destination(&[], &["tank/db", "tank/www"]),
            "tank/restore"
        );
        assert_eq!(
            destinations(&["tank/db", "tank/www"], "b/r"),
            [
                ("tank/db".to_owned(), "b/r/tank/db".to_owned()),
                ("tank/www".to_owned(), "b/r/tank/www".to_owned())
            ]
        );
        let hosts = [
            zfs_host("db-2", &["backup"], &["b/r/tank/www"]),
            zfs_host("db-1", &["tank"], &[]),
        ];
        let (names, labels, start) = destination_hosts(&hosts, "db-1");
        assert_eq!(names, ["db-1", "db-2"]);
        assert_eq!(start, 0);
        assert_eq!(labels[0], "db-1  (pools: tank, the source host)");
        assert_eq!(
            pools_of(&hosts, "db-2"),
            ["b"],
            "the pools of the datasets it selects, not every pool it sees"
        );
        assert_eq!(
            existing(
                &hosts,
                "db-2",
                &destinations(&["tank/db", "tank/www"], "b/r")
            ),
            ["b/r/tank/www"]
        );
    }

    /// Answers from a script; `None` stands for Esc.
    #[derive(Default)]
    struct Script {
        answers: VecDeque<Option<String>>,
        asked: Vec<String>,
    }

    impl Script {
        fn new(answers: &[Option<&str>]) -> Self {
            Self {
                answers: answers.iter().map(|a| a.map(str::to_owned)).collect(),
                asked: Vec::new(),
            }
        }
        fn next(&mut self, message: &str) -> Result<String, CliError> {
            self.asked.push(message.to_owned());
            self.answers
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected question {message:?}"))
                .ok_or(CliError::Cancelled)
        }
    }

    impl Prompter for Script {
        fn select(
            &mut self,
            m: &str,
            options: &[String],
            _: &str,
            start: usize,
        ) -> Result<usize, CliError> {
            let a = self.next(m)?;
            if a.is_empty() {
                return Ok(start);
            }
            options
                .iter()
                .position(|o| o.starts_with(&a))
                .ok_or_else(|| CliError::Usage(format!("no option {a:?} in {options:?}")))
        }
        fn multi_select(
            &mut self,
            m: &str,
            options: &[String],
            _: &str,
        ) -> Result<Vec<usize>, CliError> {
            let a = self.next(m)?;
            Ok(a.split(',')
                .filter_map(|p| options.iter().position(|o| o.starts_with(&format!("{p} "))))
                .collect())
        }
        fn text(
            &mut self,
            m: &str,
            initial: &str,
            _: &str,
            validate: fn(&str) -> Result<(), String>,
        ) -> Result<String, CliError> {
            let a = self.next(m)?;
            let v = if a.is_empty() { initial.to_owned() } else { a };
            validate(&v).map_err(CliError::Usage)?;
            Ok(v)
        }
        fn confirm(&mut self, m: &str, _: bool) -> Result<bool, CliError> {
            Ok(self.next(m)? == "y")
        }
    }

    fn fleet() -> Vec<ZfsHost> {
        vec![
            zfs_host("db-1", &["tank"], &["tank/db"]),
            zfs_host("db-2", &["backup"], &["backup/restore/tank/db"]),
        ]
    }

    #[test]
    fn one_dataset_at_a_listed_backup() {
        let mut s = Script::new(&[
            Some("db-1"),
            Some("tank/db"),
            Some("1970-01-01T00:16:40Z"),
            Some(""),
            Some(""),
        ]);
        let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
        assert_eq!(plan.spec.source.dataset_name(), "tank/db");
        assert_eq!(plan.spec.source.backup.as_deref(), Some("1000.full"));
        assert!(!plan.spec.source.include_archive, "the live copy is used");
        assert_eq!(
            plan.spec.destination.host.as_str(),
            "db-1",
            "the source host is the default"
        );
        assert_eq!(
            plan.spec.destination.dataset.as_str(),
            "tank/restore/tank/db"
        );
        assert!(!plan.spec.force);
        assert_eq!(
            plan.summary.lines().next(),
            Some("Restore 1 dataset(s) of db-1 (backup 1000.full) to db-1:")
        );
        assert!(
            plan.summary.contains(
                "db-1:tank/db  →  db-1:tank/restore/tank/db\n      1 piece(s), 4.0 KiB (full 1970-01-01T00:16:40Z)"
            ),
            "{}",
            plan.summary
        );
        assert_eq!(answer_text("db-1   2 dataset(s)"), "db-1");
        assert_eq!(
            answer_text("newest backup of each dataset"),
            "newest backup of each dataset"
        );
    }

    #[test]
    fn several_datasets_make_a_bulk_restore_and_existing_destinations_ask() {
        // db-2 has backup/restore/tank/db: refuse to replace, give another base.
        let mut s = Script::new(&[
            Some("db-1"),
            Some("tank/db,tank/www"),
            Some("at 1970-01-01T00:25:00Z"),
            Some("db-2"),
            Some(""),
            Some("n"),
            Some("backup/other"),
        ]);
        let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
        assert!(plan.spec.source.is_bulk());
        let ds: Vec<&str> = plan
            .spec
            .source
            .datasets
            .iter()
            .map(|d| d.as_str())
            .collect();
        assert_eq!(ds, ["tank/db", "tank/www"]);
        assert_eq!(
            plan.spec.source.at.as_ref().map(|t| t.0.as_second()),
            Some(1500)
        );
        assert_eq!(plan.spec.destination.dataset.as_str(), "backup/other");
        assert!(!plan.spec.force);
        assert!(
            s.asked[5].contains("db-2 already has backup/restore/tank/db"),
            "{:?}",
            s.asked
        );
        assert!(
            plan.summary
                .contains("db-1:tank/www  →  db-2:backup/other/tank/www"),
            "{}",
            plan.summary
        );
        // Saying yes replaces it.
        let mut s = Script::new(&[
            Some("db-1"),
            Some("tank/db,tank/www"),
            Some(""),
            Some("db-2"),
            Some(""),
            Some("y"),
        ]);
        let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
        assert!(plan.spec.force && plan.summary.contains("REPLACED"));
        assert_eq!(plan.spec.source.at, None, "newest of each");
    }

    #[test]
    fn archived_chains_search_the_archive_and_esc_cancels() {
        let mut s = Script::new(&[
            Some("web-1"),
            Some("pool/site"),
            Some(""),
            Some(""),
            Some("pool/r"),
        ]);
        let plan = choose(&mut s, &inventory(), &fleet(), None).expect("plan");
        assert!(plan.spec.source.include_archive);
        assert!(plan.summary.contains("archive area"));
        for at in 0..4 {
            let mut answers = vec![Some("db-1"), Some("tank/db"), Some(""), Some("")];
            answers[at] = None;
            let mut s = Script::new(&answers);
            assert!(matches!(
                choose(&mut s, &inventory(), &fleet(), None),
                Err(CliError::Cancelled)
            ));
        }
        let mut s = Script::new(&[]);
        assert!(choose(&mut s, &Inventory::default(), &fleet(), None).is_err());
        let bad = Script::new(&[
            Some("db-1"),
            Some("tank/db"),
            Some(""),
            Some(""),
            Some("-rf /"),
        ]);
        let mut bad = bad;
        assert!(
            choose(&mut bad, &inventory(), &fleet(), None).is_err(),
            "invalid names are refused"
        );
    }
}
