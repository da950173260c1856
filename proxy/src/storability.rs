//! Cache storability and freshness rules (not a backup policy), delegated to `http-cache-semantics` (RFC 9111
//! shared-cache rules) with the proxy's own additions: never store
//! `Set-Cookie`, a default TTL when the origin gives no explicit freshness,
//! partial responses are never stored, and grace only where revalidation is
//! not mandatory.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy, RequestLike};

static GET: Method = Method::GET;

/// A request as the cache sees it: always GET (HEAD is filled with GET).
pub struct CacheRequest<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl RequestLike for CacheRequest<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.uri == other
    }
    fn method(&self) -> &Method {
        &GET
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

struct ResponseView<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
}

impl http_cache_semantics::ResponseLike for ResponseView<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    SetCookie,
    VaryStar,
    Partial,
    Refused,
    NoLifetime,
    TooLarge,
    /// The request had a Cookie and the response did not say `public` or
    /// `s-maxage` (it may be personalised).
    CookieRequest,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::Partial => "partial",
            NotStorable::Refused => "rfc9111",
            NotStorable::NoLifetime => "no-lifetime",
            NotStorable::TooLarge => "too-large",
            NotStorable::CookieRequest => "cookie-request",
        }
    }
}

/// Cache-control directive names present in the response.
fn cc_has(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case(directive)
        })
}

/// Whether the origin stated a freshness lifetime.
pub fn has_explicit_freshness(headers: &HeaderMap) -> bool {
    headers.contains_key(header::EXPIRES)
        || cc_has(headers, "max-age")
        || cc_has(headers, "s-maxage")
}

/// Whether a stale copy must not be served without revalidation.
pub fn must_revalidate(headers: &HeaderMap) -> bool {
    [
        "must-revalidate",
        "proxy-revalidate",
        "no-cache",
        "s-maxage",
    ]
    .iter()
    .any(|d| cc_has(headers, d))
}

/// Varnish's builtin rule: the answer to a request with a `Cookie` is
/// shared only when the response says so (`public` or `s-maxage`).
pub fn shareable_despite_cookie(req: &HeaderMap, resp: &HeaderMap) -> bool {
    !req.contains_key(header::COOKIE) || cc_has(resp, "public") || cc_has(resp, "s-maxage")
}

/// Request headers kept inside a policy: only what matching needs.
pub fn policy_request_headers(req: &HeaderMap, resp: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::PRAGMA,
    ] {
        for v in req.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(names) = crate::key::vary_names(resp) {
        for name in names {
            for v in req.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
    }
    out
}

/// The policy of a response. When the origin gave no explicit freshness,
/// `default_ttl` is applied by adding `max-age` to the policy's (not the
/// served) copy of the headers — except to redirects, which are stored
/// only with freshness of their own.
pub fn make_policy(
    uri: &Uri,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    default_ttl: Duration,
    now: SystemTime,
) -> CachePolicy {
    let preq = policy_request_headers(req_headers, resp_headers);
    let req = CacheRequest {
        uri,
        headers: &preq,
    };
    let opts = CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        immutable_min_time_to_live: default_ttl,
        ignore_cargo_cult: false,
    };
    if has_explicit_freshness(resp_headers) || status.is_redirection() {
        let res = ResponseView {
            status,
            headers: resp_headers,
        };
        return CachePolicy::new_options(&req, &res, now, opts);
    }
    let mut h = resp_headers.clone();
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", default_ttl.as_secs())) {
        h.append(header::CACHE_CONTROL, v);
    }
    let res = ResponseView {
        status,
        headers: &h,
    };
    CachePolicy::new_options(&req, &res, now, opts)
}

/// Decide whether to store a response; on success returns its time to live.
pub fn storable(
    policy: &CachePolicy,
    status: StatusCode,
    resp_headers: &HeaderMap,
    now: SystemTime,
) -> Result<Duration, NotStorable> {
    if resp_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStorable::Partial);
    }
    if crate::key::vary_names(resp_headers).is_none() {
        return Err(NotStorable::VaryStar);
    }
    if !policy.is_storable() {
        return Err(NotStorable::Refused);
    }
    let ttl = policy.time_to_live(now);
    if ttl.is_zero() {
        return Err(NotStorable::NoLifetime);
    }
    Ok(ttl)
}

/// Whether a request's own Cache-Control/Pragma let a fresh stored response
/// be used without asking the policy (the common, fast case).
pub fn request_is_plain(req: &HeaderMap) -> bool {
    !req.contains_key(header::CACHE_CONTROL) && !req.contains_key(header::PRAGMA)
}

