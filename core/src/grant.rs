//! Restore grants (issue 13, build item 1): a destination host reads another host's backups
//! only through a grant the controller issues for one Restore, scoped to its source host,
//! dataset and backup ids and to its destination host, and expiring. The grant is signed by
//! the controller (Ed25519); stores verify it with the controller's public key, which only the
//! controller publishes (a ConfigMap in its namespace that agents may read, not write), and
//! accept it only from the destination host's own agent (the caller's TokenReview identity).
//! No node holds a key that can make a grant, and a grant copied off a node is useless to
//! any other node.
//!
//! Why signed rather than looked up: the store could ask the apiserver for the Restore, but
//! every field it would trust there is writable by the destination agent itself (it reports
//! the Restore's status), so only the controller's signature proves the controller chose
//! these ids for this destination.
//!
//! Format: `zg1.<hex of the JSON payload>.<hex of the signature over it>`.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// How long a grant is valid after it was issued (long enough for a large restore's last
/// piece to start; each piece's GET is checked when it starts).
pub const GRANT_TTL_SECONDS: i64 = 12 * 3600;
/// The grant's format prefix.
const PREFIX: &str = "zg1";
/// The header a restoring agent sends the grant in.
pub const H_GRANT: &str = "x-zetaback-grant";

/// What a grant allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreGrant {
    /// The Restore it was issued for (`namespace/name`), for logs.
    pub restore: String,
    /// The source host whose backups may be read.
    pub host: String,
    /// Their dataset.
    pub dataset: String,
    /// The backup ids (the restore's chain).
    pub ids: Vec<String>,
    /// The host whose agent may read them.
    pub destination: String,
    /// Unix time after which the grant is void.
    pub expires: i64,
}

/// Why a grant does not allow a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the restore grant is malformed: {0}")]
    Malformed(String),
    #[error("the restore grant's signature is not the controller's")]
    BadSignature,
    #[error("the restore grant expired at {0}")]
    Expired(i64),
    #[error("the restore grant does not cover this: {0}")]
    OutOfScope(String),
    #[error("signing the restore grant: {0}")]
    Key(String),
}

/// The controller's signing key.
pub struct GrantSigner {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner")
            .field("public_key", &self.public_key_hex())
            .finish()
    }
}

impl GrantSigner {
    /// A new random key (the controller's, unless it is given one).
    pub fn generate() -> Result<Self, GrantError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| GrantError::Key(e.to_string()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from its PKCS#8 DER encoding (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, GrantError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| Self { pair })
            .map_err(|e| GrantError::Key(e.to_string()))
    }

    /// The public key, hex (what stores verify with).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The grant, signed.
    pub fn sign(&self, grant: &RestoreGrant) -> Result<String, GrantError> {
        let payload = serde_json::to_vec(grant).map_err(|e| GrantError::Key(e.to_string()))?;
        let sig = self.pair.sign(&payload);
        Ok(format!(
            "{PREFIX}.{}.{}",
            hex::encode(&payload),
            hex::encode(sig.as_ref())
        ))
    }
}

/// The grant in `token`, if the controller whose public key is `public_key_hex` signed it.
pub fn verify(token: &str, public_key_hex: &str) -> Result<RestoreGrant, GrantError> {
    let malformed = |m: &str| GrantError::Malformed(m.to_owned());
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not zg1.<payload>.<signature>"));
    };
    let payload = hex::decode(payload).map_err(|_| malformed("payload is not hex"))?;
    let sig = hex::decode(sig).map_err(|_| malformed("signature is not hex"))?;
    let key = hex::decode(public_key_hex.trim()).map_err(|_| malformed("public key is not hex"))?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&payload, &sig)
        .map_err(|_| GrantError::BadSignature)?;
    serde_json::from_slice(&payload).map_err(|e| GrantError::Malformed(e.to_string()))
}

