//! The index of a shard's page: an open-addressing hash table whose
//! buckets are one cache line each, holding four entries and their
//! one-byte hash tags side by side.
//!
//! Why not `hashbrown`: its tags and its entries live in two separate
//! arrays, so a lookup in a table larger than the cache misses twice
//! before it reaches the record (once on the tags, once on the entry), and
//! on two different memory pages. Here the tags and the entries of a
//! bucket share its 64 bytes: one miss, one page, then the record. A get
//! or an overwrite of a random key of a large state is a chain of
//! dependent cache misses, so that is a third fewer of them (see
//! docs/architecture.md).
//!
//! Collisions probe the next bucket (linear probing by buckets). Each
//! bucket counts the entries that were placed beyond it because it was
//! full (`overflow`, F14's scheme), so a lookup stops at the first bucket
//! no entry passed, and a removal leaves no tombstone: it decrements the
//! counts on the way from the entry's home bucket. A count that reached
//! `u8::MAX` stays there (lookups then look one bucket further, never
//! less far). The table grows by doubling when more than
//! [`MAX_LOAD_NUM`]/[`MAX_LOAD_DEN`] of its entries are used, re-hashing
//! each entry with the caller's hasher (the keys are in the arena, not in
//! the table).

use std::fmt;

/// Entries per bucket.
const WAYS: usize = 4;
/// The table grows before more than 13/16 of its entries are used.
const MAX_LOAD_NUM: usize = 13;
const MAX_LOAD_DEN: usize = 16;
/// Buckets of a table's first allocation.
const MIN_BUCKETS: usize = 4;

/// Four entries and their tags, in one cache line for 12-byte entries.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket<T> {
    /// 0 where the entry is empty, otherwise the entry's [`tag`].
    tags: [u8; WAYS],
    /// Entries whose probe passed this bucket because it was full.
    overflow: u8,
    entries: [T; WAYS],
}

impl<T: Copy + Default> Bucket<T> {
    fn empty() -> Bucket<T> {
        Bucket {
            tags: [0; WAYS],
            overflow: 0,
            entries: [T::default(); WAYS],
        }
    }

    /// The bucket's entries in use.
    fn live(&self) -> impl Iterator<Item = &T> {
        self.entries
            .iter()
            .zip(self.tags)
            .filter(|(_, t)| *t != 0)
            .map(|(e, _)| e)
    }

    /// The bucket's entries in use, to change.
    fn live_mut(&mut self) -> impl Iterator<Item = &mut T> {
        let tags = self.tags;
        self.entries
            .iter_mut()
            .zip(tags)
            .filter(|(_, t)| *t != 0)
            .map(|(e, _)| e)
    }
}

