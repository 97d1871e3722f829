//! The sharded arena backend.
//!
//! Each shard keeps its records in append-only [`Segment`]s and finds them
//! through an index of small fixed-size slots (hash + location) split into
//! pages. Segments and index pages are `Arc`s in the shard's [`Store`]. A
//! snapshot leaves each shard a slot and copies nothing; whoever locks the
//! shard next (a writer, or the snapshot's reader) fills the slot with the
//! store's short lists of `Arc`s, and a writer that then touches the shard
//! copies at most the one index page and the one segment it writes to —
//! never the shard.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use highwater_core::key::split_base;
use highwater_core::{
    BackendStats, BulkLoader, BulkRestore, Error, Mutation, RecordBlock, Result, SnapshotKind,
    StateBackend, StateSnapshot, WriteBatch,
};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

use crate::arena::{HEADER, Loc, Segment, record_len};
use crate::index::Table;

/// Shards whose write locks [`MemoryBackend::lock_all`] holds on the
/// stack: the default shard count, so that a snapshot call allocates
/// nothing large (see [`Spare`]).
const INLINE_GUARDS: usize = 256;

/// Index pages per shard (a power of two). A writer that touches a shard
/// held by a snapshot copies one page: a quarter of the shard's index,
/// ≈ 60 KiB at 1 GiB of state with the default 256 shards — less than the
/// segment it appends to. Four pages rather than sixteen: every page is a
/// table header and an `Arc` a lookup reads, and with 256 shards the
/// sixteen-page layout was measured ≈ 10 % slower on puts and gets
/// (scratch run, 200 k keys) for a copy that was already small.
const INDEX_PAGES: usize = 4;

/// Background compaction examines this many bytes of its victim segment per
/// byte a write appended, so it reclaims dead bytes faster than writes make
/// them while the dead share is above the trigger, at a bounded cost per
/// write.
const COMPACT_FACTOR: usize = 4;

/// Writes to wait before looking for a compaction victim again after a
/// search found none (every candidate was pinned by a snapshot): the search
/// is linear in the shard's segments.
const COMPACT_BACKOFF: u32 = 1024;

/// Configuration of a [`MemoryBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Number of shards, rounded up to a power of two. More shards mean more
    /// write concurrency and a longer snapshot call (one lock per shard).
    pub shards: usize,
    /// Bytes of one arena segment (clamped to 64 B ..= 1 GiB). A writer that
    /// appends to a segment a snapshot still holds copies at most this much
    /// once; a record larger than a segment gets a segment of its own.
    pub segment_bytes: usize,
    /// Key groups of the job (its `max_parallelism`; the library default
    /// unless the job sets another). Shards hold whole key groups — a
    /// contiguous range of them each, or one key group over several shards
    /// when there are more shards than key groups — so the records a
    /// checkpoint writes into one artifact sit in a few shards' segments,
    /// not in all of them. Any value is correct; a job with another
    /// `max_parallelism` only loses that locality.
    pub max_parallelism: u16,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            shards: 256,
            segment_bytes: 1 << 20,
            max_parallelism: highwater_core::DEFAULT_MAX_PARALLELISM,
        }
    }
}

/// One index entry (12 bytes): where the record is, and the change-tracking
/// epoch in which its key was last marked as changed. The hash is not
/// stored: the table's one-byte tag filters candidates before the key is
/// compared in the arena, and the rare resize of a page re-reads and
/// re-hashes its keys ([`rehash`]).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    loc: Loc,
    /// Equal to the shard's epoch if the key is in this epoch's change
    /// set, so a write to a key already marked skips the change set.
    epoch: u32,
}

// The index's buckets hold four slots in one cache line only at 12 bytes.
const _: () = assert!(std::mem::size_of::<Slot>() == 12);

type Page = Table<Slot>;

/// The index hash of the record of `slot`, for a page that grows.
fn rehash(segments: &[Arc<Segment>], slot: &Slot) -> u64 {
    key_hash(segments[slot.loc.seg as usize].record(slot.loc.off).0)
}

fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The page of a hash. A page's table picks buckets from the low bits and
/// tags from the top eight, so the page comes from bits in between.
fn page_of(hash: u64) -> usize {
    (hash >> 32) as usize & (INDEX_PAGES - 1)
}

/// A visitor of live records (key, value).
type RecordVisitor<'s, 'a> = dyn FnMut(&'s [u8], &'s [u8]) -> Result<()> + 'a;

/// What a snapshot pins: the segments and the index pages of one shard.
#[derive(Debug, Clone)]
struct Store {
    /// Indexed by segment id; a released id holds an empty segment until a
    /// new segment reuses it.
    segments: Vec<Arc<Segment>>,
    pages: [Arc<Page>; INDEX_PAGES],
}

impl Store {
    fn new() -> Store {
        Store {
            segments: Vec::new(),
            pages: std::array::from_fn(|_| Arc::new(Page::new())),
        }
    }

    fn record(&self, loc: Loc) -> (&[u8], &[u8]) {
        self.segments[loc.seg as usize].record(loc.off)
    }

    fn find_slot(&self, key: &[u8], hash: u64) -> Option<Slot> {
        self.pages[page_of(hash)]
            .find(hash, |s| self.record(s.loc).0 == key)
            .copied()
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<Loc> {
        self.find_slot(key, hash).map(|s| s.loc)
    }

    fn get(&self, key: &[u8], hash: u64) -> Option<&[u8]> {
        self.find(key, hash).map(|loc| self.record(loc).1)
    }

    /// Visits every live record in the order they lie in the segments, so
    /// that a full scan reads memory front to back instead of jumping
    /// wherever the index's hash order leads (one cache miss per record).
    /// The live records are found by marking each indexed offset in a
    /// bitmap per segment, one bit per 8 bytes (a record's header alone is
    /// 8 bytes, so no two records begin in the same 8 bytes), then walking
    /// each segment's records (live and dead) front to back and visiting
    /// those whose bit is set: a pass over the 12-byte index slots, a
    /// bitmap of 1/64 of the arena, and one sequential walk.
    fn for_each<'s>(&'s self, f: &mut RecordVisitor<'s, '_>) -> Result<()> {
        let mut live: Vec<Vec<u64>> = self
            .segments
            .iter()
            .map(|seg| vec![0u64; seg.len().div_ceil(8 * 64)])
            .collect();
        for page in &self.pages {
            for slot in page.iter() {
                let bit = slot.loc.off as usize / 8;
                live[slot.loc.seg as usize][bit / 64] |= 1 << (bit % 64);
            }
        }
        for (seg, words) in self.segments.iter().zip(&live) {
            for off in seg.offsets() {
                let bit = off as usize / 8;
                if words[bit / 64] & (1 << (bit % 64)) != 0 {
                    let (k, v) = seg.record(off);
                    f(k, v)?;
                }
            }
        }
        Ok(())
    }
}

/// The entries of one map state for one base key, ordered by user key, so
/// a prefix scan of the map is a binary search and a walk.
#[derive(Debug)]
struct MapDir {
    /// Hash of the base.
    hash: u64,
    /// Never empty: a directory is removed with its last entry.
    locs: Vec<Loc>,
}

fn user_key(store: &Store, loc: Loc, split: usize) -> &[u8] {
    &store.record(loc).0[split..]
}

/// True if `dir` holds the entries of `base`. Bases are self-delimiting
/// (every field is length-prefixed), so a key that starts with `base` has
/// that base.
fn dir_is(store: &Store, dir: &MapDir, hash: u64, base: &[u8]) -> bool {
    dir.hash == hash && store.record(dir.locs[0]).0.get(..base.len()) == Some(base)
}

/// Keys a shard's change set may always hold, however small the shard
/// was when its epoch began (see [`Shard::track`]).
const CHANGES_FLOOR: usize = 64;

/// The keys written since the last snapshot, copied into one buffer.
#[derive(Debug, Default)]
struct ChangeSet {
    keys: Vec<u8>,
    spans: HashTable<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    hash: u64,
    start: usize,
    end: usize,
}

impl ChangeSet {
    fn mark(&mut self, key: &[u8], hash: u64) {
        let keys = &self.keys;
        if self
            .spans
            .find(hash, |s| s.hash == hash && &keys[s.start..s.end] == key)
            .is_none()
        {
            self.push(key, hash);
        }
    }

    /// Adds a key known not to be in the set.
    fn push(&mut self, key: &[u8], hash: u64) {
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        let span = Span {
            hash,
            start,
            end: self.keys.len(),
        };
        self.spans.insert_unique(hash, span, |s| s.hash);
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.spans
            .iter()
            .map(|s| (&self.keys[s.start..s.end], s.hash))
    }
}

/// A write's key, pre-computed outside the shard lock.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    split: usize,
    hash: u64,
}

/// The segments of one shard being restored, laid out as
/// [`Shard::append`] lays them out: not yet shared, so an append costs no
/// reference-count check. Each record's index hash and location are kept
/// as it is appended, so indexing ([`Shard::index_restored`]) neither
/// hashes a key again nor reads the arena back.
#[derive(Default)]
struct Filling {
    segments: Vec<Segment>,
    tail: Option<u32>,
    used: u64,
    /// Key and value bytes appended.
    bytes: u64,
    /// Every record appended, in order: its [`key_hash`] and location.
    slots: Vec<(u64, Loc)>,
    /// The map entries among them: the hash of their base and location.
    map_entries: Vec<(u64, Loc)>,
}

