//! Global checkpoints of several subtasks in one process
//! ([`LocalCoordinator`]): one consistent cut across subtasks, restores of
//! the newest completed cut only, rescaling between parallelisms, and
//! retention of the parts by completed checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use highwater::core::{KeyGroupRange, participant_scope};
use highwater::memory::MemoryBackend;
use highwater::{
    CheckpointId, CheckpointStore, ErrorKind, LocalCoordinator, StateManager, ValueState,
};
use highwater_testkit::SplitMix64;

use crate::common::{LocalStore, config, counter, manifest_ids, seeds};

const MAX_PARALLELISM: u16 = 128;

/// A job of `parallelism` subtasks over one shared store.
struct Job {
    coordinator: LocalCoordinator,
    subtasks: Vec<StateManager>,
    counters: Vec<ValueState<String, u64>>,
}

impl Job {
    fn start(store: &Arc<dyn CheckpointStore>, parallelism: u16) -> Job {
        let coordinator = LocalCoordinator::open(store.clone(), parallelism, None).unwrap();
        let subtasks: Vec<StateManager> = (0..parallelism)
            .map(|i| {
                StateManager::builder()
                    .backend(Arc::new(MemoryBackend::new()))
                    .store(store.clone())
                    .config(config(true, 4, 2))
                    .max_parallelism(MAX_PARALLELISM)
                    .cluster(coordinator.participant(i).unwrap(), parallelism, i)
                    .build()
                    .unwrap()
            })
            .collect();
        for s in &subtasks {
            s.restore_latest().unwrap();
        }
        let counters = subtasks.iter().map(counter).collect();
        Job {
            coordinator,
            subtasks,
            counters,
        }
    }

    fn parallelism(&self) -> u16 {
        self.subtasks.len() as u16
    }

    /// The subtask that owns `key`.
    fn owner(&self, key: &str) -> usize {
        let kg = self.subtasks[0]
            .keyed_state("counter")
            .unwrap()
            .key_group(&key.to_string())
            .unwrap();
        KeyGroupRange::subtask_for(MAX_PARALLELISM, self.parallelism(), kg).unwrap() as usize
    }

    fn add(&self, key: &str, by: u64) {
        let i = self.owner(key);
        let c = &self.counters[i];
        let k = key.to_string();
        let n = c.get(&k).unwrap().unwrap_or(0);
        c.update(&k, &(n + by)).unwrap();
        self.subtasks[i].commit().unwrap();
    }

    /// Triggers a checkpoint and lets `which` subtasks take their part at
    /// their next boundary (as their processing loops would), waiting for
    /// each part.
    fn checkpoint_by(&self, which: &[usize]) -> CheckpointId {
        self.coordinator.trigger();
        let mut id = None;
        for &i in which {
            let handle = self.subtasks[i]
                .maybe_checkpoint()
                .unwrap()
                .expect("a barrier is pending");
            id = Some(handle.wait().unwrap().id);
        }
        id.expect("at least one subtask")
    }

    fn checkpoint_all(&self) -> CheckpointId {
        let all: Vec<usize> = (0..self.subtasks.len()).collect();
        let id = self.checkpoint_by(&all);
        assert_eq!(self.coordinator.completed(1)[0].id, id);
        id
    }

    /// Checks every subtask holds exactly `model`'s keys it owns.
    fn check(&self, model: &BTreeMap<String, u64>, context: &str) {
        let mut owned = vec![0u64; self.subtasks.len()];
        for (k, v) in model {
            let i = self.owner(k);
            owned[i] += 1;
            assert_eq!(
                self.counters[i].get(k).unwrap(),
                Some(*v),
                "{context}: key {k} on subtask {i}"
            );
        }
        for (i, s) in self.subtasks.iter().enumerate() {
            assert_eq!(
                s.backend().stats().entries,
                owned[i],
                "{context}: subtask {i} holds keys it does not own"
            );
        }
    }
}

