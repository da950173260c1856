//! Restore grants, the controller's side ([`crate::grant`]): the key that signs them, published
//! for the stores as a ConfigMap in the controller's namespace, and the grant written into a
//! resolved Restore's status for its destination host's agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use crate::api::{Restore, RestoreStatus};
use crate::grant::{GRANT_TTL_SECONDS, GrantSigner, RestoreGrant, verify};

/// The ConfigMap the stores read the public key from (the agent's default).
pub const CONFIGMAP: &str = "zetaback-grant-key";
/// Its entry holding the hex Ed25519 public key.
pub const PUBLIC_KEY_ENTRY: &str = "ed25519.pub";

/// Publishes `signer`'s public key in ConfigMap [`CONFIGMAP`] of `namespace`.
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    signer: &GrantSigner,
) -> Result<(), kube::Error> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            PUBLIC_KEY_ENTRY.to_owned(),
            signer.public_key_hex(),
        )])),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            CONFIGMAP,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map(|_| ())
}

/// `next` with the grant for its chain: the current one while it still covers the same chain
/// for at least half its life, else a new one (so a status is not rewritten on every
/// reconcile). No chain, no grant.
pub fn with_grant(
    obj: &Restore,
    current: &RestoreStatus,
    mut next: RestoreStatus,
    signer: Option<&Arc<GrantSigner>>,
    now: i64,
) -> RestoreStatus {
    let Some(signer) = signer else {
        return next;
    };
    if next.chain.is_empty() {
        next.grant = None;
        return next;
    }
    let keep = current.grant.as_deref().is_some_and(|g| {
        verify(g, &signer.public_key_hex())
            .is_ok_and(|g| g.ids == next.chain && g.expires - now > GRANT_TTL_SECONDS / 2)
    });
    if keep {
        next.grant = current.grant.clone();
        return next;
    }
    let grant = RestoreGrant {
        restore: format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
        host: obj.spec.source.host.as_str().to_owned(),
        dataset: obj.spec.source.dataset_name().to_owned(),
        ids: next.chain.clone(),
        destination: obj.spec.destination.host.as_str().to_owned(),
        expires: now + GRANT_TTL_SECONDS,
    };
    next.grant = match signer.sign(&grant) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "could not sign a restore grant");
            None
        }
    };
    next
}
