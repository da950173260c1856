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
//! * **zfs-fuse** (pool v23: its `receive` has no `-u`, `-o` or `-x`): a stream whose
//!   properties would decide where or whether it is mounted is refused before `zfs receive`
//!   reads a byte of it ([`HeadGate`], [`check_head`]). Only a *compound* stream
//!   (`DMU_COMPOUNDSTREAM`: what `send -p`, `-R` and `-I` write) carries properties, in the
//!   nvlist that is the payload of its first record; a plain stream (`DMU_SUBSTREAM`, what
//!   the agent sends without `-I`) carries none. A compound stream is let through only when
//!   that payload names none of [`MOUNT_PROPERTIES`] (the source's locally set properties are
//!   in it; inherited ones are not). After the receive, [`after_receive_properties`] are set.
//!
//! On both, missing parents are created one at a time with `canmount=off`, so that none is
//! mounted ([`super::Zfs::create_parents`]); when the receive they were made for fails, the
//! ones still empty are destroyed again ([`super::Zfs::remove_empty_created`],
//! [`is_empty_parent`]), never a parent that was there before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

use super::caps::{Capabilities, Capability};
use crate::stream_header::DMU_BACKUP_MAGIC;

/// Whether `level`, listed with `zfs list -H -r -t all -o name <level>` as `listing`, is an
/// empty parent: the listing names it and nothing else (no child dataset, no snapshot, no
/// partial receive).
pub fn is_empty_parent(level: &str, listing: &str) -> bool {
    let mut names = listing.lines().map(str::trim).filter(|l| !l.is_empty());
    names.next() == Some(level) && names.next().is_none()
}

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

/// The bytes that tell the stream's kind: `drr_type`, `drr_payloadlen`, `drr_magic`,
/// `drr_versioninfo`.
pub const HEAD_LEN: usize = 24;
/// `sizeof (dmu_replay_record_t)`: the first record, before its payload.
pub const RECORD_LEN: usize = 312;
/// The largest first-record payload (a compound stream's property nvlist) looked at; a
/// larger one is refused where it would have to be looked at.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Properties that decide where or whether a received file system is mounted (or shared): a
/// compound stream naming any of them is refused where the receive cannot override them.
pub const MOUNT_PROPERTIES: [&str; 4] = ["mountpoint", "canmount", "sharenfs", "sharesmb"];

/// `DMU_SUBSTREAM`: a stream of one dataset, no properties.
const DMU_SUBSTREAM: u64 = 1;
/// `DMU_COMPOUNDSTREAM`: a package (`send -R`, `-p`, `-I`, …) whose first record carries the
/// datasets' properties.
const DMU_COMPOUNDSTREAM: u64 = 2;

/// What the first record of a stream says about properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadKind {
    /// One dataset's stream: no properties.
    Substream,
    /// A compound stream whose first record has a payload of this many bytes (the nvlist
    /// that may carry properties).
    Compound { payload: usize },
    /// Not a stream head this code knows (left for `zfs receive` to refuse).
    Unknown,
}

/// Reads the header type (`drr_versioninfo`'s low bits) and payload length from the first
/// [`HEAD_LEN`] bytes.
pub fn head_kind(head: &[u8]) -> HeadKind {
    let (Some(len), Some(magic), Some(version)) =
        (head.get(4..8), head.get(8..16), head.get(16..24))
    else {
        return HeadKind::Unknown;
    };
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    let mut m = [0u8; 8];
    m.copy_from_slice(magic);
    let mut v = [0u8; 8];
    v.copy_from_slice(version);
    let (versioninfo, payload) = if u64::from_le_bytes(m) == DMU_BACKUP_MAGIC {
        (u64::from_le_bytes(v), u32::from_le_bytes(l))
    } else if u64::from_be_bytes(m) == DMU_BACKUP_MAGIC {
        (u64::from_be_bytes(v), u32::from_be_bytes(l))
    } else {
        return HeadKind::Unknown;
    };
    // DMU_GET_STREAM_HDRTYPE: the low two bits.
    match versioninfo & 0x3 {
        DMU_SUBSTREAM => HeadKind::Substream,
        DMU_COMPOUNDSTREAM => HeadKind::Compound {
            payload: payload as usize,
        },
        _ => HeadKind::Unknown,
    }
}

