//! The global checkpoints of a cluster job (docs/raft.md, "Cluster jobs"):
//! its participants' scopes `participants/<id>` in the shared store, and
//! what its ledger says of each checkpoint, for `highwater inspect` and
//! `highwater verify`.
//!
//! The ledger is read from, in this order: a node given with `--ledger
//! ADDR` (live, authenticated with `--secret FILE` or the store's
//! `cluster.secret`); the store's `ledger` scope (a `LocalCoordinator`
//! job); the Raft data directories `STORE/raft/node-<i>` of a cluster demo
//! directory, read offline (`highwater_raft::read_ledger`), or live from a
//! node that is running (its address in `STORE/cluster.addrs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "raft")]
use highwater::Error;
use highwater::cluster::{LOCAL_HISTORY, LOCAL_LEDGER_SCOPE, LocalCoordinator, SUBTASK_PROPERTY};
use highwater::core::{CheckpointId, Manifest, PartRef};
use highwater::{CheckpointStore, Result};
use serde::Serialize;

/// The file of a cluster demo directory holding the cluster's secret.
const SECRET_FILE: &str = "cluster.secret";
/// The file of a cluster demo directory listing its nodes' addresses (node
/// `i` on line `i`).
#[cfg(feature = "raft")]
const ADDRS_FILE: &str = "cluster.addrs";
/// How long a live ledger query waits for the node.
#[cfg(feature = "raft")]
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where `inspect` and `verify` read a Raft job's ledger from, besides the
/// store itself.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LedgerArgs {
    /// Read the job's Raft ledger live from the coordinator node at ADDR
    /// (HOST:PORT; build feature `raft`). Without it the ledger is found
    /// in the store (`ledger` scope) or, for a cluster demo directory, in
    /// its nodes' data directories `raft/node-<i>`.
    #[arg(long, value_name = "ADDR")]
    pub ledger: Option<String>,
    /// The cluster's secret for --ledger (default: STORE/cluster.secret).
    #[arg(long, value_name = "FILE", requires = "ledger")]
    pub secret: Option<PathBuf>,
}

/// One global checkpoint as the job's ledger records it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LedgerCheckpoint {
    pub id: u64,
    /// `completed`, `aborted` or `pending`.
    pub state: &'static str,
    /// The participants that must acknowledge it.
    pub participants: BTreeSet<u64>,
    /// Each acknowledging participant's part reference (`<scope>@<id>`).
    pub parts: BTreeMap<u64, String>,
    /// Why it was aborted.
    pub reason: Option<String>,
}

/// Where the ledger was read.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LedgerSource {
    /// `store` (a LocalCoordinator's `ledger` scope), `raft-offline` (a
    /// stopped node's data directory) or `raft-live` (a running node).
    pub kind: &'static str,
    /// The scope, data directory or node address.
    pub location: String,
    /// The Raft log index the ledger is applied up to.
    pub applied_index: Option<u64>,
}

/// A job's ledger: every checkpoint it still remembers.
#[derive(Debug, Clone)]
pub(crate) struct JobLedger {
    pub source: LedgerSource,
    pub checkpoints: BTreeMap<u64, LedgerCheckpoint>,
}

impl JobLedger {
    /// The completed checkpoints, newest first.
    pub fn completed(&self) -> impl Iterator<Item = &LedgerCheckpoint> {
        self.checkpoints
            .values()
            .rev()
            .filter(|c| c.state == "completed")
    }
}

/// The ledger found for a store, and why each source that exists could
/// not be read.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub ledger: Option<JobLedger>,
    pub notes: Vec<String>,
}

/// Finds and reads the ledger of the job whose shared store is `store`
/// (`spec`).
pub(crate) fn find_ledger(
    spec: &str,
    store: &Arc<dyn CheckpointStore>,
    rt: &tokio::runtime::Runtime,
    args: &LedgerArgs,
) -> Result<Found> {
    let mut found = Found::default();
    if let Some(addr) = &args.ledger {
        let secret = args
            .secret
            .clone()
            .unwrap_or_else(|| Path::new(spec).join(SECRET_FILE));
        found.ledger = Some(live(addr, &secret, rt)?);
        return Ok(found);
    }
    if let Ok(scope) = store.scoped(LOCAL_LEDGER_SCOPE)
        && !rt.block_on(scope.list_manifests())?.is_empty()
    {
        // Opening reads the completed checkpoints; with no interval it
        // triggers nothing and writes nothing.
        let completed = LocalCoordinator::open(store.clone(), 1, None)?.completed(LOCAL_HISTORY);
        let checkpoints = completed
            .into_iter()
            .map(|g| {
                (
                    g.id.0,
                    LedgerCheckpoint {
                        id: g.id.0,
                        state: "completed",
                        participants: g.parts.keys().copied().collect(),
                        parts: g.parts.iter().map(|(p, r)| (*p, r.to_string())).collect(),
                        reason: None,
                    },
                )
            })
            .collect();
        found.ledger = Some(JobLedger {
            source: LedgerSource {
                kind: "store",
                location: LOCAL_LEDGER_SCOPE.into(),
                applied_index: None,
            },
            checkpoints,
        });
        return Ok(found);
    }
    let raft = Path::new(spec).join("raft");
    if raft.is_dir() {
        raft_dirs(spec, &raft, rt, &mut found);
    }
    Ok(found)
}

