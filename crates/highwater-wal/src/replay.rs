//! Reading the log back: [`Replay`], an iterator over records from an LSN,
//! optionally bounded by an LSN or an event time.
//!
//! Replay checks everything it reads (segment headers, frame checksums, LSN
//! continuity, record framing) and stops with [`Error::Corrupt`] naming the
//! segment and byte offset at the first problem; it never skips.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, ErrorKind};
use std::path::{Path, PathBuf};

use highwater_core::{Cipher, Error, Result};
use xxhash_rust::xxh3::xxh3_64;

use crate::Lsn;
use crate::format::{
    FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, decode_segment_header, split_records,
};
use crate::record::WalRecord;
use crate::segment::{SegmentInfo, read_full};

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The record's LSN.
    pub lsn: Lsn,
    /// The record.
    pub record: WalRecord,
    /// True for the last record of the batch it was appended with: the
    /// points at which a replayed state is one the writer also had.
    pub batch_end: bool,
}

/// Iterator over the records of a log from an LSN, returned by
/// [`Wal::replay`](crate::Wal::replay).
///
/// It yields records in LSN order, without gaps, up to the last record that
/// was written when the replay was created (or a tighter bound set with
/// [`until_lsn`](Replay::until_lsn) or
/// [`until_event_time`](Replay::until_event_time)). After an error it yields
/// nothing more.
#[derive(Debug)]
pub struct Replay {
    segments: Vec<SegmentInfo>,
    /// Index in `segments` of the next segment to open.
    next_segment: usize,
    reader: Option<SegmentReader>,
    /// LSN of the next record in the log.
    next: Lsn,
    /// First LSN to yield.
    from: Lsn,
    /// Last LSN to yield.
    end: Lsn,
    until_event_time: Option<u64>,
    pending: VecDeque<WalEntry>,
    done: bool,
    body: Vec<u8>,
    opened: Vec<u8>,
    raw: Vec<u8>,
    zstd: Zstd,
    cipher: Option<Cipher>,
}

/// A lazily created zstd context, reused for every compressed frame.
#[derive(Default)]
struct Zstd(Option<zstd::bulk::Decompressor<'static>>);

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Zstd")
    }
}

#[derive(Debug)]
struct SegmentReader {
    r: BufReader<File>,
    path: PathBuf,
    offset: u64,
    file_len: u64,
    /// Last LSN this segment holds (within the replay's snapshot).
    last_lsn: Lsn,
}

fn corrupt(why: impl std::fmt::Display, path: &Path, offset: u64) -> Error {
    Error::corrupt(
        "wal",
        format!("{why}: segment={} offset={offset}", path.display()),
    )
}

impl Replay {
    /// A replay of `segments` (starting with the one holding `from`) from
    /// LSN `from` through `end`.
    pub(crate) fn new(
        segments: Vec<SegmentInfo>,
        from: Lsn,
        end: Lsn,
        cipher: Option<Cipher>,
    ) -> Replay {
        let next = segments.first().map_or(from, |s| s.first_lsn);
        Replay {
            segments,
            next_segment: 0,
            reader: None,
            next,
            from,
            end,
            until_event_time: None,
            pending: VecDeque::new(),
            done: false,
            body: Vec::new(),
            opened: Vec::new(),
            raw: Vec::new(),
            zstd: Zstd::default(),
            cipher,
        }
    }

    /// Stops after the record with LSN `lsn` (inclusive). Pick the last LSN
    /// of a batch (`append_batch` returns its range) to stop on a batch
    /// boundary.
    pub fn until_lsn(mut self, lsn: Lsn) -> Replay {
        self.end = self.end.min(lsn);
        self
    }

