//! Segment files on disk: creating, preallocating and installing them, and
//! fsyncing the directory that names them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Lsn;
use crate::format::{
    DURABLE_FILE, DURABLE_LEN, SEGMENT_HEADER_LEN, TEMP_SUFFIX, decode_durable, encode_durable,
    encode_segment_header, parse_segment_file_name, segment_file_name,
};

/// One segment of the log, as [`Wal::segments`](crate::Wal::segments)
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// LSN of the segment's first record (also its file name).
    pub first_lsn: Lsn,
    /// The segment file.
    pub path: PathBuf,
}

/// The segment the writer appends to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    /// Opened read-write; its cursor is at `len`. Shared with the sync
    /// thread (policy `Interval`), which `fdatasync`s it while the writer
    /// goes on writing.
    pub file: Arc<File>,
    pub path: PathBuf,
    /// Bytes in use: header plus frames written.
    pub len: u64,
    /// Frames written into this segment.
    pub frames: u64,
}

/// A zero-filled, synced temporary file waiting to become a segment.
#[derive(Debug)]
pub(crate) struct Spare {
    pub file: File,
    pub path: PathBuf,
}

/// `fsync`s a directory, making the creation, rename or removal of the
/// names in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the directory's [`DURABLE_FILE`] with one naming `lsn`: writes
/// a temporary file, `fdatasync`s it and renames it into place. The rename
/// is durable once the caller `fsync`s the directory; until then a crash
/// leaves the previous file, whose LSN is lower (the log only grows at its
/// end), which is still true.
pub(crate) fn write_durable(dir: &Path, lsn: Lsn) -> io::Result<()> {
    let tmp = dir.join(format!("{DURABLE_FILE}{TEMP_SUFFIX}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(&encode_durable(lsn))?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(DURABLE_FILE))
}

/// Reads the directory's [`DURABLE_FILE`]: `Ok(None)` when there is none (a
/// new log, or one written before the file existed), `Err` with the reason
/// when it is damaged.
pub(crate) fn read_durable(dir: &Path) -> io::Result<Option<Result<Lsn, &'static str>>> {
    let path = dir.join(DURABLE_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // One byte more than the file should hold tells a long file apart.
    let mut buf = [0u8; DURABLE_LEN + 1];
    let n = read_full(&mut f, &mut buf)?;
    Ok(Some(decode_durable(&buf[..n])))
}

/// Creates `path` and writes `size` zero bytes into it, then `fdatasync`s
/// it, so that later writes overwrite allocated, initialised blocks and a
/// later `fdatasync` has no file-size or extent metadata to commit.
pub(crate) fn make_spare(path: &Path, size: u64) -> io::Result<Spare> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()?;
    Ok(Spare {
        file,
        path: path.to_path_buf(),
    })
}

/// Makes the segment starting at `first_lsn` from `spare` (or from a new,
/// empty file when there is none): writes its header, renames it into
/// place (atomically replacing a segment of the same name, which recovery
/// only leaves when that segment holds no record) and `fsync`s the
/// directory.
///
/// The header itself becomes durable with the first `fdatasync` of the
/// segment's data; a crash before that leaves a file whose header is zeros
/// or torn, which recovery treats as an empty segment named by its file
/// name.
pub(crate) fn install_segment(
    dir: &Path,
    first_lsn: Lsn,
    spare: Option<Spare>,
) -> io::Result<ActiveSegment> {
    let (mut file, tmp) = match spare {
        Some(s) => (s.file, s.path),
        None => {
            let tmp = dir.join(format!("{}{TEMP_SUFFIX}", segment_file_name(first_lsn)));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            (file, tmp)
        }
    };
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&encode_segment_header(first_lsn))?;
    let path = dir.join(segment_file_name(first_lsn));
    fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(ActiveSegment {
        file: Arc::new(file),
        path,
        len: SEGMENT_HEADER_LEN as u64,
        frames: 0,
    })
}

/// What a directory holds: segment files sorted by first LSN, and leftover
/// temporary files.
pub(crate) struct DirListing {
    pub segments: Vec<SegmentInfo>,
    pub temps: Vec<PathBuf>,
}

/// Lists a log directory. Names that are neither segments, temporary files
/// nor the lock file are left alone with a warning.
pub(crate) fn list_dir(dir: &Path) -> io::Result<DirListing> {
    let mut segments = Vec::new();
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %dir.display(), name = ?name, "ignoring a non-utf-8 name in the wal directory");
            continue;
        };
        if let Some(first_lsn) = parse_segment_file_name(name) {
            segments.push(SegmentInfo {
                first_lsn,
                path: entry.path(),
            });
        } else if name.ends_with(TEMP_SUFFIX) {
            temps.push(entry.path());
        } else if name != crate::format::LOCK_FILE && name != DURABLE_FILE {
            tracing::warn!(dir = %dir.display(), name, "ignoring an unknown file in the wal directory");
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    temps.sort();
    Ok(DirListing { segments, temps })
}

/// Reads until `buf` is full or the reader is exhausted; returns the bytes
/// read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Positional variant of [`read_full`].
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], mut at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                at += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
