//! The sharded copy-on-write backend.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use highwater_core::key::split_base;
use highwater_core::{
    BackendStats, Error, Mutation, Result, SnapshotKind, StateBackend, StateSnapshot, WriteBatch,
};

use crate::hash::XxBuild;

/// Seed of the shard hash. It differs from the map hasher's seed so that the
/// keys of one shard still spread over all buckets of its map.
const SHARD_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Configuration of a [`MemoryBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Number of shards, rounded up to a power of two. More shards mean more
    /// write concurrency and a smaller copy when a writer first touches a
    /// shard held by a snapshot. At 1 GiB of state (6 M entries) a shard of
    /// 256 holds ≈ 23,500 entries and its copy was measured at 17–24 ms;
    /// 4096 shards bring it to ≈ 1 ms, at the cost of a longer snapshot
    /// call (one lock per shard).
    pub shards: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { shards: 256 }
    }
}

type ShardMap = HashMap<Box<[u8]>, Slot, XxBuild>;
type KeySet = HashSet<Box<[u8]>, XxBuild>;
type EntryMap = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// Everything stored under one base key: a plain value (value, list,
/// reducing and aggregating state) and/or the entries of a map state.
#[derive(Debug, Clone, Default)]
struct Slot {
    value: Option<Box<[u8]>>,
    map: Option<Box<EntryMap>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.map.as_ref().is_none_or(|m| m.is_empty())
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Shared with snapshots; copied on the first write while shared.
    map: Arc<ShardMap>,
    /// Full keys written since the last snapshot.
    changed: KeySet,
    entries: u64,
    bytes: u64,
}

impl Shard {
    fn get(&self, key: &[u8], split: usize) -> Option<&[u8]> {
        lookup(&self.map, key, split)
    }

    fn mark(&mut self, key: &[u8]) {
        if !self.changed.contains(key) {
            self.changed.insert(key.into());
        }
    }

    fn put(&mut self, key: &[u8], split: usize, value: &[u8]) {
        self.mark(key);
        self.store(key, split, value);
    }

    /// `put` without change tracking (a restore starts a new epoch).
    fn store(&mut self, key: &[u8], split: usize, value: &[u8]) {
        let (base, user_key) = key.split_at(split);
        let map = Arc::make_mut(&mut self.map);
        let slot = match map.get_mut(base) {
            Some(slot) => slot,
            None => map.entry(base.into()).or_default(),
        };
        let target = if user_key.is_empty() {
            &mut slot.value
        } else {
            let entries = slot.map.get_or_insert_with(Default::default);
            match entries.get_mut(user_key) {
                Some(old) => {
                    self.bytes = self.bytes - old.len() as u64 + value.len() as u64;
                    overwrite(old, value);
                    return;
                }
                None => {
                    entries.insert(user_key.into(), value.into());
                    self.entries += 1;
                    self.bytes += (key.len() + value.len()) as u64;
                    return;
                }
            }
        };
        match target {
            Some(old) => {
                self.bytes = self.bytes - old.len() as u64 + value.len() as u64;
                overwrite(old, value);
            }
            None => {
                *target = Some(value.into());
                self.entries += 1;
                self.bytes += (key.len() + value.len()) as u64;
            }
        }
    }

    fn delete(&mut self, key: &[u8], split: usize) {
        let (base, user_key) = key.split_at(split);
        if lookup(&self.map, key, split).is_none() {
            // Nothing to delete. The key may still have been written and
            // deleted in this epoch, in which case it is already marked.
            return;
        }
        self.mark(key);
        let map = Arc::make_mut(&mut self.map);
        let Some(slot) = map.get_mut(base) else {
            return;
        };
        let removed = if user_key.is_empty() {
            slot.value.take()
        } else {
            slot.map.as_mut().and_then(|m| m.remove(user_key))
        };
        if let Some(v) = removed {
            self.entries -= 1;
            self.bytes -= (key.len() + v.len()) as u64;
        }
        if slot.is_empty() {
            map.remove(base);
        }
    }

    fn apply(&mut self, m: &Mutation) {
        let key = m.key();
        let split = split_of(key);
        match m {
            Mutation::Put { value, .. } => self.put(key, split, value),
            Mutation::Delete { .. } => self.delete(key, split),
        }
    }
}

/// Replaces a stored value, reusing its allocation when the length matches
/// (counters and fixed-size aggregates are rewritten in place).
fn overwrite(old: &mut Box<[u8]>, value: &[u8]) {
    if old.len() == value.len() {
        old.copy_from_slice(value);
    } else {
        *old = value.into();
    }
}

fn lookup<'a>(map: &'a ShardMap, key: &[u8], split: usize) -> Option<&'a [u8]> {
    let (base, user_key) = key.split_at(split);
    let slot = map.get(base)?;
    if user_key.is_empty() {
        slot.value.as_deref()
    } else {
        slot.map.as_ref()?.get(user_key).map(|v| &**v)
    }
}

/// Where the base of `key` ends. Keys that are not well-formed state keys are
/// stored whole as a base, which keeps the backend total over all byte strings.
fn split_of(key: &[u8]) -> usize {
    split_base(key).unwrap_or(key.len())
}

/// Visits every entry of a shard map, rebuilding full keys of map entries.
fn for_each_entry(map: &ShardMap, f: &mut highwater_core::EntryVisitor<'_>) -> Result<()> {
    let mut buf = Vec::new();
    for (base, slot) in map {
        if let Some(v) = &slot.value {
            f(base, Some(v))?;
        }
        if let Some(entries) = &slot.map {
            for (uk, v) in entries.iter() {
                buf.clear();
                buf.extend_from_slice(base);
                buf.extend_from_slice(uk);
                f(&buf, Some(v))?;
            }
        }
    }
    Ok(())
}

/// A concurrent in-memory state backend. See the crate docs for the design.
#[derive(Debug)]
pub struct MemoryBackend {
    shards: Box<[RwLock<Shard>]>,
    mask: u64,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend with the default configuration.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A backend with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let n = config.shards.clamp(1, 1 << 16).next_power_of_two();
        MemoryBackend {
            shards: (0..n).map(|_| RwLock::new(Shard::default())).collect(),
            mask: n as u64 - 1,
        }
    }

    fn shard_index(&self, key: &[u8], split: usize) -> usize {
        (xxhash_rust::xxh3::xxh3_64_with_seed(&key[..split], SHARD_SEED) & self.mask) as usize
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        // A panic while a shard was locked cannot leave a half-applied
        // change visible: every mutation above completes or unwinds before
        // touching shared state. So a poisoned lock is safe to reuse.
        self.shards[i]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_all(&self) -> Vec<RwLockWriteGuard<'_, Shard>> {
        // Always in ascending index order, like write_batch, so the two
        // never deadlock.
        (0..self.shards.len()).map(|i| self.write(i)).collect()
    }

    /// Every entry with `keep(key)` true, sorted by key, reading shard by
    /// shard (a scan is not a consistent cut across shards).
    fn scan_all(&self, keep: &dyn Fn(&[u8]) -> bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let shard = self.read(i);
            for_each_entry(&shard.map, &mut |k, v| {
                if let Some(v) = v
                    && keep(k)
                {
                    out.push((k.to_vec(), v.to_vec()));
                }
                Ok(())
            })?;
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl StateBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let split = split_of(key);
        let shard = self.read(self.shard_index(key, split));
        Ok(shard.get(key, split).map(<[u8]>::to_vec))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let split = split_of(key);
        self.write(self.shard_index(key, split))
            .put(key, split, value);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        let split = split_of(key);
        self.write(self.shard_index(key, split)).delete(key, split);
        Ok(())
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        let mutations = batch.into_mutations();
        let placed: Vec<usize> = mutations
            .iter()
            .map(|m| self.shard_index(m.key(), split_of(m.key())))
            .collect();
        let mut order = placed.clone();
        order.sort_unstable();
        order.dedup();
        // Hold every touched shard at once so a snapshot sees all of the
        // batch or none of it.
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, self.write(i))).collect();
        for (m, shard) in mutations.iter().zip(&placed) {
            let g = guards
                .binary_search_by_key(shard, |(i, _)| *i)
                .map_err(|_| Error::Internal("write batch lost a shard lock".into()))?;
            guards[g].1.apply(m);
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // If the prefix contains a whole base, every matching key has that
        // base (all fields are length-prefixed), so only one slot is read.
        let Some(split) = split_base(prefix) else {
            return self.scan_all(&|k| k.starts_with(prefix));
        };
        let (base, uk_prefix) = prefix.split_at(split);
        let shard = self.read(self.shard_index(prefix, split));
        let mut out = Vec::new();
        let Some(slot) = shard.map.get(base) else {
            return Ok(out);
        };
        if uk_prefix.is_empty()
            && let Some(v) = &slot.value
        {
            out.push((base.to_vec(), v.to_vec()));
        }
        if let Some(entries) = &slot.map {
            for (uk, v) in entries.range::<[u8], _>((
                std::ops::Bound::Included(uk_prefix),
                std::ops::Bound::Unbounded,
            )) {
                if !uk.starts_with(uk_prefix) {
                    break;
                }
                let mut k = Vec::with_capacity(base.len() + uk.len());
                k.extend_from_slice(base);
                k.extend_from_slice(uk);
                out.push((k, v.to_vec()));
            }
        }
        Ok(out)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_all(&|k| k >= start && k < end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        // Allocate before taking the locks: under allocator contention a
        // malloc inside the locked section was measured to hold every
        // writer for tens of milliseconds.
        let n = self.shards.len();
        let mut maps = Vec::with_capacity(n);
        let mut changes = Vec::with_capacity(n);
        let mut discarded = Vec::with_capacity(n);
        let mut guards = self.lock_all();
        let mut entries = 0usize;
        for g in guards.iter_mut() {
            let changed = std::mem::take(&mut g.changed);
            match kind {
                SnapshotKind::Full => {
                    entries += g.entries as usize;
                    maps.push(Some(g.map.clone()));
                    // Freeing millions of keys takes seconds: never under
                    // the locks, and not on the caller's thread either.
                    if !changed.is_empty() {
                        discarded.push(changed);
                    }
                }
                SnapshotKind::Changes => {
                    entries += changed.len();
                    // Only shards with changes are held, so writers to the
                    // others never pay for a copy.
                    maps.push((!changed.is_empty()).then(|| g.map.clone()));
                    changes.push(changed);
                }
            }
        }
        drop(guards);
        let discarded_keys: usize = discarded.iter().map(|c| c.len()).sum();
        if discarded_keys > 4096 {
            // If the thread cannot be spawned the sets are freed here.
            let _ = std::thread::Builder::new()
                .name("highwater-memory-free".into())
                .spawn(move || drop(discarded));
        }
        Ok(Arc::new(MemorySnapshot {
            kind,
            maps,
            changes,
            entries,
        }))
    }

    fn restore(&self, entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Result<()> {
        // Build the new shards aside; the live state is replaced only when
        // every entry was read, so a failing source leaves it untouched.
        // Entries are sorted into their shards as they arrive, then the
        // shards are built on every core.
        let mut parts: Vec<Part> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for e in entries {
            let (k, v) = e?;
            let split = split_of(&k);
            parts[self.shard_index(&k, split)].push((k, v));
        }
        let fresh = build_shards(parts);
        let mut guards = self.lock_all();
        for (g, f) in guards.iter_mut().zip(fresh) {
            **g = f;
        }
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let mut guards = self.lock_all();
        for g in guards.iter_mut() {
            **g = Shard::default();
        }
        Ok(())
    }

    fn native(&self) -> Option<&dyn highwater_core::NativeCheckpoints> {
        None
    }

    fn stats(&self) -> BackendStats {
        let mut s = BackendStats::default();
        for i in 0..self.shards.len() {
            let g = self.read(i);
            s.entries += g.entries;
            s.bytes += g.bytes;
        }
        s
    }
}

/// The entries of one shard, as a restore receives them.
type Part = Vec<(Vec<u8>, Vec<u8>)>;

/// Builds one shard from each part's entries, on up to as many threads as
/// there are cores, without change tracking.
fn build_shards(parts: Vec<Part>) -> Vec<Shard> {
    let build = |entries: Part| {
        let mut shard = Shard::default();
        Arc::make_mut(&mut shard.map).reserve(entries.len());
        for (k, v) in entries {
            shard.store(&k, split_of(&k), &v);
        }
        shard
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, parts.len().max(1));
    if threads == 1 {
        return parts.into_iter().map(build).collect();
    }
    // Thread t builds parts t, t + threads, t + 2 * threads, ...
    let mut lanes: Vec<Vec<(usize, Part)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, part) in parts.into_iter().enumerate() {
        lanes[i % threads].push((i, part));
    }
    let total: usize = lanes.iter().map(Vec::len).sum();
    let mut out: Vec<Option<Shard>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                scope.spawn(move || {
                    lane.into_iter()
                        .map(|(i, part)| (i, build(part)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(built) => {
                    for (i, shard) in built {
                        out[i] = Some(shard);
                    }
                }
                // A panic while building cannot be recovered from here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    out.into_iter().map(Option::unwrap_or_default).collect()
}

/// A frozen view: the shard maps at snapshot time, plus the changed keys
/// for a change snapshot.
struct MemorySnapshot {
    kind: SnapshotKind,
    maps: Vec<Option<Arc<ShardMap>>>,
    changes: Vec<KeySet>,
    entries: usize,
}

impl StateSnapshot for MemorySnapshot {
    fn kind(&self) -> SnapshotKind {
        self.kind
    }

    fn partitions(&self) -> usize {
        self.maps.len()
    }

    fn for_each_in_partition(
        &self,
        partition: usize,
        f: &mut highwater_core::EntryVisitor<'_>,
    ) -> Result<()> {
        let Some(map) = self.maps.get(partition) else {
            return Err(Error::InvalidArgument(format!(
                "snapshot partition out of range: partition={partition} partitions={}",
                self.maps.len()
            )));
        };
        let Some(map) = map else {
            return Ok(());
        };
        match self.kind {
            SnapshotKind::Full => for_each_entry(map, f),
            SnapshotKind::Changes => {
                for key in &self.changes[partition] {
                    f(key, lookup(map, key, split_of(key)))?;
                }
                Ok(())
            }
        }
    }

    fn approximate_entries(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use highwater_core::{KeyGroup, StateKey};

    fn key(k: &[u8], uk: &[u8]) -> Vec<u8> {
        StateKey {
            key_group: KeyGroup(1),
            operator: "op",
            state: "s",
            key: k,
            namespace: b"",
            user_key: uk,
        }
        .encode()
        .unwrap()
    }

    fn collect(s: &dyn StateSnapshot) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for p in 0..s.partitions() {
            s.for_each_in_partition(p, &mut |k, v| {
                out.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                Ok(())
            })
            .unwrap();
        }
        out.sort();
        out
    }

    #[test]
    fn snapshot_survives_later_writes() {
        let b = MemoryBackend::with_config(MemoryConfig { shards: 4 });
        b.put(&key(b"a", b""), b"1").unwrap();
        b.put(&key(b"m", b"\0x"), b"2").unwrap();
        let snap = b.snapshot(SnapshotKind::Full).unwrap();
        b.put(&key(b"a", b""), b"9").unwrap();
        b.delete(&key(b"m", b"\0x")).unwrap();
        assert_eq!(
            collect(&*snap),
            vec![
                (key(b"a", b""), Some(b"1".to_vec())),
                (key(b"m", b"\0x"), Some(b"2".to_vec()))
            ]
        );
        let changes = b.snapshot(SnapshotKind::Changes).unwrap();
        assert_eq!(
            collect(&*changes),
            vec![
                (key(b"a", b""), Some(b"9".to_vec())),
                (key(b"m", b"\0x"), None)
            ]
        );
        assert_eq!(b.stats().entries, 1);
    }

    #[test]
    fn prefix_scan_of_a_map_is_ordered() {
        let b = MemoryBackend::new();
        for uk in [b"\0c", b"\0a", b"\0b"] {
            b.put(&key(b"m", uk), uk).unwrap();
        }
        b.put(&key(b"n", b"\0a"), b"other").unwrap();
        let got: Vec<_> = b.scan_prefix(&key(b"m", b"")).unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            vec![key(b"m", b"\0a"), key(b"m", b"\0b"), key(b"m", b"\0c")]
        );
        assert_eq!(b.scan_prefix(&key(b"m", b"\0b")).unwrap().len(), 1);
        assert_eq!(b.scan_prefix(&[0, 1]).unwrap().len(), 4);
    }

    #[test]
    fn failed_restore_leaves_state_untouched() {
        let b = MemoryBackend::new();
        b.put(&key(b"a", b""), b"1").unwrap();
        let mut src = vec![
            Ok((key(b"x", b""), b"2".to_vec())),
            Err(Error::corrupt("artifact", "test")),
        ]
        .into_iter();
        assert!(b.restore(&mut src).is_err());
        assert_eq!(b.get(&key(b"a", b"")).unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(&key(b"x", b"")).unwrap(), None);
    }
}
