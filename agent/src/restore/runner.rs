//! The Restore runner: watches this host's resolved Restores, claims one (`claim.rs`), runs it
//! through [`super::apply`] in a tracing span, reports progress and records the outcome
//! ([`outcome_patch`]); at start-up, deals with the Restores this agent left Running
//! ([`after_restart`]): a bucket restore is claimed again, any other is failed `Interrupted`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, PatchParams};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{info, info_span, warn};
use zetaback_core::api::condition::READY;
use zetaback_core::api::restore::{RESTORE_ATTEMPTS, RestorePhase, RestorePiece};
use zetaback_core::api::{Restore, RestoreStatus, ZfsHost};
use zetaback_core::conditions::{self, Wanted};

use crate::transfer::Endpoint;
use crate::zfs::Zfs;

use super::apply::{ChainRequest, PieceRequest, Source, apply_chain};
use super::status_patch::{RestoreStatusPatch, StatusPatch};
use super::{RestoreError, Restored};

/// Settings of the restore runner.
#[derive(Debug, Clone)]
pub struct RestoreRunnerConfig {
    /// This agent's ZfsHost.
    pub host_name: String,
    /// Written to `status.claimedBy`.
    pub agent_id: String,
    /// This agent's own token for the backup host's agent (read again for every restore).
    pub token: crate::auth::TokenFile,
    pub idle_timeout: Duration,
    /// How often `bytesDone` is written at most.
    pub progress_every: Duration,
    /// The largest zstd window a compressed piece may ask for (2^N bytes).
    pub zstd_window_log_max: u32,
    /// Mutual TLS to the backup host's agent ([`crate::job::JobSettings::tls`]).
    pub tls: Option<Arc<zetaback_core::peer_tls::PeerTls>>,
    /// This host's own object-store keys, for restores from a bucket (`status.objectStore`).
    pub object_store_credentials: Option<std::path::PathBuf>,
}

/// The field selector of the Restores whose destination is `host`.
pub fn destination_selector(host: &str) -> String {
    crate::claim::field_selector("spec.destination.host", host)
}

/// Whether a Restore is for this host, resolved, and waiting to be claimed.
pub fn is_claimable(r: &Restore, host: &str) -> bool {
    r.spec.destination.host.as_str() == host
        && r.metadata.deletion_timestamp.is_none()
        && r.status.as_ref().is_some_and(|s| {
            s.phase == RestorePhase::Pending && !s.chain.is_empty() && s.claimed_by.is_none()
        })
}

/// Whether this agent still runs `r`: `Running` and claimed by `agent_id`. Every write after
/// the claim is fenced by it: the controller ends a drill past `drill.timeout` by marking it
/// `Failed`, and that ending stands whatever the agent finds later.
pub fn still_ours(r: &Restore, agent_id: &str) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.phase == RestorePhase::Running && s.claimed_by.as_deref() == Some(agent_id)
    })
}

/// A drill Restore on `host` that ended (by its agent, by a restart, or by the controller's
/// timeout) while its scratch dataset may still exist: the agent had marked it created
/// (`scratchDestroyed: false`) and no clean-up has recorded it gone.
pub fn scratch_left(r: &Restore, host: &str) -> bool {
    r.spec.drill
        && r.spec.destination.host.as_str() == host
        && r.status.as_ref().is_some_and(|s| {
            matches!(s.phase, RestorePhase::Succeeded | RestorePhase::Failed)
                && s.scratch_destroyed == Some(false)
        })
}

/// How often a running drill's Restore is read to see whether it was ended meanwhile.
pub const ENDED_POLL: Duration = Duration::from_secs(2);

/// How often a fenced write is tried again after a conflicting write.
const FENCED_TRIES: u32 = 5;

/// Whether a Restore was left running by this agent.
pub fn is_orphaned(r: &Restore, host: &str, agent_id: &str) -> bool {
    r.spec.destination.host.as_str() == host
        && r.status.as_ref().is_some_and(|s| {
            s.phase == RestorePhase::Running && s.claimed_by.as_deref() == Some(agent_id)
        })
}

