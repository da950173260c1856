//! Which hosts and datasets a policy covers: host names or a label selector ([`hosts`]), dataset
//! include/exclude globs and backup classes. Pure functions, shared by the controller, the CLI
//! and the agents.
//!
//! Classes ([`PolicyMatcher`]): a dataset's class is its `zetaback.io:class` user property
//! (Zetaback's `com.omniti.labs.zetaback:class`), reported by the agent. A policy with
//! `datasets.classes` covers a dataset only when its name is included, not excluded, *and* its
//! class is listed (`""` stands for "no class"); without `classes` the class does not matter.
//!
//! Glob rules: `*` and `?` stay within one path component; `**` spans any number of
//! components; a pattern ending in `/**` also matches the dataset it starts from (`tank/**`
//! covers `tank`, as a person reading it expects).

pub mod hosts;

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::backup_policy::PolicyDatasets;
use crate::api::common::{DatasetPattern, DatasetSelector};

pub use hosts::{HostLabels, covered_host_names, covers_host};

/// A pattern that cannot be compiled (the schema makes this unlikely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dataset pattern {pattern:?}: {message}")]
pub struct PatternError {
    pub pattern: String,
    pub message: String,
}

fn glob(pattern: &str) -> Result<Glob, PatternError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| PatternError {
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })
}

fn set(patterns: &[DatasetPattern]) -> Result<GlobSet, PatternError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(glob(p.as_str())?);
        if let Some(parent) = p.as_str().strip_suffix("/**") {
            builder.add(glob(parent)?);
        }
    }
    builder.build().map_err(|e| PatternError {
        pattern: String::new(),
        message: e.to_string(),
    })
}

/// A compiled [`DatasetSelector`].
#[derive(Debug, Clone)]
pub struct DatasetMatcher {
    include: GlobSet,
    exclude: GlobSet,
}

impl DatasetMatcher {
    pub fn new(selector: &DatasetSelector) -> Result<Self, PatternError> {
        Ok(Self {
            include: set(&selector.include)?,
            exclude: set(&selector.exclude)?,
        })
    }

    /// Included and not excluded.
    pub fn matches(&self, dataset: &str) -> bool {
        // One candidate (its file name and extension worked out once) for both sets.
        let candidate = globset::Candidate::new(dataset);
        self.include.is_match_candidate(&candidate)
            && (self.exclude.is_empty() || !self.exclude.is_match_candidate(&candidate))
    }
}

/// A compiled [`PolicyDatasets`]: name patterns and classes.
#[derive(Debug, Clone)]
pub struct PolicyMatcher {
    names: DatasetMatcher,
    /// `None`: any class; otherwise the listed ones (`""` = no class).
    classes: Option<BTreeSet<String>>,
}

impl PolicyMatcher {
    pub fn new(selector: &PolicyDatasets) -> Result<Self, PatternError> {
        Ok(Self {
            names: DatasetMatcher::new(&selector.patterns)?,
            classes: (!selector.classes.is_empty()).then(|| {
                selector
                    .classes
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            }),
        })
    }

    /// Covered: the name is included and not excluded, and the class (`None` or `""`: no
    /// class) is listed when the policy lists classes.
    pub fn matches(&self, dataset: &str, class: Option<&str>) -> bool {
        self.names.matches(dataset)
            && self
                .classes
                .as_ref()
                .is_none_or(|set| set.contains(class.unwrap_or("")))
    }
}

