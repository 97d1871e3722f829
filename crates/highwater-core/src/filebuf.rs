//! Whole-file buffers that go back to the system when dropped.
//!
//! Native checkpoints move a backend's files whole (RocksDB's SST files are
//! up to 64 MiB): a checkpoint reads each one into memory for its upload and
//! a restore receives each one from the store. With glibc's allocator such
//! buffers end up inside its arenas (its mmap threshold follows the largest
//! block freed, up to 32 MiB) and, once freed, stay there as free memory
//! the process keeps: the large suite measured 220–310 MiB of it after
//! three restores of 1 GiB, with 1 MiB in use. Buffers of at least
//! [`MAPPED_MIN`] bytes are therefore anonymous memory maps of their own,
//! whatever allocator the program uses. When the last [`Bytes`] referring
//! to one is dropped, it is kept for the next buffer of about its size,
//! up to [`KEPT_MAPPED_BYTES`] in all, and unmapped beyond that: a restore
//! fetches artifact after artifact, each held only until it is decoded,
//! and a fresh map for each had the kernel fault in and zero every page
//! again (with a shootdown of the other cores' TLBs at each unmap).

use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use memmap2::MmapMut;

/// The smallest buffer given its own memory map; smaller ones come from
/// the allocator.
pub const MAPPED_MIN: usize = 1 << 20;

/// Bytes of released maps kept for reuse at most (process-wide).
pub const KEPT_MAPPED_BYTES: usize = 32 << 20;

/// Released maps, and their total size.
static KEPT: Mutex<(Vec<MmapMut>, usize)> = Mutex::new((Vec::new(), 0));

/// A kept map of at least `len` bytes and at most twice that, or a new
/// one (its size rounded up to a multiple of [`MAPPED_MIN`], so that
/// buffers of similar sizes can take each other's maps).
fn mapped(len: usize) -> std::io::Result<MmapMut> {
    {
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let fit = (0..kept.0.len())
            .filter(|&i| (len..=len.saturating_mul(2)).contains(&kept.0[i].len()))
            .min_by_key(|&i| kept.0[i].len());
        if let Some(i) = fit {
            let map = kept.0.swap_remove(i);
            kept.1 -= map.len();
            return Ok(map);
        }
    }
    MmapMut::map_anon(len.div_ceil(MAPPED_MIN).saturating_mul(MAPPED_MIN))
}

/// A mapped buffer whose first `len` bytes are its content. Dropped, its
/// map is kept for reuse while the kept maps stay within
/// [`KEPT_MAPPED_BYTES`], and unmapped otherwise.
#[derive(Debug)]
struct Mapped {
    map: Option<MmapMut>,
    len: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| &m[..self.len])
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.1 + map.len() <= KEPT_MAPPED_BYTES {
            kept.1 += map.len();
            kept.0.push(map);
        }
    }
}

/// Bytes of released maps kept now (for tests and diagnostics).
pub fn kept_mapped_bytes() -> usize {
    KEPT.lock().unwrap_or_else(PoisonError::into_inner).1
}

/// A buffer of exactly `len` bytes filled by `fill`, as [`Bytes`].
pub fn filled(
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<Bytes> {
    let mut filler = Filler::new(len)?;
    fill(filler.buf.as_mut())?;
    filler.at = len;
    filler.finish()
}

/// A buffer of a length known in advance, filled part by part (a download
/// arriving in chunks).
#[derive(Debug)]
pub struct Filler {
    buf: Buf,
    at: usize,
}

#[derive(Debug)]
enum Buf {
    Heap(Vec<u8>),
    Mapped(Mapped),
}

impl AsMut<[u8]> for Buf {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Heap(v) => v,
            Buf::Mapped(m) => {
                let len = m.len;
                m.map.as_mut().map_or(&mut [], |map| &mut map[..len])
            }
        }
    }
}

impl Filler {
    /// An empty buffer for exactly `len` bytes (mapped from [`MAPPED_MIN`]).
    pub fn new(len: usize) -> std::io::Result<Filler> {
        let buf = if len < MAPPED_MIN {
            Buf::Heap(vec![0u8; len])
        } else {
            Buf::Mapped(Mapped {
                map: Some(mapped(len)?),
                len,
            })
        };
        Ok(Filler { buf, at: 0 })
    }

