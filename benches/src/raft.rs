//! Suite `raft`: distributed checkpoint coordination (`highwater-raft`),
//! three coordinator nodes in this process talking TCP on 127.0.0.1, each
//! with its Raft log durable on its own WAL (fdatasync per group) in a
//! directory under the output directory (the disk of the target dir).
//!
//! Metrics:
//!
//! - `raft_commit_latency_p50`, `raft_commit_latency_p99`: milliseconds
//!   from `trigger_checkpoint` on the leader to the leader applying the
//!   checkpoint's completion, every node acknowledging its barrier as soon
//!   as it applies the trigger (one `Trigger`, three `Ack`s forwarded to the
//!   leader, one `Complete`: five replicated entries and the followers'
//!   commit notifications in between). Baseline: openraft's own
//!   `client_write` of one entry (a ledger no-op, rejected by the state
//!   machine) on the same cluster, alternating with the checkpoints, same
//!   percentile.
//! - `raft_commit_latency_all_p50`: the same, until every node has applied
//!   the completion.
//! - `raft_failover_ms`: median milliseconds from stopping the leader of a
//!   fresh cluster (its tasks and connections end at once, as in a crash)
//!   until both survivors report the same new leader. No baseline: the
//!   configured election timeout (drawn from [300, 600) ms) is given in the
//!   params for comparison.
//! - `cluster_checkpoint_ms`: median milliseconds from the leader's trigger
//!   to the global completion of a checkpoint of a cluster job: three
//!   memory-backend `StateManager`s (one per node, `cluster` through
//!   `RaftParticipant`), each holding `state_mb` of state, each taking its
//!   part (a full checkpoint) at its next event boundary into its scope of
//!   one fsync'd local-directory store. Baseline: one manager
//!   checkpointing the same amount of state into the same kind of store,
//!   alternating with the cluster's rounds.
//! - `cluster_restore_ms`: median milliseconds for the three managers to
//!   restore the newest global checkpoint at once (each its own part).
//!   Baseline: one manager restoring one node's part.
//!
//! The three nodes share this machine's cores, so a cluster round does
//! three nodes' CPU work where the baseline does one's. The params record
//! the CPU seconds of both (`cluster_*_cpu_s`, `single_*_cpu_s`, medians)
//! and the floor that follows: `*_floor_ratio` = cluster CPU seconds /
//! cores / the baseline's wall time, the best ratio co-located nodes can
//! reach (on one machine per node the floor is 1×).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::CheckpointId;
use highwater_raft::{
    AbortReason, CheckpointCoordinator, ClusterSecret, Command, DistributedConfig, LedgerEvent,
    ManifestRef, NodeId,
};
use serde_json::{Map, json};

use crate::util::{median, percentile};
use crate::{Ctx, Metric, Result, SuiteResult};

const ELECTION_MS: u64 = 300;

struct Plan {
    quick: bool,
    checkpoints: usize,
    failovers: usize,
}

fn free_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<_>>()?)
}

/// Starts a 3-node cluster whose nodes acknowledge every barrier at once.
async fn start_cluster(dir: &std::path::Path) -> Result<Vec<Arc<CheckpointCoordinator>>> {
    start_cluster_acking(dir, true).await
}

/// Starts a 3-node cluster; with `ack`, its nodes acknowledge every barrier
/// at once (otherwise their state managers do).
async fn start_cluster_acking(
    dir: &std::path::Path,
    ack: bool,
) -> Result<Vec<Arc<CheckpointCoordinator>>> {
    let addrs = free_ports(3)?;
    let peers: BTreeMap<NodeId, String> = (1..=3u64)
        .zip(&addrs)
        .map(|(id, a)| (id, a.to_string()))
        .collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let data = dir.join(format!("node-{id}"));
        let mut config = DistributedConfig::new(id, *addr, &data).secret(ClusterSecret::new(
            b"highwater benchmark cluster secret".to_vec(),
        )?);
        config.peers = peers.clone();
        config.election_timeout = Duration::from_millis(ELECTION_MS);
        config.heartbeat_interval = Duration::from_millis(50);
        let store = Arc::new(ObjectCheckpointStore::local(data.join("snapshots"))?);
        let node = Arc::new(CheckpointCoordinator::start(config, store).await?);
        if !ack {
            nodes.push(node);
            continue;
        }
        let mut events = node.events();
        let acker = node.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let LedgerEvent::Barrier { checkpoint, .. } = e {
                    let a = acker.clone();
                    tokio::spawn(async move {
                        let m = ManifestRef(format!("node-{id}/checkpoint-{}", checkpoint.0));
                        let _ = a.report_completion(checkpoint, id, m).await;
                    });
                }
            }
        });
        nodes.push(node);
    }
    Ok(nodes)
}

