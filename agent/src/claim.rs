//! Claiming work with optimistic concurrency, shared by the BackupJob runner and the Restore
//! runner: a status update (`replace_status`) carrying the resourceVersion the agent read, with
//! the claim in it (`claimedBy`, phase Running). A 409 means another agent changed the object
//! first (it got it); a 404 means it is gone. Either way the caller moves on.
//!
//! And the restart rule: at start-up, objects this agent left Running (a crash or kill cut
//! them short) are failed with a message, so that the controller retries them.
//!
//! And reading only this host's objects: a field selector on a CRD's selectable field
//! ([`field_selector`]), used when the installed CRD has that field ([`selectable`]).
//!
//! And the watch → claim → run loop both runners share ([`watch_and_run`], in `claim/watch.rs`).

mod watch;

pub use watch::{Worker, key, watch_and_run};

use std::fmt::Debug;

use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

/// The field selector `<path>=<value>`, the value escaped as the apiserver's field selector
/// parser expects (`\\`, `,` and `=` preceded by a backslash).
pub fn field_selector(path: &str, value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("{path}={escaped}")
}

/// `Some(fields)` when the apiserver accepts the field selector `fields` on kind `K` (a
/// one-item metadata list tells), `None` when it refuses it with a 400: a CRD installed
/// before the field was selectable (Helm does not upgrade CRDs), with a warning. The caller
/// then reads every object and filters them itself.
pub async fn selectable<K>(client: &Client, fields: &str) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::all(client.clone());
    match api
        .list_metadata(&ListParams::default().fields(fields).limit(1))
        .await
    {
        Ok(_) => Ok(Some(fields.to_owned())),
        Err(kube::Error::Api(s)) if s.code == 400 => {
            warn!(error = %s.message, %kind, %fields, "the CRD has no such selectable field (apply the current CRDs); reading every host's objects");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The list and watch parameters of this host's objects: limited to `fields` when the
/// apiserver accepts them (see [`selectable`]), every object otherwise.
pub fn scoped(fields: Option<&str>) -> (ListParams, kube::runtime::watcher::Config) {
    let (list, config) = (
        ListParams::default(),
        kube::runtime::watcher::Config::default(),
    );
    match fields {
        Some(fields) => (list.fields(fields), config.fields(fields)),
        None => (list, config),
    }
}

/// Writes `claimed` (the object as read, with its status set to the claim) as the status of
/// `obj`; `Some(updated)` if this agent got it, `None` if another agent was first or the
/// object is gone.
pub async fn claim<K>(api: &Api<K>, claimed: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    match api
        .replace_status(&claimed.name_any(), &PostParams::default(), claimed)
        .await
    {
        Ok(updated) => Ok(Some(updated)),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fails every object of kind `K` (in any namespace) that `list` selects (a label or field
/// selector, so an agent reads only its own host's objects) and for which `orphaned` holds,
/// with the status merge patch `failure` gives (`{"status": {...}}`, any `Serialize`). Objects that do not
/// decode are skipped. Returns the `namespace/name` of each object failed.
pub async fn fail_orphans_listed<K, P: Serialize + Debug>(
    client: &Client,
    list: &ListParams,
    orphaned: impl Fn(&K) -> bool,
    failure: impl Fn(&K) -> P,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let all: Api<DeserializeGuard<K>> = Api::all(client.clone());
    let mut failed = Vec::new();
    for guarded in all.list(list).await? {
        let Ok(obj) = guarded.0 else { continue };
        if !orphaned(&obj) {
            continue;
        }
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&failure(&obj)),
        )
        .await?;
        failed.push(format!("{ns}/{}", obj.name_any()));
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_escape_their_value() {
        assert_eq!(
            field_selector("spec.destination.host", "db-1.example"),
            "spec.destination.host=db-1.example"
        );
        assert_eq!(
            field_selector("spec.host", "a,b=c\\"),
            "spec.host=a\\,b\\=c\\\\"
        );
    }
}
