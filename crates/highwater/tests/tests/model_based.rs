//! Model-based: random typed-state operations over three operators,
//! interleaved with checkpoints (full and incremental, chains of at most 3
//! layers) and restores of random retained checkpoints. The state captured
//! at each checkpoint is remembered twice — the raw backend content and a
//! typed model kept by the test — and every restore must reproduce both.

use std::collections::BTreeMap;
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::{CheckpointId, CheckpointKind, CheckpointStore, ErrorKind};
use highwater_testkit::SplitMix64;
use highwater_testkit::model::Entries;

use crate::common::{
    TypedModel, Workload, assert_entries, config, dump, manager_with, manifest_ids, seeds,
};

const CHAIN: usize = 3;
const RETAINED: usize = 4;

struct Recorded {
    model: TypedModel,
    raw: Entries,
    chain: usize,
}

#[derive(Default)]
struct Coverage {
    full: usize,
    incremental: usize,
    longest_chain: usize,
    restores: usize,
    restores_of_incrementals: usize,
    latest_restores: usize,
    missing_restores: usize,
}

fn run(seed: u64, store: Arc<dyn CheckpointStore>, steps: usize) -> Coverage {
    let manager = manager_with(store.clone(), config(true, CHAIN, RETAINED));
    let backend = manager.backend().clone();
    let w = Workload::new(&manager);
    let mut rng = SplitMix64::new(seed);
    let mut model = TypedModel::default();
    let mut recorded: BTreeMap<CheckpointId, Recorded> = BTreeMap::new();
    let mut committed: Vec<CheckpointId> = Vec::new();
    // Chain length of the checkpoint the backend's changes are relative to.
    let mut base_chain: Option<usize> = None;
    let mut cov = Coverage::default();

    for step in 0..steps {
        let ctx = format!("seed={seed} step={step}");
        let roll = rng.below(100);
        if roll < 80 {
            w.step(&mut rng, &mut model);
        } else if roll < 91 {
            // Checkpoint. Nothing writes concurrently, so the state now is
            // the state the snapshot captures.
            w.check(&model)
                .unwrap_or_else(|e| panic!("{ctx}: live state: {e}"));
            let raw = dump(&*backend);
            let (want_kind, want_chain) = match base_chain {
                Some(c) if c < CHAIN => (CheckpointKind::Incremental, c + 1),
                _ => (CheckpointKind::Full, 1),
            };
            let handle = manager.checkpoint().unwrap();
            let id = handle.id();
            let info = handle
                .wait()
                .unwrap_or_else(|e| panic!("{ctx}: checkpoint {id} failed: {e}"));
            assert_eq!(info.id, id, "{ctx}");
            assert_eq!(
                (info.kind, info.chain_length),
                (want_kind, want_chain),
                "{ctx}: checkpoint {id} kind/chain (base chain {base_chain:?})"
            );
            if let Some(last) = committed.last() {
                assert!(id > *last, "{ctx}: id {id} not after {last}");
            }
            if info.kind == CheckpointKind::Full {
                assert_eq!(
                    info.entries,
                    raw.len() as u64,
                    "{ctx}: full checkpoint entries"
                );
                cov.full += 1;
            } else {
                cov.incremental += 1;
            }
            cov.longest_chain = cov.longest_chain.max(info.chain_length);
            committed.push(id);
            let want_retained: Vec<CheckpointId> =
                committed.iter().rev().take(RETAINED).copied().collect();
            let report = info.retention.clone().expect("retention ran");
            assert_eq!(report.retained, want_retained, "{ctx}: retention");
            assert_eq!(manager.last_checkpoint(), Some(id), "{ctx}");
            recorded.insert(
                id,
                Recorded {
                    model: model.clone(),
                    raw,
                    chain: info.chain_length,
                },
            );
            base_chain = Some(info.chain_length);
        } else if roll < 97 {
            // Restore a random retained checkpoint.
            let live = manifest_ids(&*store);
            let mut want: Vec<CheckpointId> =
                committed.iter().rev().take(RETAINED).copied().collect();
            want.sort();
            assert_eq!(live, want, "{ctx}: manifests in the store");
            let Some(&id) = (!live.is_empty()).then(|| rng.pick(&live)) else {
                continue;
            };
            let info = manager
                .restore(id)
                .unwrap_or_else(|e| panic!("{ctx}: restore {id}: {e}"));
            let rec = &recorded[&id];
            assert_eq!(info.stats.checkpoint, Some(id), "{ctx}");
            assert_eq!(info.stats.chain_length, rec.chain, "{ctx}: chain of {id}");
            assert_eq!(
                info.stats.entries_loaded,
                rec.raw.len() as u64,
                "{ctx}: entries of {id}"
            );
            assert!(info.stats.fallbacks.is_empty(), "{ctx}");
            assert_entries(&rec.raw, &dump(&*backend), &format!("{ctx}: restore {id}"));
            w.check(&rec.model)
                .unwrap_or_else(|e| panic!("{ctx}: restore {id}: {e}"));
            assert_eq!(manager.last_checkpoint(), Some(id), "{ctx}");
            model = rec.model.clone();
            base_chain = Some(rec.chain);
            cov.restores += 1;
            if rec.chain > 1 {
                cov.restores_of_incrementals += 1;
            }
        } else if roll < 99 {
            // Restore the newest checkpoint.
            let before = dump(&*backend);
            let got = manager
                .restore_latest()
                .unwrap_or_else(|e| panic!("{ctx}: restore_latest: {e}"));
            match committed.last() {
                None => {
                    assert!(got.is_none(), "{ctx}: restore_latest of an empty store");
                    assert_entries(&before, &dump(&*backend), &format!("{ctx}: empty store"));
                }
                Some(&newest) => {
                    let info = got.expect("a checkpoint to restore");
                    assert_eq!(info.stats.checkpoint, Some(newest), "{ctx}");
                    assert!(info.stats.fallbacks.is_empty(), "{ctx}");
                    let rec = &recorded[&newest];
                    assert_entries(&rec.raw, &dump(&*backend), &format!("{ctx}: latest"));
                    model = rec.model.clone();
                    base_chain = Some(rec.chain);
                    cov.latest_restores += 1;
                }
            }
        } else {
            // Restoring a checkpoint retention deleted is a NotFound error
            // that leaves live state and change tracking untouched.
            let live = manifest_ids(&*store);
            let gone: Vec<CheckpointId> = committed
                .iter()
                .copied()
                .filter(|id| !live.contains(id))
                .collect();
            if gone.is_empty() {
                continue;
            }
            let id = *rng.pick(&gone);
            let before = dump(&*backend);
            let last = manager.last_checkpoint();
            let err = manager
                .restore(id)
                .expect_err("restore of a deleted checkpoint");
            assert_eq!(err.kind(), ErrorKind::NotFound, "{ctx}: {err}");
            assert_entries(&before, &dump(&*backend), &format!("{ctx}: failed restore"));
            assert_eq!(manager.last_checkpoint(), last, "{ctx}");
            cov.missing_restores += 1;
        }
    }

    // Every retained checkpoint still restores to what it captured.
    for id in manifest_ids(&*store) {
        manager.restore(id).unwrap();
        let rec = &recorded[&id];
        assert_entries(
            &rec.raw,
            &dump(&*backend),
            &format!("seed={seed} final restore {id}"),
        );
        w.check(&rec.model)
            .unwrap_or_else(|e| panic!("seed={seed} final restore {id}: {e}"));
    }
    cov
}

