//! A manager used from inside the caller's own tokio runtime: it runs its
//! I/O on its own runtime and never enters the caller's, so building,
//! checkpointing, restoring and dropping it there must not panic.

use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::{
    CheckpointId, CheckpointKind, CheckpointStore, StateManager, ValueStateDescriptor,
};

use crate::common::ControlledStore;

async fn exercise() {
    let store = Arc::new(ObjectCheckpointStore::in_memory());
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .build()
        .unwrap();
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    v.update(&1, &1).unwrap();
    let c1 = m.checkpoint().unwrap().wait().unwrap();
    v.update(&1, &2).unwrap();
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c2.kind, CheckpointKind::Incremental);
    m.restore(c1.id).unwrap();
    assert_eq!(v.get(&1).unwrap(), Some(1));
    let latest = m.restore_latest().unwrap().unwrap();
    assert_eq!(latest.stats.checkpoint, Some(c2.id));
    assert_eq!(v.get(&1).unwrap(), Some(2));
    assert_eq!(m.checkpoint_history().unwrap().len(), 2);
    m.apply_retention().unwrap();
    // The caller's runtime is still usable alongside.
    tokio::task::yield_now().await;
    let listed = store.list_manifests().await.unwrap();
    assert_eq!(listed, [c1.id, c2.id]);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_inside_a_multi_thread_runtime() {
    exercise().await;
}

#[tokio::test(flavor = "current_thread")]
async fn manager_inside_a_current_thread_runtime() {
    exercise().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_dropped_inside_a_task_while_a_checkpoint_is_in_flight() {
    let store = Arc::new(ControlledStore::new());
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .build()
        .unwrap();
    m.keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap()
        .update(&1, &1)
        .unwrap();
    store.hold_commits();
    let handle = m.checkpoint().unwrap();
    // The last user reference goes away on a runtime worker thread.
    tokio::spawn(async move { drop(m) }).await.unwrap();
    store.release(1);
    // The checkpoint worker still owns the manager and finishes; the
    // manager is finally dropped on that worker, not on this runtime.
    let info = tokio::task::spawn_blocking(move || handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.id, CheckpointId(1));
}
