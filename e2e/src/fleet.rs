//! A fleet of simulated machines for end-to-end tests: each host is a real zfs-fuse pool
//! (`e2e/scripts/zfs.sh pool`), a `ZfsHost` object on the local apiserver and a real
//! `zetaback-agent` process serving it, which a test can kill (SIGKILL) and restart.
//! Optionally the controller runs in-process against the test's namespace.
//!
//! ```no_run
//! # async fn demo() {
//! use zetaback_e2e::{Env, fleet::{Fleet, HostSpec}};
//! let env = Env::get();
//! let ns = env.namespace("restore");
//! let mut fleet = Fleet::start(
//!     env,
//!     &ns,
//!     &[HostSpec::source("src"), HostSpec::store("bak"), HostSpec::source("dst")],
//! )
//! .await;
//! fleet.start_controller(|_options| {}).await;
//! let dataset = fleet.create_dataset("src", "data");
//! fleet.write_file(&dataset, "a.txt", b"hello");
//! let before = zetaback_e2e::fleet::sums(&zetaback_e2e::fleet::mounted(&dataset));
//! let (code, out) = fleet.zb(&["list", &fleet.admin_token_arg()]).await;
//! fleet.kill("dst");
//! fleet.restart("dst");
//! fleet.shutdown().await;
//! # }
//! ```
//!
//! Names never collide between concurrent tests: hosts are `<ns prefix>-<tag>-<short>` and
//! pools `<ns prefix><tag><short>`, where `tag` is derived from the (unique) namespace.
//! Dropping a `Fleet` (also on a failed assertion) kills its agents, stops its controller and
//! destroys its pools, keeping `/tmp/zetaback-e2e/<ns>` (agent logs, stores) for a look;
//! [`Fleet::shutdown`] does the same, deletes its ZfsHosts and removes that directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kube::api::{Api, PostParams};
use zetaback::api::restore::RestorePhase;
use zetaback::api::{BackupPolicy, Restore, ZfsHost, ZfsHostSpec};
use zetaback::controller::store_client::StoreClient;
use zetaback::store::StoredBackup;

use crate::{Env, eventually, free_port, identity, text};

/// The size of a host's pool unless its [`HostSpec`] says otherwise.
pub const DEFAULT_POOL_SIZE: &str = "256M";
/// How long the helpers here wait for a backup to be stored.
const BACKUP_LIMIT: Duration = Duration::from_secs(180);

/// One machine of a fleet, before it starts.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Short name, unique in the fleet (`src`, `bak`, ...): the key for [`Fleet::host`].
    pub short: String,
    /// Serve a file store (`--store-root <fleet dir>/store/<short>`).
    pub store: bool,
    /// Size of the pool's backing file (`zfs.sh pool NAME SIZE`).
    pub pool_size: String,
    /// Run with `--no-kube` (stream API only: no BackupJobs, no Restores, no ZfsHost status).
    pub no_kube: bool,
    /// Labels on the ZfsHost (besides `e2e=<namespace>`).
    pub labels: BTreeMap<String, String>,
    /// More agent arguments.
    pub extra_args: Vec<String>,
}

impl HostSpec {
    /// A host whose agent runs its BackupJobs and Restores (a source or a destination).
    pub fn source(short: &str) -> Self {
        Self {
            short: short.to_owned(),
            store: false,
            pool_size: DEFAULT_POOL_SIZE.to_owned(),
            no_kube: false,
            labels: BTreeMap::new(),
            extra_args: Vec::new(),
        }
    }

    /// A backup host: like [`HostSpec::source`], and its agent stores backups as files.
    pub fn store(short: &str) -> Self {
        Self {
            store: true,
            ..Self::source(short)
        }
    }

    /// The pool's size ([`DEFAULT_POOL_SIZE`] by default).
    pub fn pool_size(mut self, size: &str) -> Self {
        self.pool_size = size.to_owned();
        self
    }

