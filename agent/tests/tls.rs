//! Mutual TLS between agents over real sockets, with a CA and certificates made by the openssl
//! CLI (each naming its node, `<node>.node.zetaback.io`): a stream sent over TLS is stored and
//! verified, and read back; a sender trusting another CA is refused with a clear certificate
//! error, and so is a plaintext sender; neither leaves anything behind. The attacks (forged
//! endpoints, another node's certificate, replayed tokens): tests/hostile_tls.rs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use zetaback_agent::filestore::FileStore;
use zetaback_agent::identity::{Caller, StaticIdentities};
use zetaback_agent::store_server::{ServerState, router};
use zetaback_agent::transfer::{self, Endpoint, SourceDone, TransferError, Upload};
use zetaback_core::api::backup_policy::Compression;
use zetaback_core::store::{StreamId, scan};

use zetaback_core::peer_tls::{PeerIdentity, PeerTls};

const TOKEN: &str = "source-token";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<name>-ca.pem` / `<name>-ca.key`: a self-signed CA.
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
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `server.pem` / `server.key` (the store, node backup-1) and `client.pem` / `client.key` (the
/// source's agent, node node-1), signed by the `good` CA.
fn make_server_cert(dir: &Path) {
    make_cert(dir, "server", "backup-1");
    make_cert(dir, "client", "node-1");
}

fn make_cert(dir: &Path, file: &str, node: &str) {
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
            &format!("/CN={node}"),
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=DNS:{node}.node.zetaback.io\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{file}.csr"),
            "-CA",
            "good-ca.pem",
            "-CAkey",
            "good-ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{file}.pem"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn ok_done() -> SourceDone {
    Box::pin(async { Ok(()) })
}

fn upload_spec(id: &str) -> Upload {
    let sid: StreamId = id.parse().expect("id");
    Upload {
        host: "db-1".into(),
        dataset: "tank/db".into(),
        id: sid,
        snapshot: format!("zb-{}", sid.ts()),
        base_snapshot: None,
        compression: Compression::None,
        receive_into: None,
        store_path: None,
        bandwidth_limit: 0,
        idle_timeout: Duration::from_secs(30),
        answer_timeout: zetaback_agent::transfer::DEFAULT_ANSWER_TIMEOUT,
        resume_token: None,
        policy: None,
        raw: false,
    }
}

/// `n` bytes that begin like a ZFS send stream (a DRR_BEGIN record head with the magic: the
/// store refuses anything else), then a pattern.
fn data(n: usize) -> Vec<u8> {
    let mut head = vec![0u8; 8];
    head.extend_from_slice(&0x2_F5BA_CBACu64.to_le_bytes());
    head.into_iter()
        .chain((16..n).map(|i| (i * 31 + i / 977) as u8))
        .take(n)
        .collect()
}

#[tokio::test]
async fn streams_over_tls_verified_against_the_ca() {
    let pki = tempfile::tempdir().expect("pki");
    make_ca(pki.path(), "good");
    make_ca(pki.path(), "wrong");
    make_server_cert(pki.path());
    let store_dir = tempfile::tempdir().expect("store");

    let peer = |file: &str, ca: &str| {
        PeerTls::from_files(
            &pki.path().join(format!("{file}.pem")),
            &pki.path().join(format!("{file}.key")),
            &pki.path().join(format!("{ca}-ca.pem")),
        )
        .expect("peer TLS")
    };
    let server = peer("server", "good")
        .server_config()
        .expect("server config");
    let state = ServerState::new(
        std::sync::Arc::new(StaticIdentities::new().with(TOKEN, Caller::agent("node-1", ["db-1"]))),
        Some(FileStore::new(store_dir.path())),
        None,
    )
    .with_certificates_required();
    let backup_1 = PeerIdentity::node("backup-1").expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(zetaback_agent::tls::serve(listener, router(state), server));

    // The right CA: stored, and the target's answer is checked as over plaintext.
    let endpoint = Endpoint::new(&addr, TOKEN)
        .over_tls(&peer("client", "good"), backup_1.clone())
        .expect("endpoint");
    let client = transfer::client_for(&endpoint);
    let body = data(3 * 1024 * 1024 + 17);
    let up = transfer::upload(
        &client,
        &endpoint,
        &upload_spec("1700000000.full"),
        std::io::Cursor::new(body.clone()),
        ok_done(),
    )
    .await
    .expect("upload over TLS");
    assert!(up.response.verified);
    assert_eq!(up.sent_bytes, body.len() as u64);
    let cat = scan(store_dir.path()).expect("scan");
    assert_eq!(cat.backups.len(), 1);
    assert_eq!(
        cat.backups[0].manifest.sha256,
        Some(zetaback_agent::checksum::sha256_of(&body))
    );
    // And it reads back over TLS, verified.
    let mut dl = transfer::download(
        &client,
        &endpoint,
        "db-1",
        "tank/db",
        &"1700000000.full".parse().expect("id"),
    )
    .await
    .expect("download over TLS");
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut dl.reader, &mut back)
        .await
        .expect("read back");
    assert!(back == body);

    // The wrong CA: refused before any byte of the stream, with a certificate error.
    let wrong = Endpoint::new(&addr, TOKEN)
        .over_tls(&peer("client", "wrong"), backup_1.clone())
        .expect("endpoint");
    let err = transfer::upload(
        &transfer::client_for(&wrong),
        &wrong,
        &upload_spec("1700000100.full"),
        std::io::Cursor::new(Bytes::from_static(b"never stored").to_vec()),
        ok_done(),
    )
    .await
    .expect_err("a certificate from another CA must be refused");
    let msg = err.to_string();
    assert!(matches!(err, TransferError::Connection(_)), "{err:?}");
    assert!(
        msg.contains("certificate") && msg.contains("UnknownIssuer"),
        "the error should say the certificate is not trusted: {msg}"
    );

    // A plaintext sender gets nowhere either.
    let err = transfer::upload(
        &transfer::client(),
        &Endpoint::new(&addr, TOKEN),
        &upload_spec("1700000200.full"),
        std::io::Cursor::new(b"never stored".to_vec()),
        ok_done(),
    )
    .await
    .expect_err("plaintext to a TLS agent must fail");
    assert!(matches!(err, TransferError::Connection(_)), "{err:?}");

    // A TLS client never falls back to plaintext.
    let mut http = endpoint.clone();
    http.base = http.base.replace("https://", "http://");
    let err = transfer::upload(
        &transfer::client_for(&http),
        &http,
        &upload_spec("1700000300.full"),
        std::io::Cursor::new(b"never stored".to_vec()),
        ok_done(),
    )
    .await
    .expect_err("an http:// endpoint with TLS configured must be refused");
    assert!(err.to_string().contains("unsupported scheme http"), "{err}");

    let cat = scan(store_dir.path()).expect("scan");
    assert_eq!(cat.backups.len(), 1, "only the TLS upload was stored");
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let e = zetaback_agent::tls::client_config(&dir.path().join("empty.pem")).expect_err("empty");
    assert!(e.to_string().contains("no certificate"), "{e}");
    let e =
        zetaback_agent::tls::client_config(&dir.path().join("missing.pem")).expect_err("missing");
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
