//! The store on a local directory and in memory: layout, fsync, dedup,
//! retries, counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use highwater_cloud::layout::{
    MANIFEST_SUFFIX, artifact_name, manifest_name, parse_artifact_name, parse_manifest_name,
};
use highwater_cloud::{ObjectCheckpointStore, RetryPolicy, StoreConfig};
use highwater_core::{
    ArtifactId, ArtifactKind, CheckpointId, CheckpointStore, EncodeOptions, Error, ErrorKind,
    PutOutcome, RecordWriter, StoreCounters, verify_artifact,
};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

fn artifact(seed: u8, records: usize) -> Bytes {
    let mut w = RecordWriter::new(ArtifactKind::Entries, 0);
    for i in 0..records {
        let key = format!("key-{i:06}");
        let value = vec![seed; 16 + i % 7];
        w.push(key.as_bytes(), Some(&value)).unwrap();
    }
    Bytes::from(w.finish(&EncodeOptions::default()).unwrap().bytes)
}

fn local() -> (tempfile::TempDir, ObjectCheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectCheckpointStore::local(dir.path().join("store")).unwrap();
    (dir, store)
}

/// Both flavours, so every behavioural test runs against each.
fn stores() -> Vec<(Option<tempfile::TempDir>, ObjectCheckpointStore)> {
    let (dir, local) = local();
    vec![
        (Some(dir), local),
        (None, ObjectCheckpointStore::in_memory()),
    ]
}

#[tokio::test]
async fn put_get_round_trip() {
    for (_dir, store) in stores() {
        let data = artifact(1, 100);
        let id = ArtifactId::of(&data);
        assert!(!store.has_artifact(id).await.unwrap());
        assert_eq!(
            store.put_artifact(id, data.clone()).await.unwrap(),
            PutOutcome::Written
        );
        assert!(store.has_artifact(id).await.unwrap());
        let read = store.get_artifact(id).await.unwrap();
        assert_eq!(read, data, "{}", store.name());
        verify_artifact(&read).unwrap();

        let c = store.counters();
        assert_eq!(c.puts, 1);
        assert_eq!(c.gets, 1);
        assert_eq!(c.heads, 2);
        assert_eq!(c.bytes_written, data.len() as u64);
        assert_eq!(c.bytes_read, data.len() as u64);
    }
}

#[tokio::test]
async fn second_put_is_deduplicated() {
    for (_dir, store) in stores() {
        let data = artifact(2, 50);
        let id = ArtifactId::of(&data);
        assert_eq!(
            store.put_artifact(id, data.clone()).await.unwrap(),
            PutOutcome::Written
        );
        assert_eq!(
            store.put_artifact(id, data.clone()).await.unwrap(),
            PutOutcome::AlreadyPresent
        );
        let c = store.counters();
        // Two requests were sent, one write happened.
        assert_eq!(c.puts, 2, "{}", store.name());
        assert_eq!(c.bytes_written, data.len() as u64, "{}", store.name());
        assert_eq!(store.list_artifacts().await.unwrap(), vec![id]);
        assert_eq!(store.get_artifact(id).await.unwrap(), data);
    }
}