fn keys(rng: &mut SplitMix64) -> String {
    format!("k{}", rng.below(300))
}

#[test]
fn subtasks_resume_from_the_newest_complete_cut_at_any_parallelism() {
    for seed in seeds(&[1, 2, 3]) {
        let mut rng = SplitMix64::new(seed);
        let dir = LocalStore::new();
        let store = dir.dyn_store();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut at_cut = model.clone();
        let mut job = Job::start(&store, 4);
        for round in 0..12 {
            let context = format!(
                "seed {seed} round {round} parallelism {}",
                job.parallelism()
            );
            for _ in 0..200 {
                let k = keys(&mut rng);
                let by = 1 + rng.below(9);
                job.add(&k, by);
                *model.entry(k).or_default() += by;
            }
            match rng.below(4) {
                // A complete cut.
                0 | 1 => {
                    job.checkpoint_all();
                    at_cut = model.clone();
                }
                // A cut only some subtasks took their part of, then a
                // crash before the others reached a boundary: it never
                // completes, and no subtask restores it.
                2 => {
                    let n = job.subtasks.len();
                    let some: Vec<usize> = (0..n - 1).collect();
                    if !some.is_empty() {
                        let partial = job.checkpoint_by(&some);
                        assert_eq!(job.coordinator.pending(), Some(partial), "{context}");
                    }
                    let parallelism = 1 + rng.below(5) as u16;
                    drop(job);
                    job = Job::start(&store, parallelism);
                    model = at_cut.clone();
                    job.check(
                        &model,
                        &format!("{context}: after a partial cut, restarting at {parallelism}"),
                    );
                }
                // A crash, and a restart at another parallelism.
                _ => {
                    let parallelism = 1 + rng.below(5) as u16;
                    drop(job);
                    job = Job::start(&store, parallelism);
                    model = at_cut.clone();
                    job.check(
                        &model,
                        &format!("{context}: after restarting at {parallelism}"),
                    );
                }
            }
        }
        drop(job);
        let job = Job::start(&store, 3);
        job.check(&at_cut, &format!("seed {seed}: final restart"));
    }
}

#[test]
fn a_partial_cut_is_cleaned_up_and_parts_follow_completed_checkpoints() {
    let dir = LocalStore::new();
    let store = dir.dyn_store();
    let job = Job::start(&store, 2);
    let mut completed = Vec::new();
    for round in 0..4u64 {
        for k in 0..50 {
            job.add(&format!("k{k}"), round + 1);
        }
        completed.push(job.checkpoint_all());
    }
    // Subtask 0 takes its part of a checkpoint subtask 1 never reaches.
    job.add("k1", 100);
    let partial = job.checkpoint_by(&[0]);
    let scope0 = store.scoped(&participant_scope(0)).unwrap();
    let scope1 = store.scoped(&participant_scope(1)).unwrap();
    // Retention (max_retained 2) keeps the parts of the two newest
    // completed checkpoints, and the pending part.
    let newest_two = completed[completed.len() - 2..].to_vec();
    let mut with_partial = newest_two.clone();
    with_partial.push(partial);
    assert_eq!(manifest_ids(&*scope0), with_partial);
    assert_eq!(manifest_ids(&*scope1), newest_two);
    drop(job);
    // The restarted job restores the last complete cut and deletes the
    // partial part, whose checkpoint can no longer complete.
    let job = Job::start(&store, 2);
    assert_eq!(manifest_ids(&*scope0), newest_two);
    let k1 = job.counters[job.owner("k1")]
        .get(&"k1".to_string())
        .unwrap();
    assert_eq!(k1, Some(1 + 2 + 3 + 4));
    // The next checkpoint continues after the abandoned id.
    let next = job.checkpoint_all();
    assert!(next > partial, "{next} after {partial}");
}

