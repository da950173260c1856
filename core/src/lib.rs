//! zetaback-core: the contract the zetaback controller, its CLI and the node agents share.
//!
//! * the API types, the CRDs ([`api`]), and the standard-condition helpers ([`conditions`]);
//! * name and duration validation, used by the CRD schema and again by the agents
//!   ([`names`], [`duration`]);
//! * which hosts and datasets a policy covers ([`selection`]);
//! * the backup store: its layout, manifests and catalogue ([`store`]), and its HTTP protocol
//!   between agents and the controller ([`wire`]);
//! * the pure policy logic: what is due, what expired, who violates, which backups a restore
//!   applies ([`policy`]);
//! * the logging set-up of every binary ([`telemetry`]) and the one error-chain formatter
//!   ([`error_chain`]).
//!
//! No Kubernetes client, no HTTP stack, no async runtime: the agent builds on this crate
//! without the controller, the CLI or the proxy.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod api;
pub mod bytesize;
pub mod conditions;
pub mod duration;
pub mod error_chain;
pub mod grant;
pub mod names;
pub mod peer_tls;
pub mod policy;
pub mod selection;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod wire;
