//! Model-based property test: random puts, deletes, map-state operations
//! and write batches, interleaved with full and incremental snapshots,
//! segment compaction and restores, checked against a `BTreeMap`.
//!
//! The backend runs with tiny segments (128 bytes) and two shards, so
//! segments fill, values outgrow a segment, snapshots pin segments that
//! writers then copy or leave, and compaction runs on its own as well as
//! when asked. Every snapshot taken is kept for a while and checked again
//! after later writes and compactions: it must still read exactly what the
//! model held when it was taken.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use highwater_core::{KeyGroup, SnapshotKind, StateBackend, StateKey, StateSnapshot, WriteBatch};
use highwater_memory::{MemoryBackend, MemoryConfig};
use highwater_testkit::model::read_snapshot;
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A key of a small universe: value-state keys `v0..v5`, and entries of
/// map states `m0..m3` (user keys of different lengths), plus the base of a
/// map state itself (a value stored under a map's base).
#[derive(Debug, Clone, Copy)]
enum KeySel {
    Value(u8),
    MapEntry(u8, u8),
    MapBase(u8),
}

fn encode(kg: u16, key: &[u8], user_key: &[u8]) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup(kg),
        operator: "op",
        state: if user_key.is_empty() { "value" } else { "map" },
        key,
        namespace: b"",
        user_key,
    }
    .encode()
    .expect("valid state key")
}

fn map_base(m: u8) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup(u16::from(m % 3)),
        operator: "op",
        state: "map",
        key: &[b'm', m],
        namespace: b"",
        user_key: b"",
    }
    .encode()
    .expect("valid state key")
}

impl KeySel {
    fn key(self) -> Vec<u8> {
        match self {
            KeySel::Value(i) => encode(u16::from(i % 4), &[b'v', i], b""),
            KeySel::MapEntry(m, u) => {
                // User keys of 1 to 4 bytes, some prefixes of others.
                let uk: Vec<u8> = (0..=(u % 4)).map(|j| b'a' + (u / 4) + j).collect();
                let mut k = map_base(m);
                k.extend_from_slice(&uk);
                k
            }
            KeySel::MapBase(m) => map_base(m),
        }
    }
}

fn key_sel() -> impl Strategy<Value = KeySel> {
    prop_oneof![
        (0u8..6).prop_map(KeySel::Value),
        (0u8..4, 0u8..16).prop_map(|(m, u)| KeySel::MapEntry(m, u)),
        (0u8..4).prop_map(KeySel::MapBase),
    ]
}

/// Values: a length (some longer than a segment) and a fill byte. Equal
/// lengths are frequent, so in-place rewrites happen too.
fn value() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(8usize), 0usize..40, 100usize..300],
        any::<u8>(),
    )
        .prop_map(|(len, fill)| vec![fill; len])
}

#[derive(Debug, Clone)]
enum Op {
    Put(KeySel, Vec<u8>),
    Delete(KeySel),
    Batch(Vec<(KeySel, Option<Vec<u8>>)>),
    /// Takes a snapshot, and reads it at once or not (then it is read
    /// only after later operations: its shards' stores are taken lazily,
    /// by the first writer or by the reader).
    Snapshot(SnapshotKind, bool),
    DropSnapshot(usize),
    Compact,
    /// Restores the contents of a held full snapshot (or of a fresh one).
    Restore(usize),
    ScanMap(u8, Option<u8>),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (key_sel(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        8 => key_sel().prop_map(Op::Delete),
        4 => prop::collection::vec((key_sel(), prop::option::of(value())), 0..8).prop_map(Op::Batch),
        3 => any::<bool>().prop_map(|now| Op::Snapshot(SnapshotKind::Full, now)),
        3 => any::<bool>().prop_map(|now| Op::Snapshot(SnapshotKind::Changes, now)),
        2 => any::<usize>().prop_map(Op::DropSnapshot),
        2 => Just(Op::Compact),
        1 => any::<usize>().prop_map(Op::Restore),
        3 => (0u8..4, prop::option::of(0u8..4)).prop_map(|(m, c)| Op::ScanMap(m, c)),
        1 => Just(Op::Clear),
    ]
}

/// A snapshot and what it must contain, sorted by key.
struct Held {
    snap: Arc<dyn StateSnapshot>,
    expect: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// For full snapshots, the model it stands for (restorable).
    model: Option<Model>,
}

/// The snapshot's entries sorted by key, read by the testkit's reader
/// (which also fails on a key visited twice or a delete in a full
/// snapshot).
fn contents(s: &dyn StateSnapshot) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    read_snapshot(s)
        .unwrap_or_else(|e| panic!("snapshot visit: {e}"))
        .entries
        .into_iter()
        .collect()
}

