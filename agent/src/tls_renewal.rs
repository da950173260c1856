//! Keeping the agent's certificate current without a restart (issue 13): files replaced on
//! disk are loaded again ([`reload_files`]), and a certificate from the CertificateSigningRequest
//! API is renewed with a new key and request at two thirds of its lifetime
//! ([`renew_from_csr`]). Either way the new material goes into the agent's
//! [`PeerTls`](zetaback_core::peer_tls::PeerTls), which the listener reads for every connection
//! and jobs read when they start.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use zetaback_core::peer_tls::PeerTls;
use zetaback_core::peer_tls::reload::FileSet;

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

/// When a certificate of `lifetime` should be renewed: at two thirds of it.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime / 3 * 2
}

/// Renews the certificate from the CSR API before it expires, forever.
pub async fn renew_from_csr(client: kube::Client, tls: Arc<PeerTls>, settings: CsrSettings) {
    let mut wait = renew_after(settings.lifetime);
    loop {
        tokio::time::sleep(wait).await;
        match obtain(&client, &settings).await {
            Ok(obtained) => match tls.replace(obtained.tls) {
                Ok(()) => {
                    info!(csr = %obtained.request, generation = tls.generation(), "TLS certificate renewed");
                    wait = renew_after(settings.lifetime);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(2400)
        );
        assert_eq!(
            renew_after(Duration::from_secs(86400)),
            Duration::from_secs(57600)
        );
    }
}
