//! A backend's base URL (`http://host[:port][/prefix]`): parsed once from
//! the configuration, joined with each request's path. Pure; used by the
//! configuration's validation and by the upstream client.

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use crate::error::ConfigError;

/// A parsed backend base URL (`http` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub authority: Authority,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl BackendUrl {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let uri: Uri = s
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("backend url {s:?}: {e}")))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(ConfigError::Invalid(format!(
                "backend url {s:?}: only http:// is supported"
            )));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ConfigError::Invalid(format!("backend url {s:?}: no host")))?;
        if uri.query().is_some() {
            return Err(ConfigError::Invalid(format!(
                "backend url {s:?}: query not allowed"
            )));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self { authority, prefix })
    }

    /// Absolute URI of `path_and_query` on this backend.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq: PathAndQuery = if self.prefix.is_empty() {
            path_and_query.parse()?
        } else {
            format!("{}{}", self.prefix, path_and_query).parse()?
        };
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BackendUrl::parse("http://127.0.0.1:8080/base/").expect("url");
        assert_eq!(u.prefix, "/base");
        assert_eq!(
            u.join("/a?b=1").expect("join").to_string(),
            "http://127.0.0.1:8080/base/a?b=1"
        );
        let u = BackendUrl::parse("http://web-1.ns.svc").expect("url");
        assert_eq!(
            u.join("/x").expect("join").to_string(),
            "http://web-1.ns.svc/x"
        );
        assert!(BackendUrl::parse("https://x").is_err());
        assert!(BackendUrl::parse("http://x/?q").is_err());
        assert!(BackendUrl::parse("not a url").is_err());
    }
}
