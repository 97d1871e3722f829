//! What a new user meets when embedding the facade (issue 19): an interval
//! that is missing says so, the builder does not depend on the order of its
//! calls, `close()` really closes, and one prelude holds what an engine
//! needs.

use std::sync::Arc;
use std::time::Duration;

use highwater::prelude::*;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::wal::WalConfig;

use crate::common::{ControlledStore, counter};

fn builder() -> highwater::StateManagerBuilder {
    StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(Arc::new(ObjectCheckpointStore::in_memory()))
}

#[test]
fn maybe_checkpoint_without_an_interval_is_an_error_not_silence() {
    let m = builder().build().unwrap();
    let err = m.maybe_checkpoint().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("interval"), "{err}");
    // Nothing was written meanwhile: the error is not a skipped checkpoint.
    assert!(m.checkpoint_history().unwrap().is_empty());

    // With an interval (zero: due at every call) it checkpoints.
    let m = builder().interval(Duration::ZERO).build().unwrap();
    counter(&m).update(&"a".into(), &1).unwrap();
    let info = m
        .maybe_checkpoint()
        .unwrap()
        .expect("the interval has passed")
        .wait()
        .unwrap();
    assert_eq!(info.entries, 1);
}

#[test]
fn builder_settings_survive_config_whatever_the_order() {
    let base = CheckpointConfig::default()
        .with_background_merge(true)
        .with_max_chain_before_full(6)
        .with_merger(MergerConfig::default().with_merge_at_chain_length(3))
        .with_interval(Duration::from_secs(60))
        .with_max_retained(9);
    assert!(base.background_merge);
    assert_eq!(base.max_chain_before_full, 6);
    assert_eq!(base.merger.merge_at_chain_length, 3);

    let every = Duration::from_millis(250);
    let before = builder()
        .interval(every)
        .max_retained(5)
        .incremental(false)
        .config(base.clone())
        .build()
        .unwrap();
    let after = builder()
        .config(base.clone())
        .interval(every)
        .max_retained(5)
        .incremental(false)
        .build()
        .unwrap();
    for m in [&before, &after] {
        let c = m.config();
        // The builder's own settings win over the config's…
        assert_eq!(c.interval, Some(every));
        assert_eq!(c.max_retained, 5);
        assert!(!c.incremental);
        // …and the config's other settings stay.
        assert!(c.background_merge);
        assert_eq!(c.max_chain_before_full, 6);
        assert_eq!(c.merger.merge_at_chain_length, 3);
    }
    assert_eq!(before.config(), after.config());

    // Without overrides the config is taken as it is.
    let plain = builder().config(base.clone()).build().unwrap();
    assert_eq!(plain.config(), &base);
    // A bad combination is refused at build, wherever it came from.
    let err = builder().config(base).max_retained(0).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[test]
fn background_merge_is_a_builder_setting() {
    let m = builder().background_merge(true).build().unwrap();
    assert!(m.config().background_merge);
    let m = builder()
        .background_merge(false)
        .config(CheckpointConfig::default().with_background_merge(true))
        .build()
        .unwrap();
    assert!(!m.config().background_merge);
}

/// Every write after `close()` fails with `Closed` and leaves the state as
/// it was, through state handles, the backend and a clone of the manager;
/// reads keep working; checkpoints, commits and restores fail too.
fn assert_closed(m: &StateManager, n: &ValueState<String, u64>) {
    assert!(m.is_closed());
    let err = n.update(&"a".into(), &99).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(n.get(&"a".into()).unwrap(), Some(1), "a write got through");
    let err = n.clear(&"a".into()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(n.get(&"a".into()).unwrap(), Some(1), "a delete got through");
    let err = m.backend().put(b"raw", b"x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(m.backend().get(b"raw").unwrap(), None);
    assert_eq!(m.backend().clear().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(n.get(&"a".into()).unwrap(), Some(1));
    // A bulk restore (the memory backend's, through the guard) loads
    // aside, but its commit is a write too.
    let bulk = m.backend().bulk_restore().expect("the memory backend's");
    bulk.loader().put(b"raw", b"x").unwrap();
    assert_eq!(bulk.commit().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(m.backend().get(b"raw").unwrap(), None);
    assert_eq!(
        n.get(&"a".into()).unwrap(),
        Some(1),
        "a bulk restore got through"
    );

    let clone = m.clone();
    assert_eq!(
        counter(&clone).update(&"b".into(), &2).unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(m.checkpoint().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(m.maybe_checkpoint().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(m.commit().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(m.restore_latest().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        m.restore(CheckpointId(1)).unwrap_err().kind(),
        ErrorKind::Closed
    );
    // Closing again is harmless.
    m.close().unwrap();
}

#[test]
fn state_changes_after_close_fail_and_change_nothing() {
    let m = builder().build().unwrap();
    let n = counter(&m);
    n.update(&"a".into(), &1).unwrap();
    m.checkpoint().unwrap().wait().unwrap();
    assert!(!m.is_closed());
    m.close().unwrap();
    assert_closed(&m, &n);
}

/// A checkpoint publishes its result before its thread lets go of the
/// backend. `close()` waits for that thread, so once the manager is
/// dropped the caller holds the only reference to the backend (a RocksDB
/// directory reopened right after failed on its lock before).
#[test]
fn after_close_and_drop_no_checkpoint_thread_holds_the_backend() {
    for round in 0..100u64 {
        let backend = Arc::new(MemoryBackend::new());
        let m = StateManager::builder()
            .backend(backend.clone())
            .store(Arc::new(ObjectCheckpointStore::in_memory()))
            .build()
            .unwrap();
        counter(&m).update(&"a".into(), &round).unwrap();
        m.checkpoint().unwrap().wait().unwrap();
        m.close().unwrap();
        drop(m);
        assert_eq!(Arc::strong_count(&backend), 1, "round {round}");
    }
}

/// A manager of a fresh memory backend that merges in the background as
/// soon as a chain has two layers, checkpointing into `store`.
fn merging(store: Arc<dyn CheckpointStore>) -> (StateManager, Arc<MemoryBackend>) {
    let mut config = CheckpointConfig::default();
    config.background_merge = true;
    config.merger.merge_at_chain_length = 2;
    let backend = Arc::new(MemoryBackend::new());
    let m = StateManager::builder()
        .backend(backend.clone())
        .store(store)
        .config(config)
        .build()
        .unwrap();
    (m, backend)
}

/// Regression: `close()` waited for a background merge to run to its end
/// (for a large chain, as long as the merge takes). It now stops the merge
/// before its next group of artifacts. The merge here is held inside its
/// first read until the manager is closed: without the stop it then runs
/// to its end and leaves a merged base behind.
#[test]
fn close_stops_a_background_merge_instead_of_waiting_for_it() {
    let store = Arc::new(ControlledStore::new());
    let (m, backend) = merging(store.clone());
    let n = counter(&m);
    for k in 0..2_000u64 {
        n.update(&format!("k{k}"), &k).unwrap();
    }
    m.checkpoint().unwrap().wait().unwrap();
    for k in 0..2_000u64 {
        n.update(&format!("k{k}"), &(k + 1)).unwrap();
    }
    store.hold_gets();
    let second = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(second.chain_length, 2);
    // The merge is inside its first read.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.gets() == 0 {
        assert!(std::time::Instant::now() < deadline, "no merge started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::scope(|s| {
        let closing = s.spawn(|| m.close());
        // Merging is stopped before the manager reads as closed.
        while !m.is_closed() {
            std::thread::sleep(Duration::from_millis(1));
        }
        store.open_gets();
        closing.join().unwrap().unwrap();
    });
    assert_eq!(m.pending_merge(), None, "the merge ran to its end");
    drop(n);
    drop(m);
    assert_eq!(Arc::strong_count(&backend), 1);
}

/// A background merge's thread holds the backend too: `close` stops it
/// and waits for its thread, so a RocksDB directory can be reopened as
/// soon as everything is dropped. Each round's second checkpoint makes a
/// chain of two, which starts a merge as the checkpoint's worker ends;
/// the close comes right after, while it runs.
#[test]
fn after_close_and_drop_no_background_merge_holds_the_backend() {
    for round in 0..50u64 {
        let (m, backend) = merging(Arc::new(ObjectCheckpointStore::in_memory()));
        let n = counter(&m);
        for k in 0..200u64 {
            n.update(&format!("k{k}"), &round).unwrap();
        }
        m.checkpoint().unwrap().wait().unwrap();
        n.update(&"a".into(), &round).unwrap();
        let second = m.checkpoint().unwrap().wait().unwrap();
        assert_eq!(second.chain_length, 2);
        m.close().unwrap();
        drop(n);
        drop(m);
        assert_eq!(Arc::strong_count(&backend), 1, "round {round}");
    }
}

#[test]
fn state_changes_after_close_fail_with_a_write_ahead_log_too() {
    let tmp = tempfile::tempdir().unwrap();
    let m = builder()
        .wal(tmp.path().join("wal"), WalConfig::default())
        .build()
        .unwrap();
    let n = counter(&m);
    n.update(&"a".into(), &1).unwrap();
    m.commit().unwrap();
    let last = m.wal().unwrap().last_lsn();
    m.close().unwrap();
    assert_closed(&m, &n);
    assert_eq!(
        m.wal().unwrap().last_lsn(),
        last,
        "a refused write was logged"
    );
}

#[test]
fn clocks_and_key_groups_come_with_the_prelude() {
    // `ManualClock`, `Clock`, `KeyGroupRange` and `TtlConfig` all from
    // `highwater::prelude` (and the crate root), none from `highwater::core`.
    let clock = ManualClock::new(1_000_000);
    let m = builder().clock(Arc::new(clock.clone())).build().unwrap();
    let sessions: ValueState<u32, u64> = m
        .keyed_state("sessions")
        .unwrap()
        .value_state(
            &ValueStateDescriptor::new("seen").with_ttl(TtlConfig::new(Duration::from_secs(5))),
        )
        .unwrap();
    sessions.update(&7, &1).unwrap();
    assert_eq!(sessions.get(&7).unwrap(), Some(1));
    clock.advance(Duration::from_secs(6));
    assert_eq!(Clock::now_ms(&clock), 1_006_000);
    assert_eq!(
        sessions.get(&7).unwrap(),
        None,
        "the manual clock drives TTL"
    );

    let max = m.config().max_parallelism;
    let halves = [
        KeyGroupRange::for_subtask(max, 2, 0).unwrap(),
        KeyGroupRange::for_subtask(max, 2, 1).unwrap(),
    ];
    assert_eq!(halves[0].len() + halves[1].len(), usize::from(max));
    let system: &dyn Clock = &SystemClock;
    assert!(system.now_ms() > 1_600_000_000_000);
}
