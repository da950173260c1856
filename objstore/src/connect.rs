//! An S3 client for a `target.objectStore` and a pair of keys. The controller's keys come from
//! the policy's Secret; a source agent's from its own credentials file (`--object-store-credentials`),
//! so no source ever holds the controller's keys.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use serde::Deserialize;
use zetaback_core::api::backup_policy::ObjectStoreTarget;

use crate::ObjStoreError;

/// An access key pair. `Debug` never prints the secret.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Reads `{"accessKeyId": "...", "secretAccessKey": "..."}` from `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ObjStoreError> {
        let bad = |reason: String| ObjStoreError::Credentials {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let creds: Credentials = serde_json::from_slice(&text).map_err(|e| {
            bad(format!(
                "not {{\"accessKeyId\", \"secretAccessKey\"}} JSON: {e}"
            ))
        })?;
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
            return Err(bad("an empty key".into()));
        }
        Ok(creds)
    }
}

/// A client for `target`'s bucket signed with `creds`. Nothing is sent yet.
pub fn connect(
    target: &ObjectStoreTarget,
    creds: &Credentials,
) -> Result<Arc<dyn ObjectStore>, ObjStoreError> {
    connect_locked(target, creds, None)
}

/// [`connect`], and every object it writes is locked (S3 Object Lock, COMPLIANCE) until
/// `lock_until` (seconds since the epoch) when given ([`crate::lock`]).
pub fn connect_locked(
    target: &ObjectStoreTarget,
    creds: &Credentials,
    lock_until: Option<i64>,
) -> Result<Arc<dyn ObjectStore>, ObjStoreError> {
    // reqwest is built without a crypto provider of its own: use ring, as the rest of the
    // workspace does (installing twice is harmless: the first one stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&target.bucket)
        .with_region(&target.region)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(&creds.secret_access_key)
        .with_virtual_hosted_style_request(!target.path_style);
    if let Some(until) = lock_until {
        let headers = crate::lock::headers(until).ok_or_else(|| ObjStoreError::Config {
            bucket: target.bucket.clone(),
            reason: format!("no lock date for {until}"),
        })?;
        // AWS wants a checksum on every request that writes a locked object.
        b = b
            .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    if let Some(endpoint) = &target.endpoint {
        b = b
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = b.build().map_err(|e| ObjStoreError::Config {
        bucket: target.bucket.clone(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "s3cr3t".into(),
        };
        let text = format!("{c:?}");
        assert!(text.contains("AKID") && !text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn a_credentials_file_needs_both_keys() {
        let dir = std::env::temp_dir().join(format!("zb-objstore-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(&f, br#"{"accessKeyId":"a","secretAccessKey":""}"#).unwrap();
        assert!(
            Credentials::from_file(&f)
                .unwrap_err()
                .to_string()
                .contains("an empty key")
        );
        std::fs::write(&f, br#"{"accessKeyId":"a"}"#).unwrap();
        assert!(Credentials::from_file(&f).is_err());
        std::fs::write(&f, br#"{"accessKeyId":"a","secretAccessKey":"b"}"#).unwrap();
        assert_eq!(Credentials::from_file(&f).unwrap().access_key_id, "a");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
