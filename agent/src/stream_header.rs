//! Recognising a ZFS send stream by its first record, so that a store refuses a body that is
//! not one when it arrives instead of a restore finding out.
//!
//! Every `zfs send` stream (full, incremental, `-I`, `-R`, resumed with `-t`) begins with a
//! `DRR_BEGIN` record: `struct dmu_replay_record { uint32_t drr_type; uint32_t drr_payloadlen;
//! struct drr_begin { uint64_t drr_magic; ... } }`, with `drr_type` = 0 (`DRR_BEGIN`) and
//! `drr_magic` = `DMU_BACKUP_MAGIC` (0x2F5BACBAC), both in the sending host's byte order (a
//! receiver byte-swaps a stream from a host of the other endianness). A zstd-compressed body
//! is checked on its first decompressed bytes, with the decoder's window limited (see
//! [`crate::limits::StoreLimits::zstd_window_log_max`]).
//!
//! The same record says whether the stream is raw (`zfs send -w`: encrypted blocks sent as they
//! are on disk): `drr_versioninfo` (bytes 16..24) holds the header type in its two low bits
//! (`DMU_SUBSTREAM` 1, `DMU_COMPOUNDSTREAM` 2) and the feature flags in bits 2..32, among them
//! `DMU_BACKUP_FEATURE_RAW`. A store checks the sender's raw claim (`x-zetaback-raw`, which
//! the manifest records) against it: [`Begin::check_raw_claim`]. A compound stream's first
//! record is a package header whose flags do not say (`zfs send` sets RAW only on the
//! substreams' records): its claim is not checked here.

use std::io;

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::zstd::DParameter;
use tokio::io::AsyncReadExt;

/// `DMU_BACKUP_MAGIC`.
pub const DMU_BACKUP_MAGIC: u64 = 0x2_F5BA_CBAC;
/// The bytes that decide: `drr_type`, `drr_payloadlen`, `drr_magic`, `drr_versioninfo`.
pub const HEADER_LEN: usize = 24;
/// `DMU_BACKUP_FEATURE_RAW` (OpenZFS `include/sys/zfs_ioctl.h`): a raw send's feature flag.
pub const DMU_BACKUP_FEATURE_RAW: u64 = 1 << 24;
/// `DMU_SUBSTREAM`: one dataset's stream (what `zfs send` writes without `-R`, `-p`, `-I`).
const DMU_SUBSTREAM: u64 = 1;
/// Compressed bytes read at most before the first [`HEADER_LEN`] decompressed ones must
/// have appeared (a zstd block is at most 128 KiB).
pub const MAX_COMPRESSED_PREFIX: usize = 512 * 1024;

/// The byte order a stream was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

/// A stream's `DRR_BEGIN` record, as far as [`HEADER_LEN`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The byte order it was written in.
    pub order: ByteOrder,
    /// `drr_versioninfo`, in this host's order.
    pub versioninfo: u64,
}

impl Begin {
    /// The feature flags (`DMU_GET_FEATUREFLAGS`: bits 2..32 of `drr_versioninfo`).
    pub fn features(&self) -> u64 {
        (self.versioninfo >> 2) & ((1 << 30) - 1)
    }

    /// Whether the record says raw (`Some`), or cannot say: a compound stream's package
    /// header (`None`).
    pub fn raw(&self) -> Option<bool> {
        (self.versioninfo & 3 == DMU_SUBSTREAM)
            .then(|| self.features() & DMU_BACKUP_FEATURE_RAW != 0)
    }

