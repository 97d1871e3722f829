//! Append-only arena segments and the record layout inside them.
//!
//! A segment is one contiguous byte buffer holding records back to back:
//!
//! ```text
//! key_len   u32 little-endian
//! value_len u32 little-endian
//! key       key_len bytes
//! value     value_len bytes
//! ```
//!
//! Records are never moved inside a segment; a record is replaced by
//! appending a new one (or overwritten in place when the value keeps its
//! length and no snapshot holds the segment), and the old bytes stay as dead
//! bytes until compaction copies the live records of the segment elsewhere
//! and drops it. Segments are shared with snapshots through an `Arc`, so a
//! snapshot pins exactly the bytes it can read.

/// Bytes of a record header (two `u32` lengths).
pub(crate) const HEADER: usize = 8;

/// Bytes of a segment mapped at once ahead of the records written into it
/// ([`Segment::populate_for`]): larger runs measured no faster, and it
/// bounds what a shard's last, partly filled segment holds mapped unused.
const POPULATE_AHEAD: usize = 64 << 10;

/// How far ahead of the record it reaches a walk over a segment
/// ([`Segment::offsets`]) asks for the segment's memory: each record's
/// offset is read from the header before it, so without the hint the walk
/// waits for memory record by record.
const STREAM_AHEAD: usize = 1 << 10;

/// Bytes of a cache line.
const LINE: usize = 64;

/// Where a record lives: a segment id of its shard and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
}

/// The length of a record holding `key` and `value`, if it fits the `u32`
/// offsets of a segment.
pub(crate) fn record_len(key: usize, value: usize) -> Option<usize> {
    let n = HEADER.checked_add(key)?.checked_add(value)?;
    (n <= u32::MAX as usize).then_some(n)
}

/// One arena segment. Its capacity is reserved when it is created, so
/// appending never reallocates (and never copies) the records already in it.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    data: Vec<u8>,
}

impl Clone for Segment {
    /// Copies the records and reserves the same capacity, so the copy can
    /// take appends as the original could. This is the copy a writer makes
    /// when it appends to a segment a snapshot still holds.
    fn clone(&self) -> Self {
        let mut data = Vec::with_capacity(self.data.capacity());
        data.extend_from_slice(&self.data);
        Segment { data }
    }
}

impl Segment {
    /// An empty segment with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Segment {
        Segment {
            data: Vec::with_capacity(capacity),
        }
    }

    /// Bytes of records (live and dead) in the segment.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Bytes reserved.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    fn lens(&self, off: u32) -> (usize, usize) {
        let at = off as usize;
        let h = &self.data[at..at + HEADER];
        let k = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let v = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        (k, v)
    }

    /// The key and value of the record at `off`. Offsets come only from
    /// this crate's index, which never holds an offset that was not
    /// returned by [`Segment::append`].
    pub fn record(&self, off: u32) -> (&[u8], &[u8]) {
        let (k, v) = self.lens(off);
        let at = off as usize + HEADER;
        (&self.data[at..at + k], &self.data[at + k..at + k + v])
    }

    /// The whole length (header included) of the record at `off`.
    pub fn record_len_at(&self, off: u32) -> usize {
        let (k, v) = self.lens(off);
        HEADER + k + v
    }

    /// The value bytes of the record at `off`, for an in-place overwrite of
    /// a value of the same length.
    pub fn value_mut(&mut self, off: u32) -> &mut [u8] {
        let (k, v) = self.lens(off);
        let at = off as usize + HEADER + k;
        &mut self.data[at..at + v]
    }

    /// Appends a record and returns its offset. The caller has checked with
    /// [`record_len`] that the record fits and that the segment's length
    /// after it stays below 4 GiB.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> u32 {
        let off = self.data.len() as u32;
        self.data
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.data
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        off
    }

    /// Before a record of `rec` bytes is appended: when it begins the
    /// segment or crosses into a new [`POPULATE_AHEAD`] run of it, asks for
    /// the memory up to a run past it to be mapped now rather than page by
    /// page as it is written ([`highwater_core::prefetch::populate_write`]).
    pub fn populate_for(&mut self, rec: usize) {
        let len = self.data.len();
        if len == 0 || len / POPULATE_AHEAD != (len + rec) / POPULATE_AHEAD {
            highwater_core::prefetch::populate_write(&mut self.data, rec + POPULATE_AHEAD);
        }
    }

    /// Offsets of every record, in the order they were appended. The
    /// memory [`STREAM_AHEAD`] bytes past each record is asked for as the
    /// walk reaches it ([`highwater_core::prefetch::read`], every line
    /// once).
    pub fn offsets(&self) -> impl Iterator<Item = u32> + '_ {
        let mut off = 0usize;
        let mut asked = 0usize;
        std::iter::from_fn(move || {
            if off >= self.data.len() {
                return None;
            }
            let until = (off + STREAM_AHEAD).min(self.data.len());
            while asked < until {
                highwater_core::prefetch::read(&self.data[asked..]);
                asked += LINE;
            }
            let at = off as u32;
            off += self.record_len_at(at);
            Some(at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_clone_keeps_capacity() {
        let mut s = Segment::with_capacity(64);
        let a = s.append(b"key", b"value");
        let b = s.append(b"", b"");
        let c = s.append(b"k2", b"v2");
        assert_eq!(s.record(a), (&b"key"[..], &b"value"[..]));
        assert_eq!(s.record(b), (&b""[..], &b""[..]));
        assert_eq!(s.record(c), (&b"k2"[..], &b"v2"[..]));
        assert_eq!(s.offsets().collect::<Vec<_>>(), vec![a, b, c]);
        s.value_mut(a).copy_from_slice(b"VALUE");
        let copy = s.clone();
        assert_eq!(copy.record(a), (&b"key"[..], &b"VALUE"[..]));
        assert!(copy.capacity() >= 64);
        assert_eq!(copy.len(), s.len());
        assert_eq!(s.record_len_at(c), HEADER + 4);
    }

    #[test]
    fn record_len_refuses_what_does_not_fit_u32() {
        assert_eq!(record_len(1, 2), Some(11));
        assert_eq!(record_len(u32::MAX as usize, 1), None);
        assert_eq!(record_len(usize::MAX, 1), None);
    }
}
