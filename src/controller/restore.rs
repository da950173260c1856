//! The Restore reconciler: resolves what a Restore applies, and refuses what cannot work.
//!
//! A new Restore (no chain yet, phase Pending) is resolved once: the controller finds the
//! backup host holding the source's backups (the file-store targets of the BackupPolicies in
//! the Restore's namespace, each asked for its catalogue), builds the dataset's catalogue
//! (live backups, plus the archive area with `includeArchive`), and resolves the chain (the
//! newest backup at or before `at`, the backup `backup`, or the newest). It writes the chain,
//! its pieces (id, snapshot, bytes, sha256), the total bytes and the store to status; the
//! destination host's agent then claims and runs it (agent/src/restore.rs).
//!
//! A Restore that cannot work is failed at once with a `Ready=False` condition whose reason
//! says why: `ChainBroken`, `NotFound`, `DestinationExists` or `StoreUnreachable`. After that
//! (or once a chain is written) the controller leaves the Restore alone: the agent owns it.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::conditions::{self, Wanted};
use super::{Context, Error, Reconciled, status};
use crate::api::condition::READY;
use crate::api::restore::{RestorePhase, RestorePiece};
use crate::api::{BackupPolicy, Restore, RestoreSpec, RestoreStatus, ZfsHost};
use crate::policy::{Catalogue, ChainError, RestoreTarget};
use crate::store;

/// `Ready=False` reasons the controller gives.
pub mod reason {
    pub const RESOLVED: &str = "ChainResolved";
    pub const CHAIN_BROKEN: &str = "ChainBroken";
    pub const NOT_FOUND: &str = "NotFound";
    pub const DESTINATION_EXISTS: &str = "DestinationExists";
    pub const STORE_UNREACHABLE: &str = "StoreUnreachable";
}

/// Why a Restore is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// One backup host asked for the source's catalogue: its name, endpoint, and answer.
#[derive(Debug, Clone)]
pub struct StoreAnswer {
    pub host: String,
    pub endpoint: Option<String>,
    pub catalogue: Result<store::Catalogue, String>,
}

/// A resolved restore: where the pieces are, and which, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub store_host: String,
    pub store_endpoint: String,
    pub pieces: Vec<RestorePiece>,
}

impl Resolved {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.bytes).sum()
    }
}

fn target_of(spec: &RestoreSpec) -> RestoreTarget {
    match (&spec.source.backup, &spec.source.at) {
        (Some(id), _) => RestoreTarget::Id(id.clone()),
        (None, Some(at)) => RestoreTarget::At(at.0),
        (None, None) => RestoreTarget::Latest,
    }
}

fn chain_refusal(e: &ChainError, what: &str) -> Refusal {
    match e {
        ChainError::ChainBroken { .. } => {
            Refusal::new(reason::CHAIN_BROKEN, format!("{what}: {e}"))
        }
        _ => Refusal::new(reason::NOT_FOUND, format!("{what}: {e}")),
    }
}

