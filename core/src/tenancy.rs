//! Tenancy: which namespaces may use a ZfsHost (back it up, store on it, restore its backups,
//! restore to it) and where on it a Restore may land. Pure: the controller asks before it
//! acts, and refuses with reason [`FORBIDDEN`] when the answer is no.
//!
//! A ZfsHost's `spec.allowedNamespaces` lists the namespaces it serves; empty means only the
//! operator's own namespace (the controller's, from `POD_NAMESPACE` in the chart). Its
//! `spec.restoreRoots` lists the datasets under which Restores may create datasets; empty means
//! none (a host takes no restore until its administrator says where).

use crate::api::ZfsHostSpec;

/// The `Ready=False` reason of an object refused by a host's tenancy.
pub const FORBIDDEN: &str = "Forbidden";

/// Whether `namespace` may use the host.
pub fn namespace_allowed(host: &ZfsHostSpec, namespace: &str, operator_namespace: &str) -> bool {
    if host.allowed_namespaces.is_empty() {
        return namespace == operator_namespace;
    }
    host.allowed_namespaces
        .iter()
        .any(|n| n.as_str() == namespace)
}

/// The namespaces the host serves, as said in a refusal.
pub fn allowed_list(host: &ZfsHostSpec, operator_namespace: &str) -> String {
    if host.allowed_namespaces.is_empty() {
        return format!("only {operator_namespace}, the operator's namespace");
    }
    host.allowed_namespaces
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `dataset` is one of the host's restore roots or lies below one (by whole
/// components: root `tank/restore` covers `tank/restore/a`, not `tank/restored`).
pub fn under_restore_root(host: &ZfsHostSpec, dataset: &str) -> bool {
    host.restore_roots.iter().any(|root| {
        let root = root.as_str();
        dataset == root
            || dataset
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Why a Restore's destination is refused by the host's restore roots, or `None` if it may land.
pub fn restore_root_refusal(host_name: &str, host: &ZfsHostSpec, dataset: &str) -> Option<String> {
    if under_restore_root(host, dataset) {
        return None;
    }
    if host.restore_roots.is_empty() {
        return Some(format!(
            "host {host_name} declares no restore roots (spec.restoreRoots): no Restore may land on it"
        ));
    }
    let roots: Vec<&str> = host.restore_roots.iter().map(|r| r.as_str()).collect();
    Some(format!(
        "{dataset} is not under a restore root of host {host_name} ({})",
        roots.join(", ")
    ))
}

/// Why `namespace` may not use the hosts named in `hosts` (`(name, spec, role)`, the role
/// being "backed up", "the backup target", ...), or `None` when each allows it.
pub fn namespace_refusal<'a>(
    namespace: &str,
    operator_namespace: &str,
    hosts: impl IntoIterator<Item = (&'a str, &'a ZfsHostSpec, &'a str)>,
) -> Option<String> {
    let refused: Vec<String> = hosts
        .into_iter()
        .filter(|(_, spec, _)| !namespace_allowed(spec, namespace, operator_namespace))
        .map(|(name, spec, role)| {
            format!(
                "host {name} ({role}) serves {}",
                allowed_list(spec, operator_namespace)
            )
        })
        .collect();
    if refused.is_empty() {
        return None;
    }
    Some(format!(
        "namespace {namespace} may not use {}: {}; the host's spec.allowedNamespaces must list it",
        if refused.len() == 1 {
            "a host"
        } else {
            "these hosts"
        },
        refused.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{DatasetName, NamespaceName};

    fn host(namespaces: &[&str], roots: &[&str]) -> ZfsHostSpec {
        ZfsHostSpec {
            allowed_namespaces: namespaces.iter().map(|n| NamespaceName::from(*n)).collect(),
            restore_roots: roots.iter().map(|r| DatasetName::from(*r)).collect(),
            ..ZfsHostSpec::on_node("n1")
        }
    }

    #[test]
    fn without_a_list_only_the_operators_namespace_is_served() {
        let h = host(&[], &[]);
        assert!(namespace_allowed(&h, "zetaback", "zetaback"));
        assert!(!namespace_allowed(&h, "team-a", "zetaback"));
        let h = host(&["team-a"], &[]);
        assert!(namespace_allowed(&h, "team-a", "zetaback"));
        assert!(
            !namespace_allowed(&h, "zetaback", "zetaback"),
            "a list replaces the default"
        );
        assert!(!namespace_allowed(&h, "team-b", "zetaback"));
    }

    #[test]
    fn restore_roots_cover_whole_components_only() {
        let h = host(&[], &["tank/restore"]);
        assert!(under_restore_root(&h, "tank/restore"));
        assert!(under_restore_root(&h, "tank/restore/a/b"));
        assert!(!under_restore_root(&h, "tank/restored"));
        assert!(!under_restore_root(&h, "tank"));
        assert!(!under_restore_root(&h, "tank/etc"));
        assert!(!under_restore_root(&host(&[], &[]), "tank/restore"));
        let why = restore_root_refusal("h1", &h, "tank/etc").expect("refused");
        assert!(
            why.contains("tank/etc") && why.contains("tank/restore"),
            "{why}"
        );
        let why = restore_root_refusal("h1", &host(&[], &[]), "tank/x").expect("refused");
        assert!(why.contains("no restore roots"), "{why}");
        assert_eq!(restore_root_refusal("h1", &h, "tank/restore/x"), None);
    }

    #[test]
    fn a_refusal_names_every_host_that_refuses() {
        let open = host(&["team-a"], &[]);
        let closed = host(&[], &[]);
        assert_eq!(
            namespace_refusal("team-a", "ops", [("a", &open, "backed up")]),
            None
        );
        let why = namespace_refusal(
            "team-a",
            "ops",
            [
                ("a", &open, "backed up"),
                ("b", &closed, "backed up"),
                ("s", &closed, "the backup target"),
            ],
        )
        .expect("refused");
        assert!(
            why.contains("host b (backed up) serves only ops")
                && why.contains("host s (the backup target)")
                && !why.contains("host a"),
            "{why}"
        );
    }
}
