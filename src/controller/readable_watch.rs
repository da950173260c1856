//! The controller's shared watches, made safe against objects it cannot read.
//!
//! Agents write the status of their own ZfsHost and of their own node's BackupJobs, so a
//! compromised node controls that text. Decoded strictly, one object the controller cannot
//! read (written before the schema refused it, by a newer agent with a changed field, or by a
//! compromised node) fails the whole listing: the watch retries forever and no reconciler
//! starts, on every replica. Here each object is decoded on its own ([`DeserializeGuard`]);
//! one that does not decode is logged and treated as absent: a host's policies see it as not
//! reporting (`HostNotReporting`), a job's policy as a job that is gone, and every other
//! object is served.

use kube::Resource;
use kube::api::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;
use tracing::warn;

use crate::api::backup_job::{BackupJobSpec, BackupType};
use crate::api::backup_policy::{Compression, Target};
use crate::api::common::DatasetSelector;
use crate::api::{BackupJob, ZfsHost, ZfsHostSpec};

/// A kind whose unreadable objects can be stood in for by their metadata alone (the cache keys
/// by namespace and name, and the triggers map by labels; nothing else of a stand-in is read:
/// it only ever leaves the cache).
pub trait StandIn: Resource + Sized {
    /// A name for the logs: "ZfsHost", "BackupJob".
    const KIND: &'static str;
    fn stand_in(metadata: ObjectMeta) -> Self;
}

