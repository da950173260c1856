//! The headers a request carries upstream, built from an allow-list rather
//! than from the client's headers minus a deny-list: a cache fill sends only
//! what the cache key accounts for, so nothing the client adds can change
//! the answer stored for other clients.
//!
//! - Fills (GET/HEAD for the cache) send Host (the host of the cache key),
//!   the content-negotiation and credential headers in [`FILL_ALLOW`]
//!   (`Accept-Encoding` normalised to `gzip` or nothing, see [`encoding`]),
//!   and the configured keyed headers. The client's own descriptions of itself
//!   ([`UNKEYED_CLIENT`]: User-Agent, Referer, Origin) are not sent unless
//!   keyed: a backend may answer per browser, page or site without saying
//!   `Vary`, and one client's answer would be stored for everyone — never a body header (`Content-Length`,
//!   `Transfer-Encoding`, `Expect`), which on a bodiless request would
//!   desync the pooled connection (0.CL request smuggling).
//! - Pass-through of a GET/HEAD adds the conditional and Range headers.
//! - Other methods send the client's end-to-end headers, minus hop-by-hop
//!   and the unkeyed forwarding headers in [`UNKEYED_FORWARDING`].
//! - The client's `Connection` header can remove only headers that are not
//!   allow-listed: Host, Authorization, Cookie, Content-Length and every
//!   header the cache key may use are never stripped on a client's say-so.
//! - `X-Forwarded-For` is the socket peer's address, appended to the
//!   client's value only when the peer is a trusted proxy.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::encoding;
use crate::error::ConfigError;

/// Request headers sent on cache fills besides Host and the keyed headers.
/// Their values are the same the cache key sees (a Vary'd header among
/// them is keyed by what was sent).
pub const FILL_ALLOW: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::COOKIE,
    header::PRAGMA,
];

/// Headers that describe the client (its software, the page it came from,
/// the site that made the request): backends answer differently on them
/// (mobile pages, hotlink protection, CORS) often without `Vary`. Not sent
/// on fills unless listed in `keyedHeaders` (then sent and keyed); sent on
/// requests passed through, whose answers are not stored.
pub const UNKEYED_CLIENT: &[HeaderName] = &[header::ORIGIN, header::REFERER, header::USER_AGENT];

/// Added for a GET/HEAD passed through (its answer is not stored).
pub const PASS_GET_ALLOW: &[HeaderName] = &[
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Headers that make a backend answer differently without being part of
/// the cache key: dropped unless configured as keyed headers.
pub const UNKEYED_FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers a client's `Connection` list never removes.
const PROTECTED: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    header::CONTENT_LENGTH,
];

/// Framing headers that must not reach a backend on a bodiless request.
const BODY_FRAMING: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::EXPECT,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the proxy forwards, from the configuration.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Headers forwarded on fills and made part of the cache key.
    pub keyed: Vec<HeaderName>,
    trusted: Vec<IpNet>,
    /// Our `Via` entry, e.g. `1.1 zetaback`.
    via: HeaderValue,
}

