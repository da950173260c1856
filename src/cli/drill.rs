//! `kubectl zetaback drill POLICY [--host H] [--dataset D]`: asks the controller for a restore
//! drill of the selected datasets now (a request joins the `zetaback.io/drill-now` queue on
//! the policy, like `backup`'s `backup-now`), follows the drills started for it (their
//! Restores carry `zetaback.io/drill-now-request`) with a progress bar, and answers by the
//! monitoring-plugin convention: OK (0) when every selected dataset's drill restored and
//! verified its backup, WARNING (1) when one took longer than the policy's `objectives.rto`,
//! CRITICAL (2) when one failed (`DrillFailed`), UNKNOWN (3) when the answer did not come
//! within `--timeout`, the policy does not exist or has no `spec.drill`, or no selected
//! dataset has a restorable backup.
//!
//! [`enqueue`] and [`progress`] are the pure parts; [`run`] does the I/O.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::cluster::Cluster;
use super::error::CliError;
use super::monitor::State;
use super::request::whole_seconds;
use crate::api::backup_policy::{
    DRILL_NOW_ANNOTATION, DatasetRecovery, DrillNowRequest, parse_drill_now,
};
use crate::api::restore::DRILL_POLICY_LABEL;
use crate::api::{BackupPolicy, BackupPolicyStatus, Restore};
use crate::controller::drill::{past_drill, requested_by};
use crate::policy::DrillOutcome;

/// At most this many requests wait on one policy (the annotation stays small).
pub const MAX_QUEUED: usize = 32;

/// How often the status and the drills are read while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Why a request cannot join the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error(
        "{0} drill requests already wait for the controller on this policy (is it running?); nothing was requested"
    )]
    Full(usize),
}

/// The queue after adding `request` to the annotation value `existing`: requests the
/// controller handled (at or before `handled`) leave, an unreadable value is replaced (the
/// controller ignores it too). Every request stays its own (the controller answers all the
/// requests waiting for a dataset with one drill).
pub fn enqueue(
    existing: Option<&str>,
    handled: Option<Timestamp>,
    request: DrillNowRequest,
) -> Result<Vec<DrillNowRequest>, QueueError> {
    let mut queue = existing
        .and_then(|v| parse_drill_now(v).ok())
        .unwrap_or_default();
    queue.retain(|r| handled.is_none_or(|h| r.requested_at > h));
    if !queue.contains(&request) {
        if queue.len() >= MAX_QUEUED {
            return Err(QueueError::Full(queue.len()));
        }
        queue.push(request);
    }
    queue.sort_by_key(|r| r.requested_at);
    Ok(queue)
}

/// Where one selected dataset's drill is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetDrill {
    /// No drill started for the request yet.
    Waiting,
    /// Its drill runs: bytes applied of the chain's total (when known).
    Running {
        done: u64,
        total: Option<u64>,
    },
    /// Restored and verified in this long.
    Succeeded {
        rto: SignedDuration,
    },
    Failed {
        message: String,
    },
}

/// What the cluster says about one drill request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// (host, dataset, its drill) per selected dataset with a restorable backup.
    pub datasets: Vec<(String, String, DatasetDrill)>,
    /// The policy's recovery time objective.
    pub objective: Option<SignedDuration>,
}

impl Progress {
    fn count(&self, f: impl Fn(&DatasetDrill) -> bool) -> usize {
        self.datasets.iter().filter(|(_, _, d)| f(d)).count()
    }

    /// Every selected dataset's drill finished.
    pub fn finished(&self) -> bool {
        !self.datasets.is_empty()
            && self.count(|d| {
                matches!(
                    d,
                    DatasetDrill::Succeeded { .. } | DatasetDrill::Failed { .. }
                )
            }) == self.datasets.len()
    }

    pub fn failed(&self) -> usize {
        self.count(|d| matches!(d, DatasetDrill::Failed { .. }))
    }

