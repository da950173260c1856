//! Inert receives: what a received stream may not decide on the receiving host.
//!
//! A `zfs send -p`/`-R` stream carries the sender's dataset properties, and `zfs receive`
//! applies them: a stream carrying `mountpoint=/etc` would be mounted over the receiving
//! host's `/etc`. Every restore and replica receive is therefore made inert:
//!
//! * **OpenZFS** (`zfs receive -u -o … -x …`, [`Capability::InertReceive`]): received
//!   unmounted (`-u`), `canmount=noauto`, the mountpoint not taken from the stream
//!   (`-x mountpoint`: inherited from the parent, which lies under the restore root or the
//!   replica root), `setuid=off`, `devices=off`, and `readonly=on` for replicas — all at
//!   receive time ([`override_args`]).
//! * **zfs-fuse** (pool v23: its `receive` has no `-u`, `-o` or `-x`): a stream that carries
//!   properties at all is refused before `zfs receive` reads a byte of it ([`HeadGate`],
//!   [`check_head`]). Only a *compound* stream (`DMU_COMPOUNDSTREAM`, what `send -p`, `-R`
//!   and friends write) carries properties; a plain stream (`DMU_SUBSTREAM`, what the agent
//!   sends) carries none. After the receive, [`after_receive_properties`] are set.
//!
//! On both, missing parents are created one at a time with `canmount=off`, so that none is
//! mounted ([`super::Zfs::create_parents`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

use super::caps::{Capabilities, Capability};
use crate::stream_header::DMU_BACKUP_MAGIC;

/// Why a dataset is received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceivePurpose {
    /// A restore into a destination dataset.
    #[default]
    Restore,
    /// A replica on a backup host (also `readonly=on`).
    Replica,
}

/// The properties every inert receive sets (OpenZFS: at receive time with `-o`).
const OVERRIDES: [&str; 3] = ["canmount=noauto", "setuid=off", "devices=off"];
/// Properties never taken from a stream (OpenZFS: `-x`).
const EXCLUDED: [&str; 1] = ["mountpoint"];

/// The flags an inert `zfs receive` adds before its target, where the local zfs has them
/// (none on zfs-fuse).
pub fn override_args(caps: &Capabilities, purpose: ReceivePurpose) -> Vec<String> {
    if !caps.has(Capability::InertReceive) {
        return Vec::new();
    }
    let mut args = vec!["-u".to_owned()];
    let mut sets: Vec<&str> = OVERRIDES.to_vec();
    if purpose == ReceivePurpose::Replica {
        sets.push("readonly=on");
    }
    for p in sets {
        args.push("-o".into());
        args.push(p.into());
    }
    for p in EXCLUDED {
        args.push("-x".into());
        args.push(p.into());
    }
    args
}

/// The properties to `zfs set` after a receive where the receive could not set them
/// (zfs-fuse); none where it did.
pub fn after_receive_properties(caps: &Capabilities) -> &'static [&'static str] {
    if caps.has(Capability::InertReceive) {
        &[]
    } else {
        // canmount=noauto is not set after the fact on zfs-fuse: the dataset is mounted
        // already (at its inherited mountpoint under the restore root, since a stream
        // without properties cannot name one), and the next import would just mount it.
        &["setuid=off", "devices=off"]
    }
}

/// The bytes [`check_head`] needs: `drr_type`, `drr_payloadlen`, `drr_magic`,
/// `drr_versioninfo`.
pub const HEAD_LEN: usize = 24;

/// `DMU_SUBSTREAM`: a stream of one dataset, no properties.
const DMU_SUBSTREAM: u64 = 1;
/// `DMU_COMPOUNDSTREAM`: a package (`send -R`, `-p`, …) whose first record carries the
/// datasets' properties.
const DMU_COMPOUNDSTREAM: u64 = 2;

/// What the first record of a stream says about properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadKind {
    /// One dataset's stream: no properties.
    Substream,
    /// A compound stream: it may carry properties.
    Compound,
    /// Not a stream head this code knows (left for `zfs receive` to refuse).
    Unknown,
}

