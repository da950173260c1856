//! The zetaback node agent: the ZFS driver ([`zfs`]), the target agent's stream store and HTTP
//! API ([`store_server`]), the source side of a transfer ([`transfer`]) and the job runner
//! ([`runner`]).

pub mod zfs;
