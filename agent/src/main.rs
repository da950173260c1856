//! `zetaback-agent`: the node agent. Serves the stream API (file store and/or replica
//! receives) and, unless `--no-kube`, runs this host's BackupJobs and keeps its ZfsHost status
//! current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};
use zetaback_agent::auth::{Tokens, read_token};
use zetaback_agent::discovery::{self, DiscoveryConfig};
use zetaback_agent::filestore::FileStore;
use zetaback_agent::job::JobSettings;
use zetaback_agent::runner::{Runner, RunnerConfig};
use zetaback_agent::store_server::{ReplicaConfig, ServerState, serve};
use zetaback_agent::zfs::Zfs;

#[derive(Debug, Parser)]
#[command(name = "zetaback-agent", version, about = "The zetaback node agent")]
struct Args {
    /// This agent's ZfsHost.
    #[arg(long, env = "ZETABACK_HOST_NAME")]
    host_name: String,
    /// The Kubernetes node it runs on (part of its claim identity).
    #[arg(long, env = "NODE_NAME", default_value = "local")]
    node_name: String,
    /// Where the stream API listens.
    #[arg(long, env = "ZETABACK_LISTEN", default_value = "0.0.0.0:7790")]
    listen: SocketAddr,
    /// The address other agents reach this one at (`status.agentEndpoint`); default: the
    /// listen address, unless it is unspecified (0.0.0.0), in which case nothing is published.
    #[arg(long, env = "ZETABACK_ADVERTISE")]
    advertise: Option<String>,
    /// Store backups as files under this directory (target agents).
    #[arg(long, env = "ZETABACK_STORE_ROOT")]
    store_root: Option<PathBuf>,
    /// Accept replica streams received under this dataset (repeatable).
    #[arg(
        long = "replica-root",
        env = "ZETABACK_REPLICA_ROOTS",
        value_delimiter = ','
    )]
    replica_roots: Vec<String>,
    /// Allow `zfs receive -F` for replicas when a request asks for it.
    #[arg(long, env = "ZETABACK_ALLOW_RECEIVE_FORCE")]
    allow_receive_force: bool,
    /// The bearer token sources present (a mounted Secret).
    #[arg(long, env = "ZETABACK_TOKEN_FILE")]
    token_file: PathBuf,
    /// The controller's admin token (delete, archive).
    #[arg(long, env = "ZETABACK_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Path to a kubeconfig (default: the usual inference: KUBECONFIG, ~/.kube/config,
    /// in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Jobs at once on this host.
    #[arg(long, env = "ZETABACK_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Outgoing bandwidth limit per stream, bytes per second (0 = none).
    #[arg(long, env = "ZETABACK_BANDWIDTH_LIMIT", default_value_t = 0)]
    bandwidth_limit: u64,
    /// Keep every snapshot we made (do not destroy those that are no longer a base).
    #[arg(long, env = "ZETABACK_KEEP_SNAPSHOTS")]
    keep_snapshots: bool,
    /// Seconds between host inspections.
    #[arg(long, default_value_t = 30)]
    status_interval: u64,
    /// Refresh lastSeen at most this often (seconds) when nothing changed.
    #[arg(long, default_value_t = 60)]
    last_seen_every: u64,
    /// Only serve the stream API (no Kubernetes: benchmarks, a plain backup server).
    #[arg(long)]
    no_kube: bool,
}

async fn kube_client(path: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zetaback::telemetry::init();
    let args = Args::parse();
    let token = read_token(&args.token_file)?;
    let admin = args
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let zfs = Zfs::detect().await.context("detecting the local zfs")?;
    info!(capabilities = ?zfs.capabilities().names(), "zfs capabilities");

    let store = match &args.store_root {
        Some(root) => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating store root {}", root.display()))?;
            let store = FileStore::new(root);
            let removed = store.remove_stale_temporaries().await?;
            if removed > 0 {
                warn!(removed, "removed half-written streams left by a crash");
            }
            Some(store)
        }
        None => None,
    };
    let replica = (!args.replica_roots.is_empty()).then(|| ReplicaConfig {
        zfs: zfs.clone(),
        roots: args.replica_roots.clone(),
        allow_force: args.allow_receive_force,
    });
    let state = ServerState::new(Tokens::new(Some(token.clone()), admin), store, replica);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    info!(%local, "stream API listening");
    let server = tokio::spawn(serve(listener, state));

    if args.no_kube {
        server.await??;
        return Ok(());
    }
    let advertise = args
        .advertise
        .clone()
        .or_else(|| (!local.ip().is_unspecified()).then(|| local.to_string()));
    let client = kube_client(args.kubeconfig.as_ref()).await?;
    let runner = Arc::new(Runner::new(
        client.clone(),
        zfs.clone(),
        RunnerConfig {
            host_name: args.host_name.clone(),
            agent_id: format!("{}@{}", args.host_name, args.node_name),
            concurrency: args.concurrency,
            token,
            settings: JobSettings {
                bandwidth_limit: args.bandwidth_limit,
                prune_snapshots: !args.keep_snapshots,
            },
        },
    ));
    let disc = tokio::spawn(discovery::run(
        kube::Api::all(client),
        zfs,
        DiscoveryConfig {
            host_name: args.host_name.clone(),
            agent_endpoint: advertise,
            interval: Duration::from_secs(args.status_interval.max(1)),
            last_seen_every: Duration::from_secs(args.last_seen_every.max(1)),
        },
        runner.job_finished.clone(),
    ));
    tokio::select! {
        r = server => { r??; }
        r = runner.run() => { r?; }
        r = disc => { r?; }
    }
    Ok(())
}
