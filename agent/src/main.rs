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
use zetaback_agent::auth::{TokenFile, read_token};
use zetaback_agent::discovery::{self, DiscoveryConfig};
use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::tokenreview::ServiceAccountRef;
use zetaback_agent::identity::{Authenticator, StaticIdentities, TokenReviewConfig, TokenReviewer};
use zetaback_agent::job::JobSettings;
use zetaback_agent::limits::{ListenerLimits, StoreLimits};
use zetaback_agent::runner::{Runner, RunnerConfig};
use zetaback_agent::store_server::{ReplicaConfig, ServerState};
use zetaback_agent::zfs::Zfs;
use zetaback_core::peer_tls::{PeerIdentity, PeerTls};

/// `--answer-timeout`'s default ([`zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT`]).
const ANSWER_TIMEOUT_SECS: u64 = zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT.as_secs();

#[derive(Debug, Parser)]
#[command(
    name = "zetaback-agent",
    version,
    about = "The zetaback node agent",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run one backup now, without Kubernetes (what a BackupJob does), and print the outcome.
    Backup(BackupArgs),
    /// Restore a stored backup (its full and incrementals) from a target agent into a dataset.
    Restore(RestoreArgs),
    /// Read stream files as the store's verifier does (paced to --rate, sha256) and print each
    /// file's bytes, seconds and sha256 (bench/verify compares it with `openssl dgst`).
    VerifyFiles(VerifyFilesArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyFilesArgs {
    /// Bytes per second at most, e.g. 50Mi (default: unlimited).
    #[arg(long)]
    rate: Option<String>,
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// This host's name (the store's `<host>` directory).
    #[arg(long, env = "ZETABACK_HOST_NAME")]
    host_name: String,
    #[arg(long, env = "ZETABACK_TOKEN_FILE")]
    token_file: PathBuf,
    /// The target agent, `host:port`.
    #[arg(long)]
    target: String,
    #[arg(long)]
    dataset: String,
    /// The snapshot to take (or reuse, if zetaback made it) and send.
    #[arg(long)]
    snapshot: String,
    /// Send an incremental against this snapshot.
    #[arg(long)]
    base_snapshot: Option<String>,
    /// Store as a file under this path on the target (must be its store root)...
    #[arg(long, conflicts_with = "target_dataset")]
    target_path: Option<String>,
    /// ...or receive under this dataset there (replica mode).
    #[arg(long)]
    target_dataset: Option<String>,
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    #[arg(long, default_value_t = 0)]
    bandwidth_limit: u64,
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Once the whole stream is sent, seconds the target may take to answer (fsync, receive
    /// commit); then its catalogue is asked whether it stored the backup as sent.
    #[arg(long, env = "ZETABACK_ANSWER_TIMEOUT", default_value_t = ANSWER_TIMEOUT_SECS)]
    answer_timeout: u64,
    #[arg(long)]
    keep_snapshots: bool,
    /// With --base-snapshot: send every snapshot in between too (`zfs send -I`).
    #[arg(long, requires = "base_snapshot")]
    intermediates: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Over TLS: the node whose agent the target must be (its certificate must name it).
    #[arg(long, requires = "tls_cert")]
    target_node: Option<String>,
    #[command(flatten)]
    zfs_limits: ZfsLimits,
}

/// Time limits on zfs commands.
#[derive(Debug, Clone, clap::Args)]
struct ZfsLimits {
    /// Kill a short zfs command (list, get, snapshot, hold, destroy, ...) still running after
    /// this many seconds, and fail what it was for; also the limit on a send or receive's exit
    /// once its stream ended (a receive commits then).
    #[arg(long, env = "ZETABACK_ZFS_TIMEOUT", default_value_t = 300)]
    zfs_timeout: u64,
    /// Kill a zfs send or receive that moved no data for this many seconds, and fail the job.
    /// Keep it below --idle-timeout, so that the error names the stuck command rather than
    /// the link.
    #[arg(long, env = "ZETABACK_ZFS_STALL_TIMEOUT", default_value_t = 45)]
    zfs_stall_timeout: u64,
}

impl ZfsLimits {
    fn timeouts(&self) -> zetaback_agent::zfs::Timeouts {
        zetaback_agent::zfs::Timeouts {
            command: Duration::from_secs(self.zfs_timeout.max(1)),
            stall: Duration::from_secs(self.zfs_stall_timeout.max(1)),
        }
    }
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    #[arg(long, env = "ZETABACK_TOKEN_FILE")]
    token_file: PathBuf,
    /// The target agent holding the backups, `host:port`.
    #[arg(long)]
    from: String,
    /// The source host whose backup is restored.
    #[arg(long)]
    host: String,
    #[arg(long)]
    dataset: String,
    /// The backup id (`<ts>.full` or `<ts>.incremental.<base-ts>`).
    #[arg(long)]
    backup: String,
    /// The dataset to receive into.
    #[arg(long)]
    into: String,
    /// Replace `into` if it exists (`zfs receive -F`).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Over TLS: the node whose agent `--from` must be (its certificate must name it).
    #[arg(long, requires = "tls_cert")]
    from_node: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    None,
    Zstd,
}

#[derive(Debug, clap::Args)]
struct Args {
    /// This agent's ZfsHost (required).
    #[arg(long, env = "ZETABACK_HOST_NAME")]
    host_name: Option<String>,
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
    /// Write stored streams through the page cache instead of with O_DIRECT (which is used
    /// where the file system allows it: less CPU per GiB, and a backup does not evict the
    /// host's useful pages).
    #[arg(long, env = "ZETABACK_NO_DIRECT_IO")]
    no_direct_io: bool,
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
    /// This agent's own token, presented to other agents' stores: in Kubernetes its pod's
    /// projected ServiceAccount token with the store's audience (read again for every job, as
    /// the kubelet rotates it). Required unless --no-kube.
    #[arg(long, env = "ZETABACK_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The audience callers' tokens must carry (checked by TokenReview).
    #[arg(long, env = "ZETABACK_STORE_AUDIENCE", default_value = zetaback_agent::identity::STORE_AUDIENCE)]
    store_audience: String,
    /// The controller's ServiceAccount, `namespace/name`: the only caller that may delete and
    /// archive backups (required unless --no-kube).
    #[arg(long, env = "ZETABACK_CONTROLLER_SERVICE_ACCOUNT")]
    controller_service_account: Option<ServiceAccountRef>,
    /// The agents' ServiceAccount, `namespace/name`: a token of it bound to a pod on node N
    /// is the agent of the ZfsHosts whose spec.nodeName is N (required unless --no-kube).
    #[arg(long, env = "ZETABACK_AGENT_SERVICE_ACCOUNT")]
    agent_service_account: Option<ServiceAccountRef>,
    /// ServiceAccounts that may read catalogues (`kubectl zetaback`), `namespace/name`.
    #[arg(
        long = "reader-service-account",
        env = "ZETABACK_READER_SERVICE_ACCOUNTS",
        value_delimiter = ','
    )]
    reader_service_accounts: Vec<ServiceAccountRef>,
    /// The ConfigMap, `namespace/name`, where the controller publishes the public key of its
    /// restore grants (default: `zetaback-grant-key` in the controller's namespace).
    #[arg(long, env = "ZETABACK_GRANT_KEY_CONFIGMAP")]
    grant_key_configmap: Option<ServiceAccountRef>,
    /// Without Kubernetes (--no-kube) only: who callers are, a JSON list of
    /// `{"token": …, "hosts": [...]}` (an agent) and `{"token": …, "role": "controller"}`.
    #[arg(long, env = "ZETABACK_IDENTITIES_FILE", conflicts_with_all = ["controller_service_account", "agent_service_account"])]
    identities_file: Option<PathBuf>,
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
    /// Abandon a stream that made no progress for this many seconds.
    #[arg(long, env = "ZETABACK_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Once a backup's whole stream is sent, seconds the target may take to answer (it fsyncs
    /// the file, or `zfs receive` commits); then its catalogue is asked whether it stored the
    /// backup exactly as sent (accepted if so).
    #[arg(long, env = "ZETABACK_ANSWER_TIMEOUT", default_value_t = ANSWER_TIMEOUT_SECS)]
    answer_timeout: u64,
    /// This host's keys for object-store targets: a JSON file
    /// `{"accessKeyId": "...", "secretAccessKey": "..."}`, scoped by the store's policy to
    /// this host's prefix, without delete (the controller holds the keys that delete).
    #[arg(long, env = "ZETABACK_OBJECT_STORE_CREDENTIALS")]
    object_store_credentials: Option<PathBuf>,
    /// Seconds between host inspections.
    #[arg(long, default_value_t = 30)]
    status_interval: u64,
    /// Refresh lastSeen at most this often (seconds) when nothing changed.
    #[arg(long, default_value_t = 60)]
    last_seen_every: u64,
    /// Only serve the stream API (no Kubernetes: benchmarks, a plain backup server).
    #[arg(long)]
    no_kube: bool,
    #[command(flatten)]
    zfs_limits: ZfsLimits,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Mutual TLS between zetaback's parts (issue 13): required unless `--insecure-plaintext`.
#[derive(Debug, Clone, clap::Args)]
struct TlsArgs {
    /// This agent's certificate chain (PEM) from the zetaback CA, naming
    /// `<node>.node.zetaback.io`: served to callers and presented to other agents' stores...
    #[arg(long, env = "ZETABACK_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// ...its private key (PEM)...
    #[arg(long, env = "ZETABACK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// ...and the zetaback CA bundle (PEM) that callers' and stores' certificates must chain to.
    #[arg(long, env = "ZETABACK_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// No TLS at all: streams, tokens and catalogues in plaintext, to and from anyone who
    /// answers at an endpoint. For tests and benchmarks on one machine only.
    #[arg(long, env = "ZETABACK_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_from_csr"])]
    insecure_plaintext: bool,
    /// Ask for this node's certificate through the CertificateSigningRequest API (signer
    /// --tls-signer-name: the release's controller) at start, with a key kept in memory only, instead of
    /// --tls-cert/--tls-key/--tls-ca; the CA comes from --tls-ca-configmap.
    #[arg(long, env = "ZETABACK_TLS_FROM_CSR", conflicts_with = "tls_cert")]
    tls_from_csr: bool,
    /// With --tls-from-csr: the ConfigMap holding the zetaback CA (`ca.crt`), `namespace/name`
    /// (default: zetaback-ca in the controller's namespace).
    #[arg(long, env = "ZETABACK_TLS_CA_CONFIGMAP")]
    tls_ca_configmap: Option<ServiceAccountRef>,
    /// With --tls-from-csr: the certificate's lifetime asked for, seconds.
    #[arg(long, env = "ZETABACK_TLS_CERT_LIFETIME", default_value_t = 24 * 3600)]
    tls_cert_lifetime: u64,
    /// With --tls-from-csr: seconds to wait for the certificate before exiting.
    #[arg(long, env = "ZETABACK_TLS_CSR_WAIT", default_value_t = 300)]
    tls_csr_wait: u64,
    /// With --tls-from-csr: the signer asked, the release's controller (the chart gives
    /// zetaback.io/<namespace>.<release>; the controller's --tls-signer-name).
    #[arg(long, env = "ZETABACK_TLS_SIGNER_NAME", default_value = zetaback_core::peer_tls::csr_policy::SIGNER_NAME)]
    tls_signer_name: String,
    /// With --tls-from-csr: renew the certificate when this many seconds of it are left
    /// (default: a third of its validity as issued). Must be shorter than
    /// --tls-cert-lifetime. Renewal asks for a new certificate with a new key and swaps it in
    /// without a restart.
    #[arg(long, env = "ZETABACK_TLS_RENEW_BEFORE")]
    tls_renew_before: Option<u64>,
    /// With --tls-cert: seconds between checks of the certificate, key and CA files; replaced
    /// files (a renewal) are used from the next connection on, without a restart.
    #[arg(long, env = "ZETABACK_TLS_RELOAD_INTERVAL", default_value_t = 60)]
    tls_reload_interval: u64,
}

impl TlsArgs {
    /// The TLS material, or `None` in the explicit plaintext mode.
    fn load(&self) -> anyhow::Result<Option<Arc<PeerTls>>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let tls = PeerTls::from_files(cert, key, ca)?;
                info!(identity = %tls.identity().dns_name(), "mutual TLS");
                Ok(Some(Arc::new(tls)))
            }
            _ if self.tls_from_csr => anyhow::bail!(
                "--tls-from-csr is for the agent's Kubernetes mode (the node's certificate comes through the apiserver)"
            ),
            _ if self.insecure_plaintext => {
                warn!(
                    "INSECURE PLAINTEXT (--insecure-plaintext): tokens and streams travel unencrypted and peers are not verified"
                );
                Ok(None)
            }
            _ => anyhow::bail!(
                "TLS is required: give --tls-cert, --tls-key and --tls-ca (the zetaback CA), or --insecure-plaintext for tests"
            ),
        }
    }
}

