//! What the agent reports in its ZfsHost's status, computed from the ZFS inventory (pure).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use zetaback_core::api::zfs_host::{DatasetStatus, PoolStatus};
use zetaback_core::api::{DatasetSelector, ZfsHostStatus, condition};

use crate::zfs::{Capabilities, Inventory, PoolUsage};

/// At most this many datasets are listed in the status (all are counted).
pub const MAX_LISTED_DATASETS: usize = 2000;
/// At most this many (the newest) of a dataset's snapshots are listed.
pub const MAX_LISTED_SNAPSHOTS: usize = 200;

/// Compiled include/exclude patterns.
#[derive(Debug, Clone)]
pub struct DatasetMatcher {
    include: GlobSet,
    exclude: GlobSet,
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

fn compile(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(p)?);
        // `tank/**` means tank itself too (DatasetSelector's documented meaning).
        if let Some(prefix) = p.strip_suffix("/**") {
            b.add(glob(prefix)?);
        }
    }
    b.build()
}

impl DatasetMatcher {
    /// From a ZfsHost's (or policy's) selector. Patterns were validated by the schema; a
    /// pattern that still fails to compile is an error.
    pub fn new(selector: &DatasetSelector) -> Result<Self, globset::Error> {
        let inc: Vec<String> = selector.include.iter().map(|p| p.0.clone()).collect();
        let exc: Vec<String> = selector.exclude.iter().map(|p| p.0.clone()).collect();
        Ok(Self {
            include: compile(&inc)?,
            exclude: compile(&exc)?,
        })
    }

    /// Included and not excluded.
    pub fn matches(&self, dataset: &str) -> bool {
        self.include.is_match(dataset) && !self.exclude.is_match(dataset)
    }
}

/// The status without `lastSeen` and condition times: what decides whether to write.
pub fn comparable(status: &ZfsHostStatus) -> ZfsHostStatus {
    let mut s = status.clone();
    s.last_seen = None;
    for c in &mut s.conditions {
        c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
    }
    s
}

/// Everything the agent found, as a status.
#[allow(clippy::too_many_arguments)]
pub fn build_status(
    previous: Option<&ZfsHostStatus>,
    generation: Option<i64>,
    matcher: &DatasetMatcher,
    inventory: &Inventory,
    pools: &[PoolUsage],
    caps: &Capabilities,
    agent_endpoint: Option<&str>,
    now: jiff::Timestamp,
) -> ZfsHostStatus {
    let mut datasets: Vec<DatasetStatus> = inventory
        .datasets
        .iter()
        .filter(|d| matcher.matches(&d.name))
        .map(|d| {
            // Ours, oldest first (the inventory is sorted by creation).
            let mut ours: Vec<String> = inventory
                .snapshots_of(&d.name)
                .filter(|s| s.managed)
                .map(|s| s.name.clone())
                .collect();
            let latest_snapshot = ours.last().cloned();
            if ours.len() > MAX_LISTED_SNAPSHOTS {
                ours.drain(..ours.len() - MAX_LISTED_SNAPSHOTS);
            }
            DatasetStatus {
                name: d.name.clone(),
                used_bytes: Some(d.used),
                latest_snapshot,
                snapshots: ours,
                class: d.class.clone(),
                excluded: d.excluded,
            }
        })
        .collect();
    let count = datasets.len();
    datasets.truncate(MAX_LISTED_DATASETS);
    let ready = Condition {
        type_: condition::AGENT_CONNECTED.into(),
        status: "True".into(),
        reason: "AgentReporting".into(),
        message: format!("the agent reports {count} datasets"),
        observed_generation: generation,
        last_transition_time: Time(now),
    };
    let ready = keep_transition_time(previous, ready);
    ZfsHostStatus {
        observed_generation: generation,
        agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        agent_endpoint: agent_endpoint.map(str::to_owned),
        zfs_capabilities: caps.names(),
        pools: pools
            .iter()
            .map(|p| PoolStatus {
                name: p.name.clone(),
                health: p.health.clone(),
                size_bytes: p.size_bytes,
                free_bytes: p.free_bytes,
            })
            .collect(),
        pool_count: i32::try_from(pools.len()).ok(),
        datasets,
        dataset_count: i32::try_from(count).ok(),
        last_seen: Some(Time(now)),
        conditions: vec![ready],
    }
}

