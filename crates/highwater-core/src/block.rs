//! Records in one buffer: what a restore hands a backend.
//!
//! Decoding an artifact of a few hundred thousand records into one owned
//! `(Vec<u8>, Vec<u8>)` per record costs two allocations per record on the
//! decoding thread and two frees on the loading thread (measured: a fifth
//! of a memory-backend restore). A [`RecordBlock`] keeps the keys and
//! values of many records side by side in one buffer with a compact index,
//! so a decoded artifact is two allocations, and a backend copies each
//! record once, from the block into its own storage.

use crate::error::{Error, Result};

/// A value length that marks a delete.
const DELETE: u32 = u32::MAX;

/// Where one record lives in a block's buffer: the key at `start`, then its
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: usize,
    key_len: u32,
    /// [`DELETE`] for a delete.
    value_len: u32,
}

impl Entry {
    fn value_len(&self) -> usize {
        if self.value_len == DELETE {
            0
        } else {
            self.value_len as usize
        }
    }
}

/// Records (a key and a value, or a delete) stored in one buffer, in the
/// order they were pushed.
///
/// A restore ([`StateBackend::restore`](crate::StateBackend::restore))
/// receives blocks of puts; the recovery engine uses the deletes of delta
/// layers while it folds a chain, and removes them (with everything a
/// newer layer overwrote) before a block reaches a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordBlock {
    data: Vec<u8>,
    entries: Vec<Entry>,
    /// Key and value bytes of the records still in the block.
    bytes: u64,
}

impl RecordBlock {
    /// An empty block.
    pub fn new() -> RecordBlock {
        RecordBlock::default()
    }

    /// An empty block with room for `entries` records of `bytes` bytes of
    /// keys and values in total (a hint; it grows as needed).
    pub fn with_capacity(entries: usize, bytes: usize) -> RecordBlock {
        RecordBlock {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
            bytes: 0,
        }
    }

    /// Appends a put (`Some(value)`) or a delete (`None`) of `key`.
    ///
    /// Fails, leaving the block as it was, for a key or value of 4 GiB or
    /// more (no artifact or backend stores one).
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let too_long = |what: &str, len: usize| {
            Error::InvalidArgument(format!("record {what} of {len} bytes is too long"))
        };
        let key_len = u32::try_from(key.len()).map_err(|_| too_long("key", key.len()))?;
        let value_len = match value {
            None => DELETE,
            Some(v) => match u32::try_from(v.len()) {
                Ok(n) if n != DELETE => n,
                _ => return Err(too_long("value", v.len())),
            },
        };
        let start = self.data.len();
        self.data.extend_from_slice(key);
        if let Some(v) = value {
            self.data.extend_from_slice(v);
        }
        self.entries.push(Entry {
            start,
            key_len,
            value_len,
        });
        self.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the block holds no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key and value bytes of the records in the block.
    pub fn logical_bytes(&self) -> u64 {
        self.bytes
    }

    fn record(&self, e: &Entry) -> (&[u8], Option<&[u8]>) {
        let key_end = e.start + e.key_len as usize;
        let key = &self.data[e.start..key_end];
        let value = (e.value_len != DELETE).then(|| &self.data[key_end..key_end + e.value_len()]);
        (key, value)
    }

    /// The `i`-th record: its key, and its value or `None` for a delete.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (&[u8], Option<&[u8]>) {
        self.record(&self.entries[i])
    }

    /// The key of the `i`-th record.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn key(&self, i: usize) -> &[u8] {
        self.get(i).0
    }

    /// The records in order: key, and value or `None` for a delete.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.entries.iter().map(|e| self.record(e))
    }

    /// The puts in order (deletes skipped): what a restore loads.
    pub fn puts(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.iter().filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    /// Keeps the records for which `keep(index, key, value)` is true, in
    /// order. The buffer keeps the bytes of removed records.
    pub fn retain(&mut self, mut keep: impl FnMut(usize, &[u8], Option<&[u8]>) -> bool) {
        let data = &self.data;
        let mut bytes = self.bytes;
        let mut i = 0usize;
        self.entries.retain(|e| {
            let key_end = e.start + e.key_len as usize;
            let key = &data[e.start..key_end];
            let value = (e.value_len != DELETE).then(|| &data[key_end..key_end + e.value_len()]);
            let kept = keep(i, key, value);
            i += 1;
            if !kept {
                bytes -= u64::from(e.key_len) + e.value_len() as u64;
            }
            kept
        });
        self.bytes = bytes;
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for RecordBlock {
    /// A block of puts.
    ///
    /// # Panics
    ///
    /// If a key or value is 4 GiB or longer.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> RecordBlock {
        let mut block = RecordBlock::new();
        for (k, v) in iter {
            block
                .push(k.as_ref(), Some(v.as_ref()))
                .expect("a record shorter than 4 GiB");
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A block returns what was pushed, and `retain` keeps exactly the
        /// records it is told to, with the byte count to match.
        #[test]
        fn block_matches_a_vec_of_records(
            recs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))),
                0..50),
            keep_mask in any::<u64>(),
        ) {
            let mut block = RecordBlock::with_capacity(4, 16);
            for (k, v) in &recs {
                block.push(k, v.as_deref()).unwrap();
            }
            let bytes = |rs: &[(Vec<u8>, Option<Vec<u8>>)]| -> u64 {
                rs.iter().map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64).sum()
            };
            prop_assert_eq!(block.len(), recs.len());
            prop_assert_eq!(block.logical_bytes(), bytes(&recs));
            let got: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                block.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
            prop_assert_eq!(&got, &recs);
            let puts: Vec<(Vec<u8>, Vec<u8>)> =
                block.puts().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            let want_puts: Vec<(Vec<u8>, Vec<u8>)> =
                recs.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
            prop_assert_eq!(puts, want_puts);

            let kept = |i: usize| i >= 64 || keep_mask & (1 << i) != 0;
            block.retain(|i, _, _| kept(i));
            let want: Vec<_> = recs.iter().enumerate().filter(|(i, _)| kept(*i)).map(|(_, r)| r.clone()).collect();
            let got: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                block.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
            prop_assert_eq!(block.logical_bytes(), bytes(&want));
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_block_collects_puts() {
        let block: RecordBlock = [("a", "1"), ("b", "22")].into_iter().collect();
        assert_eq!(block.len(), 2);
        assert_eq!(block.get(1), (&b"b"[..], Some(&b"22"[..])));
        assert_eq!(block.key(0), b"a");
        assert_eq!(block.logical_bytes(), 5);
    }
}