async fn leader_of(nodes: &[Arc<CheckpointCoordinator>], not: Option<NodeId>) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<Option<NodeId>> = nodes.iter().map(|n| n.cluster_health().leader).collect();
        if let Some(Some(l)) = views.first().copied()
            && Some(l) != not
            && views.iter().all(|v| *v == Some(l))
            && let Some(i) = nodes.iter().position(|n| n.node_id() == l)
        {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err(format!("no agreed leader: {views:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_completed(node: &CheckpointCoordinator, id: CheckpointId) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rx = node.raft().metrics();
    loop {
        if node.latest_completed().is_some_and(|c| c.id >= id) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("checkpoint {} did not complete", id.0).into());
        }
        let _ = tokio::time::timeout(Duration::from_millis(5), rx.changed()).await;
    }
}

async fn commit_latency(plan: &Plan, dir: &std::path::Path, metrics: &mut Vec<Metric>) -> Result {
    let nodes = start_cluster(dir).await?;
    let li = leader_of(&nodes, None).await?;
    let leader = nodes[li].clone();
    let mut ckpt = Vec::new();
    let mut all = Vec::new();
    let mut raw = Vec::new();
    // Warm up connections.
    for _ in 0..3 {
        let id = leader.trigger_checkpoint().await?;
        wait_completed(&leader, id).await?;
    }
    for _ in 0..plan.checkpoints {
        let start = Instant::now();
        let id = leader.trigger_checkpoint().await?;
        let mut events = leader.events();
        loop {
            if leader.latest_completed().is_some_and(|c| c.id >= id) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
                Ok(Ok(LedgerEvent::Completed { checkpoint, .. })) if checkpoint >= id => break,
                Ok(_) => {}
                Err(_) => return Err("checkpoint did not complete in 20 s".into()),
            }
        }
        ckpt.push(start.elapsed().as_micros() as u64);
        for n in &nodes {
            wait_completed(n, id).await?;
        }
        all.push(start.elapsed().as_micros() as u64);

        let start = Instant::now();
        let noop = Command::Abort {
            checkpoint: CheckpointId(u64::MAX),
            reason: AbortReason::Requested("benchmark baseline".into()),
        };
        leader.raft().client_write(noop).await?;
        raw.push(start.elapsed().as_micros() as u64);
    }
    ckpt.sort_unstable();
    all.sort_unstable();
    raw.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let base = "openraft client_write of one entry";
    metrics.push(Metric::versus(
        "raft_commit_latency_p50",
        ms(percentile(&ckpt, 50.0)),
        "ms",
        base,
        ms(percentile(&raw, 50.0)),
        false,
    ));
    metrics.push(Metric::versus(
        "raft_commit_latency_p99",
        ms(percentile(&ckpt, 99.0)),
        "ms",
        base,
        ms(percentile(&raw, 99.0)),
        false,
    ));
    metrics.push(Metric::versus(
        "raft_commit_latency_all_p50",
        ms(percentile(&all, 50.0)),
        "ms",
        base,
        ms(percentile(&raw, 50.0)),
        false,
    ));
    for n in nodes {
        if let Ok(n) = Arc::try_unwrap(n) {
            n.shutdown().await?;
        }
    }
    Ok(())
}

async fn failover(plan: &Plan, dir: &std::path::Path, metrics: &mut Vec<Metric>) -> Result {
    let mut samples = Vec::new();
    for round in 0..plan.failovers {
        let mut nodes = start_cluster(&dir.join(format!("failover-{round}"))).await?;
        let li = leader_of(&nodes, None).await?;
        let old = nodes[li].node_id();
        let id = nodes[li].trigger_checkpoint().await?;
        wait_completed(&nodes[li], id).await?;
        let victim = nodes.remove(li);
        let start = Instant::now();
        // Stopping the Raft core ends its tasks and closes its connections:
        // the survivors see what they would see after a crash.
        victim.raft().shutdown().await?;
        leader_of(&nodes, Some(old)).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(victim);
        for n in nodes {
            n.raft().shutdown().await?;
        }
    }
    metrics.push(Metric::plain(
        "raft_failover_ms",
        median(&samples),
        "ms",
        false,
    ));
    Ok(())
}

