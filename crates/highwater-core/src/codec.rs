//! The artifact codec: how a batch of state records is stored.
//!
//! Byte layout (integers little-endian):
//!
//! ```text
//! magic        4 bytes  "HWAR"
//! version      u16      1, or 2 when the keys are operator-relative
//! codec        u8       0 = raw, 1 = zstd (one frame)
//! kind         u8       0 = entries (puts only), 1 = delta (puts and deletes);
//!                       in version 2, bit 0x80 set = operator-relative keys
//! entries      u64      number of records
//! raw_len      u64      bytes of the record stream before compression
//! payload_len  u64      bytes of the payload that follows the header
//! payload_sum  u64      xxh3-64 of the payload
//! header_sum   u64      xxh3-64 of the 40 bytes above
//! payload      raw_len record bytes, or a zstd frame that decompresses to them
//! ```
//!
//! Each record is `postcard((key: &[u8], value: Option<&[u8]>))`; `None`
//! marks a delete and appears only in delta artifacts. In an artifact with
//! operator-relative keys (version 2, kind bit 0x80) every key is stored
//! without its operator name (key group, then the rest of the key after the
//! operator), so identical state of two operators encodes to identical bytes
//! and is stored once; [`crate::read::decode_checked`] puts the operator of
//! the manifest reference back. Version 1 artifacts (absolute keys) are still
//! written for keys that are not well-formed state keys, and still read. Records are sorted by
//! key so that equal state always encodes to equal bytes: the artifact id
//! (xxh3-128 of the whole encoding) then deduplicates unchanged data.
//!
//! Decoding checks the header checksum before trusting any length, checks
//! the payload checksum before decompressing (unless the caller has just
//! checked the whole artifact against its content address,
//! [`DecodeLimits::content_address_checked`]), and refuses record streams
//! larger than [`DecodeLimits::max_raw_bytes`], so a damaged or hostile
//! artifact can never cause a panic or an unbounded allocation.

use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};

use crate::error::{Error, Result};

/// Newest artifact format version (2: operator-relative keys possible).
pub const ARTIFACT_FORMAT_VERSION: u16 = 2;
/// The first artifact format version: absolute keys only. Artifacts with
/// absolute keys are still written as version 1, byte for byte as before.
pub const ARTIFACT_FORMAT_V1: u16 = 1;
/// Bit of the kind byte marking operator-relative keys (version 2 only).
const RELATIVE_KEYS_BIT: u8 = 0x80;
/// Size of the artifact header.
pub const ARTIFACT_HEADER_LEN: usize = 48;
const ARTIFACT_MAGIC: &[u8; 4] = b"HWAR";

/// How an artifact's payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// Record bytes as they are.
    Raw,
    /// One zstd frame.
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }
}

/// Whether an artifact may hold deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArtifactKind {
    /// Live entries only.
    Entries,
    /// Puts and deletes relative to an earlier layer.
    Delta,
}

/// Options of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// zstd level; 1 is the sensible default for checkpoints (fast, and
    /// higher levels gain little on state-like data).
    pub zstd_level: i32,
    /// Record streams shorter than this are stored raw.
    pub compression_threshold: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 1,
            compression_threshold: 512,
        }
    }
}

/// Limits the decoder enforces before allocating, and what the caller
/// already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted record stream (decompressed size).
    pub max_raw_bytes: u64,
    /// The bytes were checked against their content address (the xxh3-128
    /// of the whole artifact, payload included, that a manifest names it
    /// by) just before decoding, as a fetch at the recovery's default
    /// verification level does: the payload checksum, which covers a part
    /// of the same bytes, is then not computed a second time (4 % of a
    /// restore's CPU in the recovery suite's profile). The header checksum
    /// and every bound are checked either way. `false` by default.
    pub content_address_checked: bool,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_raw_bytes: 1 << 30,
            content_address_checked: false,
        }
    }
}

