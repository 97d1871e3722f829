//! The transport refuses bad frames without harm.

use std::sync::Arc;
use std::time::Duration;

use highwater_cloud::ObjectCheckpointStore;
use highwater_raft::{CheckpointCoordinator, DistributedConfig, query_status, request_checkpoint};

use crate::common::secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame announcing 4 GiB (before authenticating: the node waits for the
/// rest of a handshake, then gives up), and a frame of garbage, each close
/// their connection; nothing is allocated from the length, and the node
/// keeps serving and completing checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_frames_close_the_connection_and_the_node_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        DistributedConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path()).secret(secret());
    let store = Arc::new(ObjectCheckpointStore::local(dir.path().join("snapshots")).unwrap());
    let node = CheckpointCoordinator::start(config, store).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let addr = node.local_addr();

    for frame in [
        u32::MAX.to_le_bytes().to_vec(),
        [8u32.to_le_bytes().to_vec(), vec![0xff; 80]].concat(),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the node closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "no reply to a bad frame");
    }

    let id = request_checkpoint(addr, &secret(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut events = node.events();
    assert_eq!(
        node.pending_barriers(),
        vec![highwater_raft::LedgerEvent::Barrier {
            checkpoint: id,
            time_ms: node.ledger().get(id).unwrap().triggered_ms
        }],
        "the trigger is applied and waits for this node's ack"
    );
    node.report_completion(id, 1, highwater_raft::ManifestRef("m".into()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.latest_completed().map(|c| c.id) != Some(id) {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint {id:?} did not complete"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
    }
    let status = query_status(addr, &secret(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status.health.leader, Some(1));
    assert_eq!(status.ledger.completed_total(), 1);
    node.shutdown().await.unwrap();
}

/// A node whose only peer never answers has no quorum: waiting for a
/// leader, triggering and acknowledging fail with `Error::Consensus`,
/// transient (`Unavailable`), naming the operation; the acknowledgement is
/// retried until the checkpoint timeout and no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_consensus_errors_are_transient_and_name_the_operation() {
    use highwater_core::{CheckpointId, Error, ErrorKind};

    let dir = tempfile::tempdir().unwrap();
    // A loopback port on which nothing listens.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config =
        DistributedConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path()).secret(secret());
    config.peers.insert(2, silent.to_string());
    config.checkpoint_timeout = Duration::from_millis(600);
    let store = Arc::new(ObjectCheckpointStore::local(dir.path().join("snapshots")).unwrap());
    let node = CheckpointCoordinator::start(config, store).await.unwrap();

    let err = node
        .wait_for_leader(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Consensus { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("wait for a leader"), "{err}");

    let err = node.trigger_checkpoint().await.unwrap_err();
    assert!(matches!(err, Error::Consensus { .. }), "{err:?}");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("trigger a checkpoint"), "{err}");

    let started = std::time::Instant::now();
    let err = node
        .report_completion(CheckpointId(7), 1, highwater_raft::ManifestRef("m".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Consensus { .. }), "{err:?}");
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("acknowledge checkpoint 7 for node 1"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "retried until the checkpoint timeout: {:?}",
        started.elapsed()
    );
    node.shutdown().await.unwrap();
}