/// Reads `drr_versioninfo`'s header type from the first [`HEAD_LEN`] bytes.
pub fn head_kind(head: &[u8]) -> HeadKind {
    let (Some(magic), Some(version)) = (head.get(8..16), head.get(16..24)) else {
        return HeadKind::Unknown;
    };
    let mut m = [0u8; 8];
    m.copy_from_slice(magic);
    let mut v = [0u8; 8];
    v.copy_from_slice(version);
    let versioninfo = if u64::from_le_bytes(m) == DMU_BACKUP_MAGIC {
        u64::from_le_bytes(v)
    } else if u64::from_be_bytes(m) == DMU_BACKUP_MAGIC {
        u64::from_be_bytes(v)
    } else {
        return HeadKind::Unknown;
    };
    // DMU_GET_STREAM_HDRTYPE: the low two bits.
    match versioninfo & 0x3 {
        DMU_SUBSTREAM => HeadKind::Substream,
        DMU_COMPOUNDSTREAM => HeadKind::Compound,
        _ => HeadKind::Unknown,
    }
}

/// Whether a stream whose first bytes are `head` may be received by a zfs with `caps`:
/// a stream carrying properties only where the receive can override them.
pub fn check_head(caps: &Capabilities, head: &[u8]) -> Result<(), String> {
    if head_kind(head) == HeadKind::Compound && !caps.has(Capability::InertReceive) {
        return Err(
            "the stream carries dataset properties (a compound stream, as `zfs send -p` or `-R` \
             writes), and this host's zfs cannot receive without applying them (no `receive -u -o -x`): refused"
                .to_owned(),
        );
    }
    Ok(())
}

/// The error a [`HeadGate`] fails a write with; find it with [`refusal`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamRefused(pub String);

/// The refusal inside an I/O error, if a [`HeadGate`] made it.
pub fn refusal(e: &io::Error) -> Option<&StreamRefused> {
    e.get_ref().and_then(|i| i.downcast_ref::<StreamRefused>())
}

enum GateState {
    /// Gathering the first [`HEAD_LEN`] bytes.
    Collecting,
    /// Checked; writing the gathered bytes through (this many written).
    Releasing(usize),
    /// Everything passes.
    Open,
}

/// A writer in front of `zfs receive`'s stdin that holds the first [`HEAD_LEN`] bytes back
/// until [`check_head`] allowed them: a refused stream never reaches `zfs receive`.
pub struct HeadGate<W> {
    inner: W,
    caps: Capabilities,
    head: Vec<u8>,
    state: GateState,
}

impl<W: AsyncWrite + Unpin> HeadGate<W> {
    pub fn new(inner: W, caps: Capabilities) -> Self {
        Self {
            inner,
            caps,
            head: Vec::with_capacity(HEAD_LEN),
            state: GateState::Collecting,
        }
    }

