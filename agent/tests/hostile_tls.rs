//! Attacks on the connections between zetaback's parts (issue 13, finding 5), over real
//! sockets with a real TLS store and certificates made by the openssl CLI: a forged endpoint
//! (an attacker's listener) gets no token and no byte of a stream; a store whose certificate
//! names another node is refused; a token a store received, replayed to another store, is
//! refused; a client certificate from another CA, or a forged peer header, gets nowhere.
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::{Caller, StaticIdentities};
use zetaback_agent::store_server::{ServerState, router};
use zetaback_agent::transfer::{self, Endpoint, SourceDone, TransferError, Upload};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::peer_tls::{PeerIdentity, PeerTls};
use zetaback_core::store::{StreamId, scan};

const TOKEN_A: &str = "agent-a-token";

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
fn make_ca(dir: &Path, name: &str) {
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
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}
fn make_cert(dir: &Path, ca: &str, file: &str, dns: &str) {
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
    std::fs::write(dir.join(format!("{file}.cnf")), format!("subjectAltName=DNS:{dns},IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")).expect("cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{file}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
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
fn pki() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("pki");
    make_ca(d.path(), "good");
    make_ca(d.path(), "wrong");
    make_cert(d.path(), "good", "node-a", "node-a.node.zetaback.io");
    make_cert(d.path(), "good", "node-b", "node-b.node.zetaback.io");
    make_cert(d.path(), "good", "node-c", "node-c.node.zetaback.io");
    make_cert(d.path(), "wrong", "rogue", "node-a.node.zetaback.io");
    d
}
fn done() -> SourceDone {
    Box::pin(async { Ok(()) })
}
fn spec(id: &str) -> Upload {
    let sid: StreamId = id.parse().expect("id");
    Upload {
        host: "db-a".into(),
        dataset: "tank/db".into(),
        id: sid,
        snapshot: format!("zb-{}", sid.ts()),
        base_snapshot: None,
        compression: Compression::None,
        receive_into: None,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(10),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}
fn data(n: usize) -> Vec<u8> {
    let mut head = vec![0u8; 8];
    head.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    head.into_iter()
        .chain((16..n).map(|i| (i % 251) as u8))
        .take(n)
        .collect()
}
async fn tls_store(pki: &Path, node: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("store");
    let ids = StaticIdentities::new().with(TOKEN_A, Caller::agent("node-a", ["db-a"]));
    let state = ServerState::new(Arc::new(ids), Some(FileStore::new(dir.path())), None)
        .with_certificates_required();
    let server = peer(pki, node).server_config().expect("server");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(zetaback_agent::tls::serve(l, router(state), server));
    (addr, dir)
}

/// The TLS material of `file`'s certificate, trusting `ca`.
fn peer_with_ca(pki: &Path, file: &str, ca: &str) -> PeerTls {
    PeerTls::from_files(
        &pki.join(format!("{file}.pem")),
        &pki.join(format!("{file}.key")),
        &pki.join(format!("{ca}-ca.pem")),
    )
    .expect("peer TLS")
}

fn peer(pki: &Path, node: &str) -> PeerTls {
    peer_with_ca(pki, node, "good")
}

fn node(n: &str) -> PeerIdentity {
    PeerIdentity::node(n).expect("node")
}

/// A listener that records every byte it is sent (the attacker's).
fn recording_listener() -> (String, Arc<Mutex<Vec<u8>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                g.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        }
    });
    (addr, got)
}

async fn send(
    endpoint: &Endpoint,
    id: &str,
    body: Vec<u8>,
) -> Result<transfer::Uploaded, TransferError> {
    transfer::upload(
        &transfer::client_for(endpoint),
        endpoint,
        &spec(id),
        std::io::Cursor::new(body),
        done(),
    )
    .await
}

