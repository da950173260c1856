//! The controller's client for a backup host's agent: read the catalogue (the store is the
//! source of truth), delete expired backups, move backups to the archive area.
//!
//! The agent's API (agent/src/store_server.rs), all with `Authorization: Bearer <admin token>`;
//! the paths come from [`crate::wire::routes`], beside the patterns the agent's router serves:
//!
//! * `GET /v1/catalogue[?host=H]` → the store's [`Catalogue`] (for source host H), JSON, with
//!   an `ETag`; a request with `If-None-Match: <that tag>` gets `304 Not Modified` and no body
//!   while the answer would be the same;
//! * `DELETE /v1/streams/{host}/{escaped dataset}/{id}` → delete one backup;
//! * `POST /v1/archive/{host}/{escaped dataset}/{id}` → move one backup to `.archive/`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::policy;
use crate::store::{Catalogue, StoreError, StoredBackup};
use crate::wire::{VerifyRequest, VerifyStatus, routes};

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
    #[error("the backup cannot be named in a store path: {0}")]
    Path(#[from] StoreError),
}

/// The largest answer read from an agent (a catalogue of ~200,000 backups).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// How long reading an answer's body may take, after its head arrived.
pub const ANSWER_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The answer to a possibly conditional request.
enum Fetched {
    NotModified,
    Changed { body: Bytes, etag: Option<String> },
}

/// A catalogue answer, without the backups dated in the future: a store that holds one (a
/// forged manifest, or a host whose clock ran ahead) would otherwise stop its dataset's
/// backups and make retention delete the real ones. Each is logged and kept among the
/// catalogue's problems (issue 13, finding 2).
fn decode_catalogue(url: String, body: &[u8]) -> Result<Catalogue, StoreClientError> {
    let mut cat: Catalogue =
        serde_json::from_slice(body).map_err(|source| StoreClientError::Decode {
            url: url.clone(),
            source,
        })?;
    for b in crate::store::future::drop_future(&mut cat, jiff::Timestamp::now()) {
        let m = &b.manifest;
        tracing::warn!(
            %url,
            host = %m.host,
            dataset = %m.dataset,
            backup = %m.id,
            created = %m.created,
            "ignoring a backup dated in the future (a forged manifest or a clock far ahead)"
        );
    }
    Ok(cat)
}