impl Forwarding {
    /// Parse the configured keyed headers, trusted proxies and Via name.
    pub fn new(keyed: &[String], trusted: &[String], via_name: &str) -> Result<Self, ConfigError> {
        let mut keyed_names = Vec::with_capacity(keyed.len());
        for k in keyed {
            let name = HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("keyedHeaders: bad name {k:?}")))?;
            if is_framing_or_hop(&name) || name == header::HOST {
                return Err(ConfigError::Invalid(format!(
                    "keyedHeaders: {k:?} cannot be keyed (hop-by-hop, framing or Host)"
                )));
            }
            if !keyed_names.contains(&name) {
                keyed_names.push(name);
            }
        }
        keyed_names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let trusted = trusted
            .iter()
            .map(|t| parse_net(t))
            .collect::<Result<Vec<_>, _>>()?;
        let via = HeaderValue::from_str(&format!("1.1 {via_name}")).map_err(|_| {
            ConfigError::Invalid(format!("viaName {via_name:?} is not a header value"))
        })?;
        if via_name.is_empty() || via_name.contains([' ', ',', '\t']) {
            return Err(ConfigError::Invalid(format!(
                "viaName {via_name:?} must be one token"
            )));
        }
        Ok(Self {
            keyed: keyed_names,
            trusted,
            via,
        })
    }

    /// Our `Via` entry.
    pub fn via(&self) -> &HeaderValue {
        &self.via
    }

    /// Whether a response's Vary'd header name is something a fill sends
    /// (anything else the backend never saw, so it cannot vary on it).
    pub fn sent_on_fill(&self, name: &HeaderName) -> bool {
        FILL_ALLOW.contains(name) || self.keyed.contains(name)
    }

    /// Headers of a cache fill: Host of the key, allow-listed and keyed
    /// headers as the client sent them, Via, X-Forwarded-For.
    pub fn fill_headers(&self, client: &HeaderMap, host: &str, peer: IpAddr) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(FILL_ALLOW.len() + 4);
        if !host.is_empty()
            && let Ok(v) = HeaderValue::from_str(host)
        {
            out.insert(header::HOST, v);
        }
        for name in FILL_ALLOW.iter().chain(self.keyed.iter()) {
            if *name == header::ACCEPT_ENCODING {
                // `gzip` or nothing, and keyed so whenever the answer is coded.
                if let Some(v) = encoding::fill_value(client) {
                    out.insert(header::ACCEPT_ENCODING, v.clone());
                }
                continue;
            }
            for v in client.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        self.add_via_and_xff(client, &mut out, peer);
        out
    }

    /// Headers of a GET/HEAD passed through: a fill's plus Range, the
    /// conditional headers and the client's description of itself.
    pub fn pass_get_headers(&self, client: &HeaderMap, host: &str, peer: IpAddr) -> HeaderMap {
        let mut out = self.fill_headers(client, host, peer);
        // Not stored: the client's own Accept-Encoding, as it came.
        out.remove(header::ACCEPT_ENCODING);
        let unkeyed = UNKEYED_CLIENT.iter().filter(|n| !self.keyed.contains(n));
        let accept_encoding = std::slice::from_ref(&header::ACCEPT_ENCODING);
        for name in PASS_GET_ALLOW.iter().chain(unkeyed).chain(accept_encoding) {
            for v in client.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        out
    }

    /// Headers of another method (streamed to `passTo`): the client's
    /// end-to-end headers without hop-by-hop and unkeyed forwarding
    /// headers; body framing only when there is a body.
    pub fn pass_headers(
        &self,
        client: &HeaderMap,
        host: &str,
        peer: IpAddr,
        has_body: bool,
    ) -> HeaderMap {
        let listed = connection_listed(client);
        let mut out = HeaderMap::with_capacity(client.len() + 2);
        for (name, v) in client {
            let drop = is_framing_or_hop(name)
                || name == header::HOST
                || name == header::VIA
                || *name == X_FORWARDED_FOR
                || (UNKEYED_FORWARDING.contains(&name.as_str()) && !self.keyed.contains(name))
                || (listed.contains(name) && !PROTECTED.contains(name));
            if !drop {
                out.append(name.clone(), v.clone());
            }
        }
        if has_body {
            // Content-Length is kept (hyper checked it against the body);
            // a chunked body is re-framed by the client connection.
            for v in client.get_all(header::CONTENT_LENGTH) {
                out.append(header::CONTENT_LENGTH, v.clone());
            }
        }
        if !host.is_empty()
            && let Ok(v) = HeaderValue::from_str(host)
        {
            out.insert(header::HOST, v);
        }
        self.add_via_and_xff(client, &mut out, peer);
        out
    }

    fn add_via_and_xff(&self, client: &HeaderMap, out: &mut HeaderMap, peer: IpAddr) {
        for v in client.get_all(header::VIA) {
            out.append(header::VIA, v.clone());
        }
        out.append(header::VIA, self.via.clone());
        if let Some(v) = self.forwarded_for(client, peer) {
            out.insert(X_FORWARDED_FOR.clone(), v);
        }
    }

    /// `X-Forwarded-For` to send: the peer, after the client's value only
    /// when the peer is trusted.
    pub fn forwarded_for(&self, client: &HeaderMap, peer: IpAddr) -> Option<HeaderValue> {
        let peer = canonical(peer);
        let trusted = self.trusted.iter().any(|n| n.contains(&peer));
        let prior: Vec<&str> = if trusted {
            client
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        } else {
            Vec::new()
        };
        let value = if prior.is_empty() {
            peer.to_string()
        } else {
            format!("{}, {}", prior.join(", "), peer)
        };
        HeaderValue::from_str(&value).ok()
    }

    /// Whether the request already passed through a proxy with our Via
    /// name (a forwarding loop).
    pub fn is_loop(&self, client: &HeaderMap, via_name: &str) -> bool {
        client
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|entry| {
                // "1.1 name (comment)": the received-by token is the second word.
                entry
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|by| by.eq_ignore_ascii_case(via_name))
            })
    }
}

