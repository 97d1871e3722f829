//! Storage faults, injected (issue 18): checkpoints, merges, retention and
//! recovery over a local directory store wrapped in
//! `highwater_cloud::faults::FaultyObjectStore`, which fails, tears, lies
//! about or delays the Nth request. After every injected fault:
//!
//! - no readable manifest references an artifact the store lacks;
//! - the newest committed checkpoint restores to exactly the model's state
//!   when it was taken (nothing acknowledged is lost), and a restore never
//!   yields a state no checkpoint had: it is right, falls back to an older
//!   checkpoint it names, or fails with a typed error;
//! - nothing panics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use highwater::cloud::faults::{Fault, FaultyObjectStore, Op, Rule};
use highwater::cloud::{ObjectCheckpointStore, StoreConfig, TransferConfig};
use highwater::core::RetryPolicy;
use highwater::{CheckpointId, ErrorKind, StateManager};
use highwater_testkit::SplitMix64;

use crate::common::{
    TypedModel, Workload, assert_no_orphans, config, manager_with, manifests, referenced,
    stored_artifacts,
};

/// A local directory store behind a fault injector, and a clean view of
/// the same directory to check what the faults left.
struct Faulty {
    _dir: tempfile::TempDir,
    faulty: Arc<FaultyObjectStore>,
    store: Arc<ObjectCheckpointStore>,
    clean: Arc<ObjectCheckpointStore>,
}

impl Faulty {
    fn new() -> Faulty {
        let dir = tempfile::tempdir().unwrap();
        let clean = Arc::new(ObjectCheckpointStore::local(dir.path()).unwrap());
        let faulty = Arc::new(FaultyObjectStore::new(clean.object_store().clone()));
        // Two attempts per request, no waiting. Uploads run concurrently,
        // so a short run of failing requests is absorbed by the retries
        // of different artifacts; a fault on 64 consecutive requests (the
        // rest of a checkpoint) outlasts them.
        let store =
            ObjectCheckpointStore::new(faulty.clone(), "", "faulty").with_config(StoreConfig {
                retry: RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(1),
                },
                transfer: TransferConfig::single_request(),
            });
        Faulty {
            _dir: dir,
            faulty,
            store: Arc::new(store),
            clean,
        }
    }

    /// Fails the requests of `op` from the next one after `skip` more on,
    /// with their retries (64 of them).
    fn fail_next(&self, op: Op, skip: u64, fault: Fault) {
        self.faulty.add(Rule {
            op,
            nth: self.faulty.requests(op) + 1 + skip,
            count: 64,
            fault,
        });
    }

    /// No readable manifest references a missing artifact.
    fn assert_manifests_complete(&self, context: &str) {
        let ms = manifests(&*self.clean);
        let stored = stored_artifacts(&*self.clean);
        let missing: Vec<_> = referenced(ms.values())
            .into_iter()
            .filter(|a| !stored.contains(a))
            .collect();
        assert!(
            missing.is_empty(),
            "{context}: manifests {:?} reference missing artifacts {missing:?}",
            ms.keys().collect::<Vec<_>>()
        );
    }

    /// Restores the newest usable checkpoint into a fresh manager over the
    /// clean view and checks it against the model of the checkpoint it
    /// restored; returns that checkpoint.
    fn assert_restores(
        &self,
        models: &BTreeMap<CheckpointId, TypedModel>,
        context: &str,
    ) -> CheckpointId {
        let m = manager_with(self.clean.clone(), config(true, 8, 100));
        let info = m.restore_latest().unwrap().expect("a checkpoint");
        let id = info.stats.checkpoint.expect("a checkpoint restored");
        let model = models.get(&id).unwrap_or_else(|| {
            panic!("{context}: restored checkpoint {id}, which was never acknowledged")
        });
        Workload::new(&m)
            .check(model)
            .unwrap_or_else(|e| panic!("{context}: checkpoint {id}: {e}"));
        id
    }
}

/// The kinds a failed checkpoint may report under these faults.
fn typed(e: &highwater::Error, context: &str) {
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Unavailable
                | ErrorKind::StorageFull
                | ErrorKind::AlreadyExists
                | ErrorKind::Corruption
                | ErrorKind::NotFound
        ),
        "{context}: unexpected kind {:?}: {e}",
        e.kind()
    );
}

