//! `zetaback-proxy --config proxy.yaml`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use zetaback_proxy::ProxyConfig;

#[derive(Debug, Parser)]
#[command(
    name = "zetaback-proxy",
    version,
    about = "Fallback HTTP proxy with a shared cache"
)]
struct Args {
    /// Path of the YAML configuration.
    #[arg(long, short, env = "ZETABACK_PROXY_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Worker threads (default: number of CPUs).
    #[arg(long, env = "ZETABACK_PROXY_THREADS")]
    threads: Option<usize>,
    /// Poll the config file for changes every this often ("0s" disables);
    /// SIGHUP always reloads.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    let cfg = ProxyConfig::load(&args.config).context("loading configuration")?;
    if args.check {
        println!("configuration ok: {} backends", cfg.backends.len());
        return Ok(());
    }
    // One thread: a current-thread runtime (no work-stealing overhead).
    let mut rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all();
    rt.build()?.block_on(run(args, cfg))
}

async fn run(args: Args, cfg: ProxyConfig) -> anyhow::Result<()> {
    let handle = zetaback_proxy::start(cfg).await?;
    let shared = handle.shared.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut last = std::fs::read(&args.config).unwrap_or_default();
    let poll = if args.watch_interval.is_zero() {
        Duration::from_secs(3600 * 24)
    } else {
        args.watch_interval
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.tick().await;
    loop {
        let reload = tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => true,
            _ = ticker.tick() => {
                if args.watch_interval.is_zero() { false } else {
                    let now = std::fs::read(&args.config).unwrap_or_default();
                    now != last && !now.is_empty()
                }
            }
        };
        if reload {
            last = std::fs::read(&args.config).unwrap_or_default();
            match ProxyConfig::load(&args.config) {
                Ok(cfg) => {
                    if let Err(e) = shared.reload(cfg) {
                        error!(error = %e, "reload rejected; keeping the running configuration");
                    }
                }
                Err(e) => warn!(error = %e, "reload failed; keeping the running configuration"),
            }
        }
    }
    handle.shutdown().await;
    Ok(())
}