    /// Adds agent arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Adds a label to the ZfsHost.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A running machine of a fleet.
#[derive(Debug)]
pub struct Host {
    /// The short name given in its [`HostSpec`].
    pub short: String,
    /// The ZfsHost's name (and the agent's `--host-name`, the store's `<host>` directory).
    pub name: String,
    /// Its zfs-fuse pool.
    pub pool: String,
    /// Where the pool is mounted.
    pub mount: PathBuf,
    /// The agent's stream API port on 127.0.0.1.
    pub port: u16,
    /// The store root, for a store host.
    pub store_root: Option<PathBuf>,
    /// The agent's log (stderr), appended to across restarts.
    pub log: PathBuf,
    /// The Pod (of the agents' ServiceAccount, on this host's Node object) its token is
    /// bound to: (name, uid).
    pub pod: (String, String),
    /// Its own token (TokenRequest, bound to the pod, audience `zetaback-store`).
    pub token_file: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Host {
    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn(&mut self, kubeconfig: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("agent log {}: {e}", self.log.display()));
        // The fleet's agents run without TLS, explicitly (TLS: agent/tests/hostile_tls.rs).
        let child = Command::new(agent_binary())
            .args(&self.args)
            .env("ZETABACK_INSECURE_PLAINTEXT", "true")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,zetaback_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("agent {} does not start: {e}", self.name));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// Real pools, real agents, and optionally the controller, for one test namespace.
pub struct Fleet {
    pub env: &'static Env,
    /// The test's namespace (BackupPolicies, BackupJobs, Restores live here).
    pub ns: String,
    /// An admin client.
    pub client: kube::Client,
    /// `/tmp/zetaback-e2e/<ns>`: tokens, stores, agent logs.
    pub dir: PathBuf,
    /// The controller's token for the stores (its ServiceAccount's, audience `zetaback-store`).
    pub controller_token: String,
    /// A catalogue reader's token file (`--token-file` of store-reading CLI commands).
    pub admin_token_file: PathBuf,
    /// The number that makes this fleet's host and pool names unique.
    pub tag: u32,
    hosts: Vec<Host>,
    controller: Option<crate::controller::InProcessController>,
}

impl Fleet {
    /// Creates the pools, the ZfsHosts (replacing leftovers of the same name) and starts one
    /// agent per host. ZfsHosts select every dataset of their pool (`<pool>/**`).
    pub async fn start(env: &'static Env, ns: &str, specs: &[HostSpec]) -> Fleet {
        let client = env.client().await;
        let dir = PathBuf::from(format!("/tmp/zetaback-e2e/{ns}"));
        std::fs::create_dir_all(&dir).expect("fleet dir");
        // Every caller of the stores has its own identity, issued by the apiserver.
        identity::service_accounts(&client, ns).await;
        let controller_token = identity::mint(
            &client,
            ns,
            identity::CONTROLLER_SA,
            Some(identity::AUDIENCE),
            None,
        )
        .await;
        let admin_token_file = dir.join("reader.token");
        let reader = identity::mint(
            &client,
            ns,
            identity::READER_SA,
            Some(identity::AUDIENCE),
            None,
        )
        .await;
        std::fs::write(&admin_token_file, reader).expect("reader token");
        let prefix: String = ns
            .split('-')
            .next()
            .unwrap_or("fleet")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let tag = fnv(ns) % 1_000_000;
        let mut fleet = Fleet {
            env,
            ns: ns.to_owned(),
            client: client.clone(),
            dir: dir.clone(),
            controller_token,
            admin_token_file: admin_token_file.clone(),
            tag,
            hosts: Vec::new(),
            controller: None,
        };
        let api: Api<ZfsHost> = Api::all(client);
        for spec in specs {
            assert!(
                fleet.hosts.iter().all(|h| h.short != spec.short),
                "two hosts named {}",
                spec.short
            );
            let name = format!("{prefix}-{tag}-{}", spec.short);
            let pool = format!("{prefix}{tag}{}", spec.short);
            let mount = make_pool(env, &pool, &spec.pool_size);

            let mut host = ZfsHost::new(
                &name,
                ZfsHostSpec {
                    node_name: name.clone(),
                    datasets: serde_json::from_value(
                        serde_json::json!({"include": [format!("{pool}/**")]}),
                    )
                    .expect("selector"),
                    paused: false,
                    allowed_namespaces: Vec::new(),
                    // Restores land anywhere in the host's own pool.
                    restore_roots: vec![pool.as_str().into()],
                },
            );
            let mut labels = spec.labels.clone();
            labels.insert("e2e".into(), ns.to_owned());
            host.metadata.labels = Some(labels);
            let _ = api.delete(&name, &Default::default()).await;
            eventually("old host gone", Duration::from_secs(20), || async {
                api.get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            })
            .await;
            api.create(&PostParams::default(), &host)
                .await
                .expect("create ZfsHost");

            // The host's node, the agent's pod on it, and the agent's own token bound to the
            // pod (so the apiserver's TokenReview names the node).
            identity::node(&fleet.client, &name, ns).await;
            let pod_name = format!("agent-{}", spec.short);
            let uid = identity::agent_pod(&fleet.client, ns, &pod_name, &name).await;
            let token = identity::mint(
                &fleet.client,
                ns,
                identity::AGENT_SA,
                Some(identity::AUDIENCE),
                Some((&pod_name, &uid)),
            )
            .await;
            let token_file = dir.join(format!("{}.token", spec.short));
            std::fs::write(&token_file, token).expect("agent token");

            let port = free_port();
            let mut args = vec![
                format!("--host-name={name}"),
                format!("--node-name={name}"),
                format!("--listen=127.0.0.1:{port}"),
                "--status-interval=1".into(),
                "--last-seen-every=2".into(),
            ];
            let store_root = spec.store.then(|| dir.join("store").join(&spec.short));
            if let Some(root) = &store_root {
                std::fs::create_dir_all(root).expect("store root");
                args.push(format!("--store-root={}", root.display()));
            }
            if spec.no_kube {
                // Without Kubernetes the store knows its callers from a table: the
                // controller's token and the reader's (catalogues), nothing else.
                let ids = dir.join(format!("{}.identities.json", spec.short));
                let reader = std::fs::read_to_string(&admin_token_file).expect("reader token");
                std::fs::write(
                    &ids,
                    serde_json::json!([
                        {"token": fleet.controller_token, "role": "controller"},
                        {"token": reader.trim(), "role": "reader"},
                    ])
                    .to_string(),
                )
                .expect("identities file");
                args.push("--no-kube".into());
                args.push(format!("--identities-file={}", ids.display()));
            } else {
                args.push(format!("--token-file={}", token_file.display()));
                args.extend(identity::store_args(ns));
            }
            args.extend(spec.extra_args.iter().cloned());
            let mut host = Host {
                short: spec.short.clone(),
                name,
                pool,
                mount,
                port,
                store_root,
                log: dir.join(format!("{}.log", spec.short)),
                pod: (pod_name, uid),
                token_file,
                args,
                child: None,
            };
            host.spawn(&env.kubeconfig);
            fleet.hosts.push(host);
        }
        fleet
    }

