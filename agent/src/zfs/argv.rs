//! Argument vectors for every `zfs` / `zpool` command the agent runs. Pure functions: the names
//! in them are validated here (so nothing unvalidated reaches `zfs`), and the OpenZFS-only
//! variants are unit-tested without OpenZFS.

use zetaback_core::names::{validate_dataset, validate_full_snapshot, validate_snapshot_name};

use super::caps::{Capabilities, Capability};
use super::error::ZfsError;
use super::inert::{self, ReceivePurpose};
use super::parse::{INVENTORY_PROPERTIES, MANAGED_PROPERTY, MANIFEST_PROPERTY};

/// The hold tag zetaback puts on the base snapshot of the last backup.
pub const HOLD_TAG: &str = "zetaback";

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `dataset@snapshot`, validated.
pub fn full_snapshot(dataset: &str, snapshot: &str) -> Result<String, ZfsError> {
    validate_dataset(dataset)?;
    validate_snapshot_name(snapshot)?;
    let full = format!("{dataset}@{snapshot}");
    validate_full_snapshot(&full)?;
    Ok(full)
}

/// The inventory listing: `zfs list -Hp` where supported, else `zfs get -Hp` (zfs-fuse has no
/// `list -p`). `root` limits it to one dataset tree.
pub fn inventory(caps: &Capabilities, root: Option<&str>) -> Result<Vec<String>, ZfsError> {
    let recursive = match root {
        Some(root) => {
            validate_dataset(root)?;
            vec!["-r".to_owned()]
        }
        None => Vec::new(),
    };
    let mut args = if caps.has(Capability::ParsableList) {
        let mut a = owned(&["list", "-H", "-p", "-t", "all"]);
        a.extend(recursive);
        a.push("-o".into());
        a.push(format!("name,{}", INVENTORY_PROPERTIES.join(",")));
        a
    } else {
        let mut a = owned(&["get", "-H", "-p", "-o", "name,property,value"]);
        a.extend(recursive);
        a.push(INVENTORY_PROPERTIES.join(","));
        a
    };
    if let Some(root) = root {
        args.push(root.to_owned());
    }
    // `zfs list -r -t all` and `zfs get -r` both list the root's snapshots too.
    Ok(args)
}

/// `zfs snapshot -o zetaback.io:managed=on dataset@snapshot`.
pub fn snapshot(dataset: &str, snapshot: &str) -> Result<Vec<String>, ZfsError> {
    let full = full_snapshot(dataset, snapshot)?;
    Ok(vec![
        "snapshot".into(),
        "-o".into(),
        format!("{MANAGED_PROPERTY}=on"),
        full,
    ])
}

/// `zfs destroy dataset@snapshot` (never `-r`/`-R`: one snapshot, nothing else).
pub fn destroy_snapshot(dataset: &str, snapshot: &str) -> Result<Vec<String>, ZfsError> {
    Ok(vec!["destroy".into(), full_snapshot(dataset, snapshot)?])
}

/// `zfs set zetaback.io:manifest=<json> dataset@snapshot` (a replica's manifest).
pub fn set_manifest(dataset: &str, snapshot: &str, json: &str) -> Result<Vec<String>, ZfsError> {
    let full = full_snapshot(dataset, snapshot)?;
    if json.is_empty() || json.len() > 8000 || json.contains('\n') || json.contains('\0') {
        return Err(ZfsError::Parse {
            command: super::error::CommandLine(vec!["set".into(), MANIFEST_PROPERTY.into()]),
            detail: "a manifest property must be one line of at most 8000 bytes".into(),
        });
    }
    Ok(vec![
        "set".into(),
        format!("{MANIFEST_PROPERTY}={json}"),
        full,
    ])
}

/// `zfs get -H -p -r -o name,value zetaback.io:manifest <root>`.
pub fn manifests(root: &str) -> Result<Vec<String>, ZfsError> {
    validate_dataset(root)?;
    Ok(owned(&[
        "get",
        "-H",
        "-p",
        "-r",
        "-o",
        "name,value",
        MANIFEST_PROPERTY,
        root,
    ]))
}

