//! A policy whose target is an object store: the controller's keys, taken from the Secret the
//! policy names (`target.objectStore.credentialsSecret`, keys `accessKeyId` and
//! `secretAccessKey`), failed requests as sentences, and retention and archive in the bucket.
//! The catalogue is read through [`super::bucket_catalogues`].

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use zetaback_core::api::backup_policy::ObjectStoreTarget;
use zetaback_objstore::object_store::ObjectStoreExt;
use zetaback_objstore::{Credentials, Keys, connect, explain};

/// A failed read of the bucket as a sentence for a status: the server's whole answer (its
/// error code), not the brief Display.
pub(super) fn request_sentence(
    target: &ObjectStoreTarget,
    e: &zetaback_objstore::ObjStoreError,
) -> String {
    match e {
        zetaback_objstore::ObjStoreError::Request { source, .. } => {
            readable(target, &source.to_string())
        }
        e => readable(target, &e.to_string()),
    }
}

/// A failed request to the bucket as a sentence for the status (the server's S3 error code
/// and what to check), the full error going to the log.
pub(super) fn readable(target: &ObjectStoreTarget, error: &str) -> String {
    tracing::warn!(bucket = %target.bucket, %error, "the bucket could not be read");
    explain::sentence(
        error,
        &format!("Secret {}", target.credentials_secret.name),
        target.endpoint.as_deref().unwrap_or("AWS S3"),
        &target.bucket,
    )
}

/// The controller's keys from the Secret the target names.
pub(super) async fn credentials(
    client: &Client,
    namespace: &str,
    target: &ObjectStoreTarget,
) -> Result<Credentials, String> {
    let name = target.credentials_secret.name.as_str();
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => format!(
                "Secret {name} not found in namespace {namespace}: the object store's keys \
                 (target.objectStore.credentialsSecret) must be there"
            ),
            e => format!("object-store credentials Secret {namespace}/{name}: {e}"),
        })?;
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("object-store credentials Secret {namespace}/{name} has no {k}"))
    };
    Ok(Credentials {
        access_key_id: key("accessKeyId")?,
        secret_access_key: key("secretAccessKey")?,
    })
}

/// Deletes the backups retention expired (`(host, dataset, id)`, chosen by the same
/// chain-aware policy logic as for a file store): the manifest first, so that a deletion cut
/// short leaves a stream without its manifest, which is never a backup, then the stream.
/// Failures are logged and retried at the next reconcile.
pub async fn delete_expired(
    client: &Client,
    namespace: &str,
    target: &ObjectStoreTarget,
    expired: &[(String, String, String)],
) {
    let now = jiff::Timestamp::now().as_second();
    let expired = unlocked(target, expired, now);
    if expired.is_empty() {
        return;
    }
    let store = match credentials(client, namespace, target)
        .await
        .and_then(|c| connect(target, &c).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot delete expired backups from the bucket; will retry");
            return;
        }
    };
    let keys = Keys::new(target.prefix.as_deref());
    for (host, dataset, id) in expired {
        let result = async {
            let parsed: zetaback_core::store::StreamId = id
                .parse()
                .map_err(|e: zetaback_core::store::StoreError| e.to_string())?;
            // Live or archived (S3 answers a DELETE of a missing key with success), then its
            // verification record.
            for key in [
                keys.manifest(host, dataset, &parsed, false),
                keys.manifest(host, dataset, &parsed, true),
                keys.stream(host, dataset, &parsed, false),
                keys.stream(host, dataset, &parsed, true),
                keys.verification(host, dataset, &parsed),
            ] {
                let key = key.map_err(|e| e.to_string())?;
                store.delete(&key).await.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(%host, %dataset, %id, "expired backup deleted from the bucket")
            }
            Err(e) => {
                tracing::warn!(%host, %dataset, %id, error = %e, "deleting failed; will retry")
            }
        }
    }
}