/// An HTTP client for backup hosts' agents.
#[derive(Clone)]
pub struct StoreClient {
    /// Plaintext, or mutual TLS to the node each endpoint names ([`super::store_tls`]).
    http: super::store_tls::Clients,
    token: Option<String>,
    /// A file holding the token, read for every request (rotated projected tokens).
    token_file: Option<std::path::PathBuf>,
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
        Self {
            http: super::store_tls::Clients::new(None),
            token,
            token_file: None,
        }
    }

    /// Mutual TLS to the stores: this client's certificate (the controller's) and the CA;
    /// each endpoint must be `node@address` ([`super::store_tls::peer_address`]). No bearer
    /// token is sent then (the certificate says who calls).
    pub fn with_tls(mut self, tls: Arc<zetaback_core::peer_tls::PeerTls>) -> Self {
        self.http = super::store_tls::Clients::new(Some(super::store_tls::ClientTls::Mutual(tls)));
        self.token = None;
        self.token_file = None;
        self
    }

    /// TLS to the stores for a catalogue reader (the CLI): each store must prove it is the
    /// node its ZfsHost names; the reader's bearer token is still sent.
    pub fn with_reader_tls(mut self, tls: Arc<zetaback_core::peer_tls::ReaderTls>) -> Self {
        self.http = super::store_tls::Clients::new(Some(super::store_tls::ClientTls::Reader(tls)));
        self
    }

    /// A client whose bearer token is read from `path` for every request.
    pub fn with_token_file(path: std::path::PathBuf) -> Self {
        Self {
            token_file: Some(path),
            ..Self::new(None)
        }
    }

    async fn call(&self, method: &'static str, url: String) -> Result<Bytes, StoreClientError> {
        self.call_with(method, url, Bytes::new()).await
    }

    /// A request with a JSON body (empty: none).
    async fn call_with(
        &self,
        method: &'static str,
        url: String,
        body: Bytes,
    ) -> Result<Bytes, StoreClientError> {
        match self.send(method, url, None, body).await? {
            Fetched::Changed { body, .. } => Ok(body),
            Fetched::NotModified => Ok(Bytes::new()),
        }
    }

    /// A request that may be conditional (`If-None-Match: etag`).
    async fn call_if(
        &self,
        method: &'static str,
        url: String,
        etag: Option<&str>,
    ) -> Result<Fetched, StoreClientError> {
        self.send(method, url, etag, Bytes::new()).await
    }

    async fn send(
        &self,
        method: &'static str,
        url: String,
        etag: Option<&str>,
        body: Bytes,
    ) -> Result<Fetched, StoreClientError> {
        let (http, wire_url) = self
            .http
            .for_url(&url)
            .map_err(|e| StoreClientError::Request {
                method,
                url: url.clone(),
                message: e.to_string(),
            })?;
        let mut req = hyper::Request::builder().method(method).uri(&wire_url);
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let from_file = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| StoreClientError::Request {
                        method,
                        url: url.clone(),
                        message: format!("reading the token file {}: {e}", path.display()),
                    })?,
            ),
            None => None,
        };
        if let Some(t) = from_file.as_ref().or(self.token.as_ref()) {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(tag) = etag {
            req = req.header(hyper::header::IF_NONE_MATCH, tag);
        }
        let req = req
            .body(Full::new(body))
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
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), http.request(req))
            .await
            .map_err(|_| fail("timed out after 30s".into()))?
            // The whole chain: a refused certificate says why (issue 13).
            .map_err(|e| fail(crate::error_chain::format(&e)))?;
        let status = resp.status();
        if status == hyper::StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(Fetched::NotModified);
        }
        let tag = resp
            .headers()
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The answer is read within a size and a time limit: an agent is a peer, not trusted
        // to end its answer (a compromised node could stream forever or trickle).
        let body = tokio::time::timeout(
            ANSWER_TIME_LIMIT,
            http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await
        .map_err(|_| {
            fail(format!(
                "the answer did not end within {}s",
                ANSWER_TIME_LIMIT.as_secs()
            ))
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                fail(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes (refused)"
                ))
            } else {
                fail(e.to_string())
            }
        })?
        .to_bytes();
        if !status.is_success() {
            return Err(StoreClientError::Status {
                method,
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        Ok(Fetched::Changed { body, etag: tag })
    }

    /// The catalogue at `url` unless it still has tag `etag` (then `None`), with its new tag.
    async fn catalogue_if(
        &self,
        url: String,
        etag: Option<&str>,
    ) -> Result<Option<(Catalogue, Option<String>)>, StoreClientError> {
        match self.call_if("GET", url.clone(), etag).await? {
            Fetched::NotModified => Ok(None),
            Fetched::Changed { body, etag } => {
                decode_catalogue(url, &body).map(|c| Some((c, etag)))
            }
        }
    }

    /// The backups stored for source host `host` on the backup host at `endpoint`.
    pub async fn catalogue(
        &self,
        endpoint: &str,
        host: &str,
    ) -> Result<Catalogue, StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::catalogue(Some(host)));
        let body = self.call("GET", url.clone()).await?;
        decode_catalogue(url, &body)
    }

    /// Every backup stored on the backup host at `endpoint` (all source hosts).
    pub async fn catalogue_all(&self, endpoint: &str) -> Result<Catalogue, StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::catalogue(None));
        let body = self.call("GET", url.clone()).await?;
        decode_catalogue(url, &body)
    }

    /// Deletes one stored backup.
    pub async fn delete(
        &self,
        endpoint: &str,
        host: &str,
        dataset: &str,
        id: &str,
    ) -> Result<(), StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::stream(host, dataset, id)?);
        self.call("DELETE", url).await.map(|_| ())
    }

    /// Queues stored backups to be re-read and checked by the store (`spec.verify`).
    pub async fn verify(
        &self,
        endpoint: &str,
        request: &VerifyRequest,
    ) -> Result<VerifyStatus, StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::VERIFY);
        let body = serde_json::to_vec(request).map_err(|source| StoreClientError::Decode {
            url: url.clone(),
            source,
        })?;
        let answer = self.call_with("POST", url.clone(), body.into()).await?;
        serde_json::from_slice(&answer).map_err(|source| StoreClientError::Decode { url, source })
    }

    /// What the store's verifier is doing.
    pub async fn verify_status(&self, endpoint: &str) -> Result<VerifyStatus, StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::VERIFY);
        let answer = self.call("GET", url.clone()).await?;
        serde_json::from_slice(&answer).map_err(|source| StoreClientError::Decode { url, source })
    }

    /// Moves one stored backup to the archive area.
    pub async fn archive(
        &self,
        endpoint: &str,
        host: &str,
        dataset: &str,
        id: &str,
    ) -> Result<(), StoreClientError> {
        let url = format!("http://{endpoint}{}", routes::archive(host, dataset, id)?);
        self.call("POST", url).await.map(|_| ())
    }
}

