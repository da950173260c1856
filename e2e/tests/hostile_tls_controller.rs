//! The controller's side of TLS everywhere (issue 13, finding 5), against a real agent process
//! serving its store over mutual TLS (certificates made by the openssl CLI): the controller
//! reaches a store only if its certificate names the node of the backup host it meant (an
//! endpoint leading to another node's store, or to an attacker's listener, gets no request
//! and no token), and the store knows it by its client certificate, not a bearer token.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zetaback::controller::store_client::StoreClient;
use zetaback::controller::store_tls::peer_address;
use zetaback::peer_tls::PeerTls;
use zetaback_e2e::fleet::agent_binary;
use zetaback_e2e::free_port;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and certificates from it for `names` (file name, DNS SAN).
fn pki(names: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("pki");
    let dir = d.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=zetaback test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (file, dns) in names {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{file}.key"),
                "-out",
                &format!("{file}.csr"),
                "-subj",
                &format!("/CN={file}"),
            ],
        );
        std::fs::write(
            dir.join(format!("{file}.cnf")),
            format!("subjectAltName=DNS:{dns}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .expect("cnf");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{file}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{file}.cnf"),
            ],
        );
    }
    d
}

/// The agent of node-c, serving a file store over mutual TLS; killed on drop.
struct Store {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_store(pki: &Path) -> Store {
    let dir = tempfile::tempdir().expect("store");
    let ids = dir.path().join("identities.json");
    std::fs::write(
        &ids,
        r#"[{"token": "tls-controller-token", "role": "controller"}]"#,
    )
    .expect("identities");
    let addr = format!("127.0.0.1:{}", free_port());
    let f = |n: &str| pki.join(n).display().to_string();
    let child = Command::new(agent_binary())
        .args([
            "--no-kube",
            "--host-name=tls-backup-c",
            "--node-name=node-c",
            &format!("--listen={addr}"),
            &format!("--store-root={}", dir.path().join("store").display()),
            &format!("--identities-file={}", ids.display()),
            &format!("--tls-cert={}", f("node-c.pem")),
            &format!("--tls-key={}", f("node-c.key")),
            &format!("--tls-ca={}", f("ca.pem")),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    // Killed on drop from here on, also when it never listens.
    let store = Store {
        child,
        addr,
        _dir: dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&store.addr).is_ok() {
            return store;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the TLS store did not listen on {}", store.addr);
}

fn controller_tls(pki: &Path) -> Arc<PeerTls> {
    Arc::new(
        PeerTls::from_files(
            &pki.join("controller.pem"),
            &pki.join("controller.key"),
            &pki.join("ca.pem"),
        )
        .expect("controller TLS"),
    )
}

#[tokio::test]
async fn the_controller_reaches_only_the_store_it_meant() {
    let pki = pki(&[
        ("node-c", "node-c.node.zetaback.io"),
        ("controller", "controller.zetaback.io"),
    ]);
    let store = tls_store(pki.path());
    let client = StoreClient::new(None).with_tls(controller_tls(pki.path()));

    // The backup host meant is on node-b; its endpoint leads to node-c's store: refused.
    let err = client
        .catalogue_all(&peer_address("node-b", &store.addr))
        .await
        .expect_err("node-c's store was accepted as node-b's");
    assert!(
        err.to_string()
            .contains("not valid for name \"node-b.node.zetaback.io\""),
        "{err}"
    );
    // An endpoint that names no node is refused over TLS.
    let err = client
        .catalogue_all(&store.addr)
        .await
        .expect_err("an endpoint naming no node was used over TLS");
    assert!(err.to_string().contains("names no node"), "{err}");
    // Meaning node-c: served, the controller known by its certificate (it sends no token).
    client
        .catalogue_all(&peer_address("node-c", &store.addr))
        .await
        .expect("the controller reads node-c's catalogue by its certificate");
    // Plaintext, with the controller's valid token, gets nowhere on a TLS store.
    let plain = StoreClient::new(Some("tls-controller-token".into()));
    plain
        .catalogue_all(&store.addr)
        .await
        .expect_err("plaintext reached a TLS store");
}

#[tokio::test]
async fn a_forged_store_endpoint_gets_no_controller_token() {
    let pki = pki(&[("controller", "controller.zetaback.io")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                g.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        }
    });
    let client = StoreClient::new(None).with_tls(controller_tls(pki.path()));
    let r = client
        .delete(
            &peer_address("node-b", &addr),
            "db-1",
            "tank/db",
            "1700000000.full",
        )
        .await;
    assert!(
        r.is_err(),
        "a delete sent to the attacker's listener succeeded"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().expect("lock").clone();
    assert!(
        !got.is_empty(),
        "the controller never connected (the test would prove nothing)"
    );
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        !text.contains("authorization") && !text.contains("/v1/streams"),
        "the attacker's listener received the controller's request: {text:?}"
    );
}
