//! The manager's life: interval checkpoints, one checkpoint in flight at a
//! time, the snapshot taken at the trigger, ids continuing across a rebuilt
//! manager, and restores that must be refused.

use std::sync::Arc;
use std::time::Duration;

use highwater::memory::MemoryBackend;
use highwater::{CheckpointId, CheckpointKind, Error, ErrorKind, StateManager};

use crate::common::{
    ControlledStore, LocalStore, assert_entries, config, counter, dump, manager_with,
    memory_manager,
};

#[test]
fn maybe_checkpoint_respects_interval_and_in_flight() {
    // Without an interval it refuses (embedding.rs has the details).
    let plain = memory_manager(config(true, 3, 3));
    assert!(plain.maybe_checkpoint().is_err());

    let store = Arc::new(ControlledStore::new());
    let interval = Duration::from_millis(500);
    let mut cfg = config(true, 3, 3);
    cfg.interval = Some(interval);
    let m = manager_with(store.clone(), cfg);
    let n = counter(&m);
    n.update(&"a".into(), &1).unwrap();

    // The interval counts from build.
    assert!(m.maybe_checkpoint().unwrap().is_none());
    std::thread::sleep(interval + Duration::from_millis(50));
    store.hold_commits();
    let first = m.maybe_checkpoint().unwrap().expect("interval elapsed");
    assert_eq!(first.id(), CheckpointId(1));

    // In flight: skipped even once the interval has passed again.
    std::thread::sleep(interval + Duration::from_millis(50));
    assert!(first.try_result().is_none(), "the commit is held");
    assert!(m.maybe_checkpoint().unwrap().is_none(), "one is in flight");

    // checkpoint() waits for the one in flight instead of skipping.
    let m2 = m.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let h = m2.checkpoint().unwrap();
        tx.send(h.id()).unwrap();
        h.wait().unwrap()
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "checkpoint() started while another was in flight"
    );
    store.open();
    store.release(1);
    let info = first.wait().unwrap();
    assert!(info.duration >= interval, "the commit was held: {info:?}");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        CheckpointId(2)
    );
    let second = waiter.join().unwrap();
    assert_eq!(second.kind, CheckpointKind::Incremental);

    // The interval restarts at the last trigger.
    assert!(m.maybe_checkpoint().unwrap().is_none());
    std::thread::sleep(interval + Duration::from_millis(50));
    let third = m
        .maybe_checkpoint()
        .unwrap()
        .expect("interval elapsed again");
    assert_eq!(third.wait().unwrap().id, CheckpointId(3));
}

#[test]
fn snapshot_is_taken_when_checkpoint_returns() {
    let store = Arc::new(ControlledStore::new());
    let m = manager_with(store.clone(), config(true, 3, 3));
    let n = counter(&m);
    n.update(&"a".into(), &1).unwrap();
    let at_trigger = dump(&**m.backend());
    store.hold_commits();
    let h = m.checkpoint().unwrap();
    // Writes after the trigger, while the checkpoint is still running.
    n.update(&"a".into(), &2).unwrap();
    n.update(&"b".into(), &3).unwrap();
    store.open();
    store.release(1);
    let c1 = h.wait().unwrap();
    assert_eq!(c1.entries, 1);
    // They belong to the next checkpoint.
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c2.kind, c2.entries), (CheckpointKind::Incremental, 2));
    m.restore(c1.id).unwrap();
    assert_entries(&at_trigger, &dump(&**m.backend()), "checkpoint 1");
    m.restore(c2.id).unwrap();
    assert_eq!(n.get(&"a".into()).unwrap(), Some(2));
    assert_eq!(n.get(&"b".into()).unwrap(), Some(3));
}

#[test]
fn checkpoint_ids_continue_across_a_rebuilt_manager() {
    let local = LocalStore::new();
    let state;
    {
        let m = manager_with(local.dyn_store(), config(true, 8, 2));
        let n = counter(&m);
        for i in 1..=3u64 {
            n.update(&format!("k{i}"), &i).unwrap();
            let info = m.checkpoint().unwrap().wait().unwrap();
            assert_eq!(info.id, CheckpointId(i));
        }
        state = dump(&**m.backend());
    }
    assert_eq!(
        crate::common::manifest_ids(&*local.store),
        [CheckpointId(2), CheckpointId(3)]
    );

    // A new process on the same directory: restore the latest, carry on
    // with an incremental on it, numbered after the existing ones.
    let b = manager_with(local.dyn_store(), config(true, 8, 2));
    let info = b.restore_latest().unwrap().unwrap();
    assert_eq!(
        (info.stats.checkpoint, info.stats.chain_length),
        (Some(CheckpointId(3)), 3)
    );
    assert_entries(&state, &dump(&**b.backend()), "restored in a new manager");
    counter(&b).update(&"k4".into(), &4).unwrap();
    let c4 = b.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c4.id, c4.kind, c4.chain_length),
        (CheckpointId(4), CheckpointKind::Incremental, 4)
    );
    drop(b);

    // A new process that does not restore starts with a full checkpoint.
    let c = manager_with(local.dyn_store(), config(true, 8, 2));
    counter(&c).update(&"other".into(), &1).unwrap();
    let c5 = c.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c5.id, c5.kind), (CheckpointId(5), CheckpointKind::Full));
    assert_eq!(
        crate::common::manifest_ids(&*local.store),
        [CheckpointId(4), CheckpointId(5)]
    );
}

#[test]
fn restore_with_a_different_max_parallelism_is_invalid() {
    let local = LocalStore::new();
    let a = manager_with(local.dyn_store(), config(true, 8, 3));
    counter(&a).update(&"x".into(), &1).unwrap();
    let c1 = a.checkpoint().unwrap().wait().unwrap();
    drop(a);

    let mut cfg = config(true, 8, 3);
    cfg.max_parallelism = 64;
    let b = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(local.dyn_store())
        .config(cfg)
        .build()
        .unwrap();
    counter(&b).update(&"mine".into(), &7).unwrap();
    let before = dump(&**b.backend());
    let err = b.restore(c1.id).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("max_parallelism=128") && msg.contains("64"),
        "{msg}"
    );
    // Not a damaged checkpoint: restore_latest does not skip it either.
    let err = b.restore_latest().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert_entries(&before, &dump(&**b.backend()), "after refused restores");
    assert_eq!(b.last_checkpoint(), None);
}

#[test]
fn restore_from_an_empty_store_or_of_an_unknown_id() {
    let m = memory_manager(config(true, 8, 3));
    counter(&m).update(&"live".into(), &1).unwrap();
    let before = dump(&**m.backend());
    assert!(m.restore_latest().unwrap().is_none());
    let err = m.restore(CheckpointId(42)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("manifest 42"), "{err}");
    assert_entries(&before, &dump(&**m.backend()), "nothing restored");
}