/// `zfs hold|release zetaback dataset@snapshot`.
pub fn hold(
    caps: &Capabilities,
    release: bool,
    dataset: &str,
    snapshot: &str,
) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::Holds) {
        return Err(ZfsError::Unsupported { feature: "holds" });
    }
    Ok(vec![
        if release { "release" } else { "hold" }.into(),
        HOLD_TAG.into(),
        full_snapshot(dataset, snapshot)?,
    ])
}

/// What an incremental is taken against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBase {
    /// The base snapshot's short name (or bookmark name when `bookmark`).
    pub name: String,
    /// `-I` (all intermediate snapshots) instead of `-i`.
    pub intermediates: bool,
    /// The base is a bookmark `dataset#name` (OpenZFS only).
    pub bookmark: bool,
}

/// One `zfs send`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendRequest {
    pub dataset: String,
    pub snapshot: String,
    pub base: Option<SendBase>,
    /// `-c` where supported (blocks as compressed on disk).
    pub compressed: bool,
    /// `-w` (raw); an error where unsupported, since it changes what is sent.
    pub raw: bool,
    /// `-n -P`: estimate only.
    pub estimate: bool,
}

/// The argv of a `zfs send`.
pub fn send(caps: &Capabilities, req: &SendRequest) -> Result<Vec<String>, ZfsError> {
    let full = full_snapshot(&req.dataset, &req.snapshot)?;
    let mut args = vec!["send".to_owned()];
    if req.estimate {
        if !caps.has(Capability::SendSizeEstimate) {
            return Err(ZfsError::Unsupported {
                feature: "send -nP (size estimates)",
            });
        }
        args.push("-n".into());
        args.push("-P".into());
    }
    if req.compressed && caps.has(Capability::CompressedSend) {
        args.push("-c".into());
    }
    if req.raw {
        if !caps.has(Capability::RawSend) {
            return Err(ZfsError::Unsupported {
                feature: "send -w (raw)",
            });
        }
        args.push("-w".into());
    }
    if let Some(base) = &req.base {
        validate_snapshot_name(&base.name)?;
        if base.bookmark {
            if !caps.has(Capability::Bookmarks) || base.intermediates {
                return Err(ZfsError::Unsupported {
                    feature: "incrementals from a bookmark",
                });
            }
            args.push("-i".into());
            args.push(format!("{}#{}", req.dataset, base.name));
        } else {
            args.push(if base.intermediates { "-I" } else { "-i" }.into());
            args.push(full_snapshot(&req.dataset, &base.name)?);
        }
    }
    args.push(full);
    Ok(args)
}

/// `zfs send -n -v -t <token>`: prints what the token resumes, sends nothing (OpenZFS only).
pub fn decode_resume_token(caps: &Capabilities, token: &str) -> Result<Vec<String>, ZfsError> {
    let mut args = send_resume(caps, token)?;
    args.splice(1..1, ["-n".to_owned(), "-v".to_owned()]);
    Ok(args)
}

/// `zfs send -n -P -t <token>`: the size estimate of what a resumed send still sends.
pub fn estimate_resume(caps: &Capabilities, token: &str) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::SendSizeEstimate) {
        return Err(ZfsError::Unsupported {
            feature: "send size estimate",
        });
    }
    let mut args = send_resume(caps, token)?;
    args.splice(1..1, ["-n".to_owned(), "-P".to_owned()]);
    Ok(args)
}

/// `zfs get -H -p -o value guid <dataset@snapshot|dataset#bookmark>`.
pub fn guid(dataset: &str, name: &str, bookmark: bool) -> Result<Vec<String>, ZfsError> {
    let target = if bookmark {
        validate_dataset(dataset)?;
        validate_snapshot_name(name)?;
        format!("{dataset}#{name}")
    } else {
        full_snapshot(dataset, name)?
    };
    Ok(vec![
        "get".into(),
        "-H".into(),
        "-p".into(),
        "-o".into(),
        "value".into(),
        "guid".into(),
        target,
    ])
}