/// True when `labels` satisfy `selector` (matchLabels and matchExpressions with In, NotIn,
/// Exists, DoesNotExist). An empty selector matches everything, as in Kubernetes.
pub fn labels_match(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or(&[]);
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn matcher(include: &[&str], exclude: &[&str]) -> DatasetMatcher {
        DatasetMatcher::new(&DatasetSelector {
            include: include
                .iter()
                .map(|s| DatasetPattern((*s).into()))
                .collect(),
            exclude: exclude
                .iter()
                .map(|s| DatasetPattern((*s).into()))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn double_star_covers_the_parent_and_all_depths() {
        let m = matcher(&["tank/db/**"], &[]);
        for yes in ["tank/db", "tank/db/pg", "tank/db/pg/wal"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["tank", "tank/dbx", "tank/web/db"] {
            assert!(!m.matches(no), "{no}");
        }
    }

    #[test]
    fn single_star_stays_in_one_component_and_exclude_wins() {
        let m = matcher(&["tank/*"], &["tank/tmp"]);
        assert!(m.matches("tank/db"));
        assert!(!m.matches("tank/db/pg"));
        assert!(!m.matches("tank/tmp"));
        let all = matcher(&["**"], &["*/scratch/**"]);
        assert!(all.matches("tank"));
        assert!(all.matches("rpool/home/me"));
        assert!(!all.matches("tank/scratch"));
        assert!(!all.matches("tank/scratch/x"));
    }

    fn policy(include: &[&str], exclude: &[&str], classes: &[&str]) -> PolicyMatcher {
        let sel: PolicyDatasets = serde_json::from_value(serde_json::json!({
            "include": include, "exclude": exclude, "classes": classes
        }))
        .unwrap();
        PolicyMatcher::new(&sel).unwrap()
    }

    #[test]
    fn classes_narrow_the_name_patterns() {
        // No classes: the class does not matter.
        let any = policy(&["tank/**"], &[], &[]);
        assert!(any.matches("tank/db", Some("gold")));
        assert!(any.matches("tank/db", None));
        assert!(!any.matches("rpool/db", Some("gold")));
        // Classes: only listed classes, and only within include minus exclude.
        let gold = policy(&["**"], &["tank/tmp/**"], &["gold", "silver"]);
        assert!(gold.matches("tank/db", Some("gold")));
        assert!(gold.matches("rpool/x", Some("silver")));
        assert!(!gold.matches("tank/db", Some("bronze")));
        assert!(
            !gold.matches("tank/db", None),
            "no class is not a listed class"
        );
        assert!(!gold.matches("tank/tmp/a", Some("gold")), "exclude wins");
        // "" selects datasets without a class (None, or an empty property).
        let unclassed = policy(&["tank/**"], &[], &[""]);
        assert!(unclassed.matches("tank/db", None));
        assert!(unclassed.matches("tank/db", Some("")));
        assert!(!unclassed.matches("tank/db", Some("gold")));
        // Class names are compared exactly (ZFS property values are case-sensitive).
        assert!(!gold.matches("tank/db", Some("Gold")));
    }

    #[test]
    fn the_class_pattern_accepts_what_the_schema_does() {
        let re = regex::Regex::new(crate::api::backup_policy::CLASS_PATTERN).unwrap();
        for ok in ["gold", "g", "tier-1", "a.b:c_d", "0"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["", "-gold", "gold-", "a b", "gold/x", &"x".repeat(64)] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("tier".to_string(), "db".to_string())]
            .into_iter()
            .collect();
        let sel = |ml: Option<(&str, &str)>, op: Option<(&str, &str, Vec<&str>)>| LabelSelector {
            match_labels: ml.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect()),
            match_expressions: op.map(|(k, o, vs)| {
                vec![LabelSelectorRequirement {
                    key: k.into(),
                    operator: o.into(),
                    values: Some(vs.into_iter().map(String::from).collect()),
                }]
            }),
        };
        assert!(labels_match(&sel(None, None), &labels));
        assert!(labels_match(&sel(Some(("tier", "db")), None), &labels));
        assert!(!labels_match(&sel(Some(("tier", "web")), None), &labels));
        assert!(labels_match(
            &sel(None, Some(("tier", "In", vec!["db", "x"]))),
            &labels
        ));
        assert!(!labels_match(
            &sel(None, Some(("tier", "NotIn", vec!["db"]))),
            &labels
        ));
        assert!(labels_match(
            &sel(None, Some(("zone", "DoesNotExist", vec![]))),
            &labels
        ));
        assert!(!labels_match(
            &sel(None, Some(("zone", "Exists", vec![]))),
            &labels
        ));
        assert!(!labels_match(
            &sel(None, Some(("tier", "Bogus", vec![]))),
            &labels
        ));
    }
}
