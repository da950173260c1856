//! `Accept-Encoding` on cache fills, normalised the way Varnish does it: a
//! fill sends `Accept-Encoding: gzip` when the client accepts gzip and no
//! `Accept-Encoding` otherwise, and a content-coded answer is keyed by that
//! normalised value even when the backend did not say
//! `Vary: Accept-Encoding`.
//!
//! Why: nginx with `gzip on` and without `gzip_vary on` (its default)
//! compresses for a client that asks and says nothing about it; keyed on
//! the URL alone, that gzip body would be served to every later client,
//! including those that cannot decode it. With the rule here, every request
//! that maps to a stored variant made the fill send the same
//! `Accept-Encoding`, so it gets the answer the backend would have given it.
//! Normalising (rather than keying on the raw value) keeps one variant per
//! choice instead of one per browser's spelling of its list.
//!
//! `Accept` and `Accept-Language` are not treated this way: they change the
//! representation, not its coding, and HTTP leaves telling the cache to the
//! backend (`Vary`), which the proxy honours (what Varnish does too); a
//! route that serves a backend negotiating on them without `Vary` lists them
//! in `keyedHeaders`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The only coding a fill asks for.
pub static GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// Whether the client's `Accept-Encoding` accepts gzip: a `gzip` (or
/// `x-gzip`) entry whose `q` is not zero. `*` is not taken as gzip (a
/// client that lists only `*` gets the identity variant, always acceptable).
pub fn accepts_gzip(req: &HeaderMap) -> bool {
    req.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            (coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip"))
                && parts.all(|p| !q_is_zero(p))
        })
}

/// Whether a `;`-parameter is `q=0` (in any of its spellings: `0`, `0.`,
/// `0.000`).
fn q_is_zero(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    if !name.trim().eq_ignore_ascii_case("q") {
        return false;
    }
    let value = value.trim();
    let mut chars = value.chars();
    chars.next() == Some('0') && chars.all(|c| c == '.' || c == '0')
}

/// The `Accept-Encoding` a fill sends for this client: `gzip` or none.
pub fn fill_value(req: &HeaderMap) -> Option<&'static HeaderValue> {
    accepts_gzip(req).then_some(&GZIP)
}

/// The value a variant key records for `Accept-Encoding`: what a fill
/// sends (`gzip` or empty).
pub fn key_value(req: &HeaderMap) -> &'static str {
    if accepts_gzip(req) { "gzip" } else { "" }
}

/// Whether a response is content-coded (a `Content-Encoding` other than
/// `identity`).
pub fn is_coded(resp: &HeaderMap) -> bool {
    resp.get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// The names a stored response is keyed on, given the Vary'd names the
/// fill sent: `Accept-Encoding` is added when the answer is content-coded
/// (the backend negotiated on it whether or not it said so). Keeps the
/// names sorted.
pub fn with_implied_vary(resp: &HeaderMap, mut names: Vec<HeaderName>) -> Vec<HeaderName> {
    if is_coded(resp) && !names.contains(&header::ACCEPT_ENCODING) {
        names.push(header::ACCEPT_ENCODING);
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(values: &[&'static str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn gzip_is_accepted_only_when_listed_with_a_non_zero_q() {
        for yes in [
            &["gzip"][..],
            &["gzip, deflate, br"],
            &["br;q=1.0, GZIP;q=0.5"],
            &["x-gzip"],
            &["identity", "gzip"],
            &["gzip;q=0.001"],
            &[" gzip ; q=1 "],
        ] {
            assert!(accepts_gzip(&ae(yes)), "{yes:?}");
            assert_eq!(fill_value(&ae(yes)), Some(&GZIP));
            assert_eq!(key_value(&ae(yes)), "gzip");
        }
        for no in [
            &[][..],
            &[""],
            &["br"],
            &["identity"],
            &["*"],
            &["gzip;q=0"],
            &["gzip; q=0.000"],
            &["gzip;Q=0."],
            &["deflate, br;q=1, gzip;q=0"],
            &["gzipped"],
            &["br, x-gzip;q=0"],
        ] {
            assert!(!accepts_gzip(&ae(no)), "{no:?}");
            assert_eq!(fill_value(&ae(no)), None);
            assert_eq!(key_value(&ae(no)), "");
        }
    }

    #[test]
    fn a_coded_answer_is_keyed_on_accept_encoding_without_vary() {
        let mut resp = HeaderMap::new();
        assert_eq!(with_implied_vary(&resp, vec![]), Vec::<HeaderName>::new());
        resp.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(!is_coded(&resp));
        assert_eq!(with_implied_vary(&resp, vec![]), Vec::<HeaderName>::new());
        resp.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(is_coded(&resp));
        assert_eq!(
            with_implied_vary(&resp, vec![]),
            vec![header::ACCEPT_ENCODING]
        );
        // Already Vary'd: not twice; other names stay sorted around it.
        assert_eq!(
            with_implied_vary(&resp, vec![header::ACCEPT_ENCODING]),
            vec![header::ACCEPT_ENCODING]
        );
        assert_eq!(
            with_implied_vary(&resp, vec![header::ACCEPT_LANGUAGE, header::COOKIE]),
            vec![
                header::ACCEPT_ENCODING,
                header::ACCEPT_LANGUAGE,
                header::COOKIE
            ]
        );
    }
}
