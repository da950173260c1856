//! The first step of every reconcile: check what the schema could not, and record in status
//! that this generation of the spec was seen (`observedGeneration`) and accepted or not (the
//! `Ready` condition, reason `Accepted` or `InvalidSpec`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::conditions::{self, Wanted};
use super::{Context, Error, status};
use crate::api::condition::READY;

/// What the controller writes for a kind whose full reconciler is not running yet.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AcceptedStatus {
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
}

/// Writes `observedGeneration` and the Ready condition when either changed.
pub async fn record<K>(
    ctx: &Context,
    obj: &K,
    kind: &'static str,
    current: (Option<i64>, &[Condition]),
    verdict: Result<(), String>,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (status, reason, message) = match verdict {
        Ok(()) => (true, "Accepted", "the spec is valid".to_owned()),
        Err(why) => (false, "InvalidSpec", why),
    };
    write_ready(ctx, obj, kind, current, status, reason, message).await
}

/// Records a refusal other than an invalid spec (`Ready=False` with `reason`): the object's
/// status then holds only `observedGeneration` and that condition.
pub async fn refuse<K>(
    ctx: &Context,
    obj: &K,
    kind: &'static str,
    current: (Option<i64>, &[Condition]),
    reason: &'static str,
    message: String,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    write_ready(ctx, obj, kind, current, false, reason, message).await
}

async fn write_ready<K>(
    ctx: &Context,
    obj: &K,
    kind: &'static str,
    current: (Option<i64>, &[Condition]),
    status: bool,
    reason: &'static str,
    message: String,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let generation = obj.meta().generation;
    let wanted = Wanted {
        type_: READY,
        status,
        reason,
        message,
        observed_generation: generation,
    };
    let now = Time(jiff::Timestamp::now());
    let desired = conditions::set(current.1, &wanted, now);
    if current.0 == generation && conditions::same(current.1, &desired) {
        return Ok(false);
    }
    let status_body = AcceptedStatus {
        observed_generation: generation,
        conditions: desired,
    };
    status::apply(ctx, obj, kind, &status_body).await?;
    Ok(true)
}