    /// The slowest measured recovery time.
    pub fn slowest(&self) -> Option<SignedDuration> {
        self.datasets
            .iter()
            .filter_map(|(_, _, d)| match d {
                DatasetDrill::Succeeded { rto } => Some(*rto),
                _ => None,
            })
            .max()
    }

    /// Drills slower than the objective.
    pub fn over_objective(&self) -> usize {
        let Some(objective) = self.objective else {
            return 0;
        };
        self.count(|d| matches!(d, DatasetDrill::Succeeded { rto } if *rto > objective))
    }

    /// The verdict once finished (UNKNOWN before, and with nothing to drill).
    pub fn state(&self) -> State {
        match self {
            p if !p.finished() => State::Unknown,
            p if p.failed() > 0 => State::Critical,
            p if p.over_objective() > 0 => State::Warning,
            _ => State::Ok,
        }
    }

    /// Bytes applied and the total known, over the running and finished drills.
    pub fn bytes(&self) -> (u64, u64) {
        self.datasets
            .iter()
            .fold((0, 0), |(done, total), (_, _, d)| match d {
                DatasetDrill::Running { done: n, total: t } => {
                    (done + n, total + t.unwrap_or(*n).max(*n))
                }
                _ => (done, total),
            })
    }

    /// The monitoring-plugin line: state, summary, performance data.
    pub fn line(&self) -> String {
        let state = self.state();
        let rto = self.slowest().map_or(0, |r| r.as_secs());
        let mut summary = if self.datasets.is_empty() {
            "no selected dataset has a restorable backup to drill".to_owned()
        } else if self.finished() {
            format!(
                "{} dataset(s) drilled, {} failed, slowest restore {rto}s{}",
                self.datasets.len(),
                self.failed(),
                self.objective
                    .map(|o| format!(" (RTO objective {}s)", o.as_secs()))
                    .unwrap_or_default()
            )
        } else {
            let started = self.count(|d| *d != DatasetDrill::Waiting);
            format!(
                "not finished: {started} of {} drill(s) started, {} finished",
                self.datasets.len(),
                self.count(|d| matches!(
                    d,
                    DatasetDrill::Succeeded { .. } | DatasetDrill::Failed { .. }
                ))
            )
        };
        for (host, dataset, d) in &self.datasets {
            if let DatasetDrill::Failed { message } = d {
                summary.push_str(&format!("; {host}:{dataset} failed: {message}"));
            }
        }
        format!(
            "DRILL {} - {summary} | datasets={} failed={} rto_max={rto}s",
            state.label(),
            self.datasets.len(),
            self.failed(),
        )
    }
}

/// What `status` and the policy's drill Restores say about `request`: for each selected
/// dataset that has a restorable backup, the newest drill answering the request (or a newer
/// one).
pub fn progress(
    status: Option<&BackupPolicyStatus>,
    restores: &[Restore],
    request: &DrillNowRequest,
    objective: Option<SignedDuration>,
) -> Progress {
    let selected = status
        .map(|s| s.recovery.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| request.selects(&r.host, &r.dataset) && r.newest_restorable.is_some());
    let datasets = selected
        .map(|r: &DatasetRecovery| {
            let answering = restores
                .iter()
                .filter(|x| requested_by(x).is_some_and(|at| at >= request.requested_at))
                .filter_map(|x| past_drill(x).map(|p| (x, p)))
                .filter(|(_, (h, d, _))| *h == r.host && *d == r.dataset)
                .max_by(|(_, (_, _, a)), (_, (_, _, b))| {
                    (a.started, &a.restore).cmp(&(b.started, &b.restore))
                });
            let drill = match answering {
                None => DatasetDrill::Waiting,
                Some((x, (_, _, p))) => match p.outcome {
                    DrillOutcome::Running => {
                        let st = x.status.clone().unwrap_or_default();
                        DatasetDrill::Running {
                            done: st.bytes_done.unwrap_or(0),
                            total: st.bytes,
                        }
                    }
                    DrillOutcome::Succeeded => DatasetDrill::Succeeded {
                        rto: p.rto().unwrap_or(SignedDuration::ZERO),
                    },
                    DrillOutcome::Failed => DatasetDrill::Failed { message: p.message },
                },
            };
            (r.host.clone(), r.dataset.clone(), drill)
        })
        .collect();
    Progress {
        datasets,
        objective,
    }
}

