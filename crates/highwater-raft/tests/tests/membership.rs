//! Adding and removing nodes through the coordinator API (in-process nodes,
//! real TCP on loopback).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater_cloud::ObjectCheckpointStore;
use highwater_raft::{
    AbortReason, CheckpointCoordinator, CheckpointState, DistributedConfig, ManifestRef, NodeId,
    Participants,
};

async fn node(
    dir: &std::path::Path,
    id: NodeId,
    peers: &[(NodeId, String)],
    join: bool,
) -> CheckpointCoordinator {
    node_at(
        dir,
        id,
        "127.0.0.1:0".parse().unwrap(),
        peers,
        join,
        Participants::AllVoters,
    )
    .await
}

async fn node_at(
    dir: &std::path::Path,
    id: NodeId,
    listen: std::net::SocketAddr,
    peers: &[(NodeId, String)],
    join: bool,
    participants: Participants,
) -> CheckpointCoordinator {
    let data = dir.join(format!("node-{id}"));
    let mut config = DistributedConfig::new(id, listen, &data).secret(crate::common::secret());
    config.participants = participants;
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

    // Pending when node 2 joins: it does not name node 2, so it is no cut
    // of the job any more (found by the cluster demo's rescale 3 -> 4:
    // three nodes completed such a checkpoint with parts laid out for
    // four). Not offered as a barrier, and aborted.
    let before = a.trigger_checkpoint().await.unwrap();
    a.add_node(2, b.local_addr().to_string()).await.unwrap();
    assert_eq!(a.cluster_health().voters, BTreeSet::from([1, 2]));
    eventually("node 2 to learn the membership", || {
        b.cluster_health().voters == BTreeSet::from([1, 2])
    })
    .await;
    assert!(
        !a.pending_barriers().iter().any(|e| matches!(
            e,
            highwater_raft::LedgerEvent::Barrier { checkpoint, .. } if *checkpoint == before
        )),
        "a checkpoint from before the join is not offered"
    );
    eventually("the abort of the checkpoint from before the join", || {
        !a.ledger().get(before).unwrap().is_pending()
    })
    .await;
    assert!(matches!(
        a.ledger().get(before).unwrap().state,
        CheckpointState::Aborted {
            reason: AbortReason::VoterAdded(2),
            ..
        }
    ));

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

/// Regression (found by the cluster demo's kill test in CI): a node that
/// restarts learns the checkpoints completed while it was away only when
/// the leader next replicates to it; a restore that asked its ledger
/// straight away picked a global checkpoint the other nodes had already
/// retired (and deleted the parts of). `sync_ledger` waits for a read
/// index confirmed by a majority: afterwards the node knows every
/// completion the leader knew. (Found with it: a node shut down in
/// process left its connections answering for it, and the leader never
/// reached the restarted node.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_knows_every_completion_after_syncing_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints go on while node 3 is down (its parts are independent).
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let live = Participants::LiveVoters;
    let a = node_at(dir.path(), 1, any, &[], false, live).await;
    a.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let leader = [(1, a.local_addr().to_string())];
    let b = node_at(dir.path(), 2, any, &leader, true, live).await;
    a.add_node(2, b.local_addr().to_string()).await.unwrap();
    let c = node_at(dir.path(), 3, any, &leader, true, live).await;
    a.add_node(3, c.local_addr().to_string()).await.unwrap();
    let c_addr = c.local_addr();
    c.shutdown().await.unwrap();

    // Checkpoints complete without node 3 once the leader sees it gone (a
    // trigger that still names it is aborted).
    let mut completed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while completed.len() < 3 {
        assert!(Instant::now() < deadline, "no checkpoint without node 3");
        let id = a.trigger_checkpoint().await.unwrap();
        let participants = a.ledger().get(id).unwrap().participants.clone();
        if participants.contains(&3) {
            a.abort_checkpoint(id, "node 3 is down").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for n in participants {
            a.report_completion(id, n, ManifestRef(format!("part-{n}-{id}")))
                .await
                .unwrap();
        }
        // The leader appends the completion after the last ack.
        eventually("the completion", || {
            a.latest_completed().map(|l| l.id) == Some(id)
        })
        .await;
        completed.push(id);
    }
    let newest = a.latest_completed().unwrap().id;
    assert_eq!(Some(&newest), completed.last());

    // Node 3 comes back where the membership says it is.
    let c = node_at(dir.path(), 3, c_addr, &leader, true, live).await;
    let before = c.latest_completed().map(|l| l.id);
    eprintln!("node 3 knew {before:?} when it started; the leader {newest}");
    c.sync_ledger().await.unwrap();
    assert_eq!(
        c.latest_completed().map(|l| l.id),
        Some(newest),
        "node 3 after syncing (it knew {before:?} when it started)"
    );
    for id in completed {
        assert!(
            matches!(
                c.ledger().get(id).map(|r| &r.state),
                Some(CheckpointState::Completed { .. })
            ),
            "node 3 knows checkpoint {id} completed"
        );
    }
    // A follower's read goes through the leader; the leader answers its own.
    b.sync_ledger().await.unwrap();
    a.sync_ledger().await.unwrap();
    c.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// With every voter taking part (the default, what a job needs), a
/// checkpoint never completes without a down node's part: it is aborted
/// as lost, and a participant refuses a node that would go on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_voters_a_checkpoint_needs_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), 1, &[], false).await;
    a.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let leader = [(1, a.local_addr().to_string())];
    let b = node(dir.path(), 2, &leader, true).await;
    a.add_node(2, b.local_addr().to_string()).await.unwrap();
    let c = node(dir.path(), 3, &leader, true).await;
    a.add_node(3, c.local_addr().to_string()).await.unwrap();
    c.shutdown().await.unwrap();
    let id = a.trigger_checkpoint().await.unwrap();
    assert_eq!(
        a.ledger().get(id).unwrap().participants,
        BTreeSet::from([1, 2, 3])
    );
    for n in [1, 2] {
        a.report_completion(id, n, ManifestRef(format!("part-{n}")))
            .await
            .unwrap();
    }
    eventually("the abort of the checkpoint node 3 cannot take", || {
        !a.ledger().get(id).unwrap().is_pending()
    })
    .await;
    assert!(
        matches!(
            a.ledger().get(id).unwrap().state,
            CheckpointState::Aborted {
                reason: AbortReason::ParticipantLost(3),
                ..
            }
        ),
        "{:?}",
        a.ledger().get(id).unwrap().state
    );
    assert_eq!(a.latest_completed(), None);
    let a = Arc::new(a);
    assert!(
        highwater_raft::RaftParticipant::new(a.clone(), tokio::runtime::Handle::current()).is_ok()
    );
    let d = Arc::new(
        node_at(
            dir.path(),
            4,
            "127.0.0.1:0".parse().unwrap(),
            &[],
            false,
            Participants::LiveVoters,
        )
        .await,
    );
    let e = highwater_raft::RaftParticipant::new(d, tokio::runtime::Handle::current()).unwrap_err();
    assert_eq!(e.kind(), highwater_core::ErrorKind::Invalid, "{e}");
    b.shutdown().await.unwrap();
}
