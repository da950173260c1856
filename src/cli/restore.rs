//! `kubectl zetaback restore`: create a Restore and, with `--wait`, follow it with progress
//! bars (bytes, rate, ETA) until it ends. The exit code is 0 only when it succeeded verified.
//!
//! One `--dataset` naming one dataset makes a single restore into `--to HOST/DATASET`.
//! Several `--dataset`, or a pattern (`tank/**`, `*`), make a bulk restore: `--to HOST/BASE`
//! is then a base and each dataset `pool/a/b` is restored to `BASE/pool/a/b`, one child
//! Restore per dataset, followed with one bar each. `-i` asks for all of it interactively
//! ([`super::interactive`]) and then runs exactly this path.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::Api;
use kube::api::PostParams;

use super::error::CliError;
use super::table::Table;
use super::{Connect, GlobalArgs, Io};
use crate::api::restore::{BulkDataset, RestorePhase};
use crate::api::{Restore, RestoreSpec, RestoreStatus};

/// `restore` arguments.
#[derive(Debug, Args, Clone, Default)]
#[command(after_help = "\
Single restore:  --host H --dataset tank/db --to H2/tank/restored/db
Bulk restore:    --host H --dataset 'tank/**' --to H2/tank/restore   (or several --dataset)
                 restores every matching dataset D with backups to BASE/D, e.g.
                 tank/db -> tank/restore/tank/db, one child Restore per dataset, one at a time.
                 --at applies to every dataset; --backup (one dataset's id) is refused.
Interactive:     -i   pick host, datasets (space to mark several), point in time and
                 destination with the arrow keys, type to filter; confirm; then follow.
                 Esc or Ctrl-C cancels and creates nothing (exit 130). The backups are
                 read from the backup hosts: give --token-file (or $ZETABACK_TOKEN).
Exit codes: 0 created (without --wait) or restored and verified; 1 failed or error;
            130 cancelled (-i).")]
pub struct RestoreArgs {
    /// The host the backups were taken from.
    #[arg(short = 'H', long, required_unless_present = "interactive")]
    pub host: Option<String>,
    /// The dataset backed up; repeat it, or give a pattern (`tank/**`), for a bulk restore.
    #[arg(
        short = 'd',
        long = "dataset",
        value_name = "DATASET|PATTERN",
        required_unless_present = "interactive"
    )]
    pub datasets: Vec<String>,
    /// Restore the newest backup at or before this time (RFC 3339); in bulk, for every dataset.
    #[arg(long, conflicts_with = "backup")]
    pub at: Option<jiff::Timestamp>,
    /// Restore this backup id (as `kubectl zetaback list` shows it); one dataset only.
    #[arg(long)]
    pub backup: Option<String>,
    /// Where to: HOST/DATASET, or HOST/BASE for a bulk restore.
    #[arg(
        long,
        value_name = "HOST/DATASET",
        required_unless_present = "interactive"
    )]
    pub to: Option<String>,
    /// Replace an existing destination dataset (refused where it has snapshots or child
    /// datasets of its own; continues an interrupted restore of the same chain).
    #[arg(long)]
    pub force: bool,
    /// Search the archive area too.
    #[arg(long)]
    pub include_archive: bool,
    /// Follow the restore until it ends (exit code 0 only if it succeeded verified).
    #[arg(long)]
    pub wait: bool,
    /// The Restore's name (default: derived from the source and the time).
    #[arg(long)]
    pub name: Option<String>,
    /// Choose interactively (host, datasets, point in time, destination), then follow.
    #[arg(short = 'i', long)]
    pub interactive: bool,
}

/// Splits `HOST/DATASET` (pure).
pub fn split_destination(to: &str) -> Result<(&str, &str), CliError> {
    match to.split_once('/') {
        Some((h, d)) if !h.is_empty() && !d.is_empty() => Ok((h, d)),
        _ => Err(CliError::Usage(format!(
            "--to {to:?}: expected HOST/DATASET, e.g. backup-2/tank/restored/db"
        ))),
    }
}

