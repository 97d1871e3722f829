//! Rescaling: state checkpointed by a job at parallelism 4 restores into 3
//! and into 8 subtasks; every subtask fetches only the artifacts over its
//! key groups and holds exactly the keys of its key groups.

use std::collections::BTreeSet;
use std::sync::Arc;

use highwater::core::key::key_group_of;
use highwater::core::{KeyGroupRange, ManualClock, StateBackend};
use highwater::memory::MemoryBackend;
use highwater::recovery::{Recovery, RecoveryConfig, RecoveryScope, RecoveryTarget};
use highwater::wal::Wal;
use highwater::{MapStateDescriptor, ValueStateDescriptor};
use highwater_testkit::model::Entries;

use crate::common::{JobDirs, assert_state, config, dump, manager, runtime, wal_config};

const MAX_PARALLELISM: u16 = 128;

/// Writes state the way 4 subtasks would (each writing only the keys of its
/// key groups), with a full and an incremental checkpoint and a logged
/// tail after them. Returns the final state.
fn write_job(dirs: &JobDirs) -> Entries {
    let clock = Arc::new(ManualClock::new(1_000));
    let m = manager(dirs, config(5), clock.clone(), Some(64 << 10)).expect("manager");
    let counts = m
        .keyed_state("counts")
        .unwrap()
        .value_state::<u64, u64>(&ValueStateDescriptor::new("count"))
        .unwrap();
    let ctx = m.keyed_state("joins").unwrap();
    let index = ctx
        .map_state::<u64, String, u64>(&MapStateDescriptor::new("index"))
        .unwrap();
    for subtask in 0..4u16 {
        let owned = KeyGroupRange::for_subtask(MAX_PARALLELISM, 4, subtask).unwrap();
        let mut written = 0;
        for k in 0..4000u64 {
            if written == 500 {
                break;
            }
            if !owned.contains(ctx.key_group(&k).unwrap()) {
                continue;
            }
            counts.update(&k, &(k * 3)).unwrap();
            index.put(&k, &format!("e{k}"), &k).unwrap();
            written += 1;
        }
        m.commit().unwrap();
    }
    let first = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(first.kind, highwater::CheckpointKind::Full);
    clock.advance(std::time::Duration::from_millis(10));
    for k in (0..4000u64).step_by(7) {
        counts.update(&k, &(k + 1)).unwrap();
    }
    for k in (0..4000u64).step_by(11) {
        counts.clear(&k).unwrap();
    }
    m.commit().unwrap();
    let second = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(second.kind, highwater::CheckpointKind::Incremental);
    // A tail only the log holds.
    for k in (0..4000u64).step_by(13) {
        counts.update(&k, &7).unwrap();
        index.remove(&k, &format!("e{k}")).unwrap();
    }
    m.commit().unwrap();
    let state = dump(&**m.backend());
    m.close().unwrap();
    state
}

fn restore_at(dirs: &JobDirs, parallelism: u16, original: &Entries) {
    let rt = runtime();
    let (wal, _) = Wal::open(&dirs.wal_dir, wal_config(64 << 10)).expect("open wal");
    let engine = Recovery::new(dirs.store(), RecoveryConfig::default(), rt.handle().clone())
        .expect("engine");
    let mut union = Entries::new();
    let mut seen = BTreeSet::new();
    let total_artifacts = engine
        .plan(RecoveryTarget::Latest, &RecoveryScope::all(), Some(&wal))
        .unwrap()
        .artifacts_to_fetch;
    for i in 0..parallelism {
        let scope = RecoveryScope::subtask(MAX_PARALLELISM, parallelism, i).unwrap();
        let owned = scope.key_groups.unwrap();
        let backend = MemoryBackend::new();
        let plan = engine
            .plan(RecoveryTarget::Latest, &scope, Some(&wal))
            .unwrap();
        // Only artifacts over the subtask's key groups are fetched.
        for r in &plan.ranges {
            for a in &r.artifacts {
                assert!(
                    a.artifact.key_groups.intersect(&owned).is_some(),
                    "p={parallelism} subtask {i} plans artifact over {} outside {owned}",
                    a.artifact.key_groups
                );
            }
        }
        assert!(plan.artifacts_to_fetch < total_artifacts);
        let planned = plan.artifacts_to_fetch;
        let out = engine.execute(plan, &backend, Some(&wal), None).unwrap();
        assert_eq!(out.stats.artifacts_fetched, planned);
        assert!(
            out.stats.wal_records_replayed > 0,
            "the log tail was replayed"
        );
        let state = dump(&backend);
        assert_eq!(state.len() as u64, backend.stats().entries);
        for k in state.keys() {
            let kg = key_group_of(k).unwrap();
            assert!(
                owned.contains(kg),
                "p={parallelism} subtask {i} holds key group {} outside {owned}",
                kg.0
            );
            assert!(seen.insert(k.clone()), "key held by two subtasks");
        }
        union.extend(state);
    }
    assert_state(
        original,
        &union,
        &format!("union of {parallelism} subtasks"),
    );
}

#[test]
fn state_checkpointed_at_parallelism_4_restores_into_3_and_8_subtasks() {
    let dirs = JobDirs::new();
    let original = write_job(&dirs);
    assert!(original.len() > 3000, "the job wrote state");
    for p in [3, 4, 8] {
        restore_at(&dirs, p, &original);
    }
}

#[test]
fn partial_recovery_loads_only_the_selected_operators() {
    let dirs = JobDirs::new();
    let original = write_job(&dirs);
    let rt = runtime();
    let (wal, _) = Wal::open(&dirs.wal_dir, wal_config(64 << 10)).expect("open wal");
    let engine = Recovery::new(dirs.store(), RecoveryConfig::default(), rt.handle().clone())
        .expect("engine");
    let backend = MemoryBackend::new();
    backend.put(b"\x00\x01live", b"replaced").unwrap();
    let scope = RecoveryScope::all().with_operators(["joins"]);
    let plan = engine
        .plan(RecoveryTarget::Latest, &scope, Some(&wal))
        .unwrap();
    assert!(!plan.ranges.is_empty());
    assert!(plan.ranges.iter().all(|r| r.operator == "joins"));
    engine.execute(plan, &backend, Some(&wal), None).unwrap();
    let want: Entries = original
        .iter()
        .filter(|(k, _)| highwater::core::key::operator_of(k).unwrap() == "joins")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!want.is_empty() && want.len() < original.len());
    assert_state(&want, &dump(&backend), "operator joins");
}
