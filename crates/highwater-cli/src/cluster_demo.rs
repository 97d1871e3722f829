//! `highwater demo --cluster N`: the demo job on N node processes on
//! loopback, coordinated by the Raft checkpoint ledger (feature `raft`).
//!
//! The parent process keeps, in DIR, the cluster's secret
//! (`cluster.secret`) and the nodes' addresses (`cluster.addrs`, reused by
//! `--resume`), and spawns one child per node (`demo --node I`). Node `I`
//! runs a Raft coordinator (data in `DIR/raft/node-I`), owns subtask `I-1`
//! of `N` (its key groups' partitions of the stream), and checkpoints at
//! the ledger's barriers into its scope of the shared store DIR. When every
//! node has processed its partitions, the nodes wait for a global
//! checkpoint triggered after that, print it, and stop. The parent then
//! restores that global checkpoint into one memory backend and prints its
//! digest: the single-process digest for the same arguments.

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
const FINAL_PREFIX: &str = "final-cut: ";
/// How long the nodes wait for their final global checkpoint.
const FINAL_TIMEOUT: Duration = Duration::from_secs(120);

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// The parent: spawns the nodes, waits, prints the global digest.
pub fn run(args: &DemoArgs, dir: &Path, nodes: u16) -> Result<ExitCode> {
    if !args.resume && dir.join(ADDRS_FILE).exists() {
        // A fresh run of a cluster: the old ledger and parts go.
        std::fs::remove_dir_all(dir).map_err(io(format!("remove {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let secret = dir.join(SECRET_FILE);
    if !secret.exists() {
        let hasher = std::collections::hash_map::RandomState::new();
        let bytes: Vec<u8> = (0..4u64)
            .flat_map(|i| std::hash::BuildHasher::hash_one(&hasher, i).to_le_bytes())
            .collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&secret, hex).map_err(io(format!("write {}", secret.display())))?;
    }
    addresses(dir, nodes)?;
    // Markers of an earlier run (of any number of nodes) go.
    for entry in std::fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))? {
        let path = entry.map_err(io(format!("list {}", dir.display())))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("done-") || name.starts_with("final-") {
            let _ = std::fs::remove_file(&path);
        }
    }
    let exe = std::env::current_exe().map_err(io("find the highwater binary".into()))?;
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    for id in 1..=nodes {
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
        if args.resume {
            c.arg("--resume");
        }
        // A node stops when its standard input closes: the parent died.
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().map_err(io(format!("spawn node {id}")))?;
        let out = child.stdout.take().expect("piped");
        // Held open until every node is done (`wait` would close it).
        stdins.push(child.stdin.take());
        let reader = std::thread::spawn(move || {
            let mut cut = None;
            for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
                match line.strip_prefix(FINAL_PREFIX) {
                    Some(c) => cut = Some(c.to_string()),
                    None => println!("[node {id}] {line}"),
                }
            }
            cut
        });
        children.push((id, child, reader));
    }
    let mut cut = None;
    for (id, mut child, reader) in children {
        let status = child.wait().map_err(io(format!("wait for node {id}")))?;
        let line = reader.join().ok().flatten();
        if !status.success() {
            return Err(Error::Internal(format!("node {id} failed: {status}")));
        }
        cut = cut.or(line);
    }
    drop(stdins);
    let cut = cut.ok_or_else(|| Error::Internal("no node reported its final cut".into()))?;
    let global = parse_cut(&cut)?;
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

/// `<id> <participant>=<part>,…` as printed by a node.
fn parse_cut(text: &str) -> Result<GlobalCheckpoint> {
    let bad = || Error::Internal(format!("bad final cut from a node: {text:?}"));
    let (id, parts) = text.split_once(' ').ok_or_else(bad)?;
    let id = CheckpointId(id.parse().map_err(|_| bad())?);
    let parts = parts
        .split(',')
        .map(|p| {
            let (n, r) = p.split_once('=').ok_or_else(bad)?;
            Ok((
                n.parse::<ParticipantId>().map_err(|_| bad())?,
                PartRef::parse(r)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(GlobalCheckpoint { id, parts })
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

/// Waits until the membership holds no voter past `nodes` (a run on
/// fewer nodes than an earlier one): every voter takes part in every
/// checkpoint, so the leader removes the missing ones first.
fn shrink_to(
    runtime: &tokio::runtime::Runtime,
    node: &highwater::raft::CheckpointCoordinator,
    nodes: u16,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = node.cluster_health();
        let extra: Vec<u64> = health
            .voters
            .iter()
            .copied()
            .filter(|v| *v > u64::from(nodes))
            .collect();
        let Some(&gone) = extra.first() else {
            return Ok(());
        };
        if health.leader == Some(node.node_id()) {
            println!("removing node {gone} from the membership");
            if let Err(e) = runtime.block_on(node.remove_node(gone))
                && !e.is_transient()
            {
                return Err(e);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "node {gone} is still a voter after 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child: node `id` of `nodes`.
pub fn run_node(args: &DemoArgs, dir: &Path, nodes: u16, id: u16) -> Result<ExitCode> {
    use highwater::raft::{
        CheckpointCoordinator, ClusterSecret, DistributedConfig, RaftParticipant,
    };

    // The parent died (its end of our standard input closed): stop.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
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
    let mut config = DistributedConfig::new(u64::from(id), listen, &data).secret(secret);
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
    shrink_to(&runtime, &node, nodes)?;
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
            Arc::new(
                RaftParticipant::new(node.clone(), runtime.handle().clone())?
                    .with_timeout(Duration::from_secs(10)),
            ),
            nodes,
            id - 1,
        )
        .build()?;
    if args.resume
        && let Some(info) = manager.restore_latest()?
    {
        report_restore(&info);
    }
    let range = highwater::KeyGroupRange::for_subtask(MAX_PARALLELISM, nodes, id - 1)?;
    let done = process(args, &manager, range)?;
    println!(
        "processed {} events in {:.2?}, {} parts taken",
        done.processed, done.elapsed, done.checkpoints
    );
    // Every node done: the first global checkpoint triggered afterwards
    // holds the final state of all of them.
    let marker = |what: &str, n: u16| dir.join(format!("{what}-{n}"));
    let all = |what: &str| (1..=nodes).all(|n| marker(what, n).exists());
    std::fs::write(marker("done", id), b"").map_err(io("write the done marker".into()))?;
    let deadline = Instant::now() + FINAL_TIMEOUT;
    let mut after = None;
    let last = loop {
        if let Some(h) = manager.maybe_checkpoint()? {
            h.wait()?;
        }
        if after.is_none() && all("done") {
            after = Some(node.ledger().next_id());
        }
        if let (Some(after), Some(c)) = (after, node.latest_completed())
            && c.id >= after
        {
            break c;
        }
        if Instant::now() > deadline {
            return Err(Error::Internal("no final global checkpoint in time".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let parts: Vec<String> = last
        .manifests
        .iter()
        .map(|(n, r)| format!("{n}={r}"))
        .collect();
    println!("{FINAL_PREFIX}{} {}", last.id, parts.join(","));
    // Stay (taking parts) until every node has seen a final cut, so no
    // node loses its leader before it learns of the completion.
    std::fs::write(marker("final", id), b"").map_err(io("write the final marker".into()))?;
    while !all("final") && Instant::now() < deadline {
        if let Some(h) = manager.maybe_checkpoint()? {
            let _ = h.wait();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    manager.close()?;
    Ok(ExitCode::SUCCESS)
}
