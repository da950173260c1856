//! Restores from object-store targets: the buckets of the BackupPolicies in the Restore's
//! namespace (`target.objectStore`) are asked for their catalogue like the backup hosts of
//! file-store policies, each one an answer to [`super::restore::resolve`], so the newest
//! backup of the source wins wherever it is stored. When a bucket wins, the Restore's
//! `status.objectStore` names it and the destination agent reads the chain from there
//! (`agent/src/objstore_restore.rs`).
//!
//! **Credentials.** The controller reads the manifests with the keys of the policy's Secret
//! (`credentialsSecret`), as for retention. It hands no keys to agents: the destination agent
//! reads the pieces with its own keys (`--object-store-credentials`, the node's file), which
//! need `s3:GetObject` on `<prefix>/<source host>/*` (and `<prefix>/.archive/<source host>/*`
//! for archived pieces) and nothing else: the chain (ids, sizes, sha256) comes from the
//! Restore's status, so the agent neither lists the bucket nor writes to it. Granting that
//! read is the bucket owner's job (an IAM/bucket policy; SeaweedFS: an identity's policy, see
//! `e2e/manifests/seaweedfs/s3-identities.json`, identity `bucket-dst`).

use std::collections::BTreeMap;

use kube::api::{Api, ListParams};
use zetaback_core::api::backup_policy::ObjectStoreTarget;
use zetaback_core::store::Catalogue;
use zetaback_objstore::cached::Scope;

use super::bucket_catalogues::Freshness;
use super::restore::{Refusal, Resolved, StoreAnswer};
use super::{Context, Error};
use crate::api::{BackupPolicy, RestoreStatus};

/// The buckets asked for a Restore, each with its answer.
#[derive(Debug, Default)]
pub struct Buckets {
    asked: Vec<(StoreAnswer, ObjectStoreTarget)>,
}

/// The name a bucket answers under (the status's `storeHost`): `bucket <bucket>/<prefix>`.
pub fn label(target: &ObjectStoreTarget) -> String {
    match &target.prefix {
        Some(p) => format!("bucket {}/{p}", target.bucket),
        None => format!("bucket {}", target.bucket),
    }
}

/// The distinct object-store targets of `policies` (one per endpoint, bucket, prefix and
/// Secret), in a stable order (pure).
pub fn targets<'a>(policies: impl IntoIterator<Item = &'a BackupPolicy>) -> Vec<ObjectStoreTarget> {
    let mut seen = BTreeMap::new();
    for p in policies {
        if let Some(t) = &p.spec.target.object_store {
            let key = (
                t.endpoint.clone(),
                t.bucket.clone(),
                t.prefix.clone(),
                t.credentials_secret.name.as_str().to_owned(),
            );
            seen.entry(key).or_insert_with(|| t.clone());
        }
    }
    seen.into_values().collect()
}

impl Buckets {
    /// Reads `scope` (the Restore's source dataset, or host for a bulk Restore) of every
    /// bucket the namespace's policies store into, now (a listing; only manifests new since
    /// the last read are fetched: [`super::bucket_catalogues`]).
    pub async fn ask(ctx: &Context, namespace: &str, scope: Scope) -> Result<Self, Error> {
        let policies = Api::<BackupPolicy>::namespaced(ctx.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Read {
                what: "BackupPolicies".into(),
                source,
            })?
            .items;
        let mut asked = Vec::new();
        for target in targets(&policies) {
            let catalogue = ctx
                .buckets
                .catalogue(
                    &ctx.client,
                    namespace,
                    &target,
                    scope.clone(),
                    Freshness::Now,
                )
                .await
                .map(|c| Catalogue::clone(&c));
            let answer = StoreAnswer {
                host: label(&target),
                endpoint: Some(
                    target
                        .endpoint
                        .clone()
                        .unwrap_or_else(|| format!("AWS S3 {}", target.region)),
                ),
                catalogue,
            };
            asked.push((answer, target));
        }
        Ok(Self { asked })
    }

