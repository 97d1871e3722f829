//! Key groups: the unit of state partitioning and rescaling.
//!
//! Every key hashes (xxh3-64) into one of `max_parallelism` key groups. A
//! subtask at parallelism `p` owns one contiguous [`KeyGroupRange`]; ranges
//! are computed the same way Flink does, so state written at parallelism 4
//! can be split or merged into any other parallelism up to `max_parallelism`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest supported `max_parallelism` (key groups are stored as `u16`).
pub const MAX_KEY_GROUPS: u32 = 1 << 15;

/// The default number of key groups.
pub const DEFAULT_MAX_PARALLELISM: u16 = 128;

/// Index of a key group, in `0..max_parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyGroup(pub u16);

impl KeyGroup {
    /// Big-endian bytes, the prefix of every encoded state key.
    pub fn to_be_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

/// Maps a serialized key to its key group.
///
/// The hash is xxh3-64 of the key bytes, reduced modulo `max_parallelism`.
/// This mapping is part of the on-disk contract: changing it would scatter
/// restored state across the wrong subtasks.
pub fn key_group_for(key: &[u8], max_parallelism: u16) -> KeyGroup {
    debug_assert!(max_parallelism > 0);
    let groups = u64::from(max_parallelism.max(1));
    // The modulo result is below max_parallelism, so it fits in u16.
    KeyGroup((xxhash_rust::xxh3::xxh3_64(key) % groups) as u16)
}

/// A half-open range `[start, end)` of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u16,
    /// One past the last key group in the range.
    pub end: u16,
}

impl KeyGroupRange {
    /// Creates `[start, end)`; `start > end` is rejected.
    pub fn new(start: u16, end: u16) -> Result<Self> {
        if start > end {
            return Err(Error::InvalidArgument(format!(
                "key group range start after end: start={start} end={end}"
            )));
        }
        Ok(KeyGroupRange { start, end })
    }

    /// All key groups of a job with `max_parallelism` key groups.
    pub fn all(max_parallelism: u16) -> Self {
        KeyGroupRange {
            start: 0,
            end: max_parallelism,
        }
    }

    /// The range owned by subtask `index` of `parallelism` subtasks.
    ///
    /// Ranges of all subtasks are contiguous, disjoint, cover every key group
    /// and differ in size by at most one.
    pub fn for_subtask(max_parallelism: u16, parallelism: u16, index: u16) -> Result<Self> {
        validate_parallelism(max_parallelism, parallelism)?;
        if index >= parallelism {
            return Err(Error::InvalidArgument(format!(
                "subtask index out of range: index={index} parallelism={parallelism}"
            )));
        }
        let max = u32::from(max_parallelism);
        let p = u32::from(parallelism);
        let i = u32::from(index);
        let start = (i * max).div_ceil(p);
        let end = ((i + 1) * max).div_ceil(p);
        // Both bounds are at most max_parallelism, which fits in u16.
        Ok(KeyGroupRange {
            start: start as u16,
            end: end as u16,
        })
    }

    /// The subtask (at `parallelism`) that owns key group `kg`.
    pub fn subtask_for(max_parallelism: u16, parallelism: u16, kg: KeyGroup) -> Result<u16> {
        validate_parallelism(max_parallelism, parallelism)?;
        if kg.0 >= max_parallelism {
            return Err(Error::InvalidArgument(format!(
                "key group out of range: key_group={} max_parallelism={max_parallelism}",
                kg.0
            )));
        }
        // Inverse of for_subtask: the largest i with ceil(i*max/p) <= kg.
        let v = u32::from(kg.0) * u32::from(parallelism) / u32::from(max_parallelism);
        Ok(v as u16)
    }

    /// Splits this range into consecutive chunks of at most `width` groups.
    pub fn chunks(self, width: u16) -> impl Iterator<Item = KeyGroupRange> {
        let width = width.max(1);
        let mut next = self.start;
        std::iter::from_fn(move || {
            if next >= self.end {
                return None;
            }
            let start = next;
            let end = start.saturating_add(width).min(self.end);
            next = end;
            Some(KeyGroupRange { start, end })
        })
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    /// True when the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// True when `kg` lies in the range.
    pub fn contains(&self, kg: KeyGroup) -> bool {
        kg.0 >= self.start && kg.0 < self.end
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &KeyGroupRange) -> Option<KeyGroupRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(KeyGroupRange { start, end })
    }

    /// Iterates over the key groups of the range.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> + use<> {
        (self.start..self.end).map(KeyGroup)
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

fn validate_parallelism(max_parallelism: u16, parallelism: u16) -> Result<()> {
    if max_parallelism == 0 || u32::from(max_parallelism) > MAX_KEY_GROUPS {
        return Err(Error::InvalidArgument(format!(
            "max_parallelism out of range: max_parallelism={max_parallelism} limit={MAX_KEY_GROUPS}"
        )));
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(Error::InvalidArgument(format!(
            "parallelism must be in 1..=max_parallelism: parallelism={parallelism} max_parallelism={max_parallelism}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn subtask_ranges_partition_all_groups(max in 1u16..2048, p_seed in 1u16..2048) {
            let p = 1 + p_seed % max;
            let mut next = 0u16;
            for i in 0..p {
                let r = KeyGroupRange::for_subtask(max, p, i).unwrap();
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty());
                for kg in r.iter() {
                    prop_assert_eq!(KeyGroupRange::subtask_for(max, p, kg).unwrap(), i);
                }
                next = r.end;
            }
            prop_assert_eq!(next, max);
        }

        #[test]
        fn key_group_in_bounds(key in proptest::collection::vec(any::<u8>(), 0..64), max in 1u16..4096) {
            prop_assert!(key_group_for(&key, max).0 < max);
        }

        #[test]
        fn chunks_cover_range(start in 0u16..1000, len in 0u16..1000, width in 1u16..300) {
            let r = KeyGroupRange::new(start, start + len).unwrap();
            let chunks: Vec<_> = r.chunks(width).collect();
            let covered: usize = chunks.iter().map(|c| c.len()).sum();
            prop_assert_eq!(covered, r.len());
            for w in chunks.windows(2) { prop_assert_eq!(w[0].end, w[1].start); }
        }
    }

    #[test]
    fn invalid_parallelism_is_an_error() {
        assert!(KeyGroupRange::for_subtask(0, 1, 0).is_err());
        assert!(KeyGroupRange::for_subtask(8, 9, 0).is_err());
        assert!(KeyGroupRange::for_subtask(8, 2, 2).is_err());
        assert!(KeyGroupRange::new(3, 2).is_err());
    }

    #[test]
    fn intersection() {
        let a = KeyGroupRange::new(0, 10).unwrap();
        let b = KeyGroupRange::new(5, 20).unwrap();
        assert_eq!(a.intersect(&b), Some(KeyGroupRange::new(5, 10).unwrap()));
        assert_eq!(a.intersect(&KeyGroupRange::new(10, 12).unwrap()), None);
    }
}