/// A state record: a put (`Some(value)`) or a delete (`None`).
pub type Record<'a> = (&'a [u8], Option<&'a [u8]>);

/// How the keys of an artifact are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyForm {
    /// Whole encoded state keys (format version 1).
    #[default]
    Absolute,
    /// State keys without their operator name: key group (2 bytes), then
    /// everything after the operator (format version 2). The reader takes
    /// the operator from the manifest's artifact reference.
    OperatorRelative,
}

/// Builds the record stream of one artifact.
#[derive(Debug)]
pub struct RecordWriter {
    kind: ArtifactKind,
    form: KeyForm,
    buf: Vec<u8>,
    entries: u64,
}

impl RecordWriter {
    /// A writer for an artifact of `kind`, with room for `capacity` bytes.
    pub fn new(kind: ArtifactKind, capacity: usize) -> Self {
        Self::with_form(kind, KeyForm::Absolute, capacity)
    }

    /// A writer whose keys are in `form` (the caller writes them so).
    pub fn with_form(kind: ArtifactKind, form: KeyForm, capacity: usize) -> Self {
        RecordWriter {
            kind,
            form,
            buf: Vec::with_capacity(capacity),
            entries: 0,
        }
    }

    /// A writer that appends into `buf` (cleared first), so that a caller
    /// encoding many artifacts reuses one allocation for all of them (see
    /// [`RecordWriter::finish_reusing`]).
    pub fn with_buffer(kind: ArtifactKind, form: KeyForm, mut buf: Vec<u8>) -> Self {
        buf.clear();
        RecordWriter {
            kind,
            form,
            buf,
            entries: 0,
        }
    }

    /// Appends a record. Records must be appended in key order for the
    /// encoding to be deterministic; deletes are refused in entry artifacts.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.push_key_parts(&[key], value).map(|_| ())
    }

    /// [`push`](RecordWriter::push) of the key made of `key_parts` one
    /// after the other, written straight into the record stream (no key is
    /// assembled on the way). Returns the key as written, so a caller that
    /// needs the whole key (a chunker hashing it) reads it from there.
    pub fn push_key_parts(&mut self, key_parts: &[&[u8]], value: Option<&[u8]>) -> Result<&[u8]> {
        if value.is_none() && self.kind == ArtifactKind::Entries {
            return Err(Error::InvalidArgument(
                "a delete cannot be written to an entries artifact".into(),
            ));
        }
        let key_len: usize = key_parts.iter().map(|p| p.len()).sum();
        // The postcard encoding of `(key, value)`, written directly: a
        // varint length and the key bytes, then the option tag (0 = None,
        // 1 = Some) and, for Some, a varint length and the value bytes.
        // Decoding goes through postcard itself (see `RecordIter`), and a
        // test pins the two to the same bytes.
        self.buf
            .reserve(key_len + value.map_or(0, <[u8]>::len) + 21);
        push_varint(&mut self.buf, key_len as u64);
        let key_at = self.buf.len();
        for part in key_parts {
            self.buf.extend_from_slice(part);
        }
        let key_end = self.buf.len();
        match value {
            None => self.buf.push(0),
            Some(v) => {
                self.buf.push(1);
                push_varint(&mut self.buf, v.len() as u64);
                self.buf.extend_from_slice(v);
            }
        }
        self.entries += 1;
        Ok(&self.buf[key_at..key_end])
    }

    /// Number of records so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes of records so far.
    pub fn raw_len(&self) -> usize {
        self.buf.len()
    }

    /// Compresses (if worthwhile) and frames the records.
    pub fn finish(self, opts: &EncodeOptions) -> Result<EncodedArtifact> {
        encode_records_as(self.kind, self.form, self.entries, &self.buf, opts)
    }

    /// [`finish`](RecordWriter::finish), handing the record buffer back
    /// for the next [`RecordWriter::with_buffer`].
    pub fn finish_reusing(self, opts: &EncodeOptions) -> Result<(EncodedArtifact, Vec<u8>)> {
        let enc = encode_records_as(self.kind, self.form, self.entries, &self.buf, opts)?;
        Ok((enc, self.buf))
    }
}

