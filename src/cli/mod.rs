//! The `kubectl zetaback` command line: Zetaback's actions over the cluster's BackupPolicies
//! and the backup hosts' catalogues.
//!
//! | Zetaback        | here                                               |
//! |-----------------|----------------------------------------------------|
//! | `-l`            | `list [-H REGEX] [-d REGEX]`                       |
//! | `-s`, `-sx`     | `summary [--detail] [--files]`                     |
//! | `-sv`, `-svv`   | `violators [--all]` (monitoring-plugin exit codes) |
//! | `-b -ff`/`-fi`  | `backup POLICY [--host H] [--dataset D] [--full\|--incremental]` |
//! | `-x`            | `expunge POLICY`                                   |
//! | `-a`            | `archive POLICY [--yes]`                           |
//! | `-n`            | `--dry-run`                                        |
//! | `-h`, `-z`      | `-H/--host`, `-d/--dataset` (name or regex)        |
//!
//! The CLI never deletes or moves a backup itself: `backup`, `expunge` and `archive` leave a
//! request annotation on the policy ([`request`]) and the controller acts on it.
//!
//! [`run`] is the whole program with its arguments, streams and cluster connection passed in,
//! so tests run it in-process; the binary `kubectl-zetaback` calls [`main`].

pub mod backup_progress;
pub mod cluster;
mod commands;
pub mod drill;
pub mod error;
pub mod filter;
pub mod html_report;
pub mod interactive;
pub mod monitor;
pub mod report;
pub mod request;
pub mod restore;
pub mod table;
pub mod verify;

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use error::CliError;

/// `kubectl zetaback`: ZFS backups declared as BackupPolicies.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-zetaback",
    bin_name = "kubectl zetaback",
    version,
    about = "Zetaback for Kubernetes: list backups, summaries, policy violators; request backups, expunge and archive.",
    after_help = "Violators exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (monitoring-plugin convention)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (list, summary, violators).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// A file holding the bearer token for the backup hosts' agents (default: $ZETABACK_TOKEN):
    /// a catalogue reader's token, e.g. `kubectl create token zetaback-reader -n NS --audience
    /// zetaback-store`.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Without --token-file or $ZETABACK_TOKEN: mint a short-lived token of this catalogue
    /// reader ServiceAccount (`namespace/name`, e.g. `zetaback-system/zetaback-reader`) with
    /// your own Kubernetes credentials (TokenRequest; RBAC decides who may: the chart's role
    /// `<release>-catalogue-reader`).
    #[arg(
        long,
        global = true,
        env = "ZETABACK_READER_SERVICE_ACCOUNT",
        value_name = "NS/NAME"
    )]
    pub reader_service_account: Option<String>,
    /// The zetaback CA bundle (PEM): read the stores' catalogues over TLS, each store verified
    /// as the node its ZfsHost names (stores with TLS on refuse plaintext).
    #[arg(long, global = true, env = "ZETABACK_STORE_CA", value_name = "FILE")]
    pub store_ca: Option<PathBuf>,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    /// One self-contained HTML page (`report` only).
    Html,
}

