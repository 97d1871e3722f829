//! Failed checkpoints: the error is returned, the next checkpoint is full,
//! and the artifacts the failed one uploaded are removed by the next
//! successful checkpoint's retention.

use std::collections::BTreeSet;
use std::sync::Arc;

use highwater::{CheckpointId, CheckpointKind, ErrorKind};
use highwater_testkit::SplitMix64;

use crate::common::{
    ControlledStore, LocalStore, TypedModel, Workload, assert_entries, assert_no_orphans, config,
    dump, manager_with, manifests, referenced, stored_artifacts,
};

/// A manifest file appears at the id the manager will use next (another
/// writer, or a leftover the manager did not see at build time): the
/// commit fails with `AlreadyExists`.
#[test]
fn manifest_collision_fails_the_checkpoint_and_orphans_are_cleaned() {
    let local = LocalStore::new();
    let m = manager_with(local.dyn_store(), config(true, 8, 3));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(99);
    let mut model = TypedModel::default();
    for _ in 0..300 {
        w.step(&mut rng, &mut model);
    }
    assert_eq!(
        m.checkpoint().unwrap().wait().unwrap().kind,
        CheckpointKind::Full
    );
    for _ in 0..30 {
        w.step(&mut rng, &mut model);
    }
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c2.id, c2.kind),
        (CheckpointId(2), CheckpointKind::Incremental)
    );

    for _ in 0..30 {
        w.step(&mut rng, &mut model);
    }
    std::fs::write(local.manifest_file(CheckpointId(3)), b"not a manifest").unwrap();
    let handle = m.checkpoint().unwrap();
    assert_eq!(handle.id(), CheckpointId(3));
    let err = handle.wait().expect_err("the commit must collide");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("manifest 3"), "{err}");
    assert_eq!(
        m.last_checkpoint(),
        None,
        "a failed checkpoint leaves no base"
    );

    // The failed checkpoint's delta artifacts are orphans now.
    let orphans: BTreeSet<_> = stored_artifacts(&*local.store)
        .difference(&referenced(manifests(&*local.store).values()))
        .copied()
        .collect();
    assert!(
        !orphans.is_empty(),
        "the failed checkpoint uploaded artifacts"
    );

    // The next checkpoint is full (the chain bound of 8 would otherwise
    // make it an incremental), succeeds, and its retention removes them.
    for _ in 0..10 {
        w.step(&mut rng, &mut model);
    }
    let state = dump(&**m.backend());
    let c4 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c4.id, CheckpointId(4));
    assert_eq!((c4.kind, c4.chain_length), (CheckpointKind::Full, 1));
    let report = c4.retention.clone().unwrap();
    assert_eq!(
        report.unreadable,
        [CheckpointId(3)],
        "the foreign file is kept for inspection"
    );
    assert_eq!(
        report.retained,
        [CheckpointId(4), CheckpointId(2), CheckpointId(1)]
    );
    assert!(report.artifacts_deleted >= orphans.len());
    let stored = stored_artifacts(&*local.store);
    assert!(
        orphans.is_disjoint(&stored),
        "orphans left: {:?}",
        orphans.intersection(&stored).collect::<Vec<_>>()
    );
    assert_no_orphans(&*local.store, "after the checkpoint following the failure");

    // The newest checkpoint restores without falling back, and the chain
    // continues on it.
    m.backend().clear().unwrap();
    let info = m.restore_latest().unwrap().unwrap();
    assert_eq!(info.stats.checkpoint, Some(CheckpointId(4)));
    assert!(info.stats.fallbacks.is_empty());
    assert_entries(&state, &dump(&**m.backend()), "checkpoint 4");
    w.check(&model).unwrap();
    let c5 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c5.id, c5.kind),
        (CheckpointId(5), CheckpointKind::Incremental)
    );
}

/// The store fails mid-upload: the error is reported (not logged and
/// swallowed), nothing is committed, the next checkpoint is full and the
/// partial upload is cleaned after it.
#[test]
fn upload_failure_mid_checkpoint_is_reported_and_cleaned() {
    let store = Arc::new(ControlledStore::new());
    let m = manager_with(store.clone(), config(true, 8, 3));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(3);
    let mut model = TypedModel::default();
    for _ in 0..300 {
        w.step(&mut rng, &mut model);
    }
    let c1 = m.checkpoint().unwrap().wait().unwrap();
    for _ in 0..300 {
        w.step(&mut rng, &mut model);
    }
    store.fail_puts_after(3);
    let err = m.checkpoint().unwrap().wait().expect_err("uploads fail");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(
        crate::common::manifest_ids(&*store),
        [c1.id],
        "nothing committed"
    );
    assert_eq!(m.last_checkpoint(), None);
    let partial: BTreeSet<_> = stored_artifacts(&*store)
        .difference(&referenced(manifests(&*store).values()))
        .copied()
        .collect();
    assert!(
        (1..=3).contains(&partial.len()),
        "at most three uploads succeeded before the failure: {}",
        partial.len()
    );

    store.heal();
    let state = dump(&**m.backend());
    let c3 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c3.id, c3.kind), (CheckpointId(3), CheckpointKind::Full));
    assert_no_orphans(&*store, "after recovery");
    m.backend().clear().unwrap();
    m.restore(c3.id).unwrap();
    assert_entries(
        &state,
        &dump(&**m.backend()),
        "checkpoint after a failed one",
    );
}
