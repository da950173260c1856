//! Certificates through the CertificateSigningRequest API (issue 13, Build 4), on the real
//! apiserver with the chart's own RBAC: the controller's side (the CA kept in a Secret, the
//! signer `zetaback.io/node`) runs as the controller's ServiceAccount, agents ask with tokens
//! bound to a Pod on their Node (no kubelet: the objects are what a token is bound to).
//!
//! - node A's agent gets a certificate naming node A, from the CA the controller published, and
//!   a client that means node A completes a mutual TLS handshake with it (one that means node
//!   B does not);
//! - node A's identity asking for node B's name is denied, and so are the agents'
//!   ServiceAccount without a node, and another ServiceAccount.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use zetaback::controller::csr_signer::SignerConfig;
use zetaback::peer_tls::csr_policy::service_account_username;
use zetaback::peer_tls::issue::PeerKey;
use zetaback::peer_tls::{PeerIdentity, PeerTls};
use zetaback_agent::csr_client::{self, CsrError, CsrSettings};
use zetaback_e2e::{Env, text};

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
) -> Result<Vec<u8>, CsrError> {
    let key = PeerKey::generate().expect("key");
    let csr = key.request(peer).expect("csr");
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(
            &PostParams::default(),
            &csr_client::request_object(requester, &csr, Duration::from_secs(3600)),
        )
        .await
        .map_err(|source| CsrError::Kube {
            what: "creating".into(),
            source,
        })?;
    let name = created.metadata.name.expect("name");
    csr_client::wait_for_certificate(&api, &name, Duration::from_secs(60)).await
}

/// One signer at a time: a signer answers every request for `zetaback.io/node` in the cluster
/// (and denies another test's agents), so the tests that run one take turns.
static SIGNER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_only_their_own_nodes_certificate_through_the_csr_api() {
    let _turn = SIGNER_TURN.lock().await;
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
    match ask(&as_a, &node_a, &b).await {
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
    match ask(&unbound, &node_a, &a).await {
        Err(CsrError::Refused { kind, message, .. }) => {
            println!("unbound agent token: {kind}: {message}");
            assert!(message.contains("bound to no node"), "{message}");
        }
        other => panic!("an agent token bound to no node: {other:?}"),
    }
    // The controller's ServiceAccount may not even ask (RBAC); someone who may (the admin),
    // not being an agent, is denied.
    match ask(&as_controller, &node_a, &a).await {
        Err(CsrError::Kube { source, .. }) => println!("the controller asking: {source}"),
        other => panic!("the controller's ServiceAccount asking for node A's name: {other:?}"),
    }
    match ask(&env.client().await, &node_a, &a).await {
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
    fn start(env: &'static Env, ns: &str, controller_token: &str) -> Self {
        let (ns, controller_token) = (ns.to_owned(), controller_token.to_owned());
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
    let _turn = SIGNER_TURN.lock().await;
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