/// Host and dataset filters.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only hosts matching this name or regular expression.
    #[arg(short = 'H', long = "host", value_name = "REGEX")]
    pub host: Option<String>,
    /// Only datasets matching this name or regular expression.
    #[arg(short = 'd', long = "dataset", value_name = "REGEX")]
    pub dataset: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List stored backups per host and dataset (from the backup host's catalogue).
    List {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Per policy, host and dataset: last full, last incremental, backup count, bytes.
    Summary {
        #[command(flatten)]
        filter: FilterArgs,
        /// Also list each backup.
        #[arg(long)]
        detail: bool,
        /// Also name each backup's files in the store (implies --detail).
        #[arg(long)]
        files: bool,
    },
    /// Datasets not backed up within their policy; one summary line and a monitoring exit code.
    Violators {
        #[command(flatten)]
        filter: FilterArgs,
        /// Also list datasets that disappeared from their host but still have backups.
        #[arg(long)]
        all: bool,
        /// UNKNOWN when a Ready policy's status was last refreshed longer ago than this (the
        /// controller refreshes it at least every 5 minutes while it runs).
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        max_status_age: String,
    },
    /// Ask the controller for a backup now.
    Backup {
        /// The BackupPolicy.
        policy: String,
        /// Only this host (a ZfsHost name).
        #[arg(long)]
        host: Option<String>,
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// A full backup.
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        /// An incremental backup.
        #[arg(long)]
        incremental: bool,
        /// Print the request without making it.
        #[arg(long)]
        dry_run: bool,
        /// Follow the request's BackupJobs with a progress bar each (bytes sent of the
        /// estimated stream size, ETA) until they end; exit 1 if one failed.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
    },
    /// Show what retention deletes now, and ask the controller to apply it.
    Expunge {
        /// The BackupPolicy.
        policy: String,
        /// Show only; request nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what moves to the archive now, and (after confirmation) ask the controller to do it.
    Archive {
        /// The BackupPolicy.
        policy: String,
        /// Show only; request nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Restore a dataset, or several under a base (bulk), from their backups (creates a
    /// Restore; --wait follows it); -i asks for everything interactively.
    Restore(restore::RestoreArgs),
    /// Have the store re-read and check every stored backup of the policy's datasets now;
    /// waits for the answer (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    Verify {
        /// The BackupPolicy.
        policy: String,
        /// Only this host (a ZfsHost name).
        #[arg(long)]
        host: Option<String>,
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Give up (UNKNOWN) after this long, e.g. 30m.
        #[arg(long, value_name = "DURATION", default_value = "30m")]
        timeout: String,
    },
    /// The compliance report: per policy and dataset, compliance now, backup age over time,
    /// stored bytes, chains, last verification and drill, RPO/RTO against the objectives
    /// (`-o html`: one self-contained page with charts; JSON/YAML: the numbers).
    Report,
    /// Have the controller run a restore drill of the policy's datasets now (spec.drill);
    /// waits for the answer (exit 0 OK, 1 WARNING: slower than objectives.rto, 2 CRITICAL:
    /// a drill failed, 3 UNKNOWN).
    Drill {
        /// The BackupPolicy.
        policy: String,
        /// Only this host (a ZfsHost name).
        #[arg(long)]
        host: Option<String>,
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Give up (UNKNOWN) after this long, e.g. 30m.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        timeout: String,
    },
}

/// The program's streams. `interactive` says whether `input` is a terminal (a person can
/// answer a question).
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub input: &'a mut dyn BufRead,
    pub interactive: bool,
}

/// How to reach the cluster.
pub enum Connect {
    /// From `--kubeconfig`/`--context`, else the usual inference ($KUBECONFIG,
    /// ~/.kube/config, in-cluster).
    Infer,
    /// This client, with this default namespace (tests).
    Client {
        client: kube::Client,
        namespace: String,
    },
}

/// Runs the command line `args` (the first is the program name) and returns the exit code.
/// Errors are printed on `io.err`; `violators` also prints its UNKNOWN line on `io.out`.
pub async fn run<I, T>(args: I, connect: Connect, io: &mut Io<'_>) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            let text = e.render().to_string();
            let _ = if e.use_stderr() {
                io.err.write_all(text.as_bytes())
            } else {
                io.out.write_all(text.as_bytes())
            };
            // A monitoring check with bad arguments is UNKNOWN, not CRITICAL.
            let plugin = args.iter().skip(1).any(|a| plugin_label_of(a).is_some());
            return if code != 0 && plugin { 3 } else { code };
        }
    };
    let violators = matches!(cli.command, Command::Violators { .. });
    let plugin = plugin_label(&cli.command);
    let format = cli.global.output;
    let result = match cli.command {
        // `restore -i` builds the same RestoreArgs interactively, then runs restore's path.
        Command::Restore(args) if args.interactive => {
            interactive::execute(args, &cli.global, connect, io).await
        }
        Command::Restore(args) => restore::execute(args, &cli.global, connect, io).await,
        _ => commands::execute(cli, connect, io).await,
    };
    match result {
        Ok(code) => code,
        Err(CliError::Cancelled) => {
            let _ = writeln!(io.err, "{}", CliError::Cancelled);
            130
        }
        Err(e) => {
            let text = e.chain();
            if violators {
                let verdict = monitor::unknown(&text);
                let _ = commands::emit(io, format, &verdict, || format!("{}\n", verdict.line()));
            } else if let Some(label) = plugin {
                let first = text.lines().next().unwrap_or_default();
                let _ = writeln!(io.out, "{label} UNKNOWN - {first}");
            }
            let _ = writeln!(io.err, "error: {text}");
            let _ = io.out.flush();
            if plugin.is_some() { 3 } else { 1 }
        }
    }
}