/// How many leading bytes [`check_head`] must see: the first record and its payload for a
/// compound stream on a host that cannot override properties, else [`HEAD_LEN`].
pub fn bytes_to_check(caps: &Capabilities, head: &[u8]) -> usize {
    match head_kind(head) {
        HeadKind::Compound { payload } if !caps.has(Capability::InertReceive) => {
            RECORD_LEN + payload.min(MAX_PAYLOAD + 1)
        }
        _ => HEAD_LEN,
    }
}

/// Whether a stream whose first bytes are `head` (at least [`bytes_to_check`] of them, or
/// all there are) may be received by a zfs with `caps`: properties that decide mounting only
/// where the receive can override them.
pub fn check_head(caps: &Capabilities, head: &[u8]) -> Result<(), String> {
    if caps.has(Capability::InertReceive) {
        return Ok(());
    }
    let HeadKind::Compound { payload } = head_kind(head) else {
        return Ok(());
    };
    if payload > MAX_PAYLOAD {
        return Err(format!(
            "the stream's first record carries a {payload}-byte property list (more than {MAX_PAYLOAD} looked at): refused"
        ));
    }
    let names: Vec<&str> = MOUNT_PROPERTIES
        .into_iter()
        .filter(|p| contains(head, p.as_bytes()))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the stream carries dataset properties ({}) that would decide where it is mounted, and this host's zfs cannot receive without applying them (no `receive -u -o -x`): refused",
        names.join(", ")
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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
    /// Gathering the first bytes until [`bytes_to_check`] of them are there.
    Collecting,
    /// Checked; writing the gathered bytes through (this many written).
    Releasing(usize),
    /// Everything passes.
    Open,
}

/// Copies a decoded stream into a `zfs receive`'s stdin through the [`HeadGate`], so that a
/// stream carrying properties never reaches a receive that cannot override them (zfs-fuse).
/// Every restore path (from a backup host, from a bucket) feeds its receive through here.
pub async fn copy_into_receive<R, W>(
    reader: &mut R,
    stdin: Option<W>,
    caps: Capabilities,
) -> io::Result<u64>
where
    R: tokio::io::AsyncBufRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin,
{
    match stdin {
        Some(stdin) => tokio::io::copy_buf(reader, &mut HeadGate::new(stdin, caps)).await,
        None => Err(io::Error::other("zfs receive has no stdin")),
    }
}

