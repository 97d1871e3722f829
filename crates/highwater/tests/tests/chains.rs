//! Incremental chains: restoring a chain (base + deltas) gives exactly the
//! state captured at its checkpoint, the same state a full-only manager
//! restores for the same operations, and a delta holds only the changes.

use std::collections::BTreeMap;

use highwater::{CheckpointId, CheckpointKind, ValueStateDescriptor};
use highwater_testkit::SplitMix64;
use highwater_testkit::model::Entries;

use crate::common::{TypedModel, Workload, assert_entries, config, dump, memory_manager, seeds};

#[test]
fn chain_restore_equals_captured_state_and_full_only_restore() {
    for seed in seeds(&[11, 12]) {
        let inc = memory_manager(config(true, 4, 100));
        let full = memory_manager(config(false, 4, 100));
        let (w_inc, w_full) = (Workload::new(&inc), Workload::new(&full));
        let (mut rng_inc, mut rng_full) = (SplitMix64::new(seed), SplitMix64::new(seed));
        let (mut m_inc, mut m_full) = (TypedModel::default(), TypedModel::default());
        let mut captured: BTreeMap<CheckpointId, (Entries, TypedModel)> = BTreeMap::new();
        let mut kinds = Vec::new();
        let (mut inc_entries, mut full_entries) = (0u64, 0u64);
        for round in 0..13 {
            // The first round builds the state; later ones change a little.
            let ops = if round == 0 { 400 } else { 12 };
            for _ in 0..ops {
                w_inc.step(&mut rng_inc, &mut m_inc);
                w_full.step(&mut rng_full, &mut m_full);
            }
            assert_eq!(m_inc, m_full, "seed={seed}: workloads diverged");
            let raw = dump(&**inc.backend());
            assert_entries(&raw, &dump(&**full.backend()), "live states differ");
            let a = inc.checkpoint().unwrap().wait().unwrap();
            let b = full.checkpoint().unwrap().wait().unwrap();
            assert_eq!(a.id, b.id, "seed={seed}: both managers number from 1");
            assert_eq!(b.kind, CheckpointKind::Full, "seed={seed}");
            assert_eq!(b.chain_length, 1);
            if a.kind == CheckpointKind::Incremental {
                // The same rounds in both managers: a delta against all.
                inc_entries += a.entries;
                full_entries += b.entries;
            }
            kinds.push((a.kind, a.chain_length));
            captured.insert(a.id, (raw, m_inc.clone()));
        }
        // Chains of at most 4 layers: F I I I F I I I F I I I F.
        let expected: Vec<(CheckpointKind, usize)> = (0..13)
            .map(|i| match i % 4 {
                0 => (CheckpointKind::Full, 1),
                n => (CheckpointKind::Incremental, n + 1),
            })
            .collect();
        assert_eq!(kinds, expected, "seed={seed}: checkpoint kinds");
        assert!(
            inc_entries * 4 < full_entries,
            "seed={seed}: incrementals should write only changes: incremental={inc_entries} full={full_entries}"
        );

        // Restore in an order that jumps back and forth across chains.
        let mut ids: Vec<CheckpointId> = captured.keys().copied().collect();
        SplitMix64::new(seed).shuffle(&mut ids);
        for id in ids {
            let (raw, model) = &captured[&id];
            let ri = inc.restore(id).unwrap();
            let rf = full.restore(id).unwrap();
            assert_eq!(ri.stats.chain_length, expected[(id.0 - 1) as usize].1);
            assert_eq!(rf.stats.chain_length, 1);
            let (di, df) = (dump(&**inc.backend()), dump(&**full.backend()));
            let ctx = format!("seed={seed} checkpoint={id}");
            assert_entries(raw, &di, &format!("{ctx} incremental manager"));
            assert_entries(raw, &df, &format!("{ctx} full-only manager"));
            assert_eq!(ri.stats.entries_loaded, rf.stats.entries_loaded, "{ctx}");
            w_inc.check(model).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            w_full.check(model).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
    }
}

/// Puts, overwrites, deletes and re-creations across a chain; every layer
/// restores exactly, and an incremental records exactly the changed keys.
#[test]
fn incremental_delta_holds_exactly_the_changes() {
    let m = memory_manager(config(true, 8, 10));
    let ctx = m.keyed_state("counter").unwrap();
    let v = ctx
        .value_state::<u32, u64>(&ValueStateDescriptor::new("n"))
        .unwrap();
    for k in 0..200 {
        v.update(&k, &u64::from(k)).unwrap();
    }
    let s1 = dump(&**m.backend());
    let c1 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c1.kind, c1.entries), (CheckpointKind::Full, 200));

    // Three overwrites and two deletes.
    for k in [3, 50, 199] {
        v.update(&k, &1_000_000).unwrap();
    }
    v.clear(&7).unwrap();
    v.clear(&8).unwrap();
    // A delete of a key that does not exist changes nothing.
    v.clear(&5000).unwrap();
    let s2 = dump(&**m.backend());
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c2.kind, CheckpointKind::Incremental);
    assert_eq!(c2.chain_length, 2);
    assert_eq!(c2.entries, 5, "3 puts and 2 deletes");

    // Nothing changed: an empty delta.
    let c3 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c3.kind, c3.entries, c3.artifacts),
        (CheckpointKind::Incremental, 0, 0)
    );

    // Re-create a deleted key, delete an overwritten one.
    v.update(&7, &77).unwrap();
    v.clear(&50).unwrap();
    let s4 = dump(&**m.backend());
    let c4 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c4.chain_length, c4.entries), (4, 2));

    for (id, want) in [(c1.id, &s1), (c2.id, &s2), (c3.id, &s2), (c4.id, &s4)] {
        let info = m.restore(id).unwrap();
        assert_eq!(info.stats.entries_loaded, want.len() as u64);
        assert_entries(want, &dump(&**m.backend()), &format!("checkpoint {id}"));
    }
    assert_eq!(v.get(&7).unwrap(), Some(77));
    assert_eq!(v.get(&8).unwrap(), None);
    assert_eq!(v.get(&50).unwrap(), None);
    assert_eq!(v.get(&3).unwrap(), Some(1_000_000));

    // The chain continues from the restored checkpoint: after restoring c2
    // the next checkpoint is an incremental on c2 (chain 3), not on c4.
    m.restore(c2.id).unwrap();
    v.update(&1, &11).unwrap();
    let s5 = dump(&**m.backend());
    let c5 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c5.kind, c5.chain_length, c5.entries),
        (CheckpointKind::Incremental, 3, 1)
    );
    m.backend().clear().unwrap();
    m.restore(c5.id).unwrap();
    assert_entries(
        &s5,
        &dump(&**m.backend()),
        "incremental on a restored checkpoint",
    );
}
