//! Request handling: refusals (loops, dot segments, GET with a body), cache
//! lookup, coalescing, the owner-ordered fallback chain, pass-through of
//! other methods. Cache fills are in `handler/fill.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use moka::sync::Cache;
use tracing::{Instrument, debug, warn};

use crate::age;
use crate::body::{self, Body, LimitedBody};
use crate::cache::{CachedObject, Flight, Inflight, Store, X_CACHE, wait};
use crate::conditional;
use crate::config::ProxyConfig;
use crate::encoding;
use crate::error::{ConfigError, ProxyError, UpstreamError};
use crate::fill_budget::FillBudget;
use crate::forwarding::{self, Forwarding};
use crate::hop;
use crate::key;
use crate::metrics::Metrics;
use crate::owner::backend_order;
use crate::plain;
use crate::range::{self, RangeSpec};
use crate::storability;
use crate::upstream::{self, Backend, HttpClient};

mod fill;
use fill::{Filled, fill};

/// Everything a request needs; swapped as a whole on reload.
pub struct Runtime {
    pub cfg: ProxyConfig,
    pub backends: Vec<Backend>,
    pub client: HttpClient,
    pub store: Arc<Store>,
    /// owner key (host + path) -> name of the backend that answered
    pub owners: Arc<Cache<String, Arc<str>>>,
    pub inflight: Arc<Inflight>,
    pub metrics: Arc<Metrics>,
    /// What goes upstream (allow-lists, keyed headers, trusted proxies, Via).
    pub fwd: Forwarding,
    /// The memory all fills in flight may hold (`cache.maxFillBytes`).
    pub fill_budget: Arc<FillBudget>,
}

impl Runtime {
    /// Build from a config, reusing caches and the client of `prev` where the
    /// relevant settings did not change.
    pub fn build(
        cfg: ProxyConfig,
        metrics: Arc<Metrics>,
        prev: Option<&Runtime>,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let backends = cfg
            .backends
            .iter()
            .map(|b| Backend::new(b, metrics.backend(&b.name)))
            .collect::<Result<Vec<_>, _>>()?;
        let store = match prev {
            Some(p) if p.store.compatible(&cfg.cache) => p.store.clone(),
            _ => Arc::new(Store::new(&cfg.cache)),
        };
        let owners = match prev {
            Some(p)
                if p.cfg.owner_ttl == cfg.owner_ttl
                    && p.cfg.owner_max_size == cfg.owner_max_size =>
            {
                p.owners.clone()
            }
            _ => Arc::new(owner_cache(cfg.owner_max_size, cfg.owner_ttl)),
        };
        let client = match prev {
            Some(p) if p.cfg.timeouts == cfg.timeouts => p.client.clone(),
            _ => upstream::build_client(&cfg.timeouts),
        };
        let inflight = prev.map(|p| p.inflight.clone()).unwrap_or_default();
        let fill_budget = match prev {
            Some(p) if p.cfg.cache.max_fill_bytes == cfg.cache.max_fill_bytes => {
                p.fill_budget.clone()
            }
            _ => FillBudget::new(cfg.cache.max_fill_bytes),
        };
        let fwd = Forwarding::new(&cfg.keyed_headers, &cfg.trusted_proxies, &cfg.via_name)?;
        Ok(Self {
            fwd,
            cfg,
            backends,
            client,
            store,
            owners,
            inflight,
            metrics,
            fill_budget,
        })
    }

    fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }

    fn is_fallback(&self, status: StatusCode) -> bool {
        self.cfg.fallback_on.contains(&status.as_u16())
    }

    /// Names a stored response varies on that a fill actually sends (the
    /// backend cannot have varied on anything else).
    /// A content-coded answer is keyed on the (normalised) Accept-Encoding
    /// the fill sent even without `Vary` (see [`crate::encoding`]).
    fn vary_sent(&self, resp: &HeaderMap) -> Vec<HeaderName> {
        let mut names = key::vary_names(resp).unwrap_or_default();
        names.retain(|n| self.fwd.sent_on_fill(n));
        encoding::with_implied_vary(resp, names)
    }
}