/// Appends `v` as a postcard (LEB128) varint.
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An encoded artifact ready to store.
#[derive(Debug, Clone)]
pub struct EncodedArtifact {
    /// The full encoding, header included.
    pub bytes: Vec<u8>,
    /// Number of records.
    pub entries: u64,
    /// Record bytes before compression.
    pub raw_len: u64,
    /// Codec chosen.
    pub codec: Codec,
}

impl EncodedArtifact {
    /// The content address of the encoding.
    pub fn id(&self) -> crate::manifest::ArtifactId {
        crate::manifest::ArtifactId::of(&self.bytes)
    }
}

/// Frames an already built record stream of absolute keys.
pub fn encode_records(
    kind: ArtifactKind,
    entries: u64,
    records: &[u8],
    opts: &EncodeOptions,
) -> Result<EncodedArtifact> {
    encode_records_as(kind, KeyForm::Absolute, entries, records, opts)
}

/// Frames an already built record stream whose keys are in `form`.
pub fn encode_records_as(
    kind: ArtifactKind,
    form: KeyForm,
    entries: u64,
    records: &[u8],
    opts: &EncodeOptions,
) -> Result<EncodedArtifact> {
    let frame = |codec: Codec, payload: &[u8]| {
        let mut bytes = Vec::with_capacity(ARTIFACT_HEADER_LEN + payload.len());
        bytes.extend_from_slice(ARTIFACT_MAGIC);
        let (version, form_bit) = match form {
            KeyForm::Absolute => (ARTIFACT_FORMAT_V1, 0),
            KeyForm::OperatorRelative => (ARTIFACT_FORMAT_VERSION, RELATIVE_KEYS_BIT),
        };
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.push(codec.to_byte());
        bytes.push(
            form_bit
                | match kind {
                    ArtifactKind::Entries => 0,
                    ArtifactKind::Delta => 1,
                },
        );
        bytes.extend_from_slice(&entries.to_le_bytes());
        bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
        let header_sum = xxhash_rust::xxh3::xxh3_64(&bytes[..40]);
        bytes.extend_from_slice(&header_sum.to_le_bytes());
        bytes.extend_from_slice(payload);
        EncodedArtifact {
            bytes,
            entries,
            raw_len: records.len() as u64,
            codec,
        }
    };
    if records.len() >= opts.compression_threshold {
        // Compressed into this thread's scratch buffer and framed from
        // there, kept only when it saves space.
        let framed = with_zstd_compressed(records, opts.zstd_level, |c| {
            (c.len() < records.len()).then(|| frame(Codec::Zstd, c))
        })
        .map_err(|e| Error::io("zstd compression", e))?;
        if let Some(artifact) = framed {
            return Ok(artifact);
        }
    }
    Ok(frame(Codec::Raw, records))
}

/// The verified header of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactHeader {
    /// Format version.
    pub version: u16,
    /// Payload codec.
    pub codec: Codec,
    /// Entries or delta.
    pub kind: ArtifactKind,
    /// Number of records.
    pub entries: u64,
    /// Record bytes before compression.
    pub raw_len: u64,
    /// Payload bytes.
    pub payload_len: u64,
    /// How the keys are written.
    pub key_form: KeyForm,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks the header and payload checksums without decompressing.
pub fn verify_artifact(bytes: &[u8]) -> Result<ArtifactHeader> {
    verify_artifact_with(bytes, true)
}

