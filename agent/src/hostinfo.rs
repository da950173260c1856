//! What the agent reports in its ZfsHost's status, computed from the ZFS inventory (pure).
//! Its condition goes through the shared [`conditions::set`] (the transition time moves only
//! when the status flips); whether it changed, [`zetaback_core::conditions::status_changed`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zetaback_core::api::zfs_host::{DatasetStatus, PoolStatus};
use zetaback_core::api::{ZfsHostStatus, condition};
use zetaback_core::conditions::{self, Wanted};

use crate::zfs::{Capabilities, Inventory, PoolUsage};

/// At most this many datasets are listed in the status (all are counted).
pub const MAX_LISTED_DATASETS: usize = 2000;
/// At most this many (the newest) of a dataset's snapshots are listed.
pub const MAX_LISTED_SNAPSHOTS: usize = 200;

/// Compiled include/exclude patterns: the one dataset rule, shared with the controller.
pub use zetaback_core::selection::DatasetMatcher;

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
    // Only this condition: what an earlier report said of it (its transition time).
    let previous_ready: Vec<_> = previous
        .iter()
        .flat_map(|p| &p.conditions)
        .filter(|c| c.type_ == condition::AGENT_CONNECTED)
        .cloned()
        .collect();
    let ready = Wanted {
        type_: condition::AGENT_CONNECTED,
        status: true,
        reason: "AgentReporting",
        message: format!("the agent reports {count} datasets"),
        observed_generation: generation,
    };
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
        conditions: conditions::set(&previous_ready, &ready, Time(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::parse::{DatasetInfo, SnapshotInfo};
    use zetaback_core::api::{DatasetPattern, DatasetSelector};
    use zetaback_core::conditions::status_changed;

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
        assert!(!status_changed(&s1, &s2));
        assert_eq!(
            s2.conditions[0].last_transition_time,
            s1.conditions[0].last_transition_time
        );
    }
}