/// The controller's copy of a backup host's catalogue is confirmed unchanged (or read again)
/// at least this often; in between only source hosts with new backups are read again.
pub const CATALOGUE_MAX_AGE: Duration = Duration::from_secs(60);

/// One dataset's stored backups as the policy logic reads them (or why they cannot be read).
pub type DatasetCatalogue = Result<policy::DatasetBackups, policy::CatalogueError>;

/// What one backup host stores for one source host, indexed by dataset.
#[derive(Debug, Default)]
pub struct HostCatalogue {
    datasets: HashMap<String, DatasetCatalogue>,
    /// Per dataset and owning policy (`<namespace>/<name>`), the backups that policy may act
    /// on: its own and those without a recorded owner (written before manifests named one).
    /// The key with an empty owner holds only those without one.
    owned: HashMap<(String, String), DatasetCatalogue>,
    /// Per dataset, the policies whose backups it holds.
    owners: HashMap<String, BTreeSet<String>>,
    /// Backup ids per dataset (to tell whether a succeeded job's backup is known).
    ids: HashMap<String, HashSet<String>>,
}

impl HostCatalogue {
    fn new<'a>(backups: impl IntoIterator<Item = &'a StoredBackup>) -> Self {
        let mut by_dataset: HashMap<&str, Vec<&StoredBackup>> = HashMap::new();
        for b in backups {
            by_dataset.entry(&b.manifest.dataset).or_default().push(b);
        }
        let mut out = HostCatalogue::default();
        for (ds, list) in by_dataset {
            out.ids.insert(
                ds.to_owned(),
                list.iter().map(|b| b.manifest.id.clone()).collect(),
            );
            let owners: BTreeSet<String> = list
                .iter()
                .filter_map(|b| b.manifest.policy.clone())
                .collect();
            for owner in owners.iter().map(String::as_str).chain([""]) {
                let mine = list.iter().copied().filter(|b| {
                    b.manifest
                        .policy
                        .as_deref()
                        .is_none_or(|p| !owner.is_empty() && p == owner)
                });
                out.owned.insert(
                    (ds.to_owned(), owner.to_owned()),
                    policy::DatasetBackups::from_store(mine),
                );
            }
            out.owners.insert(ds.to_owned(), owners);
            out.datasets
                .insert(ds.to_owned(), policy::DatasetBackups::from_store(list));
        }
        out
    }

    /// The index of one source host's backups (those of `catalogue` that are `host`'s).
    pub fn of_host(catalogue: &Catalogue, host: &str) -> Self {
        Self::new(catalogue.backups.iter().filter(|b| b.manifest.host == host))
    }

    /// Whether backup `id` of `dataset` is stored (live or archived).
    pub fn has(&self, dataset: &str, id: &str) -> bool {
        self.ids.get(dataset).is_some_and(|s| s.contains(id))
    }
}

