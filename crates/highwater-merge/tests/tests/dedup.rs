//! Deduplication: identical state of several operators is stored once, and
//! an unchanged chunk keeps its content address when others change.

use std::collections::HashSet;

use highwater_core::{KeyGroup, SnapshotKind, StateBackend, StateKey, WriteBatch, key_group_for};
use highwater_memory::MemoryBackend;
use highwater_merge::{ChunkConfig, EncodeParams, MergerConfig, encode_snapshot};

fn key(op: &str, k: u32) -> Vec<u8> {
    let user = k.to_le_bytes();
    StateKey {
        key_group: key_group_for(&user, 128),
        operator: op,
        state: "window",
        key: &user,
        namespace: b"",
        user_key: b"",
    }
    .encode()
    .unwrap()
}

fn params(dedup: bool) -> EncodeParams {
    let mut merger = MergerConfig::default();
    merger.enable_deduplication = dedup;
    merger.chunking = ChunkConfig {
        min_bytes: 2_000,
        target_bytes: 4_000,
        max_bytes: 16_000,
    };
    EncodeParams {
        max_parallelism: 128,
        key_groups_per_artifact: 32,
        merger,
        now_ms: 0,
    }
}

fn fill(backend: &MemoryBackend, ops: &[&str], keys: u32) {
    let mut b = WriteBatch::new();
    for op in ops {
        for k in 0..keys {
            b.put(key(op, k), format!("\0value-{k}-{}", k % 13).into_bytes());
        }
    }
    backend.write_batch(b).unwrap();
}

#[test]
fn four_operators_with_identical_state_store_one_copy() {
    let backend = MemoryBackend::new();
    fill(&backend, &["a", "b", "c", "d"], 5_000);
    let snap = backend.snapshot(SnapshotKind::Full).unwrap();
    let (refs, totals) = encode_snapshot(&*snap, &params(true), &|_| Ok(())).unwrap();
    assert_eq!(totals.entries, 20_000);
    let distinct: HashSet<_> = refs.iter().map(|r| r.id).collect();
    assert!(
        refs.len() > 4 * 4,
        "several chunks per range: {}",
        refs.len()
    );
    assert_eq!(
        distinct.len() * 4,
        refs.len(),
        "each chunk stored once for 4 operators"
    );

    // Without deduplication the keys embed the operator: nothing is shared.
    let (refs, _) = encode_snapshot(&*snap, &params(false), &|_| Ok(())).unwrap();
    let distinct: HashSet<_> = refs.iter().map(|r| r.id).collect();
    assert_eq!(distinct.len(), refs.len());
}

#[test]
fn changing_one_key_rewrites_only_its_chunk() {
    let backend = MemoryBackend::new();
    fill(&backend, &["a"], 20_000);
    let p = params(true);
    let (before, _) = encode_snapshot(&*backend.snapshot(SnapshotKind::Full).unwrap(), &p, &|_| {
        Ok(())
    })
    .unwrap();
    let mut b = WriteBatch::new();
    b.put(key("a", 777), b"\0changed".to_vec());
    backend.write_batch(b).unwrap();
    let (after, _) = encode_snapshot(&*backend.snapshot(SnapshotKind::Full).unwrap(), &p, &|_| {
        Ok(())
    })
    .unwrap();
    let old: HashSet<_> = before.iter().map(|r| r.id).collect();
    let new: Vec<_> = after.iter().filter(|r| !old.contains(&r.id)).collect();
    assert!(before.len() > 20, "{} chunks", before.len());
    assert!(
        new.len() <= 2,
        "a one-key change rewrites its chunk (and at most a neighbour): {} of {} new",
        new.len(),
        after.len()
    );
    let kg = key_group_for(&777u32.to_le_bytes(), 128);
    assert!(new.iter().all(|r| r.key_groups.contains(kg)));
    let _ = KeyGroup(0);
}
