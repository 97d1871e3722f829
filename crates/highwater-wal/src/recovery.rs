//! Opening a log directory after a clean shutdown or a crash: scan every
//! segment, find where the log ends, decide whether the bytes after that
//! point are a torn tail (cut them) or damage to durable data (refuse with a
//! typed error), and report what was done.
//!
//! The decision rests on one fact the writer maintains: every frame header
//! carries `synced_lsn`, the LSN up to which the log was durable when that
//! frame was written. When the log stops at LSN `e` — a frame that fails its
//! checks, zeros, the end of a file, or a next segment that does not start
//! at `e` — and some valid frame *after* that point has `synced_lsn >= e`,
//! record `e` had been made durable and was acknowledged, so the damage is
//! corruption. If no later frame vouches for it, record `e` was never
//! durable and everything from that point on is an unacknowledged tail that
//! a crash may have torn or reordered: it is cut, and later segments are
//! deleted.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use highwater_core::{Error, Result};
use xxhash_rust::xxh3::xxh3_64;

use crate::Lsn;
use crate::format::DURABLE_FILE;
use crate::format::{
    FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, SEGMENT_HEADER_LEN,
    SegmentHeaderError, decode_segment_header, split_records,
};
use crate::segment::{SegmentInfo, fsync_dir, list_dir, read_durable, read_full, read_full_at};

/// What opening the log found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segment files found with records or markers (before the new active
    /// segment was created).
    pub segments_scanned: usize,
    /// LSN of the oldest record still in the log (equal to `next_lsn` when
    /// the log holds none).
    pub first_lsn: Lsn,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// Records found in the log.
    pub records: u64,
    /// Bytes of frames found in the log.
    pub bytes: u64,
    /// The log was closed cleanly: its last frame is a close marker.
    pub clean_shutdown: bool,
    /// The torn tail that was cut, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Temporary files (preallocated spares, half-created segments) left by
    /// a crash and deleted.
    pub removed_temp_files: Vec<PathBuf>,
}

/// A tail of unacknowledged bytes cut from the log when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment the log now ends in.
    pub segment: PathBuf,
    /// The byte offset in `segment` where the log now ends (the segment was
    /// truncated to this length).
    pub offset: u64,
    /// What was found at `offset`.
    pub reason: String,
    /// Nonzero bytes discarded after `offset`, in `segment` and in deleted
    /// segments.
    pub discarded_bytes: u64,
    /// Later segment files deleted because they followed the cut.
    pub removed_segments: Vec<PathBuf>,
}

/// The outcome of [`recover`].
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Surviving segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// The last surviving segment holds no record: the new active segment
    /// takes over its name (and so keeps the LSN position it records).
    pub replace_last: bool,
    pub report: RecoveryReport,
}

/// Where and why the frames of a segment stop before its end.
#[derive(Debug, Clone)]
struct Stop {
    reason: String,
}

/// The result of reading one segment front to back.
#[derive(Debug)]
struct SegScan {
    info: SegmentInfo,
    file_len: u64,
    /// Offset just past the last valid frame (0 when the header is bad).
    end_offset: u64,
    /// LSN following the last valid record.
    next_lsn: Lsn,
    records: u64,
    frame_bytes: u64,
    last_is_marker: bool,
    /// `None` when the frames end exactly at the end of the file.
    stop: Option<Stop>,
}

