//! The store conformance suite on a standalone server and on a cluster,
//! and store behaviour the suite does not cover (chunking, expiry, keys).

mod standalone {
    highwater_testkit::store_conformance!(async || super::super::common::store(
        super::super::common::standalone(),
        "ss"
    ));
}

mod cluster {
    highwater_testkit::store_conformance!(async || super::super::common::store(
        super::super::common::cluster(),
        "sc"
    ));
}

/// The suite through at-rest encryption (`EncryptedStore`) over a
/// standalone server: sealed artifacts (inline and chunked) and manifests.
mod encrypted {
    highwater_testkit::store_conformance!(async || async {
        let (guard, store) =
            super::super::common::store(super::super::common::standalone(), "se").await;
        let keys = highwater_core::Keyring::new(4, highwater_core::DataKey::new([4; 32]));
        let sealed: std::sync::Arc<dyn highwater_core::CheckpointStore> = std::sync::Arc::new(
            highwater_core::EncryptedStore::new(store, std::sync::Arc::new(keys)),
        );
        (guard, sealed)
    });
}

use std::time::Duration;

use bytes::Bytes;
use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Error};
use highwater_redis::{RedisCheckpointStore, RedisStoreConfig};

use super::common;

fn data(len: usize, seed: u8) -> (ArtifactId, Bytes) {
    let b: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
    let b = Bytes::from(b);
    (ArtifactId::of(&b), b)
}

/// The documented layout: a header key per artifact (parts beside it under
/// the same hash tag), a key per manifest, one index.
#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let endpoint = common::standalone();
    let (_guard, store) = common::store(endpoint.clone(), "layout").await;
    let ns = store.config().namespace.clone();
    let (small, small_bytes) = data(100, 1);
    let (big, big_bytes) = data(200 << 10, 2);
    store.put_artifact(small, small_bytes).await.unwrap();
    store.put_artifact(big, big_bytes.clone()).await.unwrap();
    store
        .commit_manifest(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .unwrap();
    let url = common::standalone_url();
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{ns}:*"))
        .query(&mut conn)
        .unwrap();
    keys.sort();
    let parts = (200usize << 10).div_ceil(64 << 10);
    let mut want = vec![
        format!("{{{ns}:a:{small}}}"),
        format!("{{{ns}:a:{big}}}"),
        format!("{{{ns}:m}}:00000000000000000007"),
        format!("{{{ns}:m}}:index"),
    ];
    want.extend((0..parts).map(|i| format!("{{{ns}:a:{big}}}:{i}")));
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(store.artifact_key(big), format!("{{{ns}:a:{big}}}"));
    // Published parts do not expire (no store expiry configured).
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{{{ns}:a:{big}}}:0"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(ttl, -1);
    assert_eq!(store.get_artifact(big).await.unwrap(), big_bytes);
}

/// With an expiry configured, artifacts and manifests expire together and
/// an expired manifest leaves the listing; putting an artifact again
/// refreshes its expiry.
#[tokio::test]
async fn optional_expiry_applies_to_artifacts_and_manifests() {
    for endpoint in [common::standalone(), common::cluster()] {
        let ns = common::namespace("exp");
        let mut config = RedisStoreConfig::new(endpoint.clone()).with_namespace(&ns);
        config.expiry = Some(Duration::from_millis(400));
        config.chunk_size = 1024;
        let _guard = common::DropStoreKeys {
            endpoint: endpoint.clone(),
            namespace: ns.clone(),
        };
        let store = RedisCheckpointStore::connect(config).await.unwrap();
        let (a, a_bytes) = data(10, 3);
        let (b, b_bytes) = data(5000, 4);
        store.put_artifact(a, a_bytes.clone()).await.unwrap();
        store.put_artifact(b, b_bytes.clone()).await.unwrap();
        store
            .commit_manifest(CheckpointId(1), Bytes::from_static(b"one"))
            .await
            .unwrap();
        assert_eq!(store.list_manifests().await.unwrap(), vec![CheckpointId(1)]);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Re-putting refreshes b (header and parts), not a.
        store.put_artifact(b, b_bytes.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.list_manifests().await.unwrap().is_empty());
        assert!(matches!(
            store.get_manifest(CheckpointId(1)).await,
            Err(Error::NotFound(_))
        ));
        assert!(!store.has_artifact(a).await.unwrap());
        assert_eq!(store.get_artifact(b).await.unwrap(), b_bytes);
        // The id can be committed again once expired.
        store
            .commit_manifest(CheckpointId(1), Bytes::from_static(b"again"))
            .await
            .unwrap();
    }
}