/// The node directories `raft/node-<i>`, ascending by `i`.
#[cfg(feature = "raft")]
fn node_dirs(raft: &Path) -> Vec<(u16, PathBuf)> {
    let mut nodes: Vec<(u16, PathBuf)> = std::fs::read_dir(raft)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let i = name.to_str()?.strip_prefix("node-")?.parse().ok()?;
            e.path().is_dir().then(|| (i, e.path()))
        })
        .collect();
    nodes.sort();
    nodes
}

/// The address of node `i` in a cluster demo directory.
#[cfg(feature = "raft")]
fn node_addr(spec: &str, i: u16) -> Option<String> {
    std::fs::read_to_string(Path::new(spec).join(ADDRS_FILE))
        .ok()?
        .lines()
        .nth(usize::from(i).checked_sub(1)?)
        .map(str::to_string)
}

#[cfg(not(feature = "raft"))]
fn raft_dirs(_: &str, raft: &Path, _: &tokio::runtime::Runtime, found: &mut Found) {
    found.notes.push(format!(
        "{} holds a Raft ledger, which this build cannot read (build feature `raft`)",
        raft.display()
    ));
}

/// Reads each node's ledger: offline from a stopped node's directory (the
/// most advanced one wins), live from a running node (wins at once).
#[cfg(feature = "raft")]
fn raft_dirs(spec: &str, raft: &Path, rt: &tokio::runtime::Runtime, found: &mut Found) {
    let mut best: Option<JobLedger> = None;
    for (i, dir) in node_dirs(raft) {
        let read = (|| {
            let snapshots: Arc<dyn CheckpointStore> = Arc::new(
                highwater::cloud::ObjectCheckpointStore::local(dir.join("snapshots"))?,
            );
            rt.block_on(highwater::raft::read_ledger(&dir, &*snapshots))
        })();
        match read {
            Ok(stored) => {
                let ledger = JobLedger {
                    source: LedgerSource {
                        kind: "raft-offline",
                        location: dir.display().to_string(),
                        applied_index: Some(stored.applied_index),
                    },
                    checkpoints: from_raft(&stored.ledger),
                };
                if best
                    .as_ref()
                    .is_none_or(|b| b.source.applied_index < ledger.source.applied_index)
                {
                    best = Some(ledger);
                }
            }
            Err(Error::AlreadyExists(_)) => {
                // The node runs: ask it.
                let Some(addr) = node_addr(spec, i) else {
                    found.notes.push(format!(
                        "node {i} is running but {} names no address for it",
                        Path::new(spec).join(ADDRS_FILE).display()
                    ));
                    continue;
                };
                match live(&addr, &Path::new(spec).join(SECRET_FILE), rt) {
                    Ok(l) => {
                        found.ledger = Some(l);
                        return;
                    }
                    Err(e) => found
                        .notes
                        .push(format!("node {i} is running; asking it at {addr}: {e}")),
                }
            }
            Err(e) => found
                .notes
                .push(format!("node {i} ({}): {e}", dir.display())),
        }
    }
    found.ledger = best;
}

#[cfg(not(feature = "raft"))]
fn live(_: &str, _: &Path, _: &tokio::runtime::Runtime) -> Result<JobLedger> {
    Err(crate::target::not_built("`--ledger ADDR`", "raft"))
}

/// The ledger of the running node at `addr`.
#[cfg(feature = "raft")]
fn live(addr: &str, secret: &Path, rt: &tokio::runtime::Runtime) -> Result<JobLedger> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--ledger {addr}: {e}")))?;
    let secret = highwater::raft::ClusterSecret::from_file(secret)?;
    let status = rt.block_on(highwater::raft::query_status(sock, &secret, QUERY_TIMEOUT))?;
    Ok(JobLedger {
        source: LedgerSource {
            kind: "raft-live",
            location: addr.to_string(),
            applied_index: Some(status.health.last_applied),
        },
        checkpoints: from_raft(&status.ledger),
    })
}