fn assert_coverage(seed: u64, c: &Coverage) {
    assert!(
        c.full >= 2,
        "seed={seed}: too few full checkpoints: {}",
        c.full
    );
    assert!(
        c.incremental >= 2,
        "seed={seed}: too few incrementals: {}",
        c.incremental
    );
    assert_eq!(
        c.longest_chain, CHAIN,
        "seed={seed}: chains never reached the bound"
    );
    assert!(
        c.restores >= 2,
        "seed={seed}: too few restores: {}",
        c.restores
    );
}

#[test]
fn random_ops_checkpoints_and_restores_match_the_model_in_memory_store() {
    let mut totals = Coverage::default();
    for seed in seeds(&[1, 2, 3, 0xDEAD_BEEF, 42]) {
        let c = run(seed, Arc::new(ObjectCheckpointStore::in_memory()), 500);
        assert_coverage(seed, &c);
        totals.restores_of_incrementals += c.restores_of_incrementals;
        totals.missing_restores += c.missing_restores;
        totals.latest_restores += c.latest_restores;
    }
    assert!(
        totals.restores_of_incrementals > 0,
        "no incremental was ever restored"
    );
    assert!(
        totals.missing_restores > 0,
        "no deleted checkpoint was ever tried"
    );
    assert!(totals.latest_restores > 0, "restore_latest never ran");
}

#[test]
fn random_ops_checkpoints_and_restores_match_the_model_local_store() {
    for seed in seeds(&[7]) {
        let local = crate::common::LocalStore::new();
        let c = run(seed, local.dyn_store(), 300);
        assert_coverage(seed, &c);
    }
}
