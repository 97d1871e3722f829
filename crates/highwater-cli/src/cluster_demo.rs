//! `highwater demo --cluster N`: the demo job on N node processes on
//! loopback, coordinated by the Raft checkpoint ledger (feature `raft`).
//!
//! The parent process keeps, in DIR, the cluster's secret
//! (`cluster.secret`) and the nodes' addresses (`cluster.addrs`, reused by
//! `--resume`), and spawns one child per node (`demo --node I`). Node `I`
//! runs a Raft coordinator (data in `DIR/raft/node-I`), owns subtask `I-1`
//! of `N` (its key groups' partitions of the stream), and checkpoints at
//! the ledger's barriers into its scope of the shared store DIR. When every
//! node has processed its partitions, the parent names the first
//! checkpoint that holds the final state of all of them (`final N`); each
//! node takes parts until it sees a completed checkpoint from N on, then
//! takes no more (`parked`), so retention deletes nothing the parent may
//! still read. Once every node is parked the parent picks the newest
//! completed checkpoint, stops the nodes, restores it into one memory
//! backend and prints its digest: the single-process digest for the same
//! arguments.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::core::{
    CheckpointId, Coordinator, GlobalCheckpoint, GlobalStatus, PartRef, ParticipantId,
};
use highwater::{Error, Result, StateManager};

use crate::demo::{DemoArgs, MAX_PARALLELISM, digest, process, report_restore};

