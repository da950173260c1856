//! The zetaback API, group `zetaback.io`, version `v1alpha1`: one file per kind.
//!
//! Validation lives in the schema (OpenAPI patterns and CEL `x-kubernetes-validations`) so
//! that `kubectl apply` refuses bad input with a readable message; the patterns come from
//! [`crate::names`] and [`crate::duration`], which the agents use too.

pub mod backup_job;
pub mod backup_policy;
pub mod common;
pub mod fallback_route;
pub mod restore;
pub mod zfs_host;

pub use backup_job::{BackupJob, BackupJobSpec, BackupJobStatus, BackupType, JobPhase};
pub use backup_policy::{BackupPolicy, BackupPolicySpec, BackupPolicyStatus};
pub use common::*;
pub use fallback_route::{FallbackRoute, FallbackRouteSpec, FallbackRouteStatus};
pub use restore::{Restore, RestoreSpec, RestoreStatus};
pub use zfs_host::{ZfsHost, ZfsHostSpec, ZfsHostStatus};

/// The API group of every zetaback kind.
pub const GROUP: &str = "zetaback.io";
/// The API version served.
pub const VERSION: &str = "v1alpha1";
/// The category that makes `kubectl get zetaback` list every kind.
pub const CATEGORY: &str = "zetaback";

/// Every CustomResourceDefinition, in the order they are installed.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        ZfsHost::crd(),
        BackupPolicy::crd(),
        BackupJob::crd(),
        Restore::crd(),
        FallbackRoute::crd(),
    ]
}

/// The generated CRD files: (file name, text) for each kind, as `crdgen` writes them into
/// `crds/` and `charts/zetaback/crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            serde_yaml::to_string(&crd).map(|yaml| {
                (
                    name,
                    format!(
                        "# Generated from src/api by `cargo run --bin crdgen -- --dir crds --dir charts/zetaback/crds`; do not edit.\n{yaml}"
                    ),
                )
            })
        })
        .collect()
}
