//! Cache fills: fetch a GET for the cache (the leader of a flight, or a
//! background refresh), decide whether the answer is stored, and store it —
//! streamed to the leader's client while a copy is taken, or buffered.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::warn;

use super::{FillCtx, Runtime, fetch_chain};
use crate::body::{self, Body, IdleTimeoutBody, PrefixedBody, TeeBody};
use crate::cache::{CachedObject, LeaderGuard, X_CACHE};
use crate::error::ProxyError;
use crate::hop;
use crate::storability::{self, NotStorable};

/// Result of a fill: a stored (or storable) object, or a response to stream.
pub(super) enum Filled {
    Object(Arc<CachedObject>),
    Stream(Response<Body>),
}

/// Everything a stored object needs but its body.
struct Storable {
    status: StatusCode,
    headers: HeaderMap,
    policy: http_cache_semantics::CachePolicy,
    backend: Arc<str>,
    ttl: Duration,
    grace: Duration,
    keep: Duration,
    now: SystemTime,
    /// Vary'd header names the fill sent (the variant key).
    vary: Vec<HeaderName>,
    /// This proxy's Via value (part of the object's prebuilt head).
    via: HeaderValue,
}

impl Storable {
    /// The object with its body, and the Vary'd names of its variant key.
    fn object(self, primary: &str, uri: http::Uri, body: Bytes) -> (CachedObject, Vec<HeaderName>) {
        let obj = CachedObject::new(
            primary.len(),
            self.status,
            self.headers,
            body,
            self.policy,
            uri,
            Some(self.backend),
            self.ttl,
            self.grace,
            self.keep,
            self.now,
            &self.via,
        );
        (obj, self.vary)
    }
}

/// Deep copy of a header map. Values parsed by hyper share its read
/// buffer; storing them would pin whole buffers in the cache.
fn compact_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let mut copy = match HeaderValue::from_bytes(v.as_bytes()) {
            Ok(c) => c,
            Err(_) => continue,
        };
        copy.set_sensitive(v.is_sensitive());
        out.append(k.clone(), copy);
    }
    out
}

/// The backend and conditional headers to revalidate a stale copy with.
fn revalidation(stale: Option<&CachedObject>) -> Option<(Arc<str>, HeaderMap)> {
    let o = stale?;
    let backend = o.backend.clone()?;
    if !o.status.is_success() {
        return None;
    }
    let mut h = HeaderMap::new();
    if let Some(etag) = o.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = o.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    (!h.is_empty()).then_some((backend, h))
}

fn grace_for(rt: &Runtime, headers: &HeaderMap) -> Duration {
    if storability::must_revalidate(headers) {
        Duration::ZERO
    } else {
        rt.cfg.cache.grace
    }
}

fn stream(rt: &Runtime, parts: http::response::Parts, incoming: Incoming) -> Filled {
    Filled::Stream(Response::from_parts(
        parts,
        body::stream_idle(incoming, rt.cfg.timeouts.body_idle),
    ))
}

/// Fetch a GET for the cache.
pub(super) async fn fill(
    rt: &Runtime,
    ctx: &FillCtx,
    stale: Option<Arc<CachedObject>>,
    tee: Option<LeaderGuard>,
) -> Result<Filled, ProxyError> {
    let cond = revalidation(stale.as_deref());
    let chain = fetch_chain(
        rt,
        &Method::GET,
        &ctx.pq,
        &ctx.upstream,
        &ctx.owner_key,
        cond.as_ref().map(|(b, h)| (&**b, h)),
    )
    .await?;
    let now = SystemTime::now();
    let backend = rt.backends[chain.backend].name.clone();
    let (mut parts, incoming) = chain.resp.into_parts();
    hop::strip_hop_by_hop(&mut parts.headers);
    parts.headers = compact_headers(&parts.headers);
    let client_headers = compact_headers(&storability::policy_request_headers(
        &ctx.client,
        &parts.headers,
    ));

    if parts.status == StatusCode::NOT_MODIFIED {
        return Ok(
            match stale.filter(|o| o.backend.as_deref() == Some(&*backend)) {
                Some(old) => {
                    refreshed(rt, ctx, &old, &parts.headers, backend, &client_headers, now)
                }
                None => {
                    // A 304 we did not ask for: relay it.
                    parts
                        .headers
                        .insert(&X_CACHE, HeaderValue::from_static("MISS"));
                    stream(rt, parts, incoming)
                }
            },
        );
    }

    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let facts = Facts {
        all_fallback: chain.all_fallback,
        incomplete: chain.incomplete,
        content_length,
        now,
    };
    let Some(stored) = decide(rt, ctx, &parts, &client_headers, backend, &facts) else {
        return Ok(stream(rt, parts, incoming));
    };
    match tee {
        Some(guard) => Ok(tee_into_store(
            rt,
            ctx,
            parts,
            incoming,
            content_length,
            stored,
            guard,
        )),
        None => buffer_into_store(rt, ctx, parts, incoming, stored).await,
    }
}