/// What one client may take of this agent's stream API (see the README's "Agent limits").
#[derive(Debug, Clone, clap::Args)]
struct LimitArgs {
    /// Connections served at once; one more is answered 503 and closed.
    #[arg(long, env = "ZETABACK_MAX_CONNECTIONS", default_value_t = 256)]
    max_connections: usize,
    /// Seconds a connection may take to send a request head (and stay idle between requests).
    #[arg(long, env = "ZETABACK_HEADER_READ_TIMEOUT", default_value_t = 30)]
    header_read_timeout: u64,
    /// Bytes one stream may have, as received (0 = no limit); over it: 413.
    #[arg(long, env = "ZETABACK_MAX_STREAM_BYTES", default_value_t = 0)]
    max_stream_bytes: u64,
    /// Bytes one source host may have in the file store, live and archived, and (counted
    /// apart) under the replica roots (0 = no quota); over it: 507.
    #[arg(long, env = "ZETABACK_HOST_QUOTA_BYTES", default_value_t = 0)]
    host_quota_bytes: u64,
    /// Free bytes the file store keeps: no new stream while less is free (507), and a stream
    /// being written is stopped when less than half of it is left.
    #[arg(long, env = "ZETABACK_STORE_MIN_FREE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    store_min_free_bytes: u64,
    /// Free bytes replica mode keeps on a pool it receives into (the same rules as
    /// --store-min-free-bytes, from `zfs get available`); unset: 5 % of the pool, at most 1 GiB.
    #[arg(long, env = "ZETABACK_REPLICA_MIN_FREE_BYTES")]
    replica_min_free_bytes: Option<u64>,
    /// Uploads at once; one more waits up to --slot-wait seconds, then gets 503.
    #[arg(long, env = "ZETABACK_MAX_UPLOADS", default_value_t = 4)]
    max_uploads: usize,
    /// Downloads (restores reading stored streams) at once; likewise.
    #[arg(long, env = "ZETABACK_MAX_DOWNLOADS", default_value_t = 4)]
    max_downloads: usize,
    /// Seconds a stream waits for a free upload or download slot.
    #[arg(long, env = "ZETABACK_SLOT_WAIT", default_value_t = 20)]
    slot_wait: u64,
    /// The largest zstd window a compressed stream may ask for, as a power of two (a frame
    /// asking for more is refused, not allocated).
    #[arg(long, env = "ZETABACK_ZSTD_WINDOW_LOG_MAX", default_value_t = zetaback_agent::limits::DEFAULT_ZSTD_WINDOW_LOG_MAX,
          value_parser = clap::value_parser!(u32).range(10..=31))]
    zstd_window_log_max: u32,
    /// Seconds a catalogue scan is reused while nothing is written through this agent.
    #[arg(long, env = "ZETABACK_CATALOGUE_MAX_AGE", default_value_t = 10)]
    catalogue_max_age: u64,
}

