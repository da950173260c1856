//! The controller: one reconciler per kind, sharing a [`Context`].
