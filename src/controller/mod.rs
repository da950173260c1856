//! The controller: one reconciler per kind, sharing a [`Context`], run only by the replica
//! that holds the leader lease.
//!
//! Every reconciler follows the same rules: watch with backoff and [`DeserializeGuard`] (one
//! bad object cannot stop a controller), react to spec changes only (status writes do not
//! trigger reconciles), and write status through server-side apply only when it changed.

pub mod backup_policy;
pub mod bucket_catalogues;
pub mod bucket_verifier;
pub mod ca_store;
pub mod csr_signer;
pub mod drill;
pub mod fallback_route;
pub mod grants;
pub mod leader;
pub mod metrics;
pub mod object_store;
pub mod readable_watch;
pub mod readiness;
pub mod restore;
pub mod restore_objstore;
pub mod spec_check;
pub mod status;
pub mod store_client;
pub mod store_tls;

/// The standard-condition helpers, now in `zetaback-core` (kept here for the old path).
pub use zetaback_core::conditions;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::api::{BackupPolicy, FallbackRoute, Restore};

/// The field manager name the controller writes with.
pub const FIELD_MANAGER: &str = "zetaback-controller";

/// What every reconciler shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Arc<metrics::Metrics>,
    /// Talks to backup hosts' agents (catalogue, retention).
    pub store: store_client::StoreClient,
    /// A ZfsHost whose agent has not reported for this long is unreachable.
    pub host_stale_after: Duration,
    /// A policy's `status.lastEvaluated` is refreshed at least this often.
    pub status_heartbeat: Duration,
    /// Publishes Kubernetes Events (events.k8s.io) as `zetaback-controller`.
    pub recorder: kube::runtime::events::Recorder,
    /// Every ZfsHost, kept current by one shared watch (reconcilers read it, never list).
    pub hosts: reflector::Store<crate::api::ZfsHost>,
    /// Every BackupJob a policy created, kept current by one shared watch (never listed).
    pub jobs: reflector::Store<crate::api::BackupJob>,
    /// Job changes, after they reached `jobs`: the BackupPolicy controller takes it once to
    /// re-evaluate a job's policy (so a reconcile never reads a job older than its trigger).
    pub job_events: Arc<std::sync::Mutex<Option<reflector::ReflectHandle<crate::api::BackupJob>>>>,
    /// ZfsHost changes, after they reached `hosts`: the BackupPolicy controller takes it once
    /// to re-evaluate the policies that select a host (or store on it) when its report changed.
    pub host_events: Arc<std::sync::Mutex<Option<reflector::ReflectHandle<crate::api::ZfsHost>>>>,
    /// What the controller wrote but its watch has not shown yet (created and deleted jobs).
    pub expected: Arc<backup_policy::Expectations>,
    /// Each backup host's catalogue, shared by policies and revalidated, not re-read whole.
    pub catalogues: Arc<store_client::CatalogueCache>,
    /// The catalogues read from buckets (object-store targets), shared by policies and
    /// Restores and read again incrementally (a listing; new manifests only).
    pub buckets: Arc<bucket_catalogues::BucketCatalogues>,
    /// Re-reads backups in buckets for `spec.verify` (the controller is their verifier).
    pub bucket_verifier: Arc<bucket_verifier::BucketVerifier>,
    /// The operator's own namespace (the Lease's): the one a ZfsHost serves when its
    /// `spec.allowedNamespaces` is empty (`zetaback_core::tenancy`).
    pub operator_namespace: String,
    /// The images FallbackRoutes may name ([`Options::allowed_proxy_images`]).
    pub allowed_proxy_images: Vec<String>,
    /// Signs restore grants.
    pub grants: Option<Arc<crate::grant::GrantSigner>>,
}

/// A reconcile failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status of {kind} {name}: {source}")]
    WriteStatus {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name} could not be read as a {kind}: {message}")]
    Undecodable {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("{0} has no name or namespace")]
    MissingMeta(&'static str),
}

