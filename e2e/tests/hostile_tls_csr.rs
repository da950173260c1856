//! Certificates through the CertificateSigningRequest API (issue 13, Build 4), on the real
//! apiserver with the chart's own RBAC: the controller's side (the CA kept in a Secret, the
//! release's signer `zetaback.io/<namespace>.<release>`) runs as the controller's
//! ServiceAccount, agents ask with tokens bound to a Pod on their Node (no kubelet: the objects
//! are what a token is bound to).
//!
//! - node A's agent gets a certificate naming node A, from the CA the controller published, and
//!   a client that means node A completes a mutual TLS handshake with it (one that means node
//!   B does not);
//! - node A's identity asking for node B's name is denied, and so are the agents'
//!   ServiceAccount without a node, and another ServiceAccount;
//! - two releases (two namespaces, two controllers signing at once) each sign only their own
//!   agents, through their own signer name, and leave the other's requests alone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use zetaback::controller::csr_signer::SignerConfig;
use zetaback::peer_tls::csr_policy::{release_signer_name, service_account_username};
use zetaback::peer_tls::issue::PeerKey;
use zetaback::peer_tls::{PeerIdentity, PeerTls};
use zetaback_agent::csr_client::{self, CsrError, CsrSettings};
use zetaback_e2e::{Env, eventually, text};

fn render(env: &Env, release: &str, ns: &str) -> String {
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        release,
        &chart.to_string_lossy(),
        "--namespace",
        ns,
        "--kube-version",
        "1.37.2",
    ]);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
}

fn apply(env: &Env, yaml: &str) {
    let out = env.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
}

fn token(env: &Env, ns: &str, sa: &str, pod: Option<&str>) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns];
    if let Some(pod) = pod {
        args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
    }
    let out = env.kubectl(&args);
    assert!(out.status.success(), "create token: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Cluster-scoped objects of the test (and its CertificateSigningRequests), deleted also when
/// it fails.
struct Cleanup<'a> {
    env: &'a Env,
    ns: String,
    nodes: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let label = format!("app.kubernetes.io/instance={}", self.ns);
        self.env.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            &label,
            "--ignore-not-found",
        ]);
        let csrs = self.env.kubectl(&["get", "csr", "-o", "name"]);
        for csr in text(&csrs.stdout).lines() {
            if csr.contains(&self.ns) {
                self.env.kubectl(&["delete", csr, "--ignore-not-found"]);
            }
        }
        for node in &self.nodes {
            self.env
                .kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=false"]);
        }
        self.env
            .kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

/// One mutual TLS handshake on loopback: `server` serves, `client` means to reach `meant`.
/// Ok with the name the server's certificate gave, or the client's error.
fn handshake(server: &PeerTls, client: &PeerTls, meant: &PeerIdentity) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server_config = server.server_config().map_err(|e| e.to_string())?;
    let served = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let conn = rustls::ServerConnection::new(server_config).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).ok()?;
        tls.write_all(&byte).ok()?;
        tls.flush().ok()
    });
    let config = client.client_config(meant).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let result = tls
        .write_all(b"x")
        .and_then(|_| tls.flush())
        .and_then(|_| {
            let mut back = [0u8; 1];
            tls.read_exact(&mut back)
        })
        .map_err(|e| e.to_string());
    drop(tls);
    let _ = served.join();
    result
}

/// A request for `names`'s certificate made by `client`: the signer's answer.
async fn ask(
    client: &kube::Client,
    requester: &str,
    peer: &PeerIdentity,
    signer: &str,
) -> Result<Vec<u8>, CsrError> {
    let key = PeerKey::generate().expect("key");
    let csr = key.request(peer).expect("csr");
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(
            &PostParams::default(),
            &csr_client::request_object(requester, &csr, Duration::from_secs(3600), signer),
        )
        .await
        .map_err(|source| CsrError::Kube {
            what: "creating".into(),
            source,
        })?;
    let name = created.metadata.name.expect("name");
    csr_client::wait_for_certificate(&api, &name, Duration::from_secs(60)).await
}

