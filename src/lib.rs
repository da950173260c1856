//! zetaback: a Kubernetes operator for ZFS backup and restore (after Zetaback) and a
//! fallback proxy for assets spread over several servers (after the seed's Varnish hack).
//!
//! This crate holds the controller ([`controller`]) and the CLI ([`cli`]). The contract they
//! share with the agents (API types, names and durations, selection, the backup store and its
//! protocol, the pure policy logic) lives in the `zetaback-core` crate (`core/`) and is
//! re-exported here under its old paths (`zetaback::api`, `zetaback::policy`, ...).

pub mod cli;
pub mod controller;

pub use zetaback_core::{
    api, duration, error_chain, grant, names, peer_tls, policy, selection, store, telemetry,
    tenancy, wire,
};
