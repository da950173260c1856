//! Which hosts a BackupPolicy covers (`spec.hosts`): the one rule the controller's plan and the
//! CLI's reports both apply.
//!
//! - `names`: exactly the listed hosts, each once (a name listed twice is one host), whether a
//!   ZfsHost of that name exists or not — a named host without a ZfsHost is still the policy's
//!   (the controller reports it missing; its backups in the store are still listed).
//! - `selector`: the existing ZfsHosts whose labels match ([`labels_match`]).
//! - neither (the schema forbids it): no host.

use std::collections::BTreeMap;

use super::labels_match;
use crate::api::backup_policy::HostSelector;

/// A host as selection sees it: its name and labels.
#[derive(Debug, Clone, Copy)]
pub struct HostLabels<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Whether `selector` covers the host `name` with `labels`.
pub fn covers_host(selector: &HostSelector, name: &str, labels: &BTreeMap<String, String>) -> bool {
    match (&selector.names, &selector.selector) {
        (Some(names), _) => names.iter().any(|n| n.as_str() == name),
        (None, Some(sel)) => labels_match(sel, labels),
        (None, None) => false,
    }
}

/// The names of the hosts `selector` covers, each once: the listed names in their order (known
/// or not), or those of `known` whose labels match, in `known`'s order.
pub fn covered_host_names<'a>(
    selector: &HostSelector,
    known: impl IntoIterator<Item = HostLabels<'a>>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match (&selector.names, &selector.selector) {
        (Some(names), _) => {
            for n in names {
                if !out.iter().any(|o| o == n.as_str()) {
                    out.push(n.as_str().to_owned());
                }
            }
        }
        (None, Some(_)) => {
            for h in known {
                if covers_host(selector, h.name, h.labels) && !out.iter().any(|o| o == h.name) {
                    out.push(h.name.to_owned());
                }
            }
        }
        (None, None) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::ObjectName;

    fn labels(tier: Option<&str>) -> BTreeMap<String, String> {
        tier.map(|t| ("tier".to_owned(), t.to_owned()))
            .into_iter()
            .collect()
    }

    fn by_names(names: &[&str]) -> HostSelector {
        HostSelector {
            names: Some(names.iter().map(|n| ObjectName((*n).to_owned())).collect()),
            selector: None,
        }
    }

    fn by_tier(tier: &str) -> HostSelector {
        serde_json::from_value(serde_json::json!({"selector": {"matchLabels": {"tier": tier}}}))
            .expect("selector")
    }

    /// Every selector over every set of known hosts: a known host is covered exactly when it is
    /// among the covered names; the names have no duplicates; with `names`, the unknown listed
    /// hosts are covered too and nothing else is.
    #[test]
    fn covered_names_and_covers_host_agree() {
        let db = labels(Some("db"));
        let web = labels(Some("web"));
        let none = labels(None);
        let universe = [("a", &db), ("b", &web), ("c", &none), ("d", &db)];
        let selectors = [
            by_names(&["a"]),
            by_names(&["a", "a"]),
            by_names(&["b", "x", "b", "a"]),
            by_names(&["x"]),
            by_tier("db"),
            by_tier("web"),
            by_tier("gone"),
            serde_json::from_value(serde_json::json!({"selector": {}})).expect("empty selector"),
            HostSelector {
                names: None,
                selector: None,
            },
        ];
        for mask in 0u32..(1 << universe.len()) {
            let known: Vec<HostLabels<'_>> = universe
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (name, labels))| HostLabels { name, labels })
                .collect();
            for sel in &selectors {
                let names = covered_host_names(sel, known.iter().copied());
                let mut unique = names.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(
                    unique.len(),
                    names.len(),
                    "{sel:?}: {names:?} has duplicates"
                );
                for h in &known {
                    assert_eq!(
                        covers_host(sel, h.name, h.labels),
                        names.iter().any(|n| n == h.name),
                        "{sel:?} over {mask:b}: host {}",
                        h.name
                    );
                }
                for n in &names {
                    let listed = sel.names.iter().flatten().any(|l| l.as_str() == n.as_str());
                    let known_and_covered = known
                        .iter()
                        .any(|h| h.name == n && covers_host(sel, h.name, h.labels));
                    assert!(
                        listed || known_and_covered,
                        "{sel:?}: {n} covered from nowhere"
                    );
                }
            }
        }
    }

    #[test]
    fn listed_names_keep_their_order_and_count_once() {
        let none = labels(None);
        let known = [HostLabels {
            name: "b",
            labels: &none,
        }];
        assert_eq!(
            covered_host_names(&by_names(&["b", "x", "b", "a"]), known),
            ["b", "x", "a"]
        );
    }
}
