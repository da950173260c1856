//! Where a store finds the controller's public key to check restore grants
//! ([`zetaback_core::grant`]): the ConfigMap the controller publishes in its namespace (agents
//! may read it, not write it), re-read at most every [`KEY_CACHE`], or a key given directly
//! (tests).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::AuthError;

/// The ConfigMap key holding the hex Ed25519 public key.
pub const PUBLIC_KEY_ENTRY: &str = "ed25519.pub";
/// The ConfigMap's default name.
pub const DEFAULT_CONFIGMAP: &str = "zetaback-grant-key";
/// How long a key read from the ConfigMap is reused.
pub const KEY_CACHE: Duration = Duration::from_secs(60);

/// The controller's grant-verifying key.
pub enum GrantKey {
    /// A fixed key (hex).
    Static(String),
    /// The controller's ConfigMap.
    ConfigMap(Box<KeyMap>),
}

/// The ConfigMap a key is read from, and the last key read.
pub struct KeyMap {
    api: Api<ConfigMap>,
    name: String,
    cached: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantKey::Static(k) => write!(f, "GrantKey::Static({k})"),
            GrantKey::ConfigMap(m) => write!(f, "GrantKey::ConfigMap({})", m.name),
        }
    }
}

impl GrantKey {
    /// The key in ConfigMap `namespace/name`.
    pub fn config_map(client: kube::Client, namespace: &str, name: &str) -> Self {
        GrantKey::ConfigMap(Box::new(KeyMap {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            cached: Mutex::new(None),
        }))
    }

    /// The public key (hex).
    pub async fn public_key(&self) -> Result<String, AuthError> {
        let (api, name, cached) = match self {
            GrantKey::Static(k) => return Ok(k.clone()),
            GrantKey::ConfigMap(m) => (&m.api, &m.name, &m.cached),
        };
        if let Ok(c) = cached.lock()
            && let Some((at, key)) = c.as_ref()
            && at.elapsed() < KEY_CACHE
        {
            return Ok(key.clone());
        }
        let cm = api.get(name).await.map_err(|e| {
            AuthError::Unavailable(format!("the controller's grant key ConfigMap {name}: {e}"))
        })?;
        let key = cm
            .data
            .and_then(|d| d.get(PUBLIC_KEY_ENTRY).cloned())
            .ok_or_else(|| {
                AuthError::Unavailable(format!(
                    "ConfigMap {name} has no {PUBLIC_KEY_ENTRY} (has the controller started?)"
                ))
            })?;
        if let Ok(mut c) = cached.lock() {
            *c = Some((Instant::now(), key.clone()));
        }
        Ok(key)
    }
}
