//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): several controller
//! replicas may run; one acts.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Options;

/// The Lease's name.
pub const LEASE_NAME: &str = "zetaback-controller";
const LEASE_SECONDS: u64 = 15;
const RENEW_BEFORE_SECONDS: u64 = 5;
/// How long giving the lease up may take before the replica moves on without it.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A held lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this replica holds the lease; `reached` is called once the Lease was reached
/// (this replica stands by from then on).
pub async fn acquire(
    client: Client,
    options: &Options,
    reached: impl FnOnce(),
) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(options.lease_namespace.clone())
        .with_identity(options.identity.clone())
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_BEFORE_SECONDS)
        .build()
        .await?;
    reached();
    let (mut state, task) = manager.watch().await;
    info!(lease = LEASE_NAME, namespace = %options.lease_namespace, "waiting for leadership");
    while !*state.borrow_and_update() {
        state.changed().await?;
    }
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves when the lease is lost (or the lease task ends), with a reason.
    pub async fn lost(&mut self) -> String {
        loop {
            if self.state.changed().await.is_err() {
                return "lease task ended".into();
            }
            if !*self.state.borrow() {
                return "lease taken by another replica".into();
            }
        }
    }

    /// Gives the lease up so another replica can take over at once. Bounded by
    /// [`RELEASE_TIMEOUT`]: with the apiserver unreachable the lease simply expires.
    pub async fn release(self) {
        drop(self.state);
        let mut task = self.task;
        let release = async {
            if let Ok(Ok(manager)) = (&mut task).await {
                let _ = manager.release().await;
            }
        };
        if tokio::time::timeout(RELEASE_TIMEOUT, release)
            .await
            .is_err()
        {
            // Stopped, so that it cannot release a lease this replica holds again later.
            task.abort();
            warn!(
                lease = LEASE_NAME,
                "releasing the lease timed out; it will expire instead"
            );
        }
    }
}