/// A 304 for the stale copy we revalidated: its headers updated, stored
/// again when still storable.
fn refreshed(
    rt: &Runtime,
    ctx: &FillCtx,
    old: &CachedObject,
    update: &HeaderMap,
    backend: Arc<str>,
    client_headers: &HeaderMap,
    now: SystemTime,
) -> Filled {
    let mut headers = old.headers.clone();
    for name in update.keys() {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        headers.remove(name);
        for v in update.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    headers.remove(header::AGE);
    let cache_cfg = &rt.cfg.cache;
    let policy = storability::make_policy(
        &ctx.uri,
        client_headers,
        old.status,
        &headers,
        cache_cfg.default_ttl,
        now,
    );
    let decision = storability::storable(&policy, old.status, &headers, now);
    let stored = Storable {
        status: old.status,
        grace: grace_for(rt, &headers),
        vary: rt.vary_sent(&headers),
        headers,
        policy,
        backend,
        ttl: decision.unwrap_or(Duration::ZERO),
        keep: cache_cfg.keep,
        now,
        via: rt.fwd.via().clone(),
    };
    let (obj, vary) = stored.object(&ctx.primary, ctx.uri.clone(), old.body.clone());
    if decision.is_ok() {
        return Filled::Object(rt.store.insert(&ctx.primary, &ctx.client, vary, obj));
    }
    rt.store
        .objects
        .invalidate(rt.store.variant_key(&ctx.primary, &ctx.client).as_ref());
    Filled::Object(Arc::new(obj))
}

/// What the chain and the response head say besides the headers.
struct Facts {
    all_fallback: bool,
    incomplete: bool,
    content_length: Option<u64>,
    now: SystemTime,
}

/// Whether the answer is stored, and how; `None` to stream it uncached
/// (counted, and its key marked pass when the response is the reason).
fn decide(
    rt: &Runtime,
    ctx: &FillCtx,
    parts: &http::response::Parts,
    client_headers: &HeaderMap,
    backend: Arc<str>,
    facts: &Facts,
) -> Option<Storable> {
    let cache_cfg = &rt.cfg.cache;
    let default_ttl = if facts.all_fallback {
        cache_cfg.not_found_ttl
    } else {
        cache_cfg.default_ttl
    };
    let policy = storability::make_policy(
        &ctx.uri,
        client_headers,
        parts.status,
        &parts.headers,
        default_ttl,
        facts.now,
    );
    let mut decision = storability::storable(&policy, parts.status, &parts.headers, facts.now);
    if decision.is_ok() && !storability::shareable_despite_cookie(&ctx.client, &parts.headers) {
        decision = Err(NotStorable::CookieRequest);
    }
    if decision.is_ok()
        && facts
            .content_length
            .is_some_and(|l| l > rt.store.max_object_size)
    {
        decision = Err(NotStorable::TooLarge);
    }
    let ttl = match decision {
        // A "not found" while some backend could not be asked is not a fact.
        Ok(_) if facts.incomplete && facts.all_fallback => {
            rt.metrics.not_stored("backend-down");
            return None;
        }
        Ok(ttl) => ttl,
        Err(reason) => {
            rt.metrics.not_stored(reason.as_str());
            if !facts.all_fallback && marks_pass(reason, &ctx.client, parts.status) {
                rt.store.mark_pass(&ctx.primary);
            }
            return None;
        }
    };
    let mut headers = parts.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::AGE);
    Some(Storable {
        status: parts.status,
        grace: grace_for(rt, &headers),
        vary: rt.vary_sent(&headers),
        headers,
        policy,
        backend,
        ttl,
        keep: cache_cfg.keep,
        now: facts.now,
        via: rt.fwd.via().clone(),
    })
}

/// Stream to the leader's client while a copy is taken; stored when the
/// body completes within `maxObjectSize`, the key passed when it grows
/// past it. The coalescing guard goes with the body.
fn tee_into_store(
    rt: &Runtime,
    ctx: &FillCtx,
    parts: http::response::Parts,
    incoming: Incoming,
    content_length: Option<u64>,
    stored: Storable,
    guard: LeaderGuard,
) -> Filled {
    let store = rt.store.clone();
    let store2 = rt.store.clone();
    let metrics = rt.metrics.clone();
    let primary = ctx.primary.clone();
    let primary2 = ctx.primary.clone();
    let client = ctx.client.clone();
    let uri = ctx.uri.clone();
    let on_complete: crate::body::OnComplete = Box::new(move |body: Bytes| {
        let (obj, vary) = stored.object(&primary, uri, body);
        store.insert(&primary, &client, vary, obj);
    });
    let on_overflow: crate::body::OnOverflow = Box::new(move || {
        metrics.not_stored(NotStorable::TooLarge.as_str());
        store2.mark_pass(&primary2);
    });
    let metrics = rt.metrics.clone();
    let on_no_room: crate::body::OnOverflow = Box::new(move || {
        metrics.not_stored(FILL_BUDGET_FULL);
    });
    let body = TeeBody::new(
        incoming,
        content_length,
        rt.store.max_object_size,
        on_complete,
        on_overflow,
        Box::new(guard),
    )
    .with_budget(&rt.fill_budget, on_no_room);
    let body = IdleTimeoutBody::new(body.boxed(), rt.cfg.timeouts.body_idle);
    Filled::Stream(Response::from_parts(parts, body::boxed(body)))
}