#[cfg(feature = "raft")]
fn from_raft(ledger: &highwater::raft::Ledger) -> BTreeMap<u64, LedgerCheckpoint> {
    use highwater::raft::CheckpointState;
    let mut out: BTreeMap<u64, LedgerCheckpoint> = ledger
        .checkpoints()
        .map(|c| {
            let (state, reason) = match &c.state {
                CheckpointState::Pending => ("pending", None),
                CheckpointState::Completed { .. } => ("completed", None),
                CheckpointState::Aborted { reason, .. } => ("aborted", Some(reason.to_string())),
            };
            (
                c.id.0,
                LedgerCheckpoint {
                    id: c.id.0,
                    state,
                    participants: c.participants.clone(),
                    parts: c.acks.iter().map(|(n, r)| (*n, r.0.clone())).collect(),
                    reason,
                },
            )
        })
        .collect();
    // The newest completed checkpoint is kept even once pruned from the
    // history.
    if let Some(l) = ledger.latest_completed() {
        out.entry(l.id.0).or_insert_with(|| LedgerCheckpoint {
            id: l.id.0,
            state: "completed",
            participants: l.manifests.keys().copied().collect(),
            parts: l.manifests.iter().map(|(n, r)| (*n, r.0.clone())).collect(),
            reason: None,
        });
    }
    out
}

/// One local manifest of a participant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartManifest {
    pub id: u64,
    pub kind: Option<String>,
    /// Its subtask property (`<subtask>/<parallelism>`).
    pub subtask: Option<String>,
    /// The manifest could not be read or decoded.
    pub error: Option<String>,
}

/// A participant's scope and its local manifests.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ParticipantRow {
    /// The participant id (the scope's last segment).
    pub id: Option<u64>,
    pub scope: String,
    pub manifests: Vec<PartManifest>,
    /// The scope could not be listed.
    pub error: Option<String>,
}

/// One row of the global checkpoints table: every id the ledger or a
/// participant knows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GlobalRow {
    pub id: u64,
    /// `completed`, `aborted`, `pending`, or `unknown` (not in the ledger:
    /// pruned from its history, or never completed in a ledger that keeps
    /// completions only).
    pub state: &'static str,
    /// The participants the ledger names.
    pub participants: BTreeSet<u64>,
    /// Each acknowledging participant's part reference.
    pub parts: BTreeMap<u64, String>,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// The participant scopes holding a local manifest of this id.
    pub local: Vec<String>,
}

/// A cluster job's participants and global checkpoints.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    pub participants: Vec<ParticipantRow>,
    pub global: Vec<GlobalRow>,
    pub found: Found,
}

/// The participant scopes of `store`: the subdirectories of
/// `STORE/participants` of a local directory, and every scope the ledger
/// names.
fn scopes(spec: &str, ledger: Option<&JobLedger>) -> BTreeSet<(Option<u64>, String)> {
    let mut out = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(Path::new(spec).join("participants")) {
        for e in entries.flatten() {
            if e.path().is_dir()
                && let Some(name) = e.file_name().to_str()
            {
                out.insert((name.parse().ok(), format!("participants/{name}")));
            }
        }
    }
    for c in ledger.iter().flat_map(|l| l.checkpoints.values()) {
        for r in c.parts.values() {
            if let Ok(part) = PartRef::parse(r) {
                let id = part
                    .scope
                    .strip_prefix("participants/")
                    .and_then(|n| n.parse().ok());
                out.insert((id, part.scope));
            }
        }
    }
    out
}

