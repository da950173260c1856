//! Host discovery: keeps this agent's ZfsHost status current (pools, matching datasets and
//! our snapshots, capabilities, agent version and endpoint, lastSeen), writing only when
//! something changed or when lastSeen is older than `last_seen_every`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info_span, warn};
use zetaback_core::api::{ZfsHost, ZfsHostStatus};
use zetaback_core::conditions::status_changed;

use crate::hostinfo::{DatasetMatcher, build_status};
use crate::zfs::Zfs;

/// Settings of the discovery loop.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub host_name: String,
    /// Published as `status.agentEndpoint` (`host:port`).
    pub agent_endpoint: Option<String>,
    /// How often the host is inspected.
    pub interval: Duration,
    /// lastSeen is refreshed at most this often when nothing else changed.
    pub last_seen_every: Duration,
}

/// Why a discovery pass failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading ZfsHost {0}: {1}")]
    Get(String, #[source] kube::Error),
    #[error("writing ZfsHost {0} status: {1}")]
    Write(String, #[source] kube::Error),
    #[error(transparent)]
    Zfs(#[from] crate::zfs::ZfsError),
    #[error("ZfsHost {0} has an invalid dataset pattern: {1}")]
    Pattern(String, String),
}

/// Whether a new status must be written.
pub fn should_write(
    previous: Option<&ZfsHostStatus>,
    next: &ZfsHostStatus,
    now: jiff::Timestamp,
    last_seen_every: Duration,
) -> bool {
    let Some(prev) = previous else { return true };
    if status_changed(prev, next) {
        return true;
    }
    match &prev.last_seen {
        None => true,
        Some(Time(t)) => {
            let age = now.duration_since(*t);
            age.as_secs_f64() >= last_seen_every.as_secs_f64()
        }
    }
}

/// One pass: inspect and maybe write. Returns whether a write happened.
pub async fn pass(
    hosts: &Api<ZfsHost>,
    zfs: &Zfs,
    cfg: &DiscoveryConfig,
) -> Result<bool, DiscoveryError> {
    let host = hosts
        .get(&cfg.host_name)
        .await
        .map_err(|e| DiscoveryError::Get(cfg.host_name.clone(), e))?;
    let matcher = DatasetMatcher::new(&host.spec.datasets)
        .map_err(|e| DiscoveryError::Pattern(cfg.host_name.clone(), e.to_string()))?;
    let inventory = zfs.inventory(None).await?;
    let pools = zfs.pools().await?;
    let now = jiff::Timestamp::now();
    let status = build_status(
        host.status.as_ref(),
        host.metadata.generation,
        &matcher,
        &inventory,
        &pools,
        zfs.capabilities(),
        cfg.agent_endpoint.as_deref(),
        now,
    );
    if !should_write(host.status.as_ref(), &status, now, cfg.last_seen_every) {
        return Ok(false);
    }
    let patch = serde_json::json!({ "status": status });
    hosts
        .patch_status(
            &cfg.host_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| DiscoveryError::Write(cfg.host_name.clone(), e))?;
    debug!(datasets = status.dataset_count, "wrote ZfsHost status");
    Ok(true)
}

/// Runs discovery forever: every `interval`, or sooner when `wake` is notified (after a job).
pub async fn run(hosts: Api<ZfsHost>, zfs: Zfs, cfg: DiscoveryConfig, wake: Arc<Notify>) {
    loop {
        let span = info_span!("discovery", host = %cfg.host_name);
        if let Err(e) = pass(&hosts, &zfs, &cfg).instrument(span).await {
            warn!(error = %e, "host discovery failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_on_change_or_stale_last_seen() {
        let t = |s| jiff::Timestamp::from_second(s).expect("t");
        let every = Duration::from_secs(60);
        let a = ZfsHostStatus {
            last_seen: Some(Time(t(1000))),
            dataset_count: Some(1),
            ..Default::default()
        };
        let mut b = a.clone();
        b.last_seen = Some(Time(t(1030)));
        assert!(should_write(None, &b, t(1030), every));
        assert!(!should_write(Some(&a), &b, t(1030), every));
        assert!(should_write(Some(&a), &b, t(1060), every));
        b.dataset_count = Some(2);
        assert!(should_write(Some(&a), &b, t(1030), every));
    }
}
