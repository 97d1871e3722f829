//! A private S3 server (moto) is killed by its PID in the middle of a
//! multipart upload: the checkpoint fails with a typed, retryable error
//! and nothing becomes visible; after the server is back on the same port
//! (moto keeps everything in memory, so the bucket is created again), the
//! same store object writes and commits the next checkpoint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater_cloud::{
    CloudOptions, ObjectCheckpointStore, RetryPolicy, StoreConfig, TransferConfig,
};
use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Error, ErrorKind, PutOutcome};

use super::common::{big_artifact, checkpoint};

const BUCKET: &str = "fault";

/// A moto S3 server owned by one test, killed by its PID.
struct PrivateMoto {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl PrivateMoto {
    fn start(dir: &std::path::Path) -> PrivateMoto {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            l.local_addr().expect("local address").port()
        };
        let mut server = PrivateMoto {
            port,
            log: dir.join("moto.log"),
            child: None,
        };
        server.restart();
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts moto on the same port, waits until it answers and creates
    /// the bucket (an unauthenticated PUT, which moto accepts).
    fn restart(&mut self) {
        assert!(self.child.is_none(), "the private server is running");
        let log = std::fs::File::create(&self.log).expect("create the moto log");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start python3 -m moto.server ({e}): install moto by running the tests through \
                     `cargo xtask test` (or `cargo xtask services start`)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.http("PUT", &format!("/{BUCKET}")) {
                assert!(
                    status == 200,
                    "moto answered {status} to creating the bucket"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto on port {} did not start (is moto[server] installed? `cargo xtask \
                 services start` installs it): see {}",
                self.port,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a bodiless request and returns the status, if the server answers.
    fn http(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// SIGKILL by PID, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_killed_mid_upload_then_the_next_checkpoint_succeeds() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut server = PrivateMoto::start(dir.path());
    let options = CloudOptions::new()
        .without_env()
        .with("aws_endpoint", server.endpoint())
        .with("allow_http", "true")
        .with("aws_access_key_id", "test")
        .with("aws_secret_access_key", "test")
        .with("aws_region", "us-east-1")
        // Give up quickly: the server is gone for good within this test.
        .with_http_retries(2, Duration::from_secs(3));
    let store = Arc::new(
        ObjectCheckpointStore::from_url(&format!("s3://{BUCKET}/job"), &options)
            .unwrap()
            .with_config(StoreConfig {
                retry: RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(50),
                },
                transfer: TransferConfig {
                    part_size: 5 << 20,
                    part_concurrency: 2,
                    ..TransferConfig::default()
                },
            }),
    );

    // A small artifact, then a large one (multipart, many parts).
    let small = big_artifact(1, 64 << 10);
    let large = big_artifact(2, 96 << 20);
    let artifacts = vec![small.clone(), large.clone()];
    let task = {
        let (store, artifacts) = (store.clone(), artifacts.clone());
        tokio::spawn(async move { checkpoint(&store, 1, &artifacts).await })
    };
    // Kill once the multipart upload has sent a few parts (the small put,
    // then create and parts count as puts).
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.counters().puts < 4 {
        assert!(
            !task.is_finished(),
            "the checkpoint finished before the kill"
        );
        assert!(Instant::now() < deadline, "the upload did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the failed checkpoint returns within a minute")
        .expect("checkpoint task")
        .unwrap_err();
    assert!(matches!(err, Error::Store { store: "s3", .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains(&ArtifactId::of(&large).to_hex()),
        "{err}"
    );
    let sent = store.counters();
    assert!(
        sent.puts < 2 + (large.len() as u64).div_ceil(5 << 20) + 1,
        "not every part went out: {sent:?}"
    );

    // While the server is down every request fails the same way.
    let err = store.list_manifests().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // Back on the same port, empty (moto keeps nothing), bucket recreated.
    server.restart();
    assert!(
        store.list_manifests().await.unwrap().is_empty(),
        "no manifest is visible"
    );
    assert!(!store.has_artifact(ArtifactId::of(&large)).await.unwrap());

    // The same store object takes the next checkpoint.
    checkpoint(&store, 2, &artifacts).await.unwrap();
    assert_eq!(store.list_manifests().await.unwrap(), vec![CheckpointId(2)]);
    assert_eq!(
        store.get_artifact(ArtifactId::of(&large)).await.unwrap(),
        large
    );
    assert_eq!(
        store
            .put_artifact(ArtifactId::of(&small), small)
            .await
            .unwrap(),
        PutOutcome::AlreadyPresent
    );
}