/// Moves `lastTransitionTime` only on a transition.
fn keep_transition_time(previous: Option<&ZfsHostStatus>, mut c: Condition) -> Condition {
    if let Some(old) = previous
        .and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
        .filter(|o| o.status == c.status)
    {
        c.last_transition_time = old.last_transition_time.clone();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::parse::{DatasetInfo, SnapshotInfo};
    use zetaback_core::api::DatasetPattern;

    fn ds(name: &str) -> DatasetInfo {
        DatasetInfo {
            name: name.into(),
            volume: false,
            creation: 1,
            used: 10,
            referenced: 10,
            class: None,
            excluded: false,
        }
    }

    fn sel(inc: &[&str], exc: &[&str]) -> DatasetSelector {
        DatasetSelector {
            include: inc.iter().map(|p| DatasetPattern((*p).into())).collect(),
            exclude: exc.iter().map(|p| DatasetPattern((*p).into())).collect(),
        }
    }

    #[test]
    fn globs() {
        let m = DatasetMatcher::new(&sel(&["tank/**"], &["tank/tmp", "tank/*/cache"])).expect("m");
        assert!(m.matches("tank"));
        assert!(m.matches("tank/db"));
        assert!(m.matches("tank/db/pg"));
        assert!(!m.matches("tank/tmp"));
        assert!(m.matches("tank/tmp/x"));
        assert!(!m.matches("tank/db/cache"));
        assert!(!m.matches("rpool"));
        let star = DatasetMatcher::new(&sel(&["tank/*"], &[])).expect("m");
        assert!(star.matches("tank/db"));
        assert!(!star.matches("tank/db/pg"));
        let all = DatasetMatcher::new(&DatasetSelector::default()).expect("m");
        assert!(all.matches("any/thing"));
    }

    #[test]
    fn status_and_comparison() {
        let inv = Inventory {
            datasets: vec![ds("tank"), ds("tank/db"), ds("tank/tmp")],
            snapshots: vec![
                SnapshotInfo {
                    dataset: "tank/db".into(),
                    name: "zb-1".into(),
                    creation: 1,
                    used: 0,
                    referenced: 0,
                    managed: true,
                },
                SnapshotInfo {
                    dataset: "tank/db".into(),
                    name: "zb-2".into(),
                    creation: 2,
                    used: 0,
                    referenced: 0,
                    managed: true,
                },
                SnapshotInfo {
                    dataset: "tank/db".into(),
                    name: "manual".into(),
                    creation: 3,
                    used: 0,
                    referenced: 0,
                    managed: false,
                },
            ],
        };
        let m = DatasetMatcher::new(&sel(&["tank/**"], &["tank/tmp"])).expect("m");
        let t1 = jiff::Timestamp::from_second(1000).expect("t");
        let t2 = jiff::Timestamp::from_second(2000).expect("t");
        let caps = Capabilities::none();
        let s1 = build_status(
            None,
            Some(1),
            &m,
            &inv,
            &[],
            &caps,
            Some("10.0.0.1:7790"),
            t1,
        );
        assert_eq!(s1.dataset_count, Some(2));
        assert_eq!(s1.datasets[1].latest_snapshot.as_deref(), Some("zb-2"));
        assert_eq!(s1.datasets[1].snapshots, ["zb-1", "zb-2"]);
        let s2 = build_status(
            Some(&s1),
            Some(1),
            &m,
            &inv,
            &[],
            &caps,
            Some("10.0.0.1:7790"),
            t2,
        );
        assert_ne!(s1, s2);
        assert_eq!(comparable(&s1), comparable(&s2));
        assert_eq!(
            s2.conditions[0].last_transition_time,
            s1.conditions[0].last_transition_time
        );
    }
}
