//! Proxy header hygiene: hop-by-hop removal, `Via`, `X-Forwarded-For`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are always connection-specific (RFC 9110 §7.6.1 plus the
/// legacy `Proxy-*` and `Keep-Alive`).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    // Any other Proxy-* header is for this hop only as well.
    let proxy_named: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_named {
        headers.remove(name);
    }
}

/// Append `1.1 <name>` to `Via` (requests and responses).
pub fn add_via(headers: &mut HeaderMap, version: http::Version, name: &str) {
    let proto = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{proto} {name}")) {
        headers.append(header::VIA, v);
    }
}

/// Append the client address to `X-Forwarded-For` (one combined field).
pub fn add_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let value = if prior.is_empty() {
        client.to_string()
    } else {
        format!("{}, {}", prior.join(", "), client)
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("proxy-foo", HeaderValue::from_static("x"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        add_forwarded_for(&mut h, "10.0.0.1".parse().expect("ip"));
        add_forwarded_for(&mut h, "127.0.0.1".parse().expect("ip"));
        assert_eq!(
            h.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            Some("10.0.0.1, 127.0.0.1")
        );
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        h.insert("via", HeaderValue::from_static("1.0 other"));
        add_via(&mut h, http::Version::HTTP_11, "zetaback");
        let all: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], "1.1 zetaback");
    }
}
