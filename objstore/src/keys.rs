//! Where a backup lives in a bucket: the file store's layout (`core/src/store/layout.rs`)
//! under the target's prefix, `/` separated:
//!
//! ```text
//! <prefix>/<host>/<dataset, '/' escaped as '+'>/<id>          the stream
//! <prefix>/<host>/<dataset, '/' escaped as '+'>/<id>.json     its manifest (written last)
//! <prefix>/.archive/<host>/<escaped dataset>/<id>[.json]      archived
//! <prefix>/.verify/<host>/<escaped dataset>/<id>.json          verification record
//! ```
//!
//! A source's credentials are scoped to `<prefix>/<host>/`: it can reach nothing else, so it
//! can neither forge nor remove a verification record (the controller writes them).

use object_store::path::Path;
use zetaback_core::store::layout::{ARCHIVE_DIR, MANIFEST_SUFFIX, VERIFY_DIR};
use zetaback_core::store::{StoreError, StreamId, escape_dataset, unescape_dataset, validate_host};

/// The key layout of one target (its prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: Option<String>,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub archived: bool,
    pub host: String,
    pub dataset: String,
    pub id: StreamId,
    /// The manifest (`<id>.json`) rather than the stream.
    pub manifest: bool,
}

impl Keys {
    /// The layout under `prefix` (`None` or `""`: the bucket's root). Leading and trailing
    /// `/` are ignored.
    pub fn new(prefix: Option<&str>) -> Self {
        let prefix = prefix
            .map(|p| p.trim_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        Self { prefix }
    }

    fn join(&self, rest: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{rest}"),
            None => rest.to_owned(),
        }
    }

    /// Everything under the prefix (what a catalogue lists).
    pub fn root(&self) -> Option<Path> {
        self.prefix.as_deref().map(Path::from)
    }

    /// `<prefix>/<host>/` as text: what a source's credentials are restricted to.
    pub fn host_prefix(&self, host: &str) -> Result<String, StoreError> {
        validate_host(host)?;
        Ok(self.join(&format!("{host}/")))
    }

    /// The directory of one source host's backups, live or archived.
    pub fn host_dir(&self, host: &str, archived: bool) -> Result<String, StoreError> {
        validate_host(host)?;
        Ok(if archived {
            self.join(&format!("{ARCHIVE_DIR}/{host}"))
        } else {
            self.join(host)
        })
    }

    /// The directory of one dataset's backups, live or archived.
    pub fn dataset_dir(
        &self,
        host: &str,
        dataset: &str,
        archived: bool,
    ) -> Result<String, StoreError> {
        validate_host(host)?;
        let escaped = escape_dataset(dataset)?;
        let rel = if archived {
            format!("{ARCHIVE_DIR}/{host}/{escaped}")
        } else {
            format!("{host}/{escaped}")
        };
        Ok(self.join(&rel))
    }

    /// The stream object of a backup.
    pub fn stream(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
        archived: bool,
    ) -> Result<Path, StoreError> {
        Ok(Path::from(format!(
            "{}/{id}",
            self.dataset_dir(host, dataset, archived)?
        )))
    }

    /// The manifest object of a backup.
    pub fn manifest(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
        archived: bool,
    ) -> Result<Path, StoreError> {
        Ok(Path::from(format!(
            "{}/{}",
            self.dataset_dir(host, dataset, archived)?,
            id.manifest_name()
        )))
    }

    /// The directory of one host's verification records, or of one of its datasets'.
    pub fn verification_dir(
        &self,
        host: &str,
        dataset: Option<&str>,
    ) -> Result<String, StoreError> {
        validate_host(host)?;
        Ok(match dataset {
            Some(d) => self.join(&format!("{VERIFY_DIR}/{host}/{}", escape_dataset(d)?)),
            None => self.join(&format!("{VERIFY_DIR}/{host}")),
        })
    }

    /// The verification record of a backup (one per backup, live or archived: the record
    /// stays valid when the backup moves to the archive).
    pub fn verification(
        &self,
        host: &str,
        dataset: &str,
        id: &StreamId,
    ) -> Result<Path, StoreError> {
        Ok(Path::from(format!(
            "{}/{}",
            self.verification_dir(host, Some(dataset))?,
            id.manifest_name()
        )))
    }

    /// What `key` names if it is a verification record of this layout: (host, dataset, id).
    pub fn parse_verification(&self, key: &str) -> Option<(String, String, StreamId)> {
        let rel = match &self.prefix {
            Some(p) => key.strip_prefix(p.as_str())?.strip_prefix('/')?,
            None => key,
        };
        let [VERIFY_DIR, host, escaped, name] = rel.split('/').collect::<Vec<_>>()[..] else {
            return None;
        };
        validate_host(host).ok()?;
        let dataset = unescape_dataset(escaped).ok()?;
        let id_text = name.strip_suffix(MANIFEST_SUFFIX)?;
        let id: StreamId = id_text.parse().ok()?;
        (id.to_string() == id_text).then_some((host.to_owned(), dataset, id))
    }

