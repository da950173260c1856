//! zetaback's object-store target (README "Object-store targets"): backups in an S3-compatible
//! bucket, laid out like a file store (`core/src/store`) under a key prefix, with the same JSON
//! manifests.
//!
//! * [`keys`]: where a backup's stream and manifest live in the bucket (pure);
//! * [`connect`]: an S3 client for a `target.objectStore` and a set of credentials;
//! * [`explain`]: a failed request as a sentence for a status (the server's S3 error code);
//! * [`upload`]: a stream into a multipart upload (several parts at once, bounded memory),
//!   hashed as it goes, its manifest written only once the stream object is complete (a
//!   stream without a manifest is never a backup);
//! * [`pending`]: incomplete multipart uploads listed and aborted (a killed source's orphans);
//! * [`archive`]: a backup moved to the archive prefix (copy, manifest last, then the live
//!   objects deleted), crash-safe and idempotent;
//! * [`catalogue`]: the catalogue read back from the manifests in the bucket (paginated
//!   listing), with the same problems a file-store scan reports;
//! * [`cached`]: one host's or dataset's catalogue kept between reads: a read again lists the
//!   scope and fetches only the manifests that are new or changed (their ETag);
//! * [`verify`]: a stored stream re-read at a bounded rate against its manifest, the verdict
//!   recorded under `<prefix>/.verify/` (the controller's keys; the file store's rules).
//!
//! The S3 client is Apache Arrow's `object_store` crate: SigV4 signing, multipart uploads,
//! paginated listing and retries, maintained by the Arrow project; no hand-written signing.

pub mod archive;
pub mod cached;
pub mod catalogue;
pub mod connect;
pub mod explain;
pub mod keys;
pub mod lock;
pub mod pending;
pub mod upload;
pub mod verify;

pub use connect::{Credentials, connect, connect_locked};
pub use keys::Keys;
/// The S3 client crate, for callers that read or delete objects themselves.
pub use object_store;

/// What can go wrong talking to the bucket.
#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    /// The target or the credentials cannot make a client.
    #[error("object store {bucket}: {reason}")]
    Config { bucket: String, reason: String },
    /// The credentials file is missing or not what it should be.
    #[error("object-store credentials {path}: {reason}")]
    Credentials { path: String, reason: String },
    /// A request failed (the server's answer, or the connection): said in brief (the server's
    /// S3 error code and message, not its XML; the whole error is the `source`).
    #[error("object store {op} {key}: {}", explain::brief(&source.to_string()))]
    Request {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// The source stream failed while it was uploaded (the upload was aborted).
    #[error("the stream failed while it was uploaded: {0}")]
    Source(String),
    /// A task of the upload (a part's request, the hashing) panicked or was cancelled.
    #[error("upload task: {0}")]
    Task(String),
    /// A backup with this id already has a manifest: it is not written again.
    #[error("backup {0} is already stored (its manifest exists)")]
    AlreadyStored(String),
    /// What the server holds is not what was sent.
    #[error("object {key} has {stored} bytes after the upload, {sent} were sent")]
    SizeMismatch { key: String, stored: u64, sent: u64 },
    /// A verification could not be made (the backup is gone, it changed while it was read,
    /// its record is unreadable): no verdict.
    #[error("verification: {0}")]
    Verify(String),
    /// A name or a manifest is invalid.
    #[error(transparent)]
    Store(#[from] zetaback_core::store::StoreError),
}

impl ObjStoreError {
    pub(crate) fn request(
        op: &'static str,
        key: impl ToString,
        source: object_store::Error,
    ) -> Self {
        Self::Request {
            op,
            key: key.to_string(),
            source,
        }
    }
}