/// Puts fail (transient past the retries, ENOSPC, EIO, a torn upload) at
/// random points of checkpoints: each checkpoint commits or fails with a
/// typed error, the store never holds a manifest without its artifacts,
/// and the newest committed checkpoint restores exactly.
#[test]
fn put_faults_never_lose_a_committed_checkpoint() {
    for fault in [
        Fault::Unavailable,
        Fault::StorageFull,
        Fault::Eio,
        Fault::PartialWrite,
    ] {
        let f = Faulty::new();
        let m = manager_with(f.store.clone(), config(true, 4, 3));
        let w = Workload::new(&m);
        let mut rng = SplitMix64::new(18);
        let mut model = TypedModel::default();
        let mut models = BTreeMap::new();
        let (mut failed, mut committed) = (0, 0);
        for round in 0..16 {
            let context = format!("{fault:?} round {round}");
            for _ in 0..60 {
                w.step(&mut rng, &mut model);
            }
            if round % 4 != 0 {
                f.fail_next(Op::Put, rng.below(8), fault);
            }
            match m.checkpoint().and_then(|h| h.wait()) {
                Ok(info) => {
                    models.insert(info.id, model.clone());
                    committed += 1;
                }
                Err(e) => {
                    typed(&e, &context);
                    failed += 1;
                }
            }
            f.faulty.clear();
            f.assert_manifests_complete(&context);
            let newest = *models.keys().next_back().expect("round 0 commits");
            assert_eq!(f.assert_restores(&models, &context), newest, "{context}");
        }
        assert!(
            failed > 0 && committed >= 4,
            "{fault:?}: {failed} failed, {committed} committed, {} faults injected, {} puts",
            f.faulty.injected(),
            f.faulty.requests(Op::Put)
        );
        // Retention cleans up what the failed checkpoints left.
        m.checkpoint().unwrap().wait().unwrap();
        m.apply_retention().unwrap();
        assert_no_orphans(&*f.clean, &format!("{fault:?} after retention"));
    }
}

/// A store that acknowledges a torn upload (half the bytes stored) is
/// caught on restore: the damaged checkpoint is skipped for an older one
/// whose state is exact, never restored wrong.
#[test]
fn a_store_that_lies_about_an_upload_is_caught_on_restore() {
    let f = Faulty::new();
    let m = manager_with(f.store.clone(), config(true, 8, 10));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(7);
    let mut model = TypedModel::default();
    let mut models = BTreeMap::new();
    for _ in 0..200 {
        w.step(&mut rng, &mut model);
    }
    let first = m.checkpoint().unwrap().wait().unwrap();
    models.insert(first.id, model.clone());
    for _ in 0..60 {
        w.step(&mut rng, &mut model);
    }
    // The first upload of the next checkpoint (an artifact) is torn.
    f.fail_next(Op::Put, 0, Fault::TornButAcknowledged);
    let second = m.checkpoint().unwrap().wait().unwrap();
    f.faulty.clear();
    models.insert(second.id, model.clone());
    let restored = f.assert_restores(&models, "after a torn upload");
    assert_eq!(restored, first.id, "the torn checkpoint was skipped");
}

/// Reads fail (EIO, unavailable past the retries) at every point of a
/// restore in turn: each restore is exact, falls back to an older exact
/// checkpoint, or fails with a typed error; with the faults gone it is
/// exact again.
#[test]
fn read_faults_during_recovery_never_restore_a_wrong_state() {
    let f = Faulty::new();
    let m = manager_with(f.store.clone(), config(true, 8, 10));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(3);
    let mut model = TypedModel::default();
    let mut models = BTreeMap::new();
    for round in 0..4 {
        for _ in 0..(if round == 0 { 300 } else { 50 }) {
            w.step(&mut rng, &mut model);
        }
        let info = m.checkpoint().unwrap().wait().unwrap();
        models.insert(info.id, model.clone());
    }
    let newest = *models.keys().next_back().unwrap();
    let before = f.faulty.requests(Op::Get);
    let probe = manager_with(f.store.clone(), config(true, 8, 10));
    probe.restore_latest().unwrap();
    let gets = f.faulty.requests(Op::Get) - before;
    assert!(gets > 3, "a restore reads: {gets}");
    let (mut exact, mut fell_back, mut failed) = (0, 0, 0);
    for fault in [Fault::Eio, Fault::Unavailable] {
        for skip in 0..gets {
            let context = format!("{fault:?} at read {skip}");
            let r = manager_with(f.store.clone(), config(true, 8, 10));
            f.fail_next(Op::Get, skip, fault);
            let outcome = r.restore_latest();
            f.faulty.clear();
            match outcome {
                Ok(Some(info)) => {
                    let id = info.stats.checkpoint.unwrap();
                    Workload::new(&r)
                        .check(&models[&id])
                        .unwrap_or_else(|e| panic!("{context}: checkpoint {id}: {e}"));
                    if id == newest {
                        exact += 1
                    } else {
                        fell_back += 1
                    }
                }
                Ok(None) => panic!("{context}: nothing restored"),
                Err(e) => {
                    typed(&e, &context);
                    failed += 1;
                }
            }
            f.assert_manifests_complete(&context);
        }
    }
    assert_eq!(f.assert_restores(&models, "faults gone"), newest);
    assert!(
        exact + fell_back + failed == 2 * gets as usize && failed + fell_back > 0,
        "exact={exact} fell_back={fell_back} failed={failed}"
    );
}