/// `zfs send -t <token>` (resume an interrupted resumable transfer; OpenZFS only).
pub fn send_resume(caps: &Capabilities, token: &str) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::ResumableSend) {
        return Err(ZfsError::Unsupported {
            feature: "resumable send",
        });
    }
    if token.is_empty()
        || token.starts_with('-')
        || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ZfsError::Parse {
            command: super::error::CommandLine(vec!["send".into(), "-t".into()]),
            detail: format!("{token:?} is not a receive_resume_token"),
        });
    }
    Ok(vec!["send".into(), "-t".into(), token.into()])
}

/// One `zfs receive`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiveRequest {
    /// The dataset to receive into (created by a full stream; must exist for an incremental).
    pub target: String,
    /// `-F` (roll back the target first). Only when the caller explicitly allows it.
    pub force: bool,
    /// `-s` where supported (an interrupted receive leaves a resume token).
    pub resumable: bool,
    /// What the received dataset is for: which properties the receive overrides
    /// ([`super::inert`]).
    pub purpose: ReceivePurpose,
}

/// The argv of a `zfs receive`.
pub fn receive(caps: &Capabilities, req: &ReceiveRequest) -> Result<Vec<String>, ZfsError> {
    validate_dataset(&req.target)?;
    let mut args = vec!["receive".to_owned()];
    if req.force {
        args.push("-F".into());
    }
    if req.resumable && caps.has(Capability::ResumableSend) {
        args.push("-s".into());
    }
    args.extend(inert::override_args(caps, req.purpose));
    args.push(req.target.clone());
    Ok(args)
}

/// `zfs receive -A <dataset>`: discards the partial state an interrupted `receive -s` left
/// (OpenZFS only), so that a fresh stream can be received.
pub fn receive_abort(caps: &Capabilities, dataset: &str) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::ResumableSend) {
        return Err(ZfsError::Unsupported {
            feature: "resumable receive",
        });
    }
    validate_dataset(dataset)?;
    Ok(owned(&["receive", "-A", dataset]))
}

/// `zfs get -H -p -o property,value used,available <dataset>`: its space in bytes
/// (`available` counts the pool's free space, quotas and reservations).
pub fn space(dataset: &str) -> Result<Vec<String>, ZfsError> {
    validate_dataset(dataset)?;
    Ok(owned(&[
        "get",
        "-H",
        "-p",
        "-o",
        "property,value",
        "used,available",
        dataset,
    ]))
}