    /// The answers, for [`super::restore::resolve`].
    pub fn answers(&self) -> impl Iterator<Item = StoreAnswer> + '_ {
        self.asked.iter().map(|(a, _)| a.clone())
    }

    /// `next` with `objectStore` set when the chain was resolved from one of these buckets,
    /// cleared otherwise (pure).
    pub fn mark(
        &self,
        outcome: &Result<Resolved, Refusal>,
        mut next: RestoreStatus,
    ) -> RestoreStatus {
        next.object_store = match outcome {
            Ok(r) => self
                .asked
                .iter()
                .find(|(a, _)| a.host == r.store_host)
                .map(|(_, t)| t.clone()),
            Err(_) => None,
        };
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RestoreSpec;
    use crate::controller::restore::resolve;
    use zetaback_core::store::{Manifest, StoredBackup};

    fn target(bucket: &str, prefix: Option<&str>) -> ObjectStoreTarget {
        serde_json::from_value(serde_json::json!({
            "endpoint": "http://s3.example:8333", "bucket": bucket, "prefix": prefix,
            "pathStyle": true, "credentialsSecret": {"name": "keys"},
        }))
        .unwrap()
    }

    fn policy(name: &str, t: Option<ObjectStoreTarget>) -> BackupPolicy {
        let mut spec = serde_json::json!({
            "hosts": {"names": ["h"]}, "datasets": {"include": ["*/data"]},
            "full": {"every": "24h", "keep": "48h"},
            "incremental": {"every": "12h", "keep": "48h"},
            "target": {"host": "bak", "path": "/srv"},
        });
        if let Some(t) = t {
            spec["target"] = serde_json::json!({"objectStore": t});
        }
        BackupPolicy::new(name, serde_json::from_value(spec).unwrap())
    }

    fn backup(id: &str, created: i64) -> StoredBackup {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "version": 1, "host": "src", "dataset": "tank/data", "id": id,
            "snapshot": format!("zetaback-{created}"), "created": jiff::Timestamp::from_second(created).unwrap(),
            "type": "full", "bytes": 10, "sha256": format!("{created:064}"), "compression": "none",
        }))
        .unwrap();
        StoredBackup {
            manifest: m,
            archived: false,
            verification: None,
        }
    }

    fn answer(host: &str, backups: Vec<StoredBackup>) -> StoreAnswer {
        StoreAnswer {
            host: host.into(),
            endpoint: Some("e".into()),
            catalogue: Ok(Catalogue {
                backups,
                problems: vec![],
            }),
        }
    }

    fn spec() -> RestoreSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"host": "src", "dataset": "tank/data"},
            "destination": {"host": "dst", "dataset": "pool/restored"},
        }))
        .unwrap()
    }

    #[test]
    fn one_answer_per_bucket_and_prefix() {
        let a = target("b1", Some("x"));
        let policies = [
            policy("p1", Some(a.clone())),
            policy("p2", Some(a.clone())),
            policy("p3", Some(target("b1", Some("y")))),
            policy("p4", None),
        ];
        let t = targets(&policies);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(label(&t[0]), "bucket b1/x");
        assert_eq!(label(&target("b2", None)), "bucket b2");
    }

    #[test]
    fn the_newest_backup_wins_and_a_bucket_is_marked() {
        let t = target("b1", Some("x"));
        let buckets = Buckets {
            asked: vec![(
                answer(&label(&t), vec![backup("1700000100.full", 1_700_000_100)]),
                t.clone(),
            )],
        };
        // The bucket has the newer backup: it wins, and the status names it.
        let mut answers = vec![answer(
            "bak",
            vec![backup("1700000000.full", 1_700_000_000)],
        )];
        answers.extend(buckets.answers());
        let outcome = resolve(&spec(), &answers);
        let r = outcome.as_ref().unwrap();
        assert_eq!(r.store_host, "bucket b1/x");
        assert_eq!(
            r.pieces.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["1700000100.full"]
        );
        let next = buckets.mark(&outcome, RestoreStatus::default());
        assert_eq!(next.object_store, Some(t.clone()));

        // The backup host has the newer one: no bucket in the status.
        let answers = vec![
            answer("bak", vec![backup("1700000200.full", 1_700_000_200)]),
            buckets.answers().next().unwrap(),
        ];
        let outcome = resolve(&spec(), &answers);
        assert_eq!(outcome.as_ref().unwrap().store_host, "bak");
        let stale = RestoreStatus {
            object_store: Some(t),
            ..Default::default()
        };
        assert_eq!(buckets.mark(&outcome, stale).object_store, None);

        // A refusal names no bucket.
        let refused: Result<Resolved, Refusal> = Err(Refusal {
            reason: "NotFound",
            message: "m".into(),
        });
        assert_eq!(
            buckets
                .mark(&refused, RestoreStatus::default())
                .object_store,
            None
        );
    }

    #[test]
    fn an_unreadable_bucket_is_unreachable_only_without_other_backups() {
        let t = target("b1", None);
        let buckets = Buckets {
            asked: vec![(
                StoreAnswer {
                    host: label(&t),
                    endpoint: Some("e".into()),
                    catalogue: Err(
                        "AccessDenied: the keys of Secret keys are not allowed this".into()
                    ),
                },
                t,
            )],
        };
        let answers: Vec<_> = buckets.answers().collect();
        let refusal = resolve(&spec(), &answers).unwrap_err();
        assert_eq!(refusal.reason, "StoreUnreachable");
        assert!(
            refusal.message.contains("bucket b1: AccessDenied"),
            "{}",
            refusal.message
        );
    }
}
