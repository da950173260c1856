//! The end-to-end harness: brings up the local control plane (`e2e/scripts/env.sh up`: etcd,
//! kube-apiserver, kube-controller-manager built from their Go modules, and zfs-fuse) once per
//! test binary, and gives tests a client, `kubectl`, `helm` and a fresh namespace each.
//!
//! Nothing here is a fake: when a part is missing, `Env::get` panics with the reason, so the
//! test fails loudly instead of passing without having run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod bucket;
pub mod controller;
pub mod events;
pub mod fleet;
pub mod identity;
pub mod openzfs_vm;
pub mod relay;
pub mod stub_store;

/// The running environment.
pub struct Env {
    pub root: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();

impl Env {
    /// Starts the environment (idempotent) and returns it; panics if it cannot start.
    pub fn get() -> &'static Env {
        ENV.get_or_init(|| match Self::start() {
            Ok(env) => env,
            Err(e) => panic!("the local control plane could not start: {e:#}"),
        })
    }

    fn start() -> anyhow::Result<Env> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("e2e has a parent")?
            .to_path_buf();
        let script = root.join("e2e/scripts/env.sh");
        let up = Command::new(&script).arg("up").output()?;
        if !up.status.success() {
            bail!("env.sh up failed: {}", String::from_utf8_lossy(&up.stderr));
        }
        let kubeconfig = PathBuf::from(String::from_utf8(up.stdout)?.trim());
        let bin = Command::new(&script).arg("bin").output()?;
        let bin = PathBuf::from(String::from_utf8(bin.stdout)?.trim());
        Ok(Env {
            root,
            kubeconfig,
            bin,
        })
    }

    /// Runs `kubectl` against the environment as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.tool("kubectl", args, None)
    }

    /// Runs `kubectl` with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.tool("kubectl", args, Some(stdin))
    }

    /// Runs `helm` against the environment.
    pub fn helm(&self, args: &[&str]) -> Output {
        self.tool("helm", args, None)
    }

    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", "/tmp/zetaback-e2e/helm/cache")
            .env("HELM_CONFIG_HOME", "/tmp/zetaback-e2e/helm/config")
            .env("HELM_DATA_HOME", "/tmp/zetaback-e2e/helm/data")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        if let Some(text) = stdin {
            if let Some(mut input) = child.stdin.take() {
                input
                    .write_all(text.as_bytes())
                    .unwrap_or_else(|e| panic!("writing to {name}: {e}"));
            }
        } else {
            drop(child.stdin.take());
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {name}: {e}"))
    }

    /// A client with the admin identity.
    pub async fn client(&self) -> kube::Client {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig readable"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig valid");
        kube::Client::try_from(config).expect("client")
    }

    /// A client authenticating with a bearer token (e.g. a ServiceAccount's).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig readable"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig valid");
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        };
        kube::Client::try_from(config).expect("client")
    }

    /// Creates a namespace named `prefix-<unique>` and returns its name.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_millisecond() % 1_000_000
        );
        let out = self.kubectl(&["create", "namespace", &name]);
        assert!(
            out.status.success(),
            "create namespace: {}",
            text(&out.stderr)
        );
        name
    }
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET `http://127.0.0.1:port/path` and return the body (tiny HTTP/1.0 client for metrics).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let (head, body) = buf.split_once("\r\n\r\n").context("an HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_owned())
}

/// The value of the Prometheus sample whose line starts with `series` (name and labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