/// [`verify_artifact`], computing the payload checksum only when
/// `payload_sum` (see [`DecodeLimits::content_address_checked`]).
fn verify_artifact_with(bytes: &[u8], payload_sum: bool) -> Result<ArtifactHeader> {
    let bad = |detail: String| Err(Error::corrupt("artifact", detail));
    if bytes.len() < ARTIFACT_HEADER_LEN {
        return bad(format!("shorter than its header: len={}", bytes.len()));
    }
    if &bytes[..4] != ARTIFACT_MAGIC {
        return bad("bad magic".into());
    }
    if xxhash_rust::xxh3::xxh3_64(&bytes[..40]) != le_u64(bytes, 40) {
        return bad("header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != ARTIFACT_FORMAT_V1 && version != ARTIFACT_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "artifact",
            found: version,
            supported: ARTIFACT_FORMAT_VERSION,
        });
    }
    let key_form = if bytes[7] & RELATIVE_KEYS_BIT != 0 {
        if version == ARTIFACT_FORMAT_V1 {
            return bad("operator-relative keys in a version 1 artifact".into());
        }
        KeyForm::OperatorRelative
    } else {
        KeyForm::Absolute
    };
    let codec = match bytes[6] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        c => return bad(format!("unknown codec: {c}")),
    };
    let kind = match bytes[7] & !RELATIVE_KEYS_BIT {
        0 => ArtifactKind::Entries,
        1 => ArtifactKind::Delta,
        k => return bad(format!("unknown kind: {k}")),
    };
    let entries = le_u64(bytes, 8);
    let raw_len = le_u64(bytes, 16);
    let payload_len = le_u64(bytes, 24);
    let payload = &bytes[ARTIFACT_HEADER_LEN..];
    if payload_len != payload.len() as u64 {
        return bad(format!(
            "payload length mismatch: header={payload_len} actual={}",
            payload.len()
        ));
    }
    if codec == Codec::Raw && raw_len != payload_len {
        return bad(format!(
            "raw payload length mismatch: raw_len={raw_len} payload_len={payload_len}"
        ));
    }
    if payload_sum && xxhash_rust::xxh3::xxh3_64(payload) != le_u64(bytes, 32) {
        return bad("payload checksum mismatch".into());
    }
    Ok(ArtifactHeader {
        version,
        codec,
        kind,
        entries,
        raw_len,
        payload_len,
        key_form,
    })
}

/// A decoded artifact: its header and its record stream.
#[derive(Debug, Clone)]
pub struct DecodedArtifact {
    /// The verified header.
    pub header: ArtifactHeader,
    records: Vec<u8>,
}

thread_local! {
    /// This thread's zstd compression context and its level, and the
    /// buffer it compresses into: reused, since setting a context up costs
    /// about as much as compressing a small artifact, and a fresh output
    /// buffer of an artifact's size is pages the kernel must zero first.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { RefCell::new(None) };
    /// This thread's zstd decompression context, reused likewise.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// A record buffer given back by [`DecodedArtifact::recycle`], for
    /// this thread's next [`decode_artifact`].
    static RECORDS: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty record buffer: this thread's recycled one if it has one.
fn records_buffer() -> Vec<u8> {
    let mut buf = RECORDS.take();
    buf.clear();
    buf
}

/// The largest compression buffer a thread keeps between artifacts.
const MAX_KEPT_SCRATCH: usize = 64 << 20;

/// Compresses `data` at `level` with this thread's context into its
/// scratch buffer and hands the result to `f`.
fn with_zstd_compressed<R>(
    data: &[u8],
    level: i32,
    f: impl FnOnce(&[u8]) -> R,
) -> std::io::Result<R> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (_, compressor, out) = match &mut *cell {
            Some(c) if c.0 == level => c,
            slot => slot.insert((level, zstd::bulk::Compressor::new(level)?, Vec::new())),
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        compressor.compress_to_buffer(data, out)?;
        let r = f(out);
        if out.capacity() > MAX_KEPT_SCRATCH {
            // An unusually large artifact's buffer is not kept for good.
            *out = Vec::new();
        }
        Ok(r)
    })
}

/// Decompresses one frame of at most `capacity` bytes with this thread's
/// context.
fn zstd_decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    // A recycled buffer may hold more than `capacity`: a frame that
    // produces more than it claims then fails the caller's length check.
    let mut out = records_buffer();
    out.reserve(capacity);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match &mut *cell {
            Some(d) => d,
            slot => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress_to_buffer(data, &mut out)
    })?;
    Ok(out)
}