    /// Writes the held-back bytes through; Ready(Ok) once they all went.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let GateState::Releasing(done) = self.state {
            if done == self.head.len() {
                self.state = GateState::Open;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.head[done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.state = GateState::Releasing(done + n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HeadGate<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let GateState::Collecting = this.state {
            let take = (HEAD_LEN - this.head.len()).min(buf.len());
            this.head.extend_from_slice(&buf[..take]);
            if this.head.len() == HEAD_LEN {
                check_head(&this.caps, &this.head).map_err(|why| {
                    io::Error::new(io::ErrorKind::InvalidData, StreamRefused(why))
                })?;
                this.state = GateState::Releasing(0);
            }
            return Poll::Ready(Ok(take));
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let GateState::Releasing(_) = this.state {
            ready!(this.poll_release(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A body shorter than a head: let `zfs receive` judge what there is.
        if let GateState::Collecting = this.state {
            this.state = GateState::Releasing(0);
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn head(compound: bool, big_endian: bool) -> Vec<u8> {
        let version: u64 = (17 << 2) | if compound { 2 } else { 1 };
        let mut h = vec![0u8; 8];
        if big_endian {
            h.extend_from_slice(&DMU_BACKUP_MAGIC.to_be_bytes());
            h.extend_from_slice(&version.to_be_bytes());
        } else {
            h.extend_from_slice(&DMU_BACKUP_MAGIC.to_le_bytes());
            h.extend_from_slice(&version.to_le_bytes());
        }
        h
    }

    fn openzfs() -> Capabilities {
        Capabilities::all()
    }

    fn zfs_fuse() -> Capabilities {
        Capabilities::from_iter([Capability::Holds])
    }

    #[test]
    fn kinds_in_both_byte_orders() {
        for be in [false, true] {
            assert_eq!(head_kind(&head(false, be)), HeadKind::Substream);
            assert_eq!(head_kind(&head(true, be)), HeadKind::Compound);
        }
        assert_eq!(head_kind(&[0u8; 24]), HeadKind::Unknown);
        assert_eq!(head_kind(&head(true, false)[..20]), HeadKind::Unknown);
    }

    #[test]
    fn compound_streams_refused_only_without_overrides() {
        assert!(check_head(&zfs_fuse(), &head(true, false)).is_err());
        assert!(check_head(&zfs_fuse(), &head(false, false)).is_ok());
        assert!(check_head(&openzfs(), &head(true, true)).is_ok());
        assert!(check_head(&zfs_fuse(), b"not a stream at all, no").is_ok());
    }

    #[test]
    fn overrides_on_openzfs_only() {
        assert!(override_args(&zfs_fuse(), ReceivePurpose::Replica).is_empty());
        let restore = override_args(&openzfs(), ReceivePurpose::Restore);
        assert_eq!(
            restore,
            [
                "-u",
                "-o",
                "canmount=noauto",
                "-o",
                "setuid=off",
                "-o",
                "devices=off",
                "-x",
                "mountpoint"
            ]
        );
        let replica = override_args(&openzfs(), ReceivePurpose::Replica);
        assert!(replica.windows(2).any(|w| w == ["-o", "readonly=on"]));
        assert!(!restore.iter().any(|a| a == "readonly=on"));
        assert!(after_receive_properties(&openzfs()).is_empty());
        assert_eq!(
            after_receive_properties(&zfs_fuse()),
            ["setuid=off", "devices=off"]
        );
    }

    #[tokio::test]
    async fn gate_passes_a_substream_byte_by_byte() {
        let mut body = head(false, false);
        body.extend_from_slice(b"rest of the stream");
        let mut out = Vec::new();
        {
            let mut gate = HeadGate::new(&mut out, zfs_fuse());
            for b in &body {
                gate.write_all(std::slice::from_ref(b))
                    .await
                    .expect("write");
            }
            gate.shutdown().await.expect("shutdown");
        }
        assert_eq!(out, body);
    }

    #[tokio::test]
    async fn gate_refuses_a_compound_stream_before_writing() {
        let mut body = head(true, false);
        body.extend_from_slice(b"properties follow");
        let mut out = Vec::new();
        let err = {
            let mut gate = HeadGate::new(&mut out, zfs_fuse());
            gate.write_all(&body).await.expect_err("refused")
        };
        assert!(refusal(&err).is_some(), "{err}");
        assert!(out.is_empty(), "nothing reached the receive");
        let mut out = Vec::new();
        HeadGate::new(&mut out, openzfs())
            .write_all(&body)
            .await
            .expect("allowed where overrides exist");
    }

    #[tokio::test]
    async fn gate_releases_a_short_body_on_shutdown() {
        let mut out = Vec::new();
        {
            let mut gate = HeadGate::new(&mut out, zfs_fuse());
            gate.write_all(b"short").await.expect("write");
            gate.shutdown().await.expect("shutdown");
        }
        assert_eq!(out, b"short");
    }
}
