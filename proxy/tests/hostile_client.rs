//! The proxy against a hostile web client (issue 14, items 1–5), with real
//! nginx backends and raw TCP sockets where a well-behaved HTTP client
//! library would not send what an attacker sends.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read from `s` until the peer closes it; `None` when it is still open
/// after `bound` (a liveness bound, not a measured time).
async fn read_until_closed(s: &mut TcpStream, bound: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(bound, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).to_string()),
        Err(_) => None,
    }
}

/// Read one response head (up to the blank line) from a kept-open socket.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head within the bound")
            .expect("read");
        assert!(n == 1, "connection closed before a response head: {buf:?}");
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

// ---------------------------------------------------------------- item 1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_refused_and_cannot_desync_the_pooled_backend_connection() {
    let a = Nginx::start("web1", &[("/a.txt", b"file a"), ("/b.txt", b"file b")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    // One pooled upstream connection exists.
    assert_eq!(c.get("/a.txt?warm", &[]).await.text(), "file a");

    // 0.CL: the body is framed correctly towards the proxy; a proxy that
    // forwards Content-Length without the body leaves nginx waiting for 40
    // bytes that the next request on the pooled connection then provides.
    let mut attack =
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nConnection: close\r\n\r\n"
            .to_vec();
    attack.extend_from_slice(&[b'A'; 40]);
    let raw = c.raw(&attack).await;

    // The next user's request, on the pooled upstream connection.
    let r = c.get("/b.txt", &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "file b"),
        "next request after the attack"
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "GET with a body: {raw}");

    // Chunked body on HEAD, and an Expect without a body: never forwarded.
    let raw = c
        .raw(b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "HEAD with a body: {raw}");
    let raw = c
        .raw(b"GET /b.txt?e HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "empty body is fine: {raw}");
    let r = c.get("/a.txt?after", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "file a"));
    let bad: Vec<String> = a
        .log_lines()
        .into_iter()
        .filter(|l| !l.contains(" 200|"))
        .collect();
    assert!(bad.is_empty(), "nginx saw broken requests: {bad:?}");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- item 2

/// nginx with per-Host and per-Accept-Language docroots, including the
/// answers a stripped header would produce.
fn vhost_and_language_backend() -> Nginx {
    let extra = "location /h/ { root @DIR@/vhosts/$host; }
        location /v/ { root @DIR@/lang/$http_accept_language; add_header Vary Accept-Language; }";
    let a = Nginx::start("web1", &[], extra);
    let d = a.dir.path().to_path_buf();
    for (dir, body) in [
        ("vhosts/a.test/h", "A"),
        ("vhosts/127.0.0.1/h", "DEFAULT HOST"),
    ] {
        std::fs::create_dir_all(d.join(dir)).expect("mkdir");
        std::fs::write(d.join(dir).join("same.txt"), body).expect("write");
    }
    for (dir, body) in [("lang/fr/v", "bonjour"), ("lang/v", "NO LANGUAGE")] {
        std::fs::create_dir_all(d.join(dir)).expect("mkdir");
        std::fs::write(d.join(dir).join("greet.txt"), body).expect("write");
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_listed_host_cannot_poison_another_hosts_key() {
    let a = vhost_and_language_backend();
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let raw = c
        .raw(b"GET /h/same.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close, Host\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let r = c.get("/h/same.txt", &[("host", "a.test")]).await;
    assert_eq!(r.text(), "A", "a.test's key after `Connection: Host`");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_listed_varyd_header_cannot_poison_another_variant() {
    let a = vhost_and_language_backend();
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let raw = c
        .raw(b"GET /v/greet.txt HTTP/1.1\r\nHost: x\r\nAccept-Language: fr\r\nConnection: close, Accept-Language\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let r = c
        .get("/v/greet.txt", &[("host", "x"), ("accept-language", "fr")])
        .await;
    assert_eq!(
        r.text(),
        "bonjour",
        "the fr variant after `Connection: Accept-Language`"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- item 3

const ECHO_FORWARDED: &str = r#"location /fwd/ { default_type text/plain;
    return 200 "host=$http_x_forwarded_host proto=$http_x_forwarded_proto fwd=$http_forwarded url=$http_x_original_url m=$http_x_http_method_override\n"; }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_forwarded_headers_are_dropped_on_fills() {
    let a = Nginx::start("web1", &[], ECHO_FORWARDED);
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let evil = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "gopher"),
        ("forwarded", "host=evil.example"),
        ("x-original-url", "/admin"),
        ("x-http-method-override", "DELETE"),
    ];
    let clean = "host= proto= fwd= url= m=\n";
    let r = c.get("/fwd/page", &evil).await;
    assert_eq!(
        r.text(),
        clean,
        "the backend saw the client's forwarding headers"
    );
    let r = c.get("/fwd/page", &[]).await;
    assert_eq!(r.text(), clean, "served to the next client");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_headers_are_forwarded_and_keep_their_own_cache_entries() {
    let a = Nginx::start("web1", &[], ECHO_FORWARDED);
    let mut cfg = config_for(&[&a]);
    cfg.keyed_headers = vec!["X-Forwarded-Proto".into()];
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let https = [("x-forwarded-proto", "https")];
    let r = c.get("/fwd/k", &https).await;
    assert_eq!(r.text(), "host= proto=https fwd= url= m=\n");
    let r = c.get("/fwd/k", &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("host= proto= fwd= url= m=\n", Some("MISS"))
    );
    let r = c.get("/fwd/k", &https).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("host= proto=https fwd= url= m=\n", Some("HIT"))
    );
    proxy.shutdown().await;
}

/// A backend that answers per User-Agent, Referer and Origin without saying `Vary`.
const ECHO_CLIENT: &str = r#"location /who/ { default_type text/plain; add_header Cache-Control "max-age=60";
    return 200 "ua=$http_user_agent ref=$http_referer origin=$http_origin\n"; }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agent_referer_and_origin_are_not_sent_on_fills_unless_keyed() {
    let a = Nginx::start("web1", &[], ECHO_CLIENT);
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let evil = [
        ("user-agent", "evil-bot"),
        ("referer", "https://evil.example/"),
        ("origin", "https://evil.example"),
    ];
    let clean = "ua= ref= origin=\n";
    let r = c.get("/who/page", &evil).await;
    assert_eq!(r.text(), clean, "the backend saw the client's description");
    let r = c.get("/who/page", &[("user-agent", "Mozilla/5.0")]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        (clean, Some("HIT")),
        "served to the next client"
    );
    proxy.shutdown().await;

    // Keyed (the route lists User-Agent): sent, and each value has its own entry.
    let mut cfg = config_for(&[&a]);
    cfg.keyed_headers = vec!["User-Agent".into()];
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let r = c.get("/who/keyed", &evil).await;
    assert_eq!(r.text(), "ua=evil-bot ref= origin=\n");
    let r = c.get("/who/keyed", &[("user-agent", "Mozilla/5.0")]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("ua=Mozilla/5.0 ref= origin=\n", Some("MISS"))
    );
    let r = c.get("/who/keyed", &evil).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("ua=evil-bot ref= origin=\n", Some("HIT"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_the_socket_peer_unless_the_peer_is_trusted() {
    let a = Nginx::start("web1", &[("/p.txt", b"p")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    c.get("/p.txt", &[("x-forwarded-for", "10.1.2.3")]).await;
    c.request(
        Method::POST,
        "/p.txt",
        &[("x-forwarded-for", "10.9.9.9")],
        Bytes::from_static(b"x"),
    )
    .await;
    settled_hits(&[&a], 2).await;
    let xff: Vec<String> = a
        .log_lines()
        .iter()
        .map(|l| l.split('|').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(xff, vec!["127.0.0.1", "127.0.0.1"], "{:?}", a.log_lines());
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- item 4

fn cookie_and_redirect_backend() -> Nginx {
    let extra = r#"default_type text/plain;
        location /me { return 200 "hello $cookie_user\n"; }
        location /pub { add_header Cache-Control public; return 200 "pub $cookie_user\n"; }
        location /old { return 301 /new; }
        location /perm { add_header Cache-Control "max-age=60"; return 301 /new; }"#;
    Nginx::start("web1", &[], extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_to_cookie_requests_are_shared_only_when_public() {
    let a = cookie_and_redirect_backend();
    let proxy = start_proxy(config_for(&[&a])).await;
    let alice = TestClient::new(proxy.addr);
    let bob = TestClient::new(proxy.addr);
    let cookie = [("cookie", "user=alice")];

    assert_eq!(alice.get("/me", &cookie).await.text(), "hello alice\n");
    let r = bob.get("/me", &[]).await;
    assert_eq!(r.text(), "hello \n", "alice's page served to bob");
    // The response says public: shared even though the request had a cookie.
    assert_eq!(alice.get("/pub", &cookie).await.text(), "pub alice\n");
    let r = bob.get("/pub", &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("pub alice\n", Some("HIT"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_get_no_default_ttl() {
    let a = cookie_and_redirect_backend();
    let proxy = start_proxy(config_for(&[&a])).await;
    let bob = TestClient::new(proxy.addr);
    // A redirect without freshness is not cached; with max-age it is.
    for _ in 0..2 {
        let r = bob.get("/old", &[]).await;
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_ne!(r.header("x-cache"), Some("HIT"), "heuristic redirect");
    }
    bob.get("/perm", &[]).await;
    let r = bob.get("/perm", &[]).await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::MOVED_PERMANENTLY, Some("HIT"))
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- item 5

async fn proxy_with_short_header_read(a: &Nginx) -> zetaback_proxy::ProxyHandle {
    let mut cfg = config_for(&[a]);
    cfg.limits.header_read = Duration::from_millis(500);
    start_proxy(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_request_head_is_cut_off() {
    let a = Nginx::start("web1", &[("/k.txt", b"k")], "");
    let proxy = proxy_with_short_header_read(&a).await;

    // Slowloris: a request head that never ends.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /k.txt HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .expect("write");
    assert!(
        read_until_closed(&mut s, Duration::from_secs(15))
            .await
            .is_some(),
        "a connection sending a never-ending request head stays open"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let a = Nginx::start("web1", &[("/k.txt", b"k")], "");
    let proxy = proxy_with_short_header_read(&a).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /k.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rest = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert_eq!(
        rest.as_deref(),
        Some("k"),
        "an idle keep-alive connection stays open"
    );
    proxy.shutdown().await;
}

/// Hold `cap` idle connections to `addr`; one more must be answered 503,
/// and a freed slot must serve `request` again.
async fn cap_is_enforced(addr: std::net::SocketAddr, cap: usize, request: &[u8]) {
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let c = TestClient::new(addr);
    let raw = c.raw(request).await;
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "connection {} of {cap}: {raw}",
        cap + 1
    );
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        ok = c.raw(request).await.starts_with("HTTP/1.1 200");
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot freed by a closed connection is usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_on_the_proxy_listener() {
    let a = Nginx::start("web1", &[("/c.txt", b"c")], "");
    let mut cfg = config_for(&[&a]);
    cfg.limits.max_connections = 4;
    let proxy = start_proxy(cfg).await;
    cap_is_enforced(
        proxy.addr,
        4,
        b"GET /c.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_on_the_metrics_listener() {
    let a = Nginx::start("web1", &[], "");
    let mut cfg = config_for(&[&a]);
    cfg.limits.max_metrics_connections = 2;
    let proxy = start_proxy(cfg).await;
    cap_is_enforced(
        proxy.metrics_addr,
        2,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reading_leader_does_not_freeze_the_url_for_waiters() {
    // Far more than the socket buffers between the proxy and a client
    // that does not read.
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 249) as u8).collect();
    let a = Nginx::start("web1", &[("/big.bin", &big)], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.max_object_size = 32 * 1024 * 1024;
    cfg.cache.max_size = 128 * 1024 * 1024;
    cfg.timeouts.coalesce_wait = Duration::from_millis(500);
    let proxy = start_proxy(cfg).await;

    // The leader asks and never reads.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut leader = sock.connect(proxy.addr).await.expect("connect");
    leader
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..500 {
        let m = proxy.shared.metrics_text();
        if metric(&m, "zetaback_proxy_cache_total{result=\"miss\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = TestClient::new(proxy.addr);
    let r = tokio::time::timeout(Duration::from_secs(30), c.get("/big.bin", &[("host", "x")]))
        .await
        .expect("a waiter is not held by a leader that does not read");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.as_ref() == big.as_slice(), "full body");
    drop(leader);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 247) as u8).collect();
    let a = Nginx::start("web1", &[("/big.bin", &big)], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.max_object_size = 32 * 1024 * 1024;
    cfg.cache.max_size = 128 * 1024 * 1024;
    cfg.limits.send_timeout = Duration::from_millis(300);
    let proxy = start_proxy(cfg).await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    // Read nothing for ten times the send timeout, then everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
    assert!(
        got.len() < big.len(),
        "a client that stopped reading got all {} bytes: it was never disconnected",
        got.len()
    );
    // The key is not frozen: the next client gets the whole object.
    let c = TestClient::new(proxy.addr);
    let r = c.get("/big.bin", &[("host", "x")]).await;
    assert!(
        r.body.as_ref() == big.as_slice(),
        "next client gets the full body"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_a_backend_prefix() {
    let a = Nginx::start(
        "web1",
        &[("/public/ok.txt", b"ok"), ("/secret.txt", b"secret")],
        "",
    );
    let mut cfg = config_for(&[&a]);
    cfg.backends[0].url = format!("{}/public", a.url());
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(c.get("/ok.txt", &[]).await.text(), "ok");
    let mut escaped = Vec::new();
    for target in [
        "/../secret.txt",
        "/x/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/.%2E/secret.txt",
        "/ok/..%2fsecret.txt",
    ] {
        let raw = c
            .raw(
                format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
        let status = raw.lines().next().unwrap_or("").to_string();
        if raw.contains("secret") || !status.starts_with("HTTP/1.1 400") {
            escaped.push(format!("{target} -> {status}"));
        }
    }
    assert!(escaped.is_empty(), "not refused: {escaped:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_junk_authorization_request_does_not_make_a_key_uncacheable() {
    let a = Nginx::start("web1", &[("/doc.txt", b"doc")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let r = c.get("/doc.txt", &[("authorization", "Basic junk")]).await;
    assert_eq!(r.text(), "doc");
    c.get("/doc.txt", &[]).await;
    let r = c.get("/doc.txt", &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("doc", Some("HIT"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_timeout_does_not_take_a_backend_down() {
    // A listener that never answers: nginx proxies /hang/ to it.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    let extra = format!(
        "location /hang/ {{ proxy_pass http://127.0.0.1:{hang_port}; proxy_read_timeout 60s; }}"
    );
    let a = Nginx::start("web1", &[("/a.txt", b"on web1")], &extra);
    let b = Nginx::start("web2", &[], "");
    let mut cfg = config_for(&[&a, &b]);
    cfg.timeouts.response_header = Duration::from_millis(500);
    cfg.backend_down_for = Duration::from_secs(600);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let r = c.get("/hang/slow", &[]).await;
    assert_ne!(r.status, StatusCode::OK);
    let r = c.get("/a.txt", &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "on web1"),
        "web1 was taken down by one slow URL"
    );
    drop(hang);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_timeouts_among_answers_do_not_take_a_backend_down() {
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    let extra = format!(
        "location /hang/ {{ proxy_pass http://127.0.0.1:{hang_port}; proxy_read_timeout 60s; }}"
    );
    let a = Nginx::start("web1", &[("/a.txt", b"on web1")], &extra);
    let b = Nginx::start("web2", &[], "");
    let mut cfg = config_for(&[&a, &b]);
    cfg.timeouts.response_header = Duration::from_millis(500);
    cfg.backend_down_for = Duration::from_secs(600);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    // Everyday traffic that web1 answers.
    for i in 0..20 {
        assert_eq!(
            c.get(&format!("/a.txt?n={i}"), &[]).await.status,
            StatusCode::OK
        );
    }
    // A client times out four requests at once (more than backendDownAfter).
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&format!("/hang/{i}"), &[]).await.status })
        })
        .collect();
    for s in slow {
        assert_ne!(s.await.expect("task"), StatusCode::OK);
    }
    let r = c.get("/a.txt?after", &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "on web1"),
        "web1 was taken down by four timeouts among twenty answers"
    );
    drop(hang);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_already_passed_this_proxy_is_a_loop() {
    let a = Nginx::start("web1", &[("/l.txt", b"l")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let r = c.get("/l.txt", &[("via", "1.1 other, 1.1 zetaback")]).await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED);
    assert_eq!(a.hits(), 0);
    let r = c.get("/l.txt", &[("via", "1.1 zetaback-edge")]).await;
    assert_eq!(r.status, StatusCode::OK, "another proxy's token");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_configured_as_its_own_backend_stops_after_one_hop() {
    let a = Nginx::start("web1", &[], "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut cfg = config_for(&[&a]);
    cfg.backends[0].url = format!("http://127.0.0.1:{port}");
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    cfg.metrics_listen = "127.0.0.1:0".parse().expect("addr");
    let proxy = zetaback_proxy::start(cfg).await.expect("proxy starts");
    let c = TestClient::new(proxy.addr);
    let r = tokio::time::timeout(Duration::from_secs(20), c.get("/l.txt", &[]))
        .await
        .expect("the loop ends");
    assert_eq!(r.status, StatusCode::LOOP_DETECTED);
    let m = proxy.shared.metrics_text();
    assert_eq!(
        metric(&m, "zetaback_proxy_requests_total"),
        2.0,
        "one hop, then refused: {m}"
    );
    proxy.shutdown().await;
}

#[test]
fn owner_vary_and_pass_caches_are_bounded_by_bytes() {
    use std::sync::Arc;
    use zetaback_proxy::handler::Runtime;
    use zetaback_proxy::metrics::Metrics;
    let mut cfg = zetaback_proxy::ProxyConfig::with_backends(vec![zetaback_proxy::BackendConfig {
        name: "a".into(),
        url: "http://127.0.0.1:1".into(),
    }]);
    let limit: u64 = 256 * 1024;
    cfg.owner_max_size = limit;
    cfg.cache.index_max_size = limit;
    let rt = Runtime::build(cfg, Arc::new(Metrics::new()), None).expect("runtime");
    // Client-chosen URLs of 4 KiB each: 4 MiB of keys offered per cache.
    let long = "x".repeat(4096);
    for i in 0..1000 {
        let k = format!("h/{i}/{long}");
        rt.owners.insert(k.clone(), Arc::from("a"));
        rt.store.mark_pass(&k);
        rt.store.vary.insert(k, Arc::new(Vec::new()));
    }
    rt.owners.run_pending_tasks();
    rt.store.pass.run_pending_tasks();
    rt.store.vary.run_pending_tasks();
    let owner_bytes: usize = rt.owners.iter().map(|(k, v)| k.len() + v.len()).sum();
    let pass_bytes: usize = rt.store.pass.iter().map(|(k, _)| k.len()).sum();
    let vary_bytes: usize = rt.store.vary.iter().map(|(k, _)| k.len()).sum();
    for (name, bytes) in [
        ("owner", owner_bytes),
        ("pass", pass_bytes),
        ("vary", vary_bytes),
    ] {
        assert!(
            bytes as u64 <= limit,
            "{name} cache holds {bytes} bytes of keys, limit {limit}"
        );
    }
}

// ---------------------------------------------------------------- item 6

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_open_proxy() {
    let a = Nginx::start("web1", &[("/x.txt", b"configured")], "");
    // A server the proxy is not configured for: it must never be asked.
    let other = Nginx::start("other", &[("/x.txt", b"elsewhere")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let port = other.port;
    let raw = c
        .raw(format!("GET http://127.0.0.1:{port}/x.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert!(raw.ends_with("configured"), "absolute-form: {raw}");
    let raw = c
        .raw(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert!(!raw.starts_with("HTTP/1.1 200"), "CONNECT: {raw}");
    let raw = c
        .raw(b"GET //127.0.0.1/x.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(!raw.contains("elsewhere"), "{raw}");
    assert_eq!(other.hits(), 0, "the unconfigured server was contacted");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_no_store_responses_are_never_stored() {
    let extra = r#"default_type text/plain;
        location /private { add_header Cache-Control "private, max-age=60"; return 200 "p $request_id"; }
        location /nostore { add_header Cache-Control "no-store"; return 200 "n $request_id"; }"#;
    let a = Nginx::start("web1", &[], extra);
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    for path in ["/private", "/nostore"] {
        let first = c.get(path, &[]).await;
        let second = c.get(path, &[]).await;
        assert_ne!(first.text(), second.text(), "{path} served from the cache");
        assert_ne!(second.header("x-cache"), Some("HIT"), "{path}");
    }
    assert_eq!(settled_hits(&[&a], 4).await, 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fills_share_one_memory_budget() {
    // Four 1 MiB files sent at 512 KiB/s: their fills overlap for about two seconds. The
    // budget of all fills (1.5 MiB) holds one of them, not two; each fill alone is well
    // within maxObjectSize.
    const MIB: usize = 1024 * 1024;
    let files: Vec<(String, Vec<u8>)> = (0..4u8)
        .map(|i| {
            let body = (0..MIB).map(|j| (j % 251) as u8 ^ i).collect();
            (format!("/slow/f{i}.bin"), body)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let a = Nginx::start(
        "web1",
        &refs,
        r#"location /slow/ { limit_rate 512k; add_header Cache-Control "max-age=60"; }"#,
    );
    let mut cfg = config_for(&[&a]);
    cfg.cache.max_fill_bytes = 3 * MIB as u64 / 2;
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let fills: Vec<_> = files
        .iter()
        .map(|(p, _)| {
            let (c, p) = (c.clone(), p.clone());
            tokio::spawn(async move { c.get(&p, &[]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for f in fills {
        answers.push(f.await.expect("fill task"));
    }
    for ((path, body), r) in files.iter().zip(&answers) {
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            r.body == body.as_slice(),
            "{path}: the whole body, uncached or not"
        );
    }
    // At most one fill found room; the others streamed through.
    let mut hits = 0;
    for (path, body) in &files {
        let r = c.get(path, &[]).await;
        assert!(r.body == body.as_slice(), "{path}");
        if r.header("x-cache") == Some("HIT") {
            hits += 1;
        }
    }
    let m = proxy.shared.metrics_text();
    let refused = metric(
        &m,
        "zetaback_proxy_not_stored_total{reason=\"fill-budget\"}",
    );
    println!("stored from the concurrent fills: {hits} of 4; refused for the budget: {refused}");
    assert!(
        hits <= 1,
        "{hits} of 4 concurrent 1 MiB fills were stored within 1.5 MiB"
    );
    assert!(refused >= 3.0, "{m}");
    proxy.shutdown().await;
}

/// nginx compressing for clients that ask (`gzip on`) without saying so
/// (`gzip_vary off`, nginx's default); `gzip_proxied any` because the
/// proxy's fills carry `Via`.
const GZIP_WITHOUT_VARY: &str = r#"location /z/ { gzip on; gzip_vary off; gzip_proxied any;
    gzip_min_length 1; gzip_types text/plain; default_type text/plain;
    add_header Cache-Control "max-age=60"; }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_answer_without_vary_is_served_only_to_clients_that_accept_gzip() {
    let text = "compressible text, ".repeat(40);
    let a = Nginx::start(
        "web1",
        &[("/z/page.txt", text.as_bytes())],
        GZIP_WITHOUT_VARY,
    );
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let gzip_client = [("accept-encoding", "gzip, deflate, br")];
    let r = c.get("/z/page.txt", &gzip_client).await;
    assert_eq!(
        (r.header("content-encoding"), r.header("vary")),
        (Some("gzip"), None),
        "the backend compresses without Vary"
    );
    assert_eq!(&r.body[..2], b"\x1f\x8b");
    let r = c.get("/z/page.txt", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        (r.header("content-encoding"), r.header("x-cache")),
        (Some("gzip"), Some("HIT")),
        "another gzip client shares the stored gzip answer"
    );
    for plain_client in [
        &[][..],
        &[("accept-encoding", "br")],
        &[("accept-encoding", "gzip;q=0, identity")],
    ] {
        let r = c.get("/z/page.txt", plain_client).await;
        assert_eq!(
            (r.header("content-encoding"), r.text()),
            (None, text.clone()),
            "a client that did not accept gzip ({plain_client:?}) got x-cache {:?}",
            r.header("x-cache")
        );
    }
    // Whatever is stored now, a gzip client gets a body its headers describe.
    let r = c.get("/z/page.txt", &gzip_client).await;
    match r.header("content-encoding") {
        Some("gzip") => assert_eq!(&r.body[..2], b"\x1f\x8b"),
        other => assert_eq!((other, r.text()), (None, text.clone())),
    }
    proxy.shutdown().await;
}
