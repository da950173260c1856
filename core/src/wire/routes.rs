//! The store API's routes: the patterns the target agent's router serves (axum's `{name}`
//! captures) and, beside each, the builder of the path a client sends, so the two cannot drift
//! apart. A path names a stored backup by source host, dataset (with `/` escaped as `+`, see
//! [`escape_dataset`]) and stream id; builders refuse names the store would refuse.

use std::fmt::Display;

use crate::names::validate_dataset;
use crate::store::{StoreError, escape_dataset, validate_host};

/// `GET`: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: the store's [`Catalogue`](crate::store::Catalogue); `?host=H`
/// ([`CatalogueQuery`](super::CatalogueQuery)) limits it to one source host.
pub const CATALOGUE: &str = "/v1/catalogue";
/// `PUT` a backup stream (source token), `GET` it back, `DELETE` it (admin token).
pub const STREAM: &str = "/v1/streams/{host}/{dataset}/{id}";
/// `POST`: move a backup to the archive area (admin token).
pub const ARCHIVE: &str = "/v1/archive/{host}/{dataset}/{id}";
/// `POST`: the same as [`ARCHIVE`], spelled under the stream.
pub const STREAM_ARCHIVE: &str = "/v1/streams/{host}/{dataset}/{id}/archive";
/// `POST` a [`VerifyRequest`](super::VerifyRequest) (admin token): queue stored backups to be
/// re-read and checked; `GET` the verifier's [`VerifyStatus`](super::VerifyStatus).
pub const VERIFY: &str = "/v1/verify";
/// `GET`: the resume token an interrupted receive left on a replica;
/// `?into=ROOT` ([`ResumeTokenQuery`](super::ResumeTokenQuery)).
pub const RESUME_TOKEN: &str = "/v1/resume-token/{host}/{dataset}";

/// The path of [`CATALOGUE`], for source host `host` or for all.
pub fn catalogue(host: Option<&str>) -> String {
    match host {
        Some(host) => format!("{CATALOGUE}?host={host}"),
        None => CATALOGUE.to_owned(),
    }
}

/// `/v1/{area}/{host}/{escaped dataset}/{id}`, with host and dataset checked.
fn backup_path(
    area: &str,
    host: &str,
    dataset: &str,
    id: impl Display,
) -> Result<String, StoreError> {
    let escaped = escape_dataset(dataset)?;
    validate_host(host)?;
    Ok(format!("/v1/{area}/{host}/{escaped}/{id}"))
}

/// The path of [`STREAM`] for backup `id` of `host:dataset`.
pub fn stream(host: &str, dataset: &str, id: impl Display) -> Result<String, StoreError> {
    backup_path("streams", host, dataset, id)
}

/// The path of [`ARCHIVE`] for backup `id` of `host:dataset`.
pub fn archive(host: &str, dataset: &str, id: impl Display) -> Result<String, StoreError> {
    backup_path("archive", host, dataset, id)
}

/// The path of [`RESUME_TOKEN`] for `host:dataset` received under the replica root `into`.
pub fn resume_token(host: &str, dataset: &str, into: &str) -> Result<String, StoreError> {
    validate_dataset(into)?;
    let escaped = escape_dataset(dataset)?;
    validate_host(host)?;
    Ok(format!("/v1/resume-token/{host}/{escaped}?into={into}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pattern` with its captures filled in, as the router matches a path.
    fn fill(pattern: &str, captures: &[(&str, &str)]) -> String {
        captures
            .iter()
            .fold(pattern.to_owned(), |p, (name, value)| {
                p.replace(&format!("{{{name}}}"), value)
            })
    }

    #[test]
    fn each_builder_fills_its_route() {
        let backup = [
            ("host", "db-1"),
            ("dataset", "tank+db"),
            ("id", "1700000000.full"),
        ];
        assert_eq!(
            stream("db-1", "tank/db", "1700000000.full").expect("stream"),
            fill(STREAM, &backup)
        );
        assert_eq!(
            archive("db-1", "tank/db", "1700000000.full").expect("archive"),
            fill(ARCHIVE, &backup)
        );
        assert_eq!(
            resume_token("db-1", "tank/db", "backup/replicas").expect("token"),
            format!("{}?into=backup/replicas", fill(RESUME_TOKEN, &backup[..2]))
        );
        assert_eq!(catalogue(None), CATALOGUE);
        assert_eq!(catalogue(Some("db-1")), format!("{CATALOGUE}?host=db-1"));
    }

    #[test]
    fn builders_refuse_what_the_store_refuses() {
        assert!(matches!(
            stream("../etc", "tank/db", "1.full"),
            Err(StoreError::InvalidHost(_))
        ));
        assert!(matches!(
            archive("db-1", "-R", "1.full"),
            Err(StoreError::Name(_))
        ));
        assert!(matches!(
            resume_token("db-1", "tank/db", "-o x"),
            Err(StoreError::Name(_))
        ));
    }
}
