//! The controller against the real apiserver: status is written once per spec change (a status
//! write does not trigger a reconcile loop), invalid specs are reported, and with two replicas
//! exactly one leads and the other takes over when it steps down.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::oneshot;
use zetaback::api::{BackupPolicy, BackupPolicySpec};
use zetaback_e2e::{Env, eventually, free_port, http_get, metric};

fn policy(name: &str, full_keep: &str) -> BackupPolicy {
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "hosts": {"names": ["db-1"]},
        "full": {"every": "7d", "keep": full_keep},
        "incremental": {"every": "1d", "keep": "14d"},
        "target": {"host": "backup-1", "path": "/var/lib/zetaback"}
    }))
    .expect("spec");
    BackupPolicy::new(name, spec)
}

struct Running {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_controller(client: kube::Client, ns: &str, identity: &str) -> Running {
    let port = free_port();
    let (stop, stopped) = oneshot::channel::<()>();
    let options = zetaback::controller::Options {
        lease_namespace: ns.to_owned(),
        identity: identity.to_owned(),
        metrics_addr: ([127, 0, 0, 1], port).into(),
        watch_namespace: Some(ns.to_owned()),
        store_token: None,
        host_stale_after: std::time::Duration::from_secs(90),
    };
    let task = tokio::spawn(zetaback::controller::run(client, options, async {
        let _ = stopped.await;
    }));
    Running {
        port,
        stop: Some(stop),
        task,
    }
}

async fn metrics_of(port: u16) -> String {
    eventually("metrics endpoint", Duration::from_secs(20), || async {
        http_get(port, "/metrics").await.ok()
    })
    .await
}

async fn ready_generation(api: &Api<BackupPolicy>, name: &str) -> Option<(i64, String, String)> {
    let p = api.get(name).await.ok()?;
    let st = p.status?;
    let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((st.observed_generation?, c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_once_per_spec_change() {
    let env = Env::get();
    let ns = env.namespace("ctl-writes");
    let client = env.client().await;
    let mut ctl = start_controller(client.clone(), &ns, "only").await;
    let api: Api<BackupPolicy> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &policy("p1", "30d"))
        .await
        .expect("create");
    let seen = eventually("observedGeneration 1", Duration::from_secs(60), || {
        ready_generation(&api, "p1")
    })
    .await;
    // No ZfsHost "backup-1" exists, so the policy cannot read its store: Ready=False says so.
    assert_eq!(seen, (1, "False".into(), "StoreUnreachable".into()));
    // Give a would-be loop time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = metrics_of(ctl.port).await;
    let writes = metric(
        &m,
        "zetaback_controller_status_writes_total{kind=\"BackupPolicy\"}",
    );
    let reconciles = metric(
        &m,
        "zetaback_controller_reconciles_total{kind=\"BackupPolicy\",result=\"ok\"}",
    );
    println!("after create: status writes {writes:?}, reconciles {reconciles:?}");
    assert_eq!(writes, Some(1.0), "one status write for one change");
    assert_eq!(reconciles, Some(1.0), "one reconcile for one change");

    // A spec change: one more reconcile, one more write.
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"incremental": {"every": "12h"}}})),
    )
    .await
    .expect("patch spec");
    eventually("observedGeneration 2", Duration::from_secs(30), || async {
        ready_generation(&api, "p1").await.filter(|s| s.0 == 2)
    })
    .await;
    // A label change does not change the generation: no reconcile, no write.
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "db"}}})),
    )
    .await
    .expect("patch labels");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = metrics_of(ctl.port).await;
    let writes = metric(
        &m,
        "zetaback_controller_status_writes_total{kind=\"BackupPolicy\"}",
    );
    let reconciles = metric(
        &m,
        "zetaback_controller_reconciles_total{kind=\"BackupPolicy\",result=\"ok\"}",
    );
    println!("after spec + label change: status writes {writes:?}, reconciles {reconciles:?}");
    assert_eq!(writes, Some(2.0));
    assert_eq!(reconciles, Some(2.0));

    if let Some(stop) = ctl.stop.take() {
        let _ = stop.send(());
    }
    ctl.task
        .await
        .expect("join")
        .expect("controller ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_schema_cannot_judge_is_reported_not_ready() {
    let env = Env::get();
    let ns = env.namespace("ctl-invalid");
    let client = env.client().await;
    let mut ctl = start_controller(client.clone(), &ns, "only").await;
    let api: Api<BackupPolicy> = Api::namespaced(client, &ns);
    // A retention grid spanning 2 days for fulls due every 7 days: the CRD's CEL rules check
    // plain ages only, the controller checks grids.
    api.create(&PostParams::default(), &policy("short-grid", "2x1d"))
        .await
        .expect("the apiserver accepts it");
    let (gen_, status, reason) = eventually("a verdict", Duration::from_secs(60), || {
        ready_generation(&api, "short-grid")
    })
    .await;
    assert_eq!(
        (gen_, status.as_str(), reason.as_str()),
        (1, "False", "InvalidSpec")
    );
    let p = api.get("short-grid").await.expect("get");
    let message = &p.status.expect("status").conditions[0].message;
    assert!(
        message.contains("full.keep spans less than full.every"),
        "{message}"
    );
    if let Some(stop) = ctl.stop.take() {
        let _ = stop.send(());
    }
    let _ = ctl.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_leads_and_the_other_takes_over() {
    let env = Env::get();
    let ns = env.namespace("ctl-leader");
    let client = env.client().await;
    let mut a = start_controller(client.clone(), &ns, "replica-a").await;
    let mut b = start_controller(client.clone(), &ns, "replica-b").await;
    let leaders = eventually("exactly one leader", Duration::from_secs(60), || async {
        let la = metric(
            &http_get(a.port, "/metrics").await.ok()?,
            "zetaback_controller_leader",
        )?;
        let lb = metric(
            &http_get(b.port, "/metrics").await.ok()?,
            "zetaback_controller_leader",
        )?;
        (la + lb == 1.0).then_some((la, lb))
    })
    .await;
    // Stay stable: still exactly one after a few renewals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let la = metric(
        &http_get(a.port, "/metrics").await.expect("a"),
        "zetaback_controller_leader",
    );
    let lb = metric(
        &http_get(b.port, "/metrics").await.expect("b"),
        "zetaback_controller_leader",
    );
    assert_eq!(
        (la, lb),
        (Some(leaders.0), Some(leaders.1)),
        "leadership must not flap"
    );
    let (leader, follower) = if leaders.0 == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("before", "30d"))
        .await
        .expect("create");
    eventually("leader reconciles", Duration::from_secs(30), || {
        ready_generation(&api, "before")
    })
    .await;

    // The leader steps down (releasing the Lease); the follower takes over.
    if let Some(stop) = leader.stop.take() {
        let _ = stop.send(());
    }
    let _ = (&mut leader.task).await;
    let port = follower.port;
    eventually(
        "the follower leads",
        Duration::from_secs(40),
        || async move {
            let l = metric(
                &http_get(port, "/metrics").await.ok()?,
                "zetaback_controller_leader",
            )?;
            (l == 1.0).then_some(())
        },
    )
    .await;
    api.create(&PostParams::default(), &policy("after", "30d"))
        .await
        .expect("create");
    eventually("new leader reconciles", Duration::from_secs(30), || {
        ready_generation(&api, "after")
    })
    .await;
    if let Some(stop) = follower.stop.take() {
        let _ = stop.send(());
    }
    let _ = (&mut follower.task).await;
}
