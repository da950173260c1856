//! Resume tokens, decoded and checked before they are used.
//!
//! In replica mode the *target* hands the source the `receive_resume_token` of an interrupted
//! receive, and the source resumes with `zfs send -t <token>`. The token names what is sent
//! (`toname`, `toguid`, and for an incremental `fromguid`), so a target that forges one could
//! pick which snapshot of which dataset the source sends. The source therefore decodes it first
//! with `zfs send -nvt <token>` (OpenZFS prints the token's nvlist) and uses it only when it
//! names exactly the job's snapshot (by name and guid) and the job's base (by guid).

use std::collections::BTreeMap;

/// What a resume token says it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTokenContents {
    /// `dataset@snapshot` the stream ends at.
    pub toname: String,
    /// The guid of that snapshot.
    pub toguid: u64,
    /// The guid of the incremental's base (absent or 0 for a full stream).
    pub fromguid: Option<u64>,
}

/// Parses the output of `zfs send -nvt <token>`:
///
/// ```text
/// resume token contents:
/// nvlist version: 0
///         fromguid = 0x8cb2a4ec5a1e2d31
///         object = 0x3
///         offset = 0x20000
///         bytes = 0x2a8f40
///         toguid = 0x1d9c7bd8c4e21b7
///         toname = tank/db@zb-2
/// ```
pub fn parse_token_contents(text: &str) -> Result<ResumeTokenContents, String> {
    let body = text
        .split_once("resume token contents:")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("no 'resume token contents:' in {text:?}"))?;
    let mut fields = BTreeMap::new();
    for line in body.lines() {
        if let Some((k, v)) = line.trim().split_once(" = ") {
            fields.entry(k.trim()).or_insert(v.trim());
        }
    }
    let toname = fields
        .get("toname")
        .ok_or_else(|| format!("the token names no toname: {text:?}"))?
        .to_string();
    let toguid = fields
        .get("toguid")
        .ok_or_else(|| format!("the token has no toguid: {text:?}"))
        .and_then(|v| parse_u64(v))?;
    let fromguid = match fields.get("fromguid") {
        Some(v) => Some(parse_u64(v)?).filter(|g| *g != 0),
        None => None,
    };
    Ok(ResumeTokenContents {
        toname,
        toguid,
        fromguid,
    })
}

/// A number as `nvlist_print` writes it: `0x…` hex for uint64, else decimal.
fn parse_u64(v: &str) -> Result<u64, String> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .map_err(|_| format!("{v:?} is not a number"))
}

/// What the job sends: the snapshot (name and guid) and its base's guid, if incremental.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedSend {
    pub toname: String,
    pub toguid: u64,
    pub fromguid: Option<u64>,
}

/// Why a token is not the job's; `Ok` when it names exactly what the job sends.
pub fn check_token(token: &ResumeTokenContents, job: &ExpectedSend) -> Result<(), String> {
    if token.toname != job.toname {
        return Err(format!(
            "the resume token resumes {}, not this job's {}",
            token.toname, job.toname
        ));
    }
    if token.toguid != job.toguid {
        return Err(format!(
            "the resume token names {} with guid {:#x}, but the local snapshot's guid is {:#x}",
            token.toname, token.toguid, job.toguid
        ));
    }
    match (token.fromguid, job.fromguid) {
        (None, None) => Ok(()),
        (Some(t), Some(j)) if t == j => Ok(()),
        (t, j) => Err(format!(
            "the resume token's base ({}) is not this job's ({})",
            guid_text(t),
            guid_text(j)
        )),
    }
}

fn guid_text(g: Option<u64>) -> String {
    g.map_or_else(|| "a full stream".to_owned(), |g| format!("guid {g:#x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from OpenZFS 2.3.2 in the test VM (e2e/scripts/capture-openzfs-fixtures.sh).
    const CAPTURED: &str = include_str!("../../tests/fixtures/openzfs-2.3.2-send-nvt.txt");

    /// The token of an interrupted full receive of zbfix/db@zb-2: it names that snapshot, by
    /// name and by the guid `zfs get guid` printed for it.
    #[test]
    fn parses_the_captured_output() {
        let c = parse_token_contents(CAPTURED).expect("parses");
        let guid: u64 = include_str!("../../tests/fixtures/openzfs-2.3.2-guid.txt")
            .trim()
            .parse()
            .expect("captured guid");
        assert_eq!(
            c,
            ResumeTokenContents {
                toname: "zbfix/db@zb-2".into(),
                toguid: guid,
                fromguid: None,
            }
        );
    }

    #[test]
    fn parses_hex_and_decimal_and_refuses_garbage() {
        let text = "resume token contents:\nnvlist version: 0\n\tfromguid = 0x10\n\tobject = 0x3\n\ttoguid = 255\n\ttoname = tank/db@b\n";
        assert_eq!(
            parse_token_contents(text),
            Ok(ResumeTokenContents {
                toname: "tank/db@b".into(),
                toguid: 255,
                fromguid: Some(16),
            })
        );
        assert!(parse_token_contents("cannot resume send: bad token").is_err());
        assert!(parse_token_contents("resume token contents:\n\ttoname = a@b\n").is_err());
        assert!(
            parse_token_contents("resume token contents:\n\ttoname = a@b\n\ttoguid = 0xzz\n")
                .is_err()
        );
        let full = "resume token contents:\n\tfromguid = 0x0\n\ttoguid = 0x1\n\ttoname = a@b\n";
        assert_eq!(parse_token_contents(full).expect("parses").fromguid, None);
    }

    #[test]
    fn a_token_must_name_the_jobs_snapshot_and_base() {
        let job = ExpectedSend {
            toname: "tank/db@zb-2".into(),
            toguid: 7,
            fromguid: Some(5),
        };
        let ok = ResumeTokenContents {
            toname: "tank/db@zb-2".into(),
            toguid: 7,
            fromguid: Some(5),
        };
        assert_eq!(check_token(&ok, &job), Ok(()));
        let other_snapshot = ResumeTokenContents {
            toname: "tank/secret@zb-2".into(),
            ..ok.clone()
        };
        assert!(
            check_token(&other_snapshot, &job)
                .unwrap_err()
                .contains("tank/secret@zb-2")
        );
        let other_guid = ResumeTokenContents {
            toguid: 8,
            ..ok.clone()
        };
        assert!(check_token(&other_guid, &job).is_err());
        let full_instead = ResumeTokenContents {
            fromguid: None,
            ..ok.clone()
        };
        assert!(check_token(&full_instead, &job).is_err());
        let other_base = ResumeTokenContents {
            fromguid: Some(6),
            ..ok
        };
        assert!(check_token(&other_base, &job).is_err());
    }
}
