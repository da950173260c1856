//! When a certificate is renewed (pure; issue 13): from the certificate's own validity, as
//! issued, never from the lifetime its holder asked for (the signer may issue a shorter one, and
//! backdates the start for clock skew). By default at two thirds of the validity (a third
//! left); `renew_before` (the agent's `--tls-renew-before`) renews when that much is left
//! instead: a product knob (renew a week ahead of a long certificate) and the hook that lets a
//! test see a renewal within seconds, since the CSR API issues nothing shorter than 600 s.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

/// What a certificate says about its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The serial number, hexadecimal (two certificates with one serial are one issuance).
    pub serial: String,
}

/// Why a certificate's validity could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the certificate's validity cannot be read: {0}")]
pub struct ValidityError(String);

fn system_time(t: &x509_parser::time::ASN1Time) -> Result<SystemTime, ValidityError> {
    let seconds = t.timestamp();
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    }
    .ok_or_else(|| ValidityError(format!("time {seconds} out of range")))
}

/// The validity and serial of a DER certificate.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<Validity, ValidityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| ValidityError(e.to_string()))?;
    let v = parsed.validity();
    Ok(Validity {
        not_before: system_time(&v.not_before)?,
        not_after: system_time(&v.not_after)?,
        serial: parsed.raw_serial_as_string(),
    })
}

/// The validity of a chain's first certificate (its leaf).
pub fn validity_of_leaf(chain: &[CertificateDer<'_>]) -> Result<Validity, ValidityError> {
    chain
        .first()
        .ok_or_else(|| ValidityError("no certificate".into()))
        .and_then(validity_of)
}

/// When `v` is renewed: `renew_before` before it ends, or (None) with a third of it left.
pub fn renew_at(v: &Validity, renew_before: Option<Duration>) -> SystemTime {
    let lifetime = v
        .not_after
        .duration_since(v.not_before)
        .unwrap_or(Duration::ZERO);
    let ahead = renew_before.unwrap_or(lifetime / 3);
    v.not_after
        .checked_sub(ahead)
        .map_or(v.not_before, |t| t.max(v.not_before))
}

/// How long to wait at `now` before renewing `v`: until [`renew_at`], at least `floor` (a
/// certificate already due, or a `renew_before` longer than the lifetime, renews at most once
/// per `floor`, never in a loop).
pub fn wait_before_renewal(
    v: &Validity,
    renew_before: Option<Duration>,
    now: SystemTime,
    floor: Duration,
) -> Duration {
    renew_at(v, renew_before)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_tls::PeerIdentity;
    use crate::peer_tls::issue::{CertificateAuthority, PeerKey, parse_request};
    use rustls_pki_types::pem::PemObject;

    const HOUR: Duration = Duration::from_secs(3600);

    fn validity(start: u64, lifetime: Duration) -> Validity {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(start);
        Validity {
            not_before,
            not_after: not_before + lifetime,
            serial: "01".into(),
        }
    }

    #[test]
    fn by_default_a_third_of_the_validity_is_left() {
        let v = validity(1_000_000, 24 * HOUR);
        assert_eq!(renew_at(&v, None), v.not_before + 16 * HOUR);
    }

    #[test]
    fn renew_before_counts_back_from_the_end() {
        let v = validity(1_000_000, 24 * HOUR);
        assert_eq!(renew_at(&v, Some(HOUR)), v.not_after - HOUR);
        // Longer than the whole validity: due from the start (and the floor keeps it calm).
        assert_eq!(renew_at(&v, Some(48 * HOUR)), v.not_before);
    }

    #[test]
    fn the_wait_is_never_below_the_floor() {
        let v = validity(1_000_000, 24 * HOUR);
        let floor = Duration::from_secs(5);
        let at_start = v.not_before;
        assert_eq!(wait_before_renewal(&v, None, at_start, floor), 16 * HOUR);
        let late = v.not_after + HOUR;
        assert_eq!(wait_before_renewal(&v, None, late, floor), floor);
        assert_eq!(
            wait_before_renewal(&v, Some(48 * HOUR), at_start, floor),
            floor
        );
    }

    #[test]
    fn the_issued_validity_is_read_not_the_one_asked_for() {
        // The CA issues 600 s (backdated by its clock-skew margin); a holder that asked for a
        // day renews from what it got.
        let ca = CertificateAuthority::generate().expect("ca");
        let peer = PeerIdentity::node("node-a").expect("node");
        let key = PeerKey::generate().expect("key");
        let parsed = parse_request(&key.request(&peer).expect("csr"), vec![]).expect("parsed");
        let before = SystemTime::now();
        let pem = ca
            .issue(&peer, &parsed.public_key, Duration::from_secs(600))
            .expect("issued");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
        let v = validity_of(&der).expect("validity");
        let after = SystemTime::now();
        // X.509 times have whole seconds.
        assert!(v.not_after + Duration::from_secs(1) >= before + Duration::from_secs(600));
        assert!(v.not_after <= after + Duration::from_secs(600));
        assert!(v.not_before < before);
        assert!(!v.serial.is_empty());
        let again = ca
            .issue(&peer, &parsed.public_key, Duration::from_secs(600))
            .expect("issued");
        let other = validity_of(&CertificateDer::from_pem_slice(again.as_bytes()).expect("der"))
            .expect("validity");
        assert_ne!(other.serial, v.serial, "each issuance has its own serial");
        // Renewed before a third of 600 s + the backdating is left, not at 2/3 of a day.
        assert!(renew_at(&v, None) < v.not_after);
        assert!(renew_at(&v, None) > v.not_before);
    }
}