impl Filling {
    /// Appends a record of `rec` bytes (from [`record_len`]); `at` is its
    /// key's placement (where the base ends, and its [`key_hash`]).
    fn append(&mut self, key: &[u8], value: &[u8], rec: usize, at: Keyed, segment_bytes: usize) {
        let fits = |t: &u32| self.segments[*t as usize].len() + rec <= segment_bytes;
        let id = match self.tail.filter(fits) {
            Some(t) if rec <= segment_bytes => t,
            _ => {
                self.segments
                    .push(Segment::with_capacity(rec.max(segment_bytes)));
                let id = (self.segments.len() - 1) as u32;
                // A record larger than a segment gets a segment of its own,
                // which is never the tail.
                if rec <= segment_bytes {
                    self.tail = Some(id);
                }
                id
            }
        };
        let segment = &mut self.segments[id as usize];
        // A restore writes every page of its segments: they are mapped a
        // run at a time, ahead of the records, instead of faulting one by
        // one (a quarter of a restore's CPU was those faults).
        segment.populate_for(rec);
        let off = segment.append(key, value);
        let loc = Loc { seg: id, off };
        self.used += rec as u64;
        self.bytes += (key.len() + value.len()) as u64;
        self.slots.push((at.hash, loc));
        if at.split < key.len() {
            self.map_entries.push((xxh3_64(&key[..at.split]), loc));
        }
    }

    /// Appends `other`'s segments after this one's, its locations moved
    /// along. Its tail, if any, becomes the tail (this one's stays
    /// partly filled: appends go to one tail).
    fn merge(&mut self, other: Filling) {
        let base = self.segments.len() as u32;
        let moved = |(hash, loc): (u64, Loc)| {
            (
                hash,
                Loc {
                    seg: loc.seg + base,
                    off: loc.off,
                },
            )
        };
        self.segments.extend(other.segments);
        self.slots.extend(other.slots.into_iter().map(moved));
        self.map_entries
            .extend(other.map_entries.into_iter().map(moved));
        self.tail = other.tail.map(|t| t + base).or(self.tail);
        self.used += other.used;
        self.bytes += other.bytes;
    }
}

/// The bulk restore of a [`MemoryBackend`]: each loader fills shards of its
/// own aside ([`Filling`]s, one per shard, no lock taken per entry); the
/// commit merges each shard's fillings, indexes every shard on every core
/// and swaps them in at once.
struct MemoryBulk<'a> {
    backend: &'a MemoryBackend,
    /// The fillings of the loaders dropped so far, one per shard each.
    taken: Mutex<Vec<Vec<Filling>>>,
}

impl BulkRestore for MemoryBulk<'_> {
    fn loader(&self) -> Box<dyn BulkLoader + '_> {
        Box::new(MemoryLoader {
            bulk: self,
            filling: (0..self.backend.shards.len())
                .map(|_| Filling::default())
                .collect(),
        })
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let backend = self.backend;
        let taken = self
            .taken
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        // Shard by shard: the fillings every loader made of it.
        let mut per_shard: Vec<Vec<Filling>> =
            (0..backend.shards.len()).map(|_| Vec::new()).collect();
        for loader in taken {
            for (parts, f) in per_shard.iter_mut().zip(loader) {
                if !f.slots.is_empty() {
                    parts.push(f);
                }
            }
        }
        let fresh = restored_in_parallel(backend.segment_bytes, per_shard);
        let mut guards = backend.lock_all();
        for (g, f) in guards.iter_mut().zip(fresh) {
            **g = f;
        }
        Ok(())
    }
}

/// One thread's [`BulkLoader`] of a [`MemoryBulk`].
struct MemoryLoader<'a> {
    bulk: &'a MemoryBulk<'a>,
    filling: Vec<Filling>,
}

impl BulkLoader for MemoryLoader<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let rec = checked_record(key, value)?;
        let backend = self.bulk.backend;
        let (i, at) = backend.keyed(key);
        self.filling[i].append(key, value, rec, at, backend.segment_bytes);
        Ok(())
    }
}

impl Drop for MemoryLoader<'_> {
    fn drop(&mut self) {
        let filling = std::mem::take(&mut self.filling);
        if filling.iter().any(|f| !f.slots.is_empty()) {
            self.bulk
                .taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(filling);
        }
    }
}

#[derive(Debug)]
struct Shard {
    /// The segments and index pages, each shared with snapshots and copied
    /// on the first write while shared. Held by value, not behind one more
    /// `Arc`: a snapshot takes the list (a few `Arc`s per shard) when the
    /// shard is next locked (see `pending`), and a write does not pay an
    /// atomic read-modify-write on the whole store before the one on what
    /// it touches.
    store: Store,
    segment_bytes: usize,
    /// Dead bytes per segment id.
    dead: Vec<u64>,
    /// Released segment ids.
    free: Vec<u32>,
    /// The segment appends go to.
    tail: Option<u32>,
    /// Bytes of records (live and dead) in the segments.
    used: u64,
    dead_total: u64,
    /// Ordered directories of map-state entries (writer side only:
    /// snapshots never need the order).
    maps: HashTable<MapDir>,
    changed: ChangeSet,
    /// The change set of this epoch was given up (see [`Shard::track`]):
    /// a changes snapshot is answered with a full one.
    changes_lost: bool,
    /// Entries when the epoch began (see [`Shard::track`]).
    epoch_entries: u64,
    /// The segment being compacted and the offset compaction reached.
    compacting: Option<Loc>,
    /// Bytes compaction moved out of the current victim.
    compact_moved: u64,
    backoff: u32,
    /// The change-tracking epoch; never 0 (the stamp of restored slots).
    epoch: u32,
    entries: u64,
    bytes: u64,
    /// Where the newest snapshot takes this shard's store from, until it
    /// has: a snapshot only leaves this slot under the lock (no reference
    /// count per segment or page, see `MemoryBackend::snapshot`), and
    /// whoever locks the shard next fills it — a writer before it changes
    /// anything ([`MemoryBackend::write`]), the snapshot's reader if no
    /// writer came first.
    pending: Option<Arc<OnceLock<Store>>>,
}

impl Shard {
    fn new(segment_bytes: usize) -> Shard {
        Shard {
            store: Store::new(),
            segment_bytes,
            dead: Vec::new(),
            free: Vec::new(),
            tail: None,
            used: 0,
            dead_total: 0,
            maps: HashTable::new(),
            changed: ChangeSet::default(),
            changes_lost: false,
            epoch_entries: 0,
            compacting: None,
            compact_moved: 0,
            backoff: 0,
            epoch: 1,
            entries: 0,
            bytes: 0,
            pending: None,
        }
    }

    /// The shard of the records `parts` hold (one bulk loader's each,
    /// merged in order), indexed: later records win over earlier ones with
    /// the same key, and the map directories are built.
    fn restored(segment_bytes: usize, parts: Vec<Filling>) -> Shard {
        let mut parts = parts.into_iter();
        let mut f = parts.next().unwrap_or_default();
        for p in parts {
            f.merge(p);
        }
        let mut shard = Shard::new(segment_bytes);
        let store = &mut shard.store;
        store.segments = f.segments.into_iter().map(Arc::new).collect();
        shard.dead = vec![0; store.segments.len()];
        shard.tail = f.tail;
        shard.used = f.used;
        shard.bytes = f.bytes;
        shard.index_restored(&f.slots, &f.map_entries);
        shard
    }

    fn alloc_segment(&mut self, capacity: usize) -> u32 {
        let seg = Arc::new(Segment::with_capacity(capacity));
        let store = &mut self.store;
        match self.free.pop() {
            Some(id) => {
                store.segments[id as usize] = seg;
                id
            }
            None => {
                store.segments.push(seg);
                self.dead.push(0);
                (store.segments.len() - 1) as u32
            }
        }
    }

    /// Appends a record of `rec` bytes (from [`record_len`]).
    fn append(&mut self, key: &[u8], value: &[u8], rec: usize) -> Loc {
        let id = if rec > self.segment_bytes {
            // A record larger than a segment gets a segment of its own,
            // which is never the tail.
            self.alloc_segment(rec)
        } else {
            let fits = |t: &u32| self.store.segments[*t as usize].len() + rec <= self.segment_bytes;
            match self.tail.filter(fits) {
                Some(t) => t,
                None => {
                    let t = self.alloc_segment(self.segment_bytes);
                    self.tail = Some(t);
                    t
                }
            }
        };
        let store = &mut self.store;
        // Copies the segment if a snapshot holds it: at most one segment.
        let off = Arc::make_mut(&mut store.segments[id as usize]).append(key, value);
        self.used += rec as u64;
        Loc { seg: id, off }
    }

    fn page_mut(&mut self, hash: u64) -> &mut Page {
        let store = &mut self.store;
        // Copies the page if a snapshot holds it.
        Arc::make_mut(&mut store.pages[page_of(hash)])
    }