/// A writer in front of `zfs receive`'s stdin that holds the first bytes of a stream back
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
                self.head = Vec::new();
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

    /// Checks what was gathered (all of the stream when `ended`).
    fn judge(&mut self) -> io::Result<()> {
        check_head(&self.caps, &self.head)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, StreamRefused(why)))?;
        self.state = GateState::Releasing(0);
        Ok(())
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
            let need = bytes_to_check(&this.caps, &this.head).max(HEAD_LEN);
            let take = need.saturating_sub(this.head.len()).min(buf.len());
            this.head.extend_from_slice(&buf[..take]);
            if this.head.len() >= HEAD_LEN
                && this.head.len() >= bytes_to_check(&this.caps, &this.head)
            {
                this.judge()?;
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
        // The stream ended while still gathering: judge what there is (a body shorter than a
        // head is left for `zfs receive` to refuse).
        if let GateState::Collecting = this.state {
            this.judge()?;
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn only_a_parent_that_holds_nothing_is_empty() {
        assert!(is_empty_parent("p/r/h", "p/r/h\n"));
        assert!(is_empty_parent("p/r/h", "p/r/h"));
        assert!(is_empty_parent("p/r/h", "\np/r/h\n\n"));
        // A child dataset, a snapshot, a partial receive's clone.
        assert!(!is_empty_parent("p/r/h", "p/r/h\np/r/h/db\n"));
        assert!(!is_empty_parent("p/r/h", "p/r/h\np/r/h@zb-1\n"));
        assert!(!is_empty_parent("p/r/h", "p/r/h\np/r/h/%recv\n"));
        // A listing of something else, or of nothing, proves nothing.
        assert!(!is_empty_parent("p/r/h", "p/r/hx\n"));
        assert!(!is_empty_parent("p/r/h", ""));
    }

    /// A first record (and its payload when compound) in either byte order.
    fn head(compound: bool, big_endian: bool, payload: &[u8]) -> Vec<u8> {
        let version: u64 = (17 << 2) | if compound { 2 } else { 1 };
        let len = if compound { payload.len() as u32 } else { 0 };
        let mut h = vec![0u8; 4];
        if big_endian {
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&DMU_BACKUP_MAGIC.to_be_bytes());
            h.extend_from_slice(&version.to_be_bytes());
        } else {
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&DMU_BACKUP_MAGIC.to_le_bytes());
            h.extend_from_slice(&version.to_le_bytes());
        }
        h.resize(RECORD_LEN, 0);
        if compound {
            h.extend_from_slice(payload);
        }
        h
    }

    const WITH_MOUNTPOINT: &[u8] = b"....fss.....props......mountpoint....../etc....";
    const HARMLESS: &[u8] = b"....fss.....props......compression......lz4....";

    fn openzfs() -> Capabilities {
        Capabilities::all()
    }

    fn zfs_fuse() -> Capabilities {
        Capabilities::from_iter([Capability::Holds])
    }

    #[test]
    fn kinds_in_both_byte_orders() {
        for be in [false, true] {
            assert_eq!(head_kind(&head(false, be, b"")), HeadKind::Substream);
            assert_eq!(
                head_kind(&head(true, be, HARMLESS)),
                HeadKind::Compound {
                    payload: HARMLESS.len()
                }
            );
        }
        assert_eq!(head_kind(&[0u8; 24]), HeadKind::Unknown);
        assert_eq!(head_kind(&head(true, false, b"")[..20]), HeadKind::Unknown);
    }

    #[test]
    fn mount_properties_refused_only_without_overrides() {
        for be in [false, true] {
            let evil = head(true, be, WITH_MOUNTPOINT);
            assert_eq!(bytes_to_check(&zfs_fuse(), &evil), evil.len());
            let why = check_head(&zfs_fuse(), &evil).expect_err("refused");
            assert!(why.contains("mountpoint"), "{why}");
            assert!(check_head(&openzfs(), &evil).is_ok());
            assert_eq!(bytes_to_check(&openzfs(), &evil), HEAD_LEN);
            assert!(check_head(&zfs_fuse(), &head(true, be, HARMLESS)).is_ok());
            assert!(check_head(&zfs_fuse(), &head(false, be, b"")).is_ok());
        }
        assert!(check_head(&zfs_fuse(), b"not a stream at all, no").is_ok());
        let mut huge = head(true, false, b"");
        huge[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(check_head(&zfs_fuse(), &huge).is_err());
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

    async fn through_gate(
        caps: Capabilities,
        body: &[u8],
        chunk: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        let mut out = Vec::new();
        let result = {
            let mut gate = HeadGate::new(&mut out, caps);
            let mut r = Ok(());
            for c in body.chunks(chunk) {
                r = gate.write_all(c).await;
                if r.is_err() {
                    break;
                }
            }
            match r {
                Ok(()) => gate.shutdown().await,
                e => e,
            }
        };
        (result, out)
    }

    #[tokio::test]
    async fn gate_passes_allowed_streams_whole_in_any_chunking() {
        for chunk in [1, 7, 24, 313, 100_000] {
            for body in [head(false, false, b""), head(true, true, HARMLESS)] {
                let mut body = body;
                body.extend_from_slice(b"rest of the stream");
                let (r, out) = through_gate(zfs_fuse(), &body, chunk).await;
                r.expect("passes");
                assert_eq!(out, body, "chunk {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn gate_refuses_mount_properties_before_writing() {
        let mut body = head(true, false, WITH_MOUNTPOINT);
        body.extend_from_slice(b"the file system follows");
        for chunk in [1, 50, 100_000] {
            let (r, out) = through_gate(zfs_fuse(), &body, chunk).await;
            let err = r.expect_err("refused");
            assert!(refusal(&err).is_some(), "{err}");
            assert!(out.is_empty(), "nothing reached the receive");
        }
        let (r, out) = through_gate(openzfs(), &body, 50).await;
        r.expect("allowed where overrides exist");
        assert_eq!(out, body);
    }

    #[tokio::test]
    async fn gate_judges_a_short_body_on_shutdown() {
        let (r, out) = through_gate(zfs_fuse(), b"short", 2).await;
        r.expect("left for zfs receive");
        assert_eq!(out, b"short");
        // Cut inside the payload: what is there is judged.
        let body = head(true, false, WITH_MOUNTPOINT);
        let (r, out) = through_gate(zfs_fuse(), &body[..body.len() - 5], 64).await;
        assert!(r.is_err() && out.is_empty());
    }
}
