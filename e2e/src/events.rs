//! Waiting for a Kubernetes Event, read through the API. (A test that read `kubectl get events`
//! once saw nothing when kubectl itself failed under load, and could not say why: here a failed
//! listing is retried and reported.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;

/// Waits until an Event in `namespace` has `reason` and a message containing `needle`; panics
/// after `limit` with every Event seen (or the listing's error).
pub async fn wait_for_event(
    client: &kube::Client,
    namespace: &str,
    reason: &str,
    needle: &str,
    limit: Duration,
) {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match api.list(&ListParams::default()).await {
            Ok(list) => {
                if list.items.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().is_some_and(|m| m.contains(needle))
                }) {
                    return;
                }
                list.items
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.reason.as_deref().unwrap_or_default(),
                            e.message.as_deref().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Err(e) => format!("listing the events failed: {e}"),
        };
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no {reason} event mentioning {needle:?} in namespace {namespace} within {limit:?}; seen:\n{seen}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