/// A read-only view of a backup host's store for the source hosts one policy covers: what
/// [`super::backup_policy::plan`] reads. Cheap to build (shared, pre-indexed entries).
#[derive(Debug, Default, Clone)]
pub struct StoreView {
    hosts: HashMap<String, Arc<HostCatalogue>>,
}

static EMPTY: std::sync::LazyLock<DatasetCatalogue> =
    std::sync::LazyLock::new(|| Ok(policy::DatasetBackups::default()));

impl StoreView {
    /// Indexes a whole store catalogue (every source host in it).
    pub fn from_store(catalogue: &Catalogue) -> Self {
        let mut by_host: HashMap<&str, Vec<&StoredBackup>> = HashMap::new();
        for b in &catalogue.backups {
            by_host.entry(&b.manifest.host).or_default().push(b);
        }
        Self {
            hosts: by_host
                .into_iter()
                .map(|(h, list)| (h.to_owned(), Arc::new(HostCatalogue::new(list))))
                .collect(),
        }
    }

    /// A view of source hosts indexed one by one (a bucket's per-host catalogues).
    pub fn from_hosts(hosts: impl IntoIterator<Item = (String, Arc<HostCatalogue>)>) -> Self {
        Self {
            hosts: hosts.into_iter().collect(),
        }
    }

    /// The backups of one dataset (empty when none are stored).
    pub fn dataset(&self, host: &str, dataset: &str) -> &DatasetCatalogue {
        self.hosts
            .get(host)
            .and_then(|h| h.datasets.get(dataset))
            .unwrap_or(&EMPTY)
    }

    /// The backups of one dataset that policy `owner` (`<namespace>/<name>`) acts on: those it
    /// made, and those without a recorded owner. Another policy's backups are not in it, so
    /// its retention never deletes them.
    pub fn owned_by(&self, host: &str, dataset: &str, owner: &str) -> &DatasetCatalogue {
        let Some(h) = self.hosts.get(host) else {
            return &EMPTY;
        };
        let key = |o: &str| (dataset.to_owned(), o.to_owned());
        h.owned
            .get(&key(owner))
            .or_else(|| h.owned.get(&key("")))
            .unwrap_or(&EMPTY)
    }

    /// The other policies (`<namespace>/<name>`) whose backups of this dataset are stored.
    pub fn other_owners(&self, host: &str, dataset: &str, owner: &str) -> Vec<String> {
        self.hosts
            .get(host)
            .and_then(|h| h.owners.get(dataset))
            .map(|o| o.iter().filter(|p| *p != owner).cloned().collect())
            .unwrap_or_default()
    }
}

/// One source host's entry in the cache.
#[derive(Debug, Default)]
struct HostEntry {
    catalogue: Arc<HostCatalogue>,
    /// The tag of the `?host=` answer it came from (`None`: from a whole-store answer).
    etag: Option<String>,
    /// Changed by the controller (deletion, archive): read again before use.
    dirty: bool,
    /// Backups that succeeded jobs name but that the store did not have when this entry was
    /// last read (e.g. since expired): not a reason to read it again.
    missing: HashSet<(String, String)>,
    /// The sequence number of the read this entry came from (a later-started read wins).
    seq: u64,
}

/// One backup host's store as last read.
#[derive(Debug, Default)]
struct TargetEntry {
    /// The whole store's tag and when it was last read or confirmed.
    whole: Option<(Option<String>, Instant)>,
    hosts: HashMap<String, HostEntry>,
    /// Numbers reads in the order they start.
    seq: u64,
    /// A background revalidation is under way.
    refreshing: bool,
}

/// Applies the answer to a whole-store read that started as number `seq`: entries from reads
/// that started later are kept; the rest are replaced (or dropped if the store has no
/// backups of that host any more).
fn apply_whole(
    t: &mut TargetEntry,
    seq: u64,
    etag: Option<String>,
    answer: Option<(Catalogue, Option<String>)>,
) {
    match answer {
        None => t.whole = Some((etag, Instant::now())),
        Some((cat, tag)) => {
            let mut fresh = StoreView::from_store(&cat).hosts;
            t.hosts.retain(|h, e| e.seq > seq || fresh.contains_key(h));
            for (h, catalogue) in fresh.drain() {
                let e = t.hosts.entry(h).or_default();
                if e.seq > seq {
                    continue;
                }
                *e = HostEntry {
                    catalogue,
                    seq,
                    ..Default::default()
                };
            }
            t.whole = Some((tag, Instant::now()));
        }
    }
}