/// Moves the backups `(host, dataset, id)` the policy's `archive.after` chose (by the same
/// chain-aware logic as for a file store) to the archive prefix, with the controller's keys
/// (`zetaback_objstore::archive`: copies, manifest last, then the live objects deleted), then
/// deletes what an earlier, interrupted archive of those datasets left. Failures are logged and
/// retried at the next reconcile.
pub async fn archive(
    client: &Client,
    namespace: &str,
    target: &ObjectStoreTarget,
    moving: &[(String, String, String)],
) {
    let now = jiff::Timestamp::now().as_second();
    let moving = unlocked(target, moving, now);
    if moving.is_empty() {
        return;
    }
    let creds = match credentials(client, namespace, target).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot archive in the bucket; will retry");
            return;
        }
    };
    let (store, requests) = match connect(target, &creds)
        .and_then(|s| zetaback_objstore::pending::Requests::new(target, &creds).map(|r| (s, r)))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot archive in the bucket; will retry");
            return;
        }
    };
    let keys = Keys::new(target.prefix.as_deref());
    let class = target.archive_storage_class.as_deref();
    let mut datasets = std::collections::BTreeSet::new();
    for (host, dataset, id) in moving {
        let result = match id.parse::<zetaback_core::store::StreamId>() {
            Ok(sid) => zetaback_objstore::archive::archive(
                store.as_ref(),
                &requests,
                &keys,
                (host, dataset, &sid),
                class,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(done) => {
                tracing::info!(%host, %dataset, %id, ?done, "backup archived in the bucket");
                datasets.insert((host.clone(), dataset.clone()));
            }
            Err(e) => {
                tracing::warn!(%host, %dataset, %id, error = %e, "archiving failed; will retry")
            }
        }
    }
    for (host, dataset) in datasets {
        if let Err(e) =
            zetaback_objstore::archive::finish(store.as_ref(), &keys, &host, &dataset).await
        {
            tracing::warn!(%host, %dataset, error = %e, "finishing interrupted archives failed");
        }
    }
}

/// The backups of `items` that may be deleted or moved now: all of them without
/// `immutableFor`, else those whose Object Lock has passed (`zetaback_objstore::lock`); the
/// others wait (logged), so retention never asks the server for a delete it must refuse.
pub fn unlocked<'a>(
    target: &ObjectStoreTarget,
    items: &'a [(String, String, String)],
    now: i64,
) -> Vec<&'a (String, String, String)> {
    let lock = target
        .immutable_for
        .as_ref()
        .map(|d| d.duration().unwrap_or(std::time::Duration::MAX));
    items
        .iter()
        .filter(|(host, dataset, id)| {
            let ok = id
                .parse::<zetaback_core::store::StreamId>()
                .is_ok_and(|sid| zetaback_objstore::lock::deletable(&sid, lock, now));
            if !ok {
                tracing::info!(%host, %dataset, %id, "locked (immutableFor): not deleted or moved yet");
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_waits_for_the_lock() {
        let mut target: ObjectStoreTarget = serde_json::from_value(serde_json::json!({
            "bucket": "b", "credentialsSecret": {"name": "s"},
        }))
        .unwrap();
        let items = vec![
            ("h".to_owned(), "tank/a".to_owned(), "1000.full".to_owned()),
            (
                "h".to_owned(),
                "tank/a".to_owned(),
                "2000.incremental.1000".to_owned(),
            ),
        ];
        let ids = |v: Vec<&(String, String, String)>| -> Vec<String> {
            v.into_iter().map(|i| i.2.clone()).collect()
        };
        assert_eq!(ids(unlocked(&target, &items, 0)).len(), 2, "no lock: all");
        target.immutable_for = Some(serde_json::from_value(serde_json::json!("1000s")).unwrap());
        assert!(unlocked(&target, &items, 1999).is_empty());
        assert_eq!(ids(unlocked(&target, &items, 2000)), ["1000.full"]);
        assert_eq!(ids(unlocked(&target, &items, 3000)).len(), 2);
    }
}