/// What an agent that comes back does with a Restore it left running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRestart {
    /// Back to `Pending`, unclaimed: claimed and run again, continuing after the pieces the
    /// destination already holds ([`claim_again_patch`]).
    ClaimAgain,
    /// Failed, reason `Interrupted`.
    Fail,
}

/// What to do with a Restore this agent left running (pure). A restore from a bucket (not a
/// drill) is claimed again while it has attempts left ([`RESTORE_ATTEMPTS`], counted by
/// `status.attempts`): the bucket is read with this host's own keys, needs no grant and is
/// there whatever restarted. A drill (its recovery time would no longer be the one measured)
/// and a file-store restore (its grant to read the backup host expires) are failed
/// `Interrupted`; a new Restore with `force` continues a file-store one.
pub fn after_restart(r: &Restore) -> AfterRestart {
    let Some(st) = r.status.as_ref() else {
        return AfterRestart::Fail;
    };
    let attempts = st.attempts.unwrap_or(1);
    if st.object_store.is_some() && !r.spec.drill && attempts < RESTORE_ATTEMPTS {
        AfterRestart::ClaimAgain
    } else {
        AfterRestart::Fail
    }
}

/// The status patch that makes a Restore interrupted by a restart claimable again (pure but
/// for the clock): `Pending`, no one's, its chain and pieces kept.
pub fn claim_again_patch(r: &Restore) -> StatusPatch {
    let st = r.status.clone().unwrap_or_default();
    let attempt = st.attempts.unwrap_or(1);
    let message = format!(
        "interrupted: the agent restarted during attempt {attempt} of {RESTORE_ATTEMPTS}; claimed again, continuing after the pieces {} holds",
        r.spec.destination.dataset.as_str()
    );
    StatusPatch::new(RestoreStatusPatch {
        phase: Some(RestorePhase::Pending),
        claimed_by: Some(None),
        bytes_done: Some(0),
        conditions: Some(ready(&st, false, "Retrying", &message)),
        message: Some(message),
        ..Default::default()
    })
}

fn ready(status: &RestoreStatus, ok: bool, reason: &str, message: &str) -> Vec<Condition> {
    let wanted = Wanted {
        type_: READY,
        status: ok,
        reason,
        message: message.to_owned(),
        observed_generation: status.observed_generation,
    };
    conditions::set(&status.conditions, &wanted, Time(jiff::Timestamp::now()))
}

/// The status patch that ends a restore (pure but for the clock).
pub fn outcome_patch(
    status: &RestoreStatus,
    result: &Result<Restored, RestoreError>,
    pieces: &[RestorePiece],
    into: &str,
) -> StatusPatch {
    let now = Time(jiff::Timestamp::now());
    StatusPatch::new(match result {
        Ok(r) => {
            let all_verified = pieces.iter().all(|p| p.verified == Some(true));
            let message = format!(
                "restored {} piece(s), {} bytes, into {into}",
                r.chain.len(),
                r.bytes
            );
            RestoreStatusPatch {
                phase: Some(RestorePhase::Succeeded),
                verified: Some(all_verified),
                bytes_done: Some(r.bytes),
                pieces: Some(pieces.to_vec()),
                finished_at: Some(now),
                conditions: Some(ready(status, true, "Succeeded", &message)),
                message: Some(message),
                ..Default::default()
            }
        }
        Err(e) => {
            let message = e.to_string();
            RestoreStatusPatch {
                phase: Some(RestorePhase::Failed),
                verified: Some(false),
                pieces: Some(pieces.to_vec()),
                finished_at: Some(now),
                conditions: Some(ready(status, false, e.reason(), &message)),
                message: Some(message),
                ..Default::default()
            }
        }
    })
}

/// Runs Restores whose destination is this host.
pub struct RestoreRunner {
    client: kube::Client,
    zfs: Zfs,
    cfg: RestoreRunnerConfig,
}

impl RestoreRunner {
    pub fn new(client: kube::Client, zfs: Zfs, cfg: RestoreRunnerConfig) -> Self {
        Self { client, zfs, cfg }
    }

    fn api(&self, r: &Restore) -> Api<Restore> {
        Api::namespaced(self.client.clone(), &r.namespace().unwrap_or_default())
    }

