//! The manager over a real Redis checkpoint store, with the server killed
//! (SIGKILL, by PID) in the middle of a checkpoint and started again.

use std::sync::Arc;
use std::time::Duration;

use highwater::core::ErrorKind;
use highwater::{CheckpointId, CheckpointKind, CheckpointStore, Error, ValueStateDescriptor};
use highwater_redis::{
    ConnectOptions, RedisCheckpointStore, RedisEndpoint, RedisStoreConfig, RetryPolicy,
};
use highwater_testkit::servers::PrivateRedis;

use crate::common::{ControlledStore, config, dump, manager_with, manifest_ids};

fn fast_options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        },
    }
}

#[test]
fn server_killed_mid_checkpoint_fails_typed_and_the_next_checkpoint_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = PrivateRedis::start(dir.path());
    let mut cfg = RedisStoreConfig::new(RedisEndpoint::parse(&server.url()).unwrap())
        .with_namespace("facade-fault");
    cfg.connect = fast_options();
    let redis: Arc<dyn CheckpointStore> = Arc::new(RedisCheckpointStore::new(cfg).unwrap());
    let store = Arc::new(ControlledStore::wrapping(redis.clone()));
    let m = manager_with(store.clone(), config(true, 8, 3));
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
        .unwrap();
    for k in 0..2_000u32 {
        v.update(&k, &format!("value-{k}")).unwrap();
    }
    let first = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(first.id, CheckpointId(1));
    let at_first = dump(&**m.backend());

    // Checkpoint 2: its artifacts are uploaded, then the server dies while
    // the manifest commit is pending.
    for k in 0..500u32 {
        v.update(&k, &format!("changed-{k}")).unwrap();
    }
    store.hold_commits();
    let second = m.checkpoint().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    store.open();
    store.release(1);
    let err = second.wait().expect_err("the server is gone");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        matches!(err, Error::Store { store: "redis", .. }),
        "not a typed store error: {err:?}"
    );

    // Back up (AOF kept what was acknowledged): only checkpoint 1 is visible.
    server.restart();
    assert_eq!(manifest_ids(&*redis), vec![CheckpointId(1)]);

    // The same manager and store carry on: the next checkpoint is full
    // (the failed one broke the incremental chain) and commits.
    let third = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(third.kind, CheckpointKind::Full);
    assert_eq!(manifest_ids(&*redis), vec![CheckpointId(1), third.id]);
    let live = dump(&**m.backend());
    m.restore(CheckpointId(1)).unwrap();
    assert_eq!(dump(&**m.backend()), at_first);
    m.restore(third.id).unwrap();
    assert_eq!(dump(&**m.backend()), live);
}