/// The policy's recovery time objective, if it has one that parses.
fn objective(policy: &BackupPolicy) -> Option<SignedDuration> {
    let rto = policy.spec.objectives.as_ref()?.rto.as_ref()?;
    SignedDuration::try_from(rto.duration().ok()?).ok()
}

/// The command: errors answer UNKNOWN (exit 3) with the reason on the plugin line.
pub async fn run(
    cluster: &Cluster,
    out: &mut dyn std::io::Write,
    ns: &str,
    name: &str,
    request: (Option<String>, Option<String>),
    timeout: Duration,
    now: Timestamp,
) -> Result<u8, CliError> {
    match follow(cluster, ns, name, request, timeout, now).await {
        Ok(progress) => {
            writeln!(out, "{}", progress.line())?;
            Ok(progress.state().exit_code())
        }
        Err(e) => {
            writeln!(out, "DRILL UNKNOWN - {}", e.chain())?;
            Ok(State::Unknown.exit_code())
        }
    }
}

async fn follow(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    (host, dataset): (Option<String>, Option<String>),
    timeout: Duration,
    now: Timestamp,
) -> Result<Progress, CliError> {
    let mut p = cluster.policy(ns, name).await?;
    if p.spec.drill.is_none() {
        return Err(CliError::Usage(format!(
            "BackupPolicy {ns}/{name} has no spec.drill (no drill destination); nothing was requested"
        )));
    }
    let request = DrillNowRequest {
        host,
        dataset,
        requested_at: whole_seconds(now),
    };
    // The request joins the queue; the write is refused if the policy changed since it was
    // read (another request joined), and then tried again.
    let mut attempt = 0;
    loop {
        let handled = p
            .status
            .as_ref()
            .and_then(|s| s.drill_now_handled.as_ref())
            .map(|t| t.0);
        let queue = enqueue(
            p.annotations()
                .get(DRILL_NOW_ANNOTATION)
                .map(String::as_str),
            handled,
            request.clone(),
        )
        .map_err(|e| CliError::Usage(format!("policy {ns}/{name}: {e}")))?;
        let value = serde_json::to_string(&queue).map_err(|e| CliError::Encode {
            format: "JSON",
            message: e.to_string(),
        })?;
        attempt += 1;
        match cluster
            .annotate_unchanged(&p, serde_json::json!({ DRILL_NOW_ANNOTATION: value }))
            .await
        {
            Ok(()) => break,
            Err(CliError::Kube {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 && attempt < 5 => {
                p = cluster.policy(ns, name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    let objective = objective(&p);
    let restores: Api<Restore> = Api::namespaced(cluster.client.clone(), ns);
    let by_policy = ListParams::default().labels(&format!("{DRILL_POLICY_LABEL}={name}"));
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("drill of {name}: asked"));
    let start = std::time::Instant::now();
    loop {
        let p = cluster.policy(ns, name).await?;
        let drills = restores
            .list(&by_policy)
            .await
            .map_err(CliError::kube(format!(
                "cannot list the drill Restores of BackupPolicy {ns}/{name}"
            )))?
            .items;
        let progress = progress(p.status.as_ref(), &drills, &request, objective);
        let handled = p
            .status
            .as_ref()
            .and_then(|s| s.drill_now_handled.as_ref())
            .is_some_and(|t| t.0 >= request.requested_at);
        // Nothing to drill is known only once the controller answered the request.
        if progress.finished()
            || (handled && progress.datasets.is_empty())
            || start.elapsed() >= timeout
        {
            bar.finish_and_clear();
            return Ok(progress);
        }
        let (done, total) = progress.bytes();
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!(
            "drill of {name}: {}/{} finished, {} running",
            progress.count(|d| matches!(
                d,
                DatasetDrill::Succeeded { .. } | DatasetDrill::Failed { .. }
            )),
            progress.datasets.len(),
            progress.count(|d| matches!(d, DatasetDrill::Running { .. })),
        ));
        bar.tick();
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RestoreStatus;
    use crate::api::backup_policy::DRILL_NOW_REQUEST_ANNOTATION;
    use crate::api::restore::RestorePhase;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("ts")
    }

    fn req(dataset: Option<&str>, at: i64) -> DrillNowRequest {
        DrillNowRequest {
            host: None,
            dataset: dataset.map(Into::into),
            requested_at: ts(at),
        }
    }

    #[test]
    fn requests_queue_up_and_handled_ones_leave() {
        let a = req(Some("tank/a"), 100);
        let b = req(Some("tank/b"), 101);
        let q = enqueue(None, None, a.clone()).expect("queue");
        assert_eq!(q, vec![a.clone()]);
        let text = serde_json::to_string(&q).expect("json");
        assert!(
            text.contains(r#""requestedAt":"2023-11-14T22:15:00Z""#),
            "{text}"
        );
        let q = enqueue(Some(&text), None, b.clone()).expect("queue");
        assert_eq!(q, vec![a.clone(), b.clone()]);
        let text = serde_json::to_string(&q).expect("json");
        // The same request twice is one.
        assert_eq!(enqueue(Some(&text), None, b.clone()).expect("queue"), q);
        assert_eq!(
            enqueue(Some(&text), Some(ts(100)), b.clone()).expect("queue"),
            vec![b.clone()]
        );
        assert_eq!(
            enqueue(Some("{junk"), None, a.clone()).expect("queue"),
            vec![a.clone()]
        );
        let many: Vec<_> = (0..MAX_QUEUED as i64).map(|i| req(None, i)).collect();
        let text = serde_json::to_string(&many).expect("json");
        assert_eq!(
            enqueue(Some(&text), None, a),
            Err(QueueError::Full(MAX_QUEUED))
        );
    }

    fn recovery(dataset: &str, restorable: bool) -> DatasetRecovery {
        DatasetRecovery {
            host: "h".into(),
            dataset: dataset.into(),
            newest_restorable: restorable.then(|| Time(ts(0))),
            rto_seconds: None,
            last_good_drill: None,
            last_drill: None,
            next_drill: None,
        }
    }

    /// A drill Restore of `dataset`, created at `created`, answering a request made at
    /// `requested` (if any), in `phase`, verified `took` seconds after it started.
    fn drill(
        name: &str,
        dataset: &str,
        created: i64,
        requested: Option<i64>,
        phase: RestorePhase,
        took: i64,
    ) -> Restore {
        let mut r = Restore::new(
            name,
            serde_json::from_value(serde_json::json!({
                "source": {"host": "h", "dataset": dataset, "backup": "1.full"},
                "destination": {"host": "b", "dataset": format!("pool/drills/{name}")},
                "drill": true,
            }))
            .expect("spec"),
        );
        r.metadata.creation_timestamp = Some(Time(ts(created)));
        if let Some(at) = requested {
            r.metadata.annotations = Some(
                [(DRILL_NOW_REQUEST_ANNOTATION.to_owned(), ts(at).to_string())]
                    .into_iter()
                    .collect(),
            );
        }
        let end = matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed)
            .then(|| Time(ts(created + took)));
        r.status = Some(RestoreStatus {
            phase,
            bytes: Some(1000),
            bytes_done: Some(400),
            verified: Some(phase == RestorePhase::Succeeded),
            verified_at: end.clone().filter(|_| phase == RestorePhase::Succeeded),
            finished_at: end,
            scratch_destroyed: Some(true),
            message: Some("checksum mismatch".into()),
            ..Default::default()
        });
        r
    }

    #[test]
    fn verdicts_follow_the_drills_that_answer_the_request() {
        let status = BackupPolicyStatus {
            recovery: vec![
                recovery("tank/a", true),
                recovery("tank/b", true),
                recovery("tank/none", false),
            ],
            ..Default::default()
        };
        let hour = Some(SignedDuration::from_secs(3600));
        let all = req(None, 100);
        let only_a = req(Some("tank/a"), 100);
        let ok_a = drill("a2", "tank/a", 101, Some(100), RestorePhase::Succeeded, 30);
        let ok_b = drill("b2", "tank/b", 101, Some(100), RestorePhase::Succeeded, 50);
        // (drills, request, objective, finished, state)
        let cases = [
            // A drill that did not answer this request (scheduled, or an older request).
            (
                vec![
                    drill("a1", "tank/a", 99, None, RestorePhase::Succeeded, 5),
                    drill("a0", "tank/a", 98, Some(90), RestorePhase::Succeeded, 5),
                ],
                only_a.clone(),
                hour,
                false,
                State::Unknown,
            ),
            (
                vec![drill(
                    "a2",
                    "tank/a",
                    101,
                    Some(100),
                    RestorePhase::Running,
                    0,
                )],
                only_a.clone(),
                hour,
                false,
                State::Unknown,
            ),
            (vec![ok_a.clone()], only_a.clone(), hour, true, State::Ok),
            // A newer request's drill answers an older one too.
            (
                vec![drill(
                    "a3",
                    "tank/a",
                    105,
                    Some(104),
                    RestorePhase::Succeeded,
                    5,
                )],
                only_a.clone(),
                hour,
                true,
                State::Ok,
            ),
            // All datasets: b is still missing; then both done.
            (vec![ok_a.clone()], all.clone(), hour, false, State::Unknown),
            (
                vec![ok_a.clone(), ok_b.clone()],
                all.clone(),
                hour,
                true,
                State::Ok,
            ),
            (
                vec![ok_a.clone(), ok_b.clone()],
                all.clone(),
                Some(SignedDuration::from_secs(40)),
                true,
                State::Warning,
            ),
            (
                vec![
                    ok_a.clone(),
                    drill("b2", "tank/b", 101, Some(100), RestorePhase::Failed, 5),
                ],
                all.clone(),
                hour,
                true,
                State::Critical,
            ),
            // Nothing restorable selected.
            (
                vec![],
                req(Some("tank/none"), 100),
                hour,
                false,
                State::Unknown,
            ),
        ];
        for (drills, r, objective, finished, state) in cases {
            let p = progress(Some(&status), &drills, &r, objective);
            assert_eq!((p.finished(), p.state()), (finished, state), "{r:?} {p:?}");
            assert!(
                p.line().starts_with(&format!("DRILL {} - ", state.label())),
                "{}",
                p.line()
            );
        }
        // The failure's reason is on the line; a running drill's bytes feed the bar.
        let p = progress(
            Some(&status),
            &[drill(
                "b2",
                "tank/b",
                101,
                Some(100),
                RestorePhase::Failed,
                5,
            )],
            &req(Some("tank/b"), 100),
            None,
        );
        assert!(
            p.line().contains("h:tank/b failed: checksum mismatch"),
            "{}",
            p.line()
        );
        let p = progress(
            Some(&status),
            &[drill(
                "a2",
                "tank/a",
                101,
                Some(100),
                RestorePhase::Running,
                0,
            )],
            &only_a,
            None,
        );
        assert_eq!(p.bytes(), (400, 1000));
        assert_eq!(progress(None, &[], &all, None).state(), State::Unknown);
    }
}