    /// The fleet of the restore tests, in a new namespace `<namespace_prefix>-<unique>`: a
    /// source host `src`, a backup host `bak` storing files and a destination host `dst`
    /// (source and destination with pools of `pool_size`, e.g. [`DEFAULT_POOL_SIZE`]), and
    /// the controller running.
    pub async fn source_store_dest(
        env: &'static Env,
        namespace_prefix: &str,
        pool_size: &str,
    ) -> Fleet {
        let ns = env.namespace(namespace_prefix);
        let mut fleet = Fleet::start(
            env,
            &ns,
            &[
                HostSpec::source("src").pool_size(pool_size),
                HostSpec::store("bak"),
                HostSpec::source("dst").pool_size(pool_size),
            ],
        )
        .await;
        fleet.start_controller(|_| {}).await;
        fleet
    }

    /// The host with this short name (panics if there is none).
    pub fn host(&self, short: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.short == short)
            .unwrap_or_else(|| panic!("no host {short} in the fleet"))
    }

    fn host_mut(&mut self, short: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.short == short)
            .unwrap_or_else(|| panic!("no host {short} in the fleet"))
    }

    /// Every host, in the order given to [`Fleet::start`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The ZfsHost name of a host.
    pub fn name(&self, short: &str) -> String {
        self.host(short).name.clone()
    }

    /// The store root of a store host (panics for another host).
    pub fn store_root(&self, short: &str) -> PathBuf {
        self.host(short)
            .store_root
            .clone()
            .unwrap_or_else(|| panic!("{short} is not a store host"))
    }

    /// A client of the stores' API with the controller's token.
    pub fn store_client(&self) -> StoreClient {
        StoreClient::new(Some(self.controller_token.clone()))
    }

    /// Host `short`'s agent's own token.
    pub fn agent_token(&self, short: &str) -> String {
        std::fs::read_to_string(&self.host(short).token_file)
            .expect("agent token")
            .trim()
            .to_owned()
    }

    /// The controller's token for the stores.
    pub fn controller_token(&self) -> String {
        self.controller_token.clone()
    }