const SECRET_FILE: &str = "cluster.secret";
const ADDRS_FILE: &str = "cluster.addrs";
/// A node's line when it has processed its partitions, followed by its
/// ledger's next checkpoint id.
const DONE_PREFIX: &str = "done-after: ";
/// The parent's line to a node: the first checkpoint id whose parts all
/// hold the final state.
const FINAL_PREFIX: &str = "final ";
/// A node's line once it has seen a completed checkpoint from the final id
/// on and takes no more parts.
const PARKED_LINE: &str = "parked";
/// Test hook: milliseconds the parent waits between picking the final cut
/// and stopping the nodes.
pub const HOLD_ENV: &str = "HIGHWATER_DEMO_HOLD_MS";
/// How long the nodes wait for their final global checkpoint.
const FINAL_TIMEOUT: Duration = Duration::from_secs(60);

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// The parent: spawns the nodes, supervises them (restarting the ones
/// `--chaos-kills` kills), picks the final cut, prints the global digest.
pub fn run(args: &DemoArgs, dir: &Path, nodes: u16) -> Result<ExitCode> {
    // A fresh run of a cluster: the old ledger and parts go, renamed away
    // first, so that a run killed while it deletes them leaves either the
    // whole old cluster or none (found by the whole-cluster kill test: a
    // resume of a half-deleted cluster found a ledger whose parts were
    // gone).
    let trash = dir.with_file_name(format!(
        "{}.removing",
        dir.file_name()
            .map_or("cluster".into(), |n| n.to_string_lossy())
    ));
    if !args.resume && dir.join(ADDRS_FILE).exists() {
        if trash.exists() {
            std::fs::remove_dir_all(&trash).map_err(io(format!("remove {}", trash.display())))?;
        }
        std::fs::rename(dir, &trash).map_err(io(format!("rename {}", dir.display())))?;
    }
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(io(format!("remove {}", trash.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let secret = dir.join(SECRET_FILE);
    if !secret.exists() {
        let hex = highwater::raft::ClusterSecret::generate_hex()?;
        std::fs::write(&secret, hex).map_err(io(format!("write {}", secret.display())))?;
    }
    let addrs: Vec<std::net::SocketAddr> = addresses(dir, nodes)?
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e| Error::InvalidArgument(format!("node address {a}: {e}")))
        })
        .collect::<Result<_>>()?;
    let secret = highwater::raft::ClusterSecret::from_file(&secret)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut members: Vec<Member> = (1..=nodes)
        .map(|id| Member::spawn(args, dir, nodes, id, 0, args.resume, &tx))
        .collect::<Result<_>>()?;
    let mut chaos = Chaos::new(args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the parent's runtime".into()))?;
    let status = |addr| {
        runtime.block_on(highwater::raft::query_status(
            addr,
            &secret,
            Duration::from_millis(500),
        ))
    };
    let deadline = Instant::now() + FINAL_TIMEOUT + chaos.budget();
    let mut polled = Instant::now();
    let global = loop {
        for (id, incarnation, line) in rx.try_iter() {
            let m = &mut members[usize::from(id - 1)];
            if m.incarnation != incarnation {
                continue;
            }
            if let Some(next) = line.strip_prefix(DONE_PREFIX) {
                m.done_after = Some(next.trim().parse().map_err(|_| {
                    Error::Internal(format!("bad done line from node {id}: {line:?}"))
                })?);
            } else if line == PARKED_LINE {
                m.parked = true;
            } else {
                println!("[node {id}] {line}");
            }
        }
        for m in &mut members {
            if let Some(exit) = m
                .child
                .try_wait()
                .map_err(io(format!("wait for node {}", m.id)))?
            {
                if !(m.armed && exit.code() == Some(CRASH_BEFORE_ACK_EXIT)) {
                    return Err(Error::Internal(format!("node {} failed: {exit}", m.id)));
                }
                println!("chaos: node {} exited before an acknowledgement", m.id);
                *m = Member::spawn(args, dir, nodes, m.id, m.incarnation + 1, true, &tx)?;
            }
        }
        if let Some(victim) = chaos.due(&addrs, |addr| status(addr).ok()) {
            let m = &mut members[usize::from(victim.id - 1)];
            if victim.before_ack && !m.armed {
                println!(
                    "chaos: killed node {} between a part and its acknowledgement ({} of {})",
                    m.id, chaos.done, chaos.kills
                );
                m.send(CRASH_BEFORE_ACK_LINE);
                m.armed = true;
                continue;
            }
            m.child.kill().map_err(io(format!("kill node {}", m.id)))?;
            m.child
                .wait()
                .map_err(io(format!("wait for node {}", m.id)))?;
            println!(
                "chaos: killed node {}{} ({} of {})",
                m.id,
                if victim.leader { " (the leader)" } else { "" },
                chaos.done,
                chaos.kills
            );
            *m = Member::spawn(args, dir, nodes, m.id, m.incarnation + 1, true, &tx)?;
        }
        // Every node done, no kill to come: every global checkpoint
        // triggered after every node's done line holds the final state of
        // all of them. The nodes take parts until one of those completed,
        // then no more (found by the whole-cluster kill test: nodes that
        // went on taking parts while the parent read the cut it had picked
        // completed newer ones, and retention deleted the picked one).
        let after = members
            .iter()
            .map(|m| m.done_after)
            .collect::<Option<Vec<u64>>>();
        let armed = members.iter().any(|m| m.armed);
        if let (Some(after), true) = (after, chaos.finished() && !armed) {
            let after = after.into_iter().max().unwrap_or(0);
            for m in members.iter_mut().filter(|m| !m.told_final) {
                m.send(&format!("{FINAL_PREFIX}{after}"));
                m.told_final = true;
            }
        }
        if members.iter().all(|m| m.parked) && polled.elapsed() > Duration::from_millis(20) {
            polled = Instant::now();
            // No node takes parts any more: the newest completed
            // checkpoint stays the newest, and every node retains it.
            if let Some(c) = addrs
                .iter()
                .find_map(|a| status(*a).ok())
                .and_then(|s| s.ledger.latest_completed().cloned())
            {
                break GlobalCheckpoint {
                    id: c.id,
                    parts: c
                        .manifests
                        .iter()
                        .map(|(n, r)| Ok((*n, PartRef::parse(&r.0)?)))
                        .collect::<Result<_>>()?,
                };
            }
        }
        if Instant::now() > deadline {
            // What each node knows, to see where the job stalled.
            let views: Vec<String> = addrs
                .iter()
                .enumerate()
                .map(|(i, a)| match status(*a) {
                    Ok(s) => format!(
                        "node {}: {} leader={:?} term={} voters={:?} latest completed={:?} pending={:?} done_after={:?}",
                        i + 1,
                        s.health.role,
                        s.health.leader,
                        s.health.term,
                        s.health.voters,
                        s.ledger.latest_completed().map(|c| c.id),
                        s.ledger
                            .pending()
                            .map(|c| (c.id, c.participants.clone(), c.acks.keys().copied().collect::<Vec<_>>()))
                            .collect::<Vec<_>>(),
                        members[i].done_after,
                    ),
                    Err(e) => format!("node {}: no status: {e}", i + 1),
                })
                .collect();
            return Err(Error::Internal(format!(
                "no final global checkpoint in time; {}",
                views.join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A test hook: the nodes stay up this long before they are stopped, as
    // on a loaded machine (nothing they do meanwhile may touch the cut).
    if let Some(ms) = std::env::var(HOLD_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    for m in &mut members {
        m.stop();
    }
    for m in members {
        let id = m.id;
        let exit = m.wait()?;
        if !exit.success() {
            return Err(Error::Internal(format!("node {id} failed: {exit}")));
        }
    }
    println!(
        "global checkpoint {} of {} parts",
        global.id,
        global.parts.len()
    );
    // The whole job's state in one backend: subtask 0 of 1 restores every
    // key group of every part.
    let store = crate::target::open_store(&dir.display().to_string(), "highwater", true)?;
    let reader = StateManager::builder()
        .backend(Arc::new(highwater::memory::MemoryBackend::new()))
        .store(store)
        .max_parallelism(MAX_PARALLELISM)
        .cluster(Arc::new(FixedCut(global)), 1, 0)
        .build()?;
    reader.restore_latest()?;
    println!("checkpoints in {}", dir.display());
    println!("digest: {}", digest(&[&reader])?);
    Ok(ExitCode::SUCCESS)
}

/// One node process as its parent sees it.
struct Member {
    id: u16,
    /// How many times this node was restarted.
    incarnation: u32,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The ledger's next id when this incarnation finished its partitions:
    /// every part it takes of a checkpoint from there on holds its final
    /// state.
    done_after: Option<u64>,
    /// Told to exit before its next acknowledgement.
    armed: bool,
    /// Told the final checkpoint id.
    told_final: bool,
    /// Takes no more parts: it has seen a completed checkpoint from the
    /// final id on.
    parked: bool,
}

impl Member {
    fn spawn(
        args: &DemoArgs,
        dir: &Path,
        nodes: u16,
        id: u16,
        incarnation: u32,
        resume: bool,
        lines: &std::sync::mpsc::Sender<(u16, u32, String)>,
    ) -> Result<Member> {
        let exe = std::env::current_exe().map_err(io("find the highwater binary".into()))?;
        let mut c = Command::new(&exe);
        c.arg("demo")
            .arg("--dir")
            .arg(dir)
            .args(["--cluster", &nodes.to_string(), "--node", &id.to_string()])
            .args(["--events", &args.events.to_string()])
            .args(["--keys", &args.keys.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--checkpoint-every", &args.checkpoint_every.to_string()]);
        if args.full_only {
            c.arg("--full-only");
        }
        if resume {
            c.arg("--resume");
        }
        if let Some(path) = crate::target::key_file() {
            c.arg("--key-file").arg(path);
        }
        // A node stops on a `stop` line, and exits when its standard input
        // closes: the parent died.
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().map_err(io(format!("spawn node {id}")))?;
        let out = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let lines = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
                let _ = lines.send((id, incarnation, line));
            }
        });
        Ok(Member {
            id,
            incarnation,
            child,
            stdin,
            reader: Some(reader),
            done_after: None,
            armed: false,
            told_final: false,
            parked: false,
        })
    }

    fn stop(&mut self) {
        self.send("stop");
    }

    /// One line to the node's standard input.
    fn send(&mut self, line: &str) {
        use std::io::Write;
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    /// Waits for the process and for the rest of its output.
    fn wait(mut self) -> Result<std::process::ExitStatus> {
        let exit = self
            .child
            .wait()
            .map_err(io(format!("wait for node {}", self.id)))?;
        drop(self.stdin.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(exit)
    }
}

/// The `--chaos-kills` schedule: SIGKILLs of random nodes (the leader in
/// every third, when one is known; in another third the node is told to
/// exit between a part's upload and its acknowledgement) at random moments, each node restarted with
/// `--resume`.
struct Chaos {
    kills: u32,
    done: u32,
    rng: fastrand::Rng,
    next: Instant,
}

/// Who a kill hits, and how.
struct Victim {
    id: u16,
    leader: bool,
    /// Instead of a SIGKILL now: the node exits at its next part, after
    /// the part is uploaded and its manifest committed, before the ledger
    /// hears of it.
    before_ack: bool,
}

/// The exit status of a node told to crash before an acknowledgement.
const CRASH_BEFORE_ACK_EXIT: i32 = 86;
/// The line that tells a node to crash before its next acknowledgement.
const CRASH_BEFORE_ACK_LINE: &str = "crash-before-ack";

/// The longest pause between two kills.
const CHAOS_GAP_MS: u64 = 300;

impl Chaos {
    fn new(args: &DemoArgs) -> Chaos {
        let seed = args.chaos_seed.unwrap_or_else(|| fastrand::u64(..));
        if args.chaos_kills > 0 {
            println!("chaos: {} kills, seed {seed}", args.chaos_kills);
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let next = Instant::now() + Duration::from_millis(rng.u64(..CHAOS_GAP_MS));
        Chaos {
            kills: args.chaos_kills,
            done: 0,
            rng,
            next,
        }
    }

    /// How much longer the run may take for the kills.
    fn budget(&self) -> Duration {
        Duration::from_secs(5) * self.kills
    }

    fn finished(&self) -> bool {
        self.done >= self.kills
    }

    /// The next node to kill, when a kill is due.
    fn due(
        &mut self,
        addrs: &[std::net::SocketAddr],
        status: impl Fn(std::net::SocketAddr) -> Option<highwater::raft::NodeStatus>,
    ) -> Option<Victim> {
        if self.finished() || Instant::now() < self.next {
            return None;
        }
        self.done += 1;
        self.next = Instant::now() + Duration::from_millis(self.rng.u64(..CHAOS_GAP_MS));
        let n = addrs.len() as u16;
        // Every third kill (the first among them) aims at the leader.
        if self.done % 3 == 1 {
            let leader = addrs
                .iter()
                .filter_map(|a| status(*a))
                .find_map(|s| s.health.leader)
                .and_then(|l| u16::try_from(l).ok())
                .filter(|l| (1..=n).contains(l));
            if let Some(id) = leader {
                return Some(Victim {
                    id,
                    leader: true,
                    before_ack: false,
                });
            }
        }
        Some(Victim {
            id: self.rng.u16(1..=n),
            leader: false,
            // Every third kill (the second among them).
            before_ack: self.done % 3 == 2,
        })
    }
}

/// The nodes' addresses: kept in DIR so that a resumed cluster finds its
/// members where its ledger says they are; new ones picked by the system.
/// Only the parent writes the file (whole, then renamed), before any node
/// starts.
fn addresses(dir: &Path, nodes: u16) -> Result<Vec<String>> {
    let path = dir.join(ADDRS_FILE);
    let mut addrs = read_addresses(&path);
    let mut listeners = Vec::new();
    while addrs.len() < usize::from(nodes) {
        // Held until every port is picked, so none is picked twice.
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("pick a port".into()))?;
        addrs.push(
            l.local_addr()
                .map_err(io("pick a port".into()))?
                .to_string(),
        );
        listeners.push(l);
    }
    let tmp = dir.join(format!("{ADDRS_FILE}.tmp"));
    std::fs::write(&tmp, addrs.join("\n")).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))?;
    Ok(addrs)
}

fn read_addresses(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// One known global checkpoint as a coordinator: what the parent restores.
#[derive(Debug)]
struct FixedCut(GlobalCheckpoint);

impl Coordinator for FixedCut {
    fn participant(&self) -> ParticipantId {
        // A scope no node writes.
        0
    }
    fn next_barrier(&self, _: Option<CheckpointId>) -> Result<Option<CheckpointId>> {
        Ok(None)
    }
    fn acknowledge(&self, c: CheckpointId, _: &PartRef) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "a fixed cut takes no part of {c}"
        )))
    }
    fn decline(&self, _: CheckpointId, _: &str) -> Result<()> {
        Ok(())
    }
    fn completed(&self, limit: usize) -> Result<Vec<GlobalCheckpoint>> {
        Ok(std::iter::once(self.0.clone()).take(limit).collect())
    }
    fn status(&self, c: CheckpointId) -> Result<GlobalStatus> {
        Ok(if c == self.0.id {
            GlobalStatus::Completed
        } else {
            GlobalStatus::Unknown
        })
    }
}

/// Waits until the voters are exactly nodes `1..=nodes` (a run on fewer or
/// more nodes than an earlier one): every voter takes part in every
/// checkpoint, so the leader removes the missing ones and adds the new
/// ones (as learners first: they catch up on the ledger) before any node
/// processes.
fn reconcile_membership(
    runtime: &tokio::runtime::Runtime,
    node: &highwater::raft::CheckpointCoordinator,
    nodes: u16,
    addrs: &[String],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = node.cluster_health();
        let gone = health
            .voters
            .iter()
            .copied()
            .find(|v| *v > u64::from(nodes));
        let new = (1..=u64::from(nodes)).find(|v| !health.voters.contains(v));
        if gone.is_none() && new.is_none() {
            return Ok(());
        }
        // Raft changes the membership only with a majority of the current
        // voters: the nodes of this run must be one.
        let staying = health
            .voters
            .iter()
            .filter(|v| **v <= u64::from(nodes))
            .count();
        if gone.is_some() && staying <= health.voters.len() / 2 {
            return Err(Error::InvalidArgument(format!(
                "the cluster's voters are {:?}: {nodes} of them are not a majority, and only a majority can remove the others; resume on {} nodes first, then on {nodes}",
                health.voters,
                health.voters.len() / 2 + 1
            )));
        }
        if health.leader == Some(node.node_id()) {
            let changed = match (gone, new) {
                (Some(gone), _) => {
                    println!("removing node {gone} from the membership");
                    runtime.block_on(node.remove_node(gone))
                }
                (None, Some(new)) => {
                    println!("adding node {new} to the membership");
                    let addr = usize::try_from(new - 1)
                        .ok()
                        .and_then(|i| addrs.get(i))
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!("no address for node {new}"))
                        })?;
                    runtime.block_on(node.add_node(new, addr.clone()))
                }
                (None, None) => Ok(()),
            };
            if let Err(e) = changed
                && !e.is_transient()
            {
                return Err(e);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the voters are still {:?}, not nodes 1 to {nodes}, after 30 s",
                health.voters
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node's participant that exits the process, when the parent armed it,
/// between a part's commit and its acknowledgement (`--chaos-kills`): the
/// ledger never hears of that part.
#[derive(Debug)]
struct CrashBeforeAck {
    inner: Arc<dyn Coordinator>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl Coordinator for CrashBeforeAck {
    fn participant(&self) -> ParticipantId {
        self.inner.participant()
    }
    fn next_barrier(&self, after: Option<CheckpointId>) -> Result<Option<CheckpointId>> {
        self.inner.next_barrier(after)
    }
    fn acknowledge(&self, c: CheckpointId, part: &PartRef) -> Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            println!("exiting before the acknowledgement of {c} ({part} is committed)");
            std::process::exit(CRASH_BEFORE_ACK_EXIT);
        }
        self.inner.acknowledge(c, part)
    }
    fn decline(&self, c: CheckpointId, reason: &str) -> Result<()> {
        self.inner.decline(c, reason)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn completed(&self, limit: usize) -> Result<Vec<GlobalCheckpoint>> {
        self.inner.completed(limit)
    }
    fn status(&self, c: CheckpointId) -> Result<GlobalStatus> {
        self.inner.status(c)
    }
}

/// A child: node `id` of `nodes`.
pub fn run_node(args: &DemoArgs, dir: &Path, nodes: u16, id: u16) -> Result<ExitCode> {
    use highwater::raft::{
        CheckpointCoordinator, ClusterSecret, DistributedConfig, RaftParticipant,
    };

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    // `final N` from the parent: take parts until a checkpoint from N on
    // completed; `stop`: finish. The parent died (its end of our standard
    // input closed): exit at once.
    let stop = Arc::new(AtomicBool::new(false));
    let final_id = Arc::new(AtomicU64::new(u64::MAX));
    let crash_before_ack = Arc::new(AtomicBool::new(false));
    let (stopping, finals, crashing) = (stop.clone(), final_id.clone(), crash_before_ack.clone());
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            match line.trim() {
                "stop" => stopping.store(true, SeqCst),
                CRASH_BEFORE_ACK_LINE => crashing.store(true, SeqCst),
                other => {
                    if let Some(id) = other
                        .strip_prefix(FINAL_PREFIX)
                        .and_then(|n| n.parse().ok())
                    {
                        finals.store(id, SeqCst);
                    }
                }
            }
            line.clear();
        }
        std::process::exit(3);
    });
    let addrs = read_addresses(&dir.join(ADDRS_FILE));
    if addrs.len() < usize::from(nodes) {
        return Err(Error::InvalidArgument(format!(
            "{} names fewer than {nodes} nodes",
            dir.join(ADDRS_FILE).display()
        )));
    }
    let listen = addrs[usize::from(id - 1)]
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("node address: {e}")))?;
    let data: PathBuf = dir.join("raft").join(format!("node-{id}"));
    let secret = ClusterSecret::from_file(dir.join(SECRET_FILE))?;
    // A node new to a cluster that already exists (a resume on more nodes
    // than before) joins it: the leader adds it.
    let joins = args.resume
        && !data.exists()
        && (1..=nodes)
            .filter(|&p| p != id)
            .any(|p| dir.join("raft").join(format!("node-{p}")).exists());
    let mut config = DistributedConfig::new(u64::from(id), listen, &data).secret(secret);
    config.join = joins;
    config.peers = (1..=nodes)
        .filter(|&p| p != id)
        .map(|p| (u64::from(p), addrs[usize::from(p - 1)].clone()))
        .collect();
    config.checkpoint_interval = Some(Duration::from_millis(args.checkpoint_every.max(1)));
    config.checkpoint_timeout = Duration::from_secs(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start the node's runtime".into()))?;
    let snapshots = Arc::new(highwater::cloud::ObjectCheckpointStore::local(
        data.join("snapshots"),
    )?);
    let node = Arc::new(runtime.block_on(CheckpointCoordinator::start(config, snapshots))?);
    runtime.block_on(node.wait_for_leader(Duration::from_secs(30)))?;
    reconcile_membership(&runtime, &node, nodes, &addrs)?;
    let store = crate::target::open_store(&dir.display().to_string(), "highwater", true)?;
    let manager = StateManager::builder()
        .backend(Arc::new(highwater::memory::MemoryBackend::new()))
        .store(store)
        .incremental(!args.full_only)
        .max_retained(3)
        .max_parallelism(MAX_PARALLELISM)
        .property("job", "highwater-demo")
        .cluster(
            // A node whose peers already stopped gets no majority: its
            // last acknowledgement fails after 10 s instead of waiting.
            Arc::new(CrashBeforeAck {
                inner: Arc::new(
                    RaftParticipant::new(node.clone(), runtime.handle().clone())?
                        .with_timeout(Duration::from_secs(10)),
                ),
                armed: crash_before_ack,
            }),
            nodes,
            id - 1,
        )
        .build()?;
    if args.resume {
        // A restore needs a majority (to sync the ledger view); while
        // other nodes restart too there may be none for a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        let restored = loop {
            match manager.restore_latest() {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    println!("restore: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other?,
            }
        };
        if let Some(info) = restored {
            report_restore(&info);
        }
    }
    let range = highwater::KeyGroupRange::for_subtask(MAX_PARALLELISM, nodes, id - 1)?;
    let done = process(args, &manager, range)?;
    println!(
        "processed {} events in {:.2?}, {} parts taken",
        done.processed, done.elapsed, done.checkpoints
    );
    // Every barrier taken so far came from this node's ledger, so every
    // part of a checkpoint from its next id on holds the final state.
    println!("{DONE_PREFIX}{}", node.ledger().next_id().0);
    // Take parts until a checkpoint from the final id on completed, then
    // wait for the parent to read it.
    let mut parked = false;
    while !stop.load(SeqCst) {
        if !parked {
            let latest = node.latest_completed().map(|c| c.id.0);
            if latest.is_some_and(|l| l >= final_id.load(SeqCst)) {
                println!("{PARKED_LINE}");
                parked = true;
            } else if let Some(h) = manager.maybe_checkpoint()? {
                h.wait()?;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    manager.close()?;
    Ok(ExitCode::SUCCESS)
}
