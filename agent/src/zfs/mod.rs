//! The ZFS driver: every `zfs` / `zpool` command the agent runs, as argument vectors over
//! `tokio::process::Command` (never a shell), with validated names and typed errors.
//!
//! Snapshots zetaback makes carry the user property `zetaback.io:managed=on` (zfs-fuse keeps
//! snapshot user properties too), and [`Zfs::destroy_own_snapshot`] refuses any snapshot
//! without it. Optional features are detected at start-up ([`Capabilities`]).
//!
//! Every child has a time limit ([`Timeouts`]): a short command (list, get, snapshot, hold,
//! destroy, …) that has not ended after `command` is killed and fails with
//! [`ZfsError::Timeout`]; a send or receive that moves no data for `stall` is killed and fails
//! with [`ZfsError::Stalled`] (see [`process`]). A wedged zfs-fuse then fails a job instead of
//! hanging it.
//!
//! A dataset ZFS calls busy (zfs-fuse winds a receive cut short down in its daemon, after the
//! killed client is gone) is told by [`ZfsError::is_busy`]; callers wait it out with
//! [`busy::retry_while_busy`].

pub mod argv;
pub mod bookmarks;
pub mod busy;
pub mod caps;
pub mod encryption;
pub mod error;
pub mod inert;
pub mod parse;
mod process;
pub mod resume;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tracing::{debug, instrument};

pub use argv::{ReceiveRequest, SendBase, SendRequest};
pub use busy::{Busy, Patience, retry_while, retry_while_busy};
pub use caps::{Capabilities, Capability};
pub use error::{CommandLine, ZfsError};
pub use inert::ReceivePurpose;
pub use parse::{DatasetInfo, DatasetSpace, Inventory, PoolInfo, SnapshotInfo};
pub use process::{ReceiveProcess, SendProcess, Watched};

/// Time limits on `zfs` / `zpool` children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A short command must have ended within this (then it is killed).
    pub command: Duration,
    /// A send or receive that moves no data for this long is killed. (Its exit once its
    /// stream ended is limited by `command`.)
    pub stall: Duration,
}