/// The signer of the test's release (the chart's release named as its namespace).
fn release_signer(ns: &str) -> String {
    release_signer_name(ns, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_only_their_own_nodes_certificate_through_the_csr_api() {
    let env = Env::get();
    let ns = env.namespace("tls-csr");
    let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let _cleanup = Cleanup {
        env,
        ns: ns.clone(),
        nodes: vec![node_a.clone(), node_b.clone()],
    };
    // The chart with its defaults (tls.mode csr): its ServiceAccounts and RBAC.
    apply(env, &render(env, &ns, &ns));
    for (node, pod) in [(&node_a, "agent-a"), (&node_b, "agent-b")] {
        apply(
            env,
            &format!(
                r#"
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: zetaback-agent
  containers: [{{name: agent, image: zetaback-agent:test}}]
"#
            ),
        );
    }

    // The controller's side, as the controller's ServiceAccount: the CA made and kept in a
    // Secret, published in ConfigMap zetaback-ca, the signer started.
    let as_controller = env
        .client_with_token(&token(env, &ns, "zetaback-controller", None))
        .await;
    let controller_tls = zetaback::controller::ca_store::start_signer(
        &as_controller,
        &ns,
        "zetaback-ca",
        SignerConfig {
            agents_username: service_account_username(&ns, "zetaback-agent"),
            max_lifetime: Duration::from_secs(3600),
            signer_name: release_signer(&ns),
        },
    )
    .await
    .expect("the controller makes its CA and starts signing with its chart RBAC");
    assert_eq!(controller_tls.identity(), &PeerIdentity::Controller);

    // Node A's agent asks for its certificate, with its pod's token.
    let as_a = env
        .client_with_token(&token(env, &ns, "zetaback-agent", Some("agent-a")))
        .await;
    let settings = CsrSettings {
        node: node_a.clone(),
        ca_configmap: (ns.clone(), "zetaback-ca".into()),
        lifetime: Duration::from_secs(3600),
        wait: Duration::from_secs(60),
        signer_name: release_signer(&ns),
    };
    let obtained = csr_client::obtain(&as_a, &settings)
        .await
        .expect("node A's agent gets its certificate");
    let a = PeerIdentity::node(&node_a).expect("node");
    let b = PeerIdentity::node(&node_b).expect("node");
    assert_eq!(obtained.tls.identity(), &a);
    println!("issued {} for {}", obtained.request, a.dns_name());
    handshake(&obtained.tls, &controller_tls, &a)
        .expect("the controller, meaning node A, completes mutual TLS with node A's agent");
    let wrong = handshake(&obtained.tls, &controller_tls, &b)
        .expect_err("a client meaning node B accepted node A's certificate");
    println!("meaning node B: {wrong}");
    // And the agent's certificate is a client certificate the controller's (server) accepts.
    handshake(&controller_tls, &obtained.tls, &PeerIdentity::Controller)
        .expect("node A's agent completes mutual TLS with the controller");

    // Node A's identity asking for node B's name: denied, nothing issued.
    match ask(&as_a, &node_a, &b, &release_signer(&ns)).await {
        Err(CsrError::Refused { kind, message, .. }) => {
            println!("node A asking for node B: {kind}: {message}");
            assert_eq!(kind, "denied");
            assert!(
                message.contains(&node_a) && message.contains(&b.dns_name()),
                "the denial says who asked for what: {message}"
            );
        }
        Ok(cert) => panic!(
            "node A's request for node B's name was issued: {}",
            String::from_utf8_lossy(&cert)
        ),
        Err(e) => panic!("node A's request for node B's name: {e}"),
    }
    // The agents' ServiceAccount with a token bound to no pod: no node, denied.
    let unbound = env
        .client_with_token(&token(env, &ns, "zetaback-agent", None))
        .await;
    match ask(&unbound, &node_a, &a, &release_signer(&ns)).await {
        Err(CsrError::Refused { kind, message, .. }) => {
            println!("unbound agent token: {kind}: {message}");
            assert!(message.contains("bound to no node"), "{message}");
        }
        other => panic!("an agent token bound to no node: {other:?}"),
    }
    // The controller's ServiceAccount may not even ask (RBAC); someone who may (the admin),
    // not being an agent, is denied.
    match ask(&as_controller, &node_a, &a, &release_signer(&ns)).await {
        Err(CsrError::Kube { source, .. }) => println!("the controller asking: {source}"),
        other => panic!("the controller's ServiceAccount asking for node A's name: {other:?}"),
    }
    match ask(&env.client().await, &node_a, &a, &release_signer(&ns)).await {
        Err(CsrError::Refused { message, .. }) => {
            println!("the admin asking for a node certificate: {message}");
            assert!(message.contains("only the zetaback agents"), "{message}");
        }
        other => panic!("the admin asking for node A's name: {other:?}"),
    }
    // The CA is kept: a second start (a restart, another replica) uses the same one, so
    // node A's certificate still verifies against the controller's new one.
    let again = zetaback::controller::ca_store::load_or_create(&as_controller, &ns, "zetaback-ca")
        .await
        .expect("the kept CA");
    let restarted = zetaback::controller::ca_store::own_tls(&again).expect("own tls");
    handshake(&obtained.tls, &restarted, &a)
        .expect("after a controller restart, node A's certificate is still from its CA");
}

/// One run of the controller's CA side (`start_signer`, as at a controller start), in a
/// runtime of its own so that stopping it (a restart) stops its signer too.
struct ControllerRun {
    runtime: Option<tokio::runtime::Runtime>,
    tls: std::sync::Arc<PeerTls>,
}

impl ControllerRun {
    /// The controller of the release named as its namespace `ns`, signing as that release.
    fn start(env: &'static Env, ns: &str, controller_token: &str) -> Self {
        Self::start_for(env, ns, controller_token, &release_signer(ns))
    }

    fn start_for(env: &'static Env, ns: &str, controller_token: &str, signer: &str) -> Self {
        let (ns, controller_token, signer) = (
            ns.to_owned(),
            controller_token.to_owned(),
            signer.to_owned(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let tls = runtime.block_on(async {
                let client = env.client_with_token(&controller_token).await;
                zetaback::controller::ca_store::start_signer(
                    &client,
                    &ns,
                    "zetaback-ca",
                    SignerConfig {
                        agents_username: service_account_username(&ns, "zetaback-agent"),
                        max_lifetime: Duration::from_secs(3600),
                        signer_name: signer,
                    },
                )
                .await
                .expect("the controller starts with the CA kept in its Secret")
            });
            ControllerRun {
                runtime: Some(runtime),
                tls,
            }
        })
        .join()
        .expect("controller start")
    }
}

impl Drop for ControllerRun {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A CA made the way the README's rotation procedure makes one: (certificate, key) PEM files.
fn openssl_ca(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=zetaback CA (rotated)",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    (cert, key)
}

fn kubectl_ok(env: &Env, args: &[&str]) -> String {
    let out = env.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_with_old_and_new_trusted_during_the_overlap() {
    let env = Env::get();
    let ns = env.namespace("tls-carot");
    let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let _cleanup = Cleanup {
        env,
        ns: ns.clone(),
        nodes: vec![node_a.clone(), node_b.clone()],
    };
    apply(env, &render(env, &ns, &ns));
    for (node, pod) in [(&node_a, "agent-a"), (&node_b, "agent-b")] {
        apply(
            env,
            &format!(
                r#"
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: zetaback-agent
  containers: [{{name: agent, image: zetaback-agent:test}}]
"#
            ),
        );
    }
    let controller_token = token(env, &ns, "zetaback-controller", None);
    let as_a = env
        .client_with_token(&token(env, &ns, "zetaback-agent", Some("agent-a")))
        .await;
    let as_b = env
        .client_with_token(&token(env, &ns, "zetaback-agent", Some("agent-b")))
        .await;
    let settings = |node: &str| CsrSettings {
        node: node.to_owned(),
        ca_configmap: (ns.clone(), "zetaback-ca".into()),
        lifetime: Duration::from_secs(3600),
        wait: Duration::from_secs(60),
        signer_name: release_signer(&ns),
    };
    let a = PeerIdentity::node(&node_a).expect("node");
    let b = PeerIdentity::node(&node_b).expect("node");
    let (settings_a, settings_b) = (settings(&node_a), settings(&node_b));
    let obtain = |client: &kube::Client, settings: &CsrSettings| {
        let (client, settings) = (client.clone(), settings.clone());
        async move {
            csr_client::obtain(&client, &settings)
                .await
                .expect("certificate issued")
                .tls
        }
    };
    let secret_b64 = |entry: &str| {
        let out = kubectl_ok(
            env,
            &[
                "get",
                "secret",
                "zetaback-ca",
                "-n",
                &ns,
                "-o",
                &format!("jsonpath={{.data.{}}}", entry.replace('.', "\\.")),
            ],
        );
        out.trim().to_owned()
    };
    let pem = |path: &std::path::Path| std::fs::read_to_string(path).expect("read");
    let patch_secret = |patch: serde_json::Value| {
        let patch = patch.to_string();
        kubectl_ok(
            env,
            &[
                "patch",
                "secret",
                "zetaback-ca",
                "-n",
                &ns,
                "--type",
                "merge",
                "-p",
                &patch,
            ],
        );
    };

    // Before: the controller's first start makes the old CA; both agents hold certificates
    // from it.
    let controller = ControllerRun::start(env, &ns, &controller_token);
    let old_a = obtain(&as_a, &settings_a).await;
    let old_b = obtain(&as_b, &settings_b).await;
    handshake(&old_a, &controller.tls, &a).expect("old CA: controller to A");
    handshake(&old_b, &old_a, &b).expect("old CA: A to B");
    let old_ca_b64 = secret_b64("tls.crt");

    // Step 1, trust the next CA: the new CA's certificate added as trusted.crt; the controller
    // restarted publishes old + new; the agents restarted (renewed) trust both, and still hold
    // certificates from the old CA, which still signs.
    let dir = tempfile::tempdir().expect("tempdir");
    let (new_cert, new_key) = openssl_ca(dir.path(), "next");
    patch_secret(serde_json::json!({"stringData": {"trusted.crt": pem(&new_cert)}}));
    drop(controller);
    let controller = ControllerRun::start(env, &ns, &controller_token);
    let published = kubectl_ok(
        env,
        &[
            "get",
            "configmap",
            "zetaback-ca",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
    );
    let new_pem = pem(&new_cert);
    assert_eq!(
        published.matches("BEGIN CERTIFICATE").count(),
        2,
        "the published CA bundle holds the old and the next CA: {published}"
    );
    assert!(
        published.contains(new_pem.trim()),
        "the next CA is published"
    );
    let mid_a = obtain(&as_a, &settings_a).await;
    let mid_b = obtain(&as_b, &settings_b).await;
    handshake(&mid_a, &controller.tls, &a).expect("step 1: controller to A");
    handshake(&mid_b, &old_a, &b).expect("step 1: an agent not yet restarted to B");

    // Step 2, sign with the new CA: tls.crt/tls.key become the new CA, trusted.crt the old.
    // The controller restarted signs with the new one; node A renews first, node B not yet:
    // during the overlap both certificates are accepted both ways.
    patch_secret(serde_json::json!({
        "stringData": {"tls.crt": pem(&new_cert), "tls.key": pem(&new_key)},
        "data": {"trusted.crt": old_ca_b64},
    }));
    drop(controller);
    let controller = ControllerRun::start(env, &ns, &controller_token);
    let new_a = obtain(&as_a, &settings_a).await;
    handshake(&new_a, &controller.tls, &a).expect("step 2: controller to A (new CA)");
    handshake(&mid_b, &controller.tls, &b)
        .expect("step 2: the controller (new CA) accepts B's certificate from the old CA");
    handshake(&mid_b, &new_a, &b).expect("step 2: A (new CA) to B (old CA)");
    handshake(&new_a, &mid_b, &a).expect("step 2: B (old CA) to A (new CA)");
    let new_b = obtain(&as_b, &settings_b).await;
    handshake(&new_b, &new_a, &b).expect("step 2: A to B, both renewed");

    // Step 3, drop the old CA: trusted.crt removed; after the restarts only the new CA is
    // trusted, and a certificate from the old one is refused.
    patch_secret(serde_json::json!({"data": {"trusted.crt": null}}));
    drop(controller);
    let controller = ControllerRun::start(env, &ns, &controller_token);
    let published = kubectl_ok(
        env,
        &[
            "get",
            "configmap",
            "zetaback-ca",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
    );
    assert_eq!(
        published.trim(),
        new_pem.trim(),
        "only the new CA is published"
    );
    let last_a = obtain(&as_a, &settings_a).await;
    let last_b = obtain(&as_b, &settings_b).await;
    handshake(&last_b, &controller.tls, &b).expect("step 3: controller to B");
    handshake(&last_b, &last_a, &b).expect("step 3: A to B");
    let refused = handshake(&mid_b, &controller.tls, &b)
        .expect_err("after the old CA is dropped, a certificate from it is accepted");
    println!("a certificate from the dropped CA: {refused}");
}

/// The chart of release `ns` (named as its namespace) applied, with one Node and one agent Pod
/// on it per `(node, pod)`: what a token bound to that pod is bound to.
fn release_with_nodes(env: &Env, ns: &str, nodes: &[(&str, &str)]) {
    apply(env, &render(env, ns, ns));
    for (node, pod) in nodes {
        apply(
            env,
            &format!(
                r#"
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: zetaback-agent
  containers: [{{name: agent, image: zetaback-agent:test}}]
"#
            ),
        );
    }
}

/// A request made by `client` for `node`'s certificate, not waited for: its name and key.
async fn request(client: &kube::Client, node: &str, signer: &str) -> (String, PeerKey) {
    let key = PeerKey::generate().expect("key");
    let peer = PeerIdentity::node(node).expect("node");
    let csr = key.request(&peer).expect("csr");
    let object = csr_client::request_object(node, &csr, Duration::from_secs(3600), signer);
    let created = Api::<CertificateSigningRequest>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .expect("create the request");
    (created.metadata.name.expect("name"), key)
}

/// Whether request `name` was denied or failed (and why), or issued: `None` while untouched.
async fn outcome(client: &kube::Client, name: &str) -> Option<String> {
    let csr = Api::<CertificateSigningRequest>::all(client.clone())
        .get(name)
        .await
        .expect("read the request");
    let status = csr.status.unwrap_or_default();
    if let Some(c) = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
    {
        return Some(format!("{}: {}", c.type_, c.message.unwrap_or_default()));
    }
    status
        .certificate
        .filter(|c| !c.0.is_empty())
        .map(|_| "issued".to_owned())
}

/// Two releases of the chart in one cluster (two namespaces, two controllers signing at once):
/// each signer issues its own release's agents' certificates and leaves the other release's
/// requests alone (before, one signer answered every zetaback request in the cluster and denied
/// the other release's agents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_releases_each_sign_only_their_own_agents() {
    let env = Env::get();
    let (ns1, ns2) = (env.namespace("tls-rel1"), env.namespace("tls-rel2"));
    let (node1, node2) = (format!("{ns1}-a"), format!("{ns2}-a"));
    let _cleanup1 = Cleanup {
        env,
        ns: ns1.clone(),
        nodes: vec![node1.clone()],
    };
    let _cleanup2 = Cleanup {
        env,
        ns: ns2.clone(),
        nodes: vec![node2.clone()],
    };
    release_with_nodes(env, &ns1, &[(&node1, "agent-a")]);
    release_with_nodes(env, &ns2, &[(&node2, "agent-a")]);
    let signer1 = release_signer(&ns1);
    let signer2 = release_signer(&ns2);
    let as_agent1 = env
        .client_with_token(&token(env, &ns1, "zetaback-agent", Some("agent-a")))
        .await;
    let as_agent2 = env
        .client_with_token(&token(env, &ns2, "zetaback-agent", Some("agent-a")))
        .await;
    let settings = |ns: &str, node: &str, signer: &str| CsrSettings {
        node: node.to_owned(),
        ca_configmap: (ns.to_owned(), "zetaback-ca".into()),
        lifetime: Duration::from_secs(3600),
        wait: Duration::from_secs(60),
        signer_name: signer.to_owned(),
    };

    // Release 1's controller alone: its agent gets a certificate (so its signer is watching).
    let controller1 = ControllerRun::start_for(
        env,
        &ns1,
        &token(env, &ns1, "zetaback-controller", None),
        &signer1,
    );
    let first = csr_client::obtain(&as_agent1, &settings(&ns1, &node1, &signer1))
        .await
        .expect("release 1's agent gets its certificate from release 1's controller");
    handshake(
        &first.tls,
        &controller1.tls,
        &PeerIdentity::node(&node1).expect("node"),
    )
    .expect("release 1's controller and agent complete mutual TLS");
    // Release 2's agent asks while only release 1's controller runs; release 1's agent asks
    // again after it. Requests are handled in the order they were made, so once the second is
    // issued, release 1's signer has seen release 2's request: it must have left it alone.
    let (other, _key) = request(&as_agent2, &node2, &signer2).await;
    csr_client::obtain(&as_agent1, &settings(&ns1, &node1, &signer1))
        .await
        .expect("release 1's agent gets a second certificate");
    let seen = outcome(&env.client().await, &other).await;
    assert_eq!(
        seen, None,
        "release 1's signer answered release 2's agent's request {other}"
    );

    // Release 2's controller starts: its agent's waiting request is issued, from its own CA.
    let controller2 = ControllerRun::start_for(
        env,
        &ns2,
        &token(env, &ns2, "zetaback-controller", None),
        &signer2,
    );
    let api = Api::<CertificateSigningRequest>::all(as_agent2.clone());
    csr_client::wait_for_certificate(&api, &other, Duration::from_secs(60))
        .await
        .expect("release 2's controller issues its agent's request");
    // Both signers running: each agent's new request is issued by its own release, and each
    // certificate is trusted only by its own release's controller.
    let one = csr_client::obtain(&as_agent1, &settings(&ns1, &node1, &signer1))
        .await
        .expect("release 1's agent, both controllers running");
    let two = csr_client::obtain(&as_agent2, &settings(&ns2, &node2, &signer2))
        .await
        .expect("release 2's agent, both controllers running");
    let (p1, p2) = (
        PeerIdentity::node(&node1).expect("node"),
        PeerIdentity::node(&node2).expect("node"),
    );
    handshake(&one.tls, &controller1.tls, &p1).expect("release 1: controller to agent");
    handshake(&two.tls, &controller2.tls, &p2).expect("release 2: controller to agent");
    let crossed = handshake(&two.tls, &controller1.tls, &p2)
        .expect_err("release 1's controller accepted release 2's agent");
    println!("release 1's controller meeting release 2's agent: {crossed}");
}

/// A kubeconfig like the admin's (same apiserver and CA) that authenticates with `token` only:
/// what a pod with that projected token uses.
fn kubeconfig_with_token(env: &Env, path: &std::path::Path, token: &str) {
    let mut config =
        kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("the admin kubeconfig");
    for user in &mut config.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        });
    }
    // JSON is YAML: kubeconfig readers take it.
    std::fs::write(path, serde_json::to_vec(&config).expect("json")).expect("write kubeconfig");
}

/// One mutual TLS connection to the agent at `port` as `client`, meaning `meant`: the
/// certificate it served and the status line of its answer to `GET /healthz`.
fn served(
    client: &PeerTls,
    port: u16,
    meant: &PeerIdentity,
) -> Result<(rustls::pki_types::CertificateDer<'static>, String), String> {
    let config = client.client_config(meant).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .and_then(|_| tls.flush())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The agent closes without a TLS close_notify sometimes: what was read counts.
    let _ = tls.read_to_end(&mut answer);
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate served")?
        .clone()
        .into_owned();
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((cert, status))
}

/// An agent process kept running by the test, killed when it ends.
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CSR renewal end to end (issue 13): a real agent process with a certificate from the CSR API
/// renews it before it expires, through the CSR API again, and serves mutual TLS with the new
/// one without a restart. The CSR API issues nothing shorter than 600 s, so the agent asks for
/// 600 s and renews with 590 s left (`ZETABACK_TLS_RENEW_BEFORE`, the agent's
/// `--tls-renew-before`): about 10 s after each issuance. Controller and agent use the test
/// release's own signer name, as the chart gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_and_keeps_serving_without_a_restart() {
    let env = Env::get();
    let ns = env.namespace("tls-renew");
    let node = format!("{ns}-a");
    let _cleanup = Cleanup {
        env,
        ns: ns.clone(),
        nodes: vec![node.clone()],
    };
    release_with_nodes(env, &ns, &[(&node, "agent-a")]);
    // The release's own signer: the chart's RBAC lets its controller sign for no other name.
    let signer = release_signer(&ns);
    let controller = ControllerRun::start_for(
        env,
        &ns,
        &token(env, &ns, "zetaback-controller", None),
        &signer,
    );
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = dir.path().join("agent.kubeconfig");
    let pod_token = token(env, &ns, "zetaback-agent", Some("agent-a"));
    kubeconfig_with_token(env, &kubeconfig, &pod_token);
    let store_token = dir.path().join("store.token");
    std::fs::write(&store_token, &pod_token).expect("token file");
    let port = zetaback_e2e::free_port();
    let log = dir.path().join("agent.log");
    let child = std::process::Command::new(zetaback_e2e::fleet::agent_binary())
        .args(["--host-name", &format!("{ns}-host"), "--node-name", &node])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&store_token)
        .args([
            "--controller-service-account",
            &format!("{ns}/zetaback-controller"),
            "--agent-service-account",
            &format!("{ns}/zetaback-agent"),
            "--tls-from-csr",
            "--tls-ca-configmap",
            &format!("{ns}/zetaback-ca"),
            "--tls-cert-lifetime",
            "600",
            "--tls-signer-name",
            &signer,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("ZETABACK_TLS_RENEW_BEFORE", "590")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("the agent starts");
    let mut agent = AgentProcess(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let meant = PeerIdentity::node(&node).expect("node");

    let first = tokio::time::timeout(
        Duration::from_secs(90),
        eventually(
            "the agent serving mutual TLS with its first certificate",
            Duration::from_secs(120),
            || async { served(&controller.tls, port, &meant).ok() },
        ),
    )
    .await;
    let Ok((first, status)) = first else {
        panic!(
            "the agent did not serve mutual TLS with a first certificate within 90 s; agent log:\n{}",
            log_text()
        );
    };
    assert!(status.starts_with("HTTP/1.1 200"), "GET /healthz: {status}");
    let first = zetaback::peer_tls::renewal::validity_of(&first).expect("validity");
    println!(
        "first certificate: serial {}, valid for {} s",
        first.serial,
        first
            .not_after
            .duration_since(first.not_before)
            .unwrap_or_default()
            .as_secs()
    );
    let renewed = tokio::time::timeout(
        Duration::from_secs(60),
        eventually("a renewed certificate", Duration::from_secs(90), || async {
            let (cert, status) = served(&controller.tls, port, &meant).ok()?;
            let v = zetaback::peer_tls::renewal::validity_of(&cert).ok()?;
            (v.serial != first.serial).then_some((v, status))
        }),
    )
    .await;
    let Ok((renewed, status)) = renewed else {
        panic!(
            "the agent's certificate was not renewed within 60 s (serial still {}); agent log:\n{}",
            first.serial,
            log_text()
        );
    };
    println!("renewed certificate: serial {}", renewed.serial);
    assert!(
        renewed.not_after > first.not_after,
        "the renewed certificate ends later"
    );
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET /healthz over mutual TLS with the renewed certificate: {status}"
    );
    assert!(
        agent.0.try_wait().expect("agent status").is_none(),
        "the agent exited (a renewal must not need a restart); log:\n{}",
        log_text()
    );
    // The renewal went through the CSR API: a second request of this node, issued.
    let csrs = Api::<CertificateSigningRequest>::all(env.client().await)
        .list(&Default::default())
        .await
        .expect("list requests");
    let issued = csrs
        .items
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .contains(&node)
        })
        .filter(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .is_some_and(|c| !c.0.is_empty())
        })
        .count();
    assert!(issued >= 2, "{issued} certificate(s) issued to {node}");
}