/// Fills `m` with about `mb` MB of 150-byte values.
fn fill(m: &highwater::StateManager, mb: usize, salt: u64) -> Result {
    let s = m
        .keyed_state("bench")?
        .value_state::<u64, Vec<u8>>(&highwater::ValueStateDescriptor::new("v"))?;
    let n = mb * 1_000_000 / 170;
    for i in 0..n as u64 {
        let mut v = vec![0u8; 150];
        v[..8].copy_from_slice(&(i ^ salt).to_le_bytes());
        s.update(&(i * 4 + salt), &v)?;
    }
    Ok(())
}

fn cluster_manager(
    store: &Arc<dyn highwater::CheckpointStore>,
    node: &Arc<CheckpointCoordinator>,
    io: &tokio::runtime::Handle,
    subtask: u16,
) -> Result<highwater::StateManager> {
    Ok(highwater::StateManager::builder()
        .backend(Arc::new(highwater::memory::MemoryBackend::new()))
        .store(store.clone())
        .incremental(false)
        .cluster(
            Arc::new(highwater_raft::RaftParticipant::new(
                node.clone(),
                io.clone(),
            )?),
            3,
            subtask,
        )
        .build()?)
}

/// Every manager takes its part of the pending barrier (on its own
/// thread, as its processing loop would) and waits for it.
fn take_parts(ms: &[highwater::StateManager]) -> Result {
    std::thread::scope(|s| {
        let parts: Vec<_> = ms
            .iter()
            .map(|m| {
                s.spawn(move || -> Result {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        if let Some(h) = m.maybe_checkpoint()? {
                            h.wait()?;
                            return Ok(());
                        }
                        if Instant::now() > deadline {
                            return Err("no barrier reached a participant".into());
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        parts
            .into_iter()
            .try_for_each(|p| p.join().map_err(|_| "a participant panicked")?)
    })
}

/// `cluster_checkpoint_ms` and `cluster_restore_ms` (see the module docs).
fn cluster_job(
    plan: &Plan,
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    metrics: &mut Vec<Metric>,
    params: &mut Map<String, serde_json::Value>,
) -> Result {
    use crate::util::CpuReading;
    // CPU seconds of this process while `f` runs (0 without /proc).
    fn cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let before = CpuReading::now();
        let out = f()?;
        let used = CpuReading::now()
            .zip(before)
            .and_then(|(a, b)| a.own_seconds_since(&b))
            .unwrap_or(0.0);
        Ok((out, used))
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Records the CPU figures of one metric and its co-located floor.
    let mut floor = |name: &str, cluster_cpu: &[f64], single_cpu: &[f64], single_ms: f64| {
        let (c, s) = (median(cluster_cpu), median(single_cpu));
        params.insert(format!("cluster_{name}_cpu_s"), json!(c));
        params.insert(format!("single_{name}_cpu_s"), json!(s));
        if single_ms > 0.0 {
            params.insert(
                format!("cluster_{name}_floor_ratio"),
                json!(c / cores * 1000.0 / single_ms),
            );
        }
    };
    let mb = if plan.quick { 10 } else { 100 };
    let rounds = if plan.quick { 3 } else { 7 };
    let nodes = runtime.block_on(start_cluster_acking(&dir.join("cluster-raft"), false))?;
    let li = runtime.block_on(leader_of(&nodes, None))?;
    let leader = nodes[li].clone();
    let shared: Arc<dyn highwater::CheckpointStore> =
        Arc::new(ObjectCheckpointStore::local(dir.join("cluster-store"))?);
    let io = runtime.handle();
    let ms: Vec<highwater::StateManager> = (0..3u16)
        .map(|i| cluster_manager(&shared, &nodes[i as usize], io, i))
        .collect::<Result<_>>()?;
    for (i, m) in ms.iter().enumerate() {
        fill(m, mb, i as u64)?;
    }
    let single = highwater::StateManager::builder()
        .backend(Arc::new(highwater::memory::MemoryBackend::new()))
        .store(Arc::new(ObjectCheckpointStore::local(
            dir.join("single-store"),
        )?))
        .incremental(false)
        .build()?;
    fill(&single, mb, 0)?;
    let (mut cluster, mut one) = (Vec::new(), Vec::new());
    let (mut cluster_cpu, mut one_cpu) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds {
        let start = Instant::now();
        let (id, used) = cpu(|| {
            let id = runtime.block_on(leader.trigger_checkpoint())?;
            take_parts(&ms)?;
            runtime.block_on(wait_completed(&leader, id))?;
            Ok(id)
        })?;
        cluster.push(start.elapsed().as_secs_f64() * 1000.0);
        cluster_cpu.push(used);
        last = Some(id);
        let start = Instant::now();
        let ((), used) = cpu(|| {
            single.checkpoint()?.wait()?;
            Ok(())
        })?;
        one.push(start.elapsed().as_secs_f64() * 1000.0);
        one_cpu.push(used);
    }
    floor("checkpoint", &cluster_cpu, &one_cpu, median(&one));
    metrics.push(Metric::versus(
        "cluster_checkpoint_ms",
        median(&cluster),
        "ms",
        "one manager checkpointing one node's state",
        median(&one),
        false,
    ));
    let last = last.ok_or("no round")?;
    drop(ms);
    let (mut cluster, mut one) = (Vec::new(), Vec::new());
    let (mut cluster_cpu, mut one_cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let fresh: Vec<highwater::StateManager> = (0..3u16)
            .map(|i| cluster_manager(&shared, &nodes[i as usize], io, i))
            .collect::<Result<_>>()?;
        let start = Instant::now();
        let ((), used) = cpu(|| {
            std::thread::scope(|s| {
                let r: Vec<_> = fresh
                    .iter()
                    .map(|m| s.spawn(move || m.restore_latest()))
                    .collect();
                r.into_iter().try_for_each(|h| {
                    h.join()
                        .map_err(|_| "a restore panicked")?
                        .map(drop)
                        .map_err(Into::into)
                })
            })
            .map_err(|e: Box<dyn std::error::Error>| e.to_string().into())
        })?;
        cluster.push(start.elapsed().as_secs_f64() * 1000.0);
        cluster_cpu.push(used);
        // One node's part restored alone, from its scope.
        let part = highwater::StateManager::builder()
            .backend(Arc::new(highwater::memory::MemoryBackend::new()))
            .store(shared.scoped(&highwater::core::participant_scope(nodes[0].node_id()))?)
            .build()?;
        let start = Instant::now();
        let ((), used) = cpu(|| {
            part.restore(last)?;
            Ok(())
        })?;
        one.push(start.elapsed().as_secs_f64() * 1000.0);
        one_cpu.push(used);
    }
    floor("restore", &cluster_cpu, &one_cpu, median(&one));
    metrics.push(Metric::versus(
        "cluster_restore_ms",
        median(&cluster),
        "ms",
        "one manager restoring one node's part",
        median(&one),
        false,
    ));
    for n in nodes {
        if let Ok(n) = Arc::try_unwrap(n) {
            runtime.block_on(n.shutdown())?;
        }
    }
    Ok(())
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan {
        quick: ctx.quick,
        checkpoints: if ctx.quick { 20 } else { 300 },
        failovers: if ctx.quick { 2 } else { 10 },
    };
    let dir = tempfile::tempdir_in(&ctx.out)?;
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert("nodes".into(), json!(3));
    params.insert("checkpoints".into(), json!(plan.checkpoints));
    params.insert("failovers".into(), json!(plan.failovers));
    params.insert(
        "election_timeout_ms".into(),
        json!([ELECTION_MS, 2 * ELECTION_MS]),
    );
    params.insert("heartbeat_ms".into(), json!(50));
    if let Some(load) = crate::util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let mut metrics = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(commit_latency(&plan, dir.path(), &mut metrics))?;
    runtime.block_on(failover(&plan, dir.path(), &mut metrics))?;
    cluster_job(&plan, &runtime, dir.path(), &mut metrics, &mut params)?;
    drop(runtime);
    Ok(SuiteResult {
        suite: "raft".into(),
        params,
        metrics,
    })
}