/// Decompresses one frame of at most `limit` bytes, growing the output as
/// it is produced (for frames whose claimed size is far above their
/// compressed size).
fn zstd_decompress_streaming(data: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::with_buffer(data)?
        .single_frame()
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Verifies and decompresses an artifact.
pub fn decode_artifact(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedArtifact> {
    let header = verify_artifact_with(bytes, !limits.content_address_checked)?;
    if header.raw_len > limits.max_raw_bytes {
        return Err(Error::corrupt(
            "artifact",
            format!(
                "record stream above limit: raw_len={} limit={}",
                header.raw_len, limits.max_raw_bytes
            ),
        ));
    }
    let payload = &bytes[ARTIFACT_HEADER_LEN..];
    let records = match header.codec {
        Codec::Raw => {
            let mut out = records_buffer();
            out.extend_from_slice(payload);
            out
        }
        Codec::Zstd => {
            // The length is bounded by the limit checked above, but it is
            // only a claim (the checksums are not secrets): when it is far
            // more than this payload usually expands to, the output grows
            // with what the frame really produces instead of being
            // allocated up front (issue 18's mutation test: 50 bytes made
            // the decoder allocate 256 MiB).
            let out = if header.raw_len <= (payload.len() as u64).saturating_mul(64).max(1 << 20) {
                zstd_decompress(payload, header.raw_len as usize)
            } else {
                zstd_decompress_streaming(payload, header.raw_len)
            }
            .map_err(|e| Error::corrupt("artifact", format!("zstd frame: {e}")))?;
            if out.len() as u64 != header.raw_len {
                return Err(Error::corrupt(
                    "artifact",
                    format!(
                        "decompressed length mismatch: header={} actual={}",
                        header.raw_len,
                        out.len()
                    ),
                ));
            }
            out
        }
    };
    Ok(DecodedArtifact { header, records })
}

impl DecodedArtifact {
    /// Gives the record buffer back to this thread, for its next
    /// [`decode_artifact`]: decompressing into pages already faulted in
    /// rather than fresh ones, which the kernel must zero and map first
    /// (half the page faults of a restore's decode threads were that
    /// buffer). A buffer above 64 MiB is freed instead.
    pub fn recycle(self) {
        if self.records.capacity() <= MAX_KEPT_SCRATCH {
            RECORDS.set(self.records);
        }
    }

    /// Iterates over the records, checking each as it goes. The iterator
    /// fails if the record count or the stream end disagree with the header.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.records,
            remaining: self.header.entries,
            kind: self.header.kind,
            failed: false,
        }
    }

    /// Decodes every record, so a damaged stream is found before any is used.
    pub fn check_records(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.records() {
            r?;
            n += 1;
        }
        Ok(n)
    }
}