fn corrupt(detail: String) -> Error {
    Error::corrupt("wal", detail)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

/// Scans, repairs and describes the log in `dir`.
pub(crate) fn recover(dir: &Path) -> Result<Recovered> {
    let listing = list_dir(dir).map_err(|e| io_err("list wal directory", dir, e))?;
    let mut report = RecoveryReport::default();
    for tmp in &listing.temps {
        std::fs::remove_file(tmp).map_err(|e| io_err("remove temporary file", tmp, e))?;
        report.removed_temp_files.push(tmp.clone());
    }
    if !listing.temps.is_empty() {
        fsync_dir(dir).map_err(|e| io_err("fsync wal directory", dir, e))?;
    }
    // The LSN the log was last known durable up to (when it was last opened
    // or closed). The log only grows at its end, so it must still reach it;
    // checked before anything is repaired.
    let claimed = match read_durable(dir).map_err(|e| io_err("read", &dir.join(DURABLE_FILE), e))? {
        None => 0,
        Some(Ok(lsn)) => lsn,
        Some(Err(why)) => {
            return Err(corrupt(format!(
                "damaged durable-lsn file: {why}: file={}",
                dir.join(DURABLE_FILE).display()
            )));
        }
    };
    let missing = |end: Lsn, detail: String| {
        corrupt(format!(
            "the log ends at lsn={end} but was durable up to lsn={claimed} ({} says so): {detail}",
            dir.join(DURABLE_FILE).display()
        ))
    };
    if listing.segments.is_empty() {
        if claimed > 0 {
            return Err(missing(0, "no segment file is left".into()));
        }
        report.first_lsn = 1;
        report.next_lsn = 1;
        return Ok(Recovered {
            segments: Vec::new(),
            next_lsn: 1,
            replace_last: false,
            report,
        });
    }

    let mut scans = Vec::with_capacity(listing.segments.len());
    for info in listing.segments {
        scans.push(scan_segment(info)?);
    }

    // Find the first point where the log does not continue.
    let mut cut: Option<(usize, String)> = None;
    for i in 0..scans.len() {
        let s = &scans[i];
        match scans.get(i + 1) {
            Some(next) if next.info.first_lsn == s.next_lsn => {
                if let Some(stop) = &s.stop {
                    // The records continue in the next segment; what follows
                    // the last frame here holds no record (a preallocated
                    // tail, normally zeros).
                    tracing::debug!(segment = %s.info.path.display(), offset = s.end_offset,
                        reason = %stop.reason, "ignoring the unused tail of a full wal segment");
                }
            }
            Some(next) if next.info.first_lsn < s.next_lsn => {
                return Err(corrupt(format!(
                    "segments overlap: segment={} ends at lsn={} but the next segment={} starts at lsn={}",
                    s.info.path.display(),
                    s.next_lsn - 1,
                    next.info.path.display(),
                    next.info.first_lsn
                )));
            }
            Some(next) => {
                let reason = match &s.stop {
                    Some(stop) => stop.reason.clone(),
                    None => format!(
                        "records {}..{} are missing: the next segment file={} starts at lsn={}",
                        s.next_lsn,
                        next.info.first_lsn - 1,
                        next.info.path.display(),
                        next.info.first_lsn
                    ),
                };
                cut = Some((i, reason));
                break;
            }
            None => {
                if let Some(stop) = &s.stop {
                    cut = Some((i, stop.reason.clone()));
                }
            }
        }
    }

    let mut removed_segments = Vec::new();
    if let Some((i, reason)) = cut {
        let at_path = scans[i].info.path.clone();
        let at_offset = scans[i].end_offset;
        let e = scans[i].next_lsn;
        if claimed >= e {
            return Err(missing(
                e - 1,
                format!("{reason}: segment={} offset={at_offset}", at_path.display()),
            ));
        }
        let (evidence, mut discarded) = find_evidence(&at_path, at_offset, e)?;
        let mut evidence = evidence;
        for later in &scans[i + 1..] {
            if evidence.is_some() {
                break;
            }
            let (ev, nonzero) = find_evidence(&later.info.path, 0, e)?;
            evidence = ev;
            discarded += nonzero;
        }
        if let Some(ev) = evidence {
            return Err(corrupt(format!(
                "{reason} in the middle of the log: segment={} offset={} lsn={e}; a later frame \
                 (segment={} offset={}) shows the log was durable up to lsn={}",
                at_path.display(),
                at_offset,
                ev.path.display(),
                ev.offset,
                ev.synced_lsn
            )));
        }
        // A torn tail. Delete later segments newest first, then cut this
        // one, so that a crash during the repair leaves a state from which
        // the same decision is made again.
        for later in scans[i + 1..].iter().rev() {
            std::fs::remove_file(&later.info.path)
                .map_err(|e| io_err("remove wal segment after a torn tail", &later.info.path, e))?;
            removed_segments.push(later.info.path.clone());
        }
        removed_segments.reverse();
        if !removed_segments.is_empty() {
            fsync_dir(dir).map_err(|e| io_err("fsync wal directory", dir, e))?;
        }
        scans.truncate(i + 1);
        if discarded > 0 || !removed_segments.is_empty() {
            tracing::warn!(segment = %at_path.display(), offset = at_offset, %reason,
                discarded_bytes = discarded, removed = removed_segments.len(),
                "cut a torn tail from the wal");
            report.torn_tail = Some(TornTail {
                segment: at_path.clone(),
                offset: at_offset,
                reason,
                discarded_bytes: discarded,
                removed_segments: removed_segments.clone(),
            });
        }
    }

    // The last segment ends exactly at its last valid frame from now on:
    // torn bytes and any unused preallocated tail are cut off, so nothing
    // after the end of the log can ever be mistaken for part of it.
    let last = scans.last().expect("at least one segment");
    if claimed >= last.next_lsn {
        return Err(missing(
            last.next_lsn - 1,
            format!(
                "the last segment file={} (or those after it) is missing or cut short",
                last.info.path.display()
            ),
        ));
    }
    if last.file_len > last.end_offset {
        let f = OpenOptions::new()
            .write(true)
            .open(&last.info.path)
            .map_err(|e| io_err("open wal segment", &last.info.path, e))?;
        f.set_len(last.end_offset)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("truncate wal segment", &last.info.path, e))?;
    }

    let next_lsn = last.next_lsn;
    let replace_last = last.records == 0;
    report.segments_scanned = scans.len();
    report.first_lsn = scans[0].info.first_lsn;
    report.next_lsn = next_lsn;
    report.records = scans.iter().map(|s| s.records).sum();
    report.bytes = scans.iter().map(|s| s.frame_bytes).sum();
    report.clean_shutdown = report.torn_tail.is_none() && last.last_is_marker;
    Ok(Recovered {
        segments: scans.into_iter().map(|s| s.info).collect(),
        next_lsn,
        replace_last,
        report,
    })
}