/// The owner cache, bounded by the bytes of its keys and values (keys are
/// client-chosen paths).
fn owner_cache(max_bytes: u64, ttl: Duration) -> Cache<String, Arc<str>> {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|k: &String, v: &Arc<str>| {
            u32::try_from(k.len() + v.len() + crate::cache::ENTRY_OVERHEAD).unwrap_or(u32::MAX)
        })
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}

/// The answer to one client request, as hyper's service future.
pub enum Answer {
    /// A fresh hit, answered before any future was made.
    Now(std::future::Ready<Response<Body>>),
    /// Everything else: `handle`'s future, boxed (it is large).
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(r) => Pin::new(r).poll(cx).map(Ok),
            Answer::Later(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Entry point for one client request: a fresh hit for a plain GET/HEAD is
/// served synchronously (no span, no future); anything else, including
/// every refusal, goes through the full path of `handle`.
/// The runtime is borrowed for a hit (no reference count taken) and
/// owned by the full path.
pub fn respond(runtime: &ArcSwap<Runtime>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let start = Instant::now();
    let rt = runtime.load();
    rt.metrics.request(req.method());
    if let Some(resp) = fresh_hit(&rt, &req, start) {
        rt.metrics.latency.observe(start.elapsed().as_secs_f64());
        return Answer::Now(std::future::ready(resp));
    }
    let rt = arc_swap::Guard::into_inner(rt);
    Answer::Later(Box::pin(handle_counted(rt, req, peer, start)))
}

/// Entry point for one client request (the full path for every request).
pub async fn handle(rt: Arc<Runtime>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let start = Instant::now();
    rt.metrics.request(req.method());
    handle_counted(rt, req, peer, start).await
}

/// A fresh stored answer for a GET/HEAD that needs nothing else: the
/// same checks, in the same order, as `handle_inner` and the first lookup
/// of `get_or_head`; `None` whenever the full path has anything to do.
fn fresh_hit(rt: &Runtime, req: &Request<Incoming>, now: Instant) -> Option<Response<Body>> {
    let method = req.method();
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    let headers = req.headers();
    let plain = plain::is_plain(headers);
    if !plain
        && (rt.fwd.is_loop(headers, &rt.cfg.via_name)
            || forwarding::has_body(headers)
            || headers.contains_key(header::AUTHORIZATION))
    {
        return None;
    }
    let (host_hdr, pq) = request_target(req).ok()?;
    let obj = if rt.fwd.keyed.is_empty() {
        // The key is built in this thread's buffer: no allocation.
        HIT_KEY.with(|buf| match buf.try_borrow_mut() {
            Ok(mut k) => {
                let host_end = key::primary_key_into(&mut k, host_hdr, pq);
                stored(rt, &k, host_end, headers)
            }
            Err(_) => {
                let (k, host_end) = key::primary_key_of(host_hdr, pq);
                stored(rt, &k, host_end, headers)
            }
        })?
    } else {
        let t = target(req, &rt.fwd).ok()?;
        stored(rt, t.primary(), t.host_end, headers)?
    };
    let fresh = if plain {
        obj.is_fresh(now)
    } else {
        matches!(classify(&obj, headers), Freshness::Fresh)
    };
    if !fresh {
        return None;
    }
    rt.metrics.hit.inc();
    Some(serve_with_via(
        &obj,
        method,
        headers,
        plain,
        rt.fwd.via(),
        now,
    ))
}

thread_local! {
    /// The hit path's key buffer, reused by every hit on this thread.
    static HIT_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The object stored for a primary key (whose first `host_end` bytes are
/// the host), when the host is served.
fn stored(
    rt: &Runtime,
    primary: &str,
    host_end: usize,
    headers: &HeaderMap,
) -> Option<Arc<CachedObject>> {
    if !key::host_allowed(&rt.cfg.hosts, &primary[..host_end]) {
        return None;
    }
    let vkey = rt.store.variant_key(primary, headers);
    rt.store.get_hit(vkey.as_ref())
}

async fn handle_counted(
    rt: Arc<Runtime>,
    req: Request<Incoming>,
    peer: SocketAddr,
    start: Instant,
) -> Response<Body> {
    let span =
        tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), peer = %peer);
    let result = handle_inner(&rt, req, peer).instrument(span).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "request failed");
            error_response(&e)
        }
    };
    resp.headers_mut().append(header::VIA, rt.fwd.via().clone());
    rt.metrics.latency.observe(start.elapsed().as_secs_f64());
    resp
}