    /// A token of host `short`'s agent pod for another audience (None: the apiserver's).
    pub async fn agent_token_for_audience(&self, short: &str, audience: Option<&str>) -> String {
        let (pod, uid) = &self.host(short).pod;
        identity::mint(
            &self.client,
            &self.ns,
            identity::AGENT_SA,
            audience,
            Some((pod, uid)),
        )
        .await
    }

    /// A token of the agents' ServiceAccount for the stores' audience, bound to no pod (so
    /// naming no node).
    pub async fn unbound_agent_token(&self) -> String {
        identity::mint(
            &self.client,
            &self.ns,
            identity::AGENT_SA,
            Some(identity::AUDIENCE),
            None,
        )
        .await
    }

    /// `--token-file=<a catalogue reader's token>`, for CLI commands that read the store.
    pub fn admin_token_arg(&self) -> String {
        format!("--token-file={}", self.admin_token_file.display())
    }

    /// SIGKILLs a host's agent (no clean shutdown: what a crash or an OOM kill does).
    pub fn kill(&mut self, short: &str) {
        self.host_mut(short).kill();
    }

    /// Starts a host's agent again with the same arguments and port (killing it first if it
    /// runs).
    pub fn restart(&mut self, short: &str) {
        let kubeconfig = self.env.kubeconfig.clone();
        let host = self.host_mut(short);
        host.kill();
        host.spawn(&kubeconfig);
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to a host's running agent.
    pub fn signal(&self, short: &str, signal: &str) {
        let pid = self
            .host(short)
            .pid()
            .unwrap_or_else(|| panic!("the agent of {short} does not run"));
        run("kill", &[&format!("-{signal}"), &pid.to_string()]);
    }

    /// Freezes a host's agent (SIGSTOP): its connections stay open but nothing moves, as
    /// on a machine that hangs. [`Fleet::resume`] undoes it.
    pub fn pause(&self, short: &str) {
        self.signal(short, "STOP");
    }

    /// Lets a paused agent run again (SIGCONT).
    pub fn resume(&self, short: &str) {
        self.signal(short, "CONT");
    }

    /// Runs the controller in-process, watching only this namespace, with the admin store
    /// token; `configure` may change the options further (e.g. `host_stale_after`).
    pub async fn start_controller(
        &mut self,
        configure: impl FnOnce(&mut zetaback::controller::Options),
    ) {
        assert!(self.controller.is_none(), "the controller already runs");
        let mut options = zetaback::controller::Options::new(
            &self.ns,
            "fleet",
            ([127, 0, 0, 1], free_port()).into(),
        );
        options.watch_namespace = Some(self.ns.clone());
        options.store_token = Some(self.controller_token.clone());
        configure(&mut options);
        self.controller = Some(crate::controller::InProcessController::start(
            self.client.clone(),
            options,
        ));
    }

    /// The port of the in-process controller's `/metrics`, if it runs.
    pub fn controller_port(&self) -> Option<u16> {
        self.controller.as_ref().map(|c| c.port)
    }

    /// Stops the in-process controller (waits for it to end).
    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            let _ = c.stop().await;
        }
    }

    /// Creates `<pool of host>/<relative>` (and missing parents) and returns its full name.
    pub fn create_dataset(&self, short: &str, relative: &str) -> String {
        let ds = format!("{}/{relative}", self.host(short).pool);
        create_dataset(self.env, &ds);
        ds
    }

    /// Waits (up to 60 s) until the host's agent reports these datasets in its ZfsHost
    /// status (what the controller selects datasets from).
    pub async fn wait_for_datasets(&self, short: &str, datasets: &[&str]) {
        let api: Api<ZfsHost> = Api::all(self.client.clone());
        let name = self.name(short);
        eventually(
            &format!("{name} reports {datasets:?}"),
            Duration::from_secs(60),
            || async {
                let st = api.get(&name).await.ok()?.status?;
                datasets
                    .iter()
                    .all(|d| st.datasets.iter().any(|s| s.name == *d))
                    .then_some(())
            },
        )
        .await;
    }

    /// A BackupPolicy spec (JSON, for a test to change further) that backs up the datasets
    /// matching `include` of host `source` to the files of store host `store`: a full every
    /// 24 h (so the first is due at once), an incremental every 12 h (so in a test only when
    /// requested, see [`Fleet::backup_incremental_now`]), each kept 48 h.
    pub fn policy_spec(&self, source: &str, store: &str, include: &str) -> serde_json::Value {
        serde_json::json!({
            "hosts": {"names": [self.name(source)]},
            "datasets": {"include": [include]},
            "full": {"every": "24h", "keep": "48h"},
            "incremental": {"every": "12h", "keep": "48h"},
            "target": {"host": self.name(store), "path": self.store_root(store).display().to_string()},
        })
    }

    /// Creates BackupPolicy `name` from its `spec` (JSON) in the namespace, once host
    /// `source` reports `datasets`: a policy selects datasets from the ZfsHost status and is
    /// not triggered by its changes, so created earlier it would wait for its requeue.
    pub async fn create_policy(
        &self,
        name: &str,
        source: &str,
        datasets: &[&str],
        spec: serde_json::Value,
    ) {
        self.wait_for_datasets(source, datasets).await;
        let spec = serde_json::from_value(spec).expect("policy spec");
        Api::<BackupPolicy>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &BackupPolicy::new(name, spec))
            .await
            .expect("create policy");
    }

    /// `kubectl zetaback backup POLICY --host <source> --dataset DATASET --incremental`: an
    /// incremental now (panics unless the command exits 0).
    pub async fn backup_incremental_now(&self, policy: &str, source: &str, dataset: &str) {
        let host = self.name(source);
        let (code, out) = self
            .zb(&[
                "backup",
                policy,
                "--host",
                &host,
                "--dataset",
                dataset,
                "--incremental",
            ])
            .await;
        assert_eq!(
            code, 0,
            "backup {policy} --host {host} --dataset {dataset}: {out}"
        );
    }

    /// The backups of host `source`'s `dataset` that store host `store` lists, oldest
    /// first; `None` while the store does not answer.
    pub async fn stored_backups(
        &self,
        store: &str,
        source: &str,
        dataset: &str,
    ) -> Option<Vec<StoredBackup>> {
        let host = self.name(source);
        let catalogue = self
            .store_client()
            .catalogue(&self.host(store).endpoint(), &host)
            .await
            .ok()?;
        Some(catalogue.of(&host, dataset).cloned().collect())
    }

    /// Waits (up to 180 s) until store host `store` lists at least `n` backups of host
    /// `source`'s `dataset`, and returns them, oldest first.
    pub async fn wait_for_backups(
        &self,
        store: &str,
        source: &str,
        dataset: &str,
        n: usize,
    ) -> Vec<StoredBackup> {
        eventually(
            &format!("{n} backup(s) of {source}:{dataset} stored on {store}"),
            BACKUP_LIMIT,
            move || async move {
                self.stored_backups(store, source, dataset)
                    .await
                    .filter(|b| b.len() >= n)
            },
        )
        .await
    }

    /// A full and two incrementals of a new dataset `<src pool>/data`, stored on `bak` by a
    /// chained BackupPolicy named `chained` (`incremental.against: previous`) with this
    /// `compression`. `write_version(dataset, v)` writes version `v` of the files before each:
    /// 1 before the full (due at once), 2 and 3 before the incrementals (asked for through the
    /// CLI, at least 2 s apart, so every backup has its own second and a time between two of
    /// them names neither).
    pub async fn chained_backups(
        &self,
        compression: &str,
        write_version: impl Fn(&str, u32),
    ) -> Chain {
        let dataset = self.create_dataset("src", "data");
        write_version(&dataset, 1);
        let mut spec = self.policy_spec("src", "bak", "*/data");
        spec["incremental"]["against"] = "previous".into();
        spec["compression"] = compression.into();
        self.create_policy("chained", "src", &[&dataset], spec)
            .await;
        let data = mounted(&dataset);
        self.wait_for_backups("bak", "src", &dataset, 1).await;
        let mut originals = vec![sums(&data)];
        for v in 2..=3u32 {
            tokio::time::sleep(Duration::from_millis(2100)).await;
            write_version(&dataset, v);
            self.backup_incremental_now("chained", "src", &dataset)
                .await;
            self.wait_for_backups("bak", "src", &dataset, v as usize)
                .await;
            originals.push(sums(&data));
        }
        let backups = self.wait_for_backups("bak", "src", &dataset, 3).await;
        let ids: Vec<String> = backups.iter().map(|b| b.manifest.id.clone()).collect();
        println!("stored backups of {}:{dataset}: {ids:?}", self.name("src"));
        assert_eq!(ids.len(), 3, "{ids:?}");
        Chain {
            dataset,
            backups,
            ids,
            originals,
        }
    }

    /// `kubectl zetaback restore ARGS --to TO --name NAME --wait`, printed with its output;
    /// (exit code, output).
    pub async fn restore_with_cli(&self, name: &str, args: &[&str], to: &str) -> (u8, String) {
        let mut argv = vec!["restore"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--to", to, "--name", name, "--wait"]);
        let (code, out) = self.zb(&argv).await;
        println!("kubectl zetaback {} (exit {code}):\n{out}", argv.join(" "));
        (code, out)
    }

    /// Writes `contents` to `file` (relative) in a mounted dataset, creating directories.
    pub fn write_file(&self, dataset: &str, file: &str, contents: &[u8]) {
        let path = mounted(dataset).join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Runs `kubectl zetaback ARGS` in-process against the namespace: (exit code, stdout).
    pub async fn zb(&self, args: &[&str]) -> (u8, String) {
        zb(&self.client, &self.ns, args).await
    }

    /// Stops the controller, kills the agents, deletes the ZfsHosts, destroys the pools and
    /// removes the fleet directory.
    pub async fn shutdown(mut self) {
        self.stop_controller().await;
        for h in &mut self.hosts {
            h.kill();
        }
        let api: Api<ZfsHost> = Api::all(self.client.clone());
        for h in &self.hosts {
            let _ = api.delete(&h.name, &Default::default()).await;
            identity::delete_pod(&self.client, &self.ns, &h.pod.0).await;
            identity::delete_node(&self.client, &h.name).await;
        }
        // The stores and logs of a run that got here are not needed (a failed run keeps
        // them: Drop leaves the directory). Drop destroys the pools.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Dropping the controller stops it.
        self.controller.take();
        for h in &mut self.hosts {
            h.kill();
        }
        for h in &self.hosts {
            destroy_pool(self.env, &h.pool);
            // The host's Node object (cluster-scoped; the namespace's deletion does not take
            // it) and the agent's Pod at once (no kubelet finishes a graceful deletion, which
            // would hold the namespace); already gone after `shutdown`.
            let _ = self.env.kubectl(&[
                "delete",
                "pod",
                &h.pod.0,
                "-n",
                &self.ns,
                "--grace-period=0",
                "--force",
                "--wait=false",
                "--ignore-not-found",
            ]);
            let _ = self.env.kubectl(&[
                "delete",
                "node",
                &h.name,
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
    }
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `target/<profile>/zetaback-agent`, next to the test binary's `deps/` (panics if missing).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("zetaback-agent"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as e2e/test.sh does)",
        bin.display()
    );
    bin
}

/// Runs `e2e/scripts/zfs.sh args…`, which must succeed; its output, trimmed.
fn zfs_sh(env: &Env, args: &[&str]) -> String {
    let out = Command::new(env.root.join("e2e/scripts/zfs.sh"))
        .args(args)
        .output()
        .expect("zfs.sh");
    assert!(
        out.status.success(),
        "zfs.sh {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// Creates a fresh file-backed pool (destroying a leftover of that name); its mountpoint.
pub fn make_pool(env: &Env, name: &str, size: &str) -> PathBuf {
    destroy_pool(env, name);
    PathBuf::from(zfs_sh(env, &["pool", name, size]))
}

/// `zfs create -p name` through `zfs.sh dataset`: creations (each mounts a file system) go one
/// at a time, since zfs-fuse has hung when two ran at once, and a hung one fails after 120 s.
pub fn create_dataset(env: &Env, name: &str) {
    zfs_sh(env, &["dataset", name]);
}

/// Destroys a pool and then its backing file with `zfs.sh destroy`, which retries while
/// zfs-fuse calls the pool busy (it often does for a moment after its datasets were used) and
/// keeps the file of a pool it could not destroy (a pool whose file is gone keeps its space
/// held by the daemon). A failure is printed, not raised: this runs when a fleet is dropped.
pub fn destroy_pool(env: &Env, name: &str) {
    match Command::new(env.root.join("e2e/scripts/zfs.sh"))
        .args(["destroy", name])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("zfs.sh destroy {name}: {}", text(&out.stderr)),
        Err(e) => eprintln!("cannot run zfs.sh destroy {name}: {e}"),
    }
}

/// Runs `cmd args` (argv, no shell) and returns its stdout; panics with its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = run_output(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `cmd args` and returns its output, whatever its exit status.
pub fn run_output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// `zfs ARGS`; its stdout (panics on failure).
pub fn zfs(args: &[&str]) -> String {
    run("zfs", args)
}

/// Whether a dataset (or snapshot) exists.
pub fn dataset_exists(ds: &str) -> bool {
    run_output("zfs", &["list", "-H", "-o", "name", ds])
        .status
        .success()
}

/// Where a dataset is mounted (mounting it if needed).
pub fn mounted(ds: &str) -> PathBuf {
    if zfs(&["get", "-H", "-o", "value", "mounted", ds]).trim() != "yes" {
        zfs(&["mount", ds]);
    }
    PathBuf::from(zfs(&["get", "-H", "-o", "value", "mountpoint", ds]).trim())
}

/// `sha256sum` of every file under `dir`, by relative path, sorted (`<sum>  ./<path>` lines).
/// Panics if there is no file: comparing two empty trees proves nothing.
pub fn sums(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -type f | LC_ALL=C sort | xargs -r sha256sum")
        .arg("sh")
        .arg(dir)
        .output()
        .expect("sha256sum");
    assert!(
        out.status.success(),
        "sums of {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    let s = text(&out.stdout);
    assert!(!s.trim().is_empty(), "no files under {}", dir.display());
    s
}

/// `len` incompressible bytes (xorshift64) from `seed`.
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `kubectl zetaback ARGS` in-process with `client` in namespace `ns`; (exit code,
/// stdout). Its stderr goes to the test's stderr.
pub async fn zb(client: &kube::Client, ns: &str, args: &[&str]) -> (u8, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input: &[u8] = b"";
    let mut io = zetaback::cli::Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive: false,
    };
    let argv: Vec<String> = std::iter::once("kubectl-zetaback")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let code = zetaback::cli::run(
        argv,
        zetaback::cli::Connect::Client {
            client: client.clone(),
            namespace: ns.to_owned(),
        },
        &mut io,
    )
    .await;
    eprint!("{}", text(&err));
    (code, text(&out))
}

/// A chain of backups made by [`Fleet::chained_backups`].
#[derive(Debug, Clone)]
pub struct Chain {
    /// The backed-up dataset (on host `src`).
    pub dataset: String,
    /// The stored backups, oldest first: the full, then the incrementals.
    pub backups: Vec<StoredBackup>,
    /// Their ids, in the same order.
    pub ids: Vec<String>,
    /// [`sums`] of the dataset's files when each backup was stored (zfs-fuse has no
    /// `.zfs/snapshot` directory to read them back from later).
    pub originals: Vec<String>,
}

/// Creates a Restore from its spec as JSON.
pub async fn create_restore(api: &Api<Restore>, name: &str, spec: serde_json::Value) {
    let r = Restore::new(name, serde_json::from_value(spec).expect("restore spec"));
    api.create(&PostParams::default(), &r)
        .await
        .expect("create restore");
}

/// Waits (up to `limit`) for a Restore to end (Succeeded or Failed), prints a summary line
/// and returns it.
pub async fn restore_finished(api: &Api<Restore>, name: &str, limit: Duration) -> Restore {
    let r = eventually(&format!("restore {name} ends"), limit, || async {
        let r = api.get(name).await.ok()?;
        let phase = r.status.as_ref()?.phase;
        matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed).then_some(r)
    })
    .await;
    let st = r.status.clone().unwrap_or_default();
    println!(
        "restore {name}: phase={:?} verified={:?} chain={:?} bytes={:?} bytesDone={:?} reason={:?}\n  message: {}",
        st.phase,
        st.verified,
        st.chain,
        st.bytes,
        st.bytes_done,
        st.conditions.first().map(|c| c.reason.clone()),
        st.message.unwrap_or_default()
    );
    r
}

/// The reason of a Restore's `Ready` condition ("" if none).
pub fn restore_reason(r: &Restore) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// Flips the bits of `mask` in the byte at `at` of a stored file, in place (same size: only a
/// checksum can tell), and syncs it: a stored stream corrupted on the store's own disk.
pub fn flip_byte(path: &Path, at: u64, mask: u8) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut byte).expect("read");
    byte[0] ^= mask;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&byte).expect("write");
    f.sync_all().expect("sync");
}
