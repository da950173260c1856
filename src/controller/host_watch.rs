//! The controller's one watch of every ZfsHost, made safe against hosts it cannot read.
//!
//! A node's agent writes its own ZfsHost's status. Decoded strictly, one status the controller
//! cannot read (written before the schema refused it, by a newer agent with a changed field, or
//! by a compromised node) fails the whole listing: the watch retries forever and no reconciler
//! starts, on every replica. Here each host is decoded on its own ([`DeserializeGuard`]); one
//! that does not decode is logged and treated as absent, so its policies see it as not
//! reporting (`HostNotReporting`) and every other host is served.

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;
use tracing::warn;

use crate::api::common::DatasetSelector;
use crate::api::{ZfsHost, ZfsHostSpec};

/// The event with every unreadable host turned into its absence: an unreadable host applied
/// (added or changed) becomes a deletion of that name, so a good copy from before leaves the
/// cache; in a listing it becomes a deletion too (harmless: the listing's buffer replaces the
/// cache when it is done, without it).
pub fn readable(event: Event<DeserializeGuard<ZfsHost>>) -> Event<ZfsHost> {
    match event {
        Event::Apply(g) => match decoded(g) {
            (host, true) => Event::Apply(host),
            (gone, false) => Event::Delete(gone),
        },
        Event::InitApply(g) => match decoded(g) {
            (host, true) => Event::InitApply(host),
            (gone, false) => Event::Delete(gone),
        },
        Event::Delete(g) => Event::Delete(decoded(g).0),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// The host and `true`, or a stand-in of its name and `false` when it cannot be read (logged).
fn decoded(guard: DeserializeGuard<ZfsHost>) -> (ZfsHost, bool) {
    match guard.0 {
        Ok(host) => (host, true),
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            warn!(host = %name, error = %invalid.error, "cannot read this ZfsHost; treating it as absent (not reporting)");
            (absent(name), false)
        }
    }
}

/// A stand-in carrying only the name of a host that cannot be read (the cache keys by name).
fn absent(name: String) -> ZfsHost {
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
    host.labels_mut().clear();
    host
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