/// Map an IPv4-mapped IPv6 peer to IPv4, so `127.0.0.1/8` matches it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_net(s: &str) -> Result<IpNet, ConfigError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ConfigError::Invalid(format!("trustedProxies: {s:?} is not an IP or CIDR")))
}

/// Headers named in the client's `Connection` header.
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

fn is_framing_or_hop(name: &HeaderName) -> bool {
    BODY_FRAMING.contains(name)
        || crate::hop::HOP_BY_HOP.contains(&name.as_str())
        || name.as_str().starts_with("proxy-")
}

/// Whether a request carries a body: any Transfer-Encoding, or a
/// Content-Length other than 0.
pub fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
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

    fn fwd(keyed: &[&str], trusted: &[&str]) -> Forwarding {
        let k: Vec<String> = keyed.iter().map(|s| s.to_string()).collect();
        let t: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        Forwarding::new(&k, &t, "zetaback").expect("valid")
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn hostile() -> HeaderMap {
        hm(&[
            ("host", "a.test"),
            ("content-length", "40"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            (
                "connection",
                "close, Host, Cookie, Accept-Language, Authorization",
            ),
            ("cookie", "c=1"),
            ("authorization", "Basic x"),
            ("accept-language", "fr"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "host=evil"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-custom", "1"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"x\""),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "x"),
        ])
    }

    #[test]
    fn fills_send_only_the_allow_list_and_the_key_host() {
        let h = fwd(&[], &[]).fill_headers(&hostile(), "a.test", PEER);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "accept-language",
                "authorization",
                "cookie",
                "host",
                "via",
                "x-forwarded-for"
            ]
        );
        assert_eq!(h["host"], "a.test");
        assert_eq!(h["accept-language"], "fr");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["via"], "1.1 zetaback");
    }

    #[test]
    fn fills_use_the_key_host_even_without_a_host_header() {
        let h = fwd(&[], &[]).fill_headers(&hm(&[("accept", "*/*")]), "b.test:81", PEER);
        assert_eq!(h["host"], "b.test:81");
        let h = fwd(&[], &[]).fill_headers(&HeaderMap::new(), "", PEER);
        assert!(!h.contains_key("host"));
    }

    #[test]
    fn keyed_headers_are_sent_and_others_not() {
        let f = fwd(&["X-Forwarded-Proto"], &[]);
        let h = f.fill_headers(&hostile(), "a.test", PEER);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert!(f.sent_on_fill(&HeaderName::from_static("x-forwarded-proto")));
        assert!(f.sent_on_fill(&header::ACCEPT_ENCODING));
        assert!(!f.sent_on_fill(&HeaderName::from_static("x-custom")));
    }

    #[test]
    fn the_client_description_is_sent_on_fills_only_when_keyed() {
        let client = hm(&[
            ("user-agent", "evil-bot"),
            ("referer", "https://evil.test/"),
            ("origin", "https://evil.test"),
        ]);
        let plain = fwd(&[], &[]);
        let h = plain.fill_headers(&client, "a.test", PEER);
        for name in ["user-agent", "referer", "origin"] {
            assert!(!h.contains_key(name), "{name} sent on a fill");
            assert!(!plain.sent_on_fill(&HeaderName::from_static(name)));
        }
        // Passed through (not stored): sent as they came, once.
        let h = plain.pass_get_headers(&client, "a.test", PEER);
        assert_eq!(h.get_all("user-agent").iter().count(), 1);
        assert_eq!(h["referer"], "https://evil.test/");
        let keyed = fwd(&["User-Agent"], &[]);
        let h = keyed.fill_headers(&client, "a.test", PEER);
        assert_eq!(h["user-agent"], "evil-bot");
        assert!(!h.contains_key("referer"));
        assert!(keyed.sent_on_fill(&header::USER_AGENT));
        let h = keyed.pass_get_headers(&client, "a.test", PEER);
        assert_eq!(h.get_all("user-agent").iter().count(), 1);
    }

    #[test]
    fn fills_send_accept_encoding_as_gzip_or_nothing_and_passes_as_it_came() {
        let f = fwd(&[], &[]);
        for (client, sent) in [
            ("gzip, deflate, br", Some("gzip")),
            ("br;q=1, gzip;q=0.5", Some("gzip")),
            ("br", None),
            ("gzip;q=0", None),
            ("identity", None),
        ] {
            let c = hm(&[("accept-encoding", client)]);
            let h = f.fill_headers(&c, "a.test", PEER);
            let got: Vec<_> = h.get_all("accept-encoding").iter().collect();
            match sent {
                Some(v) => assert_eq!(got, vec![v], "{client}"),
                None => assert!(got.is_empty(), "{client}: {got:?}"),
            }
            let h = f.pass_get_headers(&c, "a.test", PEER);
            let got: Vec<_> = h.get_all("accept-encoding").iter().collect();
            assert_eq!(got, vec![client], "passed through");
        }
        assert!(
            !f.fill_headers(&HeaderMap::new(), "a.test", PEER)
                .contains_key("accept-encoding")
        );
    }

    #[test]
    fn pass_get_adds_range_and_validators_but_no_framing() {
        let h = fwd(&[], &[]).pass_get_headers(&hostile(), "a.test", PEER);
        assert_eq!(h["range"], "bytes=0-1");
        assert_eq!(h["if-none-match"], "\"x\"");
        for name in ["content-length", "transfer-encoding", "expect", "x-custom"] {
            assert!(!h.contains_key(name), "{name}");
        }
    }

    #[test]
    fn other_methods_keep_end_to_end_headers_without_hostile_ones() {
        let f = fwd(&[], &[]);
        let h = f.pass_headers(&hostile(), "a.test", PEER, true);
        assert_eq!(h["content-length"], "40");
        assert_eq!(h["x-custom"], "1");
        assert_eq!(h["cookie"], "c=1", "Connection cannot strip Cookie");
        assert_eq!(h["authorization"], "Basic x");
        assert_eq!(h["host"], "a.test");
        assert!(!h.contains_key("accept-language"), "listed in Connection");
        for name in [
            "transfer-encoding",
            "expect",
            "te",
            "upgrade",
            "proxy-authorization",
            "connection",
        ]
        .iter()
        .chain(UNKEYED_FORWARDING)
        {
            assert!(!h.contains_key(*name), "{name}");
        }
        let h = f.pass_headers(&hostile(), "a.test", PEER, false);
        assert!(!h.contains_key("content-length"));
    }

    #[test]
    fn forwarded_for_trusts_only_configured_peers() {
        let client = hm(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let f = fwd(&[], &["192.0.2.0/24", "::1"]);
        assert_eq!(
            f.forwarded_for(&client, PEER).expect("value"),
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(
            f.forwarded_for(&client, other).expect("value"),
            "198.51.100.1"
        );
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert_eq!(
            f.forwarded_for(&client, mapped).expect("value"),
            "10.0.0.1, 10.0.0.2, 192.0.2.9"
        );
        let v6: IpAddr = "::1".parse().expect("ip");
        assert_eq!(
            f.forwarded_for(&HeaderMap::new(), v6).expect("value"),
            "::1"
        );
    }

    #[test]
    fn loops_are_recognised_by_the_received_by_token() {
        let f = fwd(&[], &[]);
        assert!(f.is_loop(&hm(&[("via", "1.0 a, 1.1 zetaback")]), "zetaback"));
        assert!(f.is_loop(&hm(&[("via", "HTTP/1.1 ZetaBack (rust)")]), "zetaback"));
        assert!(!f.is_loop(&hm(&[("via", "1.1 zetaback-edge")]), "zetaback"));
        assert!(!f.is_loop(&hm(&[("via", "1.1 varnish (zetaback)")]), "zetaback"));
        assert!(!f.is_loop(&HeaderMap::new(), "zetaback"));
    }

    #[test]
    fn bodies_are_recognised() {
        assert!(!has_body(&HeaderMap::new()));
        assert!(!has_body(&hm(&[("content-length", "0")])));
        assert!(!has_body(&hm(&[("content-length", "000")])));
        assert!(has_body(&hm(&[("content-length", "5")])));
        assert!(has_body(&hm(&[("transfer-encoding", "chunked")])));
    }

    #[test]
    fn config_errors_are_sentences() {
        for (keyed, trusted, via) in [
            (vec!["bad name".to_string()], vec![], "z"),
            (vec!["content-length".to_string()], vec![], "z"),
            (vec!["host".to_string()], vec![], "z"),
            (vec![], vec!["not-an-ip".to_string()], "z"),
            (vec![], vec![], "two words"),
            (vec![], vec![], ""),
        ] {
            assert!(
                Forwarding::new(&keyed, &trusted, via).is_err(),
                "{keyed:?} {trusted:?} {via:?}"
            );
        }
    }
}
