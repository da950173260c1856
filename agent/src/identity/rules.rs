//! What each caller may do on the store (pure; no I/O):
//!
//! | operation | the agent of host H | the controller | a reader |
//! | --- | --- | --- | --- |
//! | PUT a stream of H (store, replica receive, replica abort, `-F`) | yes | no | no |
//! | GET a stored stream of H (restores) | yes (others: a restore grant) | no | no |
//! | the resume token of H's replica | yes | no | no |
//! | DELETE / archive a backup | no | yes | no |
//! | the catalogue | of H only (`?host=H`) | all | all |
//! | verification (queue re-reads, read progress) | no | yes | no |
//!
//! Everything else is refused with a sentence that says who asked, what, and who may.

use super::Caller;

/// What a request does, and to which source host's backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Add a stream (file store or replica; a replica PUT may also abort a partial receive
    /// or force-roll-back the replica).
    PutStream { host: &'a str },
    /// Read a stored stream back.
    GetStream { host: &'a str },
    /// Ask for a replica's resume token.
    ResumeToken { host: &'a str },
    /// Delete a backup (retention).
    Delete { host: &'a str },
    /// Move a backup to the archive.
    Archive { host: &'a str },
    /// Read the catalogue, of one source host or of all.
    Catalogue { host: Option<&'a str> },
    /// Queue stored backups to be re-read and checked, or read the verifier's progress.
    Verify,
}

impl<'a> Operation<'a> {
    /// The source host whose backups it touches (none: the whole catalogue).
    pub fn host(&self) -> Option<&'a str> {
        match *self {
            Operation::PutStream { host }
            | Operation::GetStream { host }
            | Operation::ResumeToken { host }
            | Operation::Delete { host }
            | Operation::Archive { host } => Some(host),
            Operation::Catalogue { host } => host,
            Operation::Verify => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Operation::PutStream { host } => format!("writing host {host}'s streams"),
            Operation::GetStream { host } => format!("reading host {host}'s backups"),
            Operation::ResumeToken { host } => {
                format!("reading the resume token of host {host}'s replica")
            }
            Operation::Delete { host } => format!("deleting host {host}'s backups"),
            Operation::Archive { host } => format!("archiving host {host}'s backups"),
            Operation::Catalogue { host: Some(host) } => {
                format!("reading host {host}'s catalogue")
            }
            Operation::Catalogue { host: None } => "reading the whole catalogue".into(),
            Operation::Verify => "verifying stored backups".into(),
        }
    }
}

/// A refusal (403), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

/// Whether `caller` may do `op`.
pub fn authorize(caller: &Caller, op: Operation<'_>) -> Result<(), Forbidden> {
    let refuse = |who_may: &str| {
        Err(Forbidden(format!(
            "{} is refused to {caller}: {who_may}",
            op.describe()
        )))
    };
    match (caller, op) {
        (
            Caller::Agent { hosts, .. },
            Operation::PutStream { host }
            | Operation::GetStream { host }
            | Operation::ResumeToken { host }
            | Operation::Catalogue { host: Some(host) },
        ) => {
            if hosts.contains(host) {
                Ok(())
            } else {
                refuse(
                    "an agent reads and writes only the streams of the ZfsHosts on its own node \
                     (another host's backups only through a restore grant)",
                )
            }
        }
        (Caller::Agent { .. }, Operation::Catalogue { host: None }) => {
            refuse("an agent may read only its own hosts' catalogue (ask with ?host=)")
        }
        (Caller::Agent { .. }, Operation::Delete { .. } | Operation::Archive { .. }) => {
            refuse("only the controller deletes and archives backups")
        }
        (Caller::Agent { .. } | Caller::Reader, Operation::Verify) => {
            refuse("only the controller asks a store to verify its backups")
        }
        (
            Caller::Controller,
            Operation::Delete { .. }
            | Operation::Archive { .. }
            | Operation::Catalogue { .. }
            | Operation::Verify,
        ) => Ok(()),
        (
            Caller::Controller,
            Operation::PutStream { .. }
            | Operation::GetStream { .. }
            | Operation::ResumeToken { .. },
        ) => refuse("only a host's own agent sends and reads its streams"),
        (Caller::Reader, Operation::Catalogue { .. }) => Ok(()),
        (Caller::Reader, _) => refuse("a reader may only read catalogues"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(host: &str) -> Vec<Operation<'_>> {
        vec![
            Operation::PutStream { host },
            Operation::GetStream { host },
            Operation::ResumeToken { host },
            Operation::Delete { host },
            Operation::Archive { host },
            Operation::Catalogue { host: Some(host) },
            Operation::Catalogue { host: None },
            Operation::Verify,
        ]
    }

    /// Every caller against every operation, on its own host and on another.
    #[test]
    fn the_whole_table() {
        let a = Caller::agent("node-a", ["db-a"]);
        let nobody = Caller::agent("node-x", Vec::<String>::new());
        for op in ops("db-a") {
            let own = matches!(
                op,
                Operation::PutStream { .. }
                    | Operation::GetStream { .. }
                    | Operation::ResumeToken { .. }
                    | Operation::Catalogue { host: Some(_) }
            );
            assert_eq!(authorize(&a, op).is_ok(), own, "agent of db-a: {op:?}");
            assert!(authorize(&nobody, op).is_err(), "agent of no host: {op:?}");
            let admin = matches!(
                op,
                Operation::Delete { .. }
                    | Operation::Archive { .. }
                    | Operation::Catalogue { .. }
                    | Operation::Verify
            );
            assert_eq!(
                authorize(&Caller::Controller, op).is_ok(),
                admin,
                "controller: {op:?}"
            );
            assert_eq!(
                authorize(&Caller::Reader, op).is_ok(),
                matches!(op, Operation::Catalogue { .. }),
                "reader: {op:?}"
            );
        }
        for op in ops("db-b") {
            assert!(authorize(&a, op).is_err(), "agent of db-a on db-b: {op:?}");
        }
    }

    #[test]
    fn refusals_say_who_and_what() {
        let a = Caller::agent("node-a", ["db-a"]);
        let e = authorize(&a, Operation::PutStream { host: "db-b" }).expect_err("refused");
        assert!(e.0.contains("writing host db-b's streams"), "{e}");
        assert!(e.0.contains("the agent of node node-a (host db-a)"), "{e}");
        let e = authorize(&a, Operation::Delete { host: "db-a" }).expect_err("refused");
        assert!(e.0.contains("only the controller"), "{e}");
    }
}
