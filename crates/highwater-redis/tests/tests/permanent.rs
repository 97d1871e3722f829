//! Permanent failures on a private redis-server: a server at its memory
//! limit (`OOM`), a user the server's ACL refuses writes (`NOPERM`) and a
//! wrong password (`WRONGPASS`) each give the permanent kind that says what
//! to fix, name the endpoint, are not retried, and commit nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Error, ErrorKind};
use highwater_redis::{
    ConnectOptions, RedisCheckpointStore, RedisEndpoint, RedisStoreConfig, RetryPolicy,
};

use super::common::PrivateRedis;

/// Retries that would take seconds: a permanent error must come back at
/// once.
fn patient() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        },
    }
}

fn store_config(url: &str) -> RedisStoreConfig {
    let mut config = RedisStoreConfig::new(RedisEndpoint::parse(url).unwrap());
    config.connect = patient();
    config
}

fn admin(server: &PrivateRedis, args: &[&str]) {
    let mut conn = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut conn).unwrap();
}

fn artifact(seed: u8) -> (ArtifactId, Bytes) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i as u8) ^ seed).collect();
    let data = Bytes::from(data);
    (ArtifactId::of(&data), data)
}

/// Puts one artifact and commits a manifest naming it: the error of the
/// first step that fails, and how long the attempt took.
async fn checkpoint(store: &RedisCheckpointStore) -> (Error, Duration) {
    let started = Instant::now();
    let (id, data) = artifact(1);
    let result = match store.put_artifact(id, data).await {
        Ok(_) => {
            store
                .commit_manifest(CheckpointId(1), Bytes::from(id.to_hex()))
                .await
        }
        Err(e) => Err(e),
    };
    (
        result.expect_err("the checkpoint must fail"),
        started.elapsed(),
    )
}

fn assert_permanent(err: &Error, kind: ErrorKind, took: Duration, port: u16) {
    assert!(matches!(err, Error::Store { store: "redis", .. }), "{err}");
    assert_eq!(err.kind(), kind, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "the message names the endpoint: {err}"
    );
    assert!(
        took < Duration::from_secs(1),
        "not retried: {took:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_memory_is_storage_full_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateRedis::start(dir.path());
    let store = RedisCheckpointStore::connect(store_config(&server.url()))
        .await
        .unwrap();
    admin(
        &server,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    admin(&server, &["CONFIG", "SET", "maxmemory", "1"]);

    let (err, took) = checkpoint(&store).await;
    assert_permanent(&err, ErrorKind::StorageFull, took, server.port());
    assert_eq!(store.counters().puts, 1, "one attempt: {err}");
    assert!(store.list_manifests().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_write_permission_is_permission_denied_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateRedis::start(dir.path());
    admin(
        &server,
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">secret",
            "~*",
            "&*",
            "+@read",
            "+@connection",
            "+@scripting",
        ],
    );
    let url = format!("redis://reader:secret@127.0.0.1:{}/", server.port());
    let store = RedisCheckpointStore::connect(store_config(&url))
        .await
        .unwrap();

    let (err, took) = checkpoint(&store).await;
    assert_permanent(&err, ErrorKind::PermissionDenied, took, server.port());
    assert_eq!(store.counters().puts, 1, "one attempt: {err}");
    // Seen by a user allowed to look (the reader may not run the listing's
    // script either, which is refused the same way).
    let err = store.list_manifests().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let owner = RedisCheckpointStore::connect(store_config(&server.url()))
        .await
        .unwrap();
    assert!(owner.list_manifests().await.unwrap().is_empty());

    // A wrong password is refused when connecting, with the same kind, and
    // the password does not appear in the message.
    let url = format!("redis://reader:wrong-password@127.0.0.1:{}/", server.port());
    let started = Instant::now();
    let err = RedisCheckpointStore::connect(store_config(&url))
        .await
        .expect_err("a wrong password is refused");
    assert_permanent(
        &err,
        ErrorKind::PermissionDenied,
        started.elapsed(),
        server.port(),
    );
    assert!(!err.to_string().contains("wrong-password"), "{err}");
}