impl LimitArgs {
    fn listener(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_secs(self.header_read_timeout.max(1)),
        }
    }

    fn store(&self) -> StoreLimits {
        StoreLimits {
            max_stream_bytes: (self.max_stream_bytes > 0).then_some(self.max_stream_bytes),
            host_quota_bytes: (self.host_quota_bytes > 0).then_some(self.host_quota_bytes),
            min_free_bytes: self.store_min_free_bytes,
            replica_min_free_bytes: self.replica_min_free_bytes,
            max_uploads: self.max_uploads.max(1),
            max_downloads: self.max_downloads.max(1),
            slot_wait: Duration::from_secs(self.slot_wait),
            zstd_window_log_max: self.zstd_window_log_max,
            catalogue_max_age: Duration::from_secs(self.catalogue_max_age),
        }
    }
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
    zetaback_core::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Backup(a)) => backup(a).await,
        Some(Command::Restore(a)) => restore(a).await,
        Some(Command::VerifyFiles(a)) => verify_files(a),
        None => serve_agent(cli.serve).await,
    }
}

/// `verify-files`: one line per file, `<sha256>  <path>  <bytes> bytes  <seconds> s`, then the
/// total and its rate.
fn verify_files(a: VerifyFilesArgs) -> anyhow::Result<()> {
    let rate = match &a.rate {
        Some(r) => zetaback_core::bytesize::parse_byte_size(r)?,
        None => 0,
    };
    let start = std::time::Instant::now();
    let mut total = 0u64;
    for f in &a.files {
        let t = std::time::Instant::now();
        let (bytes, sha256) = zetaback_agent::filestore::verify_file(f, rate)?;
        total += bytes;
        println!(
            "{sha256}  {}  {bytes} bytes  {:.3} s",
            f.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "total {total} bytes in {secs:.3} s: {:.1} MB/s",
        total as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}

async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    use zetaback_core::api::backup_policy::{Compression, Target};
    use zetaback_core::api::{BackupJobSpec, BackupType};
    let token = read_token(&a.token_file)?;
    let zfs = Zfs::detect_with(a.zfs_limits.timeouts()).await?;
    let spec = BackupJobSpec {
        policy: "manual".into(),
        host: a.host_name.as_str().into(),
        dataset: a.dataset.as_str().into(),
        backup_type: if a.base_snapshot.is_some() {
            BackupType::Incremental
        } else {
            BackupType::Full
        },
        base_snapshot: a.base_snapshot,
        snapshot: a.snapshot,
        target: Target {
            host: Some("manual".into()),
            path: a.target_path,
            dataset: a.target_dataset.map(|d| d.as_str().into()),
            object_store: None,
        },
        compression: match a.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Zstd => Compression::Zstd,
        },
        intermediates: a.intermediates,
    };
    let tls = a.tls.load()?;
    let settings = JobSettings {
        tls: tls.clone(),
        bandwidth_limit: a.bandwidth_limit,
        prune_snapshots: !a.keep_snapshots,
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
        answer_timeout: Duration::from_secs(a.answer_timeout.max(1)),
        object_store_credentials: None,
    };
    let endpoint = over_tls(
        zetaback_agent::transfer::Endpoint::new(&a.target, token),
        tls.as_deref(),
        a.target_node.as_deref(),
    )?;
    let out =
        zetaback_agent::job::run(&zfs, &a.host_name, &spec, None, &endpoint, &settings).await?;
    println!(
        "{}",
        serde_json::json!({
            "backupId": out.backup_id,
            "bytes": out.bytes,
            "sha256": out.sha256,
            "bytesPerSecond": out.bytes_per_second,
            "replica": out.replica,
            "estimatedBytes": out.estimated_bytes,
            "streamBytes": out.stream_bytes,
        })
    );
    Ok(())
}

