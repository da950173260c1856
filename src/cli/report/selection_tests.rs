//! The CLI's reports and the controller cover the same hosts of a policy: for every host
//! selector of a table and every set of existing ZfsHosts, the hosts `selected_hosts` lists are
//! exactly the ones the controller's plan looks at (the existing hosts it selects) plus the ones
//! it reports missing (named, no ZfsHost) — each once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::selected_hosts;
use crate::api::backup_policy::ViolationReason;
use crate::api::zfs_host::{DatasetStatus, ZfsHostSpec, ZfsHostStatus};
use crate::api::{BackupPolicy, BackupPolicySpec, DatasetSelector, ZfsHost};
use crate::controller::backup_policy::{Inputs, plan, selects_host};
use crate::controller::store_client::StoreView;
use crate::policy::PolicyRules;
use crate::store;

const NOW: i64 = 1_700_000_000;

fn policy(hosts: serde_json::Value) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": hosts,
        "datasets": {"include": ["tank/**"]},
        "full": {"every": "7d", "keep": "14d"},
        "incremental": {"every": "1d", "keep": "3d"},
        "target": {"host": "backup-1", "path": "/srv/zb"}
    }))
    .expect("spec");
    let mut p = BackupPolicy::new("p1", spec);
    p.metadata.namespace = Some("ns".into());
    p
}

/// A host whose agent reported just now, with one dataset.
fn host(name: &str, tier: &str) -> ZfsHost {
    let mut h = ZfsHost::new(
        name,
        ZfsHostSpec {
            node_name: name.into(),
            datasets: DatasetSelector::default(),
            paused: false,
            allowed_namespaces: Vec::new(),
            restore_roots: Vec::new(),
        },
    );
    h.metadata.labels = Some([("tier".to_owned(), tier.to_owned())].into());
    h.status = Some(ZfsHostStatus {
        last_seen: Some(Time(jiff::Timestamp::from_second(NOW).expect("ts"))),
        datasets: vec![DatasetStatus {
            name: "tank/a".into(),
            used_bytes: None,
            latest_snapshot: None,
            snapshots: Vec::new(),
            class: None,
            excluded: false,
        }],
        ..ZfsHostStatus::default()
    });
    h
}

/// The hosts the controller's plan covers: the existing ones it selects, then the ones it
/// reports as unknown (a host-level violation of a host with no ZfsHost).
fn controller_view(p: &BackupPolicy, hosts: &[ZfsHost]) -> Vec<String> {
    let arcs: Vec<Arc<ZfsHost>> = hosts.iter().cloned().map(Arc::new).collect();
    let rules = PolicyRules::from_spec(&p.spec).expect("rules");
    let view = StoreView::from_store(&store::Catalogue::default());
    let planned = plan(&Inputs {
        policy: p,
        rules: &rules,
        hosts: &arcs,
        jobs: &[],
        catalogue: Some(&view),
        host_stale_after: Duration::from_secs(60),
        backup_now: &[],
        target_in_flight_elsewhere: 0,
        now: jiff::Timestamp::from_second(NOW).expect("ts"),
    })
    .expect("plan");
    let mut covered: Vec<String> = hosts
        .iter()
        .filter(|h| selects_host(p, h))
        .map(|h| h.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        usize::try_from(planned.status.hosts).ok(),
        Some(covered.len()),
        "the plan counts the hosts it selects"
    );
    covered.extend(
        planned
            .status
            .violations
            .iter()
            .filter(|v| v.reason == ViolationReason::HostNotReporting && v.dataset.is_empty())
            .map(|v| v.host.clone()),
    );
    covered
}

#[test]
fn the_cli_reports_and_the_controller_cover_the_same_hosts_each_once() {
    let selectors = [
        serde_json::json!({"names": ["db-1"]}),
        serde_json::json!({"names": ["db-1", "db-1"]}),
        serde_json::json!({"names": ["db-2", "gone", "gone", "db-1"]}),
        serde_json::json!({"names": ["gone"]}),
        serde_json::json!({"selector": {"matchLabels": {"tier": "db"}}}),
        serde_json::json!({"selector": {"matchLabels": {"tier": "none"}}}),
        serde_json::json!({"selector": {"matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["web"]}]}}),
        serde_json::json!({"selector": {}}),
    ];
    let all = [host("db-1", "db"), host("db-2", "db"), host("web-1", "web")];
    for hosts_spec in selectors {
        let p = policy(hosts_spec.clone());
        for mask in 0u32..(1 << all.len()) {
            let hosts: Vec<ZfsHost> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, h)| h.clone())
                .collect();
            let mut cli = selected_hosts(&p, &hosts);
            let mut controller = controller_view(&p, &hosts);
            cli.sort();
            controller.sort();
            assert_eq!(cli, controller, "{hosts_spec} over hosts {mask:03b}");
            let mut once = cli.clone();
            once.dedup();
            assert_eq!(
                cli, once,
                "{hosts_spec} over hosts {mask:03b}: a host twice"
            );
        }
    }
}
