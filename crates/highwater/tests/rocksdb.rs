//! Native checkpoints of the RocksDB backend through the state manager:
//! SST files shared between checkpoints and kept by retention while
//! referenced, exact restores, rescaling restores, fallback past damaged
//! checkpoints, and refusal by backends that cannot open native files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::key::key_group_of;
use highwater::core::{ArtifactId, KeyGroupRange, LayerKind, load_manifest};
use highwater::memory::MemoryBackend;
use highwater::{
    CheckpointConfig, CheckpointId, CheckpointStore, Error, Manifest, RecoveryConfig,
    RecoveryScope, RecoveryTarget, StateBackend, StateManager, ValueStateDescriptor,
};
use highwater_rocksdb::{RocksDbBackend, RocksDbConfig};

fn rocks(path: &Path) -> Arc<RocksDbBackend> {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 4 << 20;
    c.block_cache_size = 8 << 20;
    Arc::new(RocksDbBackend::with_config(c).unwrap())
}

fn manager(
    backend: Arc<dyn StateBackend>,
    store: Arc<dyn CheckpointStore>,
    keep: usize,
) -> StateManager {
    let mut cfg = CheckpointConfig::default();
    cfg.max_retained = keep;
    StateManager::builder()
        .backend(backend)
        .store(store)
        .config(cfg)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn manifest(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn CheckpointStore>,
    id: CheckpointId,
) -> Manifest {
    rt.block_on(load_manifest(&**store, id)).unwrap()
}

fn sst_ids(m: &Manifest) -> BTreeSet<ArtifactId> {
    m.artifacts()
        .filter(|a| a.operator.ends_with(".sst"))
        .map(|a| a.id)
        .collect()
}

fn all(b: &dyn StateBackend) -> BTreeMap<Vec<u8>, Vec<u8>> {
    b.scan_range(&[], &[0xff, 0xff, 0xff])
        .unwrap()
        .into_iter()
        .collect()
}

/// Writes `n` counters (`user-i` → `i * round`) through the typed API.
fn write_counters(m: &StateManager, range: std::ops::Range<u64>, round: u64) {
    let counts = m
        .keyed_state("counter")
        .unwrap()
        .value_state::<String, u64>(&ValueStateDescriptor::new("count"))
        .unwrap();
    for i in range {
        counts.update(&format!("user-{i}"), &(i * round)).unwrap();
    }
}

/// A local store in `dir/store` and a manager over RocksDB in `dir/live`
/// keeping 3 checkpoints.
fn live(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Arc<dyn CheckpointStore>,
    Arc<RocksDbBackend>,
    StateManager,
) {
    let store_dir = dir.join("store");
    let store: Arc<dyn CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(&store_dir).unwrap());
    let backend = rocks(&dir.join("live"));
    let m = manager(backend.clone(), store.clone(), 3);
    (store_dir, store, backend, m)
}