struct Harness {
    backend: MemoryBackend,
    model: Model,
    /// Keys changed since the last snapshot, as the backend tracks them.
    changed: BTreeSet<Vec<u8>>,
    held: Vec<Held>,
}

impl Harness {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.changed.insert(k.clone());
        self.model.insert(k, v);
    }

    fn delete(&mut self, k: &[u8]) {
        if self.model.remove(k).is_some() {
            self.changed.insert(k.to_vec());
        }
    }

    fn check_live(&self) {
        let all = self.backend.scan_range(&[], &[0xff; 4]).expect("scan");
        let want: Vec<(Vec<u8>, Vec<u8>)> = self
            .model
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(all, want, "live state differs from the model");
        for (k, v) in &self.model {
            assert_eq!(self.backend.get(k).expect("get").as_ref(), Some(v));
        }
        let stats = self.backend.stats();
        assert_eq!(stats.entries, self.model.len() as u64);
        let bytes: usize = self.model.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(stats.bytes, bytes as u64);
        assert!(stats.live_bytes <= stats.arena_bytes, "{stats:?}");
        // Every live record is a header plus its key and value.
        assert_eq!(stats.live_bytes, bytes as u64 + 8 * self.model.len() as u64);
    }

    fn check_held(&self) {
        for h in &self.held {
            assert_eq!(
                contents(&*h.snap),
                h.expect,
                "a held snapshot changed after later writes or compaction"
            );
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Put(k, v) => {
                let k = k.key();
                self.backend.put(&k, &v).expect("put");
                self.put(k, v);
            }
            Op::Delete(k) => {
                let k = k.key();
                self.backend.delete(&k).expect("delete");
                self.delete(&k);
            }
            Op::Batch(ms) => {
                let mut batch = WriteBatch::new();
                for (k, v) in &ms {
                    match v {
                        Some(v) => batch.put(k.key(), v.clone()),
                        None => batch.delete(k.key()),
                    };
                }
                self.backend.write_batch(batch).expect("write batch");
                for (k, v) in ms {
                    match v {
                        Some(v) => self.put(k.key(), v),
                        None => self.delete(&k.key()),
                    }
                }
            }
            Op::Snapshot(kind, read_now) => {
                let snap = self.backend.snapshot(kind).expect("snapshot");
                let changed = std::mem::take(&mut self.changed);
                let (expect, model): (Vec<_>, _) = match kind {
                    SnapshotKind::Full => (
                        self.model
                            .iter()
                            .map(|(k, v)| (k.clone(), Some(v.clone())))
                            .collect(),
                        Some(self.model.clone()),
                    ),
                    SnapshotKind::Changes => (
                        changed
                            .into_iter()
                            .map(|k| {
                                let v = self.model.get(&k).cloned();
                                (k, v)
                            })
                            .collect(),
                        None,
                    ),
                };
                assert_eq!(snap.approximate_entries(), expect.len());
                if read_now {
                    assert_eq!(contents(&*snap), expect, "fresh {kind:?} snapshot");
                }
                self.held.push(Held {
                    snap,
                    expect,
                    model,
                });
                if self.held.len() > 6 {
                    self.held.remove(0);
                }
            }
            Op::DropSnapshot(i) => {
                if !self.held.is_empty() {
                    let n = self.held.len();
                    self.held.remove(i % n);
                }
            }
            Op::Compact => {
                let before = self.backend.stats();
                let reclaimed = self.backend.compact();
                let after = self.backend.stats();
                assert_eq!(after.arena_bytes, after.live_bytes, "{after:?}");
                assert_eq!(before.arena_bytes - after.arena_bytes, reclaimed);
                self.check_held();
            }
            Op::Restore(i) => {
                let fulls: Vec<&Held> = self.held.iter().filter(|h| h.model.is_some()).collect();
                let model = match fulls.len() {
                    0 => self.model.clone(),
                    n => fulls[i % n].model.clone().unwrap_or_default(),
                };
                let mut src = std::iter::once(Ok(model.iter().collect()));
                self.backend.restore(&mut src).expect("restore");
                self.model = model;
                self.changed.clear();
                self.check_held();
            }
            Op::ScanMap(m, first) => {
                let mut prefix = map_base(m);
                if let Some(c) = first {
                    prefix.push(b'a' + c);
                }
                let got = self.backend.scan_prefix(&prefix).expect("scan_prefix");
                let want: Vec<(Vec<u8>, Vec<u8>)> = self
                    .model
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "scan_prefix of a map state");
            }
            Op::Clear => {
                self.backend.clear().expect("clear");
                self.model.clear();
                self.changed.clear();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn backend_matches_a_btreemap_model(ops in prop::collection::vec(op(), 1..160)) {
        let mut h = Harness {
            // Two key groups over two shards (one each); key group 2 is
            // outside them and hashed.
            backend: MemoryBackend::with_config(MemoryConfig { shards: 2, segment_bytes: 128, max_parallelism: 2 }),
            model: Model::new(),
            changed: BTreeSet::new(),
            held: Vec::new(),
        };
        for op in ops {
            h.apply(op);
            h.check_live();
        }
        h.check_held();
        // A restore from the backend's own full snapshot reproduces it.
        let snap = h.backend.snapshot(SnapshotKind::Full).expect("snapshot");
        // Two key groups over four shards: each spread over two by hash.
        let fresh = MemoryBackend::with_config(MemoryConfig { shards: 4, segment_bytes: 1024, max_parallelism: 2 });
        let block = contents(&*snap).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
        fresh.restore(&mut std::iter::once(Ok(block))).expect("restore");
        let all = fresh.scan_range(&[], &[0xff; 4]).expect("scan");
        let want: Vec<(Vec<u8>, Vec<u8>)> = h.model.into_iter().collect();
        prop_assert_eq!(all, want);
    }
}

#[test]
fn restore_keeps_the_last_of_duplicate_keys() {
    let b = MemoryBackend::with_config(MemoryConfig {
        shards: 1,
        segment_bytes: 64,
        ..MemoryConfig::default()
    });
    let k = KeySel::MapEntry(1, 2).key();
    let other = KeySel::MapEntry(1, 0).key();
    // The later put of a key wins, within a block and across blocks.
    let mut src = vec![
        Ok([
            (k.clone(), b"zeroth".to_vec()),
            (k.clone(), b"first".to_vec()),
            (other.clone(), b"o".to_vec()),
        ]
        .into_iter()
        .collect()),
        Ok([(k.clone(), b"second".to_vec())].into_iter().collect()),
    ]
    .into_iter();
    b.restore(&mut src).expect("restore");
    assert_eq!(b.get(&k).expect("get"), Some(b"second".to_vec()));
    let stats = b.stats();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.bytes, (k.len() + 6 + other.len() + 1) as u64);
    let scan = b.scan_prefix(&map_base(1)).expect("scan");
    assert_eq!(scan, vec![(other, b"o".to_vec()), (k, b"second".to_vec())]);
    // The duplicate's first record is dead and compaction reclaims it.
    assert!(b.compact() > 0);
    let after = b.stats();
    assert_eq!(after.arena_bytes, after.live_bytes);
}