/// What a `?host=` read did to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRead {
    /// A read that started later was kept already: this answer was dropped.
    Superseded,
    /// 304: the entry is current.
    NotModified,
    /// The entry was replaced by the answer.
    Replaced,
}

/// Applies the answer to a `?host=H` read that started as number `seq`. A replaced entry
/// also drops the whole-store tag: the copy is now newer than the whole read that tag names,
/// and if the store went back to exactly that content (a backup deleted behind the
/// controller's back) a conditional whole read would be answered 304 and the deleted backup
/// kept in the copy forever. The next revalidation reads the whole store instead.
fn apply_host(
    t: &mut TargetEntry,
    host: &str,
    seq: u64,
    answer: Option<(Catalogue, Option<String>)>,
    known: &[KnownBackup],
) -> HostRead {
    let entry = t.hosts.entry(host.to_owned()).or_default();
    if entry.seq > seq {
        return HostRead::Superseded;
    }
    entry.seq = seq;
    let read = match answer {
        None => HostRead::NotModified,
        Some((cat, tag)) => {
            entry.catalogue = Arc::new(HostCatalogue::new(
                cat.backups.iter().filter(|b| b.manifest.host == host),
            ));
            entry.etag = tag;
            HostRead::Replaced
        }
    };
    entry.dirty = false;
    entry.missing = known
        .iter()
        .filter(|(kh, ds, id)| kh == host && !entry.catalogue.has(ds, id))
        .map(|(_, ds, id)| (ds.clone(), id.clone()))
        .collect();
    if read == HostRead::Replaced
        && let Some((tag, _)) = t.whole.as_mut()
    {
        *tag = None;
    }
    read
}

/// The controller's copy of each backup host's catalogue, shared by all policies (the store
/// stays the source of truth; this only avoids re-reading it whole on every reconcile).
///
/// * Cold, or older than `max_age`: the whole store is read, or confirmed unchanged with a
///   conditional request (`If-None-Match`, answered 304 without a body); this also picks up
///   changes made behind the controller's back (a restored file, a manual delete).
/// * A source host whose entry misses the backup a succeeded BackupJob names, or that the
///   controller changed (retention, archive), is read again alone (`?host=`, conditional).
///
/// Reads of one backup host are serialised, so policies reconciled at once share them.
#[derive(Debug)]
pub struct CatalogueCache {
    max_age: Duration,
    targets: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<TargetEntry>>>>,
    /// Requests sent and bodies received (for the metrics).
    pub requests: std::sync::atomic::AtomicU64,
    pub not_modified: std::sync::atomic::AtomicU64,
}

/// A backup a succeeded job says is stored: (source host, dataset, backup id).
pub type KnownBackup = (String, String, String);

