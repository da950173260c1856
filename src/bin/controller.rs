//! `zetaback-controller`: reconciles BackupPolicies, Restores and FallbackRoutes.

use clap::Parser;

/// The zetaback controller. Several replicas may run; the one holding the Lease acts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespace of the leader-election Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "zetaback-system")]
    lease_namespace: String,
    /// This replica's identity (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ZETABACK_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "ZETABACK_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// A file holding the controller's own token for backup hosts' agents: its projected
    /// ServiceAccount token with the stores' audience (`zetaback-store`), read again for every
    /// request as the kubelet rotates it.
    #[arg(long, env = "ZETABACK_STORE_TOKEN_FILE")]
    store_token_file: Option<std::path::PathBuf>,
    /// A ZfsHost whose agent has not reported for this long is unreachable (e.g. 90s, 5m).
    #[arg(long, env = "ZETABACK_HOST_STALE_AFTER", default_value = "90s")]
    host_stale_after: String,
    /// Refresh each BackupPolicy's `status.lastEvaluated` at least this often, so monitoring
    /// (`kubectl zetaback violators`) tells a running controller from a dead one.
    #[arg(long, env = "ZETABACK_STATUS_HEARTBEAT", default_value = "5m")]
    status_heartbeat: String,
    /// Proxy images a FallbackRoute may name in spec.image, comma-separated (the default proxy
    /// image is always allowed); a route naming another is refused.
    #[arg(long, env = "ZETABACK_ALLOWED_PROXY_IMAGES", value_delimiter = ',')]
    allowed_proxy_images: Vec<String>,
    /// The controller's certificate (PEM) from the zetaback CA, naming
    /// `controller.zetaback.io`, for mutual TLS with the stores...
    #[arg(long, env = "ZETABACK_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// ...its private key (PEM)...
    #[arg(long, env = "ZETABACK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// ...and the zetaback CA bundle (PEM) the stores' certificates must chain to.
    #[arg(long, env = "ZETABACK_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-cert: seconds between checks of the certificate, key and CA files; replaced
    /// files (a renewal) are used for the next connections, without a restart.
    #[arg(long, env = "ZETABACK_TLS_RELOAD_INTERVAL", default_value_t = 60)]
    tls_reload_interval: u64,
    /// Talk to the stores in plaintext, with bearer tokens, to whoever answers at an
    /// endpoint. For tests on one machine only.
    #[arg(long, env = "ZETABACK_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_ca_secret"])]
    insecure_plaintext: bool,
    /// Be the zetaback CA (instead of --tls-cert/--tls-key/--tls-ca): the CA is kept in this
    /// Secret of the controller's namespace (made at the first start), its certificate
    /// published in ConfigMap zetaback-ca there; the controller signs its own certificate and
    /// the agents' CertificateSigningRequests (signer --tls-signer-name), each only for the node
    /// its requester's token is bound to.
    #[arg(long, env = "ZETABACK_TLS_CA_SECRET", conflicts_with = "tls_cert")]
    tls_ca_secret: Option<String>,
    /// With --tls-ca-secret: the agents' ServiceAccount, `namespace/name` (default
    /// zetaback-agent in the controller's namespace), the only requester of node certificates.
    #[arg(long, env = "ZETABACK_AGENT_SERVICE_ACCOUNT")]
    agent_service_account: Option<String>,
    /// With --tls-ca-secret: the longest node certificate issued (e.g. 7d, 24h).
    #[arg(long, env = "ZETABACK_TLS_MAX_CERT_LIFETIME", default_value = "7d")]
    tls_max_cert_lifetime: String,
    /// With --tls-ca-secret: the signer name this controller answers, one per release (the
    /// chart gives zetaback.io/<namespace>.<release>; requests to other signers, e.g. another
    /// release's agents', are left alone). Agents must ask the same one.
    #[arg(long, env = "ZETABACK_TLS_SIGNER_NAME", default_value = zetaback::peer_tls::csr_policy::SIGNER_NAME)]
    tls_signer_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zetaback::telemetry::init();
    let args = Args::parse();
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    if let Some(path) = &args.store_token_file {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading --store-token-file {}: {e}", path.display()))?;
    }
    let host_stale_after = zetaback::duration::parse_duration(&args.host_stale_after)
        .map_err(|e| anyhow::anyhow!("--host-stale-after: {e}"))?;
    let status_heartbeat = zetaback::duration::parse_duration(&args.status_heartbeat)
        .map_err(|e| anyhow::anyhow!("--status-heartbeat: {e}"))?;
    let store_tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let tls = zetaback::peer_tls::PeerTls::from_files(cert, key, ca)?;
            if *tls.identity() != zetaback::peer_tls::PeerIdentity::Controller {
                anyhow::bail!(
                    "--tls-cert names {}, not the controller ({})",
                    tls.identity(),
                    zetaback::peer_tls::CONTROLLER_NAME
                );
            }
            let tls = std::sync::Arc::new(tls);
            let mut files =
                zetaback::peer_tls::reload::FileSet::new(cert.clone(), key.clone(), ca.clone());
            let every = std::time::Duration::from_secs(args.tls_reload_interval.max(1));
            let watched = tls.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match files.changed() {
                        None => {}
                        Some(Ok(next)) => match watched.replace(next) {
                            Ok(()) => tracing::info!(
                                generation = watched.generation(),
                                "TLS certificate files replaced: new connections present the new certificate"
                            ),
                            Err(e) => {
                                tracing::warn!(error = %e, "new TLS certificate files not used")
                            }
                        },
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "TLS certificate files changed but cannot be used (yet)")
                        }
                    }
                }
            });
            Some(tls)
        }
        _ if args.tls_ca_secret.is_some() => None,
        _ if args.insecure_plaintext => {
            tracing::warn!(
                "INSECURE PLAINTEXT (--insecure-plaintext): store tokens and catalogues travel unencrypted and stores are not verified"
            );
            None
        }
        _ => anyhow::bail!(
            "TLS is required: give --tls-ca-secret (the controller is the CA), or --tls-cert, --tls-key and --tls-ca (the zetaback CA), or --insecure-plaintext for tests"
        ),
    };
    let client = kube::Client::try_default().await?;
    let store_tls = match &args.tls_ca_secret {
        Some(secret) => {
            let max_lifetime = zetaback::duration::parse_duration(&args.tls_max_cert_lifetime)
                .map_err(|e| anyhow::anyhow!("--tls-max-cert-lifetime: {e}"))?;
            zetaback::peer_tls::csr_policy::validate_signer_name(&args.tls_signer_name)
                .map_err(|e| anyhow::anyhow!("--tls-signer-name: {e}"))?;
            let agents = match &args.agent_service_account {
                Some(sa) => {
                    let (ns, name) = sa.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!("--agent-service-account: expected namespace/name")
                    })?;
                    zetaback::peer_tls::csr_policy::service_account_username(ns, name)
                }
                None => zetaback::peer_tls::csr_policy::service_account_username(
                    &args.lease_namespace,
                    "zetaback-agent",
                ),
            };
            Some(
                zetaback::controller::ca_store::start_signer(
                    &client,
                    &args.lease_namespace,
                    secret,
                    zetaback::controller::csr_signer::SignerConfig {
                        agents_username: agents,
                        max_lifetime,
                        signer_name: args.tls_signer_name.clone(),
                    },
                )
                .await?,
            )
        }
        None => store_tls,
    };
    zetaback::controller::run(
        client,
        zetaback::controller::Options {
            lease_namespace: args.lease_namespace,
            identity,
            metrics_addr: args.metrics_addr,
            watch_namespace: args.watch_namespace,
            store_token: None,
            store_token_file: args.store_token_file,
            grant_signer: None,
            host_stale_after,
            status_heartbeat,
            allowed_proxy_images: args.allowed_proxy_images,
            store_tls,
        },
        zetaback::controller::shutdown_signal(),
    )
    .await
}