/// Ask the policy whether a fresh stored response satisfies `req`.
pub fn satisfies(policy: &CachePolicy, uri: &Uri, req: &HeaderMap, now: SystemTime) -> bool {
    let r = CacheRequest { uri, headers: req };
    matches!(policy.before_request(&r, now), BeforeRequest::Fresh(_))
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

    fn decide(
        req: &[(&'static str, &'static str)],
        status: u16,
        resp: &[(&'static str, &'static str)],
    ) -> Result<Duration, NotStorable> {
        let uri: Uri = "/x".parse().expect("uri");
        let now = SystemTime::now();
        let status = StatusCode::from_u16(status).expect("status");
        let resp = hm(resp);
        let p = make_policy(&uri, &hm(req), status, &resp, Duration::from_secs(60), now);
        storable(&p, status, &resp, now)
    }

    #[test]
    fn default_ttl_applies_without_explicit_freshness() {
        assert_eq!(decide(&[], 200, &[]), Ok(Duration::from_secs(60)));
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=5")]),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=5, s-maxage=7")]),
            Ok(Duration::from_secs(7))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-store")]),
            Err(NotStorable::Refused)
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "private")]),
            Err(NotStorable::Refused)
        );
        assert_eq!(
            decide(&[], 200, &[("set-cookie", "a=b")]),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[
                    ("set-cookie", "a=b"),
                    ("cache-control", "public, max-age=60")
                ]
            ),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            decide(&[], 200, &[("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(decide(&[], 206, &[]), Err(NotStorable::Partial));
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=0")]),
            Err(NotStorable::NoLifetime)
        );
        assert_eq!(
            decide(&[], 200, &[("expires", "0")]),
            Err(NotStorable::NoLifetime)
        );
        assert_eq!(
            decide(&[("cache-control", "no-store")], 200, &[]),
            Err(NotStorable::Refused)
        );
    }

    #[test]
    fn authorization_needs_permission() {
        assert_eq!(
            decide(&[("authorization", "Basic x")], 200, &[]),
            Err(NotStorable::Refused)
        );
        assert!(
            decide(
                &[("authorization", "Basic x")],
                200,
                &[("cache-control", "public")]
            )
            .is_ok()
        );
        assert!(
            decide(
                &[("authorization", "Basic x")],
                200,
                &[("cache-control", "s-maxage=9")]
            )
            .is_ok()
        );
    }

    #[test]
    fn redirects_get_no_default_ttl() {
        for status in [301, 302, 303, 307, 308] {
            // 301/308 would be storable with a default TTL, the others are
            // not storable without explicit freshness at all.
            assert!(decide(&[], status, &[]).is_err(), "{status}");
        }
        assert_eq!(
            decide(&[], 301, &[("cache-control", "max-age=30")]),
            Ok(Duration::from_secs(30))
        );
    }

    #[test]
    fn cookie_requests_share_only_what_the_response_allows() {
        let cookie = hm(&[("cookie", "user=alice")]);
        assert!(!shareable_despite_cookie(&cookie, &HeaderMap::new()));
        assert!(!shareable_despite_cookie(
            &cookie,
            &hm(&[("cache-control", "max-age=60")])
        ));
        assert!(shareable_despite_cookie(
            &cookie,
            &hm(&[("cache-control", "public, max-age=60")])
        ));
        assert!(shareable_despite_cookie(
            &cookie,
            &hm(&[("cache-control", "s-maxage=60")])
        ));
        assert!(shareable_despite_cookie(
            &HeaderMap::new(),
            &HeaderMap::new()
        ));
    }

    #[test]
    fn not_found_is_storable() {
        assert!(decide(&[], 404, &[]).is_ok());
    }

    #[test]
    fn revalidation_flags() {
        assert!(must_revalidate(&hm(&[(
            "cache-control",
            "max-age=1, must-revalidate"
        )])));
        assert!(must_revalidate(&hm(&[("cache-control", "s-maxage=1")])));
        assert!(!must_revalidate(&hm(&[("cache-control", "max-age=1")])));
        assert!(has_explicit_freshness(&hm(&[("expires", "0")])));
        assert!(!has_explicit_freshness(&hm(&[("cache-control", "public")])));
    }

    #[test]
    fn request_no_cache_is_not_satisfied() {
        let uri: Uri = "/x".parse().expect("uri");
        let now = SystemTime::now();
        let p = make_policy(
            &uri,
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
            Duration::from_secs(60),
            now,
        );
        assert!(satisfies(&p, &uri, &HeaderMap::new(), now));
        assert!(!satisfies(
            &p,
            &uri,
            &hm(&[("cache-control", "no-cache")]),
            now
        ));
        assert!(!request_is_plain(&hm(&[("pragma", "no-cache")])));
    }
}
