//! A checkpoint onto a store whose disk is full or read-only (a tmpfs the
//! test mounts; root only, elsewhere the test prints why and returns):
//! the checkpoint fails with the permanent kind, naming the store's path,
//! at once (the store's retry policy, which would sleep a second per retry,
//! is not used), and no manifest is committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::{ObjectCheckpointStore, RetryPolicy, StoreConfig};
use highwater::core::ErrorKind;
use highwater::{CheckpointStore, Error, ValueStateDescriptor};
use highwater_testkit::SplitMix64;
use highwater_testkit::mounts::Tmpfs;

use crate::common::{config, manager_with, manifest_ids};

/// A local store in `dir` whose retries would each sleep a second.
fn patient_store(dir: &std::path::Path) -> Arc<ObjectCheckpointStore> {
    Arc::new(
        ObjectCheckpointStore::local(dir)
            .unwrap()
            .with_config(StoreConfig {
                retry: RetryPolicy {
                    max_attempts: 5,
                    initial_backoff: Duration::from_secs(1),
                    max_backoff: Duration::from_secs(1),
                },
                ..StoreConfig::default()
            }),
    )
}

/// Checkpoints about `bytes` of incompressible state into `store`: the
/// error, and how long the failed checkpoint took.
fn failed_checkpoint(
    store: Arc<ObjectCheckpointStore>,
    bytes: usize,
) -> (highwater::Error, Duration) {
    let m = manager_with(store, config(true, 8, 3));
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, Vec<u8>>(&ValueStateDescriptor::new("v"))
        .unwrap();
    let mut rng = SplitMix64::new(5);
    for k in 0..(bytes / 1024) as u32 {
        let value: Vec<u8> = (0..1024).map(|_| rng.next_u64() as u8).collect();
        v.update(&k, &value).unwrap();
    }
    let started = Instant::now();
    let err = m
        .checkpoint()
        .unwrap()
        .wait()
        .expect_err("the store cannot take the checkpoint");
    (err, started.elapsed())
}

/// A permanent failure of a checkpoint: the `kind`, not transient, the
/// message naming the store's directory `dir`, no retry, nothing committed.
fn assert_permanent_at_once(
    err: &Error,
    took: Duration,
    kind: ErrorKind,
    dir: &std::path::Path,
    store: &dyn CheckpointStore,
) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "the message names the store's directory: {err}"
    );
    assert!(took < Duration::from_secs(1), "not retried: {took:?}");
    assert!(manifest_ids(store).is_empty(), "nothing committed");
}

#[test]
fn a_full_store_disk_fails_the_checkpoint_with_storage_full() {
    let Some(mount) = Tmpfs::mount_or_skip("the facade full-disk test", "size=1m") else {
        return;
    };
    let dir = mount.path().join("checkpoints");
    let store = patient_store(&dir);
    let (err, took) = failed_checkpoint(store.clone(), 4 << 20);
    assert_permanent_at_once(&err, took, ErrorKind::StorageFull, &dir, &*store);
}

#[test]
fn a_read_only_store_fails_the_checkpoint_with_permission_denied() {
    let Some(mount) = Tmpfs::mount_or_skip("the facade read-only store test", "size=16m") else {
        return;
    };
    let dir = mount.path().join("checkpoints");
    let store = patient_store(&dir);
    mount.remount_read_only().expect("remount read-only");
    let (err, took) = failed_checkpoint(store.clone(), 256 << 10);
    assert_permanent_at_once(&err, took, ErrorKind::PermissionDenied, &dir, &*store);
}
