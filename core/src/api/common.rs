//! Types shared by several kinds: schema helpers for names and durations, dataset selection,
//! and the status conditions every kind carries.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{duration, names};

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $max:expr, $desc:expr, $form:expr) => {
        string_newtype!($(#[$doc])* $name, $pattern, $max, $desc, $form, []);
    };
    // `$extra`: more CEL rules, as (rule, messageExpression) pairs, checked after the form.
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $max:expr, $desc:expr, $form:expr, [$(($rule:expr, $message:expr)),*]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                // A CEL rule instead of an OpenAPI `pattern`, so the refusal says in words
                // what was expected (a pattern failure only prints the regular expression).
                json_schema!({
                    "type": "string",
                    "maxLength": $max,
                    "description": $desc,
                    "x-kubernetes-validations": [{
                        "rule": format!("self.matches(r'{}')", $pattern),
                        "messageExpression": format!("'\"' + self + '\" is not {}'", $form),
                    } $(, {
                        "rule": $rule,
                        "messageExpression": $message,
                    })*],
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl $name {
            /// The text as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A duration such as `90s`, `15m`, `12h`, `7d` or `2w`.
    DurationString,
    duration::DURATION_PATTERN,
    7,
    "A duration: a number and one unit of s, m, h, d or w, e.g. 12h or 7d.",
    "a duration: write a number and one unit of s, m, h, d or w, e.g. 90s, 12h or 7d"
);
string_newtype!(
    /// A retention rule: an age (`14d`) or a grid of count-per-age bins (`24x1h,14x1d`).
    RetentionString,
    duration::RETENTION_PATTERN,
    200,
    "How long backups are kept: an age (14d), or COUNTxAGE bins (24x1h,14x1d: one per hour for 24 hours, then one per day for 14 days).",
    "a retention rule: write an age such as 14d, or COUNTxAGE bins such as 24x1h,14x1d"
);
string_newtype!(
    /// A ZFS dataset name such as `tank/db`.
    DatasetName,
    names::DATASET_NAME_PATTERN,
    255,
    "A ZFS dataset name, e.g. tank/db: letters, digits and -_.: in each component, '/' between components, beginning with a letter.",
    "a ZFS dataset name: use letters, digits and -_.: in each component, / between components, begin with a letter (no @, spaces or shell characters)",
    [(NO_DOT_COMPONENT_RULE, NO_DOT_COMPONENT_MESSAGE)]
);
string_newtype!(
    /// A ZFS dataset glob such as `tank/db/**`.
    DatasetPattern,
    names::DATASET_GLOB_PATTERN,
    255,
    "A ZFS dataset pattern: a dataset name whose components may use * (within a component), ** (any depth) and ?.",
    "a dataset pattern: use letters, digits, -_.: and the globs * ** ? in each component, / between components, and do not begin with -",
    [(NO_DOT_COMPONENT_RULE, NO_DOT_COMPONENT_MESSAGE)]
);
string_newtype!(
    /// The name of a Kubernetes object in the same scope (a ZfsHost, a BackupPolicy).
    ObjectName,
    names::OBJECT_NAME_PATTERN,
    253,
    "The name of a Kubernetes object (lower-case letters, digits, '-' and '.').",
    "an object name: use lower-case letters, digits, - and ., beginning and ending with a letter or digit"
);
string_newtype!(
    /// The name of a Kubernetes namespace.
    NamespaceName,
    names::NAMESPACE_NAME_PATTERN,
    63,
    "The name of a namespace (lower-case letters, digits and '-').",
    "a namespace name: use lower-case letters, digits and -, beginning and ending with a letter or digit"
);

string_newtype!(
    /// A byte size or rate such as `50Mi` (bytes; `Ki`, `Mi`, `Gi` are powers of 1024).
    ByteSizeString,
    crate::bytesize::BYTE_SIZE_PATTERN,
    9,
    "A number of bytes, optionally with a binary suffix Ki, Mi or Gi, e.g. 50Mi.",
    "a byte size: write a number, optionally followed by Ki, Mi or Gi, e.g. 50Mi"
);

impl ByteSizeString {
    /// The bytes (the schema guarantees the form).
    pub fn bytes(&self) -> Result<u64, crate::bytesize::ByteSizeError> {
        crate::bytesize::parse_byte_size(&self.0)
    }
}

/// The CEL rule "no component is `.` or `..`" (as [`names::validate_dataset`] refuses them).
const NO_DOT_COMPONENT_RULE: &str = r"!self.matches(r'(^|/)\.\.?(/|$)')";
/// Its message.
const NO_DOT_COMPONENT_MESSAGE: &str = r#"'"' + self + '" has a "." or ".." component: ZFS has no such dataset, and the agent refuses it'"#;

impl DurationString {
    /// The parsed duration (the schema guarantees the form).
    pub fn duration(&self) -> Result<std::time::Duration, duration::DurationError> {
        duration::parse_duration(&self.0)
    }
}

impl RetentionString {
    /// The parsed retention rule (the schema guarantees the form).
    pub fn retention(&self) -> Result<duration::Retention, duration::DurationError> {
        duration::Retention::parse(&self.0)
    }
}

/// Which datasets of a host are meant: glob patterns, include then exclude.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSelector {
    /// Datasets to include, as patterns (`tank/**` is every dataset under tank, `tank` itself
    /// included). Default: every dataset.
    #[serde(default = "default_include")]
    #[schemars(length(max = 64))]
    pub include: Vec<DatasetPattern>,
    /// Datasets to leave out, as patterns; exclusion wins over inclusion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude: Vec<DatasetPattern>,
}

fn default_include() -> Vec<DatasetPattern> {
    vec![DatasetPattern("**".into())]
}

impl Default for DatasetSelector {
    fn default() -> Self {
        Self {
            include: default_include(),
            exclude: Vec::new(),
        }
    }
}

/// A list of standard conditions, keyed by type (the schema says so, so server-side apply
/// merges them by type).
pub type Conditions = Vec<Condition>;

/// Marks a `conditions` field as a list keyed by `type` for server-side apply.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Standard condition types used across kinds.
pub mod condition {
    /// The object was understood and is being acted on.
    pub const READY: &str = "Ready";
    /// Every dataset of the policy is backed up within its policy.
    pub const COMPLIANT: &str = "Compliant";
    /// The agent serving a host reported recently.
    pub const AGENT_CONNECTED: &str = "AgentConnected";
    /// Another policy also backs up some of the policy's datasets (each keeps its own).
    pub const OVERLAPPING: &str = "Overlapping";
}
