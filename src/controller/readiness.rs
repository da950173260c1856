//! The controller's readiness, as `/readyz` answers it: what this replica is doing (starting,
//! standing by for the Lease, leading with its shared caches still listing, leading with them
//! synced) and whether that makes it ready. A standby that reached the Lease is ready (a
//! rollout must be able to count it, and a standby is never restarted for waiting); a leader
//! is ready only once the ZfsHost and BackupJob caches every reconciler reads have synced.

use axum::http::StatusCode;
use tokio::sync::watch;

/// What this replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The Lease not reached yet (start-up, or the apiserver went away between terms).
    Starting,
    /// Another replica leads; this one reached the Lease and waits for it.
    StandingBy,
    /// This replica leads; the shared ZfsHost and BackupJob caches have not listed yet.
    LeadingCachesSyncing,
    /// This replica leads with synced caches: its reconcilers run.
    Leading,
}

impl Phase {
    /// Whether a replica in this phase is ready.
    pub fn ready(self) -> bool {
        matches!(self, Phase::StandingBy | Phase::Leading)
    }

    /// The lease state and cache state, for `/readyz`'s body.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "starting: the leader Lease has not been reached yet",
            Phase::StandingBy => "standby: another replica holds the leader Lease",
            Phase::LeadingCachesSyncing => {
                "leader: the ZfsHost and BackupJob caches have not synced yet"
            }
            Phase::Leading => "leader: caches synced, reconcilers running",
        }
    }

    /// `/readyz`'s answer: 200 when ready, 503 when not, with the description.
    pub fn answer(self) -> (StatusCode, String) {
        let code = if self.ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, format!("{}\n", self.describe()))
    }
}

/// The replica's current phase, set by the leader loop and read by `/readyz`.
#[derive(Debug)]
pub struct Readiness(watch::Sender<Phase>);

impl Default for Readiness {
    fn default() -> Self {
        Self(watch::Sender::new(Phase::Starting))
    }
}

impl Readiness {
    pub fn set(&self, phase: Phase) {
        self.0.send_replace(phase);
    }

    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_standby_and_a_synced_leader_are_ready() {
        let all = [
            Phase::Starting,
            Phase::StandingBy,
            Phase::LeadingCachesSyncing,
            Phase::Leading,
        ];
        let ready: Vec<Phase> = all.into_iter().filter(|p| p.ready()).collect();
        assert_eq!(ready, [Phase::StandingBy, Phase::Leading]);
        for p in all {
            let (code, body) = p.answer();
            assert_eq!(code == StatusCode::OK, p.ready(), "{p:?}");
            assert_eq!(code == StatusCode::SERVICE_UNAVAILABLE, !p.ready(), "{p:?}");
            assert!(body.ends_with('\n'));
        }
        assert!(Phase::StandingBy.describe().starts_with("standby"));
        assert!(Phase::Leading.describe().starts_with("leader"));
        assert!(Phase::LeadingCachesSyncing.describe().starts_with("leader"));
    }

    #[test]
    fn readiness_starts_not_ready_and_follows_the_phase_set() {
        let r = Readiness::default();
        assert_eq!(r.phase(), Phase::Starting);
        r.set(Phase::LeadingCachesSyncing);
        assert_eq!(r.phase(), Phase::LeadingCachesSyncing);
        r.set(Phase::Leading);
        assert!(r.phase().ready());
    }
}
