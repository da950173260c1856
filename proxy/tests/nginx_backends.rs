//! The proxy against real nginx backends. Each nginx holds part of the
//! files; hit counts come from the nginx access logs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};

fn spread(n: usize, files: usize) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut per: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); n];
    for i in 0..files {
        per[i % n].push((
            format!("/files/f{i}.txt"),
            format!("content of file {i}\n").into_bytes(),
        ));
    }
    per
}

fn start_spread(n: usize, files: usize, extra: &str) -> Vec<Nginx> {
    spread(n, files)
        .into_iter()
        .enumerate()
        .map(|(i, fs)| {
            let refs: Vec<(&str, &[u8])> =
                fs.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
            Nginx::start(&format!("web{}", i + 1), &refs, extra)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_found_and_owner_cache_makes_misses_cost_one_request() {
    let ngs = start_spread(3, 30, "");
    let refs: Vec<&Nginx> = ngs.iter().collect();
    let proxy = start_proxy(config_for(&refs)).await;
    let c = TestClient::new(proxy.addr);

    // First pass: file i lives on backend i % 3 and costs (i % 3) + 1 requests.
    let mut expected = 0;
    for i in 0..30 {
        let r = c.get(&format!("/files/f{i}.txt"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "file {i}");
        assert_eq!(r.text(), format!("content of file {i}\n"));
        assert_eq!(
            r.header("x-backend"),
            Some(format!("web{}", i % 3 + 1).as_str())
        );
        assert_eq!(r.header("x-cache"), Some("MISS"));
        assert!(r.header("via").is_some_and(|v| v.contains("zetaback")));
        expected += i % 3 + 1;
    }
    assert_eq!(settled_hits(&refs, expected).await, expected);

    // Same URLs again: cache hits, no backend request.
    for i in 0..30 {
        let r = c.get(&format!("/files/f{i}.txt"), &[]).await;
        assert_eq!(r.header("x-cache"), Some("HIT"), "file {i}");
        assert_eq!(r.text(), format!("content of file {i}\n"));
    }
    assert_eq!(settled_hits(&refs, expected).await, expected);

    // New cache keys (query) for known paths: owners are known, so each
    // miss costs exactly one request, at the owning backend.
    let before = hit_map(&refs);
    for i in 0..30 {
        let r = c.get(&format!("/files/f{i}.txt?v=2"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    assert_eq!(settled_hits(&refs, expected + 30).await, expected + 30);
    let after = hit_map(&refs);
    for n in &ngs {
        assert_eq!(
            after[&n.name] - before[&n.name],
            10,
            "each backend owns 10 files: {}",
            n.name
        );
    }

    // Missing everywhere: asks all 3, answers the 404, caches it.
    let r = c.get("/files/nope.txt", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(settled_hits(&refs, expected + 33).await, expected + 33);
    let r = c.get("/files/nope.txt", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(settled_hits(&refs, expected + 33).await, expected + 33);

    let m = proxy.shared.metrics_text();
    assert!(metric(&m, "zetaback_proxy_owner_hits_total") >= 30.0, "{m}");
    assert!(
        metric(
            &m,
            "zetaback_proxy_backend_fallbacks_total{backend=\"web1\"}"
        ) >= 20.0,
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_that_now_answers_404_is_forgotten() {
    let a = Nginx::start("web1", &[], "");
    let b = Nginx::start("web2", &[("/x.txt", b"on b")], "");
    let mut cfg = config_for(&[&a, &b]);
    cfg.cache.default_ttl = Duration::ZERO; // no response caching here
    cfg.cache.grace = Duration::ZERO;
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(c.get("/x.txt", &[]).await.text(), "on b");
    // The file moves from b to a.
    std::fs::remove_file(b.www().join("x.txt")).expect("rm");
    a.put_file("/x.txt", b"on a");
    let r = c.get("/x.txt", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "on a");
    // Now a is the owner: one request, to a.
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(c.get("/x.txt", &[]).await.text(), "on a");
    assert_eq!(settled_hits(&[&a], ha + 1).await, ha + 1);
    assert_eq!(b.hits(), hb);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_have_headers_and_no_body() {
    let a = Nginx::start("web1", &[], "");
    let b = Nginx::start("web2", &[("/h.bin", &[7u8; 1234])], "");
    let proxy = start_proxy(config_for(&[&a, &b])).await;
    let c = TestClient::new(proxy.addr);
    // HEAD on a miss
    let r = c.request(Method::HEAD, "/h.bin", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("1234"));
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-backend"), Some("web2"));
    // GET is now a hit with the full body, HEAD a hit without.
    let g = c.get("/h.bin", &[]).await;
    assert_eq!(g.header("x-cache"), Some("HIT"));
    assert_eq!(g.body.len(), 1234);
    let r = c.request(Method::HEAD, "/h.bin", &[], Bytes::new()).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(r.header("content-length"), Some("1234"));
    assert_eq!(r.header("etag"), g.header("etag"));
    assert!(r.body.is_empty());
    let r = c.request(Method::HEAD, "/missing", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_pass_to_the_configured_backend_streamed() {
    // web1 accepts WebDAV PUT; POST to a static file is 405 from nginx.
    let dav = "location /up/ { dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 10m; }";
    let a = Nginx::start("web1", &[("/static.txt", b"s")], dav);
    let b = Nginx::start("web2", &[("/static.txt", b"s")], dav);
    let mut cfg = config_for(&[&a, &b]);
    cfg.max_request_body = 4 * 1024 * 1024;
    let proxy = start_proxy(cfg.clone()).await;
    let c = TestClient::new(proxy.addr);

    let r = c
        .request(
            Method::POST,
            "/static.txt",
            &[],
            Bytes::from_static(b"hello"),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("x-backend"), Some("web1"));
    assert!(
        a.log_lines()
            .iter()
            .any(|l| l.starts_with("POST /static.txt 405"))
    );
    assert!(!b.log_lines().iter().any(|l| l.starts_with("POST")));

    // 404 cached first, then an upload through the proxy invalidates it.
    assert_eq!(
        c.get("/up/new.bin", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .request(
            Method::PUT,
            "/up/new.bin",
            &[],
            Bytes::from(payload.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        std::fs::read(a.www().join("up/new.bin")).expect("uploaded on web1"),
        payload
    );
    let r = c.get("/up/new.bin", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), payload.as_slice());

    // Body limit: 413 without contacting any backend.
    let before = a.hits() + b.hits();
    let raw = c
        .raw(b"PUT /up/big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert_eq!(a.hits() + b.hits(), before);
    // A chunked body that grows past the limit is cut off with 413 too.
    let mut chunked = b"PUT /up/big2.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"100000\r\n");
        chunked.extend_from_slice(&vec![b'q'; 0x100000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = c.raw(&chunked).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(!a.www().join("up/big2.bin").exists());

    // passTo selects another backend (config reload, same listener).
    cfg.pass_to = 1;
    proxy.reload(cfg).expect("reload");
    let r = c
        .request(Method::POST, "/static.txt", &[], Bytes::from_static(b"x"))
        .await;
    assert_eq!(r.header("x-backend"), Some("web2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_responses_are_never_shared() {
    let extra = r#"location /c/ { add_header Set-Cookie "session=$request_id; Path=/"; }"#;
    let a = Nginx::start("web1", &[("/c/page.html", b"<p>private</p>")], extra);
    let proxy = start_proxy(config_for(&[&a])).await;
    let alice = TestClient::new(proxy.addr);
    let bob = TestClient::new(proxy.addr);
    let r1 = alice.get("/c/page.html", &[]).await;
    let r2 = bob.get("/c/page.html", &[]).await;
    let r3 = bob.get("/c/page.html", &[]).await;
    let cookies: Vec<&str> = [&r1, &r2, &r3]
        .iter()
        .map(|r| r.header("set-cookie").expect("cookie"))
        .collect();
    assert_ne!(cookies[0], cookies[1]);
    assert_ne!(cookies[1], cookies[2]);
    for r in [&r1, &r2, &r3] {
        assert_ne!(r.header("x-cache"), Some("HIT"));
    }
    assert_eq!(settled_hits(&[&a], 3).await, 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_cached_separately_and_filtered() {
    // Docroot per Host: www/<host>/same.txt
    let extra = "location /h/ { root @DIR@/vhosts/$host; }";
    let a = Nginx::start("web1", &[], extra);
    let vh = a.dir.path().join("vhosts");
    for (host, body) in [("a.test", "A"), ("b.test", "B")] {
        std::fs::create_dir_all(vh.join(host).join("h")).expect("mkdir");
        std::fs::write(vh.join(host).join("h/same.txt"), body).expect("write");
    }
    let mut cfg = config_for(&[&a]);
    cfg.hosts = vec!["a.test".into(), "b.test".into()];
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(
        c.get("/h/same.txt", &[("host", "a.test")]).await.text(),
        "A"
    );
    assert_eq!(
        c.get("/h/same.txt", &[("host", "b.test")]).await.text(),
        "B"
    );
    let r = c.get("/h/same.txt", &[("host", "A.TEST:8080")]).await;
    assert_eq!(r.text(), "A");
    let r = c.get("/h/same.txt", &[("host", "b.test")]).await;
    assert_eq!((r.text().as_str(), r.header("x-cache")), ("B", Some("HIT")));
    let r = c.get("/h/same.txt", &[("host", "c.test")]).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let extra =
        "location /v/ { root @DIR@/lang/$http_accept_language; add_header Vary Accept-Language; }";
    let a = Nginx::start("web1", &[], extra);
    let lang = a.dir.path().join("lang");
    for (l, body) in [("en", "hello"), ("fr", "bonjour")] {
        std::fs::create_dir_all(lang.join(l).join("v")).expect("mkdir");
        std::fs::write(lang.join(l).join("v/greet.txt"), body).expect("write");
    }
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(c.get("/v/greet.txt", &en).await.text(), "hello");
    let r = c.get("/v/greet.txt", &fr).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("bonjour", Some("MISS"))
    );
    let r = c.get("/v/greet.txt", &en).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("hello", Some("HIT"))
    );
    let r = c.get("/v/greet.txt", &fr).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("bonjour", Some("HIT"))
    );
    assert_eq!(settled_hits(&[&a], 2).await, 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_range_requests_are_answered_from_cache() {
    let a = Nginx::start("web1", &[("/doc.txt", b"0123456789abcdef")], "");
    let proxy = start_proxy(config_for(&[&a])).await;
    let c = TestClient::new(proxy.addr);
    let full = c.get("/doc.txt", &[]).await;
    let etag = full.header("etag").expect("nginx sends ETag").to_string();
    let lm = full
        .header("last-modified")
        .expect("nginx sends Last-Modified")
        .to_string();

    let r = c.get("/doc.txt", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty());
    let r = c.get("/doc.txt", &[("if-modified-since", &lm)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = c.get("/doc.txt", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "0123456789abcdef");

    let r = c.get("/doc.txt", &[("range", "bytes=2-5")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/16"));
    let r = c.get("/doc.txt", &[("range", "bytes=-3")]).await;
    assert_eq!(r.text(), "def");
    let r = c.get("/doc.txt", &[("range", "bytes=99-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = c
        .get(
            "/doc.txt",
            &[("range", "bytes=0-1"), ("if-range", "\"stale\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // All of it came from the one original fetch.
    assert_eq!(settled_hits(&[&a], 1).await, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_coalesced_into_one_backend_request() {
    // limit_rate makes the fetch take a while so the requests overlap.
    let body = vec![b'z'; 200_000];
    let a = Nginx::start("web1", &[], "");
    let b = Nginx::start(
        "web2",
        &[("/slow/big.bin", &body)],
        "location /slow/ { limit_rate 400k; }",
    );
    let proxy = start_proxy(config_for(&[&a, &b])).await;
    let c = TestClient::new(proxy.addr);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(
            async move { c.get("/slow/big.bin", &[]).await },
        ));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 200_000);
    }
    assert_eq!(settled_hits(&[&b], 1).await, 1, "one fetch from the owner");
    assert_eq!(settled_hits(&[&a], 1).await, 1, "one 404 from web1");
    let m = proxy.shared.metrics_text();
    eprintln!(
        "coalesced waiters: {}",
        metric(&m, "zetaback_proxy_coalesced_total")
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_going_down_mid_test_is_skipped_without_502() {
    let mut ngs = start_spread(3, 30, "");
    let mut cfg = {
        let refs: Vec<&Nginx> = ngs.iter().collect();
        config_for(&refs)
    };
    cfg.backend_down_for = Duration::from_secs(600);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    for i in 0..30 {
        assert_eq!(
            c.get(&format!("/files/f{i}.txt"), &[]).await.status,
            StatusCode::OK
        );
    }
    // web2 dies (it owns files 1, 4, 7, ...).
    ngs[1].kill();
    for i in 0..30 {
        // fresh keys so the cache does not hide the backends
        let r = c.get(&format!("/files/f{i}.txt?after=1"), &[]).await;
        if i % 3 == 1 {
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "file {i} lived on the dead backend"
            );
        } else {
            assert_eq!(r.status, StatusCode::OK, "file {i}");
            assert_eq!(r.text(), format!("content of file {i}\n"));
        }
    }
    // Unknown owners too: first-time keys for files on web3.
    let r = c.get("/files/f2.txt?brand=new", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    // Cached objects of the dead backend are still served.
    let r = c.get("/files/f1.txt", &[]).await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("HIT"))
    );
    let m = proxy.shared.metrics_text();
    assert!(
        metric(&m, "zetaback_proxy_backend_errors_total{backend=\"web2\"") >= 1.0,
        "{m}"
    );
    // All down: 502.
    ngs[0].kill();
    ngs[2].kill();
    let r = c.get("/files/f0.txt?all=down", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stripped_and_forwarding_headers_added() {
    let a = Nginx::start("web1", &[("/p.txt", b"p")], "");
    let mut cfg = config_for(&[&a]);
    // The client's X-Forwarded-For is kept only from a trusted peer.
    cfg.trusted_proxies = vec!["127.0.0.0/8".into()];
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let r = c
        .get(
            "/p.txt",
            &[
                ("connection", "keep-alive, x-foo"),
                ("x-foo", "secret"),
                ("x-forwarded-for", "10.1.2.3"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("keep-alive").is_none());
    let lines = a.log_lines();
    let fields: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(
        fields[1], "10.1.2.3, 127.0.0.1",
        "X-Forwarded-For: {}",
        lines[0]
    );
    assert!(fields[2].contains("zetaback"), "Via: {}", lines[0]);
    assert_eq!(fields[3], "-", "x-foo must not be forwarded: {}", lines[0]);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_stream_through_uncached() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let a = Nginx::start("web1", &[("/big.bin", &big)], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.max_object_size = 1024 * 1024;
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    for _ in 0..2 {
        let r = c.get("/big.bin", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), big.as_slice());
        assert_ne!(r.header("x-cache"), Some("HIT"));
    }
    // Range on an uncacheable object is passed through to nginx.
    let r = c.get("/big.bin", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &big[10..20]);
    assert_eq!(settled_hits(&[&a], 3).await, 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_object_served_in_grace_while_one_request_revalidates() {
    let a = Nginx::start("web1", &[("/g.txt", b"graceful")], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.default_ttl = Duration::from_secs(1);
    cfg.cache.grace = Duration::from_secs(300);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(c.get("/g.txt", &[]).await.header("x-cache"), Some("MISS"));
    // Wait until the object is stale (polling the cache status, not timing).
    let mut saw_stale = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = c.get("/g.txt", &[]).await;
        assert_eq!(r.text(), "graceful");
        if r.header("x-cache") == Some("STALE") {
            saw_stale += 1;
            break;
        }
    }
    assert_eq!(saw_stale, 1);
    // Exactly one background revalidation, answered 304 by nginx.
    assert_eq!(settled_hits(&[&a], 2).await, 2);
    assert!(
        a.log_lines()[1].starts_with("GET /g.txt 304"),
        "{:?}",
        a.log_lines()
    );
    let r = c.get("/g.txt", &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("graceful", Some("HIT"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_backend_without_dropping_connections() {
    let a = Nginx::start("web1", &[("/a.txt", b"a")], "");
    let b = Nginx::start("web2", &[("/b.txt", b"b")], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.not_found_ttl = Duration::ZERO;
    let proxy = start_proxy(cfg.clone()).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(c.get("/b.txt", &[]).await.status, StatusCode::NOT_FOUND);
    cfg.backends.push(b.backend());
    proxy.reload(cfg).expect("reload");
    // Same pooled keep-alive connection keeps working.
    assert_eq!(c.get("/b.txt", &[]).await.text(), "b");
    assert_eq!(c.get("/a.txt", &[]).await.text(), "a");
    let m = proxy.shared.metrics_text();
    assert_eq!(metric(&m, "zetaback_proxy_config_reloads_total"), 1.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_requests_finish() {
    let body = vec![b's'; 150_000];
    let a = Nginx::start(
        "web1",
        &[("/slow/f.bin", &body)],
        "location /slow/ { limit_rate 300k; }",
    );
    let mut cfg = config_for(&[&a]);
    cfg.timeouts.shutdown = Duration::from_secs(30);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let inflight = tokio::spawn(async move { c.get("/slow/f.bin", &[]).await });
    // Wait until the proxy has the request (counted), then shut down.
    for _ in 0..200 {
        if metric(
            &proxy.shared.metrics_text(),
            "zetaback_proxy_requests_total{method=\"GET\"}",
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = proxy.addr;
    proxy.shutdown().await;
    let r = inflight.await.expect("task");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 150_000);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_copy_served_when_no_backend_can_revalidate() {
    let mut a = Nginx::start("web1", &[("/s.txt", b"still here")], "");
    let mut cfg = config_for(&[&a]);
    cfg.cache.default_ttl = Duration::from_secs(1);
    cfg.cache.grace = Duration::ZERO;
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    assert_eq!(c.get("/s.txt", &[]).await.header("x-cache"), Some("MISS"));
    a.kill();
    let mut last = None;
    for _ in 0..100 {
        let r = c.get("/s.txt", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "still here")
        );
        last = r.header("x-cache").map(str::to_string);
        if last.as_deref() == Some("STALE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.as_deref(), Some("STALE"));
    // Something never cached still gets a 502.
    assert_eq!(
        c.get("/other.txt", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_teed_into_the_cache_or_overflow_to_pass() {
    // gzip makes nginx answer chunked (no Content-Length), with Vary.
    let extra = "gzip on; gzip_proxied any; gzip_types text/plain application/octet-stream; gzip_min_length 0; gzip_vary on;";
    let small = "all work and no play ".repeat(500).into_bytes();
    let mut big = Vec::with_capacity(3_000_000);
    let mut x: u32 = 12345;
    for _ in 0..3_000_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.push((x >> 16) as u8);
    }
    let a = Nginx::start(
        "web1",
        &[("/z/small.txt", &small), ("/z/big.bin", &big)],
        extra,
    );
    let mut cfg = config_for(&[&a]);
    cfg.cache.max_object_size = 1024 * 1024;
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let gz = [("accept-encoding", "gzip")];

    let r1 = c.get("/z/small.txt", &gz).await;
    assert_eq!(r1.header("content-encoding"), Some("gzip"));
    assert_eq!(r1.header("x-cache"), Some("MISS"));
    let r2 = c.get("/z/small.txt", &gz).await;
    assert_eq!(r2.header("x-cache"), Some("HIT"));
    assert_eq!(r2.body, r1.body);
    let plain = c.get("/z/small.txt", &[]).await;
    assert_eq!(plain.header("x-cache"), Some("MISS"), "other variant");
    assert_eq!(plain.body.as_ref(), small.as_slice());
    assert_eq!(settled_hits(&[&a], 2).await, 2);

    // Chunked and larger than maxObjectSize: streamed whole, then passed.
    let b1 = c.get("/z/big.bin", &gz).await;
    assert_eq!(b1.status, StatusCode::OK);
    assert!(b1.body.len() > 1024 * 1024);
    let b2 = c.get("/z/big.bin", &gz).await;
    assert_eq!(b2.header("x-cache"), Some("PASS"));
    assert_eq!(b2.body, b1.body);
    assert_eq!(settled_hits(&[&a], 4).await, 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_is_cut_off() {
    // nginx trickles the body at 200 B/s: the 20 kB transfer would take
    // 100 s; pauses between sends exceed the 300 ms idle limit.
    let body = vec![b'x'; 20_000];
    let a = Nginx::start(
        "web1",
        &[("/stall/f.bin", &body)],
        "location /stall/ { limit_rate 200; }",
    );
    let mut cfg = config_for(&[&a]);
    cfg.timeouts.body_idle = Duration::from_millis(300);
    let proxy = start_proxy(cfg).await;
    let c = TestClient::new(proxy.addr);
    let raw = tokio::time::timeout(
        Duration::from_secs(8),
        c.raw(b"GET /stall/f.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("the proxy ends the stalled response instead of hanging");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.len() < 20_000, "body was cut off");
    // Nothing half-received was cached.
    let m = proxy.shared.metrics_text();
    assert_eq!(metric(&m, "zetaback_proxy_cache_entries"), 0.0, "{m}");
    proxy.shutdown().await;
}

/// Header lines of a raw response (lower-cased names), without `Age`
/// (it may tick between two requests), and the body.
fn head_lines(raw: &str) -> (String, Vec<String>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| !l.starts_with("age:"))
        .collect();
    (status, headers, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_has_the_same_head_on_the_prebuilt_and_the_general_path() {
    let a = Nginx::start("web1", &[("/h/page.txt", b"hello hit\n")], "");
    let mut cfg = config_for(&[&a]);
    let proxy = start_proxy(cfg.clone()).await;
    let c = TestClient::new(proxy.addr);
    let plain = b"GET /h/page.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let first = c.raw(plain).await;
    assert!(first.contains("x-cache: MISS"), "{first}");
    // The streamed fill is stored once its body completed.
    for _ in 0..100 {
        if c.raw(plain).await.contains("x-cache: HIT") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Plain GET: the object's prebuilt head. A validator that does not
    // match: the general path (serve_object), same answer.
    let prebuilt = c.raw(plain).await;
    let general = c
        .raw(b"GET /h/page.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"no-such-tag\"\r\nConnection: close\r\n\r\n")
        .await;
    let (s1, h1, b1) = head_lines(&prebuilt);
    let (s2, h2, b2) = head_lines(&general);
    assert_eq!(s1, "HTTP/1.1 200 OK");
    assert_eq!(
        (&s1, &h1, &b1),
        (&s2, &h2, &b2),
        "{prebuilt}\n---\n{general}"
    );
    assert!(h1.contains(&"x-cache: hit".to_string()), "{h1:?}");
    assert!(h1.contains(&"content-length: 10".to_string()), "{h1:?}");
    assert!(
        prebuilt.to_ascii_lowercase().contains("\r\nage: "),
        "{prebuilt}"
    );
    let vias: Vec<_> = h1.iter().filter(|l| l.starts_with("via:")).collect();
    assert_eq!(vias.len(), 1, "one Via line: {h1:?}");
    // HEAD: the same head, no body.
    let head = c
        .raw(b"HEAD /h/page.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (s3, h3, b3) = head_lines(&head);
    assert_eq!((&s3, &h3, b3.as_str()), (&s1, &h1, ""), "{head}");

    // A reload that renames this proxy: hits of objects stored before it
    // carry the new Via, never the old one.
    cfg.via_name = "edge-b".into();
    proxy.reload(cfg).expect("reload");
    let r = c.get("/h/page.txt", &[("host", "x")]).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    let via: Vec<_> = r.headers.get_all("via").iter().collect();
    assert_eq!(via.len(), 1, "{via:?}");
    assert!(
        via[0]
            .to_str()
            .is_ok_and(|v| v.contains("edge-b") && !v.contains("zetaback")),
        "{via:?}"
    );
    proxy.shutdown().await;
}