/// A Kubernetes name for a restore of `host:dataset` at `unix` seconds (pure). At most 59
/// characters, so a bulk Restore's name fits in its children's label.
pub fn default_name(host: &str, dataset: &str, unix: i64) -> String {
    let mut base: String = format!("{host}-{dataset}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(40);
    let base = base.trim_matches('-');
    format!("restore-{base}-{unix}")
}

/// Whether these `--dataset` values ask for a bulk restore: several, or a pattern (pure).
pub fn is_bulk(datasets: &[String]) -> bool {
    datasets.len() > 1 || datasets.iter().any(|d| d.contains(['*', '?']))
}

/// The spec of a restore from `host` of `datasets` (one name: single; else bulk) into
/// `dest_host`/`dest_dataset` (pure). Invalid names are refused with the apiserver's words
/// later; here only the shape is checked.
#[allow(clippy::too_many_arguments)]
pub fn build_spec(
    host: &str,
    datasets: &[String],
    at: Option<jiff::Timestamp>,
    backup: Option<&str>,
    dest_host: &str,
    dest_dataset: &str,
    force: bool,
    include_archive: bool,
) -> Result<RestoreSpec, CliError> {
    if datasets.is_empty() {
        return Err(CliError::Usage("give at least one --dataset".into()));
    }
    let mut source = serde_json::json!({ "host": host, "includeArchive": include_archive });
    if is_bulk(datasets) {
        if backup.is_some() {
            return Err(CliError::Usage(
                "--backup names one dataset's backup; a bulk restore (several --dataset or a pattern) takes --at or restores each dataset's newest".into(),
            ));
        }
        let mut distinct = datasets.to_vec();
        distinct.sort();
        distinct.dedup();
        source["datasets"] = serde_json::json!(distinct);
    } else {
        source["dataset"] = serde_json::json!(datasets[0]);
    }
    if let Some(at) = at {
        source["at"] = serde_json::json!(at);
    }
    if let Some(b) = backup {
        source["backup"] = serde_json::json!(b);
    }
    serde_json::from_value(serde_json::json!({
        "source": source,
        "destination": {"host": dest_host, "dataset": dest_dataset},
        "force": force,
    }))
    .map_err(|e| CliError::Usage(format!("invalid restore: {e}")))
}

/// The spec the arguments ask for.
pub fn spec(args: &RestoreArgs) -> Result<RestoreSpec, CliError> {
    let (Some(host), Some(to)) = (&args.host, &args.to) else {
        return Err(CliError::Usage(
            "--host, --dataset and --to are required".into(),
        ));
    };
    let (dest_host, dest_dataset) = split_destination(to)?;
    build_spec(
        host,
        &args.datasets,
        args.at,
        args.backup.as_deref(),
        dest_host,
        dest_dataset,
        args.force,
        args.include_archive,
    )
}

/// The default name of a Restore with this spec, at `unix` seconds (pure).
pub fn default_name_of(spec: &RestoreSpec, unix: i64) -> String {
    let what = if spec.source.is_bulk() {
        "bulk"
    } else {
        spec.source.dataset_name()
    };
    default_name(spec.source.host.as_str(), what, unix)
}

fn ready_reason(st: &RestoreStatus) -> &str {
    st.conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::READY)
        .map(|c| c.reason.as_str())
        .unwrap_or("")
}

/// How a restore ended: one line, and for a bulk restore a table of its datasets (pure).
pub fn outcome_line(name: &str, st: &RestoreStatus) -> String {
    let mut text = match st.phase {
        RestorePhase::Succeeded if st.datasets.is_empty() => format!(
            "restore {name} Succeeded: chain {} ({} bytes), verified={}: {}",
            st.chain.join(" → "),
            st.bytes_done.or(st.bytes).unwrap_or(0),
            st.verified.unwrap_or(false),
            st.message.as_deref().unwrap_or("")
        ),
        RestorePhase::Succeeded => format!(
            "restore {name} Succeeded ({} bytes), verified={}: {}",
            st.bytes_done.or(st.bytes).unwrap_or(0),
            st.verified.unwrap_or(false),
            st.message.as_deref().unwrap_or("")
        ),
        phase => format!(
            "restore {name} {phase:?} ({}): {}",
            ready_reason(st),
            st.message.as_deref().unwrap_or("")
        ),
    };
    if !st.datasets.is_empty() {
        text.push('\n');
        text.push_str(&bulk_table(&st.datasets).render_indented("  "));
    }
    text
}

/// The rows of a bulk restore as a table (pure).
pub fn bulk_table(rows: &[BulkDataset]) -> Table {
    let mut t = Table::new([
        "SOURCE",
        "DESTINATION",
        "PHASE",
        "VERIFIED",
        "BYTES",
        "RESTORE",
        "MESSAGE",
    ]);
    for r in rows {
        t.row([
            r.source.clone(),
            r.destination.clone(),
            format!("{:?}", r.phase),
            r.verified.map(|v| v.to_string()).unwrap_or_default(),
            r.bytes.map(super::table::bytes).unwrap_or_default(),
            r.restore.clone(),
            // Why, for the ones that did not succeed (the line above says where all went).
            if r.phase == RestorePhase::Succeeded {
                String::new()
            } else {
                r.message.clone().unwrap_or_default()
            },
        ]);
    }
    t
}

