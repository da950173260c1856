//! Test harness: real nginx backends on loopback ports, each with its own
//! prefix, config, docroot and access log; the proxy runs in-process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use zetaback_proxy::{BackendConfig, ProxyConfig, ProxyHandle};

pub const NGINX: &str = "/usr/sbin/nginx";

/// Fail loudly (never skip) when nginx is missing.
pub fn require_nginx() {
    assert!(
        Path::new(NGINX).exists(),
        "nginx not found at {NGINX}: these tests need real nginx backends \
         (install it with `apt-get install nginx-light`)"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One nginx process serving a docroot.
pub struct Nginx {
    pub name: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Start nginx with `files` (path -> content) in its docroot and
    /// `extra` appended inside the `server` block.
    pub fn start(name: &str, files: &[(&str, &[u8])], extra: &str) -> Nginx {
        require_nginx();
        let dir = tempfile::tempdir().expect("tempdir");
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).expect("mkdir www");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir tmp");
        for (p, content) in files {
            write_file(&www, p, content);
        }
        Nginx::start_in(dir, name, extra, 0)
    }

    fn start_in(dir: tempfile::TempDir, name: &str, extra: &str, attempt: usize) -> Nginx {
        let port = free_port();
        let conf = config(dir.path(), port, name, extra);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
        let mut ng = Nginx {
            name: name.to_string(),
            port,
            dir,
            child: Some(child),
        };
        if ng.wait_listening() {
            return ng;
        }
        let log = std::fs::read_to_string(ng.dir.path().join("error.log")).unwrap_or_default();
        ng.kill();
        if attempt >= 4 {
            panic!("nginx {name} did not start on port {port}; error.log:\n{log}");
        }
        let dir = std::mem::replace(&mut ng.dir, tempfile::tempdir().expect("tempdir"));
        Nginx::start_in(dir, name, extra, attempt + 1)
    }

    fn wait_listening(&mut self) -> bool {
        for _ in 0..200 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn backend(&self) -> BackendConfig {
        BackendConfig {
            name: self.name.clone(),
            url: self.url(),
        }
    }

    /// Add a file to the docroot (an "upload" landing on this server).
    pub fn put_file(&self, path: &str, content: &[u8]) {
        write_file(&self.www(), path, content);
    }

    /// Access-log lines: "METHOD URI STATUS|xff|via|x-foo|host".
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Number of requests this nginx has logged.
    pub fn hits(&self) -> usize {
        self.log_lines().len()
    }

    /// Kill the process (a backend going down).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_file(root: &Path, p: &str, content: &[u8]) {
    let full = root.join(p.trim_start_matches('/'));
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).expect("mkdir docroot subdir");
    }
    std::fs::write(full, content).expect("write docroot file");
}

fn config(dir: &Path, port: u16, name: &str, extra: &str) -> String {
    let d = dir.display();
    let extra = extra.replace("@DIR@", &d.to_string());
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format t '$request_method $request_uri $status|$http_x_forwarded_for|$http_via|$http_x_foo|$host';
    access_log {d}/access.log t;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        add_header X-Backend {name} always;
        {extra}
    }}
}}
"#
    )
}

/// Wait (bounded) until the summed hit count of `ngs` reaches `at_least`,
/// then let the access logs settle briefly and return the final count.
pub async fn settled_hits(ngs: &[&Nginx], at_least: usize) -> usize {
    for _ in 0..100 {
        if ngs.iter().map(|n| n.hits()).sum::<usize>() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    ngs.iter().map(|n| n.hits()).sum()
}

/// Start the proxy in-process on ephemeral ports.
pub async fn start_proxy(mut cfg: ProxyConfig) -> ProxyHandle {
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.metrics_listen = "127.0.0.1:0".parse().expect("addr");
    zetaback_proxy::start(cfg).await.expect("proxy starts")
}

pub fn config_for(backends: &[&Nginx]) -> ProxyConfig {
    let mut cfg = ProxyConfig::with_backends(backends.iter().map(|n| n.backend()).collect());
    cfg.timeouts.connect = Duration::from_secs(1);
    cfg.timeouts.response_header = Duration::from_secs(5);
    cfg.timeouts.shutdown = Duration::from_secs(2);
    cfg
}

/// A simple HTTP client for the tests (keep-alive pooled).
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    pub base: SocketAddr,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

impl TestClient {
    pub fn new(base: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Self { client, base }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).expect("request");
        let resp = self.client.request(req).await.expect("proxy answered");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Send raw bytes on a fresh connection and return what comes back
    /// until the server closes or `timeout` passes.
    pub async fn raw(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.base)
            .await
            .expect("connect");
        // The server may answer and close before reading everything.
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).to_string()
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }
}

/// Per-backend hit counts by name.
pub fn hit_map(ngs: &[&Nginx]) -> HashMap<String, usize> {
    ngs.iter().map(|n| (n.name.clone(), n.hits())).collect()
}

/// Read one counter value from the Prometheus text.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}