    /// Appends `part`; more bytes than announced is an error.
    pub fn extend(&mut self, part: &[u8]) -> std::io::Result<()> {
        let buf = self.buf.as_mut();
        let end = self
            .at
            .checked_add(part.len())
            .filter(|&end| end <= buf.len())
            .ok_or_else(|| {
                std::io::Error::other(format!("more bytes than the {} announced", buf.len()))
            })?;
        buf[self.at..end].copy_from_slice(part);
        self.at = end;
        Ok(())
    }

    /// The filled buffer; fewer bytes than announced is an error.
    pub fn finish(self) -> std::io::Result<Bytes> {
        let len = match &self.buf {
            Buf::Heap(v) => v.len(),
            Buf::Mapped(m) => m.len,
        };
        if self.at != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} of the {len} bytes announced", self.at),
            ));
        }
        Ok(match self.buf {
            Buf::Heap(v) => Bytes::from(v),
            Buf::Mapped(m) => Bytes::from_owner(m),
        })
    }
}

/// The whole file at `path`. Its length is taken when it is opened; a file
/// that changes length while it is read is an error, not a short or long
/// buffer.
pub fn read_file(path: &Path) -> std::io::Result<Bytes> {
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("file larger than the address space"))?;
    let bytes = filled(len, |buf| file.read_exact(buf))?;
    let mut probe = [0u8; 1];
    if file.read(&mut probe)? != 0 {
        return Err(std::io::Error::other(format!(
            "{} grew while it was read (opened at {len} bytes)",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_files_small_and_mapped() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 4096, MAPPED_MIN - 1, MAPPED_MIN, 3 * MAPPED_MIN + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let path = dir.path().join(format!("{len}"));
            std::fs::write(&path, &data).unwrap();
            let read = read_file(&path).unwrap();
            assert_eq!(read.len(), len);
            assert!(read[..] == data[..], "{len} bytes");
            // Slices keep the map alive after the whole is dropped.
            let tail = read.slice(len / 2..);
            drop(read);
            assert!(tail[..] == data[len / 2..]);
        }
        assert!(read_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn released_maps_are_reused_within_a_bound_and_never_show_old_bytes() {
        // Sizes no other test of this module asks for (a kept map goes to
        // a request of half its size to its size), so tests running in
        // one process do not take each other's maps.
        let first = filled(7 * MAPPED_MIN + 3, |b| {
            b.fill(0xAA);
            Ok(())
        })
        .unwrap();
        let at = first.as_ptr();
        let tail = first.slice(MAPPED_MIN..);
        drop(first);
        // A slice keeps the map: it is not reused while one remains.
        assert!(tail.iter().all(|&b| b == 0xAA));
        drop(tail);
        assert!(kept_mapped_bytes() >= 8 * MAPPED_MIN);
        let second = filled(6 * MAPPED_MIN + 1, |b| {
            b.fill(0x55);
            Ok(())
        })
        .unwrap();
        assert_eq!(second.as_ptr(), at, "the released map was not reused");
        assert_eq!(second.len(), 6 * MAPPED_MIN + 1);
        assert!(second.iter().all(|&b| b == 0x55), "old bytes showed");
        // A failed fill gives its map back too, and what is kept stays
        // within the bound however much is released.
        let failed = filled(6 * MAPPED_MIN + 1, |_| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        let many: Vec<Bytes> = (0..40)
            .map(|_| {
                filled(MAPPED_MIN + 1, |b| {
                    b.fill(1);
                    Ok(())
                })
                .unwrap()
            })
            .collect();
        drop(many);
        drop(second);
        assert!(kept_mapped_bytes() <= KEPT_MAPPED_BYTES);
    }

    #[test]
    fn a_short_fill_is_an_error() {
        let err = filled(2 * MAPPED_MIN, |buf| {
            std::io::Read::read_exact(&mut &[1u8; 10][..], buf)
        })
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_filler_takes_exactly_what_was_announced() {
        for len in [5, 2 * MAPPED_MIN] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut f = Filler::new(len).unwrap();
            for part in data.chunks(3) {
                f.extend(part).unwrap();
            }
            assert!(f.extend(&[1]).is_err(), "{len}: one byte too many");
            assert!(f.finish().unwrap()[..] == data[..]);
            let mut short = Filler::new(len).unwrap();
            short.extend(&data[..len - 1]).unwrap();
            assert!(short.finish().is_err(), "{len}: one byte short");
        }
    }
}