/// `None` when `spec` is no cluster job's store (no participant scope and
/// no ledger).
pub(crate) fn cluster(
    spec: &str,
    store: &Arc<dyn CheckpointStore>,
    rt: &tokio::runtime::Runtime,
    args: &LedgerArgs,
) -> Result<Option<Cluster>> {
    let found = find_ledger(spec, store, rt, args)?;
    let scopes = scopes(spec, found.ledger.as_ref());
    if scopes.is_empty() && found.ledger.is_none() && found.notes.is_empty() {
        return Ok(None);
    }
    let mut participants = Vec::new();
    for (id, scope) in scopes {
        let mut row = ParticipantRow {
            id,
            scope: scope.clone(),
            manifests: Vec::new(),
            error: None,
        };
        let listed = store.scoped(&scope).and_then(|s| {
            rt.block_on(async {
                let mut out = Vec::new();
                for m in s.list_manifests().await? {
                    out.push(
                        match s.get_manifest(m).await.and_then(|b| Manifest::decode(&b)) {
                            Ok(man) => PartManifest {
                                id: m.0,
                                kind: Some(man.kind.to_string()),
                                subtask: man.properties.get(SUBTASK_PROPERTY).cloned(),
                                error: None,
                            },
                            Err(e) => PartManifest {
                                id: m.0,
                                kind: None,
                                subtask: None,
                                error: Some(e.to_string()),
                            },
                        },
                    );
                }
                Ok(out)
            })
        });
        match listed {
            Ok(m) => row.manifests = m,
            Err(e) => row.error = Some(e.to_string()),
        }
        participants.push(row);
    }
    let mut ids: BTreeSet<u64> = participants
        .iter()
        .flat_map(|p| p.manifests.iter().map(|m| m.id))
        .collect();
    ids.extend(
        found
            .ledger
            .iter()
            .flat_map(|l| l.checkpoints.keys().copied()),
    );
    let global = ids
        .into_iter()
        .map(|id| {
            let known = found.ledger.as_ref().and_then(|l| l.checkpoints.get(&id));
            GlobalRow {
                id,
                state: known.map_or("unknown", |c| c.state),
                participants: known.map(|c| c.participants.clone()).unwrap_or_default(),
                parts: known.map(|c| c.parts.clone()).unwrap_or_default(),
                reason: known.and_then(|c| c.reason.clone()),
                local: participants
                    .iter()
                    .filter(|p| p.manifests.iter().any(|m| m.id == id))
                    .map(|p| p.scope.clone())
                    .collect(),
            }
        })
        .collect();
    Ok(Some(Cluster {
        participants,
        global,
        found,
    }))
}

/// Prints a cluster job's participants and global checkpoints as text.
pub(crate) fn print(c: &Cluster) {
    println!("participants: {}", c.participants.len());
    for p in &c.participants {
        match &p.error {
            Some(e) => println!("  {}: UNREADABLE: {e}", p.scope),
            None => println!("  {}: {} local manifest(s)", p.scope, p.manifests.len()),
        }
        for m in &p.manifests {
            match &m.error {
                Some(e) => println!("    {:>6}  UNREADABLE: {e}", m.id),
                None => println!(
                    "    {:>6}  {:<11}  subtask {}",
                    m.id,
                    m.kind.as_deref().unwrap_or("?"),
                    m.subtask.as_deref().unwrap_or("-")
                ),
            }
        }
    }
    match &c.found.ledger {
        Some(l) => println!(
            "ledger: {} {}{}",
            l.source.kind,
            l.source.location,
            l.source
                .applied_index
                .map(|i| format!(" (log index {i})"))
                .unwrap_or_default()
        ),
        None => println!("ledger: none found"),
    }
    for n in &c.found.notes {
        println!("ledger note: {n}");
    }
    println!("global checkpoints: {}", c.global.len());
    println!("{:>6}  {:<9}  parts (participant: scope@id)", "id", "state");
    for g in &c.global {
        let mut parts: Vec<String> = g.parts.iter().map(|(p, r)| format!("{p}: {r}")).collect();
        for p in &g.participants {
            if !g.parts.contains_key(p) {
                parts.push(format!("{p}: -"));
            }
        }
        if parts.is_empty() && !g.local.is_empty() {
            parts.push(format!("local manifests in {}", g.local.join(", ")));
        }
        let reason = g
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        println!("{:>6}  {:<9}  {}{reason}", g.id, g.state, parts.join(", "));
    }
}

/// What `verify` found of one globally completed checkpoint the ledger
/// still knows.
#[derive(Debug, Serialize)]
pub(crate) struct GlobalVerification {
    pub checkpoint: u64,
    /// The newest completed checkpoint (the one a restore picks).
    pub newest: bool,
    pub parts: usize,
    /// Parts whose checkpoint is present and sound.
    pub sound_parts: usize,
    /// `restorable`; `retired` (an older checkpoint some of whose parts
    /// retention removed, none damaged); or `damaged`.
    pub state: &'static str,
    /// The parts' key-group ranges cover every key group (`None`: not
    /// checked, a part is missing or unreadable).
    pub covers_key_groups: Option<bool>,
    /// What is wrong, each naming the participant.
    pub problems: Vec<String>,
}