/// Flips one byte in the middle of artifact `id` in the local store at
/// `store_dir`, as storage damage would.
fn damage_stored(store_dir: &Path, id: ArtifactId) {
    let path = store_dir
        .join(highwater::cloud::layout::ARTIFACTS_DIR)
        .join(highwater::cloud::layout::artifact_name(id));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn consecutive_checkpoints_share_sst_files_and_retention_keeps_them_while_referenced() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(tmp.path().join("store")).unwrap());
    let backend = rocks(&tmp.path().join("live"));
    let m = manager(backend.clone(), store.clone(), 2);
    let rt = runtime();

    // 20 000 keys compacted into the bottom level: the checkpoint's flush
    // then adds one small level-0 file per checkpoint, below RocksDB's
    // level-0 compaction trigger, so nothing is rewritten in between.
    write_counters(&m, 0..20_000, 1);
    backend.compact().unwrap();
    let first = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(first.kind, highwater::CheckpointKind::Full);
    assert_eq!(first.artifacts_reused, 0);
    let m1 = manifest(&rt, &store, first.id);
    assert!(m1.is_native());
    assert_eq!(m1.layers[0].kind, LayerKind::Native);
    let ssts1 = sst_ids(&m1);
    assert!(!ssts1.is_empty());

    // 1 % of the keys change.
    write_counters(&m, 0..200, 2);
    let second = m.checkpoint().unwrap().wait().unwrap();
    let m2 = manifest(&rt, &store, second.id);
    let ssts2 = sst_ids(&m2);
    assert!(
        ssts1.is_subset(&ssts2),
        "every SST of the first checkpoint is in the second"
    );
    assert!(
        ssts2.len() > ssts1.len(),
        "the second adds the flushed changes"
    );
    let sst_bytes = |m: &Manifest, only: &dyn Fn(&ArtifactId) -> bool| -> u64 {
        m.artifacts()
            .filter(|a| a.operator.ends_with(".sst") && only(&a.id))
            .map(|a| a.stored_bytes)
            .sum()
    };
    let shared_bytes = sst_bytes(&m2, &|id| ssts1.contains(id));
    let total_bytes = sst_bytes(&m2, &|_| true);
    assert!(
        shared_bytes * 10 >= total_bytes * 9,
        "the SST bytes of the second checkpoint are mostly shared: {shared_bytes} of {total_bytes}"
    );
    assert!(
        second.artifacts_reused >= ssts1.len(),
        "shared files are reused, not uploaded"
    );
    assert!(
        second.bytes_written * 10 < first.bytes_written,
        "the second checkpoint uploads little: {} bytes vs {} for the first",
        second.bytes_written,
        first.bytes_written
    );

    // Compaction rewrites everything into new files; two more checkpoints
    // push the first two out of retention (max_retained = 2).
    write_counters(&m, 200..400, 3);
    let third = m.checkpoint().unwrap().wait().unwrap();
    let retention = third.retention.clone().expect("retention ran");
    assert_eq!(retention.manifests_deleted, vec![first.id]);
    let stored: BTreeSet<ArtifactId> = rt
        .block_on(store.list_artifacts())
        .unwrap()
        .into_iter()
        .collect();
    let m3 = manifest(&rt, &store, third.id);
    for id in m2.artifacts().chain(m3.artifacts()).map(|a| a.id) {
        assert!(
            stored.contains(&id),
            "artifact {id} of a retained checkpoint was deleted"
        );
    }
    // Files the first checkpoint shared with the second survive its deletion.
    for id in &ssts1 {
        assert!(
            stored.contains(id),
            "shared SST {id} deleted while checkpoint 2 references it"
        );
    }

    backend.compact().unwrap();
    write_counters(&m, 400..600, 4);
    let fourth = m.checkpoint().unwrap().wait().unwrap();
    let fifth = {
        backend.compact().unwrap();
        m.checkpoint().unwrap().wait().unwrap()
    };
    let stored: BTreeSet<ArtifactId> = rt
        .block_on(store.list_artifacts())
        .unwrap()
        .into_iter()
        .collect();
    let m4 = manifest(&rt, &store, fourth.id);
    let m5 = manifest(&rt, &store, fifth.id);
    let referenced: BTreeSet<ArtifactId> =
        m4.artifacts().chain(m5.artifacts()).map(|a| a.id).collect();
    assert_eq!(
        stored, referenced,
        "after compaction and retention the store holds exactly what retained manifests reference"
    );
    assert!(
        ssts1.iter().any(|id| !stored.contains(id)),
        "SST files no retained checkpoint references are deleted"
    );

    // Restoring the newest checkpoint gives exactly the live state.
    let before = all(&*backend);
    write_counters(&m, 0..50, 99);
    let info = m.restore(fifth.id).unwrap();
    assert_eq!(info.stats.checkpoint, Some(fifth.id));
    assert!(info.stats.bytes_fetched > 0);
    assert_eq!(all(&*backend), before, "restore of a native checkpoint");
}