fn error_response(e: &ProxyError) -> Response<Body> {
    let status = match e {
        ProxyError::NoBackend => StatusCode::BAD_GATEWAY,
        ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ProxyError::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
        ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ProxyError::Loop => StatusCode::LOOP_DETECTED,
        ProxyError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::Upstream(UpstreamError::BodyTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        ProxyError::Upstream(UpstreamError::Build(_)) => StatusCode::BAD_REQUEST,
        ProxyError::Upstream(UpstreamError::Connect { .. }) => StatusCode::BAD_GATEWAY,
    };
    let mut resp = Response::new(body::full(format!("{}\n", e)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What identifies a request to the cache and the backends, in one string:
/// the primary key is the normalised host, the path and query, then the
/// keyed headers' values (if any are configured).
struct Target {
    primary: String,
    host_end: usize,
    pq_end: usize,
}

impl Target {
    fn host(&self) -> &str {
        &self.primary[..self.host_end]
    }

    /// Path and query, starting with `/`.
    fn pq(&self) -> &str {
        &self.primary[self.host_end..self.pq_end]
    }

    fn primary(&self) -> &str {
        &self.primary
    }
}

/// The request's Host (or its authority) and its path and query, checked:
/// the target is a path, without dot segments.
fn request_target(req: &Request<Incoming>) -> Result<(Option<&str>, &str), ProxyError> {
    let host_hdr = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if !pq.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be a path".into(),
        ));
    }
    if key::has_dot_segment(req.uri().path()) {
        return Err(ProxyError::BadRequest(
            "the path has a `.` or `..` segment".into(),
        ));
    }
    Ok((host_hdr, pq))
}

fn target(req: &Request<Incoming>, fwd: &Forwarding) -> Result<Target, ProxyError> {
    let (host_hdr, pq) = request_target(req)?;
    let (mut primary, host_end) = key::primary_key_of(host_hdr, pq);
    let pq_end = primary.len();
    if !fwd.keyed.is_empty() {
        // Keyed headers are sent on fills, so they are part of every key.
        primary = key::variant_key(&primary, &fwd.keyed, req.headers());
    }
    Ok(Target {
        primary,
        host_end,
        pq_end,
    })
}

async fn handle_inner(
    rt: &Arc<Runtime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    if rt.fwd.is_loop(req.headers(), &rt.cfg.via_name) {
        return Err(ProxyError::Loop);
    }
    let t = target(&req, &rt.fwd)?;
    if !key::host_allowed(&rt.cfg.hosts, t.host()) {
        return Err(ProxyError::UnknownHost);
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        // Its body would be dropped here and its framing would be the
        // backend's business: refuse rather than desync anything.
        if forwarding::has_body(req.headers()) {
            return Err(ProxyError::BadRequest(
                "GET and HEAD requests cannot have a body".into(),
            ));
        }
        get_or_head(rt, req, t, peer).await
    } else {
        pass(rt, req, t, peer).await
    }
}

/// Context of a cache fill, shareable with a background refresh.
struct FillCtx {
    pq: String,
    uri: Uri,
    primary: String,
    owner_key: String,
    /// headers sent upstream (the fill allow-list)
    upstream: HeaderMap,
    /// the client's headers (for Vary and the policy)
    client: HeaderMap,
}

impl FillCtx {
    fn new(
        t: &Target,
        parts: &http::request::Parts,
        peer: SocketAddr,
        fwd: &Forwarding,
    ) -> Result<Self, ProxyError> {
        let upstream = fwd.fill_headers(&parts.headers, t.host(), peer.ip());
        let uri: Uri = t
            .pq()
            .parse()
            .map_err(|_| ProxyError::BadRequest("bad path".into()))?;
        Ok(Self {
            pq: t.pq().to_string(),
            owner_key: key::owner_key(t.host(), uri.path()),
            uri,
            primary: t.primary().to_string(),
            upstream,
            client: parts.headers.clone(),
        })
    }
}

enum Freshness {
    Fresh,
    Grace,
    Revalidate,
}

fn classify(obj: &CachedObject, req: &HeaderMap) -> Freshness {
    let now = Instant::now();
    let plain = storability::request_is_plain(req);
    if plain {
        if obj.is_fresh(now) {
            return Freshness::Fresh;
        }
        if obj.in_grace(now) {
            return Freshness::Grace;
        }
        return Freshness::Revalidate;
    }
    if obj.is_fresh(now) && storability::satisfies(&obj.policy, &obj.uri, req, SystemTime::now()) {
        Freshness::Fresh
    } else {
        Freshness::Revalidate
    }
}

async fn get_or_head(
    rt: &Arc<Runtime>,
    req: Request<Incoming>,
    t: Target,
    peer: SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    let (parts, _ignored_body) = req.into_parts();
    let head = parts.method == Method::HEAD;

    if parts.headers.contains_key(header::AUTHORIZATION) {
        // Never share a lookup or a fetch with an authenticated request;
        // its response is stored only if the response allows it.
        let ctx = FillCtx::new(&t, &parts, peer, &rt.fwd)?;
        rt.metrics.miss.inc();
        return match fill(rt, &ctx, None, None).await? {
            Filled::Object(obj) => Ok(serve_object(&obj, &parts.method, &parts.headers, "MISS")),
            Filled::Stream(resp) => Ok(relay(resp, head, "MISS")),
        };
    }

    for _attempt in 0..3 {
        let vkey = rt.store.variant_key(t.primary(), &parts.headers);
        let mut stale = None;
        if let Some(obj) = rt.store.objects.get(vkey.as_ref()) {
            match classify(&obj, &parts.headers) {
                Freshness::Fresh => {
                    rt.metrics.hit.inc();
                    return Ok(serve_object(&obj, &parts.method, &parts.headers, "HIT"));
                }
                Freshness::Grace => {
                    rt.metrics.stale.inc();
                    if let Some(guard) = rt.inflight.try_lead(&vkey) {
                        let ctx = FillCtx::new(&t, &parts, peer, &rt.fwd)?;
                        let rt2 = rt.clone();
                        let old = obj.clone();
                        tokio::spawn(
                            async move {
                                let _guard = guard;
                                if let Err(e) = fill(&rt2, &ctx, Some(old), None).await {
                                    debug!(error = %e, "background refresh failed");
                                }
                            }
                            .instrument(tracing::debug_span!("refresh")),
                        );
                    }
                    return Ok(serve_object(&obj, &parts.method, &parts.headers, "STALE"));
                }
                Freshness::Revalidate => stale = Some(obj),
            }
        }
        if stale.is_none() && rt.store.is_pass(t.primary()) {
            return pass_get(rt, &parts, &t, peer).await;
        }
        match rt.inflight.join(&vkey) {
            Flight::Leader(guard) => {
                rt.metrics.miss.inc();
                let ctx = FillCtx::new(&t, &parts, peer, &rt.fwd)?;
                // A plain GET streams to its client while the copy for the
                // cache is taken; the guard goes with the body. Everything
                // else is answered from the buffered object.
                let streamable = parts.method == Method::GET
                    && !parts.headers.contains_key(header::RANGE)
                    && !conditional::is_conditional(&parts.headers);
                let (tee, guard) = if streamable {
                    (Some(guard), None)
                } else {
                    (None, Some(guard))
                };
                let out = fill(rt, &ctx, stale.clone(), tee).await;
                drop(guard);
                let out = match (out, stale) {
                    // No backend could revalidate: a stale copy beats an
                    // error (RFC 9111 §4.2.4), unless it must be revalidated.
                    (Err(e), Some(old)) if !storability::must_revalidate(&old.headers) => {
                        debug!(error = %e, "serving stale after fetch error");
                        rt.metrics.stale.inc();
                        return Ok(serve_object(&old, &parts.method, &parts.headers, "STALE"));
                    }
                    (out, _) => out,
                };
                return match out? {
                    Filled::Object(obj) => {
                        Ok(serve_object(&obj, &parts.method, &parts.headers, "MISS"))
                    }
                    Filled::Stream(resp) => Ok(relay(resp, head, "MISS")),
                };
            }
            Flight::Waiter(rx) => {
                rt.metrics.coalesced.inc();
                // A leader whose client reads slowly holds its flight as
                // long as its body streams: wait a bounded time only.
                if tokio::time::timeout(rt.cfg.timeouts.coalesce_wait, wait(rx))
                    .await
                    .is_err()
                {
                    debug!("coalesced fill is slow; fetching alone");
                    rt.metrics.coalesce_timeouts.inc();
                    break;
                }
            }
        }
    }
    // The key kept producing unstorable answers without a pass mark
    // (e.g. errors), or its flight was too slow: fetch on our own.
    rt.metrics.miss.inc();
    let ctx = FillCtx::new(&t, &parts, peer, &rt.fwd)?;
    match fill(rt, &ctx, None, None).await? {
        Filled::Object(obj) => Ok(serve_object(&obj, &parts.method, &parts.headers, "MISS")),
        Filled::Stream(resp) => Ok(relay(resp, head, "MISS")),
    }
}

struct Chain {
    resp: Response<Incoming>,
    backend: usize,
    all_fallback: bool,
    incomplete: bool,
}

fn drain(resp: Response<Incoming>) {
    tokio::spawn(async move {
        let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
    });
}

/// Ask backends in owner-first order until one answers with a status not in
/// `fallbackOn`. Errors and timeouts mark the backend down and count as a
/// fallback.
async fn fetch_chain(
    rt: &Runtime,
    method: &Method,
    pq: &str,
    headers: &HeaderMap,
    owner_key: &str,
    cond: Option<(&str, &HeaderMap)>,
) -> Result<Chain, ProxyError> {
    let n = rt.backends.len();
    let owner = rt
        .owners
        .get(owner_key)
        .and_then(|name| rt.backend_index(&name));
    if owner.is_some() {
        rt.metrics.owner_hits.inc();
    } else {
        rt.metrics.owner_misses.inc();
    }
    let order = backend_order(n, owner, |i| rt.backends[i].is_down());
    let mut incomplete = order.len() < n;
    let mut kept: Option<(Response<Incoming>, usize)> = None;
    let mut timed_out = false;
    for idx in order {
        let b = &rt.backends[idx];
        let mut h = headers.clone();
        if let Some((name, validators)) = cond
            && *b.name == *name
        {
            for (k, v) in validators {
                h.insert(k, v.clone());
            }
        }
        let uri = b.url.join(pq).map_err(UpstreamError::from)?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(body::empty())
            .map_err(UpstreamError::from)?;
        *req.headers_mut() = h;
        match upstream::send(&rt.client, b, req, rt.cfg.timeouts.response_header).await {
            Err(e) => {
                if b.record_failure(rt.cfg.backend_down_after, rt.cfg.backend_down_for) {
                    warn!(backend = %b.name, error = %e, "backend failed repeatedly; marking down");
                    if owner == Some(idx) {
                        rt.owners.invalidate(owner_key);
                    }
                } else {
                    warn!(backend = %b.name, error = %e, "backend failed");
                }
                incomplete = true;
                timed_out |= matches!(e, UpstreamError::Timeout { .. });
            }
            Ok(resp) => {
                b.mark_up();
                if rt.is_fallback(resp.status()) {
                    b.counters.fallbacks.inc();
                    if owner == Some(idx) {
                        rt.owners.invalidate(owner_key);
                    }
                    if let Some((old, _)) = kept.replace((resp, idx)) {
                        drain(old);
                    }
                    continue;
                }
                if owner != Some(idx) {
                    rt.owners.insert(owner_key.to_string(), b.name.clone());
                }
                if let Some((old, _)) = kept.take() {
                    drain(old);
                }
                return Ok(Chain {
                    resp,
                    backend: idx,
                    all_fallback: false,
                    incomplete,
                });
            }
        }
    }
    match kept {
        Some((resp, backend)) => Ok(Chain {
            resp,
            backend,
            all_fallback: true,
            incomplete,
        }),
        None if timed_out => Err(ProxyError::Timeout),
        None => Err(ProxyError::NoBackend),
    }
}

/// Relay an upstream response (already hop-stripped or not) to the client.
fn relay(resp: Response<Body>, head_only: bool, label: &'static str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    hop::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(&X_CACHE, HeaderValue::from_static(label));
    let body = if head_only { body::empty() } else { body };
    Response::from_parts(parts, body)
}

fn relay_incoming(
    resp: Response<Incoming>,
    head_only: bool,
    label: &'static str,
    idle: Duration,
) -> Response<Body> {
    let (parts, b) = resp.into_parts();
    relay(
        Response::from_parts(parts, body::stream_idle(b, idle)),
        head_only,
        label,
    )
}

/// GET/HEAD for a key known to be uncacheable: client headers (Range,
/// validators) go upstream, the answer streams back.
async fn pass_get(
    rt: &Runtime,
    parts: &http::request::Parts,
    t: &Target,
    peer: SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    rt.metrics.pass.inc();
    let headers = rt.fwd.pass_get_headers(&parts.headers, t.host(), peer.ip());
    let path = t.pq().split('?').next().unwrap_or("/");
    let okey = key::owner_key(t.host(), path);
    let chain = fetch_chain(rt, &parts.method, t.pq(), &headers, &okey, None).await?;
    Ok(relay_incoming(
        chain.resp,
        parts.method == Method::HEAD,
        "PASS",
        rt.cfg.timeouts.body_idle,
    ))
}

/// Methods other than GET/HEAD: to the `passTo` backend, streamed both ways.
async fn pass(
    rt: &Runtime,
    req: Request<Incoming>,
    t: Target,
    peer: SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    rt.metrics.pass.inc();
    let limit = rt.cfg.max_request_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > limit) {
        return Err(ProxyError::BodyTooLarge);
    }
    let (parts, incoming) = req.into_parts();
    let b = &rt.backends[rt.cfg.pass_to];
    let exceeded = Arc::new(AtomicBool::new(false));
    let has_body = forwarding::has_body(&parts.headers);
    let body = if has_body {
        body::boxed(LimitedBody::new(incoming, limit, exceeded.clone()))
    } else {
        body::empty()
    };
    let headers = rt
        .fwd
        .pass_headers(&parts.headers, t.host(), peer.ip(), has_body);
    let uri = b.url.join(t.pq()).map_err(UpstreamError::from)?;
    let mut up = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(UpstreamError::from)?;
    *up.headers_mut() = headers;
    match upstream::send(&rt.client, b, up, rt.cfg.timeouts.response_header).await {
        Ok(resp) => {
            if resp.status().is_success() || resp.status().is_redirection() {
                // RFC 9111 §4.4: invalidate after a successful unsafe request.
                rt.store.invalidate(t.primary(), &parts.headers);
            }
            Ok(relay_incoming(
                resp,
                false,
                "PASS",
                rt.cfg.timeouts.body_idle,
            ))
        }
        Err(_) if exceeded.load(Ordering::Relaxed) => Err(ProxyError::BodyTooLarge),
        Err(e @ UpstreamError::Timeout { .. }) => Err(e.into()),
        Err(e) => {
            warn!(backend = %b.name, error = %e, "pass-through failed");
            Err(ProxyError::NoBackend)
        }
    }
}

