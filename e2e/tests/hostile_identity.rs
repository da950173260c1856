//! Hostile tier, issue 13 findings 1, 2 and 8: one node's agent cannot act for another host,
//! and only the controller deletes. On real parts: the local kube-apiserver issues every
//! identity (a ServiceAccount token bound to a Pod on a Node, minted with the TokenRequest
//! API, audience `zetaback-store`; see `Fleet::start`), the store agents check them with
//! TokenReview, and a zfs-fuse pool holds the replica root.
//!
//! Host `a`'s agent, with its own token, tries host `b`'s streams on the backup host: PUT a
//! stream (file store), PUT into `b`'s replica (a fresh stream, which would abort a partial
//! receive, and one with `x-zetaback-force`, which would roll the replica back), GET `b`'s
//! stored backup, `b`'s replica resume token, and the whole catalogue: each is 403 and the
//! store is unchanged. A source (even `b` itself) cannot DELETE or archive; the controller can.
//! A token for another audience, and one of the agents' ServiceAccount not bound to a pod,
//! are 401. Another host reads b's backup only with the controller's signed grant naming it
//! as the destination, these backup ids and an unexpired time (P3).

use std::io::{Read, Write};
use std::time::Duration;

use zetaback::grant::{GrantSigner, H_GRANT, RestoreGrant};
use zetaback_e2e::fleet::{Fleet, HostSpec, create_dataset, destroy_pool, make_pool};
use zetaback_e2e::{Env, eventually};