#[test]
fn restore_latest_falls_back_past_a_checkpoint_with_a_missing_sst() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, store, backend, m) = live(tmp.path());
    let rt = runtime();
    write_counters(&m, 0..3000, 1);
    let first = m.checkpoint().unwrap().wait().unwrap();
    let expected = all(&*backend);
    write_counters(&m, 3000..3100, 1);
    let second = m.checkpoint().unwrap().wait().unwrap();
    let m1 = manifest(&rt, &store, first.id);
    let m2 = manifest(&rt, &store, second.id);
    // A file only the second checkpoint has.
    let only_second = m2
        .artifacts()
        .find(|a| a.operator.ends_with(".sst") && !m1.artifacts().any(|b| b.id == a.id))
        .expect("the second checkpoint flushed a new SST file");
    rt.block_on(store.delete_artifact(only_second.id)).unwrap();

    let fresh = rocks(&tmp.path().join("fresh"));
    let m_fresh = manager(fresh.clone(), store.clone(), 3);
    let info = m_fresh.restore_latest().unwrap().unwrap();
    assert_eq!(info.stats.checkpoint, Some(first.id));
    assert_eq!(info.stats.fallbacks.len(), 1, "{:?}", info.stats.fallbacks);
    assert_eq!(info.stats.fallbacks[0].checkpoint, second.id);
    assert_eq!(all(&*fresh), expected);

    // A damaged copy of a shared file is caught by its content address.
    let victim = m1
        .artifacts()
        .find(|a| a.operator.ends_with(".sst"))
        .unwrap();
    damage_stored(&store_dir, victim.id);
    let err = m_fresh.restore(first.id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

/// Issue 17, local recovery through the manager: a job restarted in the
/// same RocksDB working directory restores its newest checkpoint taking
/// every SST file from the previous process's directory (the recovery
/// reports them as local) and fetching only the small metadata files; a
/// fresh directory fetches everything; both hold the same state.
#[test]
fn a_restart_in_the_same_directory_fetches_only_what_it_does_not_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, store, backend, m) = live(tmp.path());
    let rt = runtime();
    // Three checkpoints, three flushed level-0 files: below RocksDB's
    // compaction trigger, so every file the last one names stays live.
    for round in 0..3u64 {
        write_counters(&m, round * 1000..round * 1000 + 1500, round + 1);
        m.checkpoint().unwrap().wait().unwrap();
    }
    // Older than the record the commit writes by more than the file
    // system's clock tick, so the record vouches for every file.
    std::thread::sleep(std::time::Duration::from_millis(30));
    let last = m.checkpoint().unwrap().wait().unwrap();
    let expected = all(&*backend);
    m.close().unwrap();
    drop(m);
    drop(backend);
    let man = manifest(&rt, &store, last.id);
    let (ssts, sst_bytes): (usize, u64) = man
        .artifacts()
        .filter(|a| a.operator.ends_with(".sst"))
        .fold((0, 0), |(n, b), a| (n + 1, b + a.stored_bytes));
    assert!(ssts >= 3, "{ssts} SST files");

    let restarted = rocks(&tmp.path().join("live"));
    let info = manager(restarted.clone(), store.clone(), 3)
        .restore_latest()
        .unwrap()
        .unwrap();
    assert_eq!(info.stats.checkpoint, Some(last.id));
    assert_eq!(info.stats.artifacts_local, ssts);
    assert_eq!(info.stats.bytes_local, sst_bytes);
    assert_eq!(
        info.stats.artifacts_fetched,
        man.artifacts().count() - ssts,
        "only MANIFEST, OPTIONS and CURRENT are fetched"
    );
    assert_eq!(all(&*restarted), expected);
    // Local files taken by their recorded content address, and read.
    let taken = |b: &RocksDbBackend| {
        let c = b.metrics().counters;
        (c.local_files_recorded, c.local_files_hashed)
    };
    // The committed checkpoint recorded its files' content addresses:
    // none was read to be taken.
    assert_eq!(taken(&restarted), (ssts as u64, 0));
    // So did the restore, for the files it installed: a second restart
    // takes them unread too.
    drop(restarted);
    let again = rocks(&tmp.path().join("live"));
    let info = manager(again.clone(), store.clone(), 3)
        .restore(last.id)
        .unwrap();
    assert_eq!(info.stats.artifacts_local, ssts);
    assert_eq!(all(&*again), expected);
    assert_eq!(taken(&again), (ssts as u64, 0));
    drop(again);

    let fresh = rocks(&tmp.path().join("elsewhere"));
    let info = manager(fresh.clone(), store.clone(), 3)
        .restore(last.id)
        .unwrap();
    assert_eq!(info.stats.artifacts_local, 0);
    assert_eq!(info.stats.artifacts_fetched, man.artifacts().count());
    assert_eq!(all(&*fresh), expected);
}