    /// Stops before the first batch holding a record whose event time is
    /// after `event_time_ms`.
    ///
    /// The log is cut, not filtered: records are yielded in log order until
    /// the first batch that contains a later event time, and nothing after
    /// it, even if later batches carry earlier times (events out of order).
    /// The result is a prefix of the log at a batch boundary — a state the
    /// writer really had. Records without an event time never stop the
    /// replay.
    pub fn until_event_time(mut self, event_time_ms: u64) -> Replay {
        self.until_event_time = Some(event_time_ms);
        self
    }

    /// The LSN of the next record the log holds (not necessarily the next
    /// one yielded, when `from` lies inside a batch).
    pub fn position(&self) -> Lsn {
        self.pending.front().map_or(self.next, |e| e.lsn)
    }

    fn open_next_segment(&mut self) -> Result<()> {
        let Some(info) = self.segments.get(self.next_segment) else {
            return Err(Error::Internal(format!(
                "wal replay ran out of segments before lsn={}",
                self.next
            )));
        };
        let last_lsn = match self.segments.get(self.next_segment + 1) {
            Some(next) => next.first_lsn - 1,
            None => Lsn::MAX,
        };
        let path = info.path.clone();
        if info.first_lsn != self.next {
            return Err(corrupt(
                format!(
                    "segment starts at lsn={} where lsn={} was expected",
                    info.first_lsn, self.next
                ),
                &path,
                0,
            ));
        }
        self.next_segment += 1;
        let file = File::open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::NotFound(format!(
                    "wal segment removed (truncated) during replay: segment={}",
                    path.display()
                ))
            } else {
                Error::io(format!("open wal segment {}", path.display()), e)
            }
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat wal segment {}", path.display()), e))?
            .len();
        let mut r = BufReader::with_capacity(256 << 10, file);
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let n = read_full(&mut r, &mut header)
            .map_err(|e| Error::io(format!("read wal segment {}", path.display()), e))?;
        match decode_segment_header(&header[..n]) {
            Ok(lsn) if lsn == info.first_lsn => {}
            Ok(lsn) => {
                return Err(corrupt(
                    format!(
                        "segment header names lsn={lsn} but the file name names lsn={}",
                        info.first_lsn
                    ),
                    &path,
                    0,
                ));
            }
            Err(e) => return Err(corrupt(format!("bad segment header ({e:?})"), &path, 0)),
        }
        self.reader = Some(SegmentReader {
            r,
            path,
            offset: SEGMENT_HEADER_LEN as u64,
            file_len,
            last_lsn,
        });
        Ok(())
    }

    /// Reads the next frame into `pending`.
    fn read_frame(&mut self) -> Result<()> {
        if self.reader.as_ref().is_none_or(|r| self.next > r.last_lsn) {
            self.reader = None;
            self.open_next_segment()?;
        }
        let rd = self.reader.as_mut().expect("reader opened above");
        let at = rd.offset;
        let mut fh = [0u8; FRAME_HEADER_LEN];
        let n = read_full(&mut rd.r, &mut fh)
            .map_err(|e| Error::io(format!("read wal segment {}", rd.path.display()), e))?;
        if n < FRAME_HEADER_LEN {
            return Err(corrupt(
                format!("segment ends before lsn={}", self.next),
                &rd.path,
                at,
            ));
        }
        let h = FrameHeader::decode(&fh).map_err(|why| corrupt(why, &rd.path, at))?;
        if h.first_lsn != self.next {
            return Err(corrupt(
                format!(
                    "frame has lsn={} where lsn={} was expected",
                    h.first_lsn, self.next
                ),
                &rd.path,
                at,
            ));
        }
        if h.frame_len() > rd.file_len.saturating_sub(at) {
            return Err(corrupt(
                "frame runs past the end of the segment",
                &rd.path,
                at,
            ));
        }
        if h.first_lsn + u64::from(h.count) <= self.from {
            // Entirely before the requested start: step over the body. Its
            // header (and so the LSN chain) was checked; the body is never
            // returned.
            rd.r.seek_relative(i64::from(h.body_len))
                .map_err(|e| Error::io(format!("seek wal segment {}", rd.path.display()), e))?;
            rd.offset += h.frame_len();
            self.next += u64::from(h.count);
            return Ok(());
        }
        // Bounded by the file length and MAX_FRAME_BYTES.
        self.body.resize(h.body_len as usize, 0);
        let n = read_full(&mut rd.r, &mut self.body)
            .map_err(|e| Error::io(format!("read wal segment {}", rd.path.display()), e))?;
        if n != self.body.len() {
            return Err(corrupt("frame body cut short", &rd.path, at));
        }
        if xxh3_64(&self.body) != h.body_checksum {
            return Err(corrupt("frame body checksum mismatch", &rd.path, at));
        }
        rd.offset += h.frame_len();
        if h.count == 0 {
            return Ok(());
        }
        // With encryption configured every frame must be sealed: a frame in
        // the clear could have been planted by whoever can write the files.
        let stored: &[u8] = match (&self.cipher, h.sealed()) {
            (Some(cipher), true) => {
                let what = format!(
                    "wal frame lsn={} segment={} offset={at}",
                    h.first_lsn,
                    rd.path.display()
                );
                cipher.open_body(
                    &what,
                    h.key_id,
                    &h.sealing_aad(),
                    &self.body,
                    &mut self.opened,
                )?;
                &self.opened
            }
            (None, false) => &self.body,
            (cipher, _) => {
                return Err(Error::Authentication {
                    what: format!(
                        "wal frame lsn={} segment={} offset={at}",
                        h.first_lsn,
                        rd.path.display()
                    ),
                    detail: if cipher.is_some() {
                        "not encrypted, but the log is opened with encryption".into()
                    } else {
                        "encrypted, but the log is opened without encryption (give it the keys)"
                            .into()
                    },
                });
            }
        };
        let raw: &[u8] = if h.compressed() {
            self.raw.clear();
            self.raw.reserve(h.raw_len as usize);
            // The destination's capacity bounds the output: a body that
            // would expand past raw_len fails instead of allocating.
            let dctx = match &mut self.zstd.0 {
                Some(d) => d,
                slot => slot.insert(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| Error::io("create zstd decompressor", e))?,
                ),
            };
            let n = dctx
                .decompress_to_buffer(stored, &mut self.raw)
                .map_err(|e| corrupt(format!("zstd body does not decode ({e})"), &rd.path, at))?;
            if n != h.raw_len as usize {
                return Err(corrupt(
                    format!("decompressed body has {n} bytes, header says {}", h.raw_len),
                    &rd.path,
                    at,
                ));
            }
            &self.raw
        } else {
            stored
        };
        let payloads = split_records(raw, h.count).map_err(|why| corrupt(why, &rd.path, at))?;
        let mut entries = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let record = WalRecord::decode(p).map_err(|e| {
                corrupt(
                    format!(
                        "record lsn={} does not decode ({e})",
                        h.first_lsn + i as u64
                    ),
                    &rd.path,
                    at,
                )
            })?;
            entries.push(WalEntry {
                lsn: h.first_lsn + i as u64,
                record,
                batch_end: i + 1 == payloads.len(),
            });
        }
        self.next += u64::from(h.count);
        if let Some(t) = self.until_event_time
            && entries
                .iter()
                .any(|e| e.record.event_time.is_some_and(|et| et > t))
        {
            self.done = true;
            return Ok(());
        }
        let (from, end) = (self.from, self.end);
        self.pending.extend(
            entries
                .into_iter()
                .filter(|e| e.lsn >= from && e.lsn <= end),
        );
        Ok(())
    }
}

impl Iterator for Replay {
    type Item = Result<WalEntry>;

    fn next(&mut self) -> Option<Result<WalEntry>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.done || self.next > self.end {
                self.done = true;
                return None;
            }
            if let Err(e) = self.read_frame() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

impl std::iter::FusedIterator for Replay {}