/// The plugin-line label of a command answering by the monitoring-plugin convention
/// (`violators`, `verify`, `drill`): any error of theirs, a wrong call included, is UNKNOWN
/// (exit 3), never the 1 (WARNING) other commands exit with.
fn plugin_label(command: &Command) -> Option<&'static str> {
    match command {
        Command::Violators { .. } => Some("ZETABACK"),
        Command::Verify { .. } => Some("VERIFY"),
        Command::Drill { .. } => Some("DRILL"),
        _ => None,
    }
}

/// [`plugin_label`] by the subcommand's name on the command line.
fn plugin_label_of(arg: &std::ffi::OsStr) -> Option<&'static str> {
    match arg.to_str()? {
        "violators" => Some("ZETABACK"),
        "verify" => Some("VERIFY"),
        "drill" => Some("DRILL"),
        _ => None,
    }
}

/// The binary: the process's arguments and streams, the inferred cluster.
pub async fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    // Not locked for the whole run: the interactive prompts draw on stderr from another
    // thread, which would wait forever for a lock this thread holds.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive,
    };
    let code = run(std::env::args_os(), Connect::Infer, &mut io).await;
    let _ = io.out.flush();
    std::process::ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-zetaback").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_as_kubectl_users_expect() {
        let cli = parse(&[
            "-n", "prod", "list", "-H", "^db-", "-d", "tank/pg", "-o", "json",
        ])
        .expect("parse");
        assert_eq!(cli.global.namespace.as_deref(), Some("prod"));
        assert_eq!(cli.global.output, Format::Json);
        match cli.command {
            Command::List { filter } => {
                assert_eq!(filter.host.as_deref(), Some("^db-"));
                assert_eq!(filter.dataset.as_deref(), Some("tank/pg"));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["violators", "--all", "-A"]).expect("parse");
        assert!(cli.global.all_namespaces);
        assert!(matches!(cli.command, Command::Violators { all: true, .. }));
        let cli = parse(&["backup", "p1", "--host", "db-1", "--full", "--dry-run"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Backup {
                full: true,
                incremental: false,
                dry_run: true,
                ..
            }
        ));
        assert!(parse(&["backup", "p1", "--full", "--incremental"]).is_err());
        assert!(parse(&["archive", "p1", "-y"]).is_ok());
        assert!(parse(&["list", "-o", "xml"]).is_err());
    }

    #[tokio::test]
    async fn usage_errors_of_violators_are_unknown() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut input: &[u8] = b"";
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            input: &mut input,
            interactive: false,
        };
        let code = run(
            ["kubectl-zetaback", "violators", "--bogus"],
            Connect::Infer,
            &mut io,
        )
        .await;
        assert_eq!(code, 3);
        // So are drill's and verify's (monitoring-plugin checks too).
        for command in ["drill", "verify"] {
            let code = run(
                ["kubectl-zetaback", command, "p", "--bogus"],
                Connect::Infer,
                &mut io,
            )
            .await;
            assert_eq!(code, 3, "{command}");
        }
        let code = run(
            ["kubectl-zetaback", "list", "--bogus"],
            Connect::Infer,
            &mut io,
        )
        .await;
        assert_eq!(code, 2);
        let code = run(["kubectl-zetaback", "--help"], Connect::Infer, &mut io).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).contains("violators"));
        assert!(String::from_utf8_lossy(&err).contains("--bogus"));
    }
}
