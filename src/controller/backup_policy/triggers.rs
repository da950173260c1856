//! Which ZfsHost changes re-evaluate which policies: [`HostTriggers`] (a change a policy's
//! decision depends on, or a host back after a gap) and the watch wiring that maps a host to
//! the policies selecting it or storing on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use tracing::warn;

use super::super::Context;
use super::selects_host;
use crate::api::{BackupPolicy, ZfsHost};

/// Which ZfsHost changes re-evaluate the policies that select the host (or store on it): a
/// change of what a policy reads from it (labels, spec, agent endpoint, the datasets with
/// their class, exclusion and snapshots), or a report after a gap longer than the staleness
/// limit (the host is back online). A heartbeat that only moves `lastSeen` (or sizes) does
/// not: the policy's own timers cover a host that stops reporting.
#[derive(Debug, Default)]
pub struct HostTriggers {
    seen: HashMap<String, (u64, Option<Timestamp>)>,
}

impl HostTriggers {
    /// What of a host a policy's decision depends on, hashed.
    pub fn fingerprint(host: &ZfsHost) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.metadata.generation.hash(&mut h);
        host.metadata.labels.hash(&mut h);
        host.spec.paused.hash(&mut h);
        if let Some(st) = &host.status {
            st.agent_endpoint.hash(&mut h);
            for d in &st.datasets {
                (&d.name, &d.class, d.excluded, &d.snapshots).hash(&mut h);
            }
        }
        h.finish()
    }

    /// Whether this change of `host` should trigger the policies that use it (and remembers
    /// it as the last one seen).
    pub fn changed(&mut self, host: &ZfsHost, stale_after: Duration) -> bool {
        let print = Self::fingerprint(host);
        let seen = host
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0);
        let stale =
            jiff::SignedDuration::try_from(stale_after).unwrap_or(jiff::SignedDuration::MAX);
        let trigger = match self.seen.get(&host.name_any()) {
            None => true,
            Some((before, before_seen)) => {
                *before != print
                    || match (before_seen, seen) {
                        (None, Some(_)) => true,
                        (Some(a), Some(b)) => b.duration_since(*a) > stale,
                        _ => false,
                    }
            }
        };
        self.seen.insert(host.name_any(), (print, seen));
        trigger
    }

    /// Forgets the hosts `exists` denies (deleted ZfsHosts: the watch's subscription shows no
    /// deletions), once more are remembered than the `known` hosts plus [`FORGET_SLACK`], so
    /// a fleet whose hosts come and go does not grow this forever.
    pub fn forget_deleted(&mut self, known: usize, exists: impl Fn(&str) -> bool) {
        if self.seen.len() > known + FORGET_SLACK {
            self.seen.retain(|name, _| exists(name));
        }
    }

    /// How many hosts are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no host is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// How many deleted hosts [`HostTriggers`] may remember before it forgets them.
pub(super) const FORGET_SLACK: usize = 64;

/// The policies (from the controller's own cache) that select `host` or store on it.
fn policies_using(
    policies: &kube::runtime::reflector::Store<kube::core::DeserializeGuard<BackupPolicy>>,
    host: &ZfsHost,
) -> Vec<kube::runtime::reflector::ObjectRef<kube::core::DeserializeGuard<BackupPolicy>>> {
    let name = host.name_any();
    policies
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|p| selects_host(p, host) || p.spec.target.host_name() == name)
        .map(|p| object_ref(&p.name_any(), p.namespace().as_deref()))
        .collect()
}

/// The reference to object `name` in namespace `ns` (cluster-scoped without one).
pub(super) fn object_ref<K>(name: &str, ns: Option<&str>) -> kube::runtime::reflector::ObjectRef<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    let r = kube::runtime::reflector::ObjectRef::new(name);
    match ns {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// Takes a shared watch's subscription out of its slot in the context (each is taken once, by
/// the controller it triggers).
pub(super) fn take_subscription<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// A ZfsHost's change that matters ([`HostTriggers`]) re-evaluates the policies that select
/// the host or store on it, so a new dataset or a host back online gets its backup at once
/// instead of at the next timed requeue.
pub(super) fn watch_hosts(
    controller: kube::runtime::Controller<kube::core::DeserializeGuard<BackupPolicy>>,
    ctx: &Context,
) -> kube::runtime::Controller<kube::core::DeserializeGuard<BackupPolicy>> {
    use futures::StreamExt;
    let Some(events) = take_subscription(&ctx.host_events) else {
        warn!("the ZfsHost subscription was taken already; host changes will not trigger");
        return controller;
    };
    let stale_after = ctx.host_stale_after;
    let mut triggers = HostTriggers::default();
    let hosts = ctx.hosts.clone();
    let changed = events.filter(move |host| {
        let trigger = triggers.changed(host, stale_after);
        triggers.forget_deleted(hosts.len(), |name| {
            hosts
                .get(&kube::runtime::reflector::ObjectRef::new(name))
                .is_some()
        });
        futures::future::ready(trigger)
    });
    let policies = controller.store();
    controller.watches_shared_stream(changed, move |host: Arc<ZfsHost>| {
        policies_using(&policies, &host)
    })
}