#[tokio::test]
async fn a_forged_endpoint_gets_no_token_and_no_stream() {
    let pki = pki();
    let (addr, got) = recording_listener();
    // Node A's agent means node B's store; B's status.agentEndpoint was forged to the
    // attacker's listener.
    let endpoint = Endpoint::new(&addr, TOKEN_A)
        .over_tls(&peer(pki.path(), "node-a"), node("node-b"))
        .expect("endpoint");
    let body = data(256 * 1024);
    let r = send(&endpoint, "1700000000.full", body.clone()).await;
    assert!(
        r.is_err(),
        "an upload to a listener without node-b's certificate succeeded"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().expect("lock").clone();
    assert!(
        !got.is_empty(),
        "the client never connected (the test would prove nothing)"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains(TOKEN_A),
        "the attacker's listener received the caller's token: {:?}",
        text.chars().take(300).collect::<String>()
    );
    assert!(
        !got.windows(64).any(|w| w == &body[1000..1064]),
        "the attacker's listener received the stream"
    );
}

#[tokio::test]
async fn a_store_certificate_for_another_host_is_refused() {
    let pki = pki();
    // Node C's store, with a valid certificate from the CA, for node C.
    let (addr_c, dir_c) = tls_store(pki.path(), "node-c").await;
    let a = peer(pki.path(), "node-a");
    // Node A meant node B, but the address leads to node C: refused before any request.
    let meant_b = Endpoint::new(&addr_c, TOKEN_A)
        .over_tls(&a, node("node-b"))
        .expect("endpoint");
    let err = send(&meant_b, "1700000000.full", data(4096))
        .await
        .expect_err("the caller meant node-b's store but node-c's certificate was accepted");
    assert!(matches!(err, TransferError::Connection(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("not valid for name \"node-b.node.zetaback.io\""),
        "the error should say the certificate names another peer: {err}"
    );
    assert!(scan(dir_c.path()).expect("scan").backups.is_empty());
    // The same caller meaning node C is served (the refusal above is about the name only).
    let meant_c = Endpoint::new(&addr_c, TOKEN_A)
        .over_tls(&a, node("node-c"))
        .expect("endpoint");
    let up = send(&meant_c, "1700000100.full", data(4096))
        .await
        .expect("upload to the node meant");
    assert!(up.response.verified);
    assert_eq!(scan(dir_c.path()).expect("scan").backups.len(), 1);
}

#[tokio::test]
async fn a_replayed_token_is_refused() {
    let pki = pki();
    let (addr_b, dir_b) = tls_store(pki.path(), "node-b").await;
    // A store that received node A's token replays it to node B's store: over TLS (the CA
    // trusted), with the token, but without node A's client certificate.
    let replay = transfer::tls_client(
        zetaback_agent::tls::client_config(&pki.path().join("good-ca.pem")).expect("ca"),
    );
    // (The test certificates also name 127.0.0.1, which this client checks.)
    let endpoint = Endpoint::new(&addr_b, TOKEN_A).https();
    let replay = transfer::upload(
        &replay,
        &endpoint,
        &spec("1700000000.full"),
        std::io::Cursor::new(data(4096)),
        done(),
    )
    .await;
    assert!(
        replay.as_ref().is_err_and(
            |e| matches!(e, TransferError::Rejected { status, .. } if status.as_u16() == 401)
        ),
        "node-a's token replayed without its certificate was not refused with 401: {replay:?}"
    );
    assert!(scan(dir_b.path()).expect("scan").backups.is_empty());
    // Node A itself, with its certificate, is served.
    let own = Endpoint::new(&addr_b, "")
        .over_tls(&peer(pki.path(), "node-a"), node("node-b"))
        .expect("endpoint");
    send(&own, "1700000100.full", data(4096))
        .await
        .expect("node-a's own upload");
    assert_eq!(scan(dir_b.path()).expect("scan").backups.len(), 1);
}

#[tokio::test]
async fn a_client_without_a_valid_certificate_gets_nowhere() {
    let pki = pki();
    let (addr_b, dir_b) = tls_store(pki.path(), "node-b").await;
    // A certificate naming node-a, from another CA: the handshake fails.
    let rogue = peer_with_ca(pki.path(), "rogue", "good");
    let endpoint = Endpoint::new(&addr_b, TOKEN_A)
        .over_tls(&rogue, node("node-b"))
        .expect("endpoint");
    let err = send(&endpoint, "1700000000.full", data(4096))
        .await
        .expect_err("a rogue client certificate was accepted");
    assert!(
        matches!(
            err,
            TransferError::Connection(_) | TransferError::Rejected { .. }
        ),
        "{err:?}"
    );
    assert!(scan(dir_b.path()).expect("scan").backups.is_empty());

    // No certificate, no token, and a forged internal peer header naming the controller (who
    // may read the whole catalogue): 401, the header is not believed.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_file_iter(pki.path().join("good-ca.pem"))
            .expect("ca")
        {
            roots.add(c.expect("cert")).expect("root");
        }
        roots
    })
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(&addr_b)
        .await
        .expect("connect");
    let mut stream = connector
        .connect(
            rustls_pki_types::ServerName::try_from("node-b.node.zetaback.io").expect("name"),
            tcp,
        )
        .await
        .expect("handshake without a client certificate");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET /v1/catalogue HTTP/1.1\r\nhost: x\r\n{}: controller.zetaback.io\r\nconnection: close\r\n\r\n", zetaback_agent::peer_auth::H_PEER).as_bytes())
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "a forged peer header was believed: {}",
        answer.lines().next().unwrap_or("")
    );
}
