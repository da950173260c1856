//! The `zetaback-proxy` binary: config file, SIGHUP reload, SIGTERM exit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn yaml(
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    backends: &[&Nginx],
) -> String {
    let mut s = format!(
        "listen: {listen}\nmetricsListen: {metrics}\ncache:\n  notFoundTtl: 0s\ntimeouts:\n  shutdown: 2s\nbackends:\n"
    );
    for b in backends {
        s.push_str(&format!("  - name: {}\n    url: {}\n", b.name, b.url()));
    }
    s
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_reloads_on_sighup_and_exits_on_sigterm() {
    let a = Nginx::start("web1", &[("/a.txt", b"a")], "");
    let b = Nginx::start("web2", &[("/b.txt", b"b")], "");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("proxy.yaml");
    let (listen, metrics) = (free_addr(), free_addr());
    std::fs::write(&cfg_path, yaml(listen, metrics, &[&a])).expect("write config");

    let check = Command::new(env!("CARGO_BIN_EXE_zetaback-proxy"))
        .args(["--check", "--config"])
        .arg(&cfg_path)
        .output()
        .expect("run --check");
    assert!(check.status.success(), "{check:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_zetaback-proxy"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["--watch-interval", "0s", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start binary");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(listen).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "proxy binary did not start listening");

    let c = TestClient::new(listen);
    assert_eq!(c.get("/a.txt", &[]).await.text(), "a");
    assert_eq!(c.get("/b.txt", &[]).await.status, StatusCode::NOT_FOUND);

    std::fs::write(&cfg_path, yaml(listen, metrics, &[&a, &b])).expect("rewrite config");
    signal(child.id(), "HUP");
    let mut found = false;
    for _ in 0..100 {
        // the same keep-alive connection keeps being served during reload
        if c.get("/b.txt", &[]).await.status == StatusCode::OK {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found, "web2 not used after SIGHUP reload");

    let m = TestClient::new(metrics);
    assert_eq!(m.get("/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(m.get("/readyz", &[]).await.status, StatusCode::OK);
    let text = m.get("/metrics", &[]).await.text();
    assert!(
        text.contains("zetaback_proxy_config_reloads_total 1"),
        "{text}"
    );
    assert!(
        text.contains("zetaback_proxy_request_duration_seconds_bucket"),
        "{text}"
    );

    signal(child.id(), "TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let log = lines.join().expect("stderr reader");
    assert!(
        log.iter().any(|l| l.contains("configuration reloaded")),
        "{log:?}"
    );
}
