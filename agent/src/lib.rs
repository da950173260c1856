//! The zetaback node agent: the ZFS driver ([`zfs`]), the target agent's stream store and HTTP
//! API ([`filestore`], [`store_server`]), the source side of a transfer ([`transfer`]) and the
//! job runner ([`runner`]).

pub mod answer_check;
pub mod auth;
pub mod base_keep;
pub mod bufpool;
pub mod checksum;
pub mod claim;
pub mod csr_client;
pub mod discovery;
pub mod drill;
pub mod filestore;
pub mod hostinfo;
pub mod identity;
pub mod job;
pub mod job_progress;
pub mod limits;
pub mod listener;
pub mod objstore_job;
pub mod objstore_restore;
pub mod peer_auth;
pub mod ratelimit;
pub mod restore;
pub mod runner;
pub mod scan_cache;
pub mod space_ledger;
pub mod store_server;
pub mod stream_header;
pub mod tls;
pub mod tls_renewal;
pub mod transfer;
pub mod unread_body;
pub mod verifier;
pub mod zfs;

/// The store's HTTP protocol (headers, routes, answers), shared with the controller.
pub use zetaback_core::wire;
