//! The test cluster: node processes, fault-injecting proxies, invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use highwater_raft::{
    CheckpointState, ClusterSecret, NodeId, NodeStatus, query_status, request_checkpoint,
};

/// The secret of every test cluster (the nodes read it from a file).
pub const SECRET: &[u8] = b"highwater raft test cluster secret";

/// [`SECRET`] as a [`ClusterSecret`].
pub fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET).unwrap()
}
pub use highwater_testkit::net::Proxy;

/// Timing of a test cluster, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub election_ms: u64,
    pub heartbeat_ms: u64,
    pub checkpoint_timeout_ms: u64,
    pub ack_delay_ms: u64,
    pub interval_ms: Option<u64>,
    /// Nodes spawned from now on exit with this code where, as the leader,
    /// they would propose a `Complete`.
    pub exit_before_complete: Option<i32>,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            election_ms: 300,
            heartbeat_ms: 50,
            checkpoint_timeout_ms: 2000,
            ack_delay_ms: 0,
            interval_ms: None,
            exit_before_complete: None,
        }
    }
}

/// One line a node printed, with the node and process generation.
#[derive(Clone, Debug)]
pub struct Line {
    pub node: NodeId,
    pub text: String,
}

pub struct Cluster {
    pub ids: Vec<NodeId>,
    pub timing: Timing,
    dir: tempfile::TempDir,
    proxies: BTreeMap<(NodeId, NodeId), Proxy>,
    children: BTreeMap<NodeId, Child>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub lines: Arc<Mutex<Vec<Line>>>,
    partitioned: BTreeSet<NodeId>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    pub async fn start(n: u64, timing: Timing) -> Cluster {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut proxies = BTreeMap::new();
        for &a in &ids {
            for &b in &ids {
                if a != b {
                    proxies.insert((a, b), Proxy::start().await);
                }
            }
        }
        let mut c = Cluster {
            ids: ids.clone(),
            timing,
            dir: tempfile::tempdir().unwrap(),
            proxies,
            children: BTreeMap::new(),
            addrs: BTreeMap::new(),
            lines: Arc::new(Mutex::new(Vec::new())),
            partitioned: BTreeSet::new(),
        };
        for id in ids {
            c.spawn(id);
        }
        c
    }

    pub fn running(&self) -> BTreeSet<NodeId> {
        self.children.keys().copied().collect()
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.children.contains_key(&id)
    }

