//! Writing status through server-side apply on the status subresource.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error, FIELD_MANAGER};

/// Applies `status` (the whole status object this controller owns) to `obj`'s status
/// subresource, and counts the write. Callers compare first and call this only on a change.
pub async fn apply<K, S>(
    ctx: &Context,
    obj: &K,
    kind: &'static str,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let name = obj.meta().name.clone().ok_or(Error::MissingMeta(kind))?;
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMeta(kind))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        kind,
        name: name.clone(),
        source,
    })?;
    ctx.metrics.status_written(kind);
    Ok(())
}
