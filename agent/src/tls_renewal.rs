//! Keeping the agent's certificate current without a restart (issue 13): files replaced on
//! disk are loaded again ([`reload_files`]), and a certificate from the CertificateSigningRequest
//! API is renewed with a new key and request when a third of the certificate's own validity is
//! left, or `--tls-renew-before` of it ([`renew_from_csr`], [`renewal`]). Either way the new material goes into the agent's
//! [`PeerTls`](zetaback_core::peer_tls::PeerTls), which the listener reads for every connection
//! and jobs read when they start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use zetaback_core::peer_tls::reload::FileSet;
use zetaback_core::peer_tls::{PeerTls, renewal};

use crate::csr_client::{CsrSettings, obtain};

/// How soon a failed renewal is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// Checks `files` every `every`; replaced files naming the same peer are used from then on.
pub async fn reload_files(tls: Arc<PeerTls>, mut files: FileSet, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match files.changed() {
            None => {}
            Some(Ok(next)) => match tls.replace(next) {
                Ok(()) => info!(
                    identity = %tls.identity().dns_name(),
                    generation = tls.generation(),
                    "TLS certificate files replaced: serving and presenting the new certificate"
                ),
                Err(e) => warn!(error = %e, "new TLS certificate files not used"),
            },
            Some(Err(e)) => {
                warn!(error = %e, "TLS certificate files changed but cannot be used (yet)")
            }
        }
    }
}

/// The shortest wait between two renewals (a certificate already due, or a renew-before
/// longer than the lifetime, is renewed at most this often).
const FLOOR: Duration = Duration::from_secs(1);

/// How long to wait before renewing the certificate `tls` holds now: from its own validity
/// ([`renewal::wait_before_renewal`]); a certificate that cannot be read is renewed at once.
fn next_wait(tls: &PeerTls, renew_before: Option<Duration>) -> Duration {
    match tls.validity() {
        Ok(v) => renewal::wait_before_renewal(&v, renew_before, SystemTime::now(), FLOOR),
        Err(e) => {
            warn!(error = %e, "renewing now");
            FLOOR
        }
    }
}

/// Renews the certificate from the CSR API before it expires, forever: when `renew_before` of
/// it is left, or (None) a third of it.
pub async fn renew_from_csr(
    client: kube::Client,
    tls: Arc<PeerTls>,
    settings: CsrSettings,
    renew_before: Option<Duration>,
) {
    let mut wait = next_wait(&tls, renew_before);
    loop {
        info!(
            in_seconds = wait.as_secs(),
            "the TLS certificate will be renewed"
        );
        tokio::time::sleep(wait).await;
        match obtain(&client, &settings).await {
            Ok(obtained) => match tls.replace(obtained.tls) {
                Ok(()) => {
                    let serial = tls.validity().map(|v| v.serial).unwrap_or_default();
                    info!(csr = %obtained.request, generation = tls.generation(), %serial, "TLS certificate renewed");
                    wait = next_wait(&tls, renew_before);
                }
                Err(e) => {
                    warn!(error = %e, "renewed certificate not used");
                    wait = RETRY;
                }
            },
            Err(e) => {
                warn!(error = %e, "renewing the TLS certificate failed; trying again");
                wait = RETRY;
            }
        }
    }
}