impl Timeouts {
    /// The defaults: 5 minutes for a short command (a `zfs list -t all` of a host with
    /// hundreds of thousands of snapshots can take minutes); 45 s without progress for a
    /// stream, below the transfer's 60 s idle timeout, so that a stuck `zfs send` or
    /// `zfs receive` is reported as such rather than as a stalled link.
    pub const DEFAULT: Timeouts = Timeouts {
        command: Duration::from_secs(300),
        stall: Duration::from_secs(45),
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A pool with its size in bytes (from its root dataset's used + available).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub health: String,
    pub size_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

/// The local ZFS: where its programs are and what they support.
#[derive(Debug, Clone)]
pub struct Zfs {
    zfs: PathBuf,
    zpool: PathBuf,
    caps: Capabilities,
    timeouts: Timeouts,
}

impl Zfs {
    /// A driver with known capabilities (tests; or after [`Zfs::detect`]).
    pub fn new(zfs: impl Into<PathBuf>, zpool: impl Into<PathBuf>, caps: Capabilities) -> Self {
        Self {
            zfs: zfs.into(),
            zpool: zpool.into(),
            caps,
            timeouts: Timeouts::DEFAULT,
        }
    }

    /// Sets the time limits.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Finds `zfs` and `zpool` on `PATH` and detects the capabilities from `zfs`'s usage text,
    /// with the default time limits.
    pub async fn detect() -> Result<Self, ZfsError> {
        Self::detect_with(Timeouts::DEFAULT).await
    }

    /// [`Zfs::detect`] with these time limits.
    #[instrument(level = "debug")]
    pub async fn detect_with(timeouts: Timeouts) -> Result<Self, ZfsError> {
        let mut zfs = Self::new("zfs", "zpool", Capabilities::none()).with_timeouts(timeouts);
        // `zfs` with no arguments prints its usage and exits 2.
        let out = zfs.output(&[], false).await?;
        zfs.caps = Capabilities::from_usage(&out);
        debug!(capabilities = ?zfs.caps.names(), "zfs capabilities");
        Ok(zfs)
    }

    /// What the local `zfs` supports.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn command_line(&self, program: &Path, args: &[String]) -> CommandLine {
        let mut v = vec![program.display().to_string()];
        v.extend(args.iter().cloned());
        CommandLine(v)
    }

    /// Runs `zfs args...`; returns stdout (or stdout+stderr when `check` is false and it
    /// failed: used for the usage text).
    async fn output(&self, args: &[String], check: bool) -> Result<String, ZfsError> {
        run(
            &self.zfs,
            self.command_line(&self.zfs, args),
            args,
            check,
            self.timeouts.command,
        )
        .await
    }

    /// Datasets and snapshots (all, or one tree).
    #[instrument(level = "debug", skip(self))]
    pub async fn inventory(&self, root: Option<&str>) -> Result<Inventory, ZfsError> {
        let args = argv::inventory(&self.caps, root)?;
        let text = self.output(&args, true).await?;
        let parsed = if self.caps.has(Capability::ParsableList) {
            parse::parse_list(&text)
        } else {
            parse::parse_get(&text)
        };
        parsed.map_err(|detail| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail,
        })
    }

    /// One snapshot's details.
    pub async fn snapshot_info(
        &self,
        dataset: &str,
        snapshot: &str,
    ) -> Result<SnapshotInfo, ZfsError> {
        let full = argv::full_snapshot(dataset, snapshot)?;
        let mut args: Vec<String> = ["get", "-H", "-p", "-o", "name,property,value"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(parse::INVENTORY_PROPERTIES.join(","));
        args.push(full.clone());
        let text = self.output(&args, true).await?;
        let inv = parse::parse_get(&text).map_err(|detail| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail,
        })?;
        inv.snapshots
            .into_iter()
            .next()
            .ok_or_else(|| ZfsError::Parse {
                command: self.command_line(&self.zfs, &args),
                detail: format!("{full} is not a snapshot"),
            })
    }

    /// Whether a dataset exists.
    pub async fn dataset_exists(&self, dataset: &str) -> Result<bool, ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        let args: Vec<String> = ["list", "-H", "-o", "name", dataset]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        match self.output(&args, true).await {
            Ok(_) => Ok(true),
            Err(ZfsError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `dataset` and its missing ancestors (the parents of a replica or a restore),
    /// each with `canmount=off`, so that none of them is mounted: one `zfs create` per
    /// missing level, top down (`zfs create -p` would mount every one). Returns the levels
    /// this call created, top down (not those a concurrent receive made meanwhile), for
    /// [`Zfs::remove_empty_created`] when the receive they were made for fails.
    pub async fn create_parents(&self, dataset: &str) -> Result<Vec<String>, ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        let levels: Vec<&str> = dataset
            .match_indices('/')
            .map(|(i, _)| &dataset[..i])
            .chain(std::iter::once(dataset))
            .collect();
        let mut missing = Vec::new();
        for level in levels.iter().rev() {
            if self.dataset_exists(level).await? {
                break;
            }
            missing.push(*level);
        }
        let mut created = Vec::new();
        for level in missing.into_iter().rev() {
            let args: Vec<String> = ["create", "-o", "canmount=off", level]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            match self.output(&args, true).await {
                Ok(_) => created.push(level.to_owned()),
                // A concurrent receive under the same parent may have created it meanwhile
                // (then it is not ours to remove).
                Err(e) => {
                    if !self.dataset_exists(level).await? {
                        return Err(e);
                    }
                }
            }
        }
        Ok(created)
    }

    /// Destroys the datasets a failed receive made (`created`, top down: the parents
    /// [`Zfs::create_parents`] made, perhaps the dataset a killed receive left) that are
    /// still empty — no child dataset, no snapshot — bottom up, stopping at the first one
    /// that is not. Each is destroyed without `-r`, so that one gaining a child meanwhile is
    /// refused by ZFS rather than destroyed with it. Returns the levels destroyed.
    pub async fn remove_empty_created(&self, created: &[String]) -> Result<Vec<String>, ZfsError> {
        let mut removed = Vec::new();
        for level in created.iter().rev() {
            zetaback_core::names::validate_dataset(level)?;
            let args: Vec<String> = ["list", "-H", "-r", "-t", "all", "-o", "name", level]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let listing = match self.output(&args, true).await {
                Ok(text) => text,
                // Gone already (removed by another failed receive): look at the next one up.
                Err(ZfsError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !inert::is_empty_parent(level, &listing) {
                break;
            }
            let args = vec!["destroy".to_owned(), level.clone()];
            self.output(&args, true).await?;
            removed.push(level.clone());
        }
        Ok(removed)
    }

    /// Sets what an inert receive could not set at receive time (zfs-fuse: `setuid=off`,
    /// `devices=off`; nothing on OpenZFS, whose receive set them): see [`inert`].
    pub async fn set_inert_properties(&self, dataset: &str) -> Result<(), ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        for prop in inert::after_receive_properties(&self.caps) {
            let args = vec!["set".to_owned(), (*prop).to_owned(), dataset.to_owned()];
            self.output(&args, true).await?;
        }
        Ok(())
    }

    /// The value of a property set on `dataset` itself (not inherited, not a default), if any.
    pub async fn local_property(
        &self,
        dataset: &str,
        property: &str,
    ) -> Result<Option<String>, ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        let args: Vec<String> = ["get", "-H", "-o", "value", "-s", "local", property, dataset]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let text = self.output(&args, true).await?;
        Ok(text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && *l != "-")
            .map(str::to_owned))
    }

    /// `zfs destroy -r dataset`: only for a dataset a failed restore (or a drill) itself created.
    pub async fn destroy_restored(&self, dataset: &str) -> Result<(), ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        let args = vec!["destroy".to_owned(), "-r".to_owned(), dataset.to_owned()];
        self.output(&args, true).await.map(drop)
    }

