//! Plain requests: a GET/HEAD whose headers hold nothing the cache-hit path
//! has to read (no body framing, credentials, Via, cache directives,
//! validators or ranges). One pass over the request's header names answers
//! what would otherwise take a hashed lookup per header; a request that is
//! not plain is not refused, it only takes the checks one by one.

use http::header::{self, HeaderMap, HeaderName};

/// Request headers that make a GET/HEAD more than a plain fetch.
const NOT_PLAIN: [HeaderName; 11] = [
    header::VIA,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::RANGE,
    header::IF_RANGE,
];

/// Whether the request carries none of [`NOT_PLAIN`]. When true: not a
/// loop, no body, no Authorization, `storability::request_is_plain`, not
/// conditional, no Range (the unit test checks each against its own
/// function).
pub fn is_plain(headers: &HeaderMap) -> bool {
    headers.keys().all(|name| !NOT_PLAIN.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarding::{self, Forwarding};
    use crate::{conditional, storability};
    use http::HeaderValue;

    fn hm(pairs: &[(&str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
        }
        m
    }

    /// Every property the hit path skips checking for a plain request.
    fn needs_the_full_checks(h: &HeaderMap, fwd: &Forwarding) -> bool {
        fwd.is_loop(h, "zetaback")
            || forwarding::has_body(h)
            || h.contains_key(header::AUTHORIZATION)
            || !storability::request_is_plain(h)
            || conditional::is_conditional(h)
            || h.contains_key(header::RANGE)
    }

    #[test]
    fn plain_means_every_individual_check_is_negative() {
        let fwd = Forwarding::new(&[], &[], "zetaback").expect("forwarding");
        let browser = [
            ("host", "example.com"),
            ("user-agent", "Mozilla/5.0"),
            ("accept", "text/html"),
            ("accept-encoding", "gzip, br"),
            ("accept-language", "fr"),
            ("cookie", "a=b"),
            ("referer", "https://example.com/"),
            ("x-forwarded-for", "10.0.0.1"),
        ];
        assert!(is_plain(&hm(&[])));
        assert!(is_plain(&hm(&browser)));
        assert!(!needs_the_full_checks(&hm(&browser), &fwd));
        let triggers = [
            ("via", "1.1 zetaback"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("authorization", "Basic eDp5"),
            ("cache-control", "no-cache"),
            ("pragma", "no-cache"),
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("if-match", "\"x\""),
            ("range", "bytes=0-1"),
            ("if-range", "\"x\""),
        ];
        for t in triggers {
            let mut pairs = browser.to_vec();
            pairs.insert(3, t);
            let h = hm(&pairs);
            assert!(!is_plain(&h), "{t:?} must not be plain");
        }
        // Each header some check reads makes the request not plain.
        for t in triggers {
            let h = hm(&[t]);
            if needs_the_full_checks(&h, &fwd) {
                assert!(!is_plain(&h), "{t:?}");
            }
        }
    }

    #[test]
    fn plain_requests_never_need_the_full_checks() {
        let fwd = Forwarding::new(&[], &[], "zetaback").expect("forwarding");
        // Every header name any check reads, plus harmless ones, in all
        // subsets of up to two.
        let names = [
            ("via", "1.1 zetaback"),
            ("content-length", "0"),
            ("content-length", "7"),
            ("transfer-encoding", "chunked"),
            ("authorization", "x"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
            ("if-none-match", "*"),
            ("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("range", "bytes=0-0"),
            ("accept", "*/*"),
            ("cookie", "c=1"),
        ];
        for a in names {
            for b in names {
                let h = hm(&[a, b]);
                if is_plain(&h) {
                    assert!(!needs_the_full_checks(&h, &fwd), "{a:?} {b:?}");
                }
            }
        }
    }
}
