//! zetaback-proxy: serve one URL space from whichever of N backends holds a
//! path (the Varnish "try backend 1, on 404 restart to backend 2" hack, done
//! as correct HTTP), with an RFC 9111 shared cache, an owner cache so a miss
//! costs about one backend request however many backends there are, request
//! coalescing, and pass-through of other methods.
//!
//! Pure logic lives in small modules ([`key`], [`storability`], [`owner`],
//! [`hop`], [`forwarding`], [`range`], [`conditional`], [`plain`], [`backend_url`]); I/O in [`handler`], [`upstream`] and
//! [`server`].

pub mod age;
pub mod backend_url;
pub mod body;
pub mod cache;
pub mod conditional;
pub mod config;
pub mod encoding;
pub mod error;
/// The workspace's one error-chain formatter, core's `error_chain.rs` compiled into this crate
/// as well: the proxy stays free of the core crate (its Kubernetes API types).
#[path = "../../core/src/error_chain.rs"]
pub(crate) mod error_chain;
pub mod fill_budget;
pub mod forwarding;
pub mod front;
pub mod handler;
pub mod head_timer;
pub mod health;
pub mod hop;
pub mod key;
pub mod metrics;
pub mod owner;
pub mod plain;
pub mod range;
pub mod server;
pub mod stall;
pub mod storability;
pub mod upstream;

pub use config::{BackendConfig, CacheConfig, LimitConfig, ProxyConfig, TimeoutConfig};
pub use error::{ConfigError, ProxyError, ServerError};
pub use server::{ProxyHandle, start};
