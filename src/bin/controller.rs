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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zetaback::telemetry::init();
    let args = Args::parse();
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let client = kube::Client::try_default().await?;
    zetaback::controller::run(
        client,
        zetaback::controller::Options {
            lease_namespace: args.lease_namespace,
            identity,
            metrics_addr: args.metrics_addr,
            watch_namespace: args.watch_namespace,
        },
        zetaback::controller::shutdown_signal(),
    )
    .await
}
