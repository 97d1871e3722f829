//! Retention: only `max_retained` manifests remain, the store holds exactly
//! the artifacts they reference, and every retained checkpoint restores —
//! including incrementals whose base checkpoint's manifest is gone.

use std::collections::BTreeMap;

use highwater::cloud::layout::artifact_name;
use highwater::{CheckpointId, CheckpointKind, ErrorKind};
use highwater_testkit::SplitMix64;
use highwater_testkit::model::Entries;

use crate::common::{
    LocalStore, TypedModel, Workload, assert_entries, assert_no_orphans, config, dump,
    manager_with, manifest_ids, manifests, referenced,
};

fn run(incremental: bool) {
    let local = LocalStore::new();
    let m = manager_with(local.dyn_store(), config(incremental, 8, 2));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(5);
    let mut model = TypedModel::default();
    let mut captured: BTreeMap<CheckpointId, (Entries, TypedModel)> = BTreeMap::new();
    for i in 1..=6u64 {
        for _ in 0..if i == 1 { 300 } else { 40 } {
            w.step(&mut rng, &mut model);
        }
        let raw = dump(&**m.backend());
        let info = m.checkpoint().unwrap().wait().unwrap();
        assert_eq!(info.id, CheckpointId(i));
        let want_kind = if incremental && i > 1 {
            CheckpointKind::Incremental
        } else {
            CheckpointKind::Full
        };
        assert_eq!(info.kind, want_kind);
        captured.insert(info.id, (raw, model.clone()));

        let report = info.retention.expect("retention ran");
        let want: Vec<_> = (i.saturating_sub(1).max(1)..=i)
            .rev()
            .map(CheckpointId)
            .collect();
        assert_eq!(report.retained, want, "after checkpoint {i}");
        let deleted: Vec<_> = (i >= 3).then(|| CheckpointId(i - 2)).into_iter().collect();
        assert_eq!(report.manifests_deleted, deleted, "after checkpoint {i}");
        assert!(report.unreadable.is_empty());

        let mut ids = want.clone();
        ids.sort();
        assert_eq!(manifest_ids(&*local.store), ids);
        assert_no_orphans(&*local.store, &format!("after checkpoint {i}"));
        // The files on disk agree with the store's listing: no staging or
        // leftover files either.
        let referenced = referenced(manifests(&*local.store).values());
        let names: std::collections::BTreeSet<String> =
            referenced.iter().map(|id| artifact_name(*id)).collect();
        assert_eq!(local.artifact_files(), names, "after checkpoint {i}");
    }

    let ms = manifests(&*local.store);
    assert_eq!(
        ms.keys().copied().collect::<Vec<_>>(),
        [CheckpointId(5), CheckpointId(6)]
    );
    if incremental {
        for m5 in ms.values() {
            assert_eq!(m5.kind, CheckpointKind::Incremental);
            assert_eq!(
                m5.layers[0].checkpoint_id,
                CheckpointId(1),
                "base layer written by the deleted checkpoint 1"
            );
        }
    }
    for id in [CheckpointId(5), CheckpointId(6), CheckpointId(5)] {
        let info = m.restore(id).unwrap();
        if incremental {
            assert_eq!(info.stats.chain_length, id.0 as usize);
        }
        let (raw, model) = &captured[&id];
        assert_entries(
            raw,
            &dump(&**m.backend()),
            &format!("retained checkpoint {id}"),
        );
        w.check(model).unwrap();
    }
    for gone in 1..=4 {
        let err = m.restore(CheckpointId(gone)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }
}

#[test]
fn retention_keeps_two_incremental_checkpoints_and_no_orphans() {
    run(true);
}

#[test]
fn retention_keeps_two_full_checkpoints_and_no_orphans() {
    run(false);
}
