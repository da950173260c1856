//! What the controller created or deleted that its BackupJob watch has not shown yet
//! ([`Expectations`]), so that a reconcile reading the watch cache neither creates a job twice
//! nor counts a deleted one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::{BackupJob, JobPhase};

/// Jobs the controller created or deleted that its watch has not shown yet, per policy: a
/// reconcile reads the watch cache, so without these a job created a moment ago would look
/// absent (and be created again under a new name), or a deleted one present.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: std::sync::Mutex<HashMap<(String, String), Expected>>,
}

#[derive(Debug, Default)]
struct Expected {
    created: HashMap<String, (Arc<BackupJob>, std::time::Instant)>,
    deleted: HashMap<String, std::time::Instant>,
}

/// An expectation the watch never confirms (the job was deleted at once, a lost event) is
/// dropped after this long.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Expected>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The policy's jobs as the controller knows them: the cached ones, less those it
    /// deleted, plus those it created that the cache does not show yet. Expectations the
    /// cache confirms (or that are older than [`EXPECTATION_TTL`]) are dropped.
    pub fn adjust(
        &self,
        namespace: &str,
        policy: &str,
        mut cached: Vec<Arc<BackupJob>>,
    ) -> Vec<Arc<BackupJob>> {
        let mut all = self.lock();
        let key = (namespace.to_owned(), policy.to_owned());
        let Some(e) = all.get_mut(&key) else {
            return cached;
        };
        let names: std::collections::HashSet<String> =
            cached.iter().map(|j| j.name_any()).collect();
        e.created
            .retain(|name, (_, at)| !names.contains(name) && at.elapsed() < EXPECTATION_TTL);
        e.deleted
            .retain(|name, at| names.contains(name) && at.elapsed() < EXPECTATION_TTL);
        cached.retain(|j| !e.deleted.contains_key(&j.name_any()));
        cached.extend(e.created.values().map(|(j, _)| j.clone()));
        if e.created.is_empty() && e.deleted.is_empty() {
            all.remove(&key);
        }
        cached
    }

    /// How many jobs of policies other than `namespace/policy` are in flight into the backup
    /// host `target`: those in `cached` (the watch cache's jobs of other policies at that
    /// target) plus those other policies created that the cache does not show yet.
    pub fn in_flight_elsewhere(
        &self,
        namespace: &str,
        policy: &str,
        target: &str,
        cached: &[Arc<BackupJob>],
    ) -> u32 {
        let seen: std::collections::HashSet<(Option<&str>, String)> = cached
            .iter()
            .map(|j| (j.metadata.namespace.as_deref(), j.name_any()))
            .collect();
        let mut n = cached.iter().filter(|j| in_flight(j)).count();
        let all = self.lock();
        for ((ns, p), e) in all.iter() {
            if ns == namespace && p == policy {
                continue;
            }
            n += e
                .created
                .values()
                .filter(|(j, at)| {
                    at.elapsed() < EXPECTATION_TTL
                        && j.spec.target.key() == target
                        && in_flight(j)
                        && !seen.contains(&(j.metadata.namespace.as_deref(), j.name_any()))
                })
                .count();
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether no expectation is left (for the tests).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn created(&self, namespace: &str, policy: &str, job: BackupJob) {
        let mut all = self.lock();
        let e = all
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        e.created
            .insert(job.name_any(), (Arc::new(job), std::time::Instant::now()));
    }

    pub fn deleted(&self, namespace: &str, policy: &str, name: &str) {
        let mut all = self.lock();
        let e = all
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        e.deleted.insert(name.to_owned(), std::time::Instant::now());
    }
}

/// Whether a job is Pending or Running.
fn in_flight(job: &BackupJob) -> bool {
    matches!(
        job.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        JobPhase::Pending | JobPhase::Running
    )
}