/// A header whose part went missing reads as corruption, not as data.
#[tokio::test]
async fn a_missing_part_is_corruption() {
    let endpoint = common::standalone();
    let (_guard, store) = common::store(endpoint, "part").await;
    let (id, bytes) = data(150 << 10, 5);
    store.put_artifact(id, bytes).await.unwrap();
    let mut conn = redis::Client::open(common::standalone_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:1", store.artifact_key(id)))
        .query(&mut conn)
        .unwrap();
    let err = store.get_artifact(id).await.unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    store.delete_artifact(id).await.unwrap();
    assert!(!store.has_artifact(id).await.unwrap());
}

/// Issue 18: a forged 22-byte chunked header that passes the size check
/// (1 TiB in 2^24 parts of 64 KiB) allocates nothing before its parts
/// arrive, reads as corruption, and is deleted in bounded commands (the
/// walk ends at the first batch of parts that do not exist) in well under
/// a second; the other forged shapes (4 GiB in one part, a part size above
/// the largest chunk size) are corruption too.
#[tokio::test]
async fn forged_chunked_headers_are_bounded() {
    let endpoint = common::standalone();
    let (_guard, store) = common::store(endpoint, "forged").await;
    let mut conn = redis::Client::open(common::standalone_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let header = |total: u64, parts: u32, part_size: u32| {
        let mut h = b"HWRA".to_vec();
        h.extend_from_slice(&[1, 1]);
        h.extend_from_slice(&total.to_le_bytes());
        h.extend_from_slice(&parts.to_le_bytes());
        h.extend_from_slice(&part_size.to_le_bytes());
        assert_eq!(h.len(), 22);
        h
    };
    for (seed, (total, parts, part_size)) in [
        (1u8, (1u64 << 40, 1u32 << 24, 1u32 << 16)),
        (2, (u64::from(u32::MAX), 1, u32::MAX)),
        (3, ((u32::MAX as u64) << 5, 1 << 5, u32::MAX)),
    ] {
        let id = ArtifactId(u128::from(seed) << 64);
        let _: () = redis::cmd("SET")
            .arg(store.artifact_key(id))
            .arg(header(total, parts, part_size))
            .query(&mut conn)
            .unwrap();
        let err = store.get_artifact(id).await.unwrap_err();
        assert!(err.is_corruption(), "{err:?}");
        let started = std::time::Instant::now();
        store.delete_artifact(id).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!store.has_artifact(id).await.unwrap());
    }
}

/// An artifact of more parts than one command deletes (2,500 parts of
/// 16 bytes) is read back whole, and deleted with every part.
#[tokio::test]
async fn an_artifact_of_many_parts_is_deleted_whole() {
    let endpoint = common::standalone();
    let ns = common::namespace("many");
    let mut config = RedisStoreConfig::new(endpoint.clone()).with_namespace(&ns);
    config.chunk_size = 16;
    let _guard = common::DropStoreKeys {
        endpoint,
        namespace: ns.clone(),
    };
    let store = RedisCheckpointStore::connect(config).await.unwrap();
    let (id, bytes) = data(2500 * 16 - 3, 9);
    store.put_artifact(id, bytes.clone()).await.unwrap();
    assert_eq!(store.get_artifact(id).await.unwrap(), bytes);
    let mut conn = redis::Client::open(common::standalone_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let count = |conn: &mut redis::Connection| -> usize {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{ns}:a:*"))
            .query(conn)
            .unwrap();
        keys.len()
    };
    assert_eq!(count(&mut conn), 2501);
    store.delete_artifact(id).await.unwrap();
    assert_eq!(count(&mut conn), 0);
}

/// A store made on one runtime keeps working on another after the first
/// shut down (its connection is rebuilt there), and a lazily created store
/// connects on first use: what the `highwater` facade does, which runs
/// store futures on its own runtime.
#[test]
fn a_store_outlives_the_runtime_that_made_it() {
    let endpoint = common::standalone();
    let ns = common::namespace("rt");
    let _guard = common::DropStoreKeys {
        endpoint: endpoint.clone(),
        namespace: ns.clone(),
    };
    let config = RedisStoreConfig::new(endpoint).with_namespace(&ns);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = first
        .block_on(RedisCheckpointStore::connect(config.clone()))
        .unwrap();
    let (id, bytes) = data(1000, 9);
    first
        .block_on(store.put_artifact(id, bytes.clone()))
        .unwrap();
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(second.block_on(store.get_artifact(id)).unwrap(), bytes);
    second
        .block_on(store.commit_manifest(CheckpointId(1), Bytes::from_static(b"m")))
        .unwrap();

    let lazy = RedisCheckpointStore::new(config).unwrap();
    assert_eq!(
        second.block_on(lazy.list_manifests()).unwrap(),
        vec![CheckpointId(1)]
    );
    assert!(matches!(
        RedisCheckpointStore::new(RedisStoreConfig::new(
            highwater_redis::RedisEndpoint::parse("redis://[bad/").unwrap()
        )),
        Err(Error::InvalidArgument(_))
    ));
}