impl GlobalVerification {
    /// A failure of `verify`: the newest with any problem, or any damaged
    /// one.
    pub fn failed(&self) -> bool {
        self.state == "damaged"
    }
}

/// Checks every completed checkpoint of `ledger` (newest first): each
/// part's manifest exists and verifies, and the parts cover every key
/// group.
pub(crate) fn verify(
    store: &Arc<dyn CheckpointStore>,
    rt: &tokio::runtime::Runtime,
    ledger: &JobLedger,
) -> Result<Vec<GlobalVerification>> {
    let mut by_scope = BTreeMap::new();
    let mut out = Vec::new();
    for (i, g) in ledger.completed().enumerate() {
        let mut v = GlobalVerification {
            checkpoint: g.id,
            newest: i == 0,
            parts: g.participants.len().max(g.parts.len()),
            sound_parts: 0,
            state: "restorable",
            covers_key_groups: None,
            problems: Vec::new(),
        };
        let (mut missing, mut damaged) = (0, 0);
        let mut manifests = Vec::new();
        for p in &g.participants {
            if !g.parts.contains_key(p) {
                damaged += 1;
                v.problems
                    .push(format!("participant {p}: no part acknowledged"));
            }
        }
        for (p, r) in &g.parts {
            let part = match PartRef::parse(r) {
                Ok(part) => part,
                Err(e) => {
                    damaged += 1;
                    v.problems.push(format!("participant {p}: {e}"));
                    continue;
                }
            };
            if !by_scope.contains_key(&part.scope) {
                let checked = rt.block_on(highwater::verify_store(&*store.scoped(&part.scope)?))?;
                by_scope.insert(part.scope.clone(), checked);
            }
            match by_scope[&part.scope]
                .iter()
                .find(|c| c.checkpoint == part.checkpoint)
            {
                Some(c) if c.is_sound() => {
                    let scope = store.scoped(&part.scope)?;
                    let id = part.checkpoint;
                    match rt.block_on(async move {
                        Manifest::decode(&scope.get_manifest(CheckpointId(id.0)).await?)
                    }) {
                        Ok(m) if m.checkpoint_id.0 != g.id => {
                            damaged += 1;
                            v.problems.push(format!(
                                "participant {p}: {part} holds checkpoint {}",
                                m.checkpoint_id
                            ));
                        }
                        Ok(m) => {
                            v.sound_parts += 1;
                            manifests.push((*p, part, m));
                        }
                        Err(e) => {
                            damaged += 1;
                            v.problems.push(format!("participant {p}: {part}: {e}"));
                        }
                    }
                }
                Some(c) => {
                    damaged += 1;
                    v.problems.extend(
                        c.problems
                            .iter()
                            .map(|pr| format!("participant {p}: {part}: {}", pr.message)),
                    )
                }
                None => {
                    missing += 1;
                    v.problems
                        .push(format!("participant {p}: part {part} is not in the store"));
                }
            }
        }
        if missing == 0 && damaged == 0 {
            match coverage(&manifests) {
                Ok(()) => v.covers_key_groups = Some(true),
                Err(why) => {
                    v.covers_key_groups = Some(false);
                    damaged += 1;
                    v.problems.push(why);
                }
            }
        }
        v.state = if v.problems.is_empty() {
            "restorable"
        } else if !v.newest && damaged == 0 {
            "retired"
        } else {
            "damaged"
        };
        out.push(v);
    }
    Ok(out)
}

/// The parts' key groups (their subtasks' ranges) cover
/// `0..max_parallelism`, all of one `max_parallelism`: what a restore of
/// the cut needs (GlobalView's check, for every subtask at once).
fn coverage(parts: &[(u64, PartRef, Manifest)]) -> std::result::Result<(), String> {
    let Some((_, _, first)) = parts.first() else {
        return Err("no part".into());
    };
    let max = first.max_parallelism;
    let mut ranges = Vec::new();
    for (p, part, m) in parts {
        if m.max_parallelism != max {
            return Err(format!(
                "participant {p}: {part} has max_parallelism {}, another part {max}",
                m.max_parallelism
            ));
        }
        ranges.push(
            highwater::cluster::part_key_groups(part, m)
                .map_err(|e| format!("participant {p}: {e}"))?,
        );
    }
    match (0..max).find(|kg| !ranges.iter().any(|r| r.start <= *kg && *kg < r.end)) {
        Some(kg) => Err(format!(
            "no part holds key group {kg} of 0..{max} (the parts cover {}): not a complete cut",
            ranges
                .iter()
                .map(|r| format!("{}..{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}