    /// What `key` names, if it is a stream or a manifest of this layout (anything else,
    /// including keys outside the prefix, is `None`).
    pub fn parse(&self, key: &str) -> Option<ParsedKey> {
        let rel = match &self.prefix {
            Some(p) => key.strip_prefix(p.as_str())?.strip_prefix('/')?,
            None => key,
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let (archived, host, escaped, name) = match parts.as_slice() {
            [ARCHIVE_DIR, host, escaped, name] => (true, *host, *escaped, *name),
            [host, escaped, name] if *host != ARCHIVE_DIR => (false, *host, *escaped, *name),
            _ => return None,
        };
        validate_host(host).ok()?;
        let dataset = unescape_dataset(escaped).ok()?;
        let (id_text, manifest) = match name.strip_suffix(MANIFEST_SUFFIX) {
            Some(id) => (id, true),
            None => (name, false),
        };
        let id: StreamId = id_text.parse().ok()?;
        // Only the canonical spelling: a key that parses but prints otherwise is not ours.
        (id.to_string() == id_text).then_some(ParsedKey {
            archived,
            host: host.to_owned(),
            dataset,
            id,
            manifest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(ts: i64) -> StreamId {
        StreamId::Full { ts }
    }

    #[test]
    fn keys_follow_the_file_layout_under_the_prefix() {
        let k = Keys::new(Some("/clusters/prod/"));
        let id = StreamId::Incremental {
            ts: 20,
            base_ts: 10,
        };
        assert_eq!(
            k.stream("db-1", "tank/db", &id, false).unwrap().as_ref(),
            "clusters/prod/db-1/tank+db/20.incremental.10"
        );
        assert_eq!(
            k.manifest("db-1", "tank/db", &full(5), true)
                .unwrap()
                .as_ref(),
            "clusters/prod/.archive/db-1/tank+db/5.full.json"
        );
        assert_eq!(k.host_prefix("db-1").unwrap(), "clusters/prod/db-1/");
        assert_eq!(Keys::new(None).host_prefix("db-1").unwrap(), "db-1/");
        assert_eq!(Keys::new(Some("")), Keys::new(None));
    }

    #[test]
    fn verification_records_live_apart_from_every_host_and_parse_back() {
        let k = Keys::new(Some("p"));
        let id = StreamId::Incremental {
            ts: 20,
            base_ts: 10,
        };
        let key = k.verification("db-1", "tank/db", &id).unwrap();
        assert_eq!(
            key.as_ref(),
            "p/.verify/db-1/tank+db/20.incremental.10.json"
        );
        assert_eq!(
            k.parse_verification(key.as_ref()),
            Some(("db-1".into(), "tank/db".into(), id))
        );
        assert_eq!(k.parse(key.as_ref()), None, "a record is not a backup");
        assert_eq!(k.verification_dir("db-1", None).unwrap(), "p/.verify/db-1");
        assert!(!key.as_ref().starts_with(&k.host_prefix("db-1").unwrap()));
        for bad in [
            "p/.verify/db-1/tank+db/20.incremental.10", // not .json
            "p/.verify/db-1/tank+db/x/1.full.json",     // too deep
            "p/db-1/tank+db/1.full.json",               // a manifest
            "q/.verify/db-1/tank+db/1.full.json",       // another prefix
            "p/.verify/DB/tank+db/1.full.json",         // not a host
            "p/.verify/db-1/tank+db/01.full.json",      // not canonical
        ] {
            assert_eq!(k.parse_verification(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_names_make_no_key() {
        let k = Keys::new(None);
        assert!(k.stream("Db_1", "tank/db", &full(1), false).is_err());
        assert!(k.stream("db-1", "tank/../etc", &full(1), false).is_err());
        assert!(k.host_prefix("../x").is_err());
    }

    #[test]
    fn parse_refuses_what_is_not_a_backup_of_this_layout() {
        let k = Keys::new(Some("p"));
        for key in [
            "q/db-1/tank+db/1.full",          // another prefix
            "p/db-1/tank+db/01.full",         // not canonical
            "p/db-1/tank+db/1.full.json.tmp", // not a manifest
            "p/db-1/tank/db/1.full",          // unescaped dataset
            "p/.archive/1.full",              // too short
            "p/db-1/tank+db/x/1.full",        // too deep
            "p/DB/tank+db/1.full",            // not a host name
            "p/db-1/tank+db/2.incremental.3", // base after the snapshot
            "pdb-1/tank+db/1.full",           // the prefix must end at a '/'
        ] {
            assert_eq!(k.parse(key), None, "{key}");
        }
        let p = k.parse("p/.archive/db-1/tank+db/1.full.json").unwrap();
        assert!(p.archived && p.manifest);
        assert_eq!(
            (p.host.as_str(), p.dataset.as_str(), p.id),
            ("db-1", "tank/db", full(1))
        );
    }

    proptest! {
        #[test]
        fn parse_inverts_the_key_functions(
            prefix in proptest::option::of("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}"),
            host in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
            dataset in "[a-z][a-z0-9_.:-]{0,8}(/[a-z][a-z0-9_.:-]{0,8}){0,3}",
            ts in 1i64..4_000_000_000,
            base in proptest::option::of(0i64..1_000_000_000),
            archived: bool,
            manifest: bool,
        ) {
            let keys = Keys::new(prefix.as_deref());
            let id = match base {
                Some(b) if b < ts => StreamId::Incremental { ts, base_ts: b },
                _ => StreamId::Full { ts },
            };
            let path = if manifest {
                keys.manifest(&host, &dataset, &id, archived)
            } else {
                keys.stream(&host, &dataset, &id, archived)
            };
            prop_assume!(path.is_ok());
            let parsed = keys.parse(path.unwrap().as_ref()).expect("a key of the layout parses");
            prop_assert_eq!(parsed, ParsedKey { archived, host, dataset, id, manifest });
        }
    }
}