/// `zfs get -H -p -o value receive_resume_token <dataset>`.
pub fn resume_token(caps: &Capabilities, dataset: &str) -> Result<Vec<String>, ZfsError> {
    if !caps.has(Capability::ResumableSend) {
        return Err(ZfsError::Unsupported {
            feature: "resumable send",
        });
    }
    validate_dataset(dataset)?;
    Ok(owned(&[
        "get",
        "-H",
        "-p",
        "-o",
        "value",
        "receive_resume_token",
        dataset,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(args: &[&str]) -> Vec<String> {
        owned(args)
    }

    #[test]
    fn space_reads_used_and_available_of_a_valid_name_only() {
        assert_eq!(
            space("tank/r").expect("valid"),
            s(&[
                "get",
                "-H",
                "-p",
                "-o",
                "property,value",
                "used,available",
                "tank/r"
            ])
        );
        assert!(space("-o").is_err());
        assert!(space("tank/r@snap").is_err());
    }

    #[test]
    fn zfs_fuse_inventory_uses_get() {
        let a = inventory(&Capabilities::none(), Some("tank/db")).expect("argv");
        assert_eq!(
            &a[..5],
            s(&["get", "-H", "-p", "-o", "name,property,value"]).as_slice()
        );
        assert_eq!(a[5], "-r");
        assert_eq!(a[a.len() - 1], "tank/db");
    }

    #[test]
    fn openzfs_inventory_uses_list_p() {
        let a = inventory(&Capabilities::all(), None).expect("argv");
        assert_eq!(
            &a[..6],
            s(&["list", "-H", "-p", "-t", "all", "-o"]).as_slice()
        );
        assert!(a[6].starts_with("name,type,creation"));
        assert_eq!(a.len(), 7);
    }

    #[test]
    fn snapshots_are_marked() {
        assert_eq!(
            snapshot("tank/db", "zb-1").expect("argv"),
            s(&["snapshot", "-o", "zetaback.io:managed=on", "tank/db@zb-1"])
        );
        assert!(snapshot("tank/db", "-r").is_err());
        assert!(snapshot("-R", "x").is_err());
        assert!(destroy_snapshot("tank/db", "a@b").is_err());
    }

    #[test]
    fn send_full_and_incremental_on_zfs_fuse() {
        let caps = Capabilities::from_iter([Capability::Holds]);
        let mut req = SendRequest {
            dataset: "tank/db".into(),
            snapshot: "zb-2".into(),
            compressed: true,
            ..Default::default()
        };
        assert_eq!(
            send(&caps, &req).expect("argv"),
            s(&["send", "tank/db@zb-2"])
        );
        req.base = Some(SendBase {
            name: "zb-1".into(),
            intermediates: false,
            bookmark: false,
        });
        assert_eq!(
            send(&caps, &req).expect("argv"),
            s(&["send", "-i", "tank/db@zb-1", "tank/db@zb-2"])
        );
        req.base = Some(SendBase {
            name: "zb-1".into(),
            intermediates: true,
            bookmark: false,
        });
        assert_eq!(
            send(&caps, &req).expect("argv"),
            s(&["send", "-I", "tank/db@zb-1", "tank/db@zb-2"])
        );
        req.estimate = true;
        assert!(matches!(
            send(&caps, &req),
            Err(ZfsError::Unsupported { .. })
        ));
        req.estimate = false;
        req.raw = true;
        assert!(matches!(
            send(&caps, &req),
            Err(ZfsError::Unsupported { .. })
        ));
    }

    #[test]
    fn send_on_openzfs_uses_its_flags() {
        let caps = Capabilities::all();
        let req = SendRequest {
            dataset: "tank/db".into(),
            snapshot: "zb-2".into(),
            base: Some(SendBase {
                name: "zb-1".into(),
                intermediates: false,
                bookmark: true,
            }),
            compressed: true,
            raw: true,
            estimate: true,
        };
        assert_eq!(
            send(&caps, &req).expect("argv"),
            s(&[
                "send",
                "-n",
                "-P",
                "-c",
                "-w",
                "-i",
                "tank/db#zb-1",
                "tank/db@zb-2"
            ])
        );
        assert_eq!(
            send_resume(&caps, "1-e604ea4bf-e0-789c63a2").expect("argv"),
            s(&["send", "-t", "1-e604ea4bf-e0-789c63a2"])
        );
        assert!(send_resume(&caps, "-R").is_err());
        assert_eq!(
            decode_resume_token(&caps, "1-e604ea4bf-e0-789c63a2").expect("argv"),
            s(&["send", "-n", "-v", "-t", "1-e604ea4bf-e0-789c63a2"])
        );
        assert!(decode_resume_token(&caps, "-R").is_err());
        assert!(decode_resume_token(&Capabilities::none(), "1-abc").is_err());
        assert_eq!(
            estimate_resume(&caps, "1-e604ea4bf-e0-789c63a2").expect("argv"),
            s(&["send", "-n", "-P", "-t", "1-e604ea4bf-e0-789c63a2"])
        );
        assert!(estimate_resume(&caps, "-R").is_err());
        assert!(estimate_resume(&Capabilities::none(), "1-abc").is_err());
        assert_eq!(
            guid("tank/db", "zb-1", true).expect("argv"),
            s(&["get", "-H", "-p", "-o", "value", "guid", "tank/db#zb-1"])
        );
        assert!(guid("tank/db", "-x", false).is_err());
        assert!(send_resume(&Capabilities::none(), "1-abc").is_err());
    }

    #[test]
    fn receive_force_only_when_asked() {
        let mut req = ReceiveRequest {
            target: "backup/h1/tank/db".into(),
            force: false,
            resumable: true,
            purpose: ReceivePurpose::Replica,
        };
        assert_eq!(
            receive(&Capabilities::none(), &req).expect("argv"),
            s(&["receive", "backup/h1/tank/db"])
        );
        assert_eq!(
            receive(&Capabilities::all(), &req).expect("argv"),
            s(&[
                "receive",
                "-s",
                "-u",
                "-o",
                "canmount=noauto",
                "-o",
                "setuid=off",
                "-o",
                "devices=off",
                "-o",
                "readonly=on",
                "-x",
                "mountpoint",
                "backup/h1/tank/db"
            ])
        );
        req.force = true;
        assert_eq!(
            receive(&Capabilities::none(), &req).expect("argv"),
            s(&["receive", "-F", "backup/h1/tank/db"])
        );
        req.target = "backup/../x".into();
        assert!(receive(&Capabilities::none(), &req).is_err());
    }

    #[test]
    fn resume_paths_are_openzfs_only() {
        let openzfs = Capabilities::all();
        let fuse = Capabilities::from_iter([Capability::Holds]);
        assert_eq!(
            receive_abort(&openzfs, "backup/r/h1/tank").expect("argv"),
            s(&["receive", "-A", "backup/r/h1/tank"])
        );
        assert!(matches!(
            receive_abort(&fuse, "backup/r/h1/tank"),
            Err(ZfsError::Unsupported { .. })
        ));
        assert!(receive_abort(&openzfs, "-x").is_err());
        assert_eq!(
            resume_token(&openzfs, "backup/r/h1/tank").expect("argv"),
            s(&[
                "get",
                "-H",
                "-p",
                "-o",
                "value",
                "receive_resume_token",
                "backup/r/h1/tank"
            ])
        );
        assert!(resume_token(&fuse, "backup/r/h1/tank").is_err());
        // The token captured from OpenZFS 2.3.2 (tests/fixtures) is accepted by send -t.
        let token = super::super::parse::parse_resume_token(include_str!(
            "../../tests/fixtures/openzfs-2.3.2-resume-token.txt"
        ))
        .expect("a token");
        assert_eq!(
            send_resume(&openzfs, &token).expect("argv"),
            s(&["send", "-t", &token])
        );
        // zfs-fuse has no resume: its `zfs get` of the property prints `-` (or fails).
        assert_eq!(super::super::parse::parse_resume_token("-\n"), None);
    }

    #[test]
    fn manifest_property() {
        assert_eq!(
            set_manifest("backup/r/h1/tank", "zb-1", r#"{"id":"1.full"}"#).expect("argv"),
            s(&[
                "set",
                r#"zetaback.io:manifest={"id":"1.full"}"#,
                "backup/r/h1/tank@zb-1"
            ])
        );
        assert!(set_manifest("backup/r", "zb-1", "a\nb").is_err());
        assert!(set_manifest("backup/r", "-x", "{}").is_err());
        assert_eq!(
            manifests("backup/r").expect("argv"),
            s(&[
                "get",
                "-H",
                "-p",
                "-r",
                "-o",
                "name,value",
                "zetaback.io:manifest",
                "backup/r"
            ])
        );
    }

    #[test]
    fn holds_need_the_capability() {
        assert!(hold(&Capabilities::none(), false, "tank/db", "zb-1").is_err());
        assert_eq!(
            hold(&Capabilities::all(), true, "tank/db", "zb-1").expect("argv"),
            s(&["release", "zetaback", "tank/db@zb-1"])
        );
    }
}
