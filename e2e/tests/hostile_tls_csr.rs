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
