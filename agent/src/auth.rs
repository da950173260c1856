//! Bearer tokens: one for sources (add streams, read them back for restores) and one for the
//! controller (admin: delete and archive, for retention). Read from files, which in Kubernetes
//! are mounted Secrets.

use std::path::Path;

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// Who a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A source agent: may add streams and read them.
    Source,
    /// The controller: may also delete and archive.
    Admin,
}

/// The tokens this agent accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    source: Option<String>,
    admin: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("source", &self.source.as_ref().map(|_| "<redacted>"))
            .field("admin", &self.admin.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    Empty(String),
}

/// Reads a token from a file (surrounding whitespace removed).
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    Ok(token)
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Tokens given directly (tests, or after [`read_token`]).
    pub fn new(source: Option<String>, admin: Option<String>) -> Self {
        Self { source, admin }
    }

    /// The role of a request's bearer token, if any is valid.
    pub fn role(&self, headers: &HeaderMap) -> Option<Role> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        if let Some(admin) = &self.admin
            && constant_time_eq(admin.as_bytes(), token.as_bytes())
        {
            return Some(Role::Admin);
        }
        if let Some(source) = &self.source
            && constant_time_eq(source.as_bytes(), token.as_bytes())
        {
            return Some(Role::Source);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().expect("header"));
        h
    }

    #[test]
    fn roles() {
        let t = Tokens::new(Some("s3cret".into()), Some("adm1n".into()));
        assert_eq!(t.role(&headers("Bearer s3cret")), Some(Role::Source));
        assert_eq!(t.role(&headers("Bearer adm1n")), Some(Role::Admin));
        assert_eq!(t.role(&headers("Bearer s3cre")), None);
        assert_eq!(t.role(&headers("Basic s3cret")), None);
        assert_eq!(t.role(&headers("Bearer ")), None);
        assert_eq!(t.role(&HeaderMap::new()), None);
        let none = Tokens::default();
        assert_eq!(none.role(&headers("Bearer s3cret")), None);
    }
}
