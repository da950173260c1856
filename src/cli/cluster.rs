//! Reading the cluster and the backup hosts' catalogues, and writing the request annotations.
//! The only module of the CLI that does I/O besides printing.

use std::collections::HashMap;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::error::CliError;
use super::report;
use crate::api::{BackupJob, BackupPolicy, ZfsHost};
use crate::controller::backup_policy::POLICY_LABEL;
use crate::controller::store_client::StoreClient;
use crate::store;

/// Which namespaces a command looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

/// The cluster, the store client, and what was already fetched.
pub struct Cluster {
    pub client: Client,
    store: StoreClient,
    /// (agent endpoint, source host) → catalogue or why it could not be read.
    catalogues: HashMap<(String, String), Result<store::Catalogue, String>>,
}

impl Cluster {
    /// `store_ca`: read catalogues over TLS, each store verified as its ZfsHost's node.
    pub fn new(
        client: Client,
        token: Option<String>,
        store_ca: Option<std::sync::Arc<crate::peer_tls::ReaderTls>>,
    ) -> Self {
        let store = StoreClient::new(token);
        Self {
            client,
            store: match store_ca {
                Some(ca) => store.with_reader_tls(ca),
                None => store,
            },
            catalogues: HashMap::new(),
        }
    }

    fn policy_api(&self, scope: &Scope) -> Api<BackupPolicy> {
        match scope {
            Scope::Namespace(ns) => Api::namespaced(self.client.clone(), ns),
            Scope::All => Api::all(self.client.clone()),
        }
    }

    /// The BackupPolicies in scope, sorted by namespace and name.
    pub async fn policies(&self, scope: &Scope) -> Result<Vec<BackupPolicy>, CliError> {
        let what = match scope {
            Scope::Namespace(ns) => format!("cannot list BackupPolicies in namespace {ns}"),
            Scope::All => "cannot list BackupPolicies in all namespaces".into(),
        };
        let mut items = self
            .policy_api(scope)
            .list(&ListParams::default())
            .await
            .map_err(CliError::kube(what))?
            .items;
        items.sort_by_key(|p| (p.namespace(), p.name_any()));
        Ok(items)
    }

    /// One BackupPolicy.
    pub async fn policy(&self, namespace: &str, name: &str) -> Result<BackupPolicy, CliError> {
        Api::<BackupPolicy>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(CliError::kube(format!(
                "cannot read BackupPolicy {namespace}/{name}"
            )))?
            .ok_or_else(|| CliError::PolicyNotFound {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// Every ZfsHost (cluster-scoped).
    pub async fn hosts(&self) -> Result<Vec<ZfsHost>, CliError> {
        Ok(Api::<ZfsHost>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(CliError::kube("cannot list ZfsHosts"))?
            .items)
    }

    /// The BackupJobs of one policy.
    pub async fn jobs(&self, policy: &BackupPolicy) -> Result<Vec<BackupJob>, CliError> {
        let ns = policy.namespace().unwrap_or_default();
        Ok(Api::<BackupJob>::namespaced(self.client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={}", policy.name_any())))
            .await
            .map_err(CliError::kube(format!(
                "cannot list the BackupJobs of {ns}/{}",
                policy.name_any()
            )))?
            .items)
    }

    /// The catalogue of the policy's backup host for the policy's source hosts (merged), or
    /// why it cannot be read. An endpoint that failed once is not asked again.
    pub async fn catalogue(
        &mut self,
        policy: &BackupPolicy,
        hosts: &[ZfsHost],
    ) -> Result<store::Catalogue, String> {
        let target = policy.spec.target.host_name();
        let host = hosts
            .iter()
            .find(|h| h.name_any() == target)
            .ok_or_else(|| {
                format!("backup host {target} does not exist (no ZfsHost of that name)")
            })?;
        let endpoint = crate::controller::store_tls::endpoint_of(host).ok_or_else(|| {
            format!(
                "backup host {target} has no agent endpoint in its status (is its agent running?)"
            )
        })?;
        let mut merged = store::Catalogue::default();
        for source in report::selected_hosts(policy, hosts) {
            if let Some(Err(e)) = self
                .catalogues
                .iter()
                .find(|((ep, _), r)| *ep == endpoint && r.is_err())
                .map(|(_, r)| r)
            {
                return Err(e.clone());
            }
            let key = (endpoint.clone(), source.clone());
            if !self.catalogues.contains_key(&key) {
                let got = self
                    .store
                    .catalogue(&endpoint, &source)
                    .await
                    .map_err(|e| format!("backup host {target}: {e}"));
                self.catalogues.insert(key.clone(), got);
            }
            match self.catalogues.get(&key) {
                Some(Ok(c)) => {
                    merged.backups.extend(c.backups.iter().cloned());
                    merged.problems.extend(c.problems.iter().cloned());
                }
                Some(Err(e)) => return Err(e.clone()),
                None => {}
            }
        }
        merged.backups.sort_by(|a, b| {
            (
                &a.manifest.host,
                &a.manifest.dataset,
                a.manifest.created,
                &a.manifest.id,
            )
                .cmp(&(
                    &b.manifest.host,
                    &b.manifest.dataset,
                    b.manifest.created,
                    &b.manifest.id,
                ))
        });
        Ok(merged)
    }

    /// Sets annotations on a policy with a JSON merge patch on `metadata.annotations`, only if
    /// the policy is still the version `policy` was read at (its `resourceVersion`): otherwise
    /// the apiserver answers 409 Conflict and nothing is written.
    pub async fn annotate_unchanged(
        &self,
        policy: &BackupPolicy,
        annotations: serde_json::Value,
    ) -> Result<(), CliError> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let version = policy.resource_version();
        Api::<BackupPolicy>::namespaced(self.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {
                    "resourceVersion": version,
                    "annotations": annotations,
                }})),
            )
            .await
            .map_err(CliError::kube(format!(
                "cannot annotate BackupPolicy {ns}/{name}"
            )))?;
        Ok(())
    }

    /// Sets annotations on a policy with a JSON merge patch on `metadata.annotations`.
    pub async fn annotate(
        &self,
        policy: &BackupPolicy,
        annotations: serde_json::Value,
    ) -> Result<(), CliError> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        Api::<BackupPolicy>::namespaced(self.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": annotations}})),
            )
            .await
            .map_err(CliError::kube(format!(
                "cannot annotate BackupPolicy {ns}/{name}"
            )))?;
        Ok(())
    }
}
