//! The two checksums of a transfer.
//!
//! - **sha256** is what the store records in a backup's manifest and what a restore verifies
//!   the stored bytes against. Only the receiving agent computes it, over exactly the bytes it
//!   writes.
//! - **xxh3-128** is the *transit* check: the sender hashes what `zfs send` produced, sends it
//!   as the `x-zetaback-xxh3` trailer, and the receiver compares it with the same hash over
//!   what arrived (before anything becomes a backup), and echoes it back so the sender compares
//!   too. It guards against corruption between the two agents (TCP's 16-bit checksum lets some
//!   through), not against an attacker: one who can rewrite the stream can rewrite a sha256
//!   trailer just as well, which is why TLS between the agents is the answer to that, not a
//!   slower hash. xxh3 runs at more than 10 GB/s per core; sha256 on both sides cost about a
//!   third of each agent's CPU (bench/RESULTS.md, `## transfer`).

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3Default;

/// A streaming xxh3-128.
#[derive(Clone)]
pub struct Transit(Xxh3Default);

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transit(xxh3-128)")
    }
}

impl Default for Transit {
    fn default() -> Self {
        Self::new()
    }
}

impl Transit {
    pub fn new() -> Self {
        Self(Xxh3Default::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// 32 lower-case hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0.digest128())
    }
}

/// xxh3-128 of one buffer, as [`Transit::hex`] gives it.
pub fn transit_of(data: &[u8]) -> String {
    let mut t = Transit::new();
    t.update(data);
    t.hex()
}

/// sha256 of one buffer, lower-case hex.
pub fn sha256_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Both hashes over the same bytes (the receiver's view).
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub sha256: Option<Sha256>,
    pub transit: Transit,
    pub bytes: u64,
}

impl Received {
    /// `with_sha256`: also compute the sha256 (what a stored file's manifest records).
    pub fn new(with_sha256: bool) -> Self {
        Self {
            sha256: with_sha256.then(Sha256::new),
            transit: Transit::new(),
            bytes: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(s) = &mut self.sha256 {
            s.update(data);
        }
        self.transit.update(data);
        self.bytes += data.len() as u64;
    }

    /// (sha256 hex if computed, xxh3-128 hex).
    pub fn finish(self) -> (Option<String>, String) {
        (
            self.sha256.map(|s| hex::encode(s.finalize())),
            self.transit.hex(),
        )
    }
}

/// A sha256 computed on a blocking thread of its own, fed clones of the chunks (reference
/// counts, not copies) through a bounded queue: on a second core the hashing overlaps the
/// socket reads and the pipe writes of the task that feeds it, instead of taking turns with
/// them; the queue keeps memory bounded (a slow hasher holds the feeder back).
pub struct BackgroundSha256 {
    chunks: tokio::sync::mpsc::Sender<bytes::Bytes>,
    hasher: tokio::task::JoinHandle<String>,
}

/// The hashing thread ended early (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the checksum thread stopped")]
pub struct HasherGone;

impl BackgroundSha256 {
    /// Starts the thread; at most `queue` chunks wait for it.
    pub fn spawn(queue: usize) -> Self {
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(queue);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut sha = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                sha.update(&chunk);
            }
            hex::encode(sha.finalize())
        });
        Self { chunks, hasher }
    }

    /// Queues a chunk (waits while the queue is full).
    pub async fn update(&self, chunk: bytes::Bytes) -> Result<(), HasherGone> {
        self.chunks.send(chunk).await.map_err(|_| HasherGone)
    }

    /// The hex sha256 of everything queued.
    pub async fn finish(self) -> Result<String, HasherGone> {
        drop(self.chunks);
        self.hasher.await.map_err(|_| HasherGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_sha256_equals_one_shot() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 3 + i / 7) as u8).collect();
        let sha = BackgroundSha256::spawn(2);
        for piece in data.chunks(4_099) {
            sha.update(bytes::Bytes::copy_from_slice(piece))
                .await
                .expect("queued");
        }
        assert_eq!(sha.finish().await.expect("hash"), sha256_of(&data));
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut t = Transit::new();
        let mut r = Received::new(true);
        for piece in data.chunks(65_537) {
            t.update(piece);
            r.update(piece);
        }
        assert_eq!(t.hex(), transit_of(&data));
        assert_eq!(t.hex().len(), 32);
        let (sha, transit) = r.finish();
        assert_eq!(sha.as_deref(), Some(sha256_of(&data).as_str()));
        assert_eq!(transit, transit_of(&data));
        // A single flipped bit changes the transit hash.
        let mut bad = data.clone();
        bad[500_000] ^= 1;
        assert_ne!(transit_of(&bad), transit_of(&data));
    }

    #[test]
    fn known_value() {
        // xxh3-128 of the empty input (the reference implementation's test vector).
        assert_eq!(transit_of(b""), "99aa06d3014798d86001c324468d497f");
    }
}
