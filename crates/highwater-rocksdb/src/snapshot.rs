//! Snapshots of the RocksDB backend: a RocksDB snapshot held together with
//! the database it belongs to, so it outlives the backend.

// The only unsafe code here is the `Yokeable` implementation yoke's derive
// generates (and checks for covariance) for `SnapRef`: a RocksDB snapshot
// borrows its database, and yoke is how that borrow is stored next to the
// `Arc` that keeps the database alive.
#![allow(unsafe_code)]

use std::sync::Arc;

use highwater_core::{EntryVisitor, NativeCheckpoint, Result, SnapshotKind, StateSnapshot};
use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};
use yoke::{Yoke, Yokeable};

use crate::backend::{DirGuard, Generation, rocks};

/// A RocksDB snapshot borrowing its database.
#[derive(Yokeable)]
pub(crate) struct SnapRef<'a>(pub(crate) SnapshotWithThreadMode<'a, DB>);

/// A RocksDB snapshot that owns (a share of) its database.
pub(crate) type Snap = Yoke<SnapRef<'static>, Arc<Generation>>;

/// Takes a snapshot of `generation`.
pub(crate) fn take_snapshot(generation: Arc<Generation>) -> Snap {
    fn snapshot_of(g: &Generation) -> SnapRef<'_> {
        SnapRef(g.db.snapshot())
    }
    Snap::attach_to_cart(generation, snapshot_of)
}

/// Key-range bounds of partition `p` of `partitions` over the key groups
/// `0..max_parallelism`: the first partition has no lower bound and the
/// last no upper bound, so together they cover every byte string.
fn partition_bounds(
    p: usize,
    partitions: usize,
    max_parallelism: u16,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let at = |i: usize| ((i * usize::from(max_parallelism)) / partitions) as u16;
    let lower = (p > 0).then(|| at(p).to_be_bytes().to_vec());
    let upper = (p + 1 < partitions).then(|| at(p + 1).to_be_bytes().to_vec());
    (lower, upper)
}

/// Every entry at the moment of the snapshot.
pub(crate) struct FullSnapshot {
    snap: Snap,
    partitions: usize,
    max_parallelism: u16,
    approximate: usize,
}

impl FullSnapshot {
    pub(crate) fn new(snap: Snap, max_parallelism: u16, partitions: usize) -> Self {
        let approximate = snap
            .backing_cart()
            .db
            .property_int_value(rocksdb::properties::ESTIMATE_NUM_KEYS)
            .ok()
            .flatten()
            .unwrap_or(0) as usize;
        // Fewer key groups than partitions would leave empty ones.
        let partitions = partitions.min(usize::from(max_parallelism)).max(1);
        FullSnapshot {
            snap,
            partitions,
            max_parallelism,
            approximate,
        }
    }
}

impl StateSnapshot for FullSnapshot {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::Full
    }

    fn partitions(&self) -> usize {
        self.partitions
    }

    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()> {
        if partition >= self.partitions {
            return Ok(());
        }
        let (lower, upper) = partition_bounds(partition, self.partitions, self.max_parallelism);
        let mut ro = ReadOptions::default();
        if let Some(l) = &lower {
            ro.set_iterate_lower_bound(l.clone());
        }
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        // A checkpoint reads everything once: keep it out of the block cache.
        ro.fill_cache(false);
        let s = self.snap.get();
        let mut it = s.0.raw_iterator_opt(ro);
        match &lower {
            Some(l) => it.seek(l),
            None => it.seek_to_first(),
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            f(k, Some(v))?;
            it.next();
        }
        it.status().map_err(rocks("read a full snapshot"))
    }

    fn approximate_entries(&self) -> usize {
        self.approximate
    }
}

/// The keys written since the previous snapshot, with their values at this
/// snapshot (`None` when deleted).
pub(crate) struct ChangesSnapshot {
    snap: Snap,
    keys: Vec<Box<[u8]>>,
    partitions: usize,
}

impl ChangesSnapshot {
    pub(crate) fn new(snap: Snap, keys: Vec<Box<[u8]>>, partitions: usize) -> Self {
        ChangesSnapshot {
            snap,
            keys,
            partitions: partitions.max(1),
        }
    }
}

impl StateSnapshot for ChangesSnapshot {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::Changes
    }

    fn partitions(&self) -> usize {
        self.partitions
    }

    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()> {
        if partition >= self.partitions {
            return Ok(());
        }
        let per = self.keys.len().div_ceil(self.partitions);
        let start = (partition * per).min(self.keys.len());
        let end = (start + per).min(self.keys.len());
        let s = self.snap.get();
        for key in &self.keys[start..end] {
            let v =
                s.0.get_pinned(key)
                    .map_err(rocks("read a changes snapshot"))?;
            f(key, v.as_deref())?;
        }
        Ok(())
    }

    fn approximate_entries(&self) -> usize {
        self.keys.len()
    }
}

/// A full snapshot that also carries a RocksDB checkpoint directory taken
/// at the same moment; the directory is removed when the snapshot drops.
pub(crate) struct NativeSnapshot {
    full: FullSnapshot,
    native: NativeCheckpoint,
    _dir: DirGuard,
}

impl NativeSnapshot {
    pub(crate) fn new(full: FullSnapshot, native: NativeCheckpoint, dir: DirGuard) -> Self {
        NativeSnapshot {
            full,
            native,
            _dir: dir,
        }
    }
}

impl StateSnapshot for NativeSnapshot {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::Full
    }

    fn partitions(&self) -> usize {
        self.full.partitions()
    }

    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()> {
        self.full.for_each_in_partition(partition, f)
    }

    fn approximate_entries(&self) -> usize {
        self.full.approximate_entries()
    }

    fn native(&self) -> Option<&NativeCheckpoint> {
        Some(&self.native)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_contiguous_and_cover_everything() {
        for (parts, mp) in [(8, 128), (8, 8), (3, 10), (1, 1)] {
            let mut prev_upper: Option<Vec<u8>> = None;
            for p in 0..parts {
                let (lower, upper) = partition_bounds(p, parts, mp);
                assert_eq!(lower.is_none(), p == 0);
                assert_eq!(upper.is_none(), p + 1 == parts);
                if p > 0 {
                    assert_eq!(
                        lower,
                        prev_upper,
                        "partition {p} of {parts} starts where {} ended",
                        p - 1
                    );
                }
                if let (Some(l), Some(u)) = (&lower, &upper) {
                    assert!(
                        l < u,
                        "partition {p} of {parts} over {mp} key groups is empty"
                    );
                }
                prev_upper = upper;
            }
        }
    }
}