    /// Points the slot of the record at `old` to `new`, and stamps it with
    /// `epoch` if given.
    fn relocate_slot(&mut self, hash: u64, old: Loc, new: Loc, epoch: Option<u32>) {
        if let Some(slot) = self.page_mut(hash).find_mut(hash, |s| s.loc == old) {
            slot.loc = new;
            if let Some(e) = epoch {
                slot.epoch = e;
            }
        }
    }

    fn insert_slot(&mut self, hash: u64, slot: Slot) {
        let Store { segments, pages } = &mut self.store;
        let page = Arc::make_mut(&mut pages[page_of(hash)]);
        page.insert_unique(hash, slot, |s| rehash(segments, s));
    }

    /// Starts a new change-tracking epoch (the change set was taken).
    fn next_epoch(&mut self) {
        self.epoch_entries = self.entries;
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Once every 2^32 snapshots: stamps of the previous cycle could
            // match again, so every slot is reset (O(entries), once).
            let store = &mut self.store;
            for page in store.pages.iter_mut() {
                for slot in Arc::make_mut(page).iter_mut() {
                    slot.epoch = 0;
                }
            }
            self.epoch = 1;
        }
    }

    fn kill(&mut self, loc: Loc, rec: usize) {
        self.dead[loc.seg as usize] += rec as u64;
        self.dead_total += rec as u64;
    }

    /// Points the map directory of `key`'s base at `loc` for `key`'s user
    /// key, inserting it in order if it is new.
    fn dir_set(&mut self, key: &[u8], split: usize, loc: Loc) {
        let (base, uk) = key.split_at(split);
        let h = xxh3_64(base);
        let store = &self.store;
        match self.maps.find_mut(h, |d| dir_is(store, d, h, base)) {
            Some(d) => match d
                .locs
                .binary_search_by(|l| user_key(store, *l, split).cmp(uk))
            {
                Ok(i) => d.locs[i] = loc,
                Err(i) => d.locs.insert(i, loc),
            },
            None => {
                let dir = MapDir {
                    hash: h,
                    locs: vec![loc],
                };
                self.maps.insert_unique(h, dir, |d| d.hash);
            }
        }
    }

    fn dir_remove(&mut self, key: &[u8], split: usize) {
        let (base, uk) = key.split_at(split);
        let h = xxh3_64(base);
        let store = &self.store;
        if let Ok(mut entry) = self.maps.find_entry(h, |d| dir_is(store, d, h, base)) {
            let d = entry.get_mut();
            if let Ok(i) = d
                .locs
                .binary_search_by(|l| user_key(store, *l, split).cmp(uk))
            {
                d.locs.remove(i);
            }
            if d.locs.is_empty() {
                entry.remove();
            }
        }
    }

    fn dir(&self, base: &[u8]) -> Option<&MapDir> {
        let h = xxh3_64(base);
        self.maps.find(h, |d| dir_is(&self.store, d, h, base))
    }

    /// Adds `key` to the change set (looking it up first when `lookup`:
    /// it may be there already), unless this epoch's changes were given
    /// up. They are given up when the set holds more than twice the keys
    /// the shard had when the epoch began (and [`CHANGES_FLOOR`]): only
    /// new keys get it there — rewrites of existing keys are at most the
    /// shard's keys once — so it is a bulk load, or a shard that more than
    /// doubled, for which a full snapshot costs little more than a changes
    /// one and a second copy of every new key would cost memory for
    /// nothing.
    fn track(&mut self, key: &[u8], hash: u64, lookup: bool) {
        if self.changes_lost {
            return;
        }
        if lookup {
            self.changed.mark(key, hash);
        } else {
            self.changed.push(key, hash);
        }
        let bound = CHANGES_FLOOR
            .max(usize::try_from(self.epoch_entries.saturating_mul(2)).unwrap_or(usize::MAX));
        if self.changed.len() > bound {
            tracing::trace!(
                keys = self.changed.len(),
                bound,
                "memory shard gives up tracking this epoch's changes"
            );
            self.changed = ChangeSet::default();
            self.changes_lost = true;
        }
    }

    fn put(&mut self, key: &[u8], k: Keyed, value: &[u8], rec: usize) {
        match self.store.find_slot(key, k.hash) {
            Some(slot) => {
                let old = slot.loc;
                // A key whose slot carries this epoch is already in the
                // change set; one that does not cannot be (every path that
                // marks a live key stamps its slot), so it is added without
                // a lookup.
                let stamp = (slot.epoch != self.epoch).then_some(self.epoch);
                if stamp.is_some() {
                    self.track(key, k.hash, false);
                }
                let (ok, ov) = self.store.record(old);
                let (old_rec, old_vlen) = (HEADER + ok.len() + ov.len(), ov.len());
                if old_vlen == value.len() {
                    // Counters and fixed-size aggregates are rewritten in
                    // place when no snapshot holds their segment.
                    let store = &mut self.store;
                    if let Some(seg) = Arc::get_mut(&mut store.segments[old.seg as usize]) {
                        seg.value_mut(old.off).copy_from_slice(value);
                        if stamp.is_some() {
                            self.relocate_slot(k.hash, old, old, stamp);
                        }
                        return;
                    }
                }
                let new = self.append(key, value, rec);
                self.relocate_slot(k.hash, old, new, stamp);
                if k.split < key.len() {
                    self.dir_set(key, k.split, new);
                }
                self.kill(old, old_rec);
                self.bytes = self.bytes + value.len() as u64 - old_vlen as u64;
            }
            None => {
                // The key may have been deleted earlier in this epoch and
                // be in the change set already: look it up.
                self.track(key, k.hash, true);
                let new = self.append(key, value, rec);
                let slot = Slot {
                    loc: new,
                    epoch: self.epoch,
                };
                self.insert_slot(k.hash, slot);
                if k.split < key.len() {
                    self.dir_set(key, k.split, new);
                }
                self.entries += 1;
                self.bytes += (key.len() + value.len()) as u64;
            }
        }
        self.maybe_compact(rec);
    }

    fn delete(&mut self, key: &[u8], k: Keyed) {
        let Some(slot) = self.store.find_slot(key, k.hash) else {
            // Nothing to delete. The key may still have been written and
            // deleted in this epoch, in which case it is already marked.
            return;
        };
        let old = slot.loc;
        if slot.epoch != self.epoch {
            self.track(key, k.hash, false);
        }
        let vlen = self.store.record(old).1.len();
        if k.split < key.len() {
            self.dir_remove(key, k.split);
        }
        self.page_mut(k.hash).remove(k.hash, |s| s.loc == old);
        let rec = HEADER + key.len() + vlen;
        self.kill(old, rec);
        self.entries -= 1;
        self.bytes -= (key.len() + vlen) as u64;
        self.maybe_compact(rec);
    }

    fn apply(&mut self, m: &Mutation, k: Keyed, rec: usize) {
        match m {
            Mutation::Put { key, value } => self.put(key, k, value, rec),
            Mutation::Delete { key } => self.delete(key, k),
        }
    }

    /// True if a snapshot may still read segment `id`.
    fn pinned(&self, id: u32) -> bool {
        Arc::strong_count(&self.store.segments[id as usize]) > 1
    }

    /// The non-tail segment with the most dead bytes.
    fn pick_victim(&self, pinned_too: bool) -> Option<u32> {
        (0..self.dead.len() as u32)
            .filter(|&i| {
                Some(i) != self.tail && self.dead[i as usize] > 0 && (pinned_too || !self.pinned(i))
            })
            .max_by_key(|&i| self.dead[i as usize])
    }

    /// One bounded step of background compaction after a write of `rec`
    /// bytes. Compaction starts when dead bytes reach a third of the arena
    /// (and a quarter of a segment), takes a victim at least a quarter dead,
    /// and skips segments a snapshot holds: moving their records would free
    /// nothing until the snapshot is dropped. A tail that is half dead is
    /// sealed first, so a small shard whose records all sit in its tail is
    /// compacted too.
    fn maybe_compact(&mut self, rec: usize) {
        if self.compacting.is_none() {
            if self.backoff > 0 {
                self.backoff -= 1;
                return;
            }
            if self.dead_total < (self.segment_bytes / 4) as u64 || self.dead_total * 3 < self.used
            {
                return;
            }
            if let Some(t) = self.tail
                && self.dead[t as usize] * 2 >= self.store.segments[t as usize].len() as u64
                && !self.pinned(t)
            {
                self.tail = None;
            }
            match self.pick_victim(false) {
                Some(v)
                    if self.dead[v as usize] * 4
                        >= self.store.segments[v as usize].len() as u64 =>
                {
                    self.start_victim(v)
                }
                _ => {
                    self.backoff = COMPACT_BACKOFF;
                    return;
                }
            }
        }
        self.compact_some(rec.max(64) * COMPACT_FACTOR);
    }

    fn start_victim(&mut self, id: u32) {
        self.compacting = Some(Loc { seg: id, off: 0 });
        self.compact_moved = 0;
    }

    /// Moves the live records among the next `budget` bytes of the victim
    /// to the tail; releases the victim when its end is reached.
    fn compact_some(&mut self, budget: usize) {
        let Some(cur) = self.compacting else {
            return;
        };
        // A second handle keeps the records readable while the store is
        // changed below.
        let seg = Arc::clone(&self.store.segments[cur.seg as usize]);
        let len = seg.len();
        let mut off = cur.off as usize;
        if self.dead[cur.seg as usize] >= len as u64 {
            // Nothing live: release without reading.
            off = len;
        }
        let mut done = 0usize;
        while off < len && done < budget {
            let here = Loc {
                seg: cur.seg,
                off: off as u32,
            };
            let (k, v) = seg.record(here.off);
            let rec = HEADER + k.len() + v.len();
            let hash = key_hash(k);
            let live = self.store.pages[page_of(hash)]
                .find(hash, |s| s.loc == here)
                .is_some();
            if live {
                let new = self.append(k, v, rec);
                self.relocate_slot(hash, here, new, None);
                let split = split_of(k);
                if split < k.len() {
                    self.dir_set(k, split, new);
                }
                self.kill(here, rec);
                self.compact_moved += rec as u64;
            }
            off += rec;
            done += rec;
        }
        if off >= len {
            self.compacting = None;
            self.release(cur.seg);
        } else {
            self.compacting = Some(Loc {
                seg: cur.seg,
                off: off as u32,
            });
        }
    }

    fn release(&mut self, id: u32) {
        let store = &mut self.store;
        let seg = std::mem::take(&mut store.segments[id as usize]);
        let dead = std::mem::take(&mut self.dead[id as usize]);
        self.used -= seg.len() as u64;
        self.dead_total -= dead;
        self.free.push(id);
        tracing::debug!(
            segment = id,
            segment_bytes = seg.len(),
            moved_bytes = self.compact_moved,
            reclaimed_bytes = seg.len() as u64 - self.compact_moved,
            still_pinned = Arc::strong_count(&seg) > 1,
            "memory backend compacted a segment"
        );
    }

    /// Compacts every segment holding dead bytes (the tail too), snapshots
    /// or not. Returns the bytes the arena shrank by.
    fn compact_all(&mut self) -> u64 {
        if let Some(t) = self.tail
            && self.dead[t as usize] > 0
        {
            // Sealed: appends go to a fresh segment from now on.
            self.tail = None;
        }
        let before = self.used;
        loop {
            if self.compacting.is_none() {
                match self.pick_victim(true) {
                    Some(v) => self.start_victim(v),
                    None => break,
                }
            }
            self.compact_some(usize::MAX);
        }
        before.saturating_sub(self.used)
    }

    /// Indexes the records a restore appended (`slots`, in order, with
    /// their key hashes), later records winning over earlier ones with the
    /// same key, and builds the map directories from `map_entries`. Keys
    /// are read back from the arena only to tell apart two that share a
    /// hash tag, and pages never grow: each is sized for its records first.
    fn index_restored(&mut self, slots: &[(u64, Loc)], map_entries: &[(u64, Loc)]) {
        let mut per_page = [0usize; INDEX_PAGES];
        for &(hash, _) in slots {
            per_page[page_of(hash)] += 1;
        }
        let Store { segments, pages } = &mut self.store;
        for (page, n) in pages.iter_mut().zip(per_page) {
            Arc::make_mut(page).reserve(n, |s| rehash(segments, s));
        }
        let record = |loc: Loc| segments[loc.seg as usize].record(loc.off);
        let mut dead = Vec::new();
        for &(hash, loc) in slots {
            let page = Arc::make_mut(&mut pages[page_of(hash)]);
            let same = |s: &Slot| record(s.loc).0 == record(loc).0;
            match page.find_mut(hash, same) {
                Some(slot) => {
                    // The key again: the earlier record's bytes leave the
                    // state (they were counted as they were appended).
                    let (k, ov) = (record(loc).0, record(slot.loc).1);
                    dead.push((slot.loc, HEADER + k.len() + ov.len()));
                    self.bytes -= (k.len() + ov.len()) as u64;
                    slot.loc = loc;
                }
                None => {
                    // Epoch 0: a fresh shard's epoch is 1, so nothing
                    // restored counts as changed.
                    let slot = Slot { loc, epoch: 0 };
                    page.insert_unique(hash, slot, |s| rehash(segments, s));
                    self.entries += 1;
                }
            }
        }
        let replaced: std::collections::HashSet<(u32, u32)> =
            dead.iter().map(|(l, _)| (l.seg, l.off)).collect();
        for (loc, rec) in dead {
            self.kill(loc, rec);
        }
        // The restored entries are the new epoch's starting point.
        self.epoch_entries = self.entries;
        // Map directories: gathered unordered, then each sorted once.
        let store = &self.store;
        for &(h, loc) in map_entries {
            if replaced.contains(&(loc.seg, loc.off)) {
                continue;
            }
            let k = store.record(loc).0;
            let base = &k[..split_of(k)];
            match self.maps.find_mut(h, |d| dir_is(store, d, h, base)) {
                Some(d) => d.locs.push(loc),
                None => {
                    let dir = MapDir {
                        hash: h,
                        locs: vec![loc],
                    };
                    self.maps.insert_unique(h, dir, |d| d.hash);
                }
            }
        }
        for d in self.maps.iter_mut() {
            let split = split_of(store.record(d.locs[0]).0);
            d.locs.sort_unstable_by(|a, b| {
                user_key(store, *a, split).cmp(user_key(store, *b, split))
            });
        }
    }

    fn index_bytes(&self) -> u64 {
        let pages: usize = self.store.pages.iter().map(|p| p.allocation_size()).sum();
        let dirs: usize = self
            .maps
            .iter()
            .map(|d| d.locs.capacity() * std::mem::size_of::<Loc>())
            .sum();
        (pages + self.maps.allocation_size() + dirs) as u64
    }
}