    /// The file the nodes read the cluster secret from (written on first
    /// use).
    fn secret_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("secret");
        if !path.exists() {
            std::fs::write(&path, SECRET).unwrap();
        }
        path
    }

    /// Starts node `id` (again) on its data directory.
    pub fn spawn(&mut self, id: NodeId) {
        assert!(!self.children.contains_key(&id), "node {id} already runs");
        let peers: Vec<String> = self
            .ids
            .iter()
            .filter(|&&p| p != id)
            .map(|&p| format!("{p}={}", self.proxies[&(id, p)].addr))
            .collect();
        let t = self.timing;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_highwater-raft-node"));
        cmd.args(["--id", &id.to_string(), "--listen", "127.0.0.1:0"])
            .arg("--secret-file")
            .arg(self.secret_file())
            .args(["--peers", &peers.join(",")])
            .arg("--data")
            .arg(self.dir.path().join(format!("node-{id}")))
            .args(["--election-ms", &t.election_ms.to_string()])
            .args(["--heartbeat-ms", &t.heartbeat_ms.to_string()])
            .args([
                "--checkpoint-timeout-ms",
                &t.checkpoint_timeout_ms.to_string(),
            ])
            .args(["--ack-delay-ms", &t.ack_delay_ms.to_string()]);
        if let Some(i) = t.interval_ms {
            cmd.args(["--interval-ms", &i.to_string()]);
        }
        if let Some(code) = t.exit_before_complete {
            cmd.args(["--exit-before-complete", &code.to_string()]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn highwater-raft-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                    continue;
                }
                lines.lock().unwrap().push(Line {
                    node: id,
                    text: line,
                });
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("node {id} did not start listening"));
        self.addrs.insert(id, addr);
        for &p in &self.ids {
            if p != id {
                self.proxies[&(p, id)].set_target(addr);
            }
        }
        self.children.insert(id, child);
    }

    /// The nodes whose processes exited by themselves since the last call,
    /// with their exit codes; they no longer count as running.
    pub fn reap(&mut self) -> Vec<(NodeId, Option<i32>)> {
        let exited: Vec<(NodeId, Option<i32>)> = self
            .children
            .iter_mut()
            .filter_map(|(&id, c)| c.try_wait().unwrap().map(|s| (id, s.code())))
            .collect();
        for (id, _) in &exited {
            self.children.remove(id);
        }
        exited
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: NodeId) {
        let mut child = self.children.remove(&id).expect("node runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Cuts every connection to and from `id` (in both directions).
    pub fn partition(&mut self, id: NodeId) {
        self.set_cut(id, true);
        self.partitioned.insert(id);
    }

    pub fn heal(&mut self, id: NodeId) {
        self.set_cut(id, false);
        self.partitioned.remove(&id);
    }

    pub fn heal_all(&mut self) {
        for id in self.partitioned.clone() {
            self.heal(id);
        }
    }

    pub fn partitioned(&self) -> BTreeSet<NodeId> {
        self.partitioned.clone()
    }

    fn set_cut(&self, id: NodeId, cut: bool) {
        for (&(a, b), p) in &self.proxies {
            if a == id || b == id {
                p.set_cut(cut);
            }
        }
    }

    pub async fn status(&self, id: NodeId) -> Option<NodeStatus> {
        let addr = self.addrs.get(&id)?;
        if !self.is_running(id) {
            return None;
        }
        query_status(*addr, &secret(), Duration::from_secs(1))
            .await
            .ok()
    }

    pub async fn statuses(&self) -> BTreeMap<NodeId, NodeStatus> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            if let Some(s) = self.status(id).await {
                out.insert(id, s);
            }
        }
        out
    }

    /// A leader that a majority of `among` agree on and that says it leads.
    pub async fn leader_among(&self, among: &BTreeSet<NodeId>) -> Option<NodeId> {
        let statuses = self.statuses().await;
        let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (id, s) in &statuses {
            if among.contains(id)
                && let Some(l) = s.health.leader
            {
                *votes.entry(l).or_default() += 1;
            }
        }
        let majority = self.ids.len() / 2 + 1;
        let (&leader, &n) = votes.iter().max_by_key(|(_, n)| **n)?;
        let says = statuses
            .get(&leader)
            .map(|s| s.health.role == "Leader")
            .unwrap_or(false);
        (n >= majority && says && among.contains(&leader)).then_some(leader)
    }

    /// Waits for a leader among the running, unpartitioned nodes.
    pub async fn wait_leader(&self, timeout: Duration) -> NodeId {
        let among: BTreeSet<NodeId> = self
            .running()
            .difference(&self.partitioned)
            .copied()
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader_among(&among).await {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers a checkpoint on the current leader, retrying through
    /// elections until `timeout`.
    pub async fn trigger(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.wait_leader(timeout).await;
            if let Ok(id) =
                request_checkpoint(self.addrs[&l], &secret(), Duration::from_secs(2)).await
            {
                return id.0;
            }
            assert!(
                Instant::now() < deadline,
                "could not trigger within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node in `nodes` has applied checkpoint `id` as
    /// finished; returns whether it completed (the same on all, checked).
    pub async fn wait_finished(
        &self,
        nodes: &BTreeSet<NodeId>,
        id: u64,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let states: Vec<Option<CheckpointState>> = nodes
                .iter()
                .map(|n| {
                    statuses.get(n).and_then(|s| {
                        s.ledger
                            .get(highwater_core::CheckpointId(id))
                            .map(|r| r.state.clone())
                    })
                })
                .collect();
            if states
                .iter()
                .all(|s| matches!(s, Some(st) if *st != CheckpointState::Pending))
            {
                let first = states[0].clone();
                assert!(
                    states.iter().all(|s| *s == first),
                    "nodes disagree on checkpoint {id}: {states:?}"
                );
                return matches!(first, Some(CheckpointState::Completed { .. }));
            }
            assert!(
                Instant::now() < deadline,
                "checkpoint {id} not finished on {nodes:?} within {timeout:?}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node reports the same latest completed
    /// checkpoint, at least `at_least`; returns it.
    pub async fn wait_agreement(&self, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let latest: BTreeMap<NodeId, Option<u64>> = statuses
                .iter()
                .map(|(id, s)| (*id, s.ledger.latest_completed().map(|c| c.id.0)))
                .collect();
            let values: BTreeSet<Option<u64>> = latest.values().copied().collect();
            if statuses.len() == self.running().len()
                && values.len() == 1
                && let Some(Some(v)) = values.first().copied()
                && v >= at_least
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "nodes do not agree on a latest completed checkpoint >= {at_least} within {timeout:?}: {latest:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Completion lines printed by node `id` so far.
    pub fn completions_by(&self, id: NodeId) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.node == id && l.text.starts_with("completed "))
            .count()
    }

    /// The safety invariants, over everything every node (and every earlier
    /// process of it) ever printed and every running node's ledger:
    /// - a checkpoint is completed at one log index only, wherever and
    ///   however often (restarts replay) it is applied;
    /// - no checkpoint is completed on one node and aborted on another;
    /// - every completed checkpoint carries every participant's
    ///   acknowledgement, each the manifest that participant reported;
    /// - running nodes agree on every checkpoint both have finished.
    pub async fn check_invariants(&self) {
        let lines = self.lines.lock().unwrap().clone();
        let mut completed_at: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut aborted: BTreeSet<u64> = BTreeSet::new();
        for l in &lines {
            let field = |name: &str| -> Option<u64> {
                l.text
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
            };
            if l.text.starts_with("completed ") {
                let (Some(c), Some(i)) = (field("checkpoint="), field("index=")) else {
                    panic!("malformed line {l:?}")
                };
                completed_at.entry(c).or_default().insert(i);
            } else if l.text.starts_with("aborted ") {
                aborted.insert(field("checkpoint=").unwrap());
            }
        }
        for (c, at) in &completed_at {
            assert_eq!(
                at.len(),
                1,
                "checkpoint {c} completed at several log indexes {at:?}"
            );
            assert!(
                !aborted.contains(c),
                "checkpoint {c} both completed and aborted"
            );
        }
        let statuses = self.statuses().await;
        for (node, s) in &statuses {
            for r in s.ledger.checkpoints() {
                if let CheckpointState::Completed { log_index } = r.state {
                    assert!(
                        r.fully_acked(),
                        "node {node}: checkpoint {} completed without every ack: {r:?}",
                        r.id.0
                    );
                    for (p, m) in &r.acks {
                        assert_eq!(
                            m.0,
                            format!("node-{p}/checkpoint-{}", r.id.0),
                            "node {node}: forged ack {r:?}"
                        );
                    }
                    let printed = completed_at.get(&r.id.0);
                    assert!(
                        printed.is_none_or(|at| at.contains(&log_index)),
                        "node {node}: ledger says checkpoint {} completed at {log_index}, a node printed {printed:?}",
                        r.id.0
                    );
                }
            }
        }
        let nodes: Vec<_> = statuses.iter().collect();
        for (i, (a, sa)) in nodes.iter().enumerate() {
            for (b, sb) in &nodes[i + 1..] {
                for ra in sa.ledger.checkpoints() {
                    if let Some(rb) = sb.ledger.get(ra.id)
                        && ra.state != CheckpointState::Pending
                        && rb.state != CheckpointState::Pending
                    {
                        assert_eq!(
                            ra, rb,
                            "nodes {a} and {b} disagree on checkpoint {}",
                            ra.id.0
                        );
                    }
                }
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), seeded by the test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