impl Error {
    /// Whether the apiserver refused the read or write as forbidden (403: the controller's RBAC
    /// does not allow it there).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Error::Read { source: kube::Error::Api(s), .. }
                | Error::Write { source: kube::Error::Api(s), .. }
                if s.code == 403
        )
    }

    /// How soon to try again: API errors are usually transient, a bad object waits for a change.
    pub fn requeue(&self) -> Action {
        match self {
            Error::Undecodable { .. } | Error::MissingMeta(_) => Action::await_change(),
            _ => Action::requeue(Duration::from_secs(10)),
        }
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespace holding the leader Lease: the operator's own namespace (the chart passes
    /// its pod's, `POD_NAMESPACE`), the only one a ZfsHost serves unless its
    /// `spec.allowedNamespaces` says otherwise.
    pub lease_namespace: String,
    /// This replica's identity in the Lease (pod name).
    pub identity: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: std::net::SocketAddr,
    /// Watch only this namespace (default: all).
    pub watch_namespace: Option<String>,
    /// The controller's own token for backup hosts' agents (retention, catalogue): its
    /// ServiceAccount's, audience `zetaback-store`.
    pub store_token: Option<String>,
    /// ...or a file holding it, read again for every request (a projected token rotates).
    pub store_token_file: Option<std::path::PathBuf>,
    /// The key restore grants are signed with (default: a new one at start, published with
    /// its public key in ConfigMap `zetaback-grant-key` of the lease namespace).
    pub grant_signer: Option<Arc<crate::grant::GrantSigner>>,
    /// A ZfsHost whose agent has not reported for this long is unreachable.
    pub host_stale_after: Duration,
    /// A policy's `status.lastEvaluated` is refreshed at least this often (default
    /// [`crate::api::backup_policy::STATUS_HEARTBEAT`]).
    pub status_heartbeat: Duration,
    /// The proxy images a FallbackRoute may name in `spec.image` (besides the default proxy
    /// image, which routes naming none get); any other is refused (`ImageNotAllowed`).
    pub allowed_proxy_images: Vec<String>,
    /// Mutual TLS to the stores (the controller's certificate, `controller.zetaback.io`, and
    /// the zetaback CA); `None`: plaintext, the explicit `--insecure-plaintext` mode.
    pub store_tls: Option<Arc<zetaback_core::peer_tls::PeerTls>>,
}

impl Options {
    /// Defaults for everything but identity and addresses.
    pub fn new(lease_namespace: &str, identity: &str, metrics_addr: std::net::SocketAddr) -> Self {
        Self {
            lease_namespace: lease_namespace.to_owned(),
            identity: identity.to_owned(),
            metrics_addr,
            watch_namespace: None,
            store_token: None,
            store_token_file: None,
            grant_signer: None,
            host_stale_after: Duration::from_secs(90),
            status_heartbeat: crate::api::backup_policy::STATUS_HEARTBEAT,
            allowed_proxy_images: Vec::new(),
            store_tls: None,
        }
    }
}

/// Runs the controller until `shutdown` resolves. Metrics are served from the start, so a
/// standby replica is visible (`zetaback_controller_leader 0`). A leader that loses its lease
/// (another replica took it, or renewals failed while the apiserver was away) stops every
/// reconcile and watch of its term and stands by again, so a single replica recovers from an
/// apiserver outage without a restart.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut options = options;
    if options.grant_signer.is_none() {
        options.grant_signer = Some(Arc::new(crate::grant::GrantSigner::generate()?));
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let readiness = Arc::new(readiness::Readiness::default());
    let listener = tokio::net::TcpListener::bind(options.metrics_addr).await?;
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), readiness.clone()));
    let result = lead_and_reconcile(client, &options, metrics, &readiness, shutdown).await;
    server.abort();
    result
}

/// How a term as leader ended.
enum TermEnd {
    Shutdown,
    LeadershipLost,
}

/// How long a replica waits before standing by again after a failed attempt to do so.
const STANDBY_RETRY: Duration = Duration::from_secs(5);

async fn lead_and_reconcile(
    client: Client,
    options: &Options,
    metrics: Arc<metrics::Metrics>,
    readiness: &readiness::Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use readiness::Phase;
    tokio::pin!(shutdown);
    let mut has_led = false;
    loop {
        readiness.set(Phase::Starting);
        let acquired = tokio::select! {
            leader = leader::acquire(client.clone(), options, || readiness.set(Phase::StandingBy)) => leader,
            _ = &mut shutdown => { info!("shut down while standing by"); return Ok(()); }
        };
        let leader = match acquired {
            Ok(leader) => leader,
            // At start-up a failure (no RBAC for Leases, no such namespace) ends the process
            // with the error; after a term it is most likely the apiserver still being away.
            Err(e) if !has_led => return Err(e),
            Err(e) => {
                warn!(error = %e, "standing by for leadership failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_RETRY) => continue,
                    _ = &mut shutdown => { info!("shut down while standing by"); return Ok(()); }
                }
            }
        };
        has_led = true;
        readiness.set(Phase::LeadingCachesSyncing);
        let term = lead(
            client.clone(),
            options,
            &metrics,
            || readiness.set(Phase::Leading),
            leader,
            shutdown.as_mut(),
        );
        match term.await? {
            TermEnd::Shutdown => return Ok(()),
            TermEnd::LeadershipLost => continue,
        }
    }
}

