//! The acceptance property: any sequence of state changes, checkpoints
//! (incremental, and full when the chain bound is hit), background and
//! on-demand merges, retention passes and restores; afterwards every
//! retained checkpoint restores to exactly the model's state at that
//! checkpoint, and the store verifies clean with no orphaned artifact.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::merge::ChunkConfig;
use highwater::{CheckpointConfig, CheckpointId, StateManager, ValueState, ValueStateDescriptor};
use proptest::prelude::*;

const OPS: [&str; 3] = ["a", "b", "c"];
const KEYS: u16 = 48;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u16, u32),
    Delete(usize, u16),
    /// Puts the same value into operators a and c (identical chunks).
    Mirror(u16, u32),
    Checkpoint,
    Compact,
    Gc,
    WaitMerges,
    /// Restores the n-th newest retained checkpoint (mod their number).
    Restore(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..KEYS, any::<u32>()).prop_map(|(o, k, v)| Op::Put(o, k, v)),
        2 => (0..3usize, 0..KEYS).prop_map(|(o, k)| Op::Delete(o, k)),
        2 => (0..KEYS, any::<u32>()).prop_map(|(k, v)| Op::Mirror(k, v)),
        4 => Just(Op::Checkpoint),
        1 => Just(Op::Compact),
        1 => Just(Op::Gc),
        1 => Just(Op::WaitMerges),
        1 => (0..4usize).prop_map(Op::Restore),
    ]
}

type State = BTreeMap<(usize, u16), u32>;

fn read_all(handles: &[ValueState<u16, u32>]) -> State {
    let mut out = State::new();
    for (o, h) in handles.iter().enumerate() {
        for k in 0..KEYS {
            if let Some(v) = h.get(&k).unwrap() {
                out.insert((o, k), v);
            }
        }
    }
    out
}

fn config(merge_at: usize, retained: usize) -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.max_retained = retained;
    c.max_chain_before_full = 6;
    c.key_groups_per_artifact = 32;
    c.encode_threads = 2;
    c.background_merge = true;
    c.merger.merge_at_chain_length = merge_at;
    c.merger.parallel_threads = 2;
    c.merger.chunking = ChunkConfig {
        min_bytes: 32,
        target_bytes: 128,
        max_bytes: 512,
    };
    c
}

fn retained(store: &ObjectCheckpointStore) -> Vec<CheckpointId> {
    highwater_merge_block_on(async { highwater::CheckpointStore::list_manifests(store).await })
        .unwrap()
}

fn highwater_merge_block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_retained_checkpoint_restores_to_the_model_state(
        ops in proptest::collection::vec(op(), 1..70),
        merge_at in 2usize..4,
        keep in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ObjectCheckpointStore::local(dir.path()).unwrap());
        let manager = StateManager::builder()
            .backend(Arc::new(MemoryBackend::new()))
            .store(store.clone())
            .config(config(merge_at, keep))
            .build()
            .unwrap();
        let desc = ValueStateDescriptor::new("v");
        let handles: Vec<ValueState<u16, u32>> = OPS
            .iter()
            .map(|o| manager.keyed_state(o).unwrap().value_state(&desc).unwrap())
            .collect();
        let mut model = State::new();
        let mut at_checkpoint: BTreeMap<CheckpointId, State> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Put(o, k, v) => {
                    handles[*o].update(k, v).unwrap();
                    model.insert((*o, *k), *v);
                }
                Op::Delete(o, k) => {
                    handles[*o].clear(k).unwrap();
                    model.remove(&(*o, *k));
                }
                Op::Mirror(k, v) => {
                    for o in [0, 2] {
                        handles[o].update(k, v).unwrap();
                        model.insert((o, *k), *v);
                    }
                }
                Op::Checkpoint => {
                    let info = manager.checkpoint().unwrap().wait().unwrap();
                    at_checkpoint.insert(info.id, model.clone());
                }
                Op::Compact => {
                    manager.compact().unwrap();
                }
                Op::Gc => {
                    manager.apply_retention().unwrap();
                }
                Op::WaitMerges => manager.wait_merges(),
                Op::Restore(n) => {
                    let mut ids = retained(&store);
                    ids.reverse();
                    if ids.is_empty() {
                        continue;
                    }
                    let id = ids[n % ids.len()];
                    manager.restore(id).unwrap();
                    model = at_checkpoint[&id].clone();
                    prop_assert_eq!(&read_all(&handles), &model, "restore of {}", id);
                }
            }
        }
        manager.wait_merges();
        manager.wait_idle();
        // Every retained checkpoint restores to the state it was taken at.
        let ids = retained(&store);
        prop_assert!(ids.len() <= keep);
        for id in &ids {
            manager.restore(*id).unwrap();
            prop_assert_eq!(&read_all(&handles), &at_checkpoint[id], "restore of {}", id);
        }
        let verified = highwater_merge_block_on(highwater::verify_store(&*store)).unwrap();
        for v in &verified {
            prop_assert!(v.is_sound(), "{:?}", v.problems);
        }
        // After a retention pass with nothing in flight, every stored
        // artifact is referenced by a retained manifest.
        manager.apply_retention().unwrap();
        let (stored, referenced) = highwater_merge_block_on(async {
            use highwater::CheckpointStore;
            let stored: HashSet<_> = store.list_artifacts().await.unwrap().into_iter().collect();
            let mut referenced = HashSet::new();
            for id in store.list_manifests().await.unwrap() {
                let m = highwater::core::load_manifest(&*store, id).await.unwrap();
                referenced.extend(m.artifacts().map(|a| a.id));
            }
            (stored, referenced)
        });
        // A merged base waiting for the next checkpoint is pinned and kept.
        let pending = manager.pending_merge().is_some();
        prop_assert!(referenced.is_subset(&stored));
        if !pending {
            prop_assert_eq!(&stored, &referenced);
        }
    }
}

#[test]
fn the_next_checkpoint_builds_on_a_background_merge_and_gc_keeps_it_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ObjectCheckpointStore::local(dir.path()).unwrap());
    let manager = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .config(config(3, 2))
        .build()
        .unwrap();
    let desc = ValueStateDescriptor::new("v");
    let h: ValueState<u16, u32> = manager
        .keyed_state("a")
        .unwrap()
        .value_state(&desc)
        .unwrap();
    let mut chains = Vec::new();
    for round in 0..3u32 {
        for k in 0..KEYS {
            h.update(&k, &(round * 1000 + u32::from(k))).unwrap();
        }
        chains.push(manager.checkpoint().unwrap().wait().unwrap().chain_length);
    }
    assert_eq!(chains, [1, 2, 3]);
    // The third checkpoint's chain reached 3 layers: a merge runs.
    manager.wait_merges();
    assert_eq!(manager.pending_merge(), Some(CheckpointId(3)));
    // Retention now must keep the merged base's artifacts (pinned), though
    // no manifest references them yet.
    let report = manager.apply_retention().unwrap();
    assert!(report.artifacts_kept_pinned > 0, "{report:?}");
    h.update(&0, &7).unwrap();
    let c4 = manager.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c4.merged_base, Some(CheckpointId(3)));
    assert_eq!(c4.chain_length, 2, "merged base + own delta");
    assert_eq!(manager.pending_merge(), None);
    manager.restore(c4.id).unwrap();
    assert_eq!(h.get(&0).unwrap(), Some(7));
    assert_eq!(h.get(&5).unwrap(), Some(2005));
    let verified = highwater_merge_block_on(highwater::verify_store(&*store)).unwrap();
    assert!(verified.iter().all(|v| v.is_sound()), "{verified:?}");
}
