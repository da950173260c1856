//! Noticing that a peer's certificate files were replaced (issue 13: certificates rotate
//! without a restart). A [`FileSet`] remembers what its three files (certificate, key, CA
//! bundle) were when last loaded, by inode, size and modification time, and
//! [`FileSet::changed`] loads them again once any differs; the caller hands the result to
//! [`super::PeerTls::replace`]. Half-written files (a key not matching the certificate yet)
//! fail to load and are tried again at the next check.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::config::{PeerTls, PeerTlsError};

/// What identifies one version of a file.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A certificate, key and CA bundle on disk, watched for replacement.
#[derive(Debug)]
pub struct FileSet {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    loaded: [Stamp; 3],
}

impl FileSet {
    /// The files, as they are now (what was just loaded from them).
    pub fn new(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Self {
        let loaded = [stamp(&cert), stamp(&key), stamp(&ca)];
        Self {
            cert,
            key,
            ca,
            loaded,
        }
    }

    fn now(&self) -> [Stamp; 3] {
        [stamp(&self.cert), stamp(&self.key), stamp(&self.ca)]
    }

    /// `None` while the files are as last loaded; else the material they hold now (an error
    /// leaves them to be tried again at the next call).
    pub fn changed(&mut self) -> Option<Result<PeerTls, PeerTlsError>> {
        let now = self.now();
        if now == self.loaded {
            return None;
        }
        let loaded = PeerTls::from_files(&self.cert, &self.key, &self.ca);
        if loaded.is_ok() {
            self.loaded = now;
        }
        Some(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_tls::PeerIdentity;
    use crate::peer_tls::issue::CertificateAuthority;
    use std::time::Duration;

    #[test]
    fn a_replaced_file_is_seen_once_and_a_mismatched_pair_is_retried() {
        let dir = std::env::temp_dir().join(format!("zb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = CertificateAuthority::generate().expect("ca");
        let node = PeerIdentity::node("n1").expect("node");
        let (c1, k1) = ca
            .issue_with_new_key(&node, Duration::from_secs(600))
            .expect("c1");
        let (cert, key, bundle) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        std::fs::write(&cert, &c1).expect("w");
        std::fs::write(&key, &k1).expect("w");
        std::fs::write(&bundle, ca.cert_pem()).expect("w");
        let tls = PeerTls::from_files(&cert, &key, &bundle).expect("tls");
        let mut files = FileSet::new(cert.clone(), key.clone(), bundle.clone());
        assert!(files.changed().is_none(), "nothing changed yet");
        // A new certificate whose key is not there yet: refused, tried again.
        let (c2, k2) = ca
            .issue_with_new_key(&node, Duration::from_secs(600))
            .expect("c2");
        std::fs::write(dir.join("new"), &c2).expect("w");
        std::fs::rename(dir.join("new"), &cert).expect("mv");
        assert!(
            matches!(files.changed(), Some(Err(_))),
            "a key that is not the certificate's"
        );
        std::fs::write(dir.join("new"), &k2).expect("w");
        std::fs::rename(dir.join("new"), &key).expect("mv");
        let next = files.changed().expect("changed").expect("loads");
        tls.replace(next).expect("same node");
        assert_eq!(tls.generation(), 1);
        assert!(files.changed().is_none(), "seen once");
        // Another node's certificate is not taken.
        let other = PeerIdentity::node("n2").expect("node");
        let (c3, k3) = ca
            .issue_with_new_key(&other, Duration::from_secs(600))
            .expect("c3");
        std::fs::write(&key, &k3).expect("w");
        std::fs::write(&cert, &c3).expect("w");
        let third = files.changed().expect("changed").expect("loads");
        assert!(tls.replace(third).is_err());
        assert_eq!(tls.identity(), &node);
        assert_eq!(tls.generation(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
