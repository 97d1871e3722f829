//! Adding and removing nodes through the coordinator API (in-process nodes,
//! real TCP on loopback).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater_cloud::ObjectCheckpointStore;
use highwater_raft::{
    AbortReason, CheckpointCoordinator, CheckpointState, DistributedConfig, ManifestRef, NodeId,
};

async fn node(
    dir: &std::path::Path,
    id: NodeId,
    peers: &[(NodeId, String)],
    join: bool,
) -> CheckpointCoordinator {
    let data = dir.join(format!("node-{id}"));
    let mut config = DistributedConfig::new(id, "127.0.0.1:0".parse().unwrap(), &data)
        .secret(crate::common::secret());
    config.peers = peers.iter().cloned().collect();
    config.join = join;
    config.checkpoint_timeout = Duration::from_secs(30);
    let store = Arc::new(ObjectCheckpointStore::local(data.join("snapshots")).unwrap());
    CheckpointCoordinator::start(config, store).await.unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_takes_part_in_checkpoints_and_a_removed_one_aborts_its_pending_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), 1, &[], false).await;
    a.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    // A joining node is told where the existing members are.
    let b = node(dir.path(), 2, &[(1, a.local_addr().to_string())], true).await;
    assert!(
        b.cluster_health().voters.is_empty(),
        "a joining node has no membership yet"
    );

    a.add_node(2, b.local_addr().to_string()).await.unwrap();
    assert_eq!(a.cluster_health().voters, BTreeSet::from([1, 2]));
    eventually("node 2 to learn the membership", || {
        b.cluster_health().voters == BTreeSet::from([1, 2])
    })
    .await;

    // Both nodes take part: the checkpoint completes only after both acks.
    let id = a.trigger_checkpoint().await.unwrap();
    eventually("node 2 to apply the trigger", || {
        b.ledger().get(id).is_some()
    })
    .await;
    assert_eq!(
        b.ledger().get(id).unwrap().participants,
        BTreeSet::from([1, 2])
    );
    a.report_completion(id, 1, ManifestRef("a".into()))
        .await
        .unwrap();
    assert!(a.ledger().get(id).unwrap().is_pending(), "one ack of two");
    // Node 2 reports through itself, a follower: forwarded to the leader.
    b.report_completion(id, 2, ManifestRef("b".into()))
        .await
        .unwrap();
    eventually("completion on both nodes", || {
        a.latest_completed().map(|c| c.id) == Some(id)
            && b.latest_completed().map(|c| c.id) == Some(id)
    })
    .await;

    // A checkpoint pending when its participant is removed is aborted.
    let pending = a.trigger_checkpoint().await.unwrap();
    a.remove_node(2).await.unwrap();
    assert_eq!(a.cluster_health().voters, BTreeSet::from([1]));
    eventually("the abort", || {
        !a.ledger().get(pending).unwrap().is_pending()
    })
    .await;
    assert!(matches!(
        a.ledger().get(pending).unwrap().state,
        CheckpointState::Aborted {
            reason: AbortReason::ParticipantLost(2),
            ..
        }
    ));
    // Later checkpoints involve node 1 only.
    let next = a.trigger_checkpoint().await.unwrap();
    assert_eq!(
        a.ledger().get(next).unwrap().participants,
        BTreeSet::from([1])
    );
    assert!(
        a.remove_node(9).await.is_err(),
        "removing a non-member is an error"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}
