//! Object-store helpers for end-to-end tests outside `bucket_flow.rs`: the shared SeaweedFS
//! (`e2e/scripts/seaweedfs.sh up`, private when `ZETABACK_S3_*` say so), a policy's
//! `target.objectStore`, the controller's Secret, an agent's keys file and a client with the
//! admin key (as a person would check or tamper with the bucket). The identities are those of
//! `e2e/manifests/seaweedfs/s3-identities.json`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use zetaback::api::backup_policy::ObjectStoreTarget;
use zetaback_objstore::object_store::ObjectStore;
use zetaback_objstore::{Credentials, Keys};

use crate::Env;

/// The bucket every e2e policy uses.
pub const BUCKET: &str = "zetaback-e2e";
/// The controller's keys (every action on the bucket).
pub const ADMIN: (&str, &str) = ("ZBE2EADMIN", "zetaback-e2e-admin-secret");
/// A source host's own keys: `bucket/*/bucket-*-src/*`, no delete (so its host name must be
/// `bucket-…-src`: a fleet in a namespace named `bucket-…`, host `src`).
pub const SOURCE: (&str, &str) = ("ZBE2EBUCKETSRC", "zetaback-e2e-bucket-src-secret");

/// Starts (or finds) the SeaweedFS of this environment; its S3 endpoint.
pub fn s3_endpoint(env: &Env) -> String {
    let out = std::process::Command::new(env.root.join("e2e/scripts/seaweedfs.sh"))
        .arg("up")
        .output()
        .expect("run e2e/scripts/seaweedfs.sh up");
    assert!(
        out.status.success(),
        "seaweedfs.sh up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A policy's `target` (JSON): the bucket under `prefix`, keys from Secret `secret`.
pub fn target(endpoint: &str, prefix: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({"objectStore": {
        "endpoint": endpoint, "bucket": BUCKET, "prefix": prefix, "region": "us-east-1",
        "pathStyle": true, "credentialsSecret": {"name": secret},
    }})
}

/// Creates Secret `name` with an access key pair, as the controller reads it.
pub async fn key_secret(client: &kube::Client, ns: &str, name: &str, (id, secret): (&str, &str)) {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"accessKeyId": id, "secretAccessKey": secret},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create Secret");
}

/// A credentials file for an agent (`--object-store-credentials`) in `dir`.
pub fn creds_file(dir: &Path, (id, secret): (&str, &str)) -> PathBuf {
    std::fs::create_dir_all(dir).expect("credentials dir");
    let f = dir.join("s3-credentials.json");
    std::fs::write(
        &f,
        serde_json::json!({"accessKeyId": id, "secretAccessKey": secret}).to_string(),
    )
    .expect("credentials file");
    f
}

/// A client of the bucket with the admin key, and the key layout under `prefix`.
pub fn admin(endpoint: &str, prefix: &str) -> (std::sync::Arc<dyn ObjectStore>, Keys) {
    let t: ObjectStoreTarget =
        serde_json::from_value(target(endpoint, prefix, "unused")["objectStore"].clone())
            .expect("target");
    let store = zetaback_objstore::connect(
        &t,
        &Credentials {
            access_key_id: ADMIN.0.into(),
            secret_access_key: ADMIN.1.into(),
        },
    )
    .expect("client");
    (store, Keys::new(Some(prefix)))
}

/// Deletes everything under `prefix` (the admin key).
pub async fn empty_prefix(endpoint: &str, prefix: &str) {
    use futures::TryStreamExt;
    let (store, _) = admin(endpoint, prefix);
    let root = zetaback_objstore::object_store::path::Path::from(prefix);
    let objects: Vec<_> = store
        .list(Some(&root))
        .try_collect()
        .await
        .unwrap_or_default();
    for o in objects {
        let _ =
            zetaback_objstore::object_store::ObjectStoreExt::delete(store.as_ref(), &o.location)
                .await;
    }
}
