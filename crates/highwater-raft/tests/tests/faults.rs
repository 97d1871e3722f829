//! Faults: SIGKILL, partitions, and randomized rounds of both.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use highwater_raft::NodeId;

use crate::common::{Cluster, Rng, Timing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_mid_checkpoint_elects_a_new_leader_and_never_completes_twice() {
    let timing = Timing {
        ack_delay_ms: 400,
        checkpoint_timeout_ms: 3000,
        ..Timing::default()
    };
    let mut cluster = Cluster::start(3, timing).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let first = cluster.trigger(Duration::from_secs(5)).await;
    assert!(
        cluster
            .wait_finished(&cluster.running(), first, Duration::from_secs(10))
            .await
    );

    // The next checkpoint is in flight: triggered and replicated, no ack yet
    // (each node waits 400 ms before acknowledging).
    let in_flight = cluster.trigger(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    // The election timeout is drawn from [election_ms, 2 × election_ms).
    let bound = Duration::from_millis(3 * 2 * timing.election_ms);
    assert!(
        failover < bound,
        "new leader after {failover:?}, bound {bound:?}"
    );

    // The killed leader comes back; the in-flight checkpoint is either
    // completed once with every ack or aborted, the same on every node.
    cluster.spawn(leader);
    let all = cluster.running();
    let completed = cluster
        .wait_finished(&all, in_flight, Duration::from_secs(15))
        .await;
    if completed {
        for s in cluster.statuses().await.values() {
            let r = s
                .ledger
                .get(highwater_core::CheckpointId(in_flight))
                .unwrap();
            assert_eq!(
                r.acks.len(),
                3,
                "completed with every acknowledgement: {r:?}"
            );
        }
    }
    // Later checkpoints proceed.
    for _ in 0..2 {
        let id = cluster.trigger(Duration::from_secs(10)).await;
        assert!(id > in_flight);
        assert!(
            cluster
                .wait_finished(&all, id, Duration::from_secs(10))
                .await,
            "checkpoint {id} aborted"
        );
    }
    cluster.check_invariants().await;
}

/// The leader dies after every acknowledgement of a checkpoint is committed
/// and before its `Complete` is (it exits where it would propose it): the
/// next leader completes it, exactly once, with every acknowledgement, and
/// every node agrees. A new leader elected with the same fault exits the
/// same way; every node restarts without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dead_after_every_ack_and_before_complete_leaves_the_checkpoint_to_complete_once()
{
    const CODE: i32 = 87;
    let timing = Timing {
        checkpoint_timeout_ms: 30_000,
        exit_before_complete: Some(CODE),
        ..Timing::default()
    };
    let mut cluster = Cluster::start(3, timing).await;
    let id = cluster.trigger(Duration::from_secs(10)).await;
    cluster.timing.exit_before_complete = None;
    let mut exits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (node, code) in cluster.reap() {
            assert_eq!(code, Some(CODE), "node {node} exited otherwise");
            exits.push(node);
            cluster.spawn(node);
        }
        let statuses = cluster.statuses().await;
        let finished = statuses.len() == 3
            && statuses.values().all(|s| {
                s.ledger
                    .get(highwater_core::CheckpointId(id))
                    .is_some_and(|r| !r.is_pending())
            });
        if finished {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint {id} not finished; exits {exits:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!exits.is_empty(), "no leader exited before the completion");
    let all = cluster.running();
    assert!(
        cluster
            .wait_finished(&all, id, Duration::from_secs(10))
            .await,
        "every acknowledgement was committed: the checkpoint completes"
    );
    for s in cluster.statuses().await.values() {
        let r = s.ledger.get(highwater_core::CheckpointId(id)).unwrap();
        assert_eq!(
            r.acks.len(),
            3,
            "completed with every acknowledgement: {r:?}"
        );
    }
    cluster.check_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_completes_nothing_while_the_majority_continues_and_all_agree_after_healing()
 {
    let timing = Timing {
        checkpoint_timeout_ms: 1500,
        ..Timing::default()
    };
    let mut cluster = Cluster::start(5, timing).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let id = cluster.trigger(Duration::from_secs(5)).await;
    assert!(
        cluster
            .wait_finished(&cluster.running(), id, Duration::from_secs(10))
            .await
    );
    // A node's ledger (its status) shows the completion a moment before its
    // `completed` line reaches this test: wait for every line before
    // counting them, or a late line looks like a completion while cut off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .running()
        .iter()
        .any(|&n| cluster.completions_by(n) == 0)
    {
        assert!(
            Instant::now() < deadline,
            "not every node printed its completion"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Cut the leader and one follower off: a minority of two.
    let other = *cluster.ids.iter().find(|&&n| n != leader).unwrap();
    let minority: BTreeSet<NodeId> = [leader, other].into();
    let majority: BTreeSet<NodeId> = cluster.running().difference(&minority).copied().collect();
    let minority_completions: Vec<usize> = minority
        .iter()
        .map(|&n| cluster.completions_by(n))
        .collect();
    let minority_latest: Vec<_> = {
        let s = cluster.statuses().await;
        minority
            .iter()
            .map(|n| s[n].ledger.latest_completed().cloned())
            .collect()
    };
    for &n in &minority {
        cluster.partition(n);
    }
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert!(majority.contains(&new_leader));
    // The majority keeps completing checkpoints (the first may be aborted:
    // the new leader may still count a cut-off node as live for a moment).
    let mut completed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed < 3 {
        assert!(
            Instant::now() < deadline,
            "the majority completed only {completed} checkpoints"
        );
        let id = cluster.trigger(Duration::from_secs(10)).await;
        if cluster
            .wait_finished(&majority, id, Duration::from_secs(10))
            .await
        {
            completed += 1;
        }
    }
    // The minority completed none.
    let now: Vec<usize> = minority
        .iter()
        .map(|&n| cluster.completions_by(n))
        .collect();
    assert_eq!(
        now, minority_completions,
        "the minority printed completions while cut off"
    );
    let s = cluster.statuses().await;
    let latest_now: Vec<_> = minority
        .iter()
        .map(|n| s[n].ledger.latest_completed().cloned())
        .collect();
    assert_eq!(
        latest_now, minority_latest,
        "the minority's ledger changed while cut off"
    );
    cluster.check_invariants().await;

    cluster.heal_all();
    let id = cluster.trigger(Duration::from_secs(10)).await;
    let all = cluster.running();
    let mut last = id;
    // Once the healed nodes count as live again, checkpoints include them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .wait_finished(&all, last, Duration::from_secs(10))
        .await
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completes after healing"
        );
        last = cluster.trigger(Duration::from_secs(10)).await;
    }
    assert_eq!(
        cluster.wait_agreement(last, Duration::from_secs(10)).await,
        last
    );
    cluster.check_invariants().await;
}

/// Rounds of random crashes, restarts and partitions of a 5-node cluster
/// (at most two nodes faulty at once, so a majority exists), with the
/// leader triggering on its interval and the test triggering too; the
/// invariants are checked every round, and every fourth round heals
/// everything and requires a new checkpoint to complete everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_crashes_restarts_and_partitions_keep_the_ledger_invariants() {
    let rounds: u64 = std::env::var("HIGHWATER_RAFT_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    #[expect(
        clippy::disallowed_methods,
        reason = "a random seed, not the time of state"
    )]
    let seed: u64 = std::env::var("HIGHWATER_RAFT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("randomized raft test: seed={seed} rounds={rounds} (HIGHWATER_RAFT_SEED to replay)");
    let mut rng = Rng::new(seed);
    let timing = Timing {
        interval_ms: Some(150),
        checkpoint_timeout_ms: 1200,
        ack_delay_ms: 20,
        ..Timing::default()
    };
    let mut cluster = Cluster::start(5, timing).await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    let mut progress_checks = 0;
    for round in 0..rounds {
        let faulty: BTreeSet<NodeId> = cluster
            .ids
            .iter()
            .copied()
            .filter(|n| !cluster.is_running(*n) || cluster.partitioned().contains(n))
            .collect();
        let pick = |rng: &mut Rng, from: &[NodeId]| from[rng.below(from.len() as u64) as usize];
        let healthy: Vec<NodeId> = cluster
            .ids
            .iter()
            .copied()
            .filter(|n| !faulty.contains(n))
            .collect();
        let action = rng.below(5);
        match action {
            0 | 1 if faulty.len() < 2 => {
                // Crash a node; half the time the leader.
                let among: BTreeSet<NodeId> = healthy.iter().copied().collect();
                let victim = match cluster.leader_among(&among).await {
                    Some(l) if rng.below(2) == 0 => l,
                    _ => pick(&mut rng, &healthy),
                };
                eprintln!("round {round}: kill {victim}");
                cluster.kill(victim);
            }
            2 if faulty.len() < 2 => {
                let victim = pick(&mut rng, &healthy);
                eprintln!("round {round}: partition {victim}");
                cluster.partition(victim);
            }
            _ => {
                let down: Vec<NodeId> = faulty.iter().copied().collect();
                if !down.is_empty() {
                    let n = pick(&mut rng, &down);
                    if cluster.is_running(n) {
                        eprintln!("round {round}: heal {n}");
                        cluster.heal(n);
                    } else {
                        eprintln!("round {round}: restart {n}");
                        cluster.spawn(n);
                    }
                }
            }
        }
        // Let the cluster work for a while, nudging it with a trigger.
        tokio::time::sleep(Duration::from_millis(200 + rng.below(400))).await;
        cluster.check_invariants().await;

        if round % 4 == 3 {
            cluster.heal_all();
            for n in cluster.ids.clone() {
                if !cluster.is_running(n) {
                    eprintln!("round {round}: restart {n}");
                    cluster.spawn(n);
                }
            }
            cluster.wait_leader(Duration::from_secs(10)).await;
            let all = cluster.running();
            let deadline = Instant::now() + Duration::from_secs(30);
            let agreed = loop {
                // Wait for one checkpoint triggered after the heal to
                // complete on all five nodes.
                let id = cluster.trigger(Duration::from_secs(10)).await;
                if cluster
                    .wait_finished(&all, id, Duration::from_secs(10))
                    .await
                {
                    break id;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no checkpoint completes after healing"
                );
            };
            let statuses = cluster.statuses().await;
            for (n, s) in &statuses {
                assert!(
                    s.ledger
                        .latest_completed()
                        .is_some_and(|c| c.id.0 >= agreed),
                    "round {round}: node {n} is behind checkpoint {agreed}"
                );
            }
            cluster.check_invariants().await;
            progress_checks += 1;
        }
    }
    assert!(progress_checks >= rounds / 4);
    let statuses = cluster.statuses().await;
    let total: u64 = statuses
        .values()
        .map(|s| s.ledger.completed_total())
        .max()
        .unwrap_or(0);
    eprintln!("randomized raft test: {total} checkpoints completed over {rounds} rounds");
    assert!(total > 0);
}