impl RestoreGrant {
    /// Whether the grant lets the agent serving `caller_hosts` read backup `id` of
    /// `host`'s `dataset` at unix time `now`.
    pub fn allows<'a>(
        &self,
        caller_hosts: impl IntoIterator<Item = &'a String>,
        host: &str,
        dataset: &str,
        id: &str,
        now: i64,
    ) -> Result<(), GrantError> {
        if now > self.expires {
            return Err(GrantError::Expired(self.expires));
        }
        let out = |m: String| Err(GrantError::OutOfScope(m));
        if !caller_hosts.into_iter().any(|h| *h == self.destination) {
            return out(format!(
                "it is for the agent of {}, not the caller",
                self.destination
            ));
        }
        if self.host != host || self.dataset != dataset {
            return out(format!(
                "it is for {}:{}, not {host}:{dataset}",
                self.host, self.dataset
            ));
        }
        if !self.ids.iter().any(|i| i == id) {
            return out(format!(
                "backup {id} is not in restore {}'s chain",
                self.restore
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> RestoreGrant {
        RestoreGrant {
            restore: "ns/r".into(),
            host: "db-1".into(),
            dataset: "tank/db".into(),
            ids: vec!["100.full".into(), "200.incremental.100".into()],
            destination: "db-2".into(),
            expires: 1000,
        }
    }

    #[test]
    fn signed_grants_verify_and_nothing_else_does() {
        let signer = GrantSigner::generate().expect("key");
        let other = GrantSigner::generate().expect("key");
        let token = signer.sign(&grant()).expect("sign");
        assert_eq!(verify(&token, &signer.public_key_hex()), Ok(grant()));
        assert_eq!(
            verify(&token, &other.public_key_hex()),
            Err(GrantError::BadSignature)
        );
        // A payload changed after signing (another destination) does not verify.
        let mut forged = grant();
        forged.destination = "db-3".into();
        let forged_payload = hex::encode(serde_json::to_vec(&forged).expect("json"));
        let sig = token.rsplit('.').next().expect("sig");
        assert_eq!(
            verify(
                &format!("zg1.{forged_payload}.{sig}"),
                &signer.public_key_hex()
            ),
            Err(GrantError::BadSignature)
        );
        for bad in [
            "",
            "zg1",
            "zg1.aa",
            "zg2.aa.bb",
            "zg1.zz.bb",
            "zg1.aa.bb.cc",
        ] {
            assert!(
                matches!(
                    verify(bad, &signer.public_key_hex()),
                    Err(GrantError::Malformed(_) | GrantError::BadSignature)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn grants_are_scoped_and_expire() {
        let g = grant();
        let dst = vec!["db-2".to_owned()];
        assert_eq!(g.allows(&dst, "db-1", "tank/db", "100.full", 1000), Ok(()));
        assert!(
            g.allows(&dst, "db-1", "tank/db", "200.incremental.100", 0)
                .is_ok()
        );
        assert!(matches!(
            g.allows(&dst, "db-1", "tank/db", "100.full", 1001),
            Err(GrantError::Expired(1000))
        ));
        let other = vec!["db-3".to_owned()];
        assert!(g.allows(&other, "db-1", "tank/db", "100.full", 0).is_err());
        assert!(g.allows(&dst, "db-9", "tank/db", "100.full", 0).is_err());
        assert!(g.allows(&dst, "db-1", "tank/other", "100.full", 0).is_err());
        assert!(g.allows(&dst, "db-1", "tank/db", "300.full", 0).is_err());
    }

    #[test]
    fn keys_round_trip_through_pkcs8() {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).expect("pkcs8");
        let a = GrantSigner::from_pkcs8(der.as_ref()).expect("key");
        let b = GrantSigner::from_pkcs8(der.as_ref()).expect("key");
        assert_eq!(a.public_key_hex(), b.public_key_hex());
        assert!(GrantSigner::from_pkcs8(b"not a key").is_err());
    }
}
