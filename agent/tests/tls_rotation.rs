//! Certificates rotate without a restart (issue 13, Build 4): an agent started with
//! `--tls-cert/--tls-key/--tls-ca` files notices when they are replaced (a renewal written by
//! the node's provisioning) and serves the new certificate to the next connection, as the
//! same process. Certificates from the zetaback CA code (`peer_tls::issue`), a real agent
//! process, real TLS handshakes on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TargetAgent, Tokens, free_port};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use zetaback_core::peer_tls::issue::CertificateAuthority;
use zetaback_core::peer_tls::{PeerIdentity, PeerTls};

/// The certificate the agent at `addr` serves to `client` meaning `peer` (mutual TLS), or the
/// handshake's error.
fn served(addr: &str, client: &PeerTls, peer: &PeerIdentity) -> Result<Vec<u8>, String> {
    let config: Arc<rustls::ClientConfig> =
        client.client_config(peer).map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&answer)));
    }
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?;
    Ok(cert.as_ref().to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

/// Replaces `path` the way provisioning tools do (a new file renamed over the old one).
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate().expect("ca");
    let node = PeerIdentity::node("backup-1").expect("node");
    let hour = Duration::from_secs(3600);
    let (cert1, key1) = ca.issue_with_new_key(&node, hour).expect("cert");
    let (cert_path, key_path, ca_path) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert_path, &cert1).expect("cert");
    std::fs::write(&key_path, &key1).expect("key");
    std::fs::write(&ca_path, ca.cert_pem()).expect("ca");
    let (ccert, ckey) = ca
        .issue_with_new_key(&PeerIdentity::Controller, hour)
        .expect("controller cert");
    let controller = PeerTls::from_pem(ccert.as_bytes(), ckey.as_bytes(), ca.cert_pem().as_bytes())
        .expect("controller tls");

    // The agent checks its files every second (the default is a minute).
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe { std::env::set_var("ZETABACK_TLS_RELOAD_INTERVAL", "1") };
    let tokens = Tokens::new();
    let store = tempfile::tempdir().expect("store");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut agent = TargetAgent::start_with(
        &tokens,
        &addr,
        store.path(),
        None,
        None,
        &[
            "--tls-cert",
            &cert_path.to_string_lossy(),
            "--tls-key",
            &key_path.to_string_lossy(),
            "--tls-ca",
            &ca_path.to_string_lossy(),
        ],
    );
    let first = served(&addr, &controller, &node).expect("the first certificate served");
    assert_eq!(first, der(&cert1), "the agent serves its certificate");

    // Renewal: a new key and certificate for the same node, written over the old files.
    let (cert2, key2) = ca.issue_with_new_key(&node, hour).expect("renewed cert");
    replace(&key_path, &key2);
    replace(&cert_path, &cert2);
    let start = Instant::now();
    let mut last: String;
    loop {
        match served(&addr, &controller, &node) {
            Ok(c) if c == der(&cert2) => break,
            Ok(c) if c == der(&cert1) => last = "the old certificate".into(),
            Ok(_) => last = "an unknown certificate".into(),
            Err(e) => last = e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "20 s after its files were renewed the agent still serves {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent restarted to pick up its certificate"
    );
    println!(
        "renewed certificate served after {} ms, same process",
        start.elapsed().as_millis()
    );

    // A renewal naming another node is not taken: the agent keeps serving its own.
    let other = PeerIdentity::node("intruder").expect("node");
    let (cert3, key3) = ca.issue_with_new_key(&other, hour).expect("other cert");
    replace(&key_path, &key3);
    replace(&cert_path, &cert3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        served(&addr, &controller, &node).expect("still served"),
        der(&cert2),
        "the agent took a certificate naming another node"
    );
    agent.kill();
}