async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let token = read_token(&a.token_file)?;
    let zfs = Zfs::detect().await?;
    let tls = a.tls.load()?;
    let endpoint = over_tls(
        zetaback_agent::transfer::Endpoint::new(&a.from, token),
        tls.as_deref(),
        a.from_node.as_deref(),
    )?;
    let r = zetaback_agent::restore::restore(
        &zfs, &endpoint, &a.host, &a.dataset, &a.backup, &a.into, a.force,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"chain": r.chain, "bytes": r.bytes, "into": a.into})
    );
    Ok(())
}

/// `endpoint` over mutual TLS to the agent of `node` (required with TLS).
fn over_tls(
    endpoint: zetaback_agent::transfer::Endpoint,
    tls: Option<&PeerTls>,
    node: Option<&str>,
) -> anyhow::Result<zetaback_agent::transfer::Endpoint> {
    let Some(tls) = tls else {
        return Ok(endpoint);
    };
    let Some(node) = node else {
        anyhow::bail!(
            "over TLS, name the node whose agent the target must be (--target-node / --from-node)"
        );
    };
    Ok(endpoint.over_tls(tls, PeerIdentity::node(node)?)?)
}

async fn serve_agent(args: Args) -> anyhow::Result<()> {
    let Some(host_name) = args.host_name.clone() else {
        anyhow::bail!("--host-name is required (see --help)");
    };
    let (client, auth, token, grants): (
        Option<kube::Client>,
        Arc<dyn Authenticator>,
        Option<TokenFile>,
        Option<zetaback_agent::identity::grants::GrantKey>,
    ) = if args.no_kube {
        let Some(file) = &args.identities_file else {
            anyhow::bail!("--no-kube needs --identities-file (who may call this store)");
        };
        (
            None,
            Arc::new(StaticIdentities::from_file(file)?),
            None,
            None,
        )
    } else {
        let (Some(token_file), Some(controller), Some(agents)) = (
            args.token_file.clone(),
            args.controller_service_account.clone(),
            args.agent_service_account.clone(),
        ) else {
            anyhow::bail!(
                "--token-file, --controller-service-account and --agent-service-account are required (see --help)"
            );
        };
        if args.identities_file.is_some() {
            anyhow::bail!(
                "--identities-file is for --no-kube only: in Kubernetes callers are checked by TokenReview"
            );
        }
        let token = TokenFile::new(token_file);
        token.read()?;
        let client = kube_client(args.kubeconfig.as_ref()).await?;
        let grant_cm = args
            .grant_key_configmap
            .clone()
            .unwrap_or(ServiceAccountRef {
                namespace: controller.namespace.clone(),
                name: zetaback_agent::identity::grants::DEFAULT_CONFIGMAP.into(),
            });
        let grants = zetaback_agent::identity::grants::GrantKey::config_map(
            client.clone(),
            &grant_cm.namespace,
            &grant_cm.name,
        );
        let reviewer = TokenReviewer::new(
            client.clone(),
            TokenReviewConfig {
                audience: args.store_audience.clone(),
                controller,
                agents,
                readers: args.reader_service_accounts.clone(),
            },
        );
        (Some(client), Arc::new(reviewer), Some(token), Some(grants))
    };
    let zfs = Zfs::detect_with(args.zfs_limits.timeouts())
        .await
        .context("detecting the local zfs")?;
    info!(capabilities = ?zfs.capabilities().names(), "zfs capabilities");

    let store = match &args.store_root {
        Some(root) => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("creating store root {}", root.display()))?;
            let store = FileStore::new(root).with_direct_io(!args.no_direct_io);
            let (removed, finished) = store.recover().await?;
            if removed > 0 {
                warn!(removed, "removed half-written streams left by a crash");
            }
            if finished > 0 {
                warn!(finished, "finished archives a crash cut short");
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
    let client_tls = match (&client, args.tls.tls_from_csr) {
        (Some(client), true) => {
            let controller_ns = args
                .controller_service_account
                .as_ref()
                .map(|c| c.namespace.clone())
                .unwrap_or_default();
            let cm = args
                .tls
                .tls_ca_configmap
                .clone()
                .unwrap_or(ServiceAccountRef {
                    namespace: controller_ns,
                    name: "zetaback-ca".into(),
                });
            zetaback_core::peer_tls::csr_policy::validate_signer_name(&args.tls.tls_signer_name)
                .context("--tls-signer-name")?;
            let lifetime = args.tls.tls_cert_lifetime.max(600);
            let renew_before = args.tls.tls_renew_before.map(Duration::from_secs);
            if let Some(before) = args.tls.tls_renew_before
                && before >= lifetime
            {
                anyhow::bail!(
                    "--tls-renew-before ({before} s) must be shorter than the certificate's lifetime ({lifetime} s)"
                );
            }
            let settings = zetaback_agent::csr_client::CsrSettings {
                node: args.node_name.clone(),
                ca_configmap: (cm.namespace, cm.name),
                lifetime: Duration::from_secs(lifetime),
                wait: Duration::from_secs(args.tls.tls_csr_wait.max(1)),
                signer_name: args.tls.tls_signer_name.clone(),
            };
            let obtained = zetaback_agent::csr_client::obtain(client, &settings)
                .await
                .context(
                    "getting this node's certificate through the CertificateSigningRequest API",
                )?;
            info!(identity = %obtained.tls.identity().dns_name(), csr = %obtained.request, "mutual TLS");
            let tls = Arc::new(obtained.tls);
            tokio::spawn(zetaback_agent::tls_renewal::renew_from_csr(
                client.clone(),
                tls.clone(),
                settings,
                renew_before,
            ));
            Some(tls)
        }
        _ => {
            let tls = args.tls.load()?;
            if let (Some(t), Some(cert), Some(key), Some(ca)) = (
                &tls,
                &args.tls.tls_cert,
                &args.tls.tls_key,
                &args.tls.tls_ca,
            ) {
                tokio::spawn(zetaback_agent::tls_renewal::reload_files(
                    t.clone(),
                    zetaback_core::peer_tls::reload::FileSet::new(
                        cert.clone(),
                        key.clone(),
                        ca.clone(),
                    ),
                    Duration::from_secs(args.tls.tls_reload_interval.max(1)),
                ));
            }
            tls
        }
    };
    let tls = client_tls.clone();
    let mut state = ServerState::new(auth, store, replica);
    if tls.is_some() {
        state = state.with_certificates_required();
    }
    if let Some(g) = grants {
        state = state.with_grant_key(g);
    }
    let state = state
        .with_idle_timeout(Duration::from_secs(args.idle_timeout.max(1)))
        .with_limits(args.limits.store());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    info!(%local, "stream API listening");
    let server = tokio::spawn(zetaback_agent::listener::serve_peer(
        listener,
        zetaback_agent::store_server::router(state),
        args.limits.listener(),
        tls,
    ));

    let (Some(client), Some(token)) = (client, token) else {
        server.await??;
        return Ok(());
    };
    let advertise = args
        .advertise
        .clone()
        .or_else(|| (!local.ip().is_unspecified()).then(|| local.to_string()));
    let runner = Arc::new(Runner::new(
        client.clone(),
        zfs.clone(),
        RunnerConfig {
            host_name: host_name.clone(),
            agent_id: format!("{host_name}@{}", args.node_name),
            concurrency: args.concurrency,
            token: token.clone(),
            settings: JobSettings {
                tls: client_tls.clone(),
                bandwidth_limit: args.bandwidth_limit,
                prune_snapshots: !args.keep_snapshots,
                idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
                answer_timeout: Duration::from_secs(args.answer_timeout.max(1)),
                object_store_credentials: args.object_store_credentials.clone(),
            },
        },
    ));
    let restores = Arc::new(zetaback_agent::restore::RestoreRunner::new(
        client.clone(),
        zfs.clone(),
        zetaback_agent::restore::RestoreRunnerConfig {
            host_name: host_name.clone(),
            agent_id: format!("{host_name}@{}", args.node_name),
            token: token.clone(),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            progress_every: Duration::from_secs(1),
            zstd_window_log_max: args.limits.zstd_window_log_max,
            tls: client_tls.clone(),
            object_store_credentials: args.object_store_credentials.clone(),
        },
    ));
    let disc = tokio::spawn(discovery::run(
        kube::Api::all(client),
        zfs,
        DiscoveryConfig {
            host_name: host_name.clone(),
            agent_endpoint: advertise,
            interval: Duration::from_secs(args.status_interval.max(1)),
            last_seen_every: Duration::from_secs(args.last_seen_every.max(1)),
        },
        runner.job_finished.clone(),
    ));
    tokio::select! {
        r = server => { r??; }
        r = runner.run() => { r?; }
        r = restores.run() => { r?; }
        r = disc => { r?; }
        () = termination() => {
            // A job cut here is what a crash leaves: nothing partial is a backup, the
            // controller retries it (the same as the SIGKILL after the grace period, sooner).
            info!("SIGTERM or interrupt: stopping");
        }
    }
    Ok(())
}

/// SIGTERM (a pod's deletion) or SIGINT. As a container's PID 1 the agent gets no default
/// action for either: without this it ignored its pod's SIGTERM and was killed at the end of
/// the grace period (exit 137), which made every DaemonSet rollout wait 30 s per node.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = interrupt => {}, _ = term.recv() => {} }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM: only SIGINT stops the agent");
            let _ = interrupt.await;
        }
    }
}
