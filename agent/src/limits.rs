//! What a store agent lets one client take: connections, header time, stream size, bytes per
//! source host, free space, streams at once, zstd memory, catalogue scans. Every limit has a
//! flag (and an environment variable) on `zetaback-agent`; the defaults here are the safe ones
//! documented in the README.

use std::time::Duration;

/// The zstd window (as a power of two) a decoder accepts by default: 8 MiB. zstd's own default
/// is 2^27 (128 MiB), which one frame header could make every decoder allocate; the agent's
/// sender (level 1) uses 2^19, `zstd -19` uses 2^23.
pub const DEFAULT_ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Limits on the listening socket (plaintext or TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this long is closed (also
    /// the idle time allowed between two requests of a keep-alive connection).
    pub header_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Limits on what the stream API stores, sends and decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Bytes one stream may have (as received: compressed if sent compressed); `None`: no
    /// limit. Over it: 413.
    pub max_stream_bytes: Option<u64>,
    /// Bytes one source host may have in the file store (live and archived backups plus its
    /// streams being written), and, counted apart, under the replica roots (its replicas'
    /// `used` plus its replica streams being received); `None`: no quota. Over it: 507.
    pub host_quota_bytes: Option<u64>,
    /// Free space the file store keeps: a new stream is refused (507) while less is free, and
    /// a stream being written is stopped (507, discarded) when less than half of it is left.
    pub min_free_bytes: u64,
    /// Free space replica mode keeps on a pool it receives into (the same rules as
    /// `min_free_bytes`, read from `zfs get available`); `None`: 5 % of the pool, at most 1 GiB.
    pub replica_min_free_bytes: Option<u64>,
    /// Uploads (PUT) at once; a further one waits up to `slot_wait`, then gets 503.
    pub max_uploads: usize,
    /// Downloads (GET of a stored stream) at once; likewise.
    pub max_downloads: usize,
    /// How long a stream waits for a free slot before it is refused.
    pub slot_wait: Duration,
    /// The largest zstd window accepted, as a power of two (a frame asking for more is
    /// refused instead of allocated).
    pub zstd_window_log_max: u32,
    /// A catalogue read is answered from the last scan when it is younger than this and
    /// nothing was written since (writes through this agent invalidate it at once).
    pub catalogue_max_age: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_stream_bytes: None,
            host_quota_bytes: None,
            min_free_bytes: 1024 * 1024 * 1024,
            replica_min_free_bytes: None,
            max_uploads: 4,
            max_downloads: 4,
            slot_wait: Duration::from_secs(20),
            zstd_window_log_max: DEFAULT_ZSTD_WINDOW_LOG_MAX,
            catalogue_max_age: Duration::from_secs(10),
        }
    }
}