    /// The field selector of this host's Restores when the CRD has `spec.destination.host` as
    /// a selectable field; `None` otherwise: then every Restore is read (and filtered here).
    pub async fn host_selector(&self) -> Result<Option<String>, RestoreError> {
        let fields = destination_selector(&self.cfg.host_name);
        Ok(crate::claim::selectable::<Restore>(&self.client, &fields).await?)
    }

    /// Claims again or fails ([`after_restart`]) the restores this agent left running before
    /// a restart.
    pub async fn recover(&self) -> Result<usize, RestoreError> {
        let (list, _) = crate::claim::scoped(self.host_selector().await?.as_deref());
        self.recover_listed(&list).await
    }

    async fn recover_listed(&self, list: &ListParams) -> Result<usize, RestoreError> {
        let (host, agent) = (&self.cfg.host_name, &self.cfg.agent_id);
        let failed = crate::claim::fail_orphans_listed::<Restore, _>(
            &self.client,
            list,
            |r| is_orphaned(r, host, agent),
            |r| {
                if after_restart(r) == AfterRestart::ClaimAgain {
                    warn!(restore = %crate::claim::key(r), "a restore interrupted by a restart is claimed again");
                    return claim_again_patch(r);
                }
                let st = r.status.clone().unwrap_or_default();
                let message = format!(
                    "interrupted: the agent restarted while this restore ran; {} may hold a partial restore (a new Restore of the same source with force: true continues after the pieces it holds)",
                    r.spec.destination.dataset.as_str()
                );
                StatusPatch::new(RestoreStatusPatch {
                    phase: Some(RestorePhase::Failed),
                    verified: Some(false),
                    finished_at: Some(Time(jiff::Timestamp::now())),
                    conditions: Some(ready(&st, false, "Interrupted", &message)),
                    message: Some(message),
                    ..Default::default()
                })
            },
        )
        .await?;
        for r in &failed {
            warn!(restore = %r, "dealt with a restore interrupted by a restart");
        }
        Ok(failed.len())
    }

    /// Claims a restore; `None` if another agent got it or it is no longer claimable.
    pub async fn claim(&self, r: &Restore) -> Result<Option<Restore>, RestoreError> {
        if !is_claimable(r, &self.cfg.host_name) {
            return Ok(None);
        }
        let mut claimed = r.clone();
        let mut st = r.status.clone().unwrap_or_default();
        st.phase = RestorePhase::Running;
        st.claimed_by = Some(self.cfg.agent_id.clone());
        st.attempts = Some(st.attempts.unwrap_or(0) + 1);
        st.started_at = Some(Time(jiff::Timestamp::now()));
        st.bytes_done = Some(0);
        st.message = Some(format!("running on {}", self.cfg.agent_id));
        claimed.status = Some(st);
        Ok(crate::claim::claim(&self.api(r), &claimed).await?)
    }

    async fn store_endpoint(&self, st: &RestoreStatus) -> Result<Endpoint, RestoreError> {
        // The store host's current endpoint, else the one the controller saw; over TLS, its
        // node (from its spec, which agents cannot write) is the peer that must answer.
        let mut ep = None;
        let mut node = None;
        if let Some(h) = &st.store_host {
            let host = Api::<ZfsHost>::all(self.client.clone()).get_opt(h).await?;
            node = host.as_ref().map(|h| h.spec.node_name.clone());
            ep = host.and_then(|h| h.status).and_then(|s| s.agent_endpoint);
        }
        let ep = ep.or_else(|| st.store_endpoint.clone()).ok_or_else(|| {
            RestoreError::Unreachable("the status names no backup host endpoint".into())
        })?;
        let token = self
            .cfg
            .token
            .read()
            .map_err(|e| RestoreError::Unreachable(format!("this agent's token: {e}")))?;
        let endpoint = Endpoint::new(&ep, token);
        let Some(tls) = &self.cfg.tls else {
            return Ok(endpoint);
        };
        let node = node.ok_or_else(|| {
            RestoreError::Unreachable(
                "TLS is on and the status names no backup host whose node could be verified".into(),
            )
        })?;
        let peer = zetaback_core::peer_tls::PeerIdentity::node(&node)
            .map_err(|e| RestoreError::Unreachable(e.to_string()))?;
        endpoint
            .over_tls(tls, peer)
            .map_err(|e| RestoreError::Unreachable(e.to_string()))
    }