/// A pool of the test's own, destroyed on drop (also when the test fails).
struct OwnPool(&'static Env, String);

impl Drop for OwnPool {
    fn drop(&mut self) {
        destroy_pool(self.0, &self.1);
    }
}

/// One HTTP/1.1 request to the agent at `addr`, `Connection: close`; (status, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    // The store may refuse before reading the body (and close): a failed write is fine.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Bytes that begin like a ZFS send stream (DRR_BEGIN with the magic, little-endian): what
/// the store checks of a body before it stores it.
fn stream_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    v.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    v.resize(n.max(16), 7);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_act_for_another_and_only_the_controller_deletes() {
    let env = Env::get();
    let ns = env.namespace("identity-hostile");
    // The backup host's replica root lives on a pool of this test's own.
    let rep_pool = format!("identityrep{}", std::process::id());
    make_pool(env, &rep_pool, "128M");
    let _rep_pool = OwnPool(env, rep_pool.clone());
    let root = format!("{rep_pool}/replicas");
    create_dataset(env, &root);
    let replica_arg = format!("--replica-root={root}");
    let fleet = Fleet::start(
        env,
        &ns,
        &[
            HostSpec::source("a"),
            HostSpec::source("b"),
            HostSpec::store("bak").args(&[&replica_arg, "--allow-receive-force"]),
        ],
    )
    .await;
    let bak = fleet.host("bak").endpoint();
    eventually(
        "the backup host's agent listens",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(&bak).ok().map(|_| ()) },
    )
    .await;
    let (a, b) = (fleet.name("a"), fleet.name("b"));
    let (token_a, token_b) = (fleet.agent_token("a"), fleet.agent_token("b"));
    let controller = fleet.controller_token();
    let store_b = fleet.store_root("bak").join(&b);
    let ds = "tank+db";
    let full = "1700000000.full";
    let snap = ("x-zetaback-snapshot", "zb-1700000000");

    // Host b's own agent stores a backup of b (the baseline: identities work at all).
    let path_b = format!("/v1/streams/{b}/{ds}/{full}");
    let (status, body) = request(
        &bak,
        "PUT",
        &path_b,
        Some(&token_b),
        &[snap],
        &stream_bytes(4096),
    );
    assert_eq!(status, 201, "b's agent storing b's stream: {body}");
    let stored = std::fs::read(store_b.join(ds).join(full)).expect("b's stream is stored");

    // Host a's agent cannot write b's streams: not a new one, not over the replica (a fresh
    // stream would abort a partial receive), not with force (a roll-back).
    let path_b2 = format!("/v1/streams/{b}/{ds}/1700000100.full");
    let snap2 = ("x-zetaback-snapshot", "zb-1700000100");
    let into = ("x-zetaback-receive-into", root.as_str());
    let force = ("x-zetaback-force", "true");
    for (what, headers) in [
        ("PUT b's stream", vec![snap2]),
        ("PUT into b's replica", vec![snap2, into]),
        ("PUT into b's replica with force", vec![snap2, into, force]),
    ] {
        let (status, body) = request(
            &bak,
            "PUT",
            &path_b2,
            Some(&token_a),
            &headers,
            &stream_bytes(4096),
        );
        assert_eq!(status, 403, "{what} as a's agent: {body}");
        assert!(
            body.contains(&format!("host {b}")),
            "{what}: the refusal names the host: {body}"
        );
    }
    assert!(
        !store_b.join(ds).join("1700000100.full").exists(),
        "a refused PUT stored nothing"
    );
    let replica_of_b = format!("{root}/{b}");
    let listed = std::process::Command::new("zfs")
        .args(["list", "-H", "-o", "name", &replica_of_b])
        .output()
        .expect("zfs list");
    assert!(
        !listed.status.success(),
        "a refused replica PUT created nothing: {}",
        String::from_utf8_lossy(&listed.stdout)
    );

    // ... nor read them.
    let (status, body) = request(&bak, "GET", &path_b, Some(&token_a), &[], b"");
    assert_eq!(status, 403, "GET b's stream as a's agent: {body}");
    let resume = format!("/v1/resume-token/{b}/{ds}?into={root}");
    let (status, body) = request(&bak, "GET", &resume, Some(&token_a), &[], b"");
    assert_eq!(status, 403, "b's resume token as a's agent: {body}");
    let (status, body) = request(
        &bak,
        "GET",
        &format!("/v1/catalogue?host={b}"),
        Some(&token_a),
        &[],
        b"",
    );
    assert_eq!(status, 403, "b's catalogue as a's agent: {body}");
    let (status, body) = request(&bak, "GET", "/v1/catalogue", Some(&token_a), &[], b"");
    assert_eq!(status, 403, "the whole catalogue as a's agent: {body}");
    // b reads its own.
    let (status, _) = request(&bak, "GET", &path_b, Some(&token_b), &[], b"");
    assert_eq!(status, 200, "b's agent reading b's stream");

    // Another host reads b's backups only through the controller's grant for a restore to it:
    // signed with the controller's key (published where the stores look), scoped to these
    // backup ids, this source and this destination, and unexpired.
    let signer = GrantSigner::generate().expect("key");
    zetaback::controller::grants::publish(&fleet.client, &ns, &signer)
        .await
        .expect("publish the grant key");
    let now = jiff::Timestamp::now().as_second();
    let grant = |destination: &str, id: &str, expires: i64| RestoreGrant {
        restore: format!("{ns}/to-a"),
        host: b.clone(),
        dataset: "tank/db".into(),
        ids: vec![id.to_owned()],
        destination: destination.to_owned(),
        expires,
    };
    let good = signer.sign(&grant(&a, full, now + 600)).expect("sign");
    let (status, body) = request(
        &bak,
        "GET",
        &path_b,
        Some(&token_a),
        &[(H_GRANT, &good)],
        b"",
    );
    assert_eq!(status, 200, "a's agent with a grant for a: {body}");
    let stranger = GrantSigner::generate().expect("key");
    for (what, bad) in [
        (
            "a grant for another destination",
            signer.sign(&grant(&b, full, now + 600)),
        ),
        (
            "a grant for other backups",
            signer.sign(&grant(&a, "1600000000.full", now + 600)),
        ),
        ("an expired grant", signer.sign(&grant(&a, full, now - 1))),
        (
            "a grant not signed by the controller",
            stranger.sign(&grant(&a, full, now + 600)),
        ),
    ] {
        let bad = bad.expect("sign");
        let (status, body) = request(
            &bak,
            "GET",
            &path_b,
            Some(&token_a),
            &[(H_GRANT, &bad)],
            b"",
        );
        assert_eq!(status, 403, "{what}: {body}");
    }
    // A grant is no identity: without a's token it is nothing.
    let (status, _) = request(&bak, "GET", &path_b, None, &[(H_GRANT, &good)], b"");
    assert_eq!(status, 401, "a grant without a token");

    // No source deletes or archives, not even the host's own; the controller does.
    for token in [&token_a, &token_b] {
        let (status, body) = request(&bak, "DELETE", &path_b, Some(token), &[], b"");
        assert_eq!(status, 403, "DELETE as a source: {body}");
        let (status, body) = request(
            &bak,
            "POST",
            &format!("/v1/archive/{b}/{ds}/{full}"),
            Some(token),
            &[],
            b"",
        );
        assert_eq!(status, 403, "archive as a source: {body}");
    }
    assert_eq!(
        std::fs::read(store_b.join(ds).join(full)).expect("still stored"),
        stored,
        "refused requests left b's backup as it was"
    );
    let (status, body) = request(&bak, "DELETE", &path_b, Some(&controller), &[], b"");
    assert_eq!(status, 204, "DELETE as the controller: {body}");
    assert!(
        !store_b.join(ds).join(full).exists(),
        "the controller deleted it"
    );

    // Tokens that are not a store caller's: another audience, and an agents' ServiceAccount
    // token bound to no pod (so to no node).
    for (what, token) in [
        (
            "a's token for the apiserver's audience",
            fleet.agent_token_for_audience("a", None).await,
        ),
        (
            "an agent token bound to no pod",
            fleet.unbound_agent_token().await,
        ),
    ] {
        let (status, body) = request(&bak, "GET", &path_b, Some(&token), &[], b"");
        assert_eq!(status, 401, "{what}: {body}");
    }

    fleet.shutdown().await;
    let _ = env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