/// The tag of a hash: its top byte, never 0 (0 marks an empty entry).
/// Buckets are chosen by the low bits, so the two are independent.
fn tag(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

/// A hash table of `T`s found by a hash and an equality test, like
/// `hashbrown::HashTable` (the subset the memory backend uses).
#[derive(Clone)]
pub(crate) struct Table<T> {
    /// Empty, or a power of two of buckets.
    buckets: Vec<Bucket<T>>,
    len: usize,
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl<T: Copy + Default> Default for Table<T> {
    fn default() -> Self {
        Table::new()
    }
}

impl<T: Copy + Default> Table<T> {
    /// An empty table; it allocates on its first insert.
    pub fn new() -> Table<T> {
        Table {
            buckets: Vec::new(),
            len: 0,
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries the table holds before it grows.
    fn capacity(&self) -> usize {
        self.buckets.len() * WAYS * MAX_LOAD_NUM / MAX_LOAD_DEN
    }

    /// Bytes of the table's allocation.
    pub fn allocation_size(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket<T>>()
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.buckets.len() - 1)
    }

    /// The bucket and way of the entry with `hash` for which `eq` holds.
    fn position(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<(usize, usize)> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let t = tag(hash);
        let mut b = self.home(hash);
        // Bounded: at most every bucket once.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            for (w, entry) in bucket.entries.iter().enumerate() {
                if bucket.tags[w] == t && eq(entry) {
                    return Some((b, w));
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = (b + 1) & mask;
        }
        None
    }

    /// The entry with `hash` for which `eq` holds.
    pub fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        let (b, w) = self.position(hash, eq)?;
        Some(&self.buckets[b].entries[w])
    }

    /// The entry with `hash` for which `eq` holds, to change it (not in a
    /// way that changes its hash).
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        let (b, w) = self.position(hash, eq)?;
        Some(&mut self.buckets[b].entries[w])
    }

    /// Removes and returns the entry with `hash` for which `eq` holds.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<T> {
        let (b, w) = self.position(hash, eq)?;
        let mask = self.buckets.len() - 1;
        let bucket = &mut self.buckets[b];
        bucket.tags[w] = 0;
        let entry = bucket.entries[w];
        self.len -= 1;
        // Every bucket from the home to this one was full when the entry
        // was placed, and counted it.
        let mut p = self.home(hash);
        while p != b {
            let o = &mut self.buckets[p].overflow;
            if *o != u8::MAX {
                *o -= 1;
            }
            p = (p + 1) & mask;
        }
        Some(entry)
    }

    /// Inserts an entry the caller knows is not in the table yet. `hasher`
    /// gives the hash of any entry, for a table that grows.
    pub fn insert_unique(&mut self, hash: u64, entry: T, hasher: impl Fn(&T) -> u64) {
        if self.len >= self.capacity() {
            self.grow(self.len + 1, &hasher);
        }
        self.place(hash, entry);
    }

    /// Makes room for `additional` more entries without growing.
    pub fn reserve(&mut self, additional: usize, hasher: impl Fn(&T) -> u64) {
        let need = self.len.saturating_add(additional);
        if need > self.capacity() {
            self.grow(need, &hasher);
        }
    }

    /// Every entry, in bucket order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.buckets.iter().flat_map(Bucket::live)
    }

    /// Every entry, to change (not in a way that changes its hash).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.buckets.iter_mut().flat_map(Bucket::live_mut)
    }

    /// Puts `entry` in the first free way from its home bucket on; the
    /// caller made sure there is one.
    fn place(&mut self, hash: u64, entry: T) {
        let mask = self.buckets.len() - 1;
        let t = tag(hash);
        let mut b = self.home(hash);
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(w) = bucket.tags.iter().position(|&x| x == 0) {
                bucket.tags[w] = t;
                bucket.entries[w] = entry;
                self.len += 1;
                return;
            }
            bucket.overflow = bucket.overflow.saturating_add(1);
            b = (b + 1) & mask;
        }
    }

    /// Re-places every entry in a table of at least twice the buckets
    /// that holds `need` entries.
    fn grow(&mut self, need: usize, hasher: &impl Fn(&T) -> u64) {
        let mut n = (self.buckets.len() * 2).max(MIN_BUCKETS);
        while n * WAYS * MAX_LOAD_NUM / MAX_LOAD_DEN < need {
            n *= 2;
        }
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::empty(); n]);
        self.len = 0;
        for entry in old.iter().flat_map(Bucket::live) {
            self.place(hasher(entry), *entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Entries are (id, payload); the hash of an id is chosen so that many
    /// ids share a home bucket and a tag.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct E {
        id: u32,
        payload: u32,
    }

    fn hash_of(id: u32, spread: u32) -> u64 {
        let h = xxhash_rust::xxh3::xxh3_64(&(id % spread).to_le_bytes());
        // Few distinct hashes: same homes, same tags, different ids.
        h ^ u64::from(id / spread) << 60
    }

    #[test]
    fn a_bucket_is_one_cache_line_for_index_slots() {
        assert_eq!(std::mem::size_of::<Bucket<[u32; 3]>>(), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u32),
        Remove(u32),
        Update(u32, u32),
        Reserve(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u32..400, any::<u32>()).prop_map(|(i, p)| Op::Insert(i, p)),
            3 => (0u32..400).prop_map(Op::Remove),
            2 => (0u32..400, any::<u32>()).prop_map(|(i, p)| Op::Update(i, p)),
            1 => (0usize..200).prop_map(Op::Reserve),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The table against a `HashMap`: after every operation every id
        /// is found exactly when the model has it, with the model's
        /// payload, and iteration yields the model's entries.
        #[test]
        fn the_table_is_a_map(
            ops in proptest::collection::vec(op(), 0..600),
            spread in proptest::sample::select(vec![1u32, 3, 17, 1000]),
        ) {
            let mut t: Table<E> = Table::new();
            let mut model: HashMap<u32, u32> = HashMap::new();
            let hasher = |e: &E| hash_of(e.id, spread);
            for op in ops {
                match op {
                    Op::Insert(id, payload) => {
                        if let std::collections::hash_map::Entry::Vacant(v) = model.entry(id) {
                            v.insert(payload);
                            t.insert_unique(hash_of(id, spread), E { id, payload }, hasher);
                        }
                    }
                    Op::Remove(id) => {
                        let got = t.remove(hash_of(id, spread), |e| e.id == id);
                        let want = model.remove(&id);
                        proptest::prop_assert_eq!(got.map(|e| e.payload), want);
                    }
                    Op::Update(id, payload) => {
                        if let Some(e) = t.find_mut(hash_of(id, spread), |e| e.id == id) {
                            e.payload = payload;
                        }
                        if let Some(p) = model.get_mut(&id) {
                            *p = payload;
                        }
                    }
                    Op::Reserve(n) => {
                        t.reserve(n, hasher);
                        proptest::prop_assert!(t.capacity() >= t.len() + n);
                    }
                }
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            for id in 0u32..400 {
                let got = t.find(hash_of(id, spread), |e| e.id == id).map(|e| e.payload);
                proptest::prop_assert_eq!(got, model.get(&id).copied());
            }
            let mut all: Vec<(u32, u32)> = t.iter().map(|e| (e.id, e.payload)).collect();
            all.sort_unstable();
            let mut want: Vec<(u32, u32)> = model.into_iter().collect();
            want.sort_unstable();
            proptest::prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn reserved_room_is_used_without_growing() {
        // What a restore relies on: a page sized first never grows (and
        // never re-hashes a key from the arena) while it is filled.
        let hasher = |e: &E| hash_of(e.id, 1000);
        for n in [1usize, 13, 14, 100, 1000, 4096] {
            let mut t: Table<E> = Table::new();
            t.reserve(n, |_: &E| unreachable!("an empty table re-hashes nothing"));
            let (size, room) = (t.allocation_size(), t.capacity());
            assert!(room >= n);
            // Everything the reservation made room for, not only `n`.
            for id in 0..room as u32 {
                t.insert_unique(hash_of(id, 1000), E { id, payload: 0 }, |_: &E| {
                    panic!("grew while filling its reservation of {n}")
                });
            }
            assert_eq!(t.allocation_size(), size);
            assert_eq!(t.len(), room);
            // One more grows, and every entry is found again.
            let last = room as u32;
            t.insert_unique(
                hash_of(last, 1000),
                E {
                    id: last,
                    payload: 0,
                },
                hasher,
            );
            assert!(t.allocation_size() > size);
            for id in 0..=last {
                assert!(t.find(hash_of(id, 1000), |e| e.id == id).is_some());
            }
        }
    }

    #[test]
    fn removals_leave_lookups_short() {
        // Fill, empty and refill one table many times: the overflow counts
        // return to zero, so a miss stops at its home bucket again.
        let mut t: Table<E> = Table::new();
        let hasher = |e: &E| hash_of(e.id, 1000);
        for round in 0..20u32 {
            for id in 0..1000 {
                t.insert_unique(hash_of(id, 1000), E { id, payload: round }, hasher);
            }
            for id in 0..1000 {
                assert_eq!(
                    t.remove(hash_of(id, 1000), |e| e.id == id),
                    Some(E { id, payload: round })
                );
            }
            assert!(
                t.buckets
                    .iter()
                    .all(|b| b.overflow == 0 && b.tags == [0; WAYS])
            );
        }
    }
}