/// Iterator over the records of a [`DecodedArtifact`].
#[derive(Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: u64,
    kind: ArtifactKind,
    failed: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(Error::corrupt(
                "artifact",
                format!("bytes after the last record: len={}", self.rest.len()),
            )));
        }
        match postcard::take_from_bytes::<Record<'a>>(self.rest) {
            Ok((rec, rest)) => {
                if rec.1.is_none() && self.kind == ArtifactKind::Entries {
                    self.failed = true;
                    return Some(Err(Error::corrupt(
                        "artifact",
                        "delete record in an entries artifact",
                    )));
                }
                self.rest = rest;
                self.remaining -= 1;
                Some(Ok(rec))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(Error::corrupt(
                    "artifact",
                    format!(
                        "record does not decode: remaining_records={} error={e}",
                        self.remaining
                    ),
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(records: &[(Vec<u8>, Option<Vec<u8>>)], kind: ArtifactKind) -> EncodedArtifact {
        let mut w = RecordWriter::new(kind, 0);
        for (k, v) in records {
            w.push(k, v.as_deref()).unwrap();
        }
        w.finish(&EncodeOptions {
            zstd_level: 1,
            compression_threshold: 16,
        })
        .unwrap()
    }

    type Owned = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    fn decode_all(bytes: &[u8]) -> Result<Owned> {
        let d = decode_artifact(bytes, &DecodeLimits::default())?;
        d.records()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))))
            .collect()
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..20), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 0..50)) {
            let enc = build(&records, ArtifactKind::Delta);
            prop_assert_eq!(decode_all(&enc.bytes).unwrap(), records);
        }

        #[test]
        fn corruption_is_a_typed_error(seed in any::<u64>(), n in 1usize..40) {
            let records: Vec<_> = (0..n).map(|i| (format!("key-{i}").into_bytes(), Some(vec![(i % 7) as u8; 40]))).collect();
            let enc = build(&records, ArtifactKind::Entries);
            let mut bad = enc.bytes.clone();
            let bit = (seed % (bad.len() as u64 * 8)) as usize;
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = decode_all(&bad).expect_err("flipped bit must be detected");
            prop_assert!(err.is_corruption());
            let cut = (seed % enc.bytes.len() as u64) as usize;
            prop_assert!(decode_all(&enc.bytes[..cut]).unwrap_err().is_corruption());
        }

        #[test]
        fn records_are_byte_identical_to_postcard(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20_000)),
            split in any::<prop::sample::Index>()) {
            let rec: Record<'_> = (&key, value.as_deref());
            let mut w = RecordWriter::new(ArtifactKind::Delta, 0);
            w.push(&key, value.as_deref()).unwrap();
            prop_assert_eq!(&w.buf, &postcard::to_allocvec(&rec).unwrap());
            // The same record from a key in two parts, after it.
            let (head, tail) = key.split_at(split.index(key.len() + 1));
            let written = w.push_key_parts(&[head, tail], value.as_deref()).unwrap().to_vec();
            prop_assert_eq!(written, key.clone());
            let once = postcard::to_allocvec(&rec).unwrap();
            let twice = [once.as_slice(), once.as_slice()].concat();
            prop_assert_eq!(w.buf, twice);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&bytes);
        }
    }

    #[test]
    fn small_artifacts_stay_raw_and_large_ones_compress() {
        let small = build(
            &[(b"k".to_vec(), Some(b"v".to_vec()))],
            ArtifactKind::Entries,
        );
        assert_eq!(small.codec, Codec::Raw);
        let big: Vec<_> = (0..100)
            .map(|i| (format!("key-{i:04}").into_bytes(), Some(vec![7u8; 100])))
            .collect();
        let big = build(&big, ArtifactKind::Entries);
        assert_eq!(big.codec, Codec::Zstd);
        assert!(big.bytes.len() < big.raw_len as usize);
    }

    #[test]
    fn deletes_are_refused_in_entry_artifacts() {
        let mut w = RecordWriter::new(ArtifactKind::Entries, 0);
        assert!(w.push(b"k", None).is_err());
    }

    #[test]
    fn oversized_raw_len_is_refused_before_allocation() {
        let records: Vec<_> = (0..100)
            .map(|i| (format!("key-{i:04}").into_bytes(), Some(vec![7u8; 100])))
            .collect();
        let enc = build(&records, ArtifactKind::Entries);
        let limits = DecodeLimits {
            max_raw_bytes: 100,
            ..DecodeLimits::default()
        };
        assert!(
            decode_artifact(&enc.bytes, &limits)
                .unwrap_err()
                .is_corruption()
        );
    }

    #[test]
    fn relative_keys_are_version_2_and_absolute_keys_stay_version_1() {
        let opts = EncodeOptions::default();
        let mut w = RecordWriter::with_form(ArtifactKind::Delta, KeyForm::OperatorRelative, 0);
        w.push(b"\x00\x01rest", None).unwrap();
        let rel = w.finish(&opts).unwrap();
        let h = verify_artifact(&rel.bytes).unwrap();
        assert_eq!(
            (h.version, h.key_form, h.kind),
            (2, KeyForm::OperatorRelative, ArtifactKind::Delta)
        );
        let abs = build(
            &[(b"k".to_vec(), Some(b"v".to_vec()))],
            ArtifactKind::Entries,
        );
        let h = verify_artifact(&abs.bytes).unwrap();
        assert_eq!((h.version, h.key_form), (1, KeyForm::Absolute));
        // The relative bit in a version 1 header is damage, not a new form.
        let mut bad = abs.bytes.clone();
        bad[7] |= RELATIVE_KEYS_BIT;
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[..40]);
        bad[40..48].copy_from_slice(&sum.to_le_bytes());
        assert!(verify_artifact(&bad).unwrap_err().is_corruption());
    }

    /// The payload checksum is left to the content address only when the
    /// caller says it checked one: by default a payload that does not
    /// match it is refused; with `content_address_checked` the same bytes
    /// decode (the content address, which covers them, is the caller's
    /// check), and a damaged header is refused either way.
    #[test]
    fn the_payload_checksum_is_skipped_only_after_a_content_address_check() {
        let enc = build(
            &[(b"k".to_vec(), Some(b"value".to_vec()))],
            ArtifactKind::Entries,
        );
        let checked = DecodeLimits {
            content_address_checked: true,
            ..DecodeLimits::default()
        };
        // Another payload checksum, the header's own checksum fixed up.
        let mut other_sum = enc.bytes.clone();
        other_sum[32] ^= 1;
        let sum = xxhash_rust::xxh3::xxh3_64(&other_sum[..40]);
        other_sum[40..48].copy_from_slice(&sum.to_le_bytes());
        let err = decode_artifact(&other_sum, &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("payload checksum"), "{err}");
        let d = decode_artifact(&other_sum, &checked).unwrap();
        assert_eq!(d.check_records().unwrap(), 1);
        let mut bad_header = enc.bytes.clone();
        bad_header[8] ^= 1;
        for limits in [DecodeLimits::default(), checked] {
            let err = decode_artifact(&bad_header, &limits).unwrap_err();
            assert!(err.to_string().contains("header checksum"), "{err}");
        }
    }

    /// A recycled record buffer is larger than the next artifact needs:
    /// the next artifacts still decode to exactly their records, and a
    /// frame that produces more than its header claims is still refused
    /// (the spare room is not taken for output).
    #[test]
    fn a_recycled_buffer_neither_leaks_records_nor_admits_a_longer_frame() {
        let records = |n: usize, fill: u8| -> Owned {
            (0..n)
                .map(|i| (format!("key-{i:05}").into_bytes(), Some(vec![fill; 100])))
                .collect()
        };
        let big = build(&records(2_000, 1), ArtifactKind::Entries);
        decode_artifact(&big.bytes, &DecodeLimits::default())
            .unwrap()
            .recycle();
        let small = records(20, 2);
        let enc = build(&small, ArtifactKind::Entries);
        assert_eq!(decode_all(&enc.bytes).unwrap(), small);
        let d = decode_artifact(&enc.bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(d.records.len() as u64, d.header.raw_len);
        d.recycle();
        // The same frame under a header claiming one byte less.
        let mut forged = enc.bytes.clone();
        let claimed = le_u64(&forged, 16) - 1;
        forged[16..24].copy_from_slice(&claimed.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&forged[..40]);
        forged[40..48].copy_from_slice(&sum.to_le_bytes());
        let err = decode_artifact(&forged, &DecodeLimits::default()).unwrap_err();
        assert!(err.is_corruption(), "{err}");
    }

    #[test]
    fn equal_records_encode_to_equal_ids() {
        let recs = vec![(b"a".to_vec(), Some(b"1".to_vec()))];
        assert_eq!(
            build(&recs, ArtifactKind::Entries).id(),
            build(&recs, ArtifactKind::Entries).id()
        );
    }
}
