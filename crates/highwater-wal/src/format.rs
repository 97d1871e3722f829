//! The byte layout of segment files and frames: constants, header codecs and
//! file names. Everything here is pure (no I/O); the layout itself is
//! documented in the crate root.

use xxhash_rust::xxh3::xxh3_64;

use crate::Lsn;

/// The first eight bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"HWWALSEG";

/// The segment format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Length of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;

/// The first four bytes of every frame header.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"HWFR";

/// Length of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 56;

/// Length of the per-record length prefix inside a frame body.
pub(crate) const RECORD_PREFIX_LEN: usize = 4;

/// The largest frame body (stored or decompressed) this build writes or
/// accepts: bounds every allocation made from a length read from disk.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// Frame flag: the body is one zstd frame.
pub(crate) const FLAG_ZSTD: u8 = 1;

/// Frame flag: the stored body is sealed (at-rest encryption): nonce,
/// ciphertext of the (possibly compressed) body, tag; header bytes 20..24
/// hold the id of the key that sealed it.
pub(crate) const FLAG_SEALED: u8 = 2;

/// The extension of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";

/// The extension of temporary files (preallocated spares, segments being
/// created); any left over from a crash are deleted when the log is opened.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// The name of the lock file that keeps a second writer out of a directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The name of the file recording an LSN up to which the log is known to
/// have been durable (written by `Wal::open` and `Wal::close`): a log that
/// recovers to less than it has lost a segment or a segment's tail.
pub(crate) const DURABLE_FILE: &str = "DURABLE";

/// The first eight bytes of the [`DURABLE_FILE`].
const DURABLE_MAGIC: [u8; 8] = *b"HWWALDUR";

/// Length of the [`DURABLE_FILE`].
pub(crate) const DURABLE_LEN: usize = 32;

/// Encodes the [`DURABLE_FILE`]: magic, version, reserved, the LSN, and the
/// xxh3-64 of the first 24 bytes (the segment header's layout).
pub(crate) fn encode_durable(lsn: Lsn) -> [u8; DURABLE_LEN] {
    let mut h = [0u8; DURABLE_LEN];
    h[0..8].copy_from_slice(&DURABLE_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&lsn.to_le_bytes());
    let sum = xxh3_64(&h[..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Decodes the [`DURABLE_FILE`]; `Err` says what is wrong with it.
pub(crate) fn decode_durable(bytes: &[u8]) -> Result<Lsn, &'static str> {
    if bytes.len() != DURABLE_LEN {
        return Err("wrong length");
    }
    if bytes[0..8] != DURABLE_MAGIC {
        return Err("bad magic");
    }
    if xxh3_64(&bytes[..24]).to_le_bytes() != bytes[24..32] {
        return Err("checksum mismatch");
    }
    if u16::from_le_bytes([bytes[8], bytes[9]]) != FORMAT_VERSION
        || bytes[10..16].iter().any(|b| *b != 0)
    {
        return Err("unknown version or nonzero reserved bytes");
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[16..24]);
    Ok(u64::from_le_bytes(lsn))
}

/// The file name of the segment whose first record is `first_lsn`.
pub(crate) fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name: exactly twenty decimal digits and `.wal`.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentHeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// All zero: created but never written.
    Zero,
    /// Magic or checksum mismatch, or a nonzero reserved field.
    Damaged(&'static str),
    /// A well-formed header of another format version.
    Version(u16),
}

/// Encodes the segment header of a segment starting at `first_lsn`.
pub(crate) fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 10..16: flags and reserved, zero.
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let sum = xxh3_64(&h[..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Decodes a segment header; returns the first LSN it names.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, SegmentHeaderError> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err(SegmentHeaderError::Short);
    };
    if h.iter().all(|b| *b == 0) {
        return Err(SegmentHeaderError::Zero);
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Damaged("bad segment magic"));
    }
    if u64::from_le_bytes(le8(&h[24..32])) != xxh3_64(&h[..24]) {
        return Err(SegmentHeaderError::Damaged(
            "segment header checksum mismatch",
        ));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderError::Version(version));
    }
    if h[10..16].iter().any(|b| *b != 0) {
        return Err(SegmentHeaderError::Damaged(
            "nonzero reserved bytes in segment header",
        ));
    }
    Ok(u64::from_le_bytes(le8(&h[16..24])))
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// [`FLAG_ZSTD`], [`FLAG_SEALED`], both or neither.
    pub flags: u8,
    /// Records in the body; zero for a marker frame.
    pub count: u32,
    /// Stored body bytes after the header.
    pub body_len: u32,
    /// Body bytes after decompression.
    pub raw_len: u32,
    /// LSN of the first record (for a marker: the next LSN to be assigned).
    pub first_lsn: Lsn,
    /// Every record up to and including this LSN was durable (fdatasync
    /// completed) before this frame was written.
    pub synced_lsn: Lsn,
    /// xxh3-64 of the stored body.
    pub body_checksum: u64,
    /// The key that sealed the body ([`FLAG_SEALED`]); zero otherwise.
    pub key_id: u32,
}