/// The exit code of a finished restore (pure).
pub fn exit_code(st: &RestoreStatus) -> u8 {
    u8::from(!(st.phase == RestorePhase::Succeeded && st.verified == Some(true)))
}

/// Runs `restore` (without `-i`: the caller sends that to [`super::interactive`]).
pub async fn execute(
    args: RestoreArgs,
    global: &GlobalArgs,
    how: Connect,
    io: &mut Io<'_>,
) -> Result<u8, CliError> {
    let spec = spec(&args)?;
    let (client, default_ns) = super::commands::connect(global, how).await?;
    let ns = global.namespace.clone().unwrap_or(default_ns);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name_of(&spec, jiff::Timestamp::now().as_second()));
    create_and_follow(client, &ns, &name, spec, args.wait, io).await
}

/// Creates the Restore and, with `wait`, follows it to its end (the non-interactive and the
/// interactive path both end here). The exit code: 0 when created (without `wait`) or when
/// it succeeded verified.
pub async fn create_and_follow(
    client: kube::Client,
    ns: &str,
    name: &str,
    spec: RestoreSpec,
    wait: bool,
    io: &mut Io<'_>,
) -> Result<u8, CliError> {
    let api: Api<Restore> = Api::namespaced(client, ns);
    let bulk = spec.source.is_bulk();
    api.create(&PostParams::default(), &Restore::new(name, spec))
        .await
        .map_err(|source| CliError::Kube {
            what: format!("creating Restore {ns}/{name}"),
            source,
        })?;
    writeln!(io.out, "restore.zetaback.io/{name} created")?;
    io.out.flush()?;
    if !wait {
        return Ok(0);
    }
    let status = if bulk {
        follow_bulk(&api, ns, name).await?
    } else {
        follow_one(&api, ns, name).await?
    };
    writeln!(io.out, "{}", outcome_line(name, &status))?;
    Ok(exit_code(&status))
}

fn bar_style(template: &str) -> Result<ProgressStyle, CliError> {
    Ok(ProgressStyle::with_template(template)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .progress_chars("=> "))
}

async fn read(api: &Api<Restore>, ns: &str, name: &str) -> Result<RestoreStatus, CliError> {
    let r = api.get(name).await.map_err(|source| CliError::Kube {
        what: format!("reading Restore {ns}/{name}"),
        source,
    })?;
    Ok(r.status.unwrap_or_default())
}

const POLL: Duration = Duration::from_millis(500);