/// Picks the store holding the source's backups and resolves the chain (pure).
///
/// The store with the newest backup of the dataset wins; a store that did not answer makes
/// the answer `StoreUnreachable` only when no reachable store has backups of the dataset.
pub fn resolve(spec: &RestoreSpec, answers: &[StoreAnswer]) -> Result<Resolved, Refusal> {
    let (host, dataset) = (spec.source.host.as_str(), spec.source.dataset_name());
    let what = format!("{host}:{dataset}");
    if answers.is_empty() {
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!(
                "no BackupPolicy in this namespace stores backups in files, so no backups of {what} can be found"
            ),
        ));
    }
    let mut unreachable = Vec::new();
    let mut best: Option<(&StoreAnswer, Catalogue)> = None;
    for a in answers {
        let (Some(_), Ok(cat)) = (&a.endpoint, &a.catalogue) else {
            let why = match &a.catalogue {
                Err(e) => e.clone(),
                Ok(_) => "no agent endpoint".into(),
            };
            unreachable.push(format!("{}: {why}", a.host));
            continue;
        };
        let backups = cat
            .of(host, dataset)
            .filter(|b| spec.source.include_archive || !b.archived);
        let cat = Catalogue::from_store(backups).map_err(|e| {
            Refusal::new(
                reason::CHAIN_BROKEN,
                format!("the backups of {what} on {} are inconsistent: {e}", a.host),
            )
        })?;
        let newest = cat.newest().map(|r| r.created);
        if newest.is_some()
            && best
                .as_ref()
                .is_none_or(|(_, b)| b.newest().map(|r| r.created) < newest)
        {
            best = Some((a, cat));
        }
    }
    let Some((answer, cat)) = best else {
        if !unreachable.is_empty() {
            return Err(Refusal::new(
                reason::STORE_UNREACHABLE,
                format!(
                    "no reachable backup host has backups of {what}; unreachable: {}",
                    unreachable.join("; ")
                ),
            ));
        }
        let area = if spec.source.include_archive {
            "live or archived"
        } else {
            "live (set includeArchive to search the archive)"
        };
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!("no {area} backups of {what} are stored"),
        ));
    };
    let chain = cat
        .restore_chain(&target_of(spec))
        .map_err(|e| chain_refusal(&e, &what))?;
    let stored = match &answer.catalogue {
        Ok(c) => c,
        Err(_) => unreachable!("only reachable answers are chosen"),
    };
    let pieces = chain
        .iter()
        .map(|r| {
            // Prefer the live copy's manifest, as the catalogue does.
            let m = stored
                .of(host, dataset)
                .filter(|b| b.manifest.id == r.id)
                .min_by_key(|b| b.archived)
                .map(|b| &b.manifest);
            RestorePiece {
                id: r.id.clone(),
                snapshot: r.snapshot.clone(),
                bytes: r.bytes,
                sha256: m.map(|m| m.sha256.clone()).unwrap_or_default(),
                verified: None,
            }
        })
        .collect();
    Ok(Resolved {
        store_host: answer.host.clone(),
        store_endpoint: answer.endpoint.clone().unwrap_or_default(),
        pieces,
    })
}

/// Refuses a destination dataset the destination host reports, unless `force` (pure).
pub fn check_destination(spec: &RestoreSpec, dest: Option<&ZfsHost>) -> Result<(), Refusal> {
    let name = spec.destination.host.as_str();
    let Some(dest) = dest else {
        return Err(Refusal::new(
            reason::NOT_FOUND,
            format!("destination host {name} does not exist (no ZfsHost of that name)"),
        ));
    };
    let ds = spec.destination.dataset.as_str();
    let exists = dest
        .status
        .as_ref()
        .is_some_and(|s| s.datasets.iter().any(|d| d.name == ds));
    if exists && !spec.force {
        return Err(Refusal::new(
            reason::DESTINATION_EXISTS,
            format!("{name}:{ds} exists; set force: true to replace it"),
        ));
    }
    Ok(())
}

/// The file-store backup hosts named by these policies, sorted and distinct.
pub fn store_hosts<'a>(policies: impl IntoIterator<Item = &'a BackupPolicy>) -> Vec<String> {
    policies
        .into_iter()
        .filter(|p| p.spec.target.path.is_some())
        .map(|p| p.spec.target.host.as_str().to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The status a resolution (or a refusal) leads to, from the current one.
pub fn next_status(
    current: &RestoreStatus,
    generation: Option<i64>,
    outcome: &Result<Resolved, Refusal>,
    now: Time,
) -> RestoreStatus {
    let mut s = current.clone();
    s.observed_generation = generation;
    let wanted = match outcome {
        Ok(r) => {
            s.phase = RestorePhase::Pending;
            s.chain = r.pieces.iter().map(|p| p.id.clone()).collect();
            s.bytes = Some(r.bytes());
            s.bytes_done = Some(0);
            s.pieces = r.pieces.clone();
            s.store_host = Some(r.store_host.clone());
            s.store_endpoint = Some(r.store_endpoint.clone());
            s.message = Some(format!(
                "{} piece(s) from {}, waiting for the destination agent",
                r.pieces.len(),
                r.store_host
            ));
            Wanted {
                type_: READY,
                status: false,
                reason: reason::RESOLVED,
                message: "chain resolved; waiting for the destination agent".into(),
                observed_generation: generation,
            }
        }
        Err(refusal) => {
            s.phase = RestorePhase::Failed;
            s.verified = Some(false);
            s.message = Some(refusal.message.clone());
            s.finished_at = Some(now.clone());
            Wanted {
                type_: READY,
                status: false,
                reason: refusal.reason,
                message: refusal.message.clone(),
                observed_generation: generation,
            }
        }
    };
    s.conditions = conditions::set(&current.conditions, &wanted, now);
    s
}

async fn ask_stores(
    ctx: &Context,
    obj: &Restore,
    hosts: &[ZfsHost],
) -> Result<Vec<StoreAnswer>, Error> {
    let ns = obj.namespace().ok_or(Error::MissingMeta("Restore"))?;
    let policies = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: "BackupPolicies".into(),
            source,
        })?
        .items;
    let mut answers = Vec::new();
    for name in store_hosts(&policies) {
        let endpoint = hosts
            .iter()
            .find(|h| h.name_any() == name)
            .and_then(|h| h.status.as_ref())
            .and_then(|s| s.agent_endpoint.clone());
        let catalogue = match &endpoint {
            None => Err(format!(
                "backup host {name} has no agent endpoint (is its agent running?)"
            )),
            Some(ep) => ctx
                .store
                .catalogue(ep, obj.spec.source.host.as_str())
                .await
                .map_err(|e| e.to_string()),
        };
        answers.push(StoreAnswer {
            host: name,
            endpoint,
            catalogue,
        });
    }
    Ok(answers)
}

