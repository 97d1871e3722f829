//! Large artifacts go up as multipart uploads: every request is counted,
//! a present artifact is found by HEAD and not uploaded again, and a part
//! the service refuses is a permanent error that is not retried.

use bytes::Bytes;
use highwater_cloud::{ObjectCheckpointStore, StoreConfig, TransferConfig};
use highwater_core::{ArtifactId, CheckpointStore, ErrorKind, PutOutcome, StoreCounters};
use object_store::ObjectStoreExt;

use super::common::{azure_store, big_artifact, s3_store};

const MIB: usize = 1 << 20;

/// Puts a 20 MiB artifact (8 MiB parts: 3 parts) twice and reads it back.
/// `create_requests` is 1 where starting an upload is a request (S3).
async fn multipart_round_trip(store: ObjectCheckpointStore, create_requests: u64) {
    let data = big_artifact(7, 20 * MIB);
    let id = ArtifactId::of(&data);
    let parts = data.len().div_ceil(8 * MIB) as u64;
    assert_eq!(parts, 3, "the artifact is {} bytes", data.len());
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::Written
    );
    assert_eq!(
        store.counters(),
        StoreCounters {
            heads: 1,
            puts: create_requests + parts + 1,
            bytes_written: data.len() as u64,
            ..StoreCounters::default()
        },
        "{}: HEAD, create, parts, complete",
        store.name()
    );
    // The object is whole and at its content address.
    let meta = store
        .object_store()
        .head(&store.artifact_path(id))
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(store.get_artifact(id).await.unwrap(), data);

    // Present: one HEAD, nothing uploaded.
    let before = store.counters();
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    let after = store.counters();
    assert_eq!(after.heads, before.heads + 1);
    assert_eq!(after.puts, before.puts);
    assert_eq!(after.bytes_written, before.bytes_written);
    assert_eq!(store.list_artifacts().await.unwrap(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_round_trip_counts_every_request() {
    multipart_round_trip(s3_store("multipart"), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_multipart_round_trip_counts_every_request() {
    // Azure: blocks and the block list; starting an upload sends nothing.
    multipart_round_trip(azure_store("multipart"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_artifacts_are_one_create_only_put() {
    let store = s3_store("single");
    let data = big_artifact(8, MIB);
    let id = ArtifactId::of(&data);
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::Written
    );
    assert_eq!(
        store.put_artifact(id, data).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    // The second put is refused as present, and one HEAD checks that the
    // stored copy has the artifact's size (a torn or lost write under the
    // content address would be replaced, not reused).
    let c = store.counters();
    assert_eq!((c.puts, c.heads), (2, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_the_service_refuses_is_not_retried() {
    // S3 refuses parts below 5 MiB (other than the last) when the upload
    // completes: a 400, permanent, so one attempt only.
    let store = s3_store("too-small").with_config(StoreConfig {
        transfer: TransferConfig {
            multipart_threshold: Some(MIB as u64),
            part_size: MIB,
            ..TransferConfig::default()
        },
        ..StoreConfig::default()
    });
    let data = big_artifact(9, 3 * MIB);
    let id = ArtifactId::of(&data);
    let parts = data.len().div_ceil(MIB) as u64;
    let err = store.put_artifact(id, data).await.unwrap_err();
    // A part below the service's minimum is the store's configuration.
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{err}");
    assert!(err.to_string().contains(&id.to_hex()), "{err}");
    let c = store.counters();
    assert_eq!(c.puts, 1 + parts + 1, "one attempt: {c:?}");
    assert_eq!(c.deletes, 1, "the upload was aborted: {c:?}");
    assert!(!store.has_artifact(id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_multipart_with_many_small_parts() {
    // Any part size works on stores without S3's minimum; many parts with
    // a small concurrency bound exercise the part scheduling.
    let store = ObjectCheckpointStore::new(
        std::sync::Arc::new(object_store::memory::InMemory::new()),
        "mp",
        "memory",
    )
    .with_config(StoreConfig {
        transfer: TransferConfig {
            multipart_threshold: Some(1000),
            part_size: 4096,
            part_concurrency: 3,
            max_requests: 2,
        },
        ..StoreConfig::default()
    });
    let data = big_artifact(10, 300_000);
    let id = ArtifactId::of(&data);
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::Written
    );
    let parts = data.len().div_ceil(4096) as u64;
    assert_eq!(store.counters().puts, parts + 2);
    assert_eq!(store.get_artifact(id).await.unwrap(), data);
    // A small artifact stays a single put.
    let small: Bytes = big_artifact(11, 100);
    let sid = ArtifactId::of(&small);
    store.put_artifact(sid, small).await.unwrap();
    assert_eq!(store.counters().puts, parts + 3);
}