async fn follow_one(api: &Api<Restore>, ns: &str, name: &str) -> Result<RestoreStatus, CliError> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(bar_style(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )?);
    bar.set_message(format!("{name}: resolving"));
    let status = loop {
        let st = read(api, ns, name).await?;
        if let Some(total) = st.bytes {
            bar.set_length(total);
        }
        if let Some(done) = st.bytes_done {
            bar.set_position(done);
        }
        match st.phase {
            RestorePhase::Succeeded | RestorePhase::Failed => break st,
            RestorePhase::Running => {
                bar.set_message(format!("{name}: {} piece(s)", st.chain.len()))
            }
            RestorePhase::Pending if !st.chain.is_empty() => {
                bar.set_message(format!("{name}: waiting for the destination agent"))
            }
            RestorePhase::Pending => {}
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    Ok(status)
}

/// What one dataset's bar says (pure).
pub fn row_message(row: &BulkDataset) -> String {
    match row.phase {
        RestorePhase::Pending => "waiting".into(),
        RestorePhase::Running => "restoring".into(),
        RestorePhase::Succeeded if row.verified == Some(true) => "done, verified".into(),
        RestorePhase::Succeeded => "done".into(),
        RestorePhase::Failed => "FAILED".into(),
    }
}

/// Follows a bulk restore: a line for the whole, and one bar per dataset.
async fn follow_bulk(api: &Api<Restore>, ns: &str, name: &str) -> Result<RestoreStatus, CliError> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let head = multi.add(ProgressBar::new_spinner());
    head.set_style(bar_style("{spinner} {wide_msg}")?);
    head.set_message(format!("{name}: expanding the datasets"));
    let row_style =
        bar_style("  {prefix} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")?;
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let status = loop {
        let st = read(api, ns, name).await?;
        // One line per dataset, named by its source (the summary and the final table say
        // where each goes).
        let width = st
            .datasets
            .iter()
            .map(|r| r.source.len())
            .max()
            .unwrap_or(0);
        for row in &st.datasets {
            let bar = bars.entry(row.source.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(row_style.clone());
                b.set_prefix(format!("{:<width$}", row.source));
                b
            });
            if let Some(total) = row.bytes {
                bar.set_length(total);
            }
            if let Some(done) = row.bytes_done {
                bar.set_position(done);
            }
            bar.set_message(row_message(row));
        }
        head.set_message(format!(
            "{name}: {}",
            st.message
                .as_deref()
                .unwrap_or("waiting for the controller")
        ));
        head.tick();
        if matches!(st.phase, RestorePhase::Succeeded | RestorePhase::Failed) {
            break st;
        }
        tokio::time::sleep(POLL).await;
    };
    for bar in bars.values() {
        bar.finish();
    }
    head.finish_and_clear();
    let _ = multi.clear();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_and_names() {
        assert_eq!(
            split_destination("h2/tank/a/b").expect("ok"),
            ("h2", "tank/a/b")
        );
        assert!(split_destination("h2").is_err());
        assert!(split_destination("/tank").is_err());
        assert_eq!(default_name("db-1", "tank/pg", 7), "restore-db-1-tank-pg-7");
        let long = default_name(&"h".repeat(80), &"d".repeat(200), 1_764_000_000);
        assert!(long.len() <= 63, "a bulk name fits a label: {long}");
    }

    fn args(datasets: &[&str]) -> RestoreArgs {
        RestoreArgs {
            host: Some("h".into()),
            datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
            to: Some("d/tank/b".into()),
            force: true,
            ..Default::default()
        }
    }

    #[test]
    fn spec_and_exit_codes() {
        let mut a = args(&["tank/a"]);
        a.backup = Some("1.full".into());
        let s = spec(&a).expect("spec");
        assert_eq!(s.destination.dataset.as_str(), "tank/b");
        assert_eq!(s.source.dataset_name(), "tank/a");
        assert_eq!(s.source.backup.as_deref(), Some("1.full"));
        assert!(s.force && s.verify && !s.source.is_bulk());
        assert_eq!(default_name_of(&s, 5), "restore-h-tank-a-5");
        let ok = RestoreStatus {
            phase: RestorePhase::Succeeded,
            verified: Some(true),
            ..Default::default()
        };
        assert_eq!(exit_code(&ok), 0);
        let unverified = RestoreStatus {
            verified: Some(false),
            ..ok
        };
        assert_eq!(exit_code(&unverified), 1);
        assert_eq!(exit_code(&RestoreStatus::default()), 1);
    }

    #[test]
    fn several_datasets_or_a_pattern_make_a_bulk_restore() {
        let s = spec(&args(&["tank/**"])).expect("pattern");
        assert!(s.source.is_bulk() && s.source.dataset.is_none());
        assert_eq!(s.destination.dataset.as_str(), "tank/b", "the base");
        let s = spec(&args(&["tank/b", "tank/a", "tank/b"])).expect("several");
        let names: Vec<&str> = s.source.datasets.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["tank/a", "tank/b"]);
        assert_eq!(default_name_of(&s, 9), "restore-h-bulk-9");
        let mut a = args(&["tank/**"]);
        a.backup = Some("1.full".into());
        let e = spec(&a).expect_err("backup in bulk");
        assert!(e.to_string().contains("--backup names one dataset"), "{e}");
        let mut a = args(&["tank/*"]);
        a.at = Some(jiff::Timestamp::from_second(100).expect("ts"));
        assert!(spec(&a).expect("at").source.at.is_some());
        assert!(spec(&args(&[])).is_err());
    }

    #[test]
    fn bulk_outcome_names_every_dataset() {
        let st = RestoreStatus {
            phase: RestorePhase::Failed,
            message: Some("1 of 2 dataset(s) not restored: tank/b (ChecksumMismatch: x)".into()),
            datasets: vec![
                BulkDataset {
                    source: "tank/a".into(),
                    destination: "r/tank/a".into(),
                    restore: "b-1".into(),
                    phase: RestorePhase::Succeeded,
                    verified: Some(true),
                    bytes: Some(2048),
                    ..Default::default()
                },
                BulkDataset {
                    source: "tank/b".into(),
                    destination: "r/tank/b".into(),
                    restore: "b-2".into(),
                    phase: RestorePhase::Failed,
                    message: Some("ChecksumMismatch: x".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = outcome_line("b", &st);
        assert!(text.starts_with("restore b Failed"), "{text}");
        assert!(text.contains("tank/a   r/tank/a"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("Failed   "), "{text}");
        assert_eq!(exit_code(&st), 1);
        assert_eq!(row_message(&st.datasets[0]), "done, verified");
    }
}
