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
mod tests;