#[test]
fn a_cluster_participant_refuses_local_checkpoints_and_restores() {
    let dir = LocalStore::new();
    let store = dir.dyn_store();
    let job = Job::start(&store, 2);
    let e = job.subtasks[0].checkpoint().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    let e = job.subtasks[0].restore_at(1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    // No barrier pending: nothing to take.
    assert!(job.subtasks[0].maybe_checkpoint().unwrap().is_none());
    // restore(id) takes a globally completed checkpoint only.
    job.add("a", 1);
    let first = job.checkpoint_all();
    job.add("a", 1);
    job.checkpoint_all();
    let owner = job.owner("a");
    job.subtasks[owner].restore(first).unwrap();
    assert_eq!(job.counters[owner].get(&"a".to_string()).unwrap(), Some(1));
    let e = job.subtasks[owner].restore(CheckpointId(999)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn a_bad_subtask_is_refused_at_build() {
    let dir = LocalStore::new();
    let coordinator = LocalCoordinator::open(dir.dyn_store(), 2, None).unwrap();
    let e = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(dir.dyn_store())
        .cluster(coordinator.participant(1).unwrap(), 2, 2)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(coordinator.participant(2).is_err());
}

/// The same semantics through the Raft ledger: three in-process nodes on
/// loopback, one state manager per node.
#[cfg(feature = "raft")]
mod raft {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use highwater::core::{CheckpointId, KeyGroupRange};
    use highwater::memory::MemoryBackend;
    use highwater::raft::{
        CheckpointCoordinator, ClusterSecret, DistributedConfig, NodeId, RaftParticipant,
    };
    use highwater::{CheckpointStore, StateManager};

    use super::MAX_PARALLELISM;
    use crate::common::{LocalStore, config, counter};

    fn node(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        id: NodeId,
        peers: &[(NodeId, String)],
    ) -> Arc<CheckpointCoordinator> {
        let data = dir.join(format!("node-{id}"));
        let secret = ClusterSecret::new(b"a cluster secret of the test").unwrap();
        let mut c =
            DistributedConfig::new(id, "127.0.0.1:0".parse().unwrap(), &data).secret(secret);
        c.peers = peers.iter().cloned().collect();
        c.join = !peers.is_empty();
        c.checkpoint_timeout = Duration::from_secs(30);
        start(rt, c)
    }

    /// Starts a node of `config`, its snapshots in its data directory.
    fn start(
        rt: &tokio::runtime::Runtime,
        config: DistributedConfig,
    ) -> Arc<CheckpointCoordinator> {
        let snapshots = Arc::new(
            highwater::cloud::ObjectCheckpointStore::local(config.data_dir.join("snapshots"))
                .unwrap(),
        );
        Arc::new(
            rt.block_on(CheckpointCoordinator::start(config, snapshots))
                .unwrap(),
        )
    }

    fn managers(
        rt: &tokio::runtime::Runtime,
        nodes: &[Arc<CheckpointCoordinator>],
        store: &Arc<dyn CheckpointStore>,
    ) -> Vec<StateManager> {
        let p = nodes.len() as u16;
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let m = StateManager::builder()
                    .backend(Arc::new(MemoryBackend::new()))
                    .store(store.clone())
                    .config(config(true, 4, 2))
                    .max_parallelism(MAX_PARALLELISM)
                    .cluster(
                        Arc::new(RaftParticipant::new(n.clone(), rt.handle().clone()).unwrap()),
                        p,
                        i as u16,
                    )
                    .build()
                    .unwrap();
                m.restore_latest().unwrap();
                m
            })
            .collect()
    }

    fn owner(m: &StateManager, key: &str, parallelism: u16) -> usize {
        let kg = m
            .keyed_state("counter")
            .unwrap()
            .key_group(&key.to_string())
            .unwrap();
        KeyGroupRange::subtask_for(MAX_PARALLELISM, parallelism, kg).unwrap() as usize
    }

    /// Every manager takes its part of the pending barrier at its next
    /// boundary, within a deadline (the trigger reaches followers through
    /// the log).
    fn take_parts(ms: &[StateManager]) {
        for m in ms {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(h) = m.maybe_checkpoint().unwrap() {
                    h.wait().unwrap();
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no barrier reached a participant"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Adds `by` to the counters of keys `k0`.. `k{keys - 1}`, each on the
    /// manager that owns it, and to `model`.
    fn add_to_counters(ms: &[StateManager], model: &mut BTreeMap<String, u64>, keys: u32, by: u64) {
        for k in 0..keys {
            let key = format!("k{k}");
            let c = counter(&ms[owner(&ms[0], &key, ms.len() as u16)]);
            let n = c.get(&key).unwrap().unwrap_or(0);
            c.update(&key, &(n + by)).unwrap();
            *model.entry(key).or_default() += by;
        }
    }

    /// Triggers a checkpoint on `leader`, has every manager take its part
    /// and waits until the leader has it completed, with a part of each.
    fn complete_checkpoint(
        rt: &tokio::runtime::Runtime,
        leader: &CheckpointCoordinator,
        ms: &[StateManager],
    ) -> CheckpointId {
        let id = rt.block_on(leader.trigger_checkpoint()).unwrap();
        take_parts(ms);
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader.latest_completed().map(|c| c.id) != Some(id) {
            assert!(
                Instant::now() < deadline,
                "checkpoint {id} did not complete"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let parts = leader.latest_completed().unwrap().manifests;
        assert_eq!(
            parts.len(),
            ms.len(),
            "every node acknowledged a part: {parts:?}"
        );
        id
    }

    #[test]
    fn nodes_checkpoint_one_cut_through_the_ledger_and_rescale_from_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let shared = LocalStore::new();
        let store = shared.dyn_store();
        let a = node(&rt, dir.path(), 1, &[]);
        rt.block_on(a.wait_for_leader(Duration::from_secs(10)))
            .unwrap();
        let mut nodes = vec![a.clone()];
        for id in [2, 3] {
            let n = node(&rt, dir.path(), id, &[(1, a.local_addr().to_string())]);
            rt.block_on(a.add_node(id, n.local_addr().to_string()))
                .unwrap();
            nodes.push(n);
        }
        let ms = managers(&rt, &nodes, &store);
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut at_cut = model.clone();
        for round in 0..4u64 {
            add_to_counters(&ms, &mut model, 120, round + 1);
            complete_checkpoint(&rt, &a, &ms);
            at_cut = model.clone();
        }
        // A cut two nodes took their part of and the third never did is
        // not restored.
        for k in 0..120 {
            let key = format!("k{k}");
            let i = owner(&ms[0], &key, 3);
            counter(&ms[i]).update(&key, &0).unwrap();
        }
        rt.block_on(a.trigger_checkpoint()).unwrap();
        take_parts(&ms[..2]);
        drop(ms);
        // Rescale to two nodes' managers: each gathers its key groups from
        // the three parts of the newest completed cut.
        let ms = managers(&rt, &nodes[..2], &store);
        let mut owned = [0u64; 2];
        for (k, v) in &at_cut {
            let i = owner(&ms[0], k, 2);
            owned[i] += 1;
            assert_eq!(counter(&ms[i]).get(k).unwrap(), Some(*v), "key {k}");
        }
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(m.backend().stats().entries, owned[i], "manager {i}");
        }
        drop(ms);
        for n in nodes {
            // A node some background work still holds is left to the end
            // of the process.
            if let Ok(n) = Arc::try_unwrap(n) {
                rt.block_on(n.shutdown()).unwrap();
            }
        }
    }

    /// A partitioned node of a cluster job (every voter takes part in every
    /// checkpoint): while it is cut off no checkpoint completes (a cut
    /// without its part is no cut of the job), it sees no barrier, and its
    /// restore fails as transient (its ledger view cannot be synced) rather
    /// than restore a stale cut; after healing, checkpoints complete again
    /// with every part and every node restores the same cut.
    #[test]
    fn a_partitioned_node_stalls_checkpoints_and_after_healing_all_restore_one_cut() {
        use highwater_testkit::net::Proxy;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new().dyn_store();
        let ids = [1u64, 2, 3];
        // (i, j): node i's link to node j, cut to partition either.
        let proxies: BTreeMap<(NodeId, NodeId), Proxy> = rt.block_on(async {
            let mut p = BTreeMap::new();
            for i in ids {
                for j in ids.iter().copied().filter(|&j| j != i) {
                    p.insert((i, j), Proxy::start().await);
                }
            }
            p
        });
        let nodes: Vec<Arc<CheckpointCoordinator>> = ids
            .iter()
            .map(|&i| {
                let data = dir.path().join(format!("node-{i}"));
                let secret = ClusterSecret::new(b"a cluster secret of the test").unwrap();
                let mut c =
                    DistributedConfig::new(i, "127.0.0.1:0".parse().unwrap(), &data).secret(secret);
                c.peers = proxies
                    .iter()
                    .filter(|((from, _), _)| *from == i)
                    .map(|((_, to), p)| (*to, p.addr.to_string()))
                    .collect();
                c.checkpoint_timeout = Duration::from_secs(2);
                start(&rt, c)
            })
            .collect();
        for ((_, to), p) in &proxies {
            p.set_target(nodes[(*to - 1) as usize].local_addr());
        }
        let cut = |node: NodeId, cut: bool| {
            for ((from, to), p) in &proxies {
                if *from == node || *to == node {
                    p.set_cut(cut);
                }
            }
        };
        let leader = rt
            .block_on(nodes[0].wait_for_leader(Duration::from_secs(10)))
            .unwrap();
        let ms = managers(&rt, &nodes, &store);
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let lead = |id: NodeId| nodes[(id - 1) as usize].clone();
        add_to_counters(&ms, &mut model, 90, 1);
        let first = complete_checkpoint(&rt, &lead(leader), &ms);

        // Cut a follower off; the other two keep a leader.
        let p = ids.iter().copied().find(|&i| i != leader).unwrap();
        cut(p, true);
        add_to_counters(&ms, &mut model, 90, 2);
        let majority: Vec<NodeId> = ids.iter().copied().filter(|&i| i != p).collect();
        let stalled = rt.block_on(lead(leader).trigger_checkpoint()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            for &i in &majority {
                if let Some(h) = ms[(i - 1) as usize].maybe_checkpoint().unwrap() {
                    h.wait().unwrap();
                }
            }
            assert!(
                ms[(p - 1) as usize].maybe_checkpoint().unwrap().is_none(),
                "the cut-off node saw no barrier"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for &i in &majority {
            assert_eq!(
                lead(i).latest_completed().map(|c| c.id),
                Some(first),
                "node {i}: nothing completes without the cut-off node's part (checkpoint {stalled})"
            );
        }
        let err = ms[(p - 1) as usize].restore_latest().unwrap_err();
        assert!(err.is_transient(), "{err}");

        // Healed: a checkpoint completes again, with every part. (The
        // cut-off node may have raised the term meanwhile: a trigger
        // accepted by a leader about to step down is retried on the next.)
        cut(p, false);
        let deadline = Instant::now() + Duration::from_secs(20);
        let healed = 'healed: loop {
            assert!(
                Instant::now() < deadline,
                "no checkpoint completed after healing"
            );
            let Some(l) = nodes
                .iter()
                .find(|n| n.cluster_health().leader == Some(n.node_id()))
            else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let Ok(id) = rt.block_on(l.trigger_checkpoint()) else {
                continue;
            };
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                for m in &ms {
                    if let Some(h) = m.maybe_checkpoint().unwrap() {
                        h.wait().unwrap();
                    }
                }
                if let Some(c) = l.latest_completed().filter(|c| c.id >= id) {
                    assert_eq!(c.manifests.len(), 3, "every part: {c:?}");
                    break 'healed c.id;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        assert!(healed > stalled);
        drop(ms);
        let ms = managers(&rt, &nodes, &store);
        for (k, v) in &model {
            let i = owner(&ms[0], k, 3);
            assert_eq!(counter(&ms[i]).get(k).unwrap(), Some(*v), "key {k}");
        }
        drop(ms);
        for n in nodes {
            if let Ok(n) = Arc::try_unwrap(n) {
                rt.block_on(n.shutdown()).unwrap();
            }
        }
    }
}

/// What a [`Hooked`] coordinator does at the first acknowledgement, before
/// (or instead of, on an error) passing it on.
type FirstAck = fn(&dyn highwater::Coordinator, CheckpointId) -> highwater::Result<()>;

/// A participant's coordinator with faults: `first_ack` runs at the first
/// acknowledgement (abort the checkpoint just before it arrives, as a lost
/// participant or a timeout would while the part was uploading; or fail as
/// an unreachable coordinator); `without_part` leaves that participant's
/// part out of the newest completed checkpoint (as a ledger that went on
/// without an unreachable node would report it).
#[derive(Debug)]
struct Hooked {
    inner: Arc<dyn highwater::Coordinator>,
    first_ack: Option<FirstAck>,
    armed: std::sync::atomic::AtomicBool,
    without_part: Option<highwater::ParticipantId>,
}

impl Hooked {
    fn new(inner: Arc<dyn highwater::Coordinator>) -> Hooked {
        Hooked {
            inner,
            first_ack: None,
            armed: true.into(),
            without_part: None,
        }
    }
}

impl highwater::Coordinator for Hooked {
    fn participant(&self) -> highwater::ParticipantId {
        self.inner.participant()
    }
    fn next_barrier(&self, after: Option<CheckpointId>) -> highwater::Result<Option<CheckpointId>> {
        self.inner.next_barrier(after)
    }
    fn acknowledge(&self, c: CheckpointId, part: &highwater::PartRef) -> highwater::Result<()> {
        if let Some(hook) = self.first_ack
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            hook(&*self.inner, c)?;
        }
        self.inner.acknowledge(c, part)
    }
    fn decline(&self, c: CheckpointId, why: &str) -> highwater::Result<()> {
        self.inner.decline(c, why)
    }
    fn completed(&self, limit: usize) -> highwater::Result<Vec<highwater::GlobalCheckpoint>> {
        let mut out = self.inner.completed(limit)?;
        if let (Some(p), Some(newest)) = (self.without_part, out.first_mut()) {
            newest.parts.remove(&p);
        }
        Ok(out)
    }
    fn status(&self, c: CheckpointId) -> highwater::Result<highwater::GlobalStatus> {
        self.inner.status(c)
    }
}

/// Regression (found by the cluster demo's kill test): a part whose
/// global checkpoint was aborted before its acknowledgement failed the
/// participant's checkpoint handle, and the node stopped.
#[test]
fn a_checkpoint_aborted_before_its_acknowledgement_is_not_a_failure_of_the_part() {
    let dir = LocalStore::new();
    let store = dir.dyn_store();
    let coordinator = LocalCoordinator::open(store.clone(), 1, None).unwrap();
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .config(config(true, 4, 1))
        .cluster(
            Arc::new(Hooked {
                first_ack: Some(|inner, c| inner.decline(c, "aborted by the test")),
                ..Hooked::new(coordinator.participant(0).unwrap())
            }),
            1,
            0,
        )
        .build()
        .unwrap();
    counter(&m).update(&"a".to_string(), &1).unwrap();
    coordinator.trigger();
    let first = m.maybe_checkpoint().unwrap().expect("a barrier");
    let aborted = first.id();
    first.wait().expect("the part itself committed");
    assert!(coordinator.completed(1).is_empty());
    assert_eq!(coordinator.pending(), None);
    // The next checkpoint completes, and retention removes the aborted part.
    coordinator.trigger();
    let second = m
        .maybe_checkpoint()
        .unwrap()
        .expect("a barrier")
        .wait()
        .unwrap();
    assert_eq!(coordinator.completed(1)[0].id, second.id);
    let own = store.scoped(&participant_scope(0)).unwrap();
    assert_eq!(
        manifest_ids(&*own),
        vec![second.id],
        "part {aborted} was not removed"
    );
}

/// Regression (found by the cluster demo's node kills): an acknowledgement
/// that got no answer (a transient error) stopped the node; the part is
/// left unacknowledged (its checkpoint never completes) and the
/// participant goes on: the next checkpoint completes, builds on the
/// unacknowledged part, and restores.
#[test]
fn an_unreachable_coordinator_at_acknowledgement_is_not_a_failure_of_the_part() {
    let dir = LocalStore::new();
    let store = dir.dyn_store();
    let coordinator = LocalCoordinator::open(store.clone(), 1, None).unwrap();
    let build = |c: Arc<dyn highwater::Coordinator>| {
        StateManager::builder()
            .backend(Arc::new(MemoryBackend::new()))
            .store(store.clone())
            .config(config(true, 4, 2))
            .max_parallelism(MAX_PARALLELISM)
            .cluster(c, 1, 0)
            .build()
            .unwrap()
    };
    let m = build(Arc::new(Hooked {
        first_ack: Some(|_, c| {
            Err(highwater::Error::consensus(
                ErrorKind::Unavailable,
                format!("acknowledge checkpoint {c}"),
                "no answer from a majority",
            ))
        }),
        ..Hooked::new(coordinator.participant(0).unwrap())
    }));
    let c = counter(&m);
    let take = |n: u64| {
        c.update(&"k".to_string(), &n).unwrap();
        coordinator.trigger();
        let h = m.maybe_checkpoint().unwrap().expect("a barrier is pending");
        h.wait().unwrap().id
    };
    let first = take(1);
    assert!(
        coordinator.completed(1).is_empty(),
        "the unacknowledged part completed nothing"
    );
    // The coordinator gives up on it (a Raft leader aborts it at its
    // timeout).
    coordinator
        .participant(0)
        .unwrap()
        .decline(first, "timed out")
        .unwrap();
    let second = take(2);
    assert_eq!(coordinator.completed(1)[0].id, second);
    assert!(second > first);
    drop(c);
    drop(m);
    let m = build(coordinator.participant(0).unwrap());
    m.restore_latest().unwrap();
    assert_eq!(counter(&m).get(&"k".to_string()).unwrap(), Some(2));
}

/// Regression (found by the cluster demo's kill test): a global checkpoint
/// completed without one subtask's part restored that subtask's key groups
/// empty on a rescale. It is refused with a typed error naming the
/// checkpoint, and nothing is loaded.
#[test]
fn a_cut_without_some_subtasks_part_is_refused_not_restored_empty() {
    let dir = LocalStore::new();
    let store = dir.dyn_store();
    let job = Job::start(&store, 2);
    for k in 0..60 {
        job.add(&format!("k{k}"), 1);
    }
    let id = job.checkpoint_all();
    drop(job);
    // One subtask (a rescale 2 → 1) reads every part of the cut.
    let coordinator = LocalCoordinator::open(store.clone(), 1, None).unwrap();
    let manager = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .config(config(true, 4, 2))
        .max_parallelism(MAX_PARALLELISM)
        .cluster(
            Arc::new(Hooked {
                without_part: Some(1),
                ..Hooked::new(coordinator.participant(0).unwrap())
            }),
            1,
            0,
        )
        .build()
        .unwrap();
    let e = manager.restore_latest().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corruption, "{e}");
    assert!(e.to_string().contains(&id.to_string()), "{e}");
    assert_eq!(manager.backend().stats().entries, 0, "nothing was loaded");
}