impl FrameHeader {
    /// True when the body is zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// True when the body is sealed.
    pub fn sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }

    /// The associated data a sealed body is bound to: what the frame claims
    /// to be (flags, record count, raw length, first LSN, key id), so a
    /// body moved to another position of the log fails to open.
    pub fn sealing_aad(&self) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[0..16].copy_from_slice(b"highwater wal fr");
        a[16] = self.flags;
        a[20..24].copy_from_slice(&self.count.to_le_bytes());
        a[24..28].copy_from_slice(&self.raw_len.to_le_bytes());
        a[28..32].copy_from_slice(&self.key_id.to_le_bytes());
        a[32..40].copy_from_slice(&self.first_lsn.to_le_bytes());
        a
    }

    /// Body bytes before sealing (the stored body without nonce and tag).
    pub fn unsealed_len(&self) -> usize {
        if self.sealed() {
            (self.body_len as usize).saturating_sub(highwater_core::crypto::BODY_OVERHEAD)
        } else {
            self.body_len as usize
        }
    }

    /// Header plus body, in bytes.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// Encodes the header, checksum included, into `out[..FRAME_HEADER_LEN]`.
    pub fn encode_into(&self, out: &mut [u8]) {
        let h = &mut out[..FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4] = self.flags;
        h[5..8].fill(0);
        h[8..12].copy_from_slice(&self.count.to_le_bytes());
        h[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        h[20..24].copy_from_slice(&self.key_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        h[32..40].copy_from_slice(&self.synced_lsn.to_le_bytes());
        h[40..48].copy_from_slice(&self.body_checksum.to_le_bytes());
        seal_frame_header(h);
    }

    /// Decodes and checks a frame header. The checks bound every length, so
    /// a header that passes never makes the reader allocate more than
    /// [`MAX_FRAME_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<FrameHeader, &'static str> {
        let Some(h) = bytes.get(..FRAME_HEADER_LEN) else {
            return Err("short frame header");
        };
        if h[0..4] != FRAME_MAGIC {
            return Err("bad frame magic");
        }
        if u64::from_le_bytes(le8(&h[48..56])) != xxh3_64(&h[..48]) {
            return Err("frame header checksum mismatch");
        }
        let flags = h[4];
        if flags & !(FLAG_ZSTD | FLAG_SEALED) != 0 || h[5..8].iter().any(|b| *b != 0) {
            return Err("unknown frame flags");
        }
        let header = FrameHeader {
            flags,
            count: u32::from_le_bytes(le4(&h[8..12])),
            body_len: u32::from_le_bytes(le4(&h[12..16])),
            raw_len: u32::from_le_bytes(le4(&h[16..20])),
            first_lsn: u64::from_le_bytes(le8(&h[24..32])),
            synced_lsn: u64::from_le_bytes(le8(&h[32..40])),
            body_checksum: u64::from_le_bytes(le8(&h[40..48])),
            key_id: u32::from_le_bytes(le4(&h[20..24])),
        };
        header.check()?;
        Ok(header)
    }

    /// Structural checks shared by the writer's debug assertions and the
    /// decoder.
    fn check(&self) -> Result<(), &'static str> {
        let body = self.body_len as usize;
        let raw = self.raw_len as usize;
        if self.unsealed_len() > MAX_FRAME_BYTES || raw > MAX_FRAME_BYTES {
            return Err("frame larger than the maximum frame size");
        }
        if !self.sealed() && self.key_id != 0 {
            return Err("nonzero reserved bytes in frame header");
        }
        if self.sealed() && body < highwater_core::crypto::BODY_OVERHEAD {
            return Err("sealed frame shorter than its nonce and tag");
        }
        if !self.compressed() && self.unsealed_len() != raw {
            return Err("uncompressed frame with differing stored and raw lengths");
        }
        if self.count == 0 && (body != 0 || self.flags != 0) {
            return Err("marker frame with a body");
        }
        // Every record has at least its length prefix.
        if self.count as usize > raw / RECORD_PREFIX_LEN {
            return Err("more records than the body can hold");
        }
        if self.first_lsn == 0 {
            return Err("frame with lsn zero");
        }
        if self.synced_lsn >= self.first_lsn {
            return Err("frame claims itself durable");
        }
        if self.first_lsn.checked_add(u64::from(self.count)).is_none() {
            return Err("frame lsn range overflows");
        }
        Ok(())
    }
}

