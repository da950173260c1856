//! Cache keys: Host + path/query, plus the values of the request headers a
//! response `Vary`s on.

use http::header::{HeaderMap, HeaderName};

/// Lower-cased Host header (port kept), or `""` when absent.
pub fn normalize_host(host: Option<&str>) -> String {
    host.map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// Host without the port, for matching the `hosts` list.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether a request for `host` is served given the configured list.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let bare = host_without_port(host);
    allowed.iter().any(|a| a.eq_ignore_ascii_case(bare))
}

/// Primary key: host and path with query. The path always starts with `/`,
/// and a host never contains one, so the concatenation is unambiguous.
pub fn primary_key(host: &str, path_and_query: &str) -> String {
    let mut k = String::with_capacity(host.len() + path_and_query.len());
    k.push_str(host);
    k.push_str(path_and_query);
    k
}

/// Primary key of a request in one allocation: `normalize_host(host)`
/// followed by the path and query; also the length of the host part.
pub fn primary_key_of(host: Option<&str>, path_and_query: &str) -> (String, usize) {
    let mut k = String::new();
    let host_end = primary_key_into(&mut k, host, path_and_query);
    (k, host_end)
}

/// [`primary_key_of`] written into `k` (cleared first; its capacity is
/// reused); returns the length of the host part.
pub fn primary_key_into(k: &mut String, host: Option<&str>, path_and_query: &str) -> usize {
    let host = host.map_or("", |h| h.trim().trim_end_matches('.'));
    k.clear();
    k.reserve(host.len() + path_and_query.len());
    k.push_str(host);
    k.make_ascii_lowercase();
    let host_end = k.len();
    k.push_str(path_and_query);
    host_end
}

/// Owner-cache key: host and path without the query (files live by path).
pub fn owner_key(host: &str, path: &str) -> String {
    primary_key(host, path)
}

/// Names listed in `Vary`, lower-cased and sorted; `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(s) = value.to_str() else {
            return None;
        };
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if part == "*" {
                return None;
            }
            match HeaderName::from_bytes(part.to_ascii_lowercase().as_bytes()) {
                Ok(n) => names.push(n),
                Err(_) => return None,
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Key of one variant: the primary key plus each Vary'd header's value(s).
pub fn variant_key(primary: &str, names: &[HeaderName], req: &HeaderMap) -> String {
    if names.is_empty() {
        return primary.to_string();
    }
    let mut k = String::from(primary);
    for name in names {
        k.push('\0');
        k.push_str(name.as_str());
        k.push('=');
        if *name == http::header::ACCEPT_ENCODING {
            // What a fill sends (`gzip` or nothing), not the client's spelling.
            k.push_str(crate::encoding::key_value(req));
            continue;
        }
        let mut first = true;
        for v in req.get_all(name) {
            if !first {
                k.push(',');
            }
            first = false;
            k.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    k
}

/// Whether a request path has a `.` or `..` segment, also when spelled
/// with percent-encoding (`%2e`, `%2f`), a backslash or a `;parameter`:
/// joined to a backend prefix it could leave that prefix (nginx and most
/// servers decode and resolve them). Browsers never send them.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') {
        // The common case: no allocation, and a dot segment needs a dot
        // at the start or right after a separator.
        return dot_starts_a_segment(bytes) && dots_in_segments(bytes);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            decoded.push(u8::try_from(h * 16 + l).unwrap_or(0));
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    dots_in_segments(&decoded)
}

fn dot_starts_a_segment(path: &[u8]) -> bool {
    path.first() == Some(&b'.')
        || path
            .windows(2)
            .any(|w| (w[0] == b'/' || w[0] == b'\\') && w[1] == b'.')
}

fn dots_in_segments(path: &[u8]) -> bool {
    path.split(|&b| b == b'/' || b == b'\\')
        .map(|seg| seg.split(|&b| b == b';').next().unwrap_or(seg))
        .any(|seg| seg == b"." || seg == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// The quick pre-check never hides a dot segment the full split finds.
        #[test]
        fn the_precheck_agrees_with_the_segment_split(path in "[/\\\\.;ab]{0,12}") {
            prop_assert_eq!(has_dot_segment(&path), dots_in_segments(path.as_bytes()));
        }
    }

    #[test]
    fn dot_segments_in_any_spelling() {
        for p in [
            "/..",
            "/../x",
            "/a/./b",
            "/a/..",
            "/%2e%2e/x",
            "/.%2E/x",
            "/a/..%2fx",
            "/a/%2E",
            "/a\\..\\x",
            "/..;/x",
            "/a/.;p/b",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/",
            "/a.b",
            "/..a/x",
            "/a/...",
            "/%2e%2ex",
            "/x%2",
            "/x%",
            "/.well-known/a",
            "/a/b.",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host(Some("Example.COM.")), "example.com");
        assert_eq!(normalize_host(None), "");
        assert_eq!(host_without_port("a.b:8080"), "a.b");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert!(host_allowed(&[], "x"));
        assert!(host_allowed(&["A.b".into()], "a.b:81"));
        assert!(!host_allowed(&["a.b".into()], "c.d"));
    }

    #[test]
    fn primary_key_of_is_the_normalised_host_and_the_path() {
        for (host, pq) in [
            (Some(" Example.COM. "), "/a?b"),
            (Some("a.b:8080"), "/"),
            (Some(""), "/x"),
            (None, "/x?y=Z"),
            (Some("ÄB.c"), "/Upper/Case"),
        ] {
            let (k, host_end) = primary_key_of(host, pq);
            let want = normalize_host(host);
            assert_eq!(k, primary_key(&want, pq), "{host:?} {pq}");
            assert_eq!(&k[..host_end], want, "{host:?}");
            // Into a reused buffer holding a longer key: the same key.
            let mut buf = String::from("previous.example.com/a/much/longer/path?q=1");
            assert_eq!(primary_key_into(&mut buf, host, pq), host_end);
            assert_eq!(buf, k);
        }
    }

    #[test]
    fn keys_separate_hosts_and_queries() {
        assert_ne!(primary_key("a", "/x"), primary_key("b", "/x"));
        assert_ne!(primary_key("a", "/x?1"), primary_key("a", "/x?2"));
        assert_eq!(owner_key("a", "/x"), "a/x");
    }

    #[test]
    fn vary_parsing_and_variants() {
        let mut resp = HeaderMap::new();
        resp.append(
            "vary",
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        resp.append("vary", HeaderValue::from_static("accept-encoding"));
        let names = vary_names(&resp).expect("not star");
        assert_eq!(names.len(), 2);
        let mut r1 = HeaderMap::new();
        r1.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let mut r2 = HeaderMap::new();
        r2.insert("accept-encoding", HeaderValue::from_static("br"));
        assert_ne!(variant_key("p", &names, &r1), variant_key("p", &names, &r2));
        assert_eq!(variant_key("p", &[], &r1), "p");
        // Accept-Encoding is keyed by what a fill sends: gzip or nothing.
        let ae = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_static(v));
            variant_key("p", &names, &h)
        };
        assert_eq!(ae("gzip, deflate, br"), ae("gzip"));
        assert_eq!(ae("br"), variant_key("p", &names, &HeaderMap::new()));
        assert_ne!(ae("gzip"), ae("br"));
        resp.insert("vary", HeaderValue::from_static("*"));
        assert!(vary_names(&resp).is_none());
    }
}