/// Reads a segment front to back, checking every frame, and `fdatasync`s
/// it: what recovery found becomes durable before any new frame claims it
/// is.
fn scan_segment(info: SegmentInfo) -> Result<SegScan> {
    let path = info.path.clone();
    let file = File::open(&path).map_err(|e| io_err("open wal segment", &path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io_err("stat wal segment", &path, e))?
        .len();
    let mut scan = SegScan {
        next_lsn: info.first_lsn,
        info,
        file_len,
        end_offset: 0,
        records: 0,
        frame_bytes: 0,
        last_is_marker: false,
        stop: None,
    };
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let read_err = |e| io_err("read wal segment", &path, e);

    let mut header = [0u8; SEGMENT_HEADER_LEN];
    let n = read_full(&mut r, &mut header).map_err(read_err)?;
    let header_problem = match decode_segment_header(&header[..n]) {
        Ok(lsn) if lsn == scan.info.first_lsn => None,
        Ok(lsn) => Some(format!(
            "segment header names lsn={lsn} but the file name names lsn={}",
            scan.info.first_lsn
        )),
        Err(SegmentHeaderError::Version(found)) => {
            return Err(Error::UnsupportedVersion {
                what: "wal segment",
                found,
                supported: FORMAT_VERSION,
            });
        }
        Err(SegmentHeaderError::Zero) => Some("zeroed segment header".into()),
        Err(SegmentHeaderError::Short) => Some(if n == 0 {
            "empty segment file".into()
        } else {
            "short segment header".into()
        }),
        Err(SegmentHeaderError::Damaged(why)) => Some(why.into()),
    };
    if let Some(reason) = header_problem {
        scan.stop = Some(Stop { reason });
        sync(&file, &path)?;
        return Ok(scan);
    }

    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut body = Vec::new();
    loop {
        scan.end_offset = pos;
        let mut fh = [0u8; FRAME_HEADER_LEN];
        let n = read_full(&mut r, &mut fh).map_err(read_err)?;
        if n == 0 {
            break;
        }
        let fail = |reason: String| Some(Stop { reason });
        let stop = if fh[..n].iter().all(|b| *b == 0) {
            fail("zeros".into())
        } else if n < FRAME_HEADER_LEN {
            fail("short frame header".into())
        } else {
            match FrameHeader::decode(&fh) {
                Err(why) => fail(why.into()),
                Ok(h) if h.first_lsn != scan.next_lsn => fail(format!(
                    "frame has lsn={} where lsn={} was expected",
                    h.first_lsn, scan.next_lsn
                )),
                Ok(h) if h.frame_len() > file_len - pos => {
                    fail("frame runs past the end of the segment".into())
                }
                Ok(h) => {
                    // Bounded by the file length (just checked) and by
                    // MAX_FRAME_BYTES (checked by the header decoder).
                    body.resize(h.body_len as usize, 0);
                    let n = read_full(&mut r, &mut body).map_err(read_err)?;
                    if n != body.len() {
                        fail("frame body cut short".into())
                    } else if xxh3_64(&body) != h.body_checksum {
                        fail("frame body checksum mismatch".into())
                    } else if let (false, Err(why)) =
                        (h.compressed() || h.sealed(), split_records(&body, h.count))
                    {
                        fail(why.into())
                    } else {
                        pos += h.frame_len();
                        scan.next_lsn += u64::from(h.count);
                        scan.records += u64::from(h.count);
                        scan.frame_bytes += h.frame_len();
                        scan.last_is_marker = h.count == 0;
                        None
                    }
                }
            }
        };
        if let Some(stop) = stop {
            scan.stop = Some(stop);
            break;
        }
    }
    sync(&file, &path)?;
    Ok(scan)
}

fn sync(file: &File, path: &Path) -> Result<()> {
    file.sync_data()
        .map_err(|e| io_err("fdatasync wal segment", path, e))
}

/// A valid frame found after the end of the log.
#[derive(Debug)]
struct Evidence {
    path: PathBuf,
    offset: u64,
    synced_lsn: Lsn,
}

/// Searches `path` from byte `from` on for a valid frame (header and body
/// checksums) whose `synced_lsn` is at least `e`, at any byte offset: the
/// bytes after a damaged frame are not aligned to frame boundaries. Returns
/// the first such frame and the number of nonzero bytes seen.
fn find_evidence(path: &Path, from: u64, e: Lsn) -> Result<(Option<Evidence>, u64)> {
    const CHUNK: usize = 1 << 20;
    let file = File::open(path).map_err(|err| io_err("open wal segment", path, err))?;
    let len = file
        .metadata()
        .map_err(|err| io_err("stat wal segment", path, err))?
        .len();
    let mut buf = vec![0u8; CHUNK + FRAME_HEADER_LEN];
    let mut body = Vec::new();
    let mut nonzero = 0u64;
    let mut pos = from;
    while pos < len {
        let n = read_full_at(&file, &mut buf, pos)
            .map_err(|err| io_err("read wal segment", path, err))?;
        if n == 0 {
            break;
        }
        let scan_end = n.min(CHUNK);
        let window = &buf[..scan_end];
        let nz = window.iter().filter(|b| **b != 0).count();
        nonzero += nz as u64;
        if nz > 0 {
            let mut k = 0;
            while k + FRAME_MAGIC.len() <= n && k < scan_end {
                let Some(off) = buf[k..n]
                    .windows(FRAME_MAGIC.len())
                    .position(|w| w == FRAME_MAGIC)
                else {
                    break;
                };
                let at = k + off;
                if at >= scan_end {
                    break;
                }
                if let Ok(h) = FrameHeader::decode(&buf[at..n])
                    && h.synced_lsn >= e
                {
                    let abs = pos + at as u64;
                    let body_at = abs + FRAME_HEADER_LEN as u64;
                    if body_at + u64::from(h.body_len) <= len {
                        body.resize(h.body_len as usize, 0);
                        let got = read_full_at(&file, &mut body, body_at)
                            .map_err(|err| io_err("read wal segment", path, err))?;
                        if got == body.len() && xxh3_64(&body) == h.body_checksum {
                            return Ok((
                                Some(Evidence {
                                    path: path.to_path_buf(),
                                    offset: abs,
                                    synced_lsn: h.synced_lsn,
                                }),
                                nonzero,
                            ));
                        }
                    }
                }
                k = at + 1;
            }
        }
        pos += scan_end as u64;
    }
    Ok((None, nonzero))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_segment_header, segment_file_name};

    fn frame(first_lsn: Lsn, synced: Lsn, payloads: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for p in payloads {
            body.extend_from_slice(&(p.len() as u32).to_le_bytes());
            body.extend_from_slice(p);
        }
        let mut out = vec![0u8; FRAME_HEADER_LEN];
        FrameHeader {
            flags: 0,
            count: payloads.len() as u32,
            body_len: body.len() as u32,
            raw_len: body.len() as u32,
            first_lsn,
            synced_lsn: synced,
            body_checksum: xxh3_64(&body),
            key_id: 0,
        }
        .encode_into(&mut out);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn evidence_is_found_at_unaligned_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = encode_segment_header(1).to_vec();
        bytes.extend_from_slice(&frame(1, 0, &[b"a"]));
        let cut = bytes.len() as u64;
        bytes.extend_from_slice(&[7u8; 13]); // garbage where frame 2 was
        bytes.extend_from_slice(&frame(5, 3, &[b"b"]));
        std::fs::write(&path, &bytes).unwrap();
        let (ev, nonzero) = find_evidence(&path, cut, 2).unwrap();
        let ev = ev.expect("evidence");
        assert_eq!(ev.offset, cut + 13);
        assert_eq!(ev.synced_lsn, 3);
        assert!(nonzero >= 13);
        // A frame that does not vouch for lsn 4 is not evidence for it.
        let (ev, _) = find_evidence(&path, cut, 4).unwrap();
        assert!(ev.is_none());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