    /// Runs a claimed restore and records the outcome.
    pub async fn execute(&self, r: Restore) -> Result<(), RestoreError> {
        let st = r.status.clone().unwrap_or_default();
        let api = self.api(&r);
        let name = r.name_any();
        let progress = Arc::new(AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let reporter = {
            let (api, name, progress, every) = (
                api.clone(),
                name.clone(),
                progress.clone(),
                self.cfg.progress_every,
            );
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop_rx.changed() => return,
                    }
                    let now = progress.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        let patch = StatusPatch::new(RestoreStatusPatch {
                            bytes_done: Some(now),
                            ..Default::default()
                        });
                        if let Err(e) = api
                            .patch_status(&name, &PatchParams::default(), &patch.merge())
                            .await
                        {
                            warn!(error = %e, "could not report progress");
                        }
                    }
                }
            })
        };
        let mut pieces = st.pieces.clone();
        let drill = r.spec.drill;
        let into = r.spec.destination.dataset.as_str().to_owned();
        // A drill's destination is checked before anything else: only a new dataset under a
        // scratch root is ever received into, and only then cleaned up.
        let guard = if drill {
            crate::drill::check_destination(&self.zfs, &into).await
        } else {
            Ok(())
        };
        // Once the guard passed, the scratch dataset may come to exist: say so first (fenced),
        // so that whoever finds the drill ended cleans it up. A drill ended meanwhile stops here.
        let guard = match guard {
            Ok(()) if drill => {
                let created = StatusPatch::new(RestoreStatusPatch {
                    scratch_destroyed: Some(Some(false)),
                    ..Default::default()
                });
                match self.write_fenced(&api, &name, &created, None).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(RestoreError::Ended),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        let guard_passed = guard.is_ok();
        // Where the chain is: a backup host's endpoint, or (Err) the bucket it is read from.
        let source = match st.object_store.clone().filter(|_| guard_passed) {
            Some(bucket) => Ok(Err(bucket)),
            None => guard.and(self.store_endpoint(&st).await).map(Ok),
        };
        let work = async {
            match source {
                Err(e) => Err(e),
                Ok(Err(bucket)) => match self.own_destination(&api, &name, &r).await {
                    Err(e) => Err(e),
                    Ok(owned) => {
                        let creds = self.cfg.object_store_credentials.as_deref();
                        crate::objstore_restore::run_claimed(
                            &self.zfs,
                            creds,
                            &bucket,
                            &r,
                            owned,
                            &progress,
                            &mut pieces,
                        )
                        .await
                    }
                },
                Ok(Ok(endpoint)) => {
                    let src = Source {
                        endpoint,
                        host: r.spec.source.host.as_str().to_owned(),
                        dataset: r.spec.source.dataset_name().to_owned(),
                        idle_timeout: self.cfg.idle_timeout,
                        zstd_window_log_max: self.cfg.zstd_window_log_max,
                        grant: st.grant.clone(),
                    };
                    let req = ChainRequest {
                        pieces: st
                            .chain
                            .iter()
                            .map(|id| {
                                let p = st.pieces.iter().find(|p| &p.id == id);
                                PieceRequest {
                                    id: id.clone(),
                                    snapshot: p.map(|p| p.snapshot.clone()).unwrap_or_default(),
                                    sha256: p.map(|p| p.sha256.clone()).filter(|s| !s.is_empty()),
                                }
                            })
                            .collect(),
                        into: r.spec.destination.dataset.as_str().to_owned(),
                        force: r.spec.force,
                        verify: r.spec.verify,
                    };
                    let applied = apply_chain(&self.zfs, &src, &req, &progress, |i, _sha| {
                        if let Some(p) = pieces.get_mut(i) {
                            p.verified = Some(r.spec.verify);
                        }
                    })
                    .await;
                    match applied {
                        Ok(done) if drill => {
                            let restored: Vec<(String, String)> = req
                                .pieces
                                .iter()
                                .map(|p| (p.id.clone(), p.snapshot.clone()))
                                .collect();
                            crate::drill::check_restored(&self.zfs, &into, &restored)
                                .await
                                .map(|()| done)
                        }
                        other => other,
                    }
                }
            }
        };
        // A drill the controller ends while it runs (`DrillTimedOut`) stops here: the receive
        // is dropped (its `zfs receive` killed), and the clean-up below destroys the scratch
        // dataset and records it, instead of running on until the stream's idle timeout.
        let result = if drill {
            tokio::select! {
                r = work => r,
                () = self.ended_elsewhere(&api, &name) => {
                    warn!("the drill was ended while it ran: its receive is stopped");
                    Err(RestoreError::Ended)
                }
            }
        } else {
            work.await
        };
        // The end of a drill's measured recovery time: verified, before the clean-up.
        let verified_at = (drill && result.is_ok()).then(|| Time(jiff::Timestamp::now()));
        let scratch_destroyed = if drill && guard_passed {
            Some(crate::drill::clean_up(&self.zfs, &into).await)
        } else {
            None
        };
        let _ = stop_tx.send(true);
        let _ = reporter.await;
        match &result {
            Ok(done) => info!(chain = ?done.chain, bytes = done.bytes, "restore succeeded"),
            Err(e) => warn!(error = %e, reason = e.reason(), "restore failed"),
        }
        let mut patch = outcome_patch(
            &st,
            &result,
            &pieces,
            &format!(
                "{}:{}",
                r.spec.destination.host.as_str(),
                r.spec.destination.dataset.as_str()
            ),
        );
        if drill {
            patch.status.verified_at = Some(verified_at);
            patch.status.scratch_destroyed = Some(scratch_destroyed);
        }
        // Ended by someone else meanwhile (the controller's drill timeout): that ending
        // stands; only what this agent did to the scratch dataset is added.
        let late = scratch_destroyed.map(|gone| {
            StatusPatch::new(RestoreStatusPatch {
                scratch_destroyed: Some(Some(gone)),
                ..Default::default()
            })
        });
        if !self
            .write_fenced(&api, &name, &patch, late.as_ref())
            .await?
        {
            warn!("the restore was ended while it ran; its outcome was not recorded");
        }
        Ok(())
    }

    /// Resolves once this agent no longer runs Restore `name` ([`still_ours`] is false, or it
    /// is gone), read every [`ENDED_POLL`]; a failed read is tried again.
    async fn ended_elsewhere(&self, api: &Api<Restore>, name: &str) {
        loop {
            tokio::time::sleep(ENDED_POLL).await;
            match api.get_opt(name).await {
                Ok(Some(r)) if still_ours(&r, &self.cfg.agent_id) => {}
                Ok(_) => return,
                Err(e) => warn!(error = %e, "could not read the running drill; will retry"),
            }
        }
    }

    /// Whether the destination of bucket restore `r` is its own: created by an earlier attempt
    /// (`status.createdDestination`), or absent now, which is recorded (fenced) before anything
    /// is received, so an attempt after a restart knows what it may continue on or destroy.
    /// A drill's scratch dataset has its own bookkeeping (`scratchDestroyed`).
    async fn own_destination(
        &self,
        api: &Api<Restore>,
        name: &str,
        r: &Restore,
    ) -> Result<bool, RestoreError> {
        let st = r.status.as_ref();
        if st.and_then(|s| s.created_destination) == Some(true) {
            return Ok(true);
        }
        if r.spec.drill
            || self
                .zfs
                .dataset_exists(r.spec.destination.dataset.as_str())
                .await?
        {
            return Ok(false);
        }
        let mark = StatusPatch::new(RestoreStatusPatch {
            created_destination: Some(true),
            ..Default::default()
        });
        if self.write_fenced(api, name, &mark, None).await? {
            Ok(true)
        } else {
            Err(RestoreError::Ended)
        }
    }

    /// Writes `patch` if this agent still runs the Restore, else `late` (if any) unless it
    /// is gone; each against the version read, again after a conflicting write. True when
    /// `patch` was written.
    async fn write_fenced(
        &self,
        api: &Api<Restore>,
        name: &str,
        patch: &StatusPatch,
        late: Option<&StatusPatch>,
    ) -> Result<bool, RestoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(current) = api.get_opt(name).await? else {
                return Ok(false);
            };
            let ours = still_ours(&current, &self.cfg.agent_id);
            let Some(write) = (if ours { Some(patch) } else { late }) else {
                return Ok(false);
            };
            let version = current.resource_version().unwrap_or_default();
            match api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &write.fenced(version).merge(),
                )
                .await
            {
                Ok(_) => return Ok(ours),
                Err(kube::Error::Api(s)) if s.code == 409 && tries < FENCED_TRIES => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Destroys the scratch datasets of ended drills on this host ([`scratch_left`]) and
    /// records them gone (fenced: only while the Restore still says so). Only a dataset
    /// directly under a marked scratch root is destroyed.
    async fn sweep_scratch(&self, r: &Restore) -> Result<(), RestoreError> {
        let into = r.spec.destination.dataset.as_str();
        let marked = match crate::drill::scratch_root(into) {
            Some(root) => {
                self.zfs
                    .local_property(root, zetaback_core::api::restore::SCRATCH_PROPERTY)
                    .await?
                    .as_deref()
                    == Some("on")
            }
            None => false,
        };
        if !marked {
            warn!(dataset = %into, "not under a scratch root; left as it is");
            return Ok(());
        }
        if !crate::drill::clean_up(&self.zfs, into).await {
            return Ok(());
        }
        info!(dataset = %into, "scratch dataset of an ended drill destroyed");
        let api = self.api(r);
        let host = self.cfg.host_name.clone();
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(current) = api.get_opt(&r.name_any()).await? else {
                return Ok(());
            };
            if !scratch_left(&current, &host) {
                return Ok(());
            }
            let patch = StatusPatch::new(RestoreStatusPatch {
                scratch_destroyed: Some(Some(true)),
                ..Default::default()
            })
            .fenced(current.resource_version().unwrap_or_default());
            match api
                .patch_status(&r.name_any(), &PatchParams::default(), &patch.merge())
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && tries < FENCED_TRIES => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Watches and runs restores ([`crate::claim::watch_and_run`]) until the watch ends.
    pub async fn run(self: Arc<Self>) -> Result<(), RestoreError> {
        // One probe for both the orphan list and the watch.
        let (list, config) = crate::claim::scoped(self.host_selector().await?.as_deref());
        let n = self.recover_listed(&list).await?;
        if n > 0 {
            info!(
                restores = n,
                "claimed again or failed the restores interrupted by a restart"
            );
        }
        crate::claim::watch_and_run(self.clone(), self.client.clone(), config).await;
        Ok(())
    }
}

/// The Restores as the shared claim loop drives them: one per destination dataset at a time,
/// no other limit.
impl crate::claim::Worker for RestoreRunner {
    type Object = Restore;
    type Error = RestoreError;
    const KIND: &'static str = "Restore";

    fn capacity(&self) -> usize {
        usize::MAX
    }

    fn claimable(&self, r: &Restore) -> bool {
        is_claimable(r, &self.cfg.host_name)
    }

    fn lock(&self, r: &Restore) -> String {
        r.spec.destination.dataset.as_str().to_owned()
    }

    async fn try_claim(&self, r: &Restore) -> Result<Option<Restore>, RestoreError> {
        self.claim(r).await
    }

    fn span(&self, r: &Restore) -> tracing::Span {
        info_span!("restore", restore = %crate::claim::key(r),
            source = %format!("{}:{}", r.spec.source.host.as_str(), r.spec.source.dataset_name()),
            destination = %r.spec.destination.dataset.as_str())
    }

    async fn run_claimed(self: Arc<Self>, r: Restore) -> Result<(), RestoreError> {
        self.execute(r).await
    }

    /// An ended drill whose scratch dataset may still be there ([`scratch_left`]).
    fn needs_sweep(&self, r: &Restore) -> bool {
        scratch_left(r, &self.cfg.host_name)
    }

    async fn sweep(self: Arc<Self>, r: Restore) -> Result<(), RestoreError> {
        self.sweep_scratch(&r).await
    }
}
