//! Hostile tier, issue 13 finding 2 (build item 7): backups dated in the future. On real
//! parts (the local apiserver, zfs-fuse, real agents, the controller in-process).
//!
//! A forged full with a far-future id (`253402000000.full`, 9999-12-28) is planted in the
//! backup host's store for a dataset before its policy exists, as a node that could write
//! there would leave it: the controller must ignore it, so the dataset still gets its real full
//! backup, the policy's last backup is the real one (not 9999), nothing is a violator and the
//! real backup is kept. And the store refuses such an id (the issue's `253402207199.full`)
//! when a source sends it, even the host's own agent.

use std::io::{Read, Write};
use std::time::Duration;

use kube::api::Api;
use sha2::{Digest, Sha256};
use zetaback::api::BackupPolicy;
use zetaback::store::layout::Layout;
use zetaback_e2e::fleet::{Fleet, HostSpec};
use zetaback_e2e::{Env, eventually};

/// The far-future id of the issue (9999-12-31T23:59:59Z), sent to the store.
const FAR_FUTURE: i64 = 253_402_207_199;
/// The far-future time of the planted backup (9999-12-28: a manifest whose `created` every
/// reader can parse; the last second of 9999 is beyond what a timestamp with an offset holds).
const PLANTED: i64 = 253_402_000_000;

/// One HTTP/1.1 PUT of a ZFS-stream-like body to the agent at `addr`; (status, body).
fn put(addr: &str, path: &str, token: &str, snapshot: &str) -> (u16, String) {
    let mut body = vec![0u8; 8];
    body.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    body.resize(4096, 1);
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nAuthorization: Bearer {token}\r\nx-zetaback-snapshot: {snapshot}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    let _ = s.write_all(&body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("PUT {path}: no HTTP answer: {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_backups_are_refused_and_ignored() {
    let env = Env::get();
    let ns = env.namespace("identity-future");
    let mut fleet =
        Fleet::start(env, &ns, &[HostSpec::source("src"), HostSpec::store("bak")]).await;
    let src = fleet.name("src");
    let dataset = fleet.create_dataset("src", "data");
    fleet.write_file(&dataset, "a.txt", b"the real data");
    let bak = fleet.host("bak").endpoint();
    eventually(
        "the backup host's agent listens",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(&bak).ok().map(|_| ()) },
    )
    .await;

    // The store refuses a far-future id, even from the host's own agent.
    let escaped = dataset.replace('/', "+");
    let (status, answer) = put(
        &bak,
        &format!("/v1/streams/{src}/{escaped}/{FAR_FUTURE}.full"),
        &fleet.agent_token("src"),
        &format!("zb-{FAR_FUTURE}"),
    );
    assert_eq!(status, 400, "a far-future id sent to the store: {answer}");
    assert!(answer.contains("future"), "{answer}");

    // A forged far-future full planted in the store (stream and manifest), before the
    // policy exists.
    let layout = Layout::new(fleet.store_root("bak"));
    let id: zetaback::store::StreamId = format!("{PLANTED}.full").parse().expect("id");
    let stream = layout
        .stream_path(&src, &dataset, &id, false)
        .expect("stream path");
    std::fs::create_dir_all(stream.parent().expect("dir")).expect("mkdir");
    let bytes = vec![0u8; 1024];
    std::fs::write(&stream, &bytes).expect("stream");
    let manifest = serde_json::json!({
        "version": zetaback::store::MANIFEST_VERSION,
        "id": id.to_string(),
        "host": src,
        "dataset": dataset,
        "snapshot": format!("zb-{PLANTED}"),
        "type": "full",
        "bytes": bytes.len(),
        "sha256": hex::encode(Sha256::digest(&bytes)),
        "compression": "none",
        "created": jiff::Timestamp::from_second(PLANTED).expect("time").to_string(),
    });
    let manifest_path = layout
        .manifest_path(&src, &dataset, &id, false)
        .expect("manifest path");
    std::fs::write(&manifest_path, manifest.to_string()).expect("manifest");
    zetaback::store::Manifest::from_json(manifest.to_string().as_bytes())
        .expect("the planted manifest is a valid one");

    fleet.start_controller(|_| {}).await;
    let spec = fleet.policy_spec("src", "bak", &dataset);
    fleet
        .create_policy("future", "src", &[&dataset], spec)
        .await;

    // The dataset gets its real full backup: the forged one did not make it look done.
    let real = fleet.wait_for_backups("bak", "src", &dataset, 1).await;
    assert!(
        real.iter()
            .all(|b| b.manifest.created.as_second() < FAR_FUTURE),
        "the controller's catalogue does not list the forged backup: {real:?}"
    );
    let policies: Api<BackupPolicy> = Api::namespaced(fleet.client.clone(), &ns);
    let status = eventually(
        "the policy reports its real last backup",
        Duration::from_secs(60),
        || {
            let policies = policies.clone();
            async move {
                let st = policies.get("future").await.ok()?.status?;
                (st.datasets == 1 && st.last_backup.is_some()).then_some(st)
            }
        },
    )
    .await;
    let last = status.last_backup.expect("last backup").0;
    assert!(
        last.as_second() < PLANTED && last <= jiff::Timestamp::now(),
        "the policy's last backup is the real one, not the forged one: {last}"
    );
    assert_eq!(status.violators, 0, "{:?}", status.violations);
    // Ignored, not acted on: the real backup is kept, the forged one left for a human.
    assert!(
        manifest_path.exists(),
        "the forged backup is left where it was"
    );
    let again = fleet
        .stored_backups("bak", "src", &dataset)
        .await
        .expect("catalogue");
    assert_eq!(
        again.len(),
        real.len(),
        "retention deleted nothing: {again:?}"
    );

    fleet.shutdown().await;
    let _ = env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
