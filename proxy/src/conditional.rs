//! Conditional requests answered from a stored response (RFC 9110 §13).

use http::header::{self, HeaderMap, HeaderName};
use std::time::SystemTime;

fn opaque(tag: &str) -> &str {
    let t = tag.trim();
    t.strip_prefix("W/").unwrap_or(t)
}

/// Weak comparison of an `If-None-Match` list against an entity tag.
pub fn etag_list_matches_weak(list: &str, etag: &str) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let want = opaque(etag);
    list.split(',').any(|t| opaque(t) == want)
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// True when a GET/HEAD with these request headers should get 304 for a
/// stored 200 response with these headers.
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let inm: Vec<&str> = req
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !inm.is_empty() {
        return match header_str(stored, header::ETAG) {
            Some(etag) => inm.iter().any(|l| etag_list_matches_weak(l, etag)),
            None => inm.iter().any(|l| l.trim() == "*"),
        };
    }
    if let (Some(ims), Some(lm)) = (
        header_str(req, header::IF_MODIFIED_SINCE).and_then(parse_date),
        header_str(stored, header::LAST_MODIFIED).and_then(parse_date),
    ) {
        return lm <= ims;
    }
    false
}

/// Whether the request carries any validator we evaluate.
pub fn is_conditional(req: &HeaderMap) -> bool {
    req.contains_key(header::IF_NONE_MATCH) || req.contains_key(header::IF_MODIFIED_SINCE)
}

/// `If-Range`: may the Range be honoured for this stored response?
pub fn if_range_allows(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(cond) = header_str(req, header::IF_RANGE) else {
        return true;
    };
    let cond = cond.trim();
    if cond.starts_with('"') || cond.starts_with("W/") {
        // strong comparison; weak tags never match
        return match header_str(stored, header::ETAG) {
            Some(etag) => {
                !cond.starts_with("W/") && !etag.trim().starts_with("W/") && etag.trim() == cond
            }
            None => false,
        };
    }
    match header_str(stored, header::LAST_MODIFIED) {
        Some(lm) => lm.trim() == cond,
        None => false,
    }
}

/// Headers kept on a 304 (RFC 9110 §15.4.5).
pub const NOT_MODIFIED_HEADERS: &[HeaderName] = &[
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn etags() {
        let stored = h(&[
            ("etag", "\"abc\""),
            ("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ]);
        assert!(not_modified(&h(&[("if-none-match", "\"abc\"")]), &stored));
        assert!(not_modified(&h(&[("if-none-match", "W/\"abc\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", \"abc\"")]),
            &stored
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&h(&[("if-none-match", "\"x\"")]), &stored));
        // If-None-Match wins over If-Modified-Since
        assert!(!not_modified(
            &h(&[
                ("if-none-match", "\"x\""),
                ("if-modified-since", "Wed, 01 Jan 2031 00:00:00 GMT")
            ]),
            &stored
        ));
    }

    #[test]
    fn dates() {
        let stored = h(&[("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")]);
        assert!(not_modified(
            &h(&[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Mon, 31 Dec 2029 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "garbage")]),
            &stored
        ));
        assert!(!not_modified(&HeaderMap::new(), &stored));
    }

    #[test]
    fn if_range() {
        let stored = h(&[
            ("etag", "\"abc\""),
            ("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ]);
        assert!(if_range_allows(&HeaderMap::new(), &stored));
        assert!(if_range_allows(&h(&[("if-range", "\"abc\"")]), &stored));
        assert!(!if_range_allows(&h(&[("if-range", "W/\"abc\"")]), &stored));
        assert!(!if_range_allows(&h(&[("if-range", "\"zzz\"")]), &stored));
        assert!(if_range_allows(
            &h(&[("if-range", "Tue, 01 Jan 2030 00:00:00 GMT")]),
            &stored
        ));
    }
}
