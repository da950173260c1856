//! `kubectl zetaback restore`: create a Restore and, with `--wait`, follow it with a progress
//! bar (bytes, rate, ETA) until it ends. The exit code is 0 only when it succeeded verified.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::Api;
use kube::api::PostParams;

use super::error::CliError;
use super::{Connect, GlobalArgs, Io};
use crate::api::restore::RestorePhase;
use crate::api::{Restore, RestoreSpec, RestoreStatus};

/// `restore` arguments.
#[derive(Debug, Args, Clone)]
pub struct RestoreArgs {
    /// The host the backups were taken from.
    #[arg(short = 'H', long, required_unless_present = "interactive")]
    pub host: Option<String>,
    /// The dataset backed up.
    #[arg(short = 'd', long, required_unless_present = "interactive")]
    pub dataset: Option<String>,
    /// Restore the newest backup at or before this time (RFC 3339).
    #[arg(long, conflicts_with = "backup")]
    pub at: Option<jiff::Timestamp>,
    /// Restore this backup id (as `kubectl zetaback list` shows it).
    #[arg(long)]
    pub backup: Option<String>,
    /// Where to: HOST/DATASET.
    #[arg(
        long,
        value_name = "HOST/DATASET",
        required_unless_present = "interactive"
    )]
    pub to: Option<String>,
    /// Replace an existing destination dataset.
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
    /// Choose interactively (not available in this version).
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

/// A Kubernetes name for a restore of `host:dataset` at `unix` seconds (pure).
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

/// The spec the arguments ask for.
pub fn spec(args: &RestoreArgs) -> Result<RestoreSpec, CliError> {
    let (Some(host), Some(dataset), Some(to)) = (&args.host, &args.dataset, &args.to) else {
        return Err(CliError::Usage(
            "--host, --dataset and --to are required".into(),
        ));
    };
    let (dest_host, dest_dataset) = split_destination(to)?;
    let mut source = serde_json::json!({
        "host": host, "dataset": dataset, "includeArchive": args.include_archive,
    });
    if let Some(at) = args.at {
        source["at"] = serde_json::json!(at);
    }
    if let Some(b) = &args.backup {
        source["backup"] = serde_json::json!(b);
    }
    serde_json::from_value(serde_json::json!({
        "source": source,
        "destination": {"host": dest_host, "dataset": dest_dataset},
        "force": args.force,
    }))
    .map_err(|e| CliError::Usage(format!("invalid restore: {e}")))
}

/// One line describing how a restore ended (pure).
pub fn outcome_line(name: &str, st: &RestoreStatus) -> String {
    let reason = st
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::READY)
        .map(|c| c.reason.as_str())
        .unwrap_or("");
    match st.phase {
        RestorePhase::Succeeded => format!(
            "restore {name} Succeeded: chain {} ({} bytes), verified={}: {}",
            st.chain.join(" → "),
            st.bytes_done.or(st.bytes).unwrap_or(0),
            st.verified.unwrap_or(false),
            st.message.as_deref().unwrap_or("")
        ),
        phase => format!(
            "restore {name} {phase:?} ({reason}): {}",
            st.message.as_deref().unwrap_or("")
        ),
    }
}

/// The exit code of a finished restore (pure).
pub fn exit_code(st: &RestoreStatus) -> u8 {
    u8::from(!(st.phase == RestorePhase::Succeeded && st.verified == Some(true)))
}

/// Runs `restore`.
pub async fn execute(
    args: RestoreArgs,
    global: &GlobalArgs,
    how: Connect,
    io: &mut Io<'_>,
) -> Result<u8, CliError> {
    if args.interactive {
        return Err(CliError::Usage(
            "interactive restore (-i) is not available yet; give --host, --dataset and --to".into(),
        ));
    }
    let spec = spec(&args)?;
    let (client, default_ns) = super::commands::connect(global, how).await?;
    let ns = global.namespace.clone().unwrap_or(default_ns);
    let name = args.name.clone().unwrap_or_else(|| {
        default_name(
            spec.source.host.as_str(),
            spec.source.dataset_name(),
            jiff::Timestamp::now().as_second(),
        )
    });
    let api: Api<Restore> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &Restore::new(&name, spec))
        .await
        .map_err(|source| CliError::Kube {
            what: format!("creating Restore {ns}/{name}"),
            source,
        })?;
    writeln!(io.out, "restore.zetaback.io/{name} created")?;
    if !args.wait {
        return Ok(0);
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .map_err(|e| CliError::Usage(e.to_string()))?
        .progress_chars("=> "),
    );
    bar.set_message(format!("{name}: resolving"));
    let status = loop {
        let r = api.get(&name).await.map_err(|source| CliError::Kube {
            what: format!("reading Restore {ns}/{name}"),
            source,
        })?;
        let st = r.status.unwrap_or_default();
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    writeln!(io.out, "{}", outcome_line(&name, &status))?;
    Ok(exit_code(&status))
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
    }

    #[test]
    fn spec_and_exit_codes() {
        let args = RestoreArgs {
            host: Some("h".into()),
            dataset: Some("tank/a".into()),
            at: None,
            backup: Some("1.full".into()),
            to: Some("d/tank/b".into()),
            force: true,
            include_archive: false,
            wait: false,
            name: None,
            interactive: false,
        };
        let s = spec(&args).expect("spec");
        assert_eq!(s.destination.dataset.as_str(), "tank/b");
        assert_eq!(s.source.backup.as_deref(), Some("1.full"));
        assert!(s.force && s.verify);
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
}