/// Where the base of `key` ends. Keys that are not well-formed state keys are
/// stored whole as a base, which keeps the backend total over all byte strings.
fn split_of(key: &[u8]) -> usize {
    split_base(key).unwrap_or(key.len())
}

/// The record length of an entry, or a clear error if it cannot be stored.
fn checked_record(key: &[u8], value: &[u8]) -> Result<usize> {
    record_len(key.len(), value.len()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "memory backend entries are limited to 4 GiB: key_len={} value_len={}",
            key.len(),
            value.len()
        ))
    })
}

/// A concurrent in-memory state backend. See the crate docs for the design.
#[derive(Debug)]
pub struct MemoryBackend {
    /// Shared with the snapshots that have not taken their shards' stores
    /// yet.
    shards: Arc<[RwLock<Shard>]>,
    mask: u64,
    /// The first shard of each of the job's key groups
    /// ([`MemoryConfig::max_parallelism`]): a lookup, so that placing a key
    /// costs no division.
    first_shard: Box<[u16]>,
    /// Shards per key group (a power of two; 1 when shards hold key-group
    /// ranges).
    per_key_group: u64,
    /// The shards of each snapshot partition (see [`MemoryBackend::cells`]).
    cells: Arc<[Range<usize>]>,
    segment_bytes: usize,
    /// What a snapshot call needs from the allocator, kept from one call
    /// to the next (see [`Spare`]).
    spare: Arc<Mutex<Spare>>,
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
        let segment_bytes = config.segment_bytes.clamp(64, 1 << 30);
        // More shards than key groups: each key group gets its own power of
        // two of them; fewer: each shard a contiguous range of key groups.
        let key_groups = usize::from(config.max_parallelism.max(1));
        let per = if key_groups < n {
            1 << (n / key_groups).ilog2()
        } else {
            1
        };
        let first_shard = (0..key_groups)
            .map(|kg| {
                let first = if per > 1 {
                    kg * per
                } else {
                    kg * n / key_groups
                };
                u16::try_from(first).unwrap_or(u16::MAX)
            })
            .collect();
        MemoryBackend {
            shards: (0..n)
                .map(|_| RwLock::new(Shard::new(segment_bytes)))
                .collect(),
            mask: n as u64 - 1,
            first_shard,
            per_key_group: per as u64,
            cells: Self::cells(n, key_groups, per),
            segment_bytes,
            spare: Arc::new(Mutex::new(Spare::new(n))),
        }
    }

    /// Snapshot partitions: one per shard when shards hold key-group
    /// ranges, one per key group when a key group spreads over several
    /// shards (plus one for the shards outside them), so that no key group
    /// is split between partitions and the checkpoint encoder gets each
    /// key group's records from one partition.
    fn cells(shards: usize, key_groups: usize, per: usize) -> Arc<[Range<usize>]> {
        if per == 1 {
            return (0..shards).map(|i| i..i + 1).collect();
        }
        let spread = key_groups * per;
        (0..key_groups)
            .map(|k| k * per..(k + 1) * per)
            .chain((spread < shards).then_some(spread..shards))
            .collect()
    }

    /// Compacts every shard now: the live records of every segment holding
    /// dead bytes are copied together and the old segments released.
    /// Returns the bytes the arenas shrank by. Segments a snapshot still
    /// holds are compacted too; their memory returns when the snapshot is
    /// dropped. Writes compact in small steps on their own, so this is only
    /// needed to reclaim everything at once (after a large delete, say).
    pub fn compact(&self) -> u64 {
        let mut reclaimed = 0;
        for i in 0..self.shards.len() {
            reclaimed += self.write(i).compact_all();
        }
        tracing::debug!(reclaimed_bytes = reclaimed, "memory backend compacted");
        reclaimed
    }

    fn keyed(&self, key: &[u8]) -> (usize, Keyed) {
        let split = split_of(key);
        let hash = key_hash(key);
        (self.shard_of(key, split, hash), Keyed { split, hash })
    }

    /// The shard of a key whose base ends at `split` (`hash` is the key's
    /// [`key_hash`]): chosen by its key group (the first two bytes of a
    /// state key) when that is one of the job's, so that shards hold whole
    /// key groups; within a key group spread over several shards, and for
    /// any other key, by the hash of the base (so a map state's entries
    /// share a shard). The shard bits (40 and up) are apart from those an
    /// index page uses (the low bits, bits 32–33 and the top seven).
    fn shard_of(&self, key: &[u8], split: usize, hash: u64) -> usize {
        // A key that is its own base (a value state's) has its hash already.
        let base = || {
            if split == key.len() {
                hash >> 40
            } else {
                key_hash(&key[..split]) >> 40
            }
        };
        match self.key_group_shard(key) {
            Some(first) if self.per_key_group == 1 => first,
            Some(first) => first + (base() & (self.per_key_group - 1)) as usize,
            None => (base() & self.mask) as usize,
        }
    }

    /// The first shard of the key group of `key` (its first two bytes),
    /// when that is one of the job's key groups.
    fn key_group_shard(&self, key: &[u8]) -> Option<usize> {
        let b = key.first_chunk::<2>()?;
        let first = self.first_shard.get(usize::from(u16::from_be_bytes(*b)))?;
        Some(usize::from(*first))
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        // A panic while a shard was locked cannot leave a half-applied
        // change visible to a later reader in a way that breaks memory
        // safety, and the index is updated after the bytes it points to
        // are written. So a poisoned lock is reused.
        self.shards[i]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        let mut g = self.shards[i]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Before anything changes, a snapshot still waiting for this
        // shard gets the store as it was (which makes its segments and
        // pages shared, so the change copies what it touches). A slot only
        // the shard still holds belongs to a snapshot already dropped, and
        // one already filled was taken by the snapshot's reader: neither
        // needs a copy.
        if let Some(slot) = g.pending.take()
            && Arc::strong_count(&slot) > 1
            && slot.get().is_none()
        {
            let _ = slot.set(g.store.clone());
        }
        g
    }

    /// A bulk restore into this backend ([`StateBackend::bulk_restore`]).
    fn bulk(&self) -> MemoryBulk<'_> {
        MemoryBulk {
            backend: self,
            taken: Mutex::new(Vec::new()),
        }
    }

    /// Every shard's write lock. Always in ascending index order, like
    /// `write_batch`, so the two never deadlock.
    fn lock_all(&self) -> SmallVec<[RwLockWriteGuard<'_, Shard>; INLINE_GUARDS]> {
        (0..self.shards.len()).map(|i| self.write(i)).collect()
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        lock(&self.spare)
    }

    /// Every entry with `keep(key)` true, sorted by key, reading shard by
    /// shard (a scan is not a consistent cut across shards).
    fn scan_all(&self, keep: &dyn Fn(&[u8]) -> bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let shard = self.read(i);
            shard.store.for_each(&mut |k, v| {
                if keep(k) {
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
        let (i, k) = self.keyed(key);
        let shard = self.read(i);
        Ok(shard.store.get(key, k.hash).map(<[u8]>::to_vec))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let rec = checked_record(key, value)?;
        let (i, k) = self.keyed(key);
        self.write(i).put(key, k, value, rec);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        let (i, k) = self.keyed(key);
        self.write(i).delete(key, k);
        Ok(())
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        let mutations = batch.into_mutations();
        // Everything that can fail is checked before a lock is taken, so a
        // batch is applied whole or not at all.
        let mut placed = Vec::with_capacity(mutations.len());
        for m in &mutations {
            let rec = match m {
                Mutation::Put { key, value } => checked_record(key, value)?,
                Mutation::Delete { .. } => 0,
            };
            let (i, k) = self.keyed(m.key());
            placed.push((i, k, rec));
        }
        let mut order: Vec<usize> = placed.iter().map(|p| p.0).collect();
        order.sort_unstable();
        order.dedup();
        // Hold every touched shard at once so a snapshot sees all of the
        // batch or none of it.
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, self.write(i))).collect();
        for (m, (shard, k, rec)) in mutations.iter().zip(&placed) {
            let g = guards
                .binary_search_by_key(shard, |(i, _)| *i)
                .map_err(|_| Error::Internal("write batch lost a shard lock".into()))?;
            guards[g].1.apply(m, *k, *rec);
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // If the prefix contains a whole base, every matching key has that
        // base (all fields are length-prefixed), so only one shard and one
        // map directory are read.
        let Some(split) = split_base(prefix) else {
            return self.scan_all(&|k| k.starts_with(prefix));
        };
        let (base, uk_prefix) = prefix.split_at(split);
        let shard = self.read(self.shard_of(prefix, split, key_hash(prefix)));
        let store = &shard.store;
        let mut out = Vec::new();
        if uk_prefix.is_empty()
            && let Some(v) = store.get(base, key_hash(base))
        {
            out.push((base.to_vec(), v.to_vec()));
        }
        if let Some(dir) = shard.dir(base) {
            let start = dir
                .locs
                .partition_point(|l| user_key(store, *l, split) < uk_prefix);
            for loc in &dir.locs[start..] {
                let (k, v) = store.record(*loc);
                if !k[split..].starts_with(uk_prefix) {
                    break;
                }
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_all(&|k| k >= start && k < end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        // Everything the call needs is taken before the locks: under
        // allocator contention a malloc inside the locked section was
        // measured to hold every writer for tens of milliseconds. And it
        // comes from the backend's spares, so the call asks the allocator
        // for nothing of 1 KiB or more (see `Spare`). Under the locks each
        // shard only gets its slot: cloning its store there (a reference
        // count per segment and index page, each in memory untouched since
        // the last checkpoint) took 6–10 ms at 1 GiB after an idle interval
        // on this project's test machine. The store is taken when the shard
        // is next locked (`write`, `MemorySnapshot::store`).
        let Taken {
            mut slots,
            mut stores,
            mut changes,
            mut discarded,
        } = self.spare().take(self.shards.len());
        let mut guards = self.lock_all();
        // A shard that gave up its change set makes a changes snapshot a
        // full one (its kind says so).
        let kind = match kind {
            SnapshotKind::Changes if guards.iter().any(|g| g.changes_lost) => {
                tracing::debug!("memory backend answers a changes snapshot with a full one");
                SnapshotKind::Full
            }
            kind => kind,
        };
        let mut entries = 0usize;
        for g in guards.iter_mut() {
            let changed = std::mem::take(&mut g.changed);
            g.changes_lost = false;
            g.next_epoch();
            // Only shards with changes are held by a changes snapshot, so
            // writers to the others never copy anything.
            let held = kind == SnapshotKind::Full || !changed.is_empty();
            if held {
                // The spares hold a slot per shard (made there if missing).
                // The shard holds no earlier one: locking it (`write`)
                // gave any earlier slot its store and took it.
                let slot = slots.pop().unwrap_or_default();
                g.pending = Some(slot.clone());
                stores.push(Some(slot));
            } else {
                stores.push(None);
            }
            match kind {
                SnapshotKind::Full => {
                    entries += g.entries as usize;
                    // Freed after the locks are released.
                    discarded.push(changed);
                }
                SnapshotKind::Changes => {
                    entries += changed.len();
                    changes.push(changed);
                }
            }
        }
        drop(guards);
        let discarded_keys: usize = discarded.iter().map(ChangeSet::len).sum();
        if discarded_keys > 1 << 16 {
            // A bulk load's change set is hundreds of MiB: returning it to
            // the system takes milliseconds, which are not the caller's.
            // If the thread cannot be spawned the sets are freed here.
            let spare = self.spare.clone();
            let sets = std::mem::take(&mut discarded);
            let _ = std::thread::Builder::new()
                .name("highwater-memory-free".into())
                .spawn(move || {
                    let mut sets = sets;
                    sets.clear();
                    keep(&mut lock(&spare).discarded, sets);
                });
        }
        discarded.clear();
        {
            let mut spare = self.spare();
            keep(&mut spare.slots, slots);
            keep(&mut spare.discarded, discarded);
        }
        Ok(Arc::new(MemorySnapshot {
            kind,
            shards: self.shards.clone(),
            stores,
            changes,
            cells: self.cells.clone(),
            entries,
            spare: self.spare.clone(),
        }))
    }

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        // A bulk restore with one loader: the new shards are built aside
        // and the live state is replaced only when every entry was read,
        // so a failing source leaves it untouched. Entries are copied
        // once, from their block into their shard's arena, as blocks
        // arrive, each key hashed once and its hash kept; then every shard
        // is indexed from those hashes, on every core.
        let bulk = self.bulk();
        {
            let mut loader = bulk.loader();
            for block in blocks {
                for (k, v) in block?.puts() {
                    loader.put(k, v)?;
                }
            }
        }
        Box::new(bulk).commit()
    }

    /// True: the new shards are built aside and swapped in at the end.
    fn restore_is_atomic(&self) -> bool {
        true
    }

    /// Every loader fills shards of its own, aside; the commit merges and
    /// indexes them on every core and swaps them in.
    fn bulk_restore(&self) -> Option<Box<dyn BulkRestore + '_>> {
        Some(Box::new(self.bulk()))
    }

    fn clear(&self) -> Result<()> {
        let mut guards = self.lock_all();
        for g in guards.iter_mut() {
            **g = Shard::new(self.segment_bytes);
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
            s.arena_bytes += g.used;
            s.live_bytes += g.used - g.dead_total;
            s.index_bytes += g.index_bytes();
        }
        s
    }
}

/// The shards of `filling` (the parts of each shard), in order, each
/// indexed ([`Shard::restored`]), on up to as many threads as there are
/// cores.
fn restored_in_parallel(segment_bytes: usize, filling: Vec<Vec<Filling>>) -> Vec<Shard> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = filling.len().div_ceil(threads).max(1);
    let mut rest = filling.into_iter();
    let chunks: Vec<Vec<Vec<Filling>>> = std::iter::from_fn(|| {
        let chunk: Vec<Vec<Filling>> = rest.by_ref().take(per).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
    .collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|f| Shard::restored(segment_bytes, f))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Slots and vectors a snapshot call would otherwise ask the allocator
/// for, kept from one call to the next, so that the call asks it for
/// nothing of 1 KiB or more (with up to [`INLINE_GUARDS`] shards). glibc's
/// allocator answers the first such request after small blocks were freed
/// by merging every one of them (`malloc_consolidate`): after a checkpoint
/// interval that memory is cold, and a profile of the state suite's
/// snapshot call after 15 idle seconds had nearly all of its 5 ms there
/// (docs/architecture.md). A dropped snapshot gives its vectors and its
/// slots (emptied) back.
#[derive(Debug)]
struct Spare {
    /// Empty slots that no snapshot and no shard holds.
    slots: Vec<Arc<OnceLock<Store>>>,
    /// Emptied [`MemorySnapshot::stores`] vectors.
    stores: Vec<Vec<Option<Arc<OnceLock<Store>>>>>,
    /// Emptied [`MemorySnapshot::changes`] vectors.
    changes: Vec<Vec<ChangeSet>>,
    /// The call's own: the change sets a full snapshot frees after the
    /// locks.
    discarded: Vec<ChangeSet>,
}

/// Snapshots alive at once whose slots and vectors [`Spare`] keeps; a
/// snapshot taken while more are alive makes its own.
const SPARE_SNAPSHOTS: usize = 2;

/// What one snapshot call uses, taken from the [`Spare`]s before the
/// locks.
struct Taken {
    /// At least a slot per shard.
    slots: Vec<Arc<OnceLock<Store>>>,
    stores: Vec<Option<Arc<OnceLock<Store>>>>,
    changes: Vec<ChangeSet>,
    discarded: Vec<ChangeSet>,
}

impl Spare {
    fn new(shards: usize) -> Spare {
        Spare {
            slots: (0..shards * SPARE_SNAPSHOTS)
                .map(|_| Arc::default())
                .collect(),
            stores: (0..SPARE_SNAPSHOTS)
                .map(|_| Vec::with_capacity(shards))
                .collect(),
            changes: (0..SPARE_SNAPSHOTS)
                .map(|_| Vec::with_capacity(shards))
                .collect(),
            discarded: Vec::with_capacity(shards),
        }
    }

    /// A slot for each of `n` shards (made here if missing) and empty
    /// vectors.
    fn take(&mut self, n: usize) -> Taken {
        let mut slots = std::mem::take(&mut self.slots);
        let short = n.saturating_sub(slots.len());
        slots.extend((0..short).map(|_| Arc::default()));
        Taken {
            slots,
            stores: self.stores.pop().unwrap_or_else(|| Vec::with_capacity(n)),
            changes: self.changes.pop().unwrap_or_else(|| Vec::with_capacity(n)),
            discarded: std::mem::take(&mut self.discarded),
        }
    }
}

/// Puts `v`'s elements into `spare`, keeping the larger of the two
/// vectors' buffers (another snapshot call may have taken the spare one
/// meanwhile and left an empty vector).
fn keep<T>(spare: &mut Vec<T>, mut v: Vec<T>) {
    if spare.capacity() < v.capacity() {
        std::mem::swap(spare, &mut v);
    }
    spare.append(&mut v);
}

fn lock(spare: &Mutex<Spare>) -> std::sync::MutexGuard<'_, Spare> {
    spare.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frozen view: the shard stores at snapshot time, plus the changed keys
/// for a change snapshot.
struct MemorySnapshot {
    kind: SnapshotKind,
    /// The backend's shards, to take a store from when no writer has
    /// given it yet (see [`MemorySnapshot::store`]).
    shards: Arc<[RwLock<Shard>]>,
    /// Per shard, the slot of its store at the snapshot, or `None` for a
    /// shard a changes snapshot does not hold.
    stores: Vec<Option<Arc<OnceLock<Store>>>>,
    changes: Vec<ChangeSet>,
    /// The shards of each partition: those holding the same key groups
    /// ([`MemoryBackend::cells`]).
    cells: Arc<[Range<usize>]>,
    entries: usize,
    /// Where the slots and vectors go back to when dropped.
    spare: Arc<Mutex<Spare>>,
}

impl Drop for MemorySnapshot {
    /// Takes this snapshot's slots back from the shards that still hold
    /// them, so that the stores its reader filled (a count on every
    /// segment and index page) go now, while this thread has just read
    /// them, rather than under the next snapshot call's locks, an interval
    /// later, when that memory is cold (the state suite's first full
    /// checkpoint paused 12.1 and 33.0 ms in its snapshot before this,
    /// 0.47 and 0.45 ms after, docs/architecture.md). A shard locked by
    /// someone else right now is skipped: whoever locks that shard next
    /// drops the slot (`MemoryBackend::write`), one shard's few counts.
    fn drop(&mut self) {
        for (shard, slot) in self.stores.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let mut g = match self.shards[shard].try_write() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            if g.pending.as_ref().is_some_and(|p| Arc::ptr_eq(p, slot)) {
                g.pending = None;
            }
        }
        // Emptied here, before the spares are locked: the stores the
        // reader took and the change sets go on this thread, as before.
        for slot in self.stores.iter_mut().flatten() {
            if let Some(slot) = Arc::get_mut(slot) {
                drop(slot.take());
            }
        }
        self.changes.clear();
        let mut spare = lock(&self.spare);
        let most = self.shards.len() * SPARE_SNAPSHOTS;
        for mut slot in self.stores.drain(..).flatten() {
            // Only a slot nothing else holds (not a shard skipped above)
            // is kept.
            if spare.slots.len() < most
                && Arc::get_mut(&mut slot).is_some_and(|s| s.get().is_none())
            {
                spare.slots.push(slot);
            }
        }
        if spare.stores.len() < SPARE_SNAPSHOTS {
            spare.stores.push(std::mem::take(&mut self.stores));
        }
        if spare.changes.len() < SPARE_SNAPSHOTS {
            spare.changes.push(std::mem::take(&mut self.changes));
        }
    }
}

impl MemorySnapshot {
    /// The store of `shard` at the snapshot, if it holds the shard. Until a
    /// writer gave it (before its first change after the snapshot), the
    /// shard's store is still what it was at the snapshot: taken under the
    /// shard's lock, so no writer can change it meanwhile. The lock is
    /// taken before the slot is filled, never inside: a writer filling it
    /// holds the lock.
    fn store(&self, shard: usize) -> Option<&Store> {
        let slot = self.stores[shard].as_ref()?;
        if let Some(store) = slot.get() {
            return Some(store);
        }
        let g = self.shards[shard]
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Some(slot.get_or_init(|| g.store.clone()))
    }
}

impl StateSnapshot for MemorySnapshot {
    fn kind(&self) -> SnapshotKind {
        self.kind
    }

    fn partitions(&self) -> usize {
        self.cells.len()
    }

    fn for_each_in_partition(
        &self,
        partition: usize,
        f: &mut highwater_core::EntryVisitor<'_>,
    ) -> Result<()> {
        self.for_each_borrowed(partition, &mut |k, v| f(k, v))
            .map(|_| ())
    }

    fn for_each_borrowed<'s>(
        &'s self,
        partition: usize,
        f: &mut highwater_core::BorrowedEntryVisitor<'s, '_>,
    ) -> Result<bool> {
        let Some(cell) = self.cells.get(partition) else {
            return Err(Error::InvalidArgument(format!(
                "snapshot partition out of range: partition={partition} partitions={}",
                self.cells.len()
            )));
        };
        for shard in cell.clone() {
            let Some(store) = self.store(shard) else {
                continue;
            };
            match self.kind {
                SnapshotKind::Full => store.for_each(&mut |k, v| f(k, Some(v)))?,
                SnapshotKind::Changes => {
                    for (key, hash) in self.changes[shard].iter() {
                        f(key, store.get(key, hash))?;
                    }
                }
            }
        }
        Ok(true)
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

    /// A bulk load's change set would hold every key a second time: past
    /// twice the keys the shard began the epoch with it is given up, the changes
    /// snapshot comes back full (deletes absent, as in any full snapshot),
    /// and the next epoch is tracked exactly again.
    #[test]
    fn a_change_set_past_its_bound_is_given_up_for_a_full_snapshot() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 2,
            segment_bytes: 4096,
            ..MemoryConfig::default()
        });
        let mut model = std::collections::BTreeMap::new();
        for i in 0..20_000u32 {
            let k = key(&i.to_be_bytes(), b"");
            b.put(&k, b"value").unwrap();
            model.insert(k, b"value".to_vec());
        }
        let gone = key(&7u32.to_be_bytes(), b"");
        b.delete(&gone).unwrap();
        model.remove(&gone);
        assert!(
            b.shards.iter().any(|s| s.read().unwrap().changes_lost),
            "the load gave the change set up"
        );
        assert!(
            b.shards
                .iter()
                .all(|s| s.read().unwrap().changed.len() <= CHANGES_FLOOR),
            "and holds nothing for it"
        );
        let s = b.snapshot(SnapshotKind::Changes).unwrap();
        assert_eq!(s.kind(), SnapshotKind::Full);
        let got: std::collections::BTreeMap<_, _> = collect(&*s)
            .into_iter()
            .map(|(k, v)| (k, v.expect("no deletes in a full snapshot")))
            .collect();
        assert_eq!(got, model);

        let k1 = key(&1u32.to_be_bytes(), b"");
        let k2 = key(&2u32.to_be_bytes(), b"");
        b.put(&k1, b"other").unwrap();
        b.delete(&k2).unwrap();
        let s = b.snapshot(SnapshotKind::Changes).unwrap();
        assert_eq!(s.kind(), SnapshotKind::Changes);
        let mut got = collect(&*s);
        got.sort();
        assert_eq!(got, vec![(k1, Some(b"other".to_vec())), (k2, None)]);

        // Rewriting every key (an interval that touches all the state) is
        // still tracked: only new keys past twice the epoch's start give
        // the set up. (The first bound, an eighth of the shard's bytes,
        // made every checkpoint of the demo a full one.)
        for k in model.keys() {
            b.put(k, b"again").unwrap();
        }
        let s = b.snapshot(SnapshotKind::Changes).unwrap();
        assert_eq!(s.kind(), SnapshotKind::Changes);
        assert_eq!(collect(&*s).len(), model.len());
    }

    /// Shards hold whole key groups, and snapshot partitions never split
    /// one: with fewer key groups than shards each spreads over its own
    /// shards by hash, with more each shard holds a contiguous range;
    /// keys outside the job's key groups are hashed over all shards.
    #[test]
    fn shards_and_partitions_hold_whole_key_groups() {
        let kg_key = |kg: u16, i: u32| {
            StateKey {
                key_group: KeyGroup(kg),
                operator: "op",
                state: "s",
                key: &i.to_be_bytes(),
                namespace: b"",
                user_key: b"",
            }
            .encode()
            .unwrap()
        };
        for (shards, key_groups) in [(8usize, 2u16), (8, 3), (4, 16), (4, 4)] {
            let b = MemoryBackend::with_config(MemoryConfig {
                shards,
                max_parallelism: key_groups,
                ..MemoryConfig::default()
            });
            let cells = &b.cells;
            for kg in 0..key_groups {
                let mut seen = std::collections::BTreeSet::new();
                for i in 0..200 {
                    let k = kg_key(kg, i);
                    seen.insert(b.shard_of(&k, split_of(&k), key_hash(&k)));
                }
                let cell = cells
                    .iter()
                    .position(|c| c.contains(seen.first().unwrap()))
                    .unwrap();
                assert!(
                    seen.iter().all(|s| cells[cell].contains(s)),
                    "{shards} shards, {key_groups} key groups: key group {kg} in shards {seen:?}, cells {cells:?}"
                );
                if usize::from(key_groups) < shards {
                    assert_eq!(
                        seen.len(),
                        shards / usize::from(key_groups),
                        "spread by hash"
                    );
                }
            }
            // Every shard is in exactly one partition.
            let mut covered: Vec<usize> = cells.iter().flat_map(|c| c.clone()).collect();
            covered.sort_unstable();
            assert_eq!(covered, (0..b.shards.len()).collect::<Vec<_>>());
            // Keys outside the key groups reach other shards too.
            let outside: std::collections::BTreeSet<usize> = (0..200)
                .map(|i| {
                    let k = kg_key(key_groups + 5, i);
                    b.shard_of(&k, split_of(&k), key_hash(&k))
                })
                .collect();
            assert!(outside.len() > 1, "{outside:?}");
        }
    }

    #[test]
    fn snapshot_survives_later_writes() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 4,
            ..MemoryConfig::default()
        });
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

    /// A snapshot read and dropped leaves nothing behind in the shards:
    /// no slot, so every segment and index page is the live state's alone
    /// again (one count each) and the next snapshot call has nothing to
    /// drop. A snapshot dropped while a reader holds a shard leaves that
    /// shard's slot to whoever locks the shard next (here the next
    /// snapshot).
    #[test]
    fn a_dropped_snapshot_leaves_no_store_in_the_shards() {
        let b = small_backend(4);
        for i in 0..200u32 {
            b.put(&key(&i.to_be_bytes(), b""), &[i as u8; 40]).unwrap();
        }
        let only_the_live_state = |b: &MemoryBackend| {
            b.shards.iter().all(|s| {
                let g = s.read().unwrap();
                g.pending.is_none()
                    && g.store.segments.iter().all(|x| Arc::strong_count(x) == 1)
                    && g.store.pages.iter().all(|x| Arc::strong_count(x) == 1)
            })
        };
        let snap = b.snapshot(SnapshotKind::Full).unwrap();
        assert_eq!(collect(&*snap).len(), 200);
        assert!(
            !only_the_live_state(&b),
            "the read snapshot holds the stores"
        );
        drop(snap);
        assert!(only_the_live_state(&b));

        let snap = b.snapshot(SnapshotKind::Full).unwrap();
        assert_eq!(collect(&*snap).len(), 200);
        let reader = b.shards[0].read().unwrap();
        drop(snap);
        drop(reader);
        assert!(b.shards[0].read().unwrap().pending.is_some());
        let next = b.snapshot(SnapshotKind::Full).unwrap();
        drop(next);
        assert!(only_the_live_state(&b));
    }

    /// A snapshot taken while an older one was not read yet leaves the
    /// older one its view (locking the shards for the newer one gives the
    /// older slots their stores), and slots the backend keeps for reuse
    /// come back empty: a third snapshot, after both were read and
    /// dropped, sees the state of its own time, not theirs.
    #[test]
    fn snapshots_keep_their_views_across_newer_ones_and_reused_slots() {
        let b = small_backend(4);
        let k = |i: u32| key(&i.to_be_bytes(), b"");
        let values = |s: &dyn StateSnapshot| -> Vec<(Vec<u8>, u8)> {
            collect(s)
                .into_iter()
                .map(|(k, v)| (k, v.expect("a full snapshot has no deletes")[0]))
                .collect()
        };
        let at = |round: u8, keys: std::ops::Range<u32>| -> Vec<(Vec<u8>, u8)> {
            let mut v: Vec<_> = keys.map(|i| (k(i), round)).collect();
            v.sort();
            v
        };
        for i in 0..200u32 {
            b.put(&k(i), &[1; 40]).unwrap();
        }
        let older = b.snapshot(SnapshotKind::Full).unwrap();
        let newer = b.snapshot(SnapshotKind::Full).unwrap();
        for i in 0..200u32 {
            b.put(&k(i), &[2; 40]).unwrap();
        }
        for i in 150..200u32 {
            b.delete(&k(i)).unwrap();
        }
        assert_eq!(values(&*older), at(1, 0..200));
        assert_eq!(values(&*newer), at(1, 0..200));
        drop((older, newer));
        for round in 3..6u8 {
            let third = b.snapshot(SnapshotKind::Full).unwrap();
            for i in 0..150u32 {
                b.put(&k(i), &[round; 40]).unwrap();
            }
            assert_eq!(values(&*third), at(round - 1, 0..150));
        }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// A restore holds what a `BTreeMap` fed the same puts holds (the
        /// later put of a key wins, within a block and across blocks), over
        /// any number of shards, map directories included: keys of
        /// the job's key groups, of others, and bytes that are no state
        /// key at all.
        #[test]
        fn a_restore_matches_a_model(
            records in proptest::collection::vec((0u8..5, 0u8..6, 0u8..3, 0usize..40), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
            shards in proptest::sample::select(vec![1usize, 2, 4, 16]),
        ) {
            let puts = model_puts(records);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(puts.len())).collect();
            cuts.push(0);
            cuts.push(puts.len());
            cuts.sort_unstable();
            let blocks: Vec<RecordBlock> = cuts
                .windows(2)
                .map(|w| puts[w[0]..w[1]].iter().map(|(k, v)| (k, v)).collect())
                .collect();
            let b = small_backend(shards);
            b.put(b"old", b"state").unwrap();
            b.restore(&mut blocks.into_iter().map(Ok)).unwrap();
            check_against_model(&b, &puts)?;
        }

        /// A bulk restore fed from several threads at once (each key
        /// through one loader, as the recovery engine loads each range
        /// through one) holds what the model holds, and takes writes after
        /// it as a restore does; one dropped uncommitted changes nothing.
        #[test]
        fn a_bulk_restore_from_several_loaders_matches_a_model(
            records in proptest::collection::vec((0u8..5, 0u8..6, 0u8..3, 0usize..40), 0..300),
            loaders in 1usize..5,
            shards in proptest::sample::select(vec![1usize, 2, 4, 16]),
            later in proptest::collection::vec((0u8..5, 0u8..6, 0u8..3, 0usize..40), 0..40),
        ) {
            let puts = model_puts(records);
            // Each key's puts, in order, through one loader.
            let mut per_loader: Vec<Vec<&(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); loaders];
            for p in &puts {
                per_loader[xxh3_64(&p.0) as usize % loaders].push(p);
            }
            let b = small_backend(shards);
            b.put(b"old", b"state").unwrap();
            let feed = |bulk: &dyn BulkRestore| {
                std::thread::scope(|s| {
                    for mine in &per_loader {
                        s.spawn(move || {
                            let mut loader = bulk.loader();
                            for (k, v) in mine {
                                loader.put(k, v).unwrap();
                            }
                        });
                    }
                });
            };
            let dropped = b.bulk_restore().unwrap();
            feed(&*dropped);
            drop(dropped);
            proptest::prop_assert_eq!(
                b.scan_range(&[], &[0xff; 4]).unwrap(),
                vec![(b"old".to_vec(), b"state".to_vec())]
            );
            let bulk = b.bulk_restore().unwrap();
            feed(&*bulk);
            bulk.commit().unwrap();
            check_against_model(&b, &puts)?;
            // Appends after the restore land in the merged shards' tails.
            let later = model_puts(later);
            for (k, v) in &later {
                b.put(k, v).unwrap();
            }
            let mut all = puts.clone();
            all.extend(later);
            check_against_model(&b, &all)?;
        }
    }

    /// A state key (or, for `kg` 4, bytes that are none) of a generated
    /// record, and its value.
    fn model_puts(records: Vec<(u8, u8, u8, usize)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        records
            .into_iter()
            .map(|(kg, k, uk, len)| {
                let user_key = [uk];
                let key = match kg {
                    // Not a state key: placed by the hash of all its bytes.
                    4 => vec![0xee, k],
                    _ => StateKey {
                        key_group: KeyGroup(u16::from(kg)),
                        operator: "op",
                        state: if uk == 0 { "v" } else { "m" },
                        key: &[k],
                        namespace: b"",
                        // A value state's key has no user key.
                        user_key: if uk == 0 { b"" } else { &user_key },
                    }
                    .encode()
                    .unwrap(),
                };
                (key, vec![kg ^ k; len])
            })
            .collect()
    }

    /// Tiny segments, so that records span many of them.
    fn small_backend(shards: usize) -> MemoryBackend {
        MemoryBackend::with_config(MemoryConfig {
            shards,
            segment_bytes: 256,
            max_parallelism: 3,
        })
    }

    /// `b` holds exactly what a `BTreeMap` fed `puts` in order holds,
    /// through every read path, before and after compaction.
    fn check_against_model(
        b: &MemoryBackend,
        puts: &[(Vec<u8>, Vec<u8>)],
    ) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        let model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = puts.iter().cloned().collect();
        let all = b.scan_range(&[], &[0xff; 4]).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
        proptest::prop_assert_eq!(all, want);
        let stats = b.stats();
        proptest::prop_assert_eq!(stats.entries, model.len() as u64);
        let bytes: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
        proptest::prop_assert_eq!(stats.bytes, bytes as u64);
        for (k, v) in &model {
            let got = b.get(k).unwrap();
            proptest::prop_assert_eq!(got.as_ref(), Some(v));
            // A map entry is found by a scan of its map.
            let split = split_of(k);
            if split < k.len() {
                let scan = b.scan_prefix(&k[..split]).unwrap();
                proptest::prop_assert!(scan.iter().any(|(sk, sv)| sk == k && sv == v));
            }
        }
        // Replaced records are dead bytes that compaction reclaims.
        b.compact();
        let after = b.stats();
        proptest::prop_assert_eq!(after.arena_bytes, after.live_bytes);
        proptest::prop_assert_eq!(after.entries, model.len() as u64);
        Ok(())
    }

    #[test]
    fn failed_restore_leaves_state_untouched() {
        let b = MemoryBackend::new();
        b.put(&key(b"a", b""), b"1").unwrap();
        let mut src = vec![
            Ok([(key(b"x", b""), b"2".to_vec())].into_iter().collect()),
            Err(Error::corrupt("artifact", "test")),
        ]
        .into_iter();
        assert!(b.restore(&mut src).is_err());
        assert_eq!(b.get(&key(b"a", b"")).unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(&key(b"x", b"")).unwrap(), None);
    }

    #[test]
    fn overwrites_are_compacted_with_bounded_dead_bytes() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 1,
            segment_bytes: 4096,
            ..MemoryConfig::default()
        });
        // Values change length on every round, so nothing is rewritten in
        // place and every overwrite leaves a dead record behind.
        for round in 0..50usize {
            for i in 0..100u32 {
                let v = vec![round as u8; 10 + (round + i as usize) % 7];
                b.put(&key(&i.to_be_bytes(), b""), &v).unwrap();
            }
        }
        let s = b.stats();
        assert_eq!(s.entries, 100);
        assert!(
            s.arena_bytes - s.live_bytes <= s.arena_bytes / 3 + 4096 * 2,
            "dead bytes not reclaimed: {s:?}"
        );
        for i in 0..100u32 {
            let v = b.get(&key(&i.to_be_bytes(), b"")).unwrap().unwrap();
            assert_eq!(v, vec![49u8; 10 + (49 + i as usize) % 7]);
        }
        let reclaimed = b.compact();
        let after = b.stats();
        assert_eq!(after.arena_bytes, after.live_bytes, "{after:?}");
        assert_eq!(s.arena_bytes - after.arena_bytes, reclaimed);
    }

    #[test]
    fn a_small_shard_living_in_its_tail_is_compacted_too() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 1,
            segment_bytes: 64 << 10,
            ..MemoryConfig::default()
        });
        // ≈ 3 KiB live, 600 KiB written: without sealing the tail, dead
        // bytes would pile up to a whole segment before anything moved.
        for round in 0..200usize {
            for i in 0..100u32 {
                let v = vec![round as u8; 10 + (round + i as usize) % 7];
                b.put(&key(&i.to_be_bytes(), b""), &v).unwrap();
            }
            let s = b.stats();
            assert!(s.arena_bytes <= 24 << 10, "round {round}: {s:?}");
        }
        for i in 0..100u32 {
            let v = b.get(&key(&i.to_be_bytes(), b"")).unwrap().unwrap();
            assert_eq!(v, vec![199u8; 10 + (199 + i as usize) % 7]);
        }
    }

    #[test]
    fn change_tracking_survives_the_epoch_counter_wrapping() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 1,
            ..MemoryConfig::default()
        });
        let (x, y) = (key(b"x", b""), key(b"y", b""));
        b.put(&x, b"1").unwrap();
        b.put(&y, b"1").unwrap();
        b.write(0).epoch = u32::MAX;
        // Stamp x with the last epoch before the wrap.
        b.put(&x, b"2").unwrap();
        drop(b.snapshot(SnapshotKind::Changes).unwrap());
        assert_eq!(b.write(0).epoch, 1);
        // After the wrap both keys count as unchanged, and a write to
        // either is reported once.
        b.put(&x, b"3").unwrap();
        b.put(&x, b"4").unwrap();
        let changes = b.snapshot(SnapshotKind::Changes).unwrap();
        assert_eq!(collect(&*changes), vec![(x.clone(), Some(b"4".to_vec()))]);
    }

    #[test]
    fn same_length_values_are_rewritten_in_place_unless_a_snapshot_holds_them() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 1,
            segment_bytes: 4096,
            ..MemoryConfig::default()
        });
        let k = key(b"c", b"");
        b.put(&k, b"0001").unwrap();
        let used = b.stats().arena_bytes;
        b.put(&k, b"0002").unwrap();
        assert_eq!(b.stats().arena_bytes, used);
        let snap = b.snapshot(SnapshotKind::Full).unwrap();
        b.put(&k, b"0003").unwrap();
        assert!(b.stats().arena_bytes > used);
        assert_eq!(collect(&*snap), vec![(k.clone(), Some(b"0002".to_vec()))]);
        assert_eq!(b.get(&k).unwrap(), Some(b"0003".to_vec()));
    }

    #[test]
    fn records_larger_than_a_segment_get_their_own() {
        let b = MemoryBackend::with_config(MemoryConfig {
            shards: 2,
            segment_bytes: 64,
            ..MemoryConfig::default()
        });
        let big = vec![7u8; 1000];
        b.put(&key(b"big", b""), &big).unwrap();
        b.put(&key(b"small", b""), b"s").unwrap();
        assert_eq!(b.get(&key(b"big", b"")).unwrap(), Some(big));
        b.delete(&key(b"big", b"")).unwrap();
        b.compact();
        let s = b.stats();
        assert_eq!(s.entries, 1);
        assert_eq!(s.arena_bytes, s.live_bytes);
    }
}