/// Buffer up to `maxObjectSize` and store; beyond that stream what was
/// read plus the rest, and pass the key.
async fn buffer_into_store(
    rt: &Runtime,
    ctx: &FillCtx,
    parts: http::response::Parts,
    mut incoming: Incoming,
    stored: Storable,
) -> Result<Filled, ProxyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size: u64 = 0;
    let mut reservation = rt.fill_budget.reserve(0);
    let frame_timeout = rt.cfg.timeouts.response_header;
    loop {
        let frame = match tokio::time::timeout(frame_timeout, incoming.frame()).await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                warn!(backend = %stored.backend, error = %e, "upstream body failed");
                return Err(ProxyError::NoBackend);
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            chunks.push(data);
            // Over the budget of all fills: this one streams through, and the key stays
            // cacheable (memory is short now, the answer is not uncacheable).
            if !reservation.as_mut().is_some_and(|r| r.grow_to(size)) {
                rt.metrics.not_stored(FILL_BUDGET_FULL);
                let body = PrefixedBody::new(chunks, incoming).boxed();
                let body = body::boxed(IdleTimeoutBody::new(body, rt.cfg.timeouts.body_idle));
                return Ok(Filled::Stream(Response::from_parts(parts, body)));
            }
            if size > rt.store.max_object_size {
                rt.metrics.not_stored(NotStorable::TooLarge.as_str());
                rt.store.mark_pass(&ctx.primary);
                let body = PrefixedBody::new(chunks, incoming).boxed();
                let body = body::boxed(IdleTimeoutBody::new(body, rt.cfg.timeouts.body_idle));
                return Ok(Filled::Stream(Response::from_parts(parts, body)));
            }
        }
    }
    // Always copy into one exact-size buffer: received chunks are slices of
    // the connection's read buffer.
    let mut b = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    for c in chunks {
        b.extend_from_slice(&c);
    }
    let (obj, vary) = stored.object(&ctx.primary, ctx.uri.clone(), b.freeze());
    Ok(Filled::Object(rt.store.insert(
        &ctx.primary,
        &ctx.client,
        vary,
        obj,
    )))
}

/// The `not_stored` reason of a fill that found no room in `cache.maxFillBytes`.
const FILL_BUDGET_FULL: &str = "fill-budget";

/// Whether an unstorable answer should send this key straight to the
/// backends for a while (hit-for-pass). Only for reasons the response
/// itself gives, not the request or a transient error: a request with
/// credentials (one junk `Authorization`, a `Cookie`) never marks a key
/// uncacheable for everyone.
fn marks_pass(reason: NotStorable, req: &HeaderMap, status: StatusCode) -> bool {
    if req.contains_key(header::AUTHORIZATION) || req.contains_key(header::COOKIE) {
        return false;
    }
    match reason {
        NotStorable::CookieRequest => false,
        NotStorable::SetCookie
        | NotStorable::VaryStar
        | NotStorable::TooLarge
        | NotStorable::Partial => true,
        NotStorable::NoLifetime | NotStorable::Refused => {
            storability::request_is_plain(req) && !status.is_server_error()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn only_the_response_marks_a_key_pass() {
        let ok = StatusCode::OK;
        assert!(marks_pass(NotStorable::SetCookie, &HeaderMap::new(), ok));
        assert!(marks_pass(NotStorable::Refused, &HeaderMap::new(), ok));
        assert!(!marks_pass(
            NotStorable::Refused,
            &HeaderMap::new(),
            StatusCode::BAD_GATEWAY
        ));
        for req in [
            hm(&[("authorization", "Basic junk")]),
            hm(&[("cookie", "a=b")]),
        ] {
            for reason in [
                NotStorable::SetCookie,
                NotStorable::Refused,
                NotStorable::NoLifetime,
                NotStorable::TooLarge,
            ] {
                assert!(!marks_pass(reason, &req, ok), "{reason:?} {req:?}");
            }
        }
        assert!(!marks_pass(
            NotStorable::CookieRequest,
            &HeaderMap::new(),
            ok
        ));
        assert!(!marks_pass(
            NotStorable::NoLifetime,
            &hm(&[("cache-control", "no-cache")]),
            ok
        ));
    }
}
