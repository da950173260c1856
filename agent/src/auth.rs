//! The bearer token this agent presents to other agents' stores: its own projected
//! ServiceAccount token in Kubernetes (the kubelet rotates the file, so it is read again for
//! every job), or a token of its own from `--identities-file`'s table without Kubernetes.
//! Who a presented token is: [`crate::identity`].

use std::path::{Path, PathBuf};

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

/// A token file read again on every use (projected tokens are rotated in place).
#[derive(Debug, Clone)]
pub struct TokenFile(PathBuf);

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The token now.
    pub fn read(&self) -> Result<String, TokenError> {
        read_token(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").expect("write");
        let f = TokenFile::new(&path);
        assert_eq!(f.read().expect("read"), "one");
        std::fs::write(&path, "two").expect("write");
        assert_eq!(f.read().expect("read"), "two");
        std::fs::write(&path, "  \n").expect("write");
        assert!(matches!(f.read(), Err(TokenError::Empty(_))));
    }
}
