//! Bookmarks and tagged holds: the argument vectors, the parser of `zfs get userrefs`, and the
//! [`Zfs`] calls the agent uses to keep the base of the next incremental on a source (see
//! `crate::base_keep`). Bookmarks are OpenZFS only; holds exist on zfs-fuse too. The names
//! in every argument vector are validated here.

use zetaback_core::names::{validate_dataset, validate_snapshot_name};

use super::Zfs;
use super::argv::full_snapshot;
use super::caps::{Capabilities, Capability};
use super::error::ZfsError;

/// `dataset#name`, validated (a bookmark is named like the snapshot it was made from).
pub fn bookmark_name(dataset: &str, name: &str) -> Result<String, ZfsError> {
    validate_dataset(dataset)?;
    validate_snapshot_name(name)?;
    Ok(format!("{dataset}#{name}"))
}

/// `zfs bookmark dataset@name dataset#name`.
pub fn bookmark_argv(
    caps: &Capabilities,
    dataset: &str,
    snapshot: &str,
) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::Bookmarks) {
        return Err(ZfsError::Unsupported {
            feature: "bookmarks",
        });
    }
    Ok(vec![
        "bookmark".into(),
        full_snapshot(dataset, snapshot)?,
        bookmark_name(dataset, snapshot)?,
    ])
}

/// `zfs destroy dataset#name` (a bookmark only: the `#` is always there).
pub fn destroy_bookmark_argv(dataset: &str, name: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec!["destroy".into(), bookmark_name(dataset, name)?])
}

/// `zfs get -H -p -o value creation dataset#name`: a bookmark keeps its snapshot's creation
/// time, so an incremental from it gets the same stream id as one from the snapshot.
pub fn bookmark_creation_argv(dataset: &str, name: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec![
        "get".into(),
        "-H".into(),
        "-p".into(),
        "-o".into(),
        "value".into(),
        "creation".into(),
        bookmark_name(dataset, name)?,
    ])
}

/// `zfs hold|release TAG dataset@snapshot`.
pub fn hold_argv(
    caps: &Capabilities,
    release: bool,
    tag: &str,
    dataset: &str,
    snapshot: &str,
) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::Holds) {
        return Err(ZfsError::Unsupported { feature: "holds" });
    }
    Ok(vec![
        if release { "release" } else { "hold" }.into(),
        tag.into(),
        full_snapshot(dataset, snapshot)?,
    ])
}

/// `zfs get -H -p -o name,value userrefs dataset@a dataset@b …` (how many holds each has;
/// zfs-fuse's `zfs holds`, which would name them, does not work).
pub fn userrefs_argv(dataset: &str, snapshots: &[String]) -> Result<Vec<String>, ZfsError> {
    let mut args: Vec<String> = ["get", "-H", "-p", "-o", "name,value", "userrefs"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for s in snapshots {
        args.push(full_snapshot(dataset, s)?);
    }
    Ok(args)
}

/// Parses [`userrefs_argv`]'s output: (`dataset@name`, holds).
pub fn parse_userrefs(text: &str) -> Result<Vec<(String, u64)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, n) = l
                .split_once('\t')
                .ok_or_else(|| format!("no tab in {l:?}"))?;
            let n = n
                .trim()
                .parse()
                .map_err(|_| format!("userrefs {:?} of {name} is not a number", n.trim()))?;
            Ok((name.to_owned(), n))
        })
        .collect()
}

