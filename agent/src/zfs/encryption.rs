//! Encrypted datasets are always sent raw (`zfs send -w`). A plain `zfs send` of an encrypted
//! dataset whose key is loaded sends its blocks *decrypted*: the store (another host, a
//! bucket) would hold the plaintext. Sent raw, the blocks stay as they are on disk
//! (encrypted) and the stream carries only the wrapped master key, which is useless without
//! the passphrase or key file, which never leave the source host. So there is no policy knob:
//! the agent reads the dataset's `encryption` property before every send and sends raw when it
//! is not `off`; a restore receives the raw stream as an encrypted dataset that stays locked
//! until someone with the key runs `zfs load-key` on it. A host whose `zfs` cannot send raw
//! (zfs-fuse) has no native encryption either, so it is never asked.

use zetaback_core::names::validate_dataset;

use super::caps::{Capabilities, Capability};
use super::error::ZfsError;

/// `zfs get -H -p -o value encryption <dataset>`.
pub fn encryption_argv(dataset: &str) -> Result<Vec<String>, ZfsError> {
    validate_dataset(dataset)?;
    Ok(["get", "-H", "-p", "-o", "value", "encryption", dataset]
        .iter()
        .map(|s| (*s).to_owned())
        .collect())
}

/// Whether the value of the `encryption` property means the dataset is encrypted (`off`, and
/// `-` where the property does not exist, mean it is not; anything else names a cipher).
pub fn is_encrypted(value: &str) -> bool {
    !matches!(value.trim(), "" | "off" | "-")
}

/// Whether a dataset must be sent raw: exactly when it is encrypted. An encrypted dataset on a
/// `zfs` without raw send is refused rather than sent decrypted.
pub fn must_send_raw(caps: &Capabilities, encrypted: bool) -> Result<bool, ZfsError> {
    match (encrypted, caps.has(Capability::RawSend)) {
        (false, _) => Ok(false),
        (true, true) => Ok(true),
        (true, false) => Err(ZfsError::Unsupported {
            feature: "send -w (raw) of an encrypted dataset; a plain send would send it decrypted",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphers_are_encrypted_off_is_not() {
        for v in ["aes-256-gcm", "aes-128-ccm\n", "on"] {
            assert!(is_encrypted(v), "{v}");
        }
        for v in ["off", "off\n", "-", ""] {
            assert!(!is_encrypted(v), "{v:?}");
        }
    }

    #[test]
    fn encrypted_means_raw_and_never_decrypted() {
        let openzfs = Capabilities::all();
        let fuse = Capabilities::from_iter([Capability::Holds]);
        assert!(must_send_raw(&openzfs, true).expect("raw"));
        assert!(!must_send_raw(&openzfs, false).expect("plain"));
        assert!(!must_send_raw(&fuse, false).expect("plain"));
        assert!(matches!(
            must_send_raw(&fuse, true),
            Err(ZfsError::Unsupported { .. })
        ));
    }

    #[test]
    fn the_property_is_read_for_a_valid_name_only() {
        assert_eq!(
            encryption_argv("tank/db").expect("argv"),
            ["get", "-H", "-p", "-o", "value", "encryption", "tank/db"]
        );
        assert!(encryption_argv("-o").is_err());
    }
}