impl CatalogueCache {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            targets: std::sync::Mutex::new(HashMap::new()),
            requests: Default::default(),
            not_modified: Default::default(),
        }
    }

    fn target(&self, endpoint: &str) -> Arc<tokio::sync::Mutex<TargetEntry>> {
        let mut map = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(endpoint.to_owned()).or_default().clone()
    }

    /// Marks a source host's entry as changed by the controller (read again before use).
    pub async fn invalidate(&self, endpoint: &str, host: &str) {
        let target = self.target(endpoint);
        let mut t = target.lock().await;
        if let Some(h) = t.hosts.get_mut(host) {
            h.dirty = true;
        }
    }

    /// A current view of the store at `endpoint` for `hosts`. `known`: backups succeeded jobs
    /// name; a host whose entry lacks one is read again.
    pub async fn view(
        &self,
        client: &StoreClient,
        endpoint: &str,
        hosts: &[String],
        known: &[KnownBackup],
    ) -> Result<StoreView, StoreClientError> {
        use std::sync::atomic::Ordering::Relaxed;
        let target = self.target(endpoint);
        let mut t = target.lock().await;
        let age = t.whole.as_ref().map(|(_, at)| at.elapsed());
        let url = format!("http://{endpoint}{}", routes::catalogue(None));
        match age {
            // Cold, or background revalidation has not succeeded for two periods (the store
            // may be down): read now, so a failure reaches the policy's status.
            None => {
                t.seq += 1;
                let seq = t.seq;
                self.requests.fetch_add(1, Relaxed);
                let answer = client.catalogue_if(url, None).await?;
                apply_whole(&mut t, seq, None, answer);
            }
            Some(age) if age >= 2 * self.max_age => {
                t.seq += 1;
                let seq = t.seq;
                let etag = t.whole.as_ref().and_then(|(tag, _)| tag.clone());
                self.requests.fetch_add(1, Relaxed);
                let answer = client.catalogue_if(url, etag.as_deref()).await?;
                apply_whole(&mut t, seq, etag, answer);
            }
            // Due for revalidation: in the background; this reconcile uses the copy it has
            // (new backups of its hosts are read below either way).
            Some(age) if age >= self.max_age && !t.refreshing => {
                t.refreshing = true;
                t.seq += 1;
                let seq = t.seq;
                let etag = t.whole.as_ref().and_then(|(tag, _)| tag.clone());
                self.requests.fetch_add(1, Relaxed);
                let (client, target) = (client.clone(), target.clone());
                tokio::spawn(async move {
                    let answer = client.catalogue_if(url, etag.as_deref()).await;
                    let mut t = target.lock().await;
                    t.refreshing = false;
                    match answer {
                        Ok(answer) => apply_whole(&mut t, seq, etag, answer),
                        Err(e) => {
                            tracing::warn!(error = %e, "revalidating a backup host's catalogue failed")
                        }
                    }
                });
            }
            Some(_) => {}
        }
        // Hosts to read again: changed by us, or missing a backup a job says is stored.
        let mut again: HashSet<&str> = HashSet::new();
        for h in hosts {
            if t.hosts.get(h).is_some_and(|e| e.dirty) {
                again.insert(h);
            }
        }
        for (h, ds, id) in known {
            let Some(e) = t.hosts.get(h.as_str()) else {
                // A host the whole read did not show: it has backups now.
                if hosts.iter().any(|x| x == h) {
                    again.insert(h);
                }
                continue;
            };
            if !e.catalogue.has(ds, id) && !e.missing.contains(&(ds.clone(), id.clone())) {
                again.insert(h);
            }
        }
        if !again.is_empty() {
            // Read outside the lock (other policies' reconciles go on); an answer is kept
            // only if no read that started later was kept first.
            let todo: Vec<(String, Option<String>, u64)> = again
                .into_iter()
                .map(|h| {
                    let etag = t.hosts.get(h).and_then(|e| e.etag.clone());
                    t.seq += 1;
                    (h.to_owned(), etag, t.seq)
                })
                .collect();
            drop(t);
            let reads = todo.into_iter().map(|(h, etag, seq)| {
                let url = format!("http://{endpoint}{}", routes::catalogue(Some(h.as_str())));
                self.requests.fetch_add(1, Relaxed);
                async move {
                    let answer = client.catalogue_if(url, etag.as_deref()).await;
                    (h, seq, answer)
                }
            });
            let answers = futures::future::join_all(reads).await;
            let mut fresh = Vec::new();
            for (h, seq, answer) in answers {
                fresh.push((h, seq, answer?));
            }
            t = target.lock().await;
            for (h, seq, answer) in fresh {
                if apply_host(&mut t, &h, seq, answer, known) == HostRead::NotModified {
                    self.not_modified.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(StoreView {
            hosts: hosts
                .iter()
                .filter_map(|h| t.hosts.get(h).map(|e| (h.clone(), e.catalogue.clone())))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupType;
    use crate::store::Manifest;

    /// A hostile agent stand-in (a real HTTP server on loopback): its catalogue answer never
    /// ends. The client must give up at the size limit instead of holding it all in memory.
    #[tokio::test]
    async fn an_endless_answer_is_refused_at_the_size_limit() {
        async fn endless() -> axum::body::Body {
            let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
            axum::body::Body::from_stream(futures::stream::repeat_with(move || {
                Ok::<_, std::io::Error>(chunk.clone())
            }))
        }
        let app = axum::Router::new().route("/v1/catalogue", axum::routing::get(endless));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = StoreClient::new(None);
        match client.catalogue_all(&addr.to_string()).await {
            Err(StoreClientError::Request { message, .. }) => {
                assert!(message.contains("larger than"), "{message}")
            }
            other => panic!("expected a refusal at the size limit, got {other:?}"),
        }
    }

    fn backup(host: &str, dataset: &str, at: i64) -> StoredBackup {
        StoredBackup {
            manifest: Manifest {
                version: 1,
                id: format!("{at}.full"),
                host: host.into(),
                dataset: dataset.into(),
                snapshot: format!("zetaback-{at}"),
                base_snapshot: None,
                backup_type: BackupType::Full,
                bytes: 10,
                sha256: Some("0".repeat(64)),
                compression: crate::api::backup_policy::Compression::None,
                created: jiff::Timestamp::from_second(at).unwrap(),
                policy: None,
                xxh3: None,
                raw: false,
            },
            archived: false,
            verification: None,
        }
    }

    fn cat(backups: Vec<StoredBackup>) -> Catalogue {
        Catalogue {
            backups,
            problems: vec![],
        }
    }

    fn owned(at: i64, policy: Option<&str>) -> StoredBackup {
        let mut b = backup("h1", "tank/a", at);
        b.manifest.policy = policy.map(str::to_owned);
        b
    }

    #[test]
    fn a_policy_sees_its_own_backups_and_those_without_an_owner() {
        let view = StoreView::from_store(&cat(vec![
            owned(100, None),
            owned(200, Some("ns/a")),
            owned(300, Some("ns/b")),
            owned(400, Some("ns/a")),
        ]));
        let ids = |owner: &str| -> Vec<String> {
            view.owned_by("h1", "tank/a", owner)
                .as_ref()
                .unwrap()
                .records()
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        assert_eq!(ids("ns/a"), ["100.full", "200.full", "400.full"]);
        assert_eq!(ids("ns/b"), ["100.full", "300.full"]);
        // A policy that made none sees only the backups without an owner.
        assert_eq!(ids("other/c"), ["100.full"]);
        assert_eq!(view.other_owners("h1", "tank/a", "ns/a"), ["ns/b"]);
        assert_eq!(
            view.other_owners("h1", "tank/a", "other/c"),
            ["ns/a", "ns/b"]
        );
        assert!(view.other_owners("h1", "tank/x", "ns/a").is_empty());
        assert!(
            view.owned_by("h9", "tank/a", "ns/a")
                .as_ref()
                .unwrap()
                .records()
                .is_empty()
        );
    }

    #[test]
    fn the_view_is_indexed_per_host_and_dataset() {
        let view = StoreView::from_store(&cat(vec![
            backup("h1", "tank/a", 100),
            backup("h1", "tank/a", 200),
            backup("h2", "tank/a", 300),
        ]));
        let a = view.dataset("h1", "tank/a").as_ref().unwrap();
        assert_eq!(a.records().len(), 2);
        assert_eq!(
            view.dataset("h2", "tank/a")
                .as_ref()
                .unwrap()
                .records()
                .len(),
            1
        );
        assert!(
            view.dataset("h3", "tank/x")
                .as_ref()
                .unwrap()
                .records()
                .is_empty()
        );
        assert!(view.hosts["h1"].has("tank/a", "200.full"));
        assert!(!view.hosts["h1"].has("tank/a", "300.full"));
    }

    #[test]
    fn a_whole_read_never_overwrites_a_later_started_host_read() {
        let mut t = TargetEntry::default();
        apply_whole(
            &mut t,
            1,
            None,
            Some((
                cat(vec![backup("h1", "tank/a", 100)]),
                Some("\"t1\"".into()),
            )),
        );
        // A per-host read that started after (seq 3) saw a newer backup of h1 and one of h2.
        for (h, at) in [("h1", 200), ("h2", 50)] {
            t.hosts.insert(
                h.into(),
                HostEntry {
                    catalogue: Arc::new(HostCatalogue::new(&[backup(h, "tank/a", at)])),
                    seq: 3,
                    ..Default::default()
                },
            );
        }
        // A whole read that started before it (seq 2) answers late: h1 and h2 stay as read
        // later; h3 (only in the whole read) is added.
        apply_whole(
            &mut t,
            2,
            Some("\"t1\"".into()),
            Some((
                cat(vec![
                    backup("h1", "tank/a", 100),
                    backup("h3", "tank/a", 10),
                ]),
                Some("\"t2\"".into()),
            )),
        );
        assert!(t.hosts["h1"].catalogue.has("tank/a", "200.full"));
        assert!(t.hosts["h2"].catalogue.has("tank/a", "50.full"));
        assert!(t.hosts["h3"].catalogue.has("tank/a", "10.full"));
        assert_eq!(
            t.whole.as_ref().and_then(|w| w.0.clone()).as_deref(),
            Some("\"t2\"")
        );
        // A newer whole read (seq 4) replaces everything and drops hosts with no backups.
        apply_whole(
            &mut t,
            4,
            None,
            Some((cat(vec![backup("h1", "tank/a", 100)]), None)),
        );
        assert!(!t.hosts["h1"].catalogue.has("tank/a", "200.full"));
        assert!(!t.hosts.contains_key("h2") && !t.hosts.contains_key("h3"));
        // 304: only the time moves.
        apply_whole(&mut t, 5, Some("\"t3\"".into()), None);
        assert_eq!(
            t.whole.as_ref().and_then(|w| w.0.clone()).as_deref(),
            Some("\"t3\"")
        );
        assert_eq!(t.hosts.len(), 1);
    }

    #[test]
    fn a_backup_deleted_behind_the_controllers_back_leaves_the_copy() {
        // The whole store is read while it is empty (tag "e"), then h1's new backup is read
        // alone: the copy holds it.
        let mut t = TargetEntry::default();
        apply_whole(&mut t, 1, None, Some((cat(vec![]), Some("\"e\"".into()))));
        let known: Vec<KnownBackup> = vec![("h1".into(), "tank/a".into(), "100.full".into())];
        assert_eq!(
            apply_host(
                &mut t,
                "h1",
                2,
                Some((cat(vec![backup("h1", "tank/a", 100)]), Some("\"h\"".into()))),
                &known,
            ),
            HostRead::Replaced
        );
        assert!(t.hosts["h1"].catalogue.has("tank/a", "100.full"));
        // The backup is deleted on the store, which is empty again: its whole answer is the
        // one tagged "e". The next revalidation must not ask "still e?" (it is, so the answer
        // would be 304 and the copy would keep the deleted backup): it reads the whole store.
        let conditional = t.whole.as_ref().and_then(|(tag, _)| tag.clone());
        assert_eq!(conditional, None, "the next whole read is unconditional");
        apply_whole(
            &mut t,
            3,
            conditional,
            Some((cat(vec![]), Some("\"e\"".into()))),
        );
        assert!(
            !t.hosts.contains_key("h1"),
            "the deleted backup left the copy"
        );
        // A 304 on a host read or a superseded answer keeps the whole tag.
        apply_whole(&mut t, 4, None, Some((cat(vec![]), Some("\"e\"".into()))));
        assert_eq!(
            apply_host(&mut t, "h1", 5, None, &known),
            HostRead::NotModified
        );
        assert_eq!(
            apply_host(&mut t, "h1", 3, Some((cat(vec![]), None)), &known),
            HostRead::Superseded
        );
        assert_eq!(
            t.whole.as_ref().and_then(|(tag, _)| tag.clone()).as_deref(),
            Some("\"e\"")
        );
        assert!(
            t.hosts["h1"]
                .missing
                .contains(&("tank/a".into(), "100.full".into()))
        );
    }
}