/// Writes `synced_lsn` into an encoded frame header and recomputes its
/// checksum: the writer thread's only change to a frame built by an
/// appender.
pub(crate) fn patch_synced_lsn(header: &mut [u8], synced_lsn: Lsn) {
    header[32..40].copy_from_slice(&synced_lsn.to_le_bytes());
    seal_frame_header(header);
}

fn seal_frame_header(h: &mut [u8]) {
    let sum = xxh3_64(&h[..48]);
    h[48..56].copy_from_slice(&sum.to_le_bytes());
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&s[..8]);
    a
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&s[..4]);
    a
}

/// Splits a raw (decompressed) body into its record payloads, checking that
/// the length prefixes tile the body exactly.
pub(crate) fn split_records(body: &[u8], count: u32) -> Result<Vec<&[u8]>, &'static str> {
    let mut out = Vec::with_capacity(count as usize);
    let mut pos = 0usize;
    for _ in 0..count {
        let Some(prefix) = body.get(pos..pos + RECORD_PREFIX_LEN) else {
            return Err("record length prefix runs past the body");
        };
        let len = u32::from_le_bytes(le4(prefix)) as usize;
        pos += RECORD_PREFIX_LEN;
        let Some(payload) = pos.checked_add(len).and_then(|end| body.get(pos..end)) else {
            return Err("record runs past the body");
        };
        out.push(payload);
        pos += len;
    }
    if pos != body.len() {
        return Err("bytes after the last record of a frame");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("1.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.wal.tmp"),
            None
        );
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h), Ok(77));
        assert_eq!(
            decode_segment_header(&[0u8; SEGMENT_HEADER_LEN]),
            Err(SegmentHeaderError::Zero)
        );
        assert_eq!(
            decode_segment_header(&h[..10]),
            Err(SegmentHeaderError::Short)
        );
        for i in 0..SEGMENT_HEADER_LEN {
            let mut d = h;
            d[i] ^= 0x10;
            assert!(decode_segment_header(&d).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn frame_header_round_trip_and_damage() {
        let fh = FrameHeader {
            flags: 0,
            count: 3,
            body_len: 40,
            raw_len: 40,
            first_lsn: 10,
            synced_lsn: 9,
            body_checksum: 0xdead_beef,
            key_id: 0,
        };
        let mut buf = [0u8; FRAME_HEADER_LEN];
        fh.encode_into(&mut buf);
        assert_eq!(FrameHeader::decode(&buf), Ok(fh));
        for i in 0..FRAME_HEADER_LEN {
            let mut d = buf;
            d[i] ^= 0x01;
            assert!(FrameHeader::decode(&d).is_err(), "flip at {i} accepted");
        }
        patch_synced_lsn(&mut buf, 5);
        assert_eq!(FrameHeader::decode(&buf).unwrap().synced_lsn, 5);
        patch_synced_lsn(&mut buf, 10);
        assert!(FrameHeader::decode(&buf).is_err(), "self-durable frame");
    }

    #[test]
    fn records_must_tile_the_body() {
        let mut body = Vec::new();
        for p in [&b"ab"[..], b"", b"xyz"] {
            body.extend_from_slice(&(p.len() as u32).to_le_bytes());
            body.extend_from_slice(p);
        }
        let recs = split_records(&body, 3).unwrap();
        assert_eq!(recs, vec![&b"ab"[..], b"", b"xyz"]);
        assert!(split_records(&body, 2).is_err());
        assert!(split_records(&body, 4).is_err());
        assert!(split_records(&body[..body.len() - 1], 3).is_err());
    }
}
