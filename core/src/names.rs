//! Names that reach the `zfs` command or a file path: one set of rules, used both by the CRD
//! schema (as OpenAPI patterns, so the apiserver refuses bad input at admission) and by the
//! agents (so nothing that slipped past admission ever reaches `zfs`).
//!
//! ZFS's own rules: a dataset name is `pool/child/grandchild`; each component uses letters,
//! digits and `-_.:`; the pool begins with a letter; `@` separates a snapshot name. Names that
//! begin with `-` could be read as an option, so they are never valid.

use regex::Regex;
use std::sync::LazyLock;

/// ZFS's maximum dataset name length (ZFS_MAX_DATASET_NAME_LEN - 1).
pub const MAX_DATASET_NAME_LEN: usize = 255;

/// A dataset (filesystem or volume) name: `pool[/component]...`.
pub const DATASET_NAME_PATTERN: &str =
    r"^[A-Za-z][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:][A-Za-z0-9_.:-]*)*$";

/// A dataset pattern: a dataset name in which components may use the globs `*`, `**` and `?`.
pub const DATASET_GLOB_PATTERN: &str =
    r"^[A-Za-z*?][A-Za-z0-9_.:*?-]*(/[A-Za-z0-9_.:*?][A-Za-z0-9_.:*?-]*)*$";

/// A snapshot's short name (the part after `@`).
pub const SNAPSHOT_NAME_PATTERN: &str = r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]*$";

/// A Kubernetes object name (DNS-1123 subdomain), used for host and policy references.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A namespace name (DNS-1123 label).
pub const NAMESPACE_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An absolute path for a backup store: no `..` component, no NUL.
pub const STORE_PATH_PATTERN: &str = r"^/([^/\x00]+/?)*$";

static DATASET_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(DATASET_NAME_PATTERN));
static DATASET_GLOB: LazyLock<Regex> = LazyLock::new(|| compiled(DATASET_GLOB_PATTERN));
static SNAPSHOT_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(SNAPSHOT_NAME_PATTERN));

fn compiled(pattern: &str) -> Regex {
    // The patterns are constants of this module and covered by its tests.
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("constant pattern compiles")
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        name: String,
        max: usize,
    },
    #[error(
        "{kind} name {name:?} is not valid: use letters, digits and -_.: in each component, '/' between components, and do not begin with '-'"
    )]
    Invalid { kind: &'static str, name: String },
    #[error("{kind} name {name:?} has a '.' or '..' component")]
    DotComponent { kind: &'static str, name: String },
}

fn check(kind: &'static str, name: &str, re: &Regex) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_DATASET_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            max: MAX_DATASET_NAME_LEN,
        });
    }
    if !re.is_match(name) {
        return Err(NameError::Invalid {
            kind,
            name: name.to_owned(),
        });
    }
    if name.split('/').any(|c| c == "." || c == "..") {
        return Err(NameError::DotComponent {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Validates a dataset name such as `tank/db/pg`.
pub fn validate_dataset(name: &str) -> Result<(), NameError> {
    check("dataset", name, &DATASET_NAME)
}

/// Validates a dataset glob such as `tank/db/**`.
pub fn validate_dataset_glob(pattern: &str) -> Result<(), NameError> {
    check("dataset pattern", pattern, &DATASET_GLOB)
}

/// Validates a snapshot's short name (after the `@`).
pub fn validate_snapshot_name(name: &str) -> Result<(), NameError> {
    check("snapshot", name, &SNAPSHOT_NAME)
}

/// Validates a full snapshot name `dataset@snapshot`.
pub fn validate_full_snapshot(full: &str) -> Result<(), NameError> {
    match full.split_once('@') {
        Some((dataset, snap)) => {
            validate_dataset(dataset)?;
            validate_snapshot_name(snap)?;
            if full.len() > MAX_DATASET_NAME_LEN {
                return Err(NameError::TooLong {
                    kind: "snapshot",
                    name: full.to_owned(),
                    max: MAX_DATASET_NAME_LEN,
                });
            }
            Ok(())
        }
        None => Err(NameError::Invalid {
            kind: "snapshot",
            name: full.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_dataset_names() {
        for ok in [
            "tank",
            "tank/db",
            "tank/db/pg-15",
            "rpool/ROOT/debian_12",
            "t/a.b:c",
        ] {
            assert_eq!(validate_dataset(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_could_be_options_or_escape() {
        for bad in [
            "",
            "-R",
            "tank/-x",
            "tank//db",
            "tank/",
            "/tank",
            "tank db",
            "tank/db@snap",
            "tank/../etc",
            "tank/.",
            "tank;rm",
            "tank/$(x)",
            "1tank",
        ] {
            assert!(validate_dataset(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(matches!(
            validate_dataset(&"a".repeat(300)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn globs_allow_stars_but_not_options() {
        for ok in ["tank/**", "*/db", "tank/db?", "**"] {
            assert_eq!(validate_dataset_glob(ok), Ok(()), "{ok}");
        }
        for bad in ["-tank", "tank/-*", "tank/[ab]", "tank/**/", ""] {
            assert!(validate_dataset_glob(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn full_snapshot_names() {
        assert_eq!(validate_full_snapshot("tank/db@zb-1700000000"), Ok(()));
        for bad in ["tank/db", "tank/db@", "tank/db@-x", "tank/db@a@b", "@x"] {
            assert!(validate_full_snapshot(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_are_anchored_for_the_apiserver_too() {
        for p in [
            DATASET_NAME_PATTERN,
            DATASET_GLOB_PATTERN,
            SNAPSHOT_NAME_PATTERN,
            OBJECT_NAME_PATTERN,
        ] {
            assert!(p.starts_with('^') && p.ends_with('$'), "{p}");
        }
    }
}
