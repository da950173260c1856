//! zetaback: a Kubernetes operator for ZFS backup and restore (after Zetaback) and a
//! fallback proxy for assets spread over several servers (after the seed's Varnish hack).
//!
//! This crate holds the API types ([`api`]), name and duration validation shared by the
//! CRD schema and the agents ([`names`], [`duration`]), the controller ([`controller`]) and
//! the CLI ([`cli`]).

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod api;
pub mod cli;
pub mod controller;
pub mod duration;
pub mod names;
pub mod policy;
pub mod selection;
pub mod store;
pub mod telemetry;
