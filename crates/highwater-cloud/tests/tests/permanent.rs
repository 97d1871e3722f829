//! Permanent failures on real components: a read-only store directory, a
//! full disk and a missing S3 bucket each fail a checkpoint with the
//! permanent kind that says what to fix, name the path or URL, are not
//! retried, and leave no manifest behind.
//!
//! The file-system cases mount a tmpfs (read-only, or 1 MiB small) with
//! the testkit's [`Tmpfs`], which needs root (CI runs as root; `chmod`
//! would not do: root writes through any mode). Without root, or where the
//! kernel refuses the mount, they print why and return. A last test checks the other side: a transient
//! failure (a refused connection) is retried until the server answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_cloud::{CloudOptions, ObjectCheckpointStore, RetryPolicy, StoreConfig};
use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Error, ErrorKind};
use highwater_testkit::mounts::Tmpfs;

use super::common::{big_artifact, checkpoint, s3_url, unique};

/// A retry policy that would retry a transient error 4 times, sleeping at
/// least a second each time: a permanent error must come back at once.
fn patient() -> StoreConfig {
    StoreConfig {
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        },
        ..StoreConfig::default()
    }
}

/// The path of the first artifact file the store writes, as its message
/// must name it.
fn artifact_file(store_dir: &Path, store: &ObjectCheckpointStore, a: &Bytes) -> PathBuf {
    store_dir.join(store.artifact_path(ArtifactId::of(a)).as_ref())
}

/// A permanent failure of the local store: the `kind`, not transient, the
/// message naming `file`, one put without backoff, no manifest committed.
async fn assert_permanent_at_once(
    err: &Error,
    kind: ErrorKind,
    file: &std::path::Path,
    store: &ObjectCheckpointStore,
    took: Duration,
) {
    assert!(matches!(err, Error::Store { store: "local", .. }), "{err}");
    assert_eq!(err.kind(), kind, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "the message names the file: {err}"
    );
    assert_eq!(store.counters().puts, 1, "not retried: {err}");
    assert!(took < Duration::from_secs(1), "no backoff: {took:?}");
    assert!(
        store.list_manifests().await.unwrap().is_empty(),
        "nothing committed"
    );
}

#[tokio::test]
async fn a_read_only_store_directory_is_permission_denied_and_not_retried() {
    let Some(mount) = Tmpfs::mount_or_skip("the read-only store test", "size=16m") else {
        return;
    };
    let dir = mount.path().join("store");
    let store = ObjectCheckpointStore::local(&dir)
        .unwrap()
        .with_config(patient());
    mount
        .remount_read_only()
        .expect("remount the tmpfs read-only");

    let artifacts = vec![big_artifact(1, 64 << 10)];
    let started = Instant::now();
    let err = checkpoint(&store, 1, &artifacts).await.unwrap_err();
    let took = started.elapsed();

    let file = artifact_file(&dir, &store, &artifacts[0]);
    assert_permanent_at_once(&err, ErrorKind::PermissionDenied, &file, &store, took).await;
}

#[tokio::test]
async fn a_full_disk_is_storage_full_and_not_retried() {
    let Some(mount) = Tmpfs::mount_or_skip("the full-disk test", "size=1m") else {
        return;
    };
    let dir = mount.path().join("store");
    let store = ObjectCheckpointStore::local(&dir)
        .unwrap()
        .with_config(patient());

    // Incompressible, and twice the size of the file system.
    let artifacts = vec![big_artifact(2, 2 << 20)];
    let started = Instant::now();
    let err = checkpoint(&store, 1, &artifacts).await.unwrap_err();
    let took = started.elapsed();

    let file = artifact_file(&dir, &store, &artifacts[0]);
    assert_permanent_at_once(&err, ErrorKind::StorageFull, &file, &store, took).await;
    // The failed write left no artifact behind either.
    assert!(store.list_artifacts().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_misconfigured_and_not_retried() {
    // The shared moto server (the check that its variables are set), and
    // a bucket nobody created on it.
    let _ = s3_url("missing");
    let bucket = unique("missing");
    let url = format!("s3://{bucket}/job");
    let store = ObjectCheckpointStore::from_url(&url, &CloudOptions::new())
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
        .with_config(patient());

    let artifacts = vec![big_artifact(3, 64 << 10)];
    let started = Instant::now();
    let err = checkpoint(&store, 1, &artifacts).await.unwrap_err();
    let took = started.elapsed();

    assert!(matches!(err, Error::Store { store: "s3", .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{err}");
    assert!(!err.is_transient(), "{err}");
    let object = format!(
        "s3://{bucket}/{}",
        store.artifact_path(ArtifactId::of(&artifacts[0]))
    );
    assert!(err.to_string().contains(&object), "names the URL: {err}");
    assert_eq!(store.counters().puts, 1, "not retried: {err}");
    assert!(took < Duration::from_secs(1), "no backoff: {took:?}");

    // Nothing can have been committed; listing says why.
    let err = store.list_manifests().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{err}");
    assert!(
        err.to_string().contains(&format!("s3://{bucket}/job")),
        "{err}"
    );
    assert_eq!(store.counters().lists, 1, "not retried: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_the_server_answers() {
    // The store reaches the shared moto server through a loopback port on
    // which nothing listens at first (connection refused: transient); once
    // the second attempt has started, a forwarder to moto takes the port.
    let base = s3_url("transient");
    let moto = std::env::var("AWS_ENDPOINT").expect("AWS_ENDPOINT names the moto server");
    let moto = moto
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        l.local_addr().expect("local address").port()
    };
    let options = CloudOptions::new()
        .with("aws_endpoint", format!("http://127.0.0.1:{port}"))
        .with_http_retries(0, Duration::from_secs(1));
    let store = std::sync::Arc::new(
        ObjectCheckpointStore::from_url(&base, &options)
            .unwrap_or_else(|e| panic!("open {base}: {e}"))
            .with_config(StoreConfig {
                retry: RetryPolicy {
                    max_attempts: 1000,
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(20),
                },
                ..StoreConfig::default()
            }),
    );

    let commit = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commit_manifest(CheckpointId(9), Bytes::from_static(b"m9"))
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.counters().puts < 2 {
        assert!(!commit.is_finished(), "the commit ended before a retry");
        assert!(Instant::now() < deadline, "no retry within 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("take the port back");
    let forwarder = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let moto = moto.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&moto).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });

    tokio::time::timeout(Duration::from_secs(60), commit)
        .await
        .expect("the commit succeeds once the server answers")
        .expect("commit task")
        .unwrap();
    assert!(store.counters().puts >= 2);
    assert_eq!(
        store.get_manifest(CheckpointId(9)).await.unwrap(),
        Bytes::from_static(b"m9")
    );
    forwarder.abort();
}