#[test]
fn a_rescaling_restore_splits_a_checkpoint_between_subtasks() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(tmp.path().join("store")).unwrap());
    let backend = rocks(&tmp.path().join("live"));
    let m = manager(backend.clone(), store.clone(), 3);
    write_counters(&m, 0..4000, 7);
    let info = m.checkpoint().unwrap().wait().unwrap();
    let everything = all(&*backend);
    let rt = runtime();
    let man = manifest(&rt, &store, info.id);
    let mut union = BTreeMap::new();
    for index in 0..3u16 {
        let keep = KeyGroupRange::for_subtask(man.max_parallelism, 3, index).unwrap();
        let sub = rocks(&tmp.path().join(format!("sub-{index}")));
        let scope = RecoveryScope::subtask(man.max_parallelism, 3, index).unwrap();
        let r = manager(sub.clone(), store.clone(), 3)
            .restore_with(
                RecoveryTarget::Checkpoint(info.id),
                &scope,
                &RecoveryConfig::default(),
                None,
            )
            .unwrap();
        assert_eq!(r.stats.artifacts_fetched, man.artifacts().count());
        let got = all(&*sub);
        assert!(!got.is_empty(), "subtask {index} owns some keys");
        for k in got.keys() {
            assert!(
                keep.contains(key_group_of(k).unwrap()),
                "subtask {index} holds a key outside {keep}"
            );
        }
        union.extend(got);
    }
    assert_eq!(
        union, everything,
        "the subtasks hold every key exactly once"
    );
    let out_of_range = KeyGroupRange::new(0, man.max_parallelism + 1).unwrap();
    let sub = rocks(&tmp.path().join("sub-bad"));
    let scope = RecoveryScope {
        key_groups: Some(out_of_range),
        ..RecoveryScope::all()
    };
    let refused = manager(sub, store.clone(), 3).restore_with(
        RecoveryTarget::Checkpoint(info.id),
        &scope,
        &RecoveryConfig::default(),
        None,
    );
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
}

#[test]
fn a_backend_without_native_checkpoints_refuses_a_native_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(tmp.path().join("store")).unwrap());
    let backend = rocks(&tmp.path().join("live"));
    let m = manager(backend, store.clone(), 3);
    write_counters(&m, 0..100, 1);
    let info = m.checkpoint().unwrap().wait().unwrap();
    let memory = manager(Arc::new(MemoryBackend::new()), store.clone(), 3);
    let err = memory.restore(info.id).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // Verification checks native files by content address and finds them sound.
    let rt = runtime();
    let report = rt.block_on(highwater::verify_store(&*store)).unwrap();
    assert!(report.iter().all(|v| v.is_sound()), "{report:?}");
}