    /// Checks the sender's claim that the stream is raw (or not) against the record; the
    /// refusal in words when they disagree.
    pub fn check_raw_claim(&self, claimed_raw: bool) -> Result<(), String> {
        match self.raw() {
            Some(true) if !claimed_raw => Err(format!(
                "the stream is raw (DMU_BACKUP_FEATURE_RAW in its DRR_BEGIN feature flags {:#x}) but was sent as not raw",
                self.features()
            )),
            Some(false) if claimed_raw => Err(format!(
                "the stream was sent as raw but is not (no DMU_BACKUP_FEATURE_RAW in its DRR_BEGIN feature flags {:#x})",
                self.features()
            )),
            _ => Ok(()),
        }
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A ZFS send stream; its first record.
    Stream(Begin),
    /// Not one, and why.
    NotAStream(String),
    /// Too few bytes to tell yet.
    NeedMore,
}

/// Looks at the first bytes of a (decompressed) body.
pub fn check(prefix: &[u8]) -> Verdict {
    let type_bytes = &prefix[..prefix.len().min(4)];
    if type_bytes.iter().any(|&b| b != 0) {
        return Verdict::NotAStream(format!(
            "its first record is not DRR_BEGIN (type bytes {})",
            hex::encode(type_bytes)
        ));
    }
    let Some(magic) = prefix.get(8..16) else {
        return Verdict::NeedMore;
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(magic);
    let order = if u64::from_le_bytes(word) == DMU_BACKUP_MAGIC {
        ByteOrder::Little
    } else if u64::from_be_bytes(word) == DMU_BACKUP_MAGIC {
        ByteOrder::Big
    } else {
        return Verdict::NotAStream(format!(
            "no DMU_BACKUP_MAGIC 0x2f5bacbac in its DRR_BEGIN record (found {})",
            hex::encode(magic)
        ));
    };
    let Some(version) = prefix.get(16..HEADER_LEN) else {
        return Verdict::NeedMore;
    };
    word.copy_from_slice(version);
    let versioninfo = match order {
        ByteOrder::Little => u64::from_le_bytes(word),
        ByteOrder::Big => u64::from_be_bytes(word),
    };
    Verdict::Stream(Begin { order, versioninfo })
}

/// The verdict once the body ended with only `prefix` (what was still missing is an answer).
pub fn check_complete(prefix: &[u8]) -> Verdict {
    match check(prefix) {
        Verdict::NeedMore => Verdict::NotAStream(format!(
            "it ended after {} bytes, inside the first record's head",
            prefix.len()
        )),
        v => v,
    }
}

/// Looks at the first decompressed bytes of a zstd-compressed body's beginning `compressed`
/// (`complete`: that is the whole body). A frame asking for a window over
/// `2^window_log_max` bytes is refused, never allocated.
pub async fn check_zstd(compressed: &[u8], complete: bool, window_log_max: u32) -> Verdict {
    let mut decoder =
        ZstdDecoder::with_params(compressed, &[DParameter::window_log_max(window_log_max)]);
    let mut out = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match decoder.read(&mut out[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !complete => break,
            Err(e) => return Verdict::NotAStream(zstd_refusal(&e, window_log_max)),
        }
        if let Verdict::NotAStream(why) = check(&out[..got]) {
            return Verdict::NotAStream(why);
        }
    }
    let verdict = if complete {
        check_complete(&out[..got])
    } else {
        check(&out[..got])
    };
    if verdict == Verdict::NeedMore && compressed.len() >= MAX_COMPRESSED_PREFIX {
        return Verdict::NotAStream(format!(
            "{} compressed bytes gave only {got} bytes",
            compressed.len()
        ));
    }
    verdict
}

/// Why a zstd body was refused, in words.
fn zstd_refusal(e: &io::Error, window_log_max: u32) -> String {
    let text = e.to_string();
    if text.contains("memory") || text.contains("indow") {
        format!(
            "its zstd frame needs a window over this agent's limit of 2^{window_log_max} bytes (--zstd-window-log-max): {text}"
        )
    } else {
        format!("it is not valid zstd: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `drr_versioninfo` of a plain (substream) send with OpenZFS 2.3's usual flags.
    const PLAIN_VERSIONINFO: u64 = 0x0010_0011;

    fn head(order: ByteOrder) -> Vec<u8> {
        let mut h = Vec::new();
        match order {
            ByteOrder::Little => {
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&312u32.to_le_bytes());
                h.extend_from_slice(&DMU_BACKUP_MAGIC.to_le_bytes());
                h.extend_from_slice(&PLAIN_VERSIONINFO.to_le_bytes());
            }
            ByteOrder::Big => {
                h.extend_from_slice(&0u32.to_be_bytes());
                h.extend_from_slice(&312u32.to_be_bytes());
                h.extend_from_slice(&DMU_BACKUP_MAGIC.to_be_bytes());
                h.extend_from_slice(&PLAIN_VERSIONINFO.to_be_bytes());
            }
        }
        h
    }

    fn stream(order: ByteOrder) -> Verdict {
        Verdict::Stream(Begin {
            order,
            versioninfo: PLAIN_VERSIONINFO,
        })
    }

    #[test]
    fn both_byte_orders() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let mut h = head(order);
            assert_eq!(check(&h), stream(order));
            h.extend_from_slice(b"more of the record");
            assert_eq!(check(&h), stream(order));
        }
    }

    #[test]
    fn every_prefix_of_a_head_needs_more_and_every_wrong_byte_is_refused() {
        let h = head(ByteOrder::Little);
        for n in 0..HEADER_LEN {
            assert_eq!(check(&h[..n]), Verdict::NeedMore, "{n} bytes");
            assert!(
                matches!(check_complete(&h[..n]), Verdict::NotAStream(_)),
                "{n} bytes and the end"
            );
        }
        for i in (0..4).chain(8..16) {
            let mut bad = h.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(check(&bad), Verdict::NotAStream(_)),
                "byte {i} changed"
            );
        }
        // The payload length may be anything.
        let mut other = h.clone();
        other[4..8].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(check(&other), stream(ByteOrder::Little));
        // A wrong type is refused at its first byte.
        assert!(matches!(check(b"P"), Verdict::NotAStream(_)));
    }

