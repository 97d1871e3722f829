//! The in-process key sets and maps of the backend: the keys changed in an
//! epoch (built on the write path, so without an allocation per key), and
//! the entries a snapshot read or recorded.

use std::collections::HashMap;

pub(super) type Entry = (Box<[u8]>, Option<Box<[u8]>>);

/// State keys and their values (`None`: absent), as read or recorded.
pub(super) type EntryMap = HashMap<Box<[u8]>, Option<Box<[u8]>>, XxBuild>;

/// The set of keys changed in an epoch, built on the write path for
/// every changed key, so it avoids an allocation per key: keys are appended
/// to one arena (a `u64` length, then the bytes) and indexed by their
/// xxh3-64. A hash hit is confirmed by comparing the bytes; keys whose hash
/// collides with another key's go to a (practically always empty) overflow
/// list, so a collision can never drop a changed key.
#[derive(Default)]
pub(super) struct KeySet {
    pub(super) arena: Vec<u8>,
    index: HashMap<u64, usize, HashIsKey>,
    collided: Vec<usize>,
    len: usize,
}

impl KeySet {
    /// A set with room for `keys` keys of `bytes` bytes in all.
    pub(super) fn with_capacity(keys: usize, bytes: usize) -> Self {
        KeySet {
            arena: Vec::with_capacity(bytes),
            index: HashMap::with_capacity_and_hasher(keys, HashIsKey),
            collided: Vec::new(),
            len: 0,
        }
    }

    fn key_at(&self, offset: usize) -> &[u8] {
        let mut len = [0u8; 8];
        len.copy_from_slice(&self.arena[offset..offset + 8]);
        let start = offset + 8;
        &self.arena[start..start + u64::from_le_bytes(len) as usize]
    }

    fn find(&self, hash: u64, key: &[u8]) -> bool {
        match self.index.get(&hash) {
            None => false,
            Some(&off) if self.key_at(off) == key => true,
            Some(_) => self.collided.iter().any(|&off| self.key_at(off) == key),
        }
    }

    pub(super) fn contains(&self, key: &[u8]) -> bool {
        self.find(xxhash_rust::xxh3::xxh3_64(key), key)
    }

    /// Adds `key` unless present.
    pub(super) fn insert(&mut self, key: &[u8]) {
        self.insert_hashed(xxhash_rust::xxh3::xxh3_64(key), key);
    }

    /// Adds `key`, whose hash is `hash`, unless present.
    fn insert_hashed(&mut self, hash: u64, key: &[u8]) {
        if self.find(hash, key) {
            return;
        }
        let offset = self.arena.len();
        self.arena
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.arena.extend_from_slice(key);
        match self.index.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(offset);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.collided.push(offset),
        }
        self.len += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every key, in insertion order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut offset = 0;
        std::iter::from_fn(move || {
            if offset >= self.arena.len() {
                return None;
            }
            let key = self.key_at(offset);
            offset += 8 + key.len();
            Some(key)
        })
    }
}

/// Uses a `u64` that is already a hash as its own hash.
#[derive(Debug, Clone, Copy, Default)]
struct HashIsKey;

impl std::hash::BuildHasher for HashIsKey {
    type Hasher = HashIsKeyHasher;

    fn build_hasher(&self) -> HashIsKeyHasher {
        HashIsKeyHasher(0)
    }
}

/// The hasher of [`HashIsKey`]: passes a `u64` through.
struct HashIsKeyHasher(u64);

impl std::hash::Hasher for HashIsKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed; fold anything else in, to stay correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hashes byte-string keys with xxh3 (much cheaper than SipHash on the
/// write path). Unseeded: the maps never leave the process, and callers
/// cannot choose keys more adversarially than they can write state.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct XxBuild;

impl std::hash::BuildHasher for XxBuild {
    type Hasher = XxHasher;

    fn build_hasher(&self) -> XxHasher {
        XxHasher(0)
    }
}

/// xxh3-64 over the bytes written; length prefixes are ignored because
/// slices are hashed whole.
pub(super) struct XxHasher(u64);

impl std::hash::Hasher for XxHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_survive_hash_collisions() {
        let mut set = KeySet::default();
        set.insert_hashed(7, b"a");
        set.insert_hashed(7, b"b");
        set.insert_hashed(7, b"a");
        set.insert_hashed(7, b"b");
        set.insert_hashed(9, b"");
        assert!(set.find(7, b"a") && set.find(7, b"b") && set.find(9, b""));
        assert!(!set.find(7, b"c") && !set.find(8, b"a"));
        assert_eq!(set.len(), 3);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b", b""]);
        let mut real = KeySet::with_capacity(10, 100);
        for k in [&b"x"[..], b"yy", b"x", b"\0\0\xff"] {
            real.insert(k);
        }
        assert!(real.contains(b"yy") && !real.contains(b"y"));
        assert_eq!(real.len(), 3);
    }
}