/// Deletes fail during retention and listings fail during garbage
/// collection: checkpoints still commit, retained checkpoints stay whole,
/// and once the store behaves the next retention pass leaves nothing
/// unreferenced.
#[test]
fn delete_and_list_faults_during_retention_leave_retained_checkpoints_whole() {
    let f = Faulty::new();
    let m = manager_with(f.store.clone(), config(false, 8, 2));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(11);
    let mut model = TypedModel::default();
    let mut models = BTreeMap::new();
    for round in 0..10 {
        let context = format!("round {round}");
        for _ in 0..80 {
            w.step(&mut rng, &mut model);
        }
        let op = if round % 2 == 0 { Op::Delete } else { Op::List };
        f.fail_next(op, rng.below(3), Fault::Unavailable);
        match m.checkpoint().and_then(|h| h.wait()) {
            Ok(info) => {
                models.insert(info.id, model.clone());
            }
            Err(e) => typed(&e, &context),
        }
        if let Err(e) = m.apply_retention() {
            typed(&e, &context);
        }
        f.faulty.clear();
        f.assert_manifests_complete(&context);
        f.assert_restores(&models, &context);
    }
    assert!(f.faulty.injected() > 0);
    m.apply_retention().unwrap();
    assert_no_orphans(&*f.clean, "after a clean retention pass");
}

/// Merges (compaction of a chain into one full layer) with put faults and
/// reads that stall: a merge commits or fails typed, the chain it would
/// have replaced stays restorable, and stalls only slow things down.
#[test]
fn merges_under_put_faults_and_slow_reads_keep_every_checkpoint_restorable() {
    let f = Faulty::new();
    let m = manager_with(f.store.clone(), config(true, 16, 20));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(5);
    let mut model = TypedModel::default();
    let mut models = BTreeMap::new();
    let (mut merged, mut failed) = (0, 0);
    for round in 0..8 {
        let context = format!("round {round}");
        for _ in 0..50 {
            w.step(&mut rng, &mut model);
        }
        let info = m.checkpoint().unwrap().wait().unwrap();
        models.insert(info.id, model.clone());
        if round < 2 {
            continue;
        }
        f.faulty.add(Rule {
            op: Op::Get,
            nth: f.faulty.requests(Op::Get) + 1,
            count: 3,
            fault: Fault::Slow(Duration::from_millis(20)),
        });
        if round % 2 == 0 {
            f.fail_next(Op::Put, rng.below(4), Fault::StorageFull);
        }
        match m.compact() {
            Ok(Some(_)) => {
                merged += 1;
                // The merged checkpoint holds the newest state.
                let newest = *manifests(&*f.clean).keys().next_back().unwrap();
                models.insert(newest, model.clone());
            }
            Ok(None) => {}
            Err(e) => {
                typed(&e, &context);
                failed += 1;
            }
        }
        f.faulty.clear();
        f.assert_manifests_complete(&context);
        f.assert_restores(&models, &context);
    }
    assert!(merged > 0 && failed > 0, "merged={merged} failed={failed}");
}

/// The manager over the faulty store is usable after every fault: a final
/// checkpoint and restore with no faults is exact (used by the tests above
/// through `assert_restores`; here with a fresh job for the slow path).
#[test]
fn slow_uploads_only_slow_a_checkpoint_down() {
    let f = Faulty::new();
    f.faulty.add(Rule {
        op: Op::Put,
        nth: 1,
        count: u64::MAX,
        fault: Fault::Slow(Duration::from_millis(15)),
    });
    let m: StateManager = manager_with(f.store.clone(), config(true, 8, 10));
    let w = Workload::new(&m);
    let mut rng = SplitMix64::new(9);
    let mut model = TypedModel::default();
    let mut models = BTreeMap::new();
    for _ in 0..100 {
        w.step(&mut rng, &mut model);
    }
    let started = std::time::Instant::now();
    let info = m.checkpoint().unwrap().wait().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(15));
    models.insert(info.id, model.clone());
    assert!(f.faulty.injected() > 0);
    assert_eq!(f.assert_restores(&models, "slow uploads"), info.id);
}