    /// The first record of a real stream, captured from OpenZFS 2.3.2 in the test VM
    /// (e2e/scripts/capture-openzfs-fixtures.sh: `od -An -tx1` of its first 312 bytes).
    fn captured(name: &str) -> Vec<u8> {
        let text = match name {
            "plain" => include_str!("../tests/fixtures/openzfs-2.3.2-drr-begin-plain.txt"),
            "raw" => include_str!("../tests/fixtures/openzfs-2.3.2-drr-begin-raw.txt"),
            "raw-incremental" => {
                include_str!("../tests/fixtures/openzfs-2.3.2-drr-begin-raw-incremental.txt")
            }
            "compound" => include_str!("../tests/fixtures/openzfs-2.3.2-drr-begin-compound.txt"),
            "raw-compound" => {
                include_str!("../tests/fixtures/openzfs-2.3.2-drr-begin-raw-compound.txt")
            }
            other => panic!("no fixture {other}"),
        };
        let hex: String = text.split_whitespace().collect();
        let bytes = hex::decode(hex).expect("hex");
        assert_eq!(bytes.len(), 312, "{name}: a whole DRR_BEGIN record");
        bytes
    }

    fn begin_of(record: &[u8]) -> Begin {
        match check(record) {
            Verdict::Stream(b) => b,
            v => panic!("not a stream: {v:?}"),
        }
    }

    #[test]
    fn real_raw_and_plain_records_say_which_they_are() {
        for (name, raw) in [("plain", false), ("raw", true), ("raw-incremental", true)] {
            let begin = begin_of(&captured(name));
            assert_eq!(begin.order, ByteOrder::Little, "{name}");
            assert_eq!(
                begin.raw(),
                Some(raw),
                "{name}: flags {:#x}",
                begin.features()
            );
            assert_eq!(begin.check_raw_claim(raw), Ok(()), "{name}");
            let refused = begin
                .check_raw_claim(!raw)
                .expect_err("the opposite claim is refused");
            assert!(refused.contains("DMU_BACKUP_FEATURE_RAW"), "{refused}");
        }
    }

    #[test]
    fn a_compound_streams_package_header_does_not_say() {
        for name in ["compound", "raw-compound"] {
            let begin = begin_of(&captured(name));
            assert_eq!(begin.raw(), None, "{name}");
            assert_eq!(begin.check_raw_claim(true), Ok(()), "{name}");
            assert_eq!(begin.check_raw_claim(false), Ok(()), "{name}");
        }
    }

    #[test]
    fn the_raw_flag_is_read_in_the_senders_byte_order() {
        let raw = PLAIN_VERSIONINFO | (DMU_BACKUP_FEATURE_RAW << 2);
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let mut h = head(order);
            let bytes = match order {
                ByteOrder::Little => raw.to_le_bytes(),
                ByteOrder::Big => raw.to_be_bytes(),
            };
            h[16..24].copy_from_slice(&bytes);
            let begin = begin_of(&h);
            assert_eq!(begin.raw(), Some(true), "{order:?}");
            assert!(begin.check_raw_claim(false).is_err(), "{order:?}");
            assert_eq!(begin_of(&head(order)).raw(), Some(false), "{order:?}");
        }
    }

    fn zstd_of(data: &[u8], level: i32) -> Vec<u8> {
        use async_compression::tokio::bufread::ZstdEncoder;
        futures::executor::block_on(async {
            let mut enc = ZstdEncoder::with_quality(data, async_compression::Level::Precise(level));
            let mut out = Vec::new();
            enc.read_to_end(&mut out).await.expect("compress");
            out
        })
    }

    #[tokio::test]
    async fn zstd_bodies() {
        let mut body = head(ByteOrder::Big);
        body.extend((0..200_000u32).map(|i| (i * 7 + i / 11) as u8));
        let z = zstd_of(&body, 3);
        assert_eq!(check_zstd(&z, true, 23).await, stream(ByteOrder::Big));
        // Only the beginning, body not complete yet: a verdict or "more".
        let v = check_zstd(&z[..z.len().min(40)], false, 23).await;
        assert!(
            v == stream(ByteOrder::Big) || v == Verdict::NeedMore,
            "{v:?}"
        );
        // The same cut, but that is the whole body: refused.
        let v = check_zstd(&z[..6], true, 23).await;
        assert!(matches!(v, Verdict::NotAStream(_)), "{v:?}");
        // Compressed junk.
        let junk = zstd_of(b"this is not a zfs stream at all, it is text", 3);
        assert!(matches!(
            check_zstd(&junk, true, 23).await,
            Verdict::NotAStream(_)
        ));
        // Not zstd.
        assert!(matches!(
            check_zstd(&body, true, 23).await,
            Verdict::NotAStream(_)
        ));
    }
}