fn set_u64(h: &mut HeaderMap, name: HeaderName, v: u64) {
    h.insert(name, HeaderValue::from(v));
}

/// A hit answered from a stored object, with this proxy's Via added. A
/// request without Range and validators (always so when `plain`) gets a
/// clone of the object's prebuilt head with its Age set; others go
/// through `serve_object`.
fn serve_with_via(
    obj: &CachedObject,
    method: &Method,
    req: &HeaderMap,
    plain: bool,
    via: &HeaderValue,
    now: Instant,
) -> Response<Body> {
    let simple = plain || !(conditional::is_conditional(req) || req.contains_key(header::RANGE));
    if !simple || obj.head_via != *via {
        let mut resp = serve_object(obj, method, req, "HIT");
        resp.headers_mut().append(header::VIA, via.clone());
        return resp;
    }
    let mut h = obj.head.clone();
    // Age is already in the map (as is `X-Cache: HIT`): the value is
    // replaced in place, the map does not grow.
    h.insert(header::AGE, age::value(obj.age_secs_at(now)));
    let body = if *method == Method::HEAD {
        body::empty()
    } else {
        body::full(obj.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = obj.status;
    *resp.headers_mut() = h;
    resp
}

/// Answer from a stored object: conditional (304), Range (206/416), HEAD.
fn serve_object(
    obj: &CachedObject,
    method: &Method,
    req: &HeaderMap,
    label: &'static str,
) -> Response<Body> {
    let head = *method == Method::HEAD;
    let len = obj.body.len() as u64;
    let age = obj.age_secs();
    if obj.status.is_success()
        && conditional::is_conditional(req)
        && conditional::not_modified(req, &obj.headers)
    {
        let mut h = HeaderMap::new();
        for name in conditional::NOT_MODIFIED_HEADERS {
            for v in obj.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        set_u64(&mut h, header::AGE, age);
        h.insert(&X_CACHE, HeaderValue::from_static(label));
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.headers_mut() = h;
        return resp;
    }
    let mut h = obj.headers.clone();
    set_u64(&mut h, header::AGE, age);
    h.insert(&X_CACHE, HeaderValue::from_static(label));
    let mut status = obj.status;
    let mut body_bytes = obj.body.clone();
    if obj.status == StatusCode::OK
        && !head
        && conditional::if_range_allows(req, &obj.headers)
        && let Some(r) = req.get(header::RANGE).and_then(|v| v.to_str().ok())
    {
        {
            match range::parse_range(r, len) {
                RangeSpec::Satisfiable { start, end } => {
                    status = StatusCode::PARTIAL_CONTENT;
                    if let Ok(v) = HeaderValue::from_str(&range::content_range(start, end, len)) {
                        h.insert(header::CONTENT_RANGE, v);
                    }
                    let (s, e) = (
                        usize::try_from(start).unwrap_or(0),
                        usize::try_from(end).unwrap_or(0),
                    );
                    body_bytes = obj.body.slice(s..=e);
                }
                RangeSpec::Unsatisfiable => {
                    status = StatusCode::RANGE_NOT_SATISFIABLE;
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        h.insert(header::CONTENT_RANGE, v);
                    }
                    body_bytes = Bytes::new();
                }
                RangeSpec::Ignore => {}
            }
        }
    }
    set_u64(&mut h, header::CONTENT_LENGTH, body_bytes.len() as u64);
    let body = if head {
        body::empty()
    } else {
        body::full(body_bytes)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = h;
    resp
}