/// A damaged SST file in the store is repaired the way a damaged encoded
/// chunk is: the restore that finds it deletes the stored copy, and the
/// next native checkpoint of a backend that still has the file uploads it
/// again, so that checkpoint restores. (Before, native upload skipped any
/// file already present, so the damaged copy stayed referenced by every
/// later checkpoint sharing it.)
#[test]
fn a_damaged_sst_in_the_store_is_deleted_on_restore_and_rewritten_by_the_next_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, store, backend, m) = live(tmp.path());
    let rt = runtime();
    write_counters(&m, 0..5000, 1);
    backend.compact().unwrap();
    let first = m.checkpoint().unwrap().wait().unwrap();
    let m1 = manifest(&rt, &store, first.id);
    let victim = m1
        .artifacts()
        .find(|a| a.operator.ends_with(".sst"))
        .unwrap()
        .clone();
    damage_stored(&store_dir, victim.id);

    // Detected on restore, and the stored copy deleted.
    let fresh = manager(rocks(&tmp.path().join("fresh")), store.clone(), 3);
    let err = fresh.restore(first.id).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(
        !rt.block_on(store.has_artifact(victim.id)).unwrap(),
        "the damaged copy of {} is deleted",
        victim.operator
    );

    // The live backend still has the file: its next checkpoint writes it
    // again and verifies.
    write_counters(&m, 0..50, 2);
    let second = m.checkpoint().unwrap().wait().unwrap();
    let m2 = manifest(&rt, &store, second.id);
    assert!(
        m2.artifacts().any(|a| a.id == victim.id),
        "the second checkpoint shares {}",
        victim.operator
    );
    let stored = rt.block_on(store.get_artifact(victim.id)).unwrap();
    assert_eq!(ArtifactId::of(&stored), victim.id);
    let again = rocks(&tmp.path().join("again"));
    let info = manager(again.clone(), store.clone(), 3)
        .restore(second.id)
        .unwrap();
    assert_eq!(info.stats.checkpoint, Some(second.id));
    assert_eq!(all(&*again), all(&*backend));
}

/// What the property test below does between checkpoints.
#[derive(Debug, Clone)]
enum Step {
    /// Writes `count` counters from `first` with values of round `round`.
    Write { first: u64, count: u64, round: u64 },
    /// Deletes `count` counters from `first`.
    Delete { first: u64, count: u64 },
    /// Rewrites every file (a full compaction).
    Compact,
    /// Flushes the memtable into a new level-0 file.
    Flush,
    /// Checkpoints, then restores that checkpoint into the live backend (a
    /// new database generation, numbering files again).
    CheckpointAndRestore,
    /// Checkpoints.
    Checkpoint,
    /// Clears the backend behind the manager's back: a new database
    /// generation numbering its files from the start again, while the
    /// checkpointer still holds the previous checkpoint's files.
    ClearBackend,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0..3_000u64, 1..800u64, 1..1_000u64)
            .prop_map(|(first, count, round)| Step::Write { first, count, round }),
        1 => (0..3_000u64, 1..400u64).prop_map(|(first, count)| Step::Delete { first, count }),
        1 => Just(Step::Compact),
        1 => Just(Step::Flush),
        1 => Just(Step::CheckpointAndRestore),
        3 => Just(Step::Checkpoint),
        1 => Just(Step::ClearBackend),
    ]
}