/// The event with every unreadable object turned into its absence: an unreadable object applied
/// (added or changed) becomes a deletion of that name, so a good copy from before leaves the
/// cache; in a listing it becomes a deletion too (harmless: the listing's buffer replaces the
/// cache when it is done, without it).
pub fn readable<K: StandIn>(event: Event<DeserializeGuard<K>>) -> Event<K> {
    match event {
        Event::Apply(g) => match decoded(g) {
            (object, true) => Event::Apply(object),
            (gone, false) => Event::Delete(gone),
        },
        Event::InitApply(g) => match decoded(g) {
            (object, true) => Event::InitApply(object),
            (gone, false) => Event::Delete(gone),
        },
        Event::Delete(g) => Event::Delete(decoded(g).0),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// The object and `true`, or a stand-in of its metadata and `false` when it cannot be read
/// (logged).
fn decoded<K: StandIn>(guard: DeserializeGuard<K>) -> (K, bool) {
    match guard.0 {
        Ok(object) => (object, true),
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
            warn!(kind = K::KIND, %namespace, %name, error = %invalid.error,
                "cannot read this object; treating it as absent");
            (K::stand_in(invalid.metadata), false)
        }
    }
}

impl StandIn for ZfsHost {
    const KIND: &'static str = "ZfsHost";
    /// A paused host that includes nothing, under the unreadable host's name and labels.
    fn stand_in(metadata: ObjectMeta) -> Self {
        let name = metadata.name.clone().unwrap_or_default();
        let mut host = ZfsHost::new(
            &name,
            ZfsHostSpec {
                node_name: name.clone(),
                datasets: DatasetSelector {
                    include: Vec::new(),
                    exclude: Vec::new(),
                },
                paused: true,
                allowed_namespaces: Vec::new(),
                restore_roots: Vec::new(),
            },
        );
        host.metadata = metadata;
        host
    }
}

impl StandIn for BackupJob {
    const KIND: &'static str = "BackupJob";
    /// A job of nothing under the unreadable job's namespace, name and labels (its policy
    /// label still triggers the policy, which then finds the job gone).
    fn stand_in(metadata: ObjectMeta) -> Self {
        let name = metadata.name.clone().unwrap_or_default();
        let mut job = BackupJob::new(
            &name,
            BackupJobSpec {
                policy: "".into(),
                host: "".into(),
                dataset: "".into(),
                backup_type: BackupType::Full,
                base_snapshot: None,
                snapshot: String::new(),
                target: Target {
                    host: None,
                    path: None,
                    dataset: None,
                    object_store: None,
                },
                compression: Compression::default(),
                intermediates: false,
            },
        );
        job.metadata = metadata;
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn guard(status: serde_json::Value) -> DeserializeGuard<ZfsHost> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1",
            "kind": "ZfsHost",
            "metadata": {"name": "db-1"},
            "spec": {"nodeName": "db-1", "datasets": {"include": ["tank/**"]}},
            "status": status
        }))
        .expect("a guard decodes anything with metadata")
    }

    fn name(e: &Event<ZfsHost>) -> (&'static str, String) {
        match e {
            Event::Apply(h) => ("apply", h.name_any()),
            Event::InitApply(h) => ("init-apply", h.name_any()),
            Event::Delete(h) => ("delete", h.name_any()),
            Event::Init => ("init", String::new()),
            Event::InitDone => ("init-done", String::new()),
        }
    }

    #[test]
    fn readable_hosts_pass_and_unreadable_ones_become_absent() {
        let good =
            serde_json::json!({"pools": [{"name": "tank", "health": "ONLINE", "sizeBytes": 10}]});
        let bad =
            serde_json::json!({"pools": [{"name": "tank", "health": "ONLINE", "sizeBytes": -1}]});
        assert!(
            guard(bad.clone()).0.is_err(),
            "the bad status must not decode"
        );

        assert_eq!(
            name(&readable(Event::Apply(guard(good.clone())))),
            ("apply", "db-1".into())
        );
        assert_eq!(
            name(&readable(Event::InitApply(guard(good.clone())))),
            ("init-apply", "db-1".into())
        );
        // Unreadable: gone from the cache under its name, whichever event brought it.
        assert_eq!(
            name(&readable(Event::Apply(guard(bad.clone())))),
            ("delete", "db-1".into())
        );
        assert_eq!(
            name(&readable(Event::InitApply(guard(bad.clone())))),
            ("delete", "db-1".into())
        );
        assert_eq!(
            name(&readable(Event::Delete(guard(bad)))),
            ("delete", "db-1".into())
        );
        assert_eq!(
            name(&readable(Event::Delete(guard(good)))),
            ("delete", "db-1".into())
        );
        assert_eq!(name(&readable(Event::Init)).0, "init");
        assert_eq!(name(&readable(Event::InitDone)).0, "init-done");
    }

    #[test]
    fn a_cache_fed_through_it_keeps_the_readable_hosts() {
        use kube::runtime::reflector::{ObjectRef, store};
        let (reader, mut writer) = store::<ZfsHost>();
        let named = |n: &str, size: i64| -> DeserializeGuard<ZfsHost> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost",
                "metadata": {"name": n},
                "spec": {"nodeName": n, "datasets": {"include": ["tank/**"]}},
                "status": {"pools": [{"name": "tank", "health": "ONLINE", "sizeBytes": size}]}
            }))
            .expect("guard")
        };
        for e in [
            Event::Init,
            Event::InitApply(named("a", 1)),
            Event::InitApply(named("b", -1)),
            Event::InitApply(named("c", 3)),
            Event::InitDone,
        ] {
            writer.apply_watcher_event(&readable(e));
        }
        let mut names: Vec<String> = reader.state().iter().map(|h| h.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
        // A readable host that turns unreadable leaves the cache.
        writer.apply_watcher_event(&readable(Event::Apply(named("a", -7))));
        assert!(reader.get(&ObjectRef::new("a")).is_none());
        assert!(reader.get(&ObjectRef::new("c")).is_some());
    }

    fn job(status: serde_json::Value) -> DeserializeGuard<BackupJob> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1",
            "kind": "BackupJob",
            "metadata": {"name": "j-1", "namespace": "team", "labels": {"zetaback.io/policy": "p"}},
            "spec": {"policy": "p", "host": "db-1", "dataset": "tank/db", "type": "full",
                     "snapshot": "zetaback-1700000000",
                     "target": {"host": "backup-1", "path": "/var/lib/zetaback"}},
            "status": status
        }))
        .expect("a guard decodes anything with metadata")
    }

    #[test]
    fn an_unreadable_job_leaves_the_cache_under_its_name_namespace_and_policy_label() {
        use kube::runtime::reflector::{ObjectRef, store};
        // What a compromised agent can write into its own job: a negative count, which the
        // controller reads as unsigned (the schema now refuses it; objects stored before stay).
        let bad = serde_json::json!({"phase": "Running", "attempts": -1});
        let good = serde_json::json!({"phase": "Running", "attempts": 1});
        assert!(
            job(bad.clone()).0.is_err(),
            "the bad status must not decode"
        );

        let (reader, mut writer) = store::<BackupJob>();
        for e in [
            Event::Init,
            Event::InitApply(job(good.clone())),
            Event::InitDone,
        ] {
            writer.apply_watcher_event(&readable(e));
        }
        let key = ObjectRef::new("j-1").within("team");
        assert!(reader.get(&key).is_some(), "a readable job is cached");
        let gone = readable(Event::Apply(job(bad)));
        match &gone {
            Event::Delete(j) => {
                assert_eq!(j.namespace().as_deref(), Some("team"));
                assert_eq!(
                    j.labels().get("zetaback.io/policy").map(String::as_str),
                    Some("p")
                );
            }
            other => panic!("an unreadable job must become a deletion: {other:?}"),
        }
        writer.apply_watcher_event(&gone);
        assert!(
            reader.get(&key).is_none(),
            "an unreadable job leaves the cache"
        );
    }
}
