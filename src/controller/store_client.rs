//! The controller's client for a backup host's agent: read the catalogue (the store is the
//! source of truth), delete expired backups, move backups to the archive area.
//!
//! The agent's API (agent/src/store_server.rs), all with `Authorization: Bearer <admin token>`:
//! * `GET /v1/catalogue?host=H` → the store's [`Catalogue`] for source host H (JSON);
//! * `DELETE /v1/streams/{host}/{escaped dataset}/{id}` → delete one backup;
//! * `POST /v1/archive/{host}/{escaped dataset}/{id}` → move one backup to `.archive/`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::store::Catalogue;
use crate::store::layout::escape_dataset;

/// Why a store request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreClientError {
    #[error("backup host {host} has no agent endpoint in its status (is its agent running?)")]
    NoEndpoint { host: String },
    #[error("{method} {url}: {message}")]
    Request {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("{method} {url}: the agent answered {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: the catalogue does not parse: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("dataset {0:?} cannot be named in a store path")]
    Dataset(String),
}

/// An HTTP client for backup hosts' agents.
#[derive(Clone)]
pub struct StoreClient {
    http: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl StoreClient {
    /// `token` is the admin token (the controller's Secret), sent as a bearer token.
    pub fn new(token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            token,
        }
    }

    async fn call(&self, method: &'static str, url: String) -> Result<Bytes, StoreClientError> {
        let mut req = hyper::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| StoreClientError::Request {
                method,
                url: url.clone(),
                message: e.to_string(),
            })?;
        let fail = |message: String| StoreClientError::Request {
            method,
            url: url.clone(),
            message,
        };
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| fail("timed out after 30s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(StoreClientError::Status {
                method,
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        Ok(body)
    }

    /// The backups stored for source host `host` on the backup host at `endpoint`.
    pub async fn catalogue(
        &self,
        endpoint: &str,
        host: &str,
    ) -> Result<Catalogue, StoreClientError> {
        let url = format!("http://{endpoint}/v1/catalogue?host={host}");
        let body = self.call("GET", url.clone()).await?;
        serde_json::from_slice(&body).map_err(|source| StoreClientError::Decode { url, source })
    }

    /// Every backup stored on the backup host at `endpoint` (all source hosts).
    pub async fn catalogue_all(&self, endpoint: &str) -> Result<Catalogue, StoreClientError> {
        let url = format!("http://{endpoint}/v1/catalogue");
        let body = self.call("GET", url.clone()).await?;
        serde_json::from_slice(&body).map_err(|source| StoreClientError::Decode { url, source })
    }

    fn stream_url(
        endpoint: &str,
        verb: &str,
        host: &str,
        dataset: &str,
        id: &str,
    ) -> Result<String, StoreClientError> {
        let escaped =
            escape_dataset(dataset).map_err(|_| StoreClientError::Dataset(dataset.into()))?;
        Ok(format!("http://{endpoint}/v1/{verb}/{host}/{escaped}/{id}"))
    }

    /// Deletes one stored backup.
    pub async fn delete(
        &self,
        endpoint: &str,
        host: &str,
        dataset: &str,
        id: &str,
    ) -> Result<(), StoreClientError> {
        let url = Self::stream_url(endpoint, "streams", host, dataset, id)?;
        self.call("DELETE", url).await.map(|_| ())
    }

    /// Moves one stored backup to the archive area.
    pub async fn archive(
        &self,
        endpoint: &str,
        host: &str,
        dataset: &str,
        id: &str,
    ) -> Result<(), StoreClientError> {
        let url = Self::stream_url(endpoint, "archive", host, dataset, id)?;
        self.call("POST", url).await.map(|_| ())
    }
}