/// One term as leader: the shared watches and every controller, until shutdown or the lease
/// is lost. Everything the term started is stopped before it returns (the controllers' futures
/// are dropped, the watch tasks aborted), so nothing of it writes once another replica leads.
async fn lead(
    client: Client,
    options: &Options,
    metrics: &Arc<metrics::Metrics>,
    caches_synced: impl FnOnce(),
    mut leader: leader::Leadership,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<TermEnd> {
    metrics.set_leader(true);
    info!(identity = %options.identity, "leading; starting controllers");
    // ZfsHosts: one shared watch (managedFields dropped) feeds the cache reconcilers read and,
    // through a subscription, the BackupPolicy controller's triggers (new datasets, a host
    // back online).
    let (hosts, hosts_writer) = reflector::store_shared::<crate::api::ZfsHost>(1024);
    let host_events = hosts_writer.subscribe();
    // Each host decoded on its own: one the controller cannot read is absent, not a failed
    // listing that would keep every reconciler from starting (see `readable_watch`).
    let host_watch = tokio::spawn(
        watcher(
            Api::<DeserializeGuard<crate::api::ZfsHost>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .map_ok(readable_watch::readable)
        .modify(|host| kube::ResourceExt::managed_fields_mut(host).clear())
        .reflect_shared(hosts_writer)
        .for_each(|event| log_watch_error("ZfsHost", event)),
    );
    // BackupJobs: one shared watch (managedFields dropped) feeds the cache reconcilers read
    // and, through a subscription, the BackupPolicy controller's triggers. Agents write their
    // jobs' status: each job is decoded on its own, like the hosts (see `readable_watch`).
    let (jobs, jobs_writer) = reflector::store_shared::<crate::api::BackupJob>(1024);
    let job_events = jobs_writer.subscribe();
    let job_api = match &options.watch_namespace {
        Some(ns) => Api::<DeserializeGuard<crate::api::BackupJob>>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let job_watch = tokio::spawn(
        watcher(
            job_api,
            watcher::Config::default()
                .labels(backup_policy::POLICY_LABEL)
                .any_semantic(),
        )
        .default_backoff()
        .map_ok(readable_watch::readable)
        .modify(|job| kube::ResourceExt::managed_fields_mut(job).clear())
        .reflect_shared(jobs_writer)
        .for_each(|event| log_watch_error("BackupJob", event)),
    );
    // The first listings can take long (or wait for an apiserver that went away again): the
    // lease is watched meanwhile, so no controller starts in a term that has already ended.
    let listed = async {
        if hosts.wait_until_ready().await.is_err() {
            anyhow::bail!("the ZfsHost watch ended before its first listing");
        }
        if jobs.wait_until_ready().await.is_err() {
            anyhow::bail!("the BackupJob watch ended before its first listing");
        }
        Ok(())
    };
    let early_end = tokio::select! {
        listed = listed => { listed?; None }
        lost = leader.lost() => {
            warn!(reason = %lost, "leadership lost before the caches were filled; standing by");
            Some(TermEnd::LeadershipLost)
        }
        _ = &mut shutdown => { info!("shutting down"); Some(TermEnd::Shutdown) }
    };
    if let Some(end) = early_end {
        end_term(metrics, [host_watch, job_watch], leader).await;
        return Ok(end);
    }
    info!("ZfsHosts and BackupJobs listed; starting the reconcilers");
    caches_synced();
    if let Some(signer) = &options.grant_signer
        && let Err(e) = grants::publish(&client, &options.lease_namespace, signer).await
    {
        warn!(error = %e, "could not publish the restore grant key; restores from other hosts will be refused");
    }
    let buckets = Arc::new(bucket_catalogues::BucketCatalogues::new(
        store_client::CATALOGUE_MAX_AGE,
    ));
    let ctx = Arc::new(Context {
        grants: options.grant_signer.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        store: match (&options.store_tls, &options.store_token_file) {
            (Some(tls), _) => store_client::StoreClient::new(None).with_tls(tls.clone()),
            (None, Some(path)) => store_client::StoreClient::with_token_file(path.clone()),
            (None, None) => store_client::StoreClient::new(options.store_token.clone()),
        },
        host_stale_after: options.host_stale_after,
        status_heartbeat: options.status_heartbeat,
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        ),
        hosts,
        jobs,
        job_events: Arc::new(std::sync::Mutex::new(job_events)),
        host_events: Arc::new(std::sync::Mutex::new(host_events)),
        expected: Default::default(),
        catalogues: Arc::new(store_client::CatalogueCache::new(
            store_client::CATALOGUE_MAX_AGE,
        )),
        buckets: buckets.clone(),
        bucket_verifier: Arc::new(bucket_verifier::BucketVerifier::new(
            client.clone(),
            buckets,
        )),
        operator_namespace: options.lease_namespace.clone(),
        allowed_proxy_images: options.allowed_proxy_images.clone(),
    });
    ctx.metrics.watch_jobs(ctx.jobs.clone());
    let ns = options.watch_namespace.clone();
    let controllers = async {
        tokio::join!(
            run_kind::<BackupPolicy>(ctx.clone(), ns.clone()),
            run_kind::<Restore>(ctx.clone(), ns.clone()),
            run_kind::<FallbackRoute>(ctx.clone(), ns.clone()),
        )
    };
    let end = tokio::select! {
        _ = controllers => TermEnd::Shutdown,
        lost = leader.lost() => {
            warn!(reason = %lost, "leadership lost; stopped every controller, standing by");
            TermEnd::LeadershipLost
        }
        _ = &mut shutdown => { info!("shutting down"); TermEnd::Shutdown }
    };
    end_term(metrics, [host_watch, job_watch], leader).await;
    Ok(end)
}

/// Ends a term: not leading any more, the shared watches stopped, the lease given up.
async fn end_term(
    metrics: &metrics::Metrics,
    watches: [tokio::task::JoinHandle<()>; 2],
    leader: leader::Leadership,
) {
    metrics.set_leader(false);
    for watch in watches {
        watch.abort();
    }
    leader.release().await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// A kind the controller reconciles.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    /// The kind's name, for logs and metrics.
    const KIND: &'static str;
    /// Adds watches of other kinds that should trigger a reconcile of this one (default: none).
    fn also_watch(
        controller: Controller<DeserializeGuard<Self>>,
        _ctx: &Context,
        _namespace: Option<&str>,
    ) -> Controller<DeserializeGuard<Self>> {
        controller
    }

    /// Brings the world in line with `obj`.
    fn reconcile(
        obj: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send;
}

async fn run_kind<K: Reconciled>(ctx: Arc<Context>, namespace: Option<String>) {
    let api: Api<DeserializeGuard<K>> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_request, Default::default());
    K::also_watch(
        Controller::for_stream(stream, reader),
        &ctx,
        namespace.as_deref(),
    )
    .run(reconcile_guarded::<K>, error_policy::<K>, ctx)
    .for_each(|result| {
        // A failed reconcile is reported by `error_policy`; a failing watch only here (it is
        // retried with backoff, and until it lists, nothing of this kind is reconciled).
        if let Err(kube::runtime::controller::Error::QueueError(e)) = &result {
            warn!(kind = K::KIND, error = %e, "watch failed; retrying");
        }
        futures::future::ready(())
    })
    .await;
}

/// Logs a failed watch of a shared cache (it is retried with backoff; until its first listing
/// succeeds no controller starts, so a silent failure would look like a leader doing nothing).
fn log_watch_error<T>(
    kind: &'static str,
    event: Result<T, watcher::Error>,
) -> futures::future::Ready<()> {
    if let Err(e) = event {
        warn!(kind, error = %e, "watch failed; retrying");
    }
    futures::future::ready(())
}

/// Reconcile on a new generation (a spec change) or a new request annotation
/// (`zetaback.io/backup-now`, `zetaback.io/reconcile-now`, `zetaback.io/verify-now`), not on status or other metadata
/// writes: a status write never triggers a reconcile of its own.
fn spec_or_request<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    if let Some(a) = &meta.annotations {
        for key in [
            crate::api::backup_policy::BACKUP_NOW_ANNOTATION,
            crate::api::backup_policy::RECONCILE_NOW_ANNOTATION,
            crate::api::backup_policy::VERIFY_NOW_ANNOTATION,
            crate::api::backup_policy::DRILL_NOW_ANNOTATION,
        ] {
            a.get(key).hash(&mut h);
        }
    }
    Some(h.finish())
}

async fn reconcile_guarded<K: Reconciled>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = guard.meta().name.clone().unwrap_or_default();
    let span = tracing::info_span!("reconcile", kind = K::KIND, name = %name,
        namespace = guard.meta().namespace.as_deref().unwrap_or(""));
    let _timer = ctx.metrics.reconcile_timer(K::KIND);
    let result = {
        let _entered = span.enter();
        match &guard.0 {
            Ok(obj) => {
                drop(_entered);
                tracing::Instrument::instrument(
                    K::reconcile(Arc::new(obj.clone()), ctx.clone()),
                    span.clone(),
                )
                .await
            }
            Err(invalid) => Err(Error::Undecodable {
                kind: K::KIND,
                name,
                message: invalid.to_string(),
            }),
        }
    };
    ctx.metrics.reconciled(K::KIND, result.is_ok());
    result
}

fn error_policy<K: Reconciled>(
    _obj: Arc<DeserializeGuard<K>>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    warn!(kind = K::KIND, %error, "reconcile failed");
    error.requeue()
}