/// Whether the controller still has to resolve this Restore.
pub fn needs_resolving(status: Option<&RestoreStatus>) -> bool {
    status.is_none_or(|s| s.phase == RestorePhase::Pending && s.chain.is_empty())
}

impl Reconciled for Restore {
    const KIND: &'static str = "Restore";

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        if !needs_resolving(obj.status.as_ref()) {
            return Ok(Action::await_change());
        }
        let hosts = Api::<ZfsHost>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Read {
                what: "ZfsHosts".into(),
                source,
            })?
            .items;
        let dest = hosts
            .iter()
            .find(|h| h.name_any() == obj.spec.destination.host.as_str());
        let outcome = match check_destination(&obj.spec, dest) {
            Err(r) => Err(r),
            Ok(()) => resolve(&obj.spec, &ask_stores(&ctx, &obj, &hosts).await?),
        };
        match &outcome {
            Ok(r) => {
                info!(store = %r.store_host, chain = ?r.pieces.iter().map(|p| &p.id).collect::<Vec<_>>(),
                bytes = r.bytes(), "restore chain resolved")
            }
            Err(r) => warn!(reason = r.reason, message = %r.message, "restore refused"),
        }
        let current = obj.status.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let next = next_status(&current, obj.metadata.generation, &outcome, now);
        let mut unchanged = next.clone();
        unchanged.conditions = current.conditions.clone();
        unchanged.finished_at = current.finished_at.clone();
        if unchanged == current && conditions::same(&current.conditions, &next.conditions) {
            return Ok(Action::await_change());
        }
        status::apply(&ctx, obj.as_ref(), Self::KIND, &next).await?;
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::restore::{RestoreDestination, RestoreSource};
    use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
    use crate::store::{Manifest, StoredBackup};

    fn spec(at: Option<i64>, backup: Option<&str>) -> RestoreSpec {
        RestoreSpec {
            source: RestoreSource {
                host: "src".into(),
                dataset: Some("tank/db".into()),
                datasets: vec![],
                at: at.map(|t| Time(jiff::Timestamp::from_second(t).expect("ts"))),
                backup: backup.map(str::to_owned),
                include_archive: false,
            },
            destination: RestoreDestination {
                host: "dst".into(),
                dataset: "tank/restored".into(),
            },
            force: false,
            verify: true,
        }
    }

    fn stored(id: &str, archived: bool) -> StoredBackup {
        let sid: store::StreamId = id.parse().expect("id");
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "id": id, "host": "src", "dataset": "tank/db", "snapshot": format!("s{}", sid.ts()),
            "type": if id.contains("incremental") { "incremental" } else { "full" },
            "bytes": 10, "sha256": format!("sha-{id}"), "compression": "none",
            "created": jiff::Timestamp::from_second(sid.ts()).expect("ts"),
        }))
        .expect("manifest");
        StoredBackup {
            manifest: m,
            archived,
        }
    }

    fn answer(backups: Vec<StoredBackup>) -> StoreAnswer {
        StoreAnswer {
            host: "bak".into(),
            endpoint: Some("127.0.0.1:1".into()),
            catalogue: Ok(store::Catalogue {
                backups,
                problems: vec![],
            }),
        }
    }

    fn ids(r: &Resolved) -> Vec<&str> {
        r.pieces.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn resolves_newest_at_and_id() {
        let a = answer(vec![
            stored("100.full", false),
            stored("200.incremental.100", false),
            stored("300.incremental.200", false),
        ]);
        let r = resolve(&spec(None, None), std::slice::from_ref(&a)).expect("newest");
        assert_eq!(
            ids(&r),
            ["100.full", "200.incremental.100", "300.incremental.200"]
        );
        assert_eq!(r.bytes(), 30);
        assert_eq!(r.pieces[0].sha256, "sha-100.full");
        let r = resolve(&spec(Some(250), None), std::slice::from_ref(&a)).expect("at");
        assert_eq!(ids(&r), ["100.full", "200.incremental.100"]);
        let r = resolve(&spec(None, Some("100.full")), std::slice::from_ref(&a)).expect("id");
        assert_eq!(ids(&r), ["100.full"]);
        let e = resolve(&spec(Some(50), None), std::slice::from_ref(&a)).expect_err("nothing");
        assert_eq!(e.reason, reason::NOT_FOUND);
    }

    #[test]
    fn broken_chain_and_archive() {
        let a = answer(vec![
            stored("100.full", false),
            stored("300.incremental.200", false),
        ]);
        let e = resolve(&spec(None, None), &[a]).expect_err("broken");
        assert_eq!(e.reason, reason::CHAIN_BROKEN, "{e}");
        let a = answer(vec![stored("100.full", true)]);
        let e = resolve(&spec(None, None), std::slice::from_ref(&a)).expect_err("archived only");
        assert_eq!(e.reason, reason::NOT_FOUND);
        let mut s = spec(None, None);
        s.source.include_archive = true;
        assert_eq!(ids(&resolve(&s, &[a]).expect("archive")), ["100.full"]);
    }

    #[test]
    fn unreachable_and_no_policies() {
        let down = StoreAnswer {
            host: "bak".into(),
            endpoint: Some("x".into()),
            catalogue: Err("connection refused".into()),
        };
        let e = resolve(&spec(None, None), &[down]).expect_err("down");
        assert_eq!(e.reason, reason::STORE_UNREACHABLE);
        let e = resolve(&spec(None, None), &[]).expect_err("none");
        assert_eq!(e.reason, reason::NOT_FOUND);
    }

    #[test]
    fn destination_checks() {
        let mut h = ZfsHost::new(
            "dst",
            ZfsHostSpec {
                node_name: "n".into(),
                datasets: Default::default(),
                paused: false,
            },
        );
        h.status = Some(ZfsHostStatus {
            datasets: vec![
                serde_json::from_value::<DatasetStatus>(
                    serde_json::json!({"name": "tank/restored"}),
                )
                .expect("dataset"),
            ],
            ..Default::default()
        });
        let s = spec(None, None);
        assert_eq!(
            check_destination(&s, Some(&h)).expect_err("exists").reason,
            reason::DESTINATION_EXISTS
        );
        assert_eq!(
            check_destination(&s, None).expect_err("no host").reason,
            reason::NOT_FOUND
        );
        let mut forced = s.clone();
        forced.force = true;
        assert!(check_destination(&forced, Some(&h)).is_ok());
    }

    #[test]
    fn status_transitions() {
        let r = Resolved {
            store_host: "bak".into(),
            store_endpoint: "e".into(),
            pieces: vec![RestorePiece {
                id: "1.full".into(),
                bytes: 5,
                ..Default::default()
            }],
        };
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let s = next_status(&RestoreStatus::default(), Some(1), &Ok(r), now.clone());
        assert_eq!(s.chain, ["1.full"]);
        assert_eq!(s.bytes, Some(5));
        assert!(!needs_resolving(Some(&s)));
        let f = next_status(
            &RestoreStatus::default(),
            Some(1),
            &Err(Refusal::new(reason::CHAIN_BROKEN, "gone")),
            now,
        );
        assert_eq!(f.phase, RestorePhase::Failed);
        assert_eq!(f.conditions[0].reason, reason::CHAIN_BROKEN);
        assert!(!needs_resolving(Some(&f)));
        assert!(needs_resolving(None));
    }
}