impl Zfs {
    /// Bookmarks `dataset@snapshot` as `dataset#snapshot` (OpenZFS).
    pub async fn bookmark(&self, dataset: &str, snapshot: &str) -> Result<(), ZfsError> {
        let args = bookmark_argv(&self.caps, dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// The creation time (seconds) of the bookmark `dataset#name`; an error when there is
    /// none.
    pub async fn bookmark_creation(&self, dataset: &str, name: &str) -> Result<i64, ZfsError> {
        let args = bookmark_creation_argv(dataset, name)?;
        let out = self.output(&args, true).await?;
        out.trim().parse().map_err(|_| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail: format!("creation {:?} is not a number", out.trim()),
        })
    }

    /// Destroys the bookmark `dataset#name`.
    pub async fn destroy_bookmark(&self, dataset: &str, name: &str) -> Result<(), ZfsError> {
        let args = destroy_bookmark_argv(dataset, name)?;
        self.output(&args, true).await.map(drop)
    }

    /// Puts (or releases) the hold `tag` on `dataset@snapshot`.
    pub async fn hold_tagged(
        &self,
        tag: &str,
        dataset: &str,
        snapshot: &str,
        release: bool,
    ) -> Result<(), ZfsError> {
        let args = hold_argv(&self.caps, release, tag, dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// How many holds each of the given snapshots of `dataset` has (none asked: none).
    pub async fn userrefs(
        &self,
        dataset: &str,
        snapshots: &[String],
    ) -> Result<Vec<(String, u64)>, ZfsError> {
        if snapshots.is_empty() {
            return Ok(Vec::new());
        }
        let args = userrefs_argv(dataset, snapshots)?;
        let out = self.output(&args, true).await?;
        parse_userrefs(&out).map_err(|detail| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Capabilities {
        Capabilities::all()
    }

    #[test]
    fn bookmark_of_a_snapshot_names_both() {
        assert_eq!(
            bookmark_argv(&all(), "tank/db", "zb-1").expect("argv"),
            ["bookmark", "tank/db@zb-1", "tank/db#zb-1"]
        );
    }

    #[test]
    fn bookmarks_need_the_capability() {
        let none = Capabilities::default();
        assert!(matches!(
            bookmark_argv(&none, "tank/db", "zb-1"),
            Err(ZfsError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_bookmark_destroy_always_names_a_bookmark() {
        assert_eq!(
            destroy_bookmark_argv("tank/db", "zb-1").expect("argv"),
            ["destroy", "tank/db#zb-1"]
        );
        // A name that would make it a snapshot, a dataset or a second target is refused.
        for bad in ["zb-1@x", "zb 1", "", "a/b", "-r"] {
            assert!(destroy_bookmark_argv("tank/db", bad).is_err(), "{bad:?}");
        }
        assert!(destroy_bookmark_argv("-r", "zb-1").is_err());
    }

    #[test]
    fn tagged_holds_and_releases() {
        assert_eq!(
            hold_argv(&all(), false, "zetaback-base", "tank/db", "zb-1").expect("argv"),
            ["hold", "zetaback-base", "tank/db@zb-1"]
        );
        assert_eq!(
            hold_argv(&all(), true, "zetaback-base", "tank/db", "zb-1").expect("argv"),
            ["release", "zetaback-base", "tank/db@zb-1"]
        );
        assert!(hold_argv(&Capabilities::default(), false, "t", "tank/db", "zb-1").is_err());
    }

    #[test]
    fn userrefs_of_several_snapshots() {
        assert_eq!(
            userrefs_argv("tank/db", &["zb-1".into(), "zb-2".into()]).expect("argv"),
            [
                "get",
                "-H",
                "-p",
                "-o",
                "name,value",
                "userrefs",
                "tank/db@zb-1",
                "tank/db@zb-2"
            ]
        );
        assert!(userrefs_argv("tank/db", &["bad name".into()]).is_err());
    }

    /// The output of zfs-fuse (seen on this host: `coldcihold2@a\t0`) and OpenZFS.
    #[test]
    fn parses_userrefs() {
        assert_eq!(
            parse_userrefs("coldcihold2@a\t0\nzbvm/db@zb-2\t2\n").expect("parse"),
            [
                ("coldcihold2@a".to_owned(), 0),
                ("zbvm/db@zb-2".to_owned(), 2)
            ]
        );
        assert!(parse_userrefs("").expect("empty").is_empty());
        assert!(parse_userrefs("p@a\t-\n").is_err());
        assert!(parse_userrefs("p@a 1\n").is_err());
    }
}
