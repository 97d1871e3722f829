//! Healthy clusters: election, checkpoints, agreement.

use std::time::Duration;

use crate::common::{Cluster, Timing};

async fn checkpoints_complete_and_every_node_agrees(n: u64) {
    let cluster = Cluster::start(n, Timing::default()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    // Every node learns the leader (the laggards on its next heartbeat).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let statuses = cluster.statuses().await;
        assert_eq!(statuses.len(), n as usize);
        // Converged: every node follows `leader` in the leader's term (a
        // node may briefly know the leader of an older term).
        let term = statuses[&leader].health.term;
        if statuses
            .values()
            .all(|s| s.health.leader == Some(leader) && s.health.term == term)
        {
            for s in statuses.values() {
                assert_eq!(s.health.voters.len(), n as usize);
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every node knows leader {leader}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = cluster.running();
    let mut last = 0;
    for _ in 0..5 {
        let id = cluster.trigger(Duration::from_secs(10)).await;
        assert_eq!(id, last + 1, "checkpoint ids are consecutive");
        assert!(
            cluster
                .wait_finished(&all, id, Duration::from_secs(10))
                .await,
            "checkpoint {id} aborted"
        );
        last = id;
    }
    assert_eq!(cluster.wait_agreement(5, Duration::from_secs(10)).await, 5);
    for (node, s) in cluster.statuses().await {
        let latest = s.ledger.latest_completed().expect("a completed checkpoint");
        assert_eq!(
            latest.manifests.len(),
            n as usize,
            "node {node}: every node acknowledged"
        );
        assert_eq!(s.ledger.completed_total(), 5);
        assert_eq!(s.ledger.aborted_total(), 0);
    }
    for id in cluster.ids.clone() {
        assert_eq!(
            cluster.completions_by(id),
            5,
            "node {id} applied every completion once"
        );
    }
    cluster.check_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_complete_checkpoints_and_agree() {
    checkpoints_complete_and_every_node_agrees(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_a_leader_complete_checkpoints_and_agree() {
    checkpoints_complete_and_every_node_agrees(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_triggers_on_its_interval_and_a_restarted_cluster_keeps_its_ledger() {
    let mut cluster = Cluster::start(
        3,
        Timing {
            interval_ms: Some(100),
            ..Timing::default()
        },
    )
    .await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    let before = cluster.wait_agreement(3, Duration::from_secs(15)).await;
    for id in cluster.ids.clone() {
        cluster.kill(id);
    }
    for id in cluster.ids.clone() {
        cluster.spawn(id);
    }
    cluster.wait_leader(Duration::from_secs(10)).await;
    // The durable log and snapshot bring back every completed checkpoint,
    // and the interval keeps triggering new ones.
    let after = cluster
        .wait_agreement(before + 2, Duration::from_secs(15))
        .await;
    assert!(after >= before + 2);
    cluster.check_invariants().await;
}
