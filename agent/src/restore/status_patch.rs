//! The agent's writes to a Restore's status, typed: a merge patch ([`StatusPatch`]) holds only
//! the fields it sets, named as the CRD names them (`bytesDone`, `finishedAt`, …) by serde
//! rather than by hand-written JSON keys.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Patch;
use serde::Serialize;
use zetaback_core::api::restore::{RestorePhase, RestorePiece};

/// The fields of `status` one write sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pieces: Option<Vec<RestorePiece>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// A drill's: `Some(None)` writes null (the field cleared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Option<Time>>,
    /// A drill's: `Some(None)` writes null (the field cleared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch_destroyed: Option<Option<bool>>,
    /// `Some(None)` writes null: the restore is no one's (claimable again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_destination: Option<bool>,
}

/// A merge patch of the status subresource: `{"status": {…}}`, optionally fenced by
/// `{"metadata": {"resourceVersion": …}}` (then the apiserver refuses it with 409 Conflict
/// if the Restore changed since that version was read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Fence>,
    pub status: RestoreStatusPatch,
}

/// The version a fenced write was decided on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    pub resource_version: String,
}

impl StatusPatch {
    pub fn new(status: RestoreStatusPatch) -> Self {
        StatusPatch {
            metadata: None,
            status,
        }
    }

    /// The same write, applied only to the Restore at `resource_version`.
    pub fn fenced(&self, resource_version: String) -> Self {
        StatusPatch {
            metadata: Some(Fence { resource_version }),
            status: self.status.clone(),
        }
    }

    /// As `kube`'s merge patch.
    pub fn merge(&self) -> Patch<&Self> {
        Patch::Merge(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zetaback_core::api::RestoreStatus;

    #[test]
    fn a_patch_sets_only_its_fields_under_the_names_the_crd_reads() {
        let progress = StatusPatch::new(RestoreStatusPatch {
            bytes_done: Some(7),
            scratch_destroyed: Some(None),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_value(&progress).unwrap(),
            serde_json::json!({"status": {"bytesDone": 7, "scratchDestroyed": null}})
        );
        assert_eq!(
            serde_json::to_value(progress.fenced("42".into())).unwrap(),
            serde_json::json!({"metadata": {"resourceVersion": "42"},
                "status": {"bytesDone": 7, "scratchDestroyed": null}})
        );
        let at = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let condition = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Succeeded".into(),
            message: "done".into(),
            last_transition_time: at.clone(),
            observed_generation: None,
        };
        let every = RestoreStatusPatch {
            phase: Some(RestorePhase::Succeeded),
            verified: Some(true),
            bytes_done: Some(3),
            pieces: Some(vec![RestorePiece {
                id: "1.full".into(),
                ..Default::default()
            }]),
            finished_at: Some(at.clone()),
            message: Some("done".into()),
            conditions: Some(vec![condition.clone()]),
            verified_at: Some(Some(at.clone())),
            scratch_destroyed: Some(Some(true)),
            claimed_by: Some(Some("h@n".into())),
            created_destination: Some(true),
        };
        // Read back by the CRD's own status type: a field named otherwise would be dropped.
        let back: RestoreStatus =
            serde_json::from_value(serde_json::to_value(&every).unwrap()).unwrap();
        assert_eq!(back.phase, RestorePhase::Succeeded);
        assert_eq!(back.verified, Some(true));
        assert_eq!(back.bytes_done, Some(3));
        assert_eq!(back.pieces.len(), 1);
        assert_eq!(back.finished_at, Some(at.clone()));
        assert_eq!(back.message.as_deref(), Some("done"));
        assert_eq!(back.conditions, vec![condition]);
        assert_eq!(back.verified_at, Some(at));
        assert_eq!(back.scratch_destroyed, Some(true));
        assert_eq!(back.claimed_by.as_deref(), Some("h@n"));
        assert_eq!(back.created_destination, Some(true));
        // Unclaimed: null, which a merge patch removes.
        let unclaimed = StatusPatch::new(RestoreStatusPatch {
            claimed_by: Some(None),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_value(&unclaimed).unwrap(),
            serde_json::json!({"status": {"claimedBy": null}})
        );
    }
}