/// Native checkpoints take unchanged SST files from the previous checkpoint
/// by their identity (database, generation, name, size) without reading
/// them; against random writes, deletes, flushes, forced compactions,
/// restores and clears behind the manager's back (new generations that
/// number files from the start again), every checkpoint
/// restores into a fresh backend exactly as the state was when it was
/// taken, and every file it names is byte for byte the stored artifact.
#[test]
fn the_native_file_index_never_stands_in_for_a_changed_file() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let known_total = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step(), 4..14), |steps| {
            let tmp = tempfile::tempdir().unwrap();
            let (_, store, backend, m) = live(tmp.path());
            let key = |i: u64| format!("user-{i}");
            let counts = m
                .keyed_state("counter")
                .unwrap()
                .value_state::<String, u64>(&ValueStateDescriptor::new("count"))
                .unwrap();
            let mut taken = Vec::new();
            let mut checkpoint = |restore: bool| {
                let state = all(&*backend);
                let info = m.checkpoint().unwrap().wait().unwrap();
                assert!(info.native_files_known <= info.artifacts_reused);
                known_total.set(known_total.get() + info.native_files_known);
                // Every SST the checkpoint names is the artifact of the very
                // file in the live database (still there: nothing compacts
                // between the checkpoint and this check).
                let rt = runtime();
                let manifest = manifest(&rt, &store, info.id);
                // The live generation: the newest database directory.
                let current = std::fs::read_dir(tmp.path().join("live"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("db-"))
                    .max()
                    .unwrap();
                for a in manifest
                    .artifacts()
                    .filter(|a| a.operator.ends_with(".sst"))
                {
                    if let Ok(bytes) = std::fs::read(current.join(&a.operator)) {
                        prop_assert_eq!(ArtifactId::of(&bytes), a.id, "{}", a.operator);
                    }
                }
                if restore {
                    m.restore(info.id).unwrap();
                    prop_assert_eq!(&all(&*backend), &state, "restored in place");
                }
                taken.push((info.id, state));
                Ok(())
            };
            for s in &steps {
                match *s {
                    Step::Write {
                        first,
                        count,
                        round,
                    } => {
                        for i in first..first + count {
                            counts.update(&key(i), &(i * round)).unwrap();
                        }
                    }
                    Step::Delete { first, count } => {
                        for i in first..first + count {
                            counts.clear(&key(i)).unwrap();
                        }
                    }
                    Step::Compact => backend.compact().unwrap(),
                    Step::Flush => backend.flush().unwrap(),
                    Step::CheckpointAndRestore => checkpoint(true)?,
                    Step::Checkpoint => checkpoint(false)?,
                    Step::ClearBackend => StateBackend::clear(&*backend).unwrap(),
                }
            }
            checkpoint(false)?;
            // The retained checkpoints restore into a fresh backend as the
            // state was when each was taken.
            let retained: BTreeSet<CheckpointId> = runtime()
                .block_on(store.list_manifests())
                .unwrap()
                .into_iter()
                .collect();
            for (id, state) in taken.iter().filter(|(id, _)| retained.contains(id)) {
                let fresh = rocks(&tmp.path().join(format!("fresh-{id}")));
                let other = manager(fresh.clone(), store.clone(), 3);
                other.restore(*id).unwrap();
                prop_assert_eq!(&all(&*fresh), state, "checkpoint {}", id);
            }
            Ok(())
        })
        .unwrap();
    assert!(
        known_total.get() > 0,
        "no checkpoint took a file from the previous one: the index was never used"
    );
}

/// RocksDB with encoded checkpoints (`native_checkpoints: false`) and a
/// small change-tracking bound: an interval that changes more keys than the
/// bound holds gets a full checkpoint instead of an incremental one
/// (deletes included, as a full checkpoint has them: absent), the next
/// small interval an incremental again, and the chain restores exactly —
/// into a memory backend too, since encoded checkpoints are portable.
#[test]
fn an_interval_past_the_change_tracking_bound_gets_a_full_encoded_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(tmp.path().join("store")).unwrap());
    let mut c = RocksDbConfig::new(tmp.path().join("live"));
    c.write_buffer_size = 4 << 20;
    c.block_cache_size = 8 << 20;
    c.native_checkpoints = false;
    c.change_tracking_bytes = 16 << 10;
    let backend = Arc::new(RocksDbBackend::with_config(c).unwrap());
    let m = manager(backend.clone(), store.clone(), 5);
    let rt = runtime();
    let kind_of = |id| manifest(&rt, &store, id).kind;

    write_counters(&m, 0..100, 1);
    let first = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(kind_of(first.id), highwater::CheckpointKind::Full);
    write_counters(&m, 0..10, 2);
    let small = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(kind_of(small.id), highwater::CheckpointKind::Incremental);
    // Thousands of distinct keys pass the 16 KiB bound; one key deleted.
    write_counters(&m, 0..3_000, 3);
    let counts = m
        .keyed_state("counter")
        .unwrap()
        .value_state::<String, u64>(&ValueStateDescriptor::new("count"))
        .unwrap();
    counts.clear(&"user-7".to_string()).unwrap();
    let big = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(kind_of(big.id), highwater::CheckpointKind::Full);
    write_counters(&m, 20..30, 4);
    counts.clear(&"user-8".to_string()).unwrap();
    let last = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(kind_of(last.id), highwater::CheckpointKind::Incremental);
    let want = all(&*backend);
    assert!(!want.is_empty());
    drop(counts);
    m.close().unwrap();

    for into in [
        Arc::new(MemoryBackend::new()) as Arc<dyn StateBackend>,
        rocks(&tmp.path().join("again")),
    ] {
        let r = manager(into.clone(), store.clone(), 5);
        r.restore(last.id).unwrap();
        assert_eq!(all(&*into), want, "{}", into.name());
    }
}
