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
//! unmapped the moment the last [`Bytes`] referring to them is dropped,
//! whatever allocator the program uses.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;

/// The smallest buffer given its own memory map; smaller ones come from
/// the allocator.
pub const MAPPED_MIN: usize = 1 << 20;

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
    Mapped(memmap2::MmapMut),
}

impl AsMut<[u8]> for Buf {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Heap(v) => v,
            Buf::Mapped(m) => m,
        }
    }
}

impl Filler {
    /// An empty buffer for exactly `len` bytes (mapped from [`MAPPED_MIN`]).
    pub fn new(len: usize) -> std::io::Result<Filler> {
        let buf = if len < MAPPED_MIN {
            Buf::Heap(vec![0u8; len])
        } else {
            Buf::Mapped(memmap2::MmapMut::map_anon(len)?)
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
            Buf::Mapped(m) => m.len(),
        };
        if self.at != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} of the {len} bytes announced", self.at),
            ));
        }
        Ok(match self.buf {
            Buf::Heap(v) => Bytes::from(v),
            Buf::Mapped(m) => Bytes::from_owner(m.make_read_only()?),
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