#[tokio::test]
async fn put_with_wrong_id_is_refused() {
    for (_dir, store) in stores() {
        let data = artifact(3, 10);
        let wrong = ArtifactId(ArtifactId::of(&data).0 ^ 1);
        let err = store.put_artifact(wrong, data.clone()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(!store.has_artifact(wrong).await.unwrap());
        assert!(store.list_artifacts().await.unwrap().is_empty());
        assert_eq!(store.counters().puts, 0, "nothing was sent");
    }
}

#[tokio::test]
async fn manifest_commit_is_create_only() {
    for (_dir, store) in stores() {
        let id = CheckpointId(7);
        store
            .commit_manifest(id, Bytes::from_static(b"first"))
            .await
            .unwrap();
        let err = store
            .commit_manifest(id, Bytes::from_static(b"second"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("manifest 7"), "{err}");
        // Even identical bytes are refused: an id is committed once.
        let err = store
            .commit_manifest(id, Bytes::from_static(b"first"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(
            store.get_manifest(id).await.unwrap(),
            Bytes::from_static(b"first")
        );
        assert_eq!(store.list_manifests().await.unwrap(), vec![id]);
    }
}

#[tokio::test]
async fn lists_are_ascending() {
    for (_dir, store) in stores() {
        let ids = [10u64, 2, 30, 1, 1_000_000_000_000, u64::MAX, 0];
        for id in ids {
            store
                .commit_manifest(CheckpointId(id), Bytes::from(format!("m{id}")))
                .await
                .unwrap();
        }
        let mut want: Vec<_> = ids.iter().copied().map(CheckpointId).collect();
        want.sort();
        assert_eq!(store.list_manifests().await.unwrap(), want);

        let mut artifacts = Vec::new();
        for seed in 0..8 {
            let data = artifact(seed, 5);
            let id = ArtifactId::of(&data);
            store.put_artifact(id, data).await.unwrap();
            artifacts.push(id);
        }
        artifacts.sort();
        assert_eq!(store.list_artifacts().await.unwrap(), artifacts);
        assert_eq!(store.counters().lists, 2);
    }
}

#[tokio::test]
async fn empty_store_lists_nothing() {
    for (_dir, store) in stores() {
        assert!(store.list_manifests().await.unwrap().is_empty());
        assert!(store.list_artifacts().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn missing_objects_are_typed_not_found() {
    for (_dir, store) in stores() {
        let id = ArtifactId::of(b"never stored");
        let err = store.get_artifact(id).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains(&id.to_hex()), "{err}");

        let err = store.get_manifest(CheckpointId(42)).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(err.to_string().contains("manifest 42"), "{err}");

        assert!(!store.has_artifact(id).await.unwrap());
        // Deleting what is not there is not an error.
        store.delete_artifact(id).await.unwrap();
        store.delete_manifest(CheckpointId(42)).await.unwrap();
        // A permanent answer is not retried.
        assert_eq!(store.counters().gets, 2);
        assert_eq!(store.counters().deletes, 2);
    }
}

#[tokio::test]
async fn deletes_remove_objects() {
    for (_dir, store) in stores() {
        let data = artifact(9, 20);
        let id = ArtifactId::of(&data);
        store.put_artifact(id, data.clone()).await.unwrap();
        store
            .commit_manifest(CheckpointId(1), Bytes::from_static(b"m"))
            .await
            .unwrap();
        store.delete_artifact(id).await.unwrap();
        store.delete_manifest(CheckpointId(1)).await.unwrap();
        assert!(!store.has_artifact(id).await.unwrap());
        assert_eq!(
            store
                .get_manifest(CheckpointId(1))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        assert!(store.list_artifacts().await.unwrap().is_empty());
        assert!(store.list_manifests().await.unwrap().is_empty());
        // A deleted artifact can be written again.
        assert_eq!(
            store.put_artifact(id, data).await.unwrap(),
            PutOutcome::Written
        );
    }
}

#[tokio::test]
async fn local_store_writes_files_under_its_directory() {
    let (tmp, store) = local();
    let root = tmp.path().join("store");
    assert_eq!(store.name(), "local");
    let data = artifact(4, 30);
    let id = ArtifactId::of(&data);
    store.put_artifact(id, data.clone()).await.unwrap();
    store
        .commit_manifest(CheckpointId(7), Bytes::from_static(b"manifest bytes"))
        .await
        .unwrap();

    let artifact_file = root.join("artifacts").join(id.to_hex());
    assert_eq!(std::fs::read(&artifact_file).unwrap(), data.as_ref());
    let manifest_file = root.join("manifests").join("00000000000000000007.hwm");
    assert_eq!(std::fs::read(&manifest_file).unwrap(), b"manifest bytes");

    // No staging files are left behind.
    for dir in ["artifacts", "manifests"] {
        let names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{dir}: {names:?}");
    }

    // A second store on the same directory sees everything.
    drop(store);
    let reopened = ObjectCheckpointStore::local(&root).unwrap();
    assert_eq!(
        reopened.list_manifests().await.unwrap(),
        vec![CheckpointId(7)]
    );
    assert_eq!(reopened.get_artifact(id).await.unwrap(), data);
}

#[tokio::test]
async fn local_listing_ignores_staging_and_foreign_files() {
    let (tmp, store) = local();
    let root = tmp.path().join("store");
    store
        .commit_manifest(CheckpointId(3), Bytes::from_static(b"m3"))
        .await
        .unwrap();
    // What a crashed writer could leave behind, and what a human could.
    let manifests = root.join("manifests");
    std::fs::write(manifests.join("00000000000000000005.hwm#1"), b"half").unwrap();
    std::fs::write(manifests.join("5.hwm"), b"short name").unwrap();
    std::fs::write(manifests.join("notes.txt"), b"x").unwrap();
    std::fs::create_dir(manifests.join("00000000000000000006.hwm")).unwrap();
    std::fs::write(root.join("artifacts").join("ABCDEF"), b"x").unwrap();
    std::fs::write(
        root.join("artifacts")
            .join(format!("{}#1", ArtifactId::of(b"x").to_hex())),
        b"x",
    )
    .unwrap();

    assert_eq!(store.list_manifests().await.unwrap(), vec![CheckpointId(3)]);
    assert!(store.list_artifacts().await.unwrap().is_empty());
}

#[tokio::test]
async fn listing_ignores_foreign_objects_in_any_store() {
    let store = ObjectCheckpointStore::in_memory();
    let os = store.object_store().clone();
    for name in [
        "manifests/12.hwm",
        "manifests/0000000000000000001a.hwm",
        "manifests/00000000000000000001.hwm.tmp",
        "manifests/99999999999999999999.hwm", // does not fit a u64
        "manifests/nested/00000000000000000002.hwm",
        "artifacts/+0000000000000000000000000000001",
        "artifacts/0000000000000000000000000000000A",
    ] {
        os.put(&Path::from(name), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    store
        .commit_manifest(CheckpointId(4), Bytes::from_static(b"m"))
        .await
        .unwrap();
    assert_eq!(store.list_manifests().await.unwrap(), vec![CheckpointId(4)]);
    assert!(store.list_artifacts().await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupted_file_is_returned_as_stored_and_the_codec_detects_it() {
    let (tmp, store) = local();
    let root = tmp.path().join("store");
    let good = artifact(5, 200);
    let damaged = artifact(6, 200);
    let good_id = ArtifactId::of(&good);
    let damaged_id = ArtifactId::of(&damaged);
    store.put_artifact(good_id, good.clone()).await.unwrap();
    store
        .put_artifact(damaged_id, damaged.clone())
        .await
        .unwrap();
    verify_artifact(&good).unwrap();
    verify_artifact(&damaged).unwrap();

    let file = root.join("artifacts").join(damaged_id.to_hex());
    let mut on_disk = std::fs::read(&file).unwrap();
    let at = on_disk.len() - 3;
    on_disk[at] ^= 0x40;
    std::fs::write(&file, &on_disk).unwrap();

    let read = store.get_artifact(damaged_id).await.unwrap();
    assert_eq!(read.as_ref(), on_disk.as_slice(), "returned as stored");
    assert_ne!(ArtifactId::of(&read), damaged_id);
    let err = verify_artifact(&read).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Corruption);

    let read = store.get_artifact(good_id).await.unwrap();
    assert_eq!(read, good);
    verify_artifact(&read).unwrap();
}

#[tokio::test]
async fn store_under_a_prefix_keeps_its_objects_there() {
    let os: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let a = ObjectCheckpointStore::new(os.clone(), "jobs/a", "memory");
    let b = ObjectCheckpointStore::new(os.clone(), "jobs/b/", "memory");
    let data = artifact(7, 10);
    let id = ArtifactId::of(&data);
    a.put_artifact(id, data.clone()).await.unwrap();
    a.commit_manifest(CheckpointId(1), Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert_eq!(
        a.artifact_path(id).as_ref(),
        format!("jobs/a/artifacts/{}", id.to_hex())
    );
    assert_eq!(
        a.manifest_path(CheckpointId(1)).as_ref(),
        "jobs/a/manifests/00000000000000000001.hwm"
    );
    os.head(&a.artifact_path(id)).await.unwrap();

    assert!(b.list_manifests().await.unwrap().is_empty());
    assert!(!b.has_artifact(id).await.unwrap());
    assert_eq!(b.put_artifact(id, data).await.unwrap(), PutOutcome::Written);
    assert_eq!(a.list_manifests().await.unwrap(), vec![CheckpointId(1)]);
}

#[tokio::test]
async fn a_file_in_place_of_a_store_directory_is_permanent_and_not_retried() {
    let (tmp, store) = local();
    let store = store.with_config(StoreConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
        ..StoreConfig::default()
    });
    // A file where the manifests directory should be: every write fails
    // with ENOTDIR, which no retry repairs.
    let manifests = tmp.path().join("store").join("manifests");
    std::fs::remove_dir(&manifests).unwrap();
    std::fs::write(&manifests, b"in the way").unwrap();

    let err = store
        .commit_manifest(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { store: "local", .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{err}");
    assert!(!err.is_transient());
    // The message names the file: the store's directory and the object.
    let path = manifests.join("00000000000000000001.hwm");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        store.counters(),
        StoreCounters {
            puts: 1,
            ..StoreCounters::default()
        },
        "a permanent error is not retried"
    );
}

#[test]
fn retry_policy_backs_off_exponentially_and_is_bounded() {
    let p = RetryPolicy::default();
    assert_eq!(p.attempts(), 3);
    assert_eq!(p.backoff(1), Duration::from_millis(50));
    assert_eq!(p.backoff(2), Duration::from_millis(100));
    assert_eq!(p.backoff(3), Duration::from_millis(200));
    assert_eq!(p.backoff(40), Duration::from_millis(200));
    assert_eq!(RetryPolicy::none().attempts(), 1);
    let zero = RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::default()
    };
    assert_eq!(zero.attempts(), 1);
}

#[test]
fn layout_names_round_trip_strictly() {
    let id = ArtifactId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    assert_eq!(artifact_name(id), "0123456789abcdef0011223344556677");
    assert_eq!(parse_artifact_name(&artifact_name(id)), Some(id));
    assert_eq!(
        parse_artifact_name("0123456789ABCDEF0011223344556677"),
        None
    );
    assert_eq!(parse_artifact_name("0123456789abcdef001122334455667"), None);

    for n in [0, 1, 42, u64::MAX] {
        let name = manifest_name(CheckpointId(n));
        assert_eq!(name.len(), 20 + MANIFEST_SUFFIX.len());
        assert_eq!(parse_manifest_name(&name), Some(CheckpointId(n)));
    }
    assert_eq!(manifest_name(CheckpointId(7)), "00000000000000000007.hwm");
    assert_eq!(parse_manifest_name("7.hwm"), None);
    assert_eq!(parse_manifest_name("00000000000000000007.hwm#1"), None);
    assert_eq!(parse_manifest_name("+0000000000000000007.hwm"), None);
    assert_eq!(parse_manifest_name("99999999999999999999.hwm"), None);
    // Issue 18: names read back from a listing never become a path that
    // leaves the store's directories, an absolute path or an unbounded
    // string.
    let long = "0".repeat(1 << 16);
    for name in [
        "../00000000000000000007.hwm",
        "/etc/00000000000000000007.hwm",
        "manifests/00000000000000000007.hwm",
        "00000000000000000007.hwm/..",
        "0000000000000000000/.hwm",
        long.as_str(),
    ] {
        assert_eq!(parse_manifest_name(name), None, "{name:?}");
    }
    let long_hwm = format!("{long}.hwm");
    assert_eq!(parse_manifest_name(&long_hwm), None);
    for name in [
        "../23456789abcdef0011223344556677",
        "/123456789abcdef0011223344556677",
        "0123456789abcdef0011223344556677/..",
        "0123456789abcdef001122334455/../",
        long.as_str(),
    ] {
        assert_eq!(parse_artifact_name(name), None, "{name:?}");
    }
}

/// Issue 18's fault tests: an artifact whose stored copy was torn (half of
/// it under the content address) is not reused by the next put of the
/// same content: the put finds the wrong size and writes it again, so a
/// checkpoint that deduplicates against it restores.
#[tokio::test]
async fn a_torn_copy_under_a_content_address_is_replaced_not_reused() {
    use highwater_core::{ArtifactId, CheckpointStore, PutOutcome};
    let dir = tempfile::tempdir().unwrap();
    let store = highwater_cloud::ObjectCheckpointStore::local(dir.path()).unwrap();
    let data = bytes::Bytes::from((0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let id = ArtifactId::of(&data);
    std::fs::write(
        dir.path().join("artifacts").join(id.to_hex()),
        &data[..data.len() / 2],
    )
    .unwrap();
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::Written
    );
    assert_eq!(store.get_artifact(id).await.unwrap(), data);
    assert_eq!(
        store.put_artifact(id, data.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
}