    /// Makes a received replica read-only with no atime updates, so that the next
    /// incremental finds it unmodified (`receive` without `-F` refuses a modified target).
    pub async fn protect_replica(&self, dataset: &str) -> Result<(), ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        for prop in ["atime=off", "readonly=on"] {
            let args = vec!["set".to_owned(), prop.to_owned(), dataset.to_owned()];
            self.output(&args, true).await?;
        }
        Ok(())
    }

    /// Undoes [`Zfs::protect_replica`] (after a restore): inherit `readonly` and `atime`.
    pub async fn unprotect(&self, dataset: &str) -> Result<(), ZfsError> {
        zetaback_core::names::validate_dataset(dataset)?;
        for prop in ["readonly", "atime"] {
            let args = vec!["inherit".to_owned(), prop.to_owned(), dataset.to_owned()];
            self.output(&args, true).await?;
        }
        Ok(())
    }

    /// Pools with their health and sizes.
    pub async fn pools(&self) -> Result<Vec<PoolUsage>, ZfsError> {
        let args: Vec<String> = ["list", "-H", "-o", "name,health"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let text = run(
            &self.zpool,
            self.command_line(&self.zpool, &args),
            &args,
            true,
            self.timeouts.command,
        )
        .await?;
        let pools = parse::parse_pools(&text).map_err(|detail| ZfsError::Parse {
            command: self.command_line(&self.zpool, &args),
            detail,
        })?;
        let mut out = Vec::with_capacity(pools.len());
        for p in pools {
            let args: Vec<String> = ["get", "-H", "-p", "-o", "value", "used,available", &p.name]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let nums: Vec<u64> = self
                .output(&args, true)
                .await
                .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default();
            let (size, free) = match nums.as_slice() {
                [used, avail] => (Some(used + avail), Some(*avail)),
                _ => (None, None),
            };
            out.push(PoolUsage {
                name: p.name,
                health: p.health,
                size_bytes: size,
                free_bytes: free,
            });
        }
        Ok(out)
    }

    /// Takes a snapshot marked as zetaback's.
    #[instrument(level = "debug", skip(self))]
    pub async fn snapshot(&self, dataset: &str, snapshot: &str) -> Result<(), ZfsError> {
        let args = argv::snapshot(dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// Destroys a snapshot, but only one that zetaback made (its property says so).
    #[instrument(level = "debug", skip(self))]
    pub async fn destroy_own_snapshot(
        &self,
        dataset: &str,
        snapshot: &str,
    ) -> Result<(), ZfsError> {
        let info = self.snapshot_info(dataset, snapshot).await?;
        if !info.managed {
            return Err(ZfsError::NotOurs {
                snapshot: info.full_name(),
            });
        }
        let args = argv::destroy_snapshot(dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// Records a received replica's manifest (JSON) on its snapshot.
    pub async fn set_manifest(
        &self,
        dataset: &str,
        snapshot: &str,
        json: &str,
    ) -> Result<(), ZfsError> {
        let args = argv::set_manifest(dataset, snapshot, json)?;
        self.output(&args, true).await.map(drop)
    }

    /// Every snapshot under `root` that carries a manifest: `(dataset, snapshot, json)`.
    pub async fn manifests(&self, root: &str) -> Result<Vec<(String, String, String)>, ZfsError> {
        let args = argv::manifests(root)?;
        let text = self.output(&args, true).await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once('\t')?;
                let (dataset, snapshot) = name.split_once('@')?;
                (value != "-" && !value.is_empty())
                    .then(|| (dataset.to_owned(), snapshot.to_owned(), value.to_owned()))
            })
            .collect())
    }

    /// Destroys a received replica snapshot, but only one that carries zetaback's manifest
    /// (received snapshots do not carry the source's `managed` mark).
    pub async fn destroy_replica_snapshot(
        &self,
        dataset: &str,
        snapshot: &str,
    ) -> Result<(), ZfsError> {
        let full = argv::full_snapshot(dataset, snapshot)?;
        let args: Vec<String> = vec![
            "get".into(),
            "-H".into(),
            "-o".into(),
            "value".into(),
            parse::MANIFEST_PROPERTY.into(),
            full.clone(),
        ];
        let value = self.output(&args, true).await?;
        if matches!(value.trim(), "" | "-") {
            return Err(ZfsError::NotOurs { snapshot: full });
        }
        let args = argv::destroy_snapshot(dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// Puts (or releases) zetaback's hold on a snapshot, where holds are supported.
    pub async fn hold(&self, dataset: &str, snapshot: &str, release: bool) -> Result<(), ZfsError> {
        let args = argv::hold(&self.caps, release, dataset, snapshot)?;
        self.output(&args, true).await.map(drop)
    }

    /// Whether `dataset` must be sent raw (it is encrypted: see [`encryption`]). Without raw
    /// send the host has no native encryption (zfs-fuse): false, without asking `zfs`.
    pub async fn must_send_raw(&self, dataset: &str) -> Result<bool, ZfsError> {
        if !self.caps.has(Capability::RawSend) {
            return Ok(false);
        }
        let args = encryption::encryption_argv(dataset)?;
        let value = self.output(&args, true).await?;
        encryption::must_send_raw(&self.caps, encryption::is_encrypted(&value))
    }

    /// The estimated stream size (`send -nP`), where supported.
    pub async fn estimate(&self, req: &SendRequest) -> Result<Option<u64>, ZfsError> {
        if !self.caps.has(Capability::SendSizeEstimate) {
            return Ok(None);
        }
        let mut req = req.clone();
        req.estimate = true;
        let args = argv::send(&self.caps, &req)?;
        let text = self.output(&args, true).await?;
        parse::parse_send_estimate(&text)
            .map(Some)
            .map_err(|detail| ZfsError::Parse {
                command: self.command_line(&self.zfs, &args),
                detail,
            })
    }

    /// `dataset`'s used and available bytes, or `None` when it does not exist.
    pub async fn space(&self, dataset: &str) -> Result<Option<parse::DatasetSpace>, ZfsError> {
        let args = argv::space(dataset)?;
        let text = match self.output(&args, true).await {
            Ok(text) => text,
            Err(ZfsError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        parse::parse_space(&text)
            .map(Some)
            .map_err(|detail| ZfsError::Parse {
                command: self.command_line(&self.zfs, &args),
                detail,
            })
    }

    /// `zfs send -nP -t TOKEN`: the estimated size of what a resumed send still sends (`None`
    /// where there is no estimate: zfs-fuse).
    pub async fn estimate_resume(&self, token: &str) -> Result<Option<u64>, ZfsError> {
        if !self.caps.has(Capability::SendSizeEstimate) {
            return Ok(None);
        }
        let args = argv::estimate_resume(&self.caps, token)?;
        let text = self.output(&args, true).await?;
        parse::parse_send_estimate(&text)
            .map(Some)
            .map_err(|detail| ZfsError::Parse {
                command: self.command_line(&self.zfs, &args),
                detail,
            })
    }

    /// The resume token an interrupted resumable receive left on `dataset`, where supported.
    pub async fn resume_token(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        if !self.caps.has(Capability::ResumableSend) {
            return Ok(None);
        }
        let args = argv::resume_token(&self.caps, dataset)?;
        Ok(parse::parse_resume_token(&self.output(&args, true).await?))
    }

    /// What a resume token resumes, decoded by `zfs send -nvt` (OpenZFS only).
    pub async fn decode_resume_token(
        &self,
        token: &str,
    ) -> Result<resume::ResumeTokenContents, ZfsError> {
        let args = argv::decode_resume_token(&self.caps, token)?;
        let out = self.output(&args, true).await?;
        resume::parse_token_contents(&out).map_err(|detail| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail,
        })
    }

    /// The guid of `dataset@name` (or of the bookmark `dataset#name`).
    pub async fn guid(&self, dataset: &str, name: &str, bookmark: bool) -> Result<u64, ZfsError> {
        let args = argv::guid(dataset, name, bookmark)?;
        let out = self.output(&args, true).await?;
        out.trim().parse().map_err(|_| ZfsError::Parse {
            command: self.command_line(&self.zfs, &args),
            detail: format!("guid {:?} is not a number", out.trim()),
        })
    }

    /// `zfs receive -A`: discards an interrupted resumable receive's partial state
    /// (OpenZFS only).
    pub async fn abort_partial_receive(&self, dataset: &str) -> Result<(), ZfsError> {
        let args = argv::receive_abort(&self.caps, dataset)?;
        self.output(&args, true).await.map(drop)
    }

    /// Starts `zfs send`; its stdout is the stream.
    #[instrument(level = "debug", skip(self))]
    pub fn send(&self, req: &SendRequest) -> Result<SendProcess, ZfsError> {
        let args = argv::send(&self.caps, req)?;
        SendProcess::spawn(
            &self.zfs,
            self.command_line(&self.zfs, &args),
            &args,
            self.timeouts.stall,
            self.timeouts.command,
        )
    }

    /// Starts `zfs send -t token` (resume; OpenZFS only).
    pub fn send_resume(&self, token: &str) -> Result<SendProcess, ZfsError> {
        let args = argv::send_resume(&self.caps, token)?;
        SendProcess::spawn(
            &self.zfs,
            self.command_line(&self.zfs, &args),
            &args,
            self.timeouts.stall,
            self.timeouts.command,
        )
    }

    /// Starts `zfs receive`; write the stream to its stdin, then [`ReceiveProcess::finish`].
    #[instrument(level = "debug", skip(self))]
    pub fn receive(&self, req: &ReceiveRequest) -> Result<ReceiveProcess, ZfsError> {
        let args = argv::receive(&self.caps, req)?;
        ReceiveProcess::spawn(
            &self.zfs,
            self.command_line(&self.zfs, &args),
            &args,
            self.timeouts.stall,
            self.timeouts.command,
        )
    }
}

/// Runs a program to completion and returns its stdout. When `check` is false a failure is
/// not an error and stdout+stderr are returned. A program still running after `limit` is
/// killed: [`ZfsError::Timeout`].
async fn run(
    program: &Path,
    command: CommandLine,
    args: &[String],
    check: bool,
    limit: Duration,
) -> Result<String, ZfsError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ZfsError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    let (mut out, mut err) = match (child.stdout.take(), child.stderr.take()) {
        (Some(o), Some(e)) => (o, e),
        _ => {
            return Err(ZfsError::Io {
                command,
                source: std::io::Error::other("no pipes"),
            });
        }
    };
    let work = async {
        let (r1, r2) = tokio::join!(
            out.read_to_string(&mut stdout),
            err.read_to_string(&mut stderr)
        );
        r1.and(r2)?;
        child.wait().await
    };
    let status = match tokio::time::timeout(limit, work).await {
        Ok(r) => r.map_err(|source| ZfsError::Io {
            command: command.clone(),
            source,
        })?,
        Err(_) => {
            process::kill(&mut child).await;
            return Err(ZfsError::Timeout {
                command,
                after: limit,
            });
        }
    };
    if status.success() {
        Ok(stdout)
    } else if !check {
        Ok(stdout + &stderr)
    } else {
        Err(ZfsError::Failed {
            command,
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        })
    }
}
