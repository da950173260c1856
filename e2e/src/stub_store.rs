//! A stand-in for a backup host's agent store API and helpers to make ZfsHosts that report
//! what a test says, for the controller tests that check the controller alone (no ZFS).

use kube::api::{Api, Patch, PatchParams, PostParams};

/// A stand-in for the backup host's agent store API (the controller's side of the contract:
/// `GET /v1/catalogue[?host=H]` with a bearer token, `ETag`, 304 on `If-None-Match`), served
/// from memory so that this test can check the controller alone. The real agent's handler is
/// tested in `agent/` and end to end in `backup_flow.rs`.
pub struct StubStore {
    pub backups: std::sync::Mutex<Vec<zetaback::store::StoredBackup>>,
    pub whole_reads: std::sync::atomic::AtomicU64,
    pub host_reads: std::sync::atomic::AtomicU64,
    pub not_modified: std::sync::atomic::AtomicU64,
}

impl StubStore {
    fn body(&self, host: Option<&str>) -> Vec<u8> {
        let backups = self.backups.lock().expect("lock");
        let cat = zetaback::store::Catalogue {
            backups: backups
                .iter()
                .filter(|b| host.is_none_or(|h| b.manifest.host == h))
                .cloned()
                .collect(),
            problems: Vec::new(),
        };
        serde_json::to_vec(&cat).expect("json")
    }

    pub async fn serve(self: std::sync::Arc<Self>, listener: tokio::net::TcpListener) {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_owned())
                };
                let reply = if header("authorization").as_deref() != Some("Bearer admin-token") {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .as_bytes()
                        .to_vec()
                } else {
                    let host = path.split_once("?host=").map(|(_, h)| h.to_owned());
                    match host {
                        Some(_) => me.host_reads.fetch_add(1, Relaxed),
                        None => me.whole_reads.fetch_add(1, Relaxed),
                    };
                    let body = me.body(host.as_deref());
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    body.hash(&mut h);
                    let etag = format!("\"{:016x}\"", h.finish());
                    if header("if-none-match").as_deref() == Some(etag.as_str()) {
                        me.not_modified.fetch_add(1, Relaxed);
                        format!(
                            "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes()
                    } else {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                };
                let _ = sock.write_all(&reply).await;
                let _ = sock.shutdown().await;
            });
        }
    }
}

/// Creates ZfsHosts `names` (cluster-scoped) and reports `status` for each.
pub async fn hosts_with_status(
    hosts: &Api<zetaback::api::ZfsHost>,
    reports: &[(&str, serde_json::Value)],
) {
    for (name, status) in reports {
        let host: zetaback::api::ZfsHost = serde_json::from_value(serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost",
            "metadata": {"name": name}, "spec": {"nodeName": name}
        }))
        .expect("host");
        hosts
            .create(&PostParams::default(), &host)
            .await
            .expect("create host");
        hosts
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .expect("host status");
    }
}

/// A stand-in store serving on a free loopback port: the store, its endpoint (`host:port`)
/// and the serving task.
pub async fn start_stub_store() -> (
    std::sync::Arc<StubStore>,
    String,
    tokio::task::JoinHandle<()>,
) {
    let stub = std::sync::Arc::new(StubStore {
        backups: Default::default(),
        whole_reads: Default::default(),
        host_reads: Default::default(),
        not_modified: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    let server = tokio::spawn(stub.clone().serve(listener));
    (stub, endpoint, server)
}

/// Deletes the test's ZfsHosts (cluster-scoped, so the namespace's deletion leaves them).
pub async fn delete_hosts(hosts: &Api<zetaback::api::ZfsHost>, names: &[&String]) {
    for name in names {
        let _ = hosts.delete(name, &Default::default()).await;
    }
}
