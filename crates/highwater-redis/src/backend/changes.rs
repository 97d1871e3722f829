//! The in-process key sets and maps of the backend: the keys changed in an
//! epoch (built on the write path, so without an allocation per key), and
//! the entries a snapshot read or recorded.
//!
//! Both are `hashbrown::HashTable`s keyed by the xxh3-64 of the state key,
//! computed here and confirmed byte for byte on every hit, as in the memory
//! backend's index: no `BuildHasher` of our own. Unseeded: the tables never
//! leave the process, and callers cannot choose keys more adversarially
//! than they can write state.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use xxhash_rust::xxh3::xxh3_64;

/// A state key and its value (`None`: absent).
pub(super) type Entry = (Box<[u8]>, Option<Box<[u8]>>);

/// The set of keys changed in an epoch, built on the write path for every
/// changed key, so it avoids an allocation per key: keys are appended to
/// one buffer and indexed by their xxh3-64 (a span of the buffer per key).
/// A hash hit is confirmed by comparing the bytes, so keys whose hashes
/// collide are kept apart and a collision can never drop a changed key.
#[derive(Default)]
pub(super) struct KeySet {
    keys: Vec<u8>,
    spans: HashTable<Span>,
}

/// Where one key of a [`KeySet`] is in its buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    hash: u64,
    start: usize,
    end: usize,
}

impl KeySet {
    /// A set with room for `keys` keys of `bytes` bytes in all.
    pub(super) fn with_capacity(keys: usize, bytes: usize) -> Self {
        KeySet {
            keys: Vec::with_capacity(bytes),
            spans: HashTable::with_capacity(keys),
        }
    }

    /// The bytes of all keys.
    pub(super) fn bytes(&self) -> usize {
        self.keys.len()
    }

    fn find(&self, hash: u64, key: &[u8]) -> bool {
        self.spans
            .find(hash, |s| {
                s.hash == hash && &self.keys[s.start..s.end] == key
            })
            .is_some()
    }

    pub(super) fn contains(&self, key: &[u8]) -> bool {
        self.find(xxh3_64(key), key)
    }

    /// Adds `key` unless present.
    pub(super) fn insert(&mut self, key: &[u8]) {
        self.insert_hashed(xxh3_64(key), key);
    }

    /// Adds `key`, whose hash is `hash`, unless present.
    fn insert_hashed(&mut self, hash: u64, key: &[u8]) {
        if self.find(hash, key) {
            return;
        }
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        let span = Span {
            hash,
            start,
            end: self.keys.len(),
        };
        self.spans.insert_unique(hash, span, |s| s.hash);
    }

    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every key, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|s| &self.keys[s.start..s.end])
    }
}

/// State keys and their values (`None`: absent), as read or recorded.
#[derive(Default)]
pub(super) struct EntryMap {
    entries: HashTable<Entry>,
}

impl EntryMap {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sets the value of `key`.
    pub(super) fn insert(&mut self, key: Box<[u8]>, value: Option<Box<[u8]>>) {
        let hash = xxh3_64(&key);
        match self.entries.entry(hash, |e| e.0 == key, |e| xxh3_64(&e.0)) {
            Slot::Occupied(mut o) => o.get_mut().1 = value,
            Slot::Vacant(v) => {
                v.insert((key, value));
            }
        }
    }

    /// Sets the value of `key` to `value()` unless `key` has one.
    pub(super) fn insert_if_absent(
        &mut self,
        key: &[u8],
        value: impl FnOnce() -> Option<Box<[u8]>>,
    ) {
        let hash = xxh3_64(key);
        if let Slot::Vacant(v) = self
            .entries
            .entry(hash, |e| &*e.0 == key, |e| xxh3_64(&e.0))
        {
            v.insert((key.into(), value()));
        }
    }

    /// Removes `key` and its value.
    pub(super) fn remove(&mut self, key: &[u8]) {
        if let Ok(o) = self.entries.find_entry(xxh3_64(key), |e| &*e.0 == key) {
            o.remove();
        }
    }
}

impl FromIterator<Entry> for EntryMap {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = EntryMap {
            entries: HashTable::with_capacity(iter.size_hint().0),
        };
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl IntoIterator for EntryMap {
    type Item = Entry;
    type IntoIter = hashbrown::hash_table::IntoIter<Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
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
        let mut keys: Vec<&[u8]> = set.iter().collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![&b""[..], b"a", b"b"]);
        assert_eq!(set.bytes(), 2);
        let mut real = KeySet::with_capacity(10, 100);
        for k in [&b"x"[..], b"yy", b"x", b"\0\0\xff"] {
            real.insert(k);
        }
        assert!(real.contains(b"yy") && !real.contains(b"y"));
        assert_eq!(real.len(), 3);
    }

    #[test]
    fn entry_maps_keep_the_first_recorded_value_and_replace_on_insert() {
        let v = |s: &[u8]| Some(Box::<[u8]>::from(s));
        let mut map: EntryMap = [
            (Box::from(&b"a"[..]), v(b"1")),
            (Box::from(&b"b"[..]), None),
        ]
        .into_iter()
        .collect();
        map.insert_if_absent(b"a", || v(b"ignored"));
        map.insert_if_absent(b"c", || v(b"3"));
        map.insert(Box::from(&b"b"[..]), v(b"2"));
        map.remove(b"missing");
        assert_eq!(map.len(), 3);
        map.remove(b"c");
        let mut entries: Vec<Entry> = map.into_iter().collect();
        entries.sort();
        assert_eq!(
            entries,
            vec![
                (Box::from(&b"a"[..]), v(b"1")),
                (Box::from(&b"b"[..]), v(b"2"))
            ]
        );
    }
}
