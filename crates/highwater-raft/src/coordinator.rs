//! [`CheckpointCoordinator`]: one node of the Raft group that keeps the
//! checkpoint ledger, and the API an engine uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use highwater_core::{CheckpointId, CheckpointStore, Clock, Error, ErrorKind, Result, SystemClock};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex as AsyncMutex, Notify, broadcast};
use tokio::task::JoinHandle;

use crate::TypeConfig;
use crate::auth::{ClusterSecret, Session, TOOL_IDENTITY, server_handshake};
use crate::error::{Classify, RemoteFailure, consensus};
use crate::ledger::{
    AbortReason, Command, CompletedCheckpoint, Ledger, ManifestRef, NodeId, Outcome, decide,
};
use crate::log_store::WalLogStore;
use crate::network::{
    AddressBook, CLIENT_IDLE, CallError, ClientAuth, Connection, ProposeError, Reply, Request,
    TcpNetwork, read_frame_body, read_frame_len, write_frame,
};
use crate::state_machine::{LedgerEvent, LedgerStateMachine};

/// Configuration of one coordinator node.
#[derive(Debug, Clone)]
pub struct DistributedConfig {
    /// This node's id (unique in the cluster, not 0).
    pub node_id: NodeId,
    /// Where this node accepts Raft and client traffic (port 0 picks one).
    pub listen: SocketAddr,
    /// How this node reaches each other node of the initial cluster (and,
    /// optionally, itself). Addresses given here win over the ones stored in
    /// the membership.
    pub peers: BTreeMap<NodeId, String>,
    /// The node's data directory: Raft log, snapshot pointer.
    pub data_dir: PathBuf,
    /// The shortest election timeout; each node picks its timeout at random
    /// in `[election_timeout, 2 × election_timeout)`.
    pub election_timeout: Duration,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// The leader triggers a checkpoint this often (`None`: only on request).
    pub checkpoint_interval: Option<Duration>,
    /// A pending checkpoint not fully acknowledged after this long is
    /// aborted; this is the partition tolerance of a checkpoint.
    pub checkpoint_timeout: Duration,
    /// Deadline of one request to another node.
    pub rpc_timeout: Duration,
    /// Build a state-machine snapshot (and purge the log) every this many
    /// applied entries.
    pub snapshot_every: u64,
    /// Join an existing cluster (do not initialize one); the leader must
    /// then [`add_node`](CheckpointCoordinator::add_node) this node.
    pub join: bool,
    /// The wall clock of trigger times and checkpoint timeouts
    /// ([`SystemClock`] unless a test injects another).
    pub clock: Arc<dyn Clock>,
    /// The per-cluster shared secret every connection authenticates with
    /// (see `docs/raft.md`, "Trust model"). Required:
    /// [`CheckpointCoordinator::start`] refuses to start without one.
    pub secret: Option<ClusterSecret>,
    /// The most connections the node serves at once (authenticated or
    /// not); further ones are closed as soon as they are accepted.
    /// Default 256.
    pub max_connections: usize,
    /// Which voters each checkpoint is triggered for (default
    /// [`Participants::AllVoters`]).
    pub participants: Participants,
    /// Fault injection for crash tests (default `None`): as the leader,
    /// exit the process with this code where it would propose a
    /// `Complete`, i.e. after every acknowledgement of the checkpoint is
    /// committed and before its completion is.
    pub exit_before_complete: Option<i32>,
}

/// Which voters the leader names as the participants of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Participants {
    /// Every voter. A checkpoint completes only with every voter's part,
    /// so a completed checkpoint is a cut of the whole job: what a job
    /// whose subtasks are spread over the nodes needs (and what a
    /// [`RaftParticipant`](crate::RaftParticipant) requires). While a voter
    /// is unreachable its checkpoints are aborted and no periodic trigger
    /// is made; remove it from the membership
    /// ([`remove_node`](CheckpointCoordinator::remove_node)) to go on
    /// without it.
    #[default]
    AllVoters,
    /// The voters the leader has heard from within the last election
    /// timeout: checkpoints go on while a node is down. Only for
    /// participants whose parts are independent of each other (a
    /// completed checkpoint may lack a part of an unreachable node).
    LiveVoters,
}

impl DistributedConfig {
    /// A configuration with defaults suited to a LAN: 300 ms election
    /// timeout, 50 ms heartbeats, 10 s checkpoint timeout.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
    ) -> DistributedConfig {
        DistributedConfig {
            node_id,
            listen,
            peers: BTreeMap::new(),
            data_dir: data_dir.into(),
            election_timeout: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            checkpoint_interval: None,
            checkpoint_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_millis(500),
            snapshot_every: 1000,
            join: false,
            clock: Arc::new(SystemClock),
            secret: None,
            max_connections: 256,
            participants: Participants::AllVoters,
            exit_before_complete: None,
        }
    }

    /// Sets [`DistributedConfig::secret`].
    pub fn secret(mut self, secret: ClusterSecret) -> DistributedConfig {
        self.secret = Some(secret);
        self
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.node_id == 0 {
            return bad("raft node id must not be 0".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.election_timeout
        {
            return bad(format!(
                "raft heartbeat interval must be positive and at most half the election timeout: heartbeat={:?} election={:?}",
                self.heartbeat_interval, self.election_timeout
            ));
        }
        if self.checkpoint_timeout.is_zero() || self.rpc_timeout.is_zero() {
            return bad("raft checkpoint and rpc timeouts must be positive".into());
        }
        if self.snapshot_every == 0 {
            return bad("raft snapshot_every must be positive".into());
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return bad("raft checkpoint interval must be positive".into());
        }
        if self.secret.is_none() {
            return bad(
                "raft nodes need the cluster secret: set DistributedConfig::secret \
                 (highwater coordinator --secret-file)"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return bad("raft max_connections must be positive".into());
        }
        Ok(())
    }

    fn members(&self) -> BTreeSet<NodeId> {
        let mut m: BTreeSet<NodeId> = self.peers.keys().copied().collect();
        m.insert(self.node_id);
        m
    }
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// This node.
    pub node_id: NodeId,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: u64,
    /// This node's role (`Leader`, `Follower`, `Candidate`, `Learner`).
    pub role: String,
    /// The voters of the current membership.
    pub voters: BTreeSet<NodeId>,
    /// The learners (non-voting members) of the current membership.
    pub learners: BTreeSet<NodeId>,
    /// Index of this node's last log entry.
    pub last_log_index: u64,
    /// Index of the last entry applied to this node's ledger.
    pub last_applied: u64,
    /// On the leader: how many entries each member is behind the leader's
    /// log (empty elsewhere).
    pub lag: BTreeMap<NodeId, u64>,
}

/// What a node reports about itself over the network (tests and tools).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Cluster view.
    pub health: ClusterHealth,
    /// The node's ledger as applied.
    pub ledger: Ledger,
}

struct Shared {
    id: NodeId,
    secret: ClusterSecret,
    /// The snapshot being received, checked before openraft sees a chunk;
    /// held while openraft writes one, so chunks are checked and written in
    /// one order.
    snapshot_rx: AsyncMutex<SnapshotReceipt>,
    raft: Raft<TypeConfig>,
    sm: LedgerStateMachine,
    book: AddressBook,
    config: DistributedConfig,
    propose_lock: AsyncMutex<()>,
    trigger_now: Notify,
    /// On the leader: for each follower, the last matched index seen and
    /// when it last advanced or equalled the leader's last index.
    liveness: std::sync::Mutex<BTreeMap<NodeId, (Option<u64>, tokio::time::Instant)>>,
}

/// A node of the checkpoint-coordination group.
///
/// The leader triggers checkpoints (on an interval and on
/// [`trigger_checkpoint`](Self::trigger_checkpoint)); every participant
/// learns of a trigger when it applies the replicated entry and receives a
/// [`LedgerEvent::Barrier`] from [`events`](Self::events); it takes its part
/// of the checkpoint and calls [`report_completion`](Self::report_completion).
/// The leader appends `Complete` once every participant's acknowledgement is
/// applied, and `Abort` after the checkpoint timeout or when a participant
/// leaves the membership.
pub struct CheckpointCoordinator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    log: WalLogStore,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a request on this node, which must be the leader, failed.
#[derive(Debug)]
enum LocalProposeError {
    /// This node is not the leader; the hint may be.
    NotLeader(Option<NodeId>),
    /// Raft refused or failed the request, classified.
    Raft(ErrorKind, highwater_core::BoxError),
}

impl LocalProposeError {
    /// A failure of openraft, or "not the leader" when it says so.
    fn raft<E>(e: RaftError<NodeId, E>) -> LocalProposeError
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        LocalProposeError::Raft(e.kind(), Box::new(e))
    }

    /// The answer to a request forwarded by another node (which gets text).
    fn into_wire(self) -> ProposeError {
        match self {
            LocalProposeError::NotLeader(hint) => ProposeError::NotLeader(hint),
            LocalProposeError::Raft(_, e) => ProposeError::Failed(e.to_string()),
        }
    }

    /// The error for a caller of `op` on this node.
    fn into_error(self, op: &str) -> Error {
        match self {
            LocalProposeError::NotLeader(hint) => Error::consensus(
                ErrorKind::Unavailable,
                op,
                format!("this node is not the leader: leader={hint:?}"),
            ),
            LocalProposeError::Raft(kind, e) => Error::consensus(kind, op, e),
        }
    }
}

/// The operation a ledger command carries out, as errors name it.
fn command_op(command: &Command) -> String {
    match command {
        Command::Trigger { checkpoint, .. } => format!("trigger checkpoint {checkpoint}"),
        Command::Ack {
            checkpoint, node, ..
        } => format!("acknowledge checkpoint {checkpoint} for node {node}"),
        Command::Complete { checkpoint } => format!("complete checkpoint {checkpoint}"),
        Command::Abort { checkpoint, .. } => format!("abort checkpoint {checkpoint}"),
    }
}

impl CheckpointCoordinator {
    /// Starts a node: opens its log and state machine in
    /// `config.data_dir` (snapshots go to `store`), listens on
    /// `config.listen`, and, unless `config.join`, initializes the cluster
    /// of `config.peers` (a no-op when the node already has state).
    pub async fn start(
        config: DistributedConfig,
        store: Arc<dyn CheckpointStore>,
    ) -> Result<CheckpointCoordinator> {
        config.validate()?;
        let io = |what: String| {
            move |source| Error::Io {
                context: what,
                source,
            }
        };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io(format!("creating {}", config.data_dir.display())))?;
        let log_dir = config.data_dir.join("raft-log");
        let log = {
            let dir = log_dir.clone();
            tokio::task::spawn_blocking(move || WalLogStore::open(&dir))
                .await
                .map_err(|e| Error::unexpected("open the raft log", e))??
        };
        let sm = LedgerStateMachine::open(config.node_id, &config.data_dir, store).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io(format!("binding {}", config.listen)))?;
        let addr = listener.local_addr().map_err(io("local address".into()))?;
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "highwater".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            install_snapshot_timeout: config.rpc_timeout.as_millis() as u64 * 4,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 100,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| Error::InvalidArgument(format!("raft configuration: {e}")))?;
        let mut book_entries = config.peers.clone();
        book_entries
            .entry(config.node_id)
            .or_insert_with(|| addr.to_string());
        let book = AddressBook::new(book_entries);
        let secret = config
            .secret
            .clone()
            .ok_or_else(|| Error::InvalidArgument("raft cluster secret missing".into()))?;
        let network = TcpNetwork {
            book: book.clone(),
            retry_backoff: config.heartbeat_interval,
            secret: secret.clone(),
            me: config.node_id,
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| consensus("start the raft node", e))?;
        if !config.join {
            let members: BTreeMap<NodeId, BasicNode> = config
                .members()
                .into_iter()
                .map(|id| (id, BasicNode::default()))
                .collect();
            if !raft
                .is_initialized()
                .await
                .map_err(|e| consensus("initialize the cluster", e))?
            {
                // Every initial node initializes with the same membership;
                // on all but the first this is refused, which is harmless.
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!(node = config.node_id, error = %e, "initialize refused");
                }
            }
        }
        let shared = Arc::new(Shared {
            id: config.node_id,
            secret,
            snapshot_rx: AsyncMutex::new(SnapshotReceipt::default()),
            raft,
            sm,
            book,
            config,
            propose_lock: AsyncMutex::new(()),
            trigger_now: Notify::new(),
            liveness: std::sync::Mutex::new(BTreeMap::new()),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        let driver = tokio::spawn(drive(shared.clone()));
        let leaders = tokio::spawn(crate::metrics::count_leader_changes(shared.raft.metrics()));
        Ok(CheckpointCoordinator {
            shared,
            addr,
            log,
            tasks: vec![server, driver, leaders],
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.id
    }

    /// The underlying openraft handle, for metrics and direct writes
    /// (benchmarks compare with its raw `client_write`).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.shared.raft
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ledger events applied from now on: barriers for checkpoints this node
    /// participates in, completions and aborts. See
    /// [`pending_barriers`](Self::pending_barriers) for the ones before.
    pub fn events(&self) -> broadcast::Receiver<LedgerEvent> {
        self.shared.sm.subscribe()
    }

    /// Barriers for the checkpoints still pending in this node's ledger that
    /// this node participates in and has not acknowledged: those triggered
    /// before [`events`](Self::events) was called (for example before a
    /// restart). Subscribe first, then call this, and no barrier is missed.
    /// With [`Participants::AllVoters`], only checkpoints that name every
    /// voter of this node's membership: one triggered before a voter joined
    /// is never a cut of the job, and the leader aborts it.
    pub fn pending_barriers(&self) -> Vec<LedgerEvent> {
        let id = self.shared.id;
        // With every voter taking part, a checkpoint that does not name
        // every voter of this node's view was triggered before one joined:
        // a part of it would not make a cut of the job (found by the
        // cluster demo's rescale 3 -> 4: three nodes completed a checkpoint
        // with parts laid out for four). The leader aborts it.
        // Called at every event boundary of a participant: the ledger is
        // read in place, and the membership only when a barrier is pending.
        let pending: Vec<(CheckpointId, u64, BTreeSet<NodeId>)> = self.shared.sm.with_ledger(|l| {
            l.pending()
                .filter(|c| c.participants.contains(&id) && !c.acks.contains_key(&id))
                .map(|c| (c.id, c.triggered_ms, c.participants.clone()))
                .collect()
        });
        if pending.is_empty() {
            return Vec::new();
        }
        let voters: Option<BTreeSet<NodeId>> =
            (self.shared.config.participants == Participants::AllVoters).then(|| {
                self.shared
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            });
        pending
            .into_iter()
            .filter(|(_, _, p)| voters.as_ref().is_none_or(|v| v.is_subset(p)))
            .map(|(checkpoint, time_ms, _)| LedgerEvent::Barrier {
                checkpoint,
                time_ms,
            })
            .collect()
    }

    /// The newest checkpoint this node has applied as completed.
    pub fn latest_completed(&self) -> Option<CompletedCheckpoint> {
        self.shared.sm.ledger().latest_completed().cloned()
    }

    /// Which voters this node, as the leader, names as the participants of
    /// a checkpoint.
    pub fn participants(&self) -> Participants {
        self.shared.config.participants
    }

    /// A copy of this node's ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.sm.ledger()
    }

    /// This node's view of the cluster.
    pub fn cluster_health(&self) -> ClusterHealth {
        health(&self.shared)
    }

    /// Waits until this node knows a leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId> {
        let mut rx = self.shared.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow().current_leader {
                    return Ok(l);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed("raft node stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::consensus(
                ErrorKind::Unavailable,
                "wait for a leader",
                format!("no leader after {timeout:?}"),
            )
        })?
    }

    /// Triggers a checkpoint now. Only the leader can; elsewhere this fails
    /// with an error naming the leader.
    pub async fn trigger_checkpoint(&self) -> Result<CheckpointId> {
        trigger(&self.shared).await
    }

    /// Records that `node` made its part of `checkpoint` durable at
    /// `manifest`. Works on any node: followers forward to the leader,
    /// retrying through elections until the checkpoint timeout.
    pub async fn report_completion(
        &self,
        checkpoint: CheckpointId,
        node: NodeId,
        manifest: ManifestRef,
    ) -> Result<Outcome> {
        if manifest.0.len() > crate::ledger::MAX_MANIFEST_REF_LEN {
            return Err(Error::InvalidArgument(format!(
                "manifest reference too long: len={} max={}",
                manifest.0.len(),
                crate::ledger::MAX_MANIFEST_REF_LEN
            )));
        }
        propose_anywhere(
            &self.shared,
            Command::Ack {
                checkpoint,
                node,
                manifest,
            },
        )
        .await
    }

    /// Waits until this node's ledger holds every entry the cluster had
    /// committed when this was called (a read index from the leader,
    /// confirmed by a majority, then applied here): after it, this node's
    /// answers about completed checkpoints are at least as new as any other
    /// node's were. A node that rejoins after a crash may apply the
    /// cluster's history lagging behind; restoring from that stale view
    /// would pick a global checkpoint its peers have already moved past
    /// (and deleted). Fails with [`ErrorKind::Unavailable`] when no
    /// majority answers within the checkpoint timeout.
    pub async fn sync_ledger(&self) -> Result<()> {
        let shared = &self.shared;
        let op = "read the committed ledger";
        let index = on_leader(
            shared,
            op,
            || read_index_local(shared),
            || Request::ReadIndex,
            |reply| match reply {
                Reply::ReadIndex(r) => Ok(r),
                other => Err(Box::new(other)),
            },
        )
        .await?;
        shared
            .raft
            .wait(Some(shared.config.checkpoint_timeout))
            .applied_index_at_least(Some(index), op)
            .await
            .map_err(|e| Error::consensus(ErrorKind::Unavailable, op, e.to_string()))?;
        Ok(())
    }

    /// Aborts a pending checkpoint (forwarded to the leader).
    pub async fn abort_checkpoint(
        &self,
        checkpoint: CheckpointId,
        why: impl Into<String>,
    ) -> Result<Outcome> {
        propose_anywhere(
            &self.shared,
            Command::Abort {
                checkpoint,
                reason: AbortReason::Requested(why.into()),
            },
        )
        .await
    }

    /// Adds node `id` (reached at `addr`) as a voter. Call on the leader.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<()> {
        self.shared.book.insert(id, addr.clone());
        let raft = &self.shared.raft;
        raft.add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| consensus(format!("add node {id} as a learner"), e))?;
        let mut voters: BTreeSet<NodeId> = self.cluster_health().voters;
        voters.insert(id);
        raft.change_membership(voters, false)
            .await
            .map_err(|e| consensus(format!("change membership to add node {id}"), e))?;
        Ok(())
    }

    /// Removes node `id` from the voters (and the cluster). Call on the
    /// leader. Pending checkpoints it participates in are then aborted.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        let mut voters = self.cluster_health().voters;
        if !voters.remove(&id) {
            return Err(Error::NotFound(format!("raft voter {id}")));
        }
        self.shared
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| consensus(format!("change membership to remove node {id}"), e))?;
        Ok(())
    }

    /// Stops the node: Raft, server and driver; the log is closed durably.
    pub async fn shutdown(self) -> Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        self.shared
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::unexpected("shut down the raft node", e))?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(|e| Error::unexpected("close the raft log", e))?
    }
}

impl Drop for CheckpointCoordinator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn health(shared: &Shared) -> ClusterHealth {
    let m = shared.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect()
        })
        .unwrap_or_default();
    ClusterHealth {
        node_id: shared.id,
        leader: m.current_leader,
        term: m.current_term,
        role: format!("{:?}", m.state),
        voters,
        learners,
        last_log_index: last,
        last_applied: m.last_applied.map_or(0, |l| l.index),
        lag,
    }
}

fn is_leader(shared: &Shared) -> bool {
    let m = shared.raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(shared.id)
}

/// Proposes on this node, which must be the leader.
async fn propose_local(
    shared: &Shared,
    command: Command,
) -> std::result::Result<Outcome, LocalProposeError> {
    match shared.raft.client_write(command).await {
        Ok(r) => Ok(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(LocalProposeError::NotLeader(f.leader_id))
        }
        Err(e) => Err(LocalProposeError::raft(e)),
    }
}

/// The leader's read index, confirmed by a majority: every entry committed
/// before the call is at or below it. On this node, which must be the
/// leader.
async fn read_index_local(shared: &Shared) -> std::result::Result<u64, LocalProposeError> {
    match shared.raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(LocalProposeError::NotLeader(f.leader_id))
        }
        Err(e) => Err(LocalProposeError::raft(e)),
    }
}

/// Proposes on the leader, wherever it is, retrying transient failures (no
/// leader, not the leader, an unreachable or failing leader) until the
/// checkpoint timeout. A permanent failure (this node's Raft stopped, a
/// reply that breaks the protocol) is returned at once.
async fn propose_anywhere(shared: &Shared, command: Command) -> Result<Outcome> {
    let op = command_op(&command);
    on_leader(
        shared,
        &op,
        || propose_local(shared, command.clone()),
        || Request::Propose(command.clone()),
        |reply| match reply {
            Reply::Proposed(r) => Ok(r),
            other => Err(Box::new(other)),
        },
    )
    .await
}

/// Runs a request on the leader, wherever it is: `local` when this node
/// leads, else `remote()` sent to the leader and its reply read by `take`;
/// transient failures are retried until the checkpoint timeout.
async fn on_leader<T, L, F>(
    shared: &Shared,
    op: &str,
    local: L,
    remote: impl Fn() -> Request,
    take: impl Fn(Reply) -> std::result::Result<std::result::Result<T, ProposeError>, Box<Reply>>,
) -> Result<T>
where
    L: Fn() -> F,
    F: std::future::Future<Output = std::result::Result<T, LocalProposeError>>,
{
    let timeout = shared.config.checkpoint_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conns: BTreeMap<NodeId, Connection> = BTreeMap::new();
    loop {
        let leader = shared.raft.metrics().borrow().current_leader;
        let failure = match leader {
            Some(l) if l == shared.id => match local().await {
                Ok(out) => return Ok(out),
                Err(e) => e.into_error(op),
            },
            Some(l) => {
                let conn = conns.entry(l).or_insert_with(|| {
                    // The address given at start, or the one in the
                    // membership (nodes added with `add_node`).
                    let metrics = shared.raft.metrics().borrow().clone();
                    let node = metrics.membership_config.membership().get_node(&l).cloned();
                    Connection::new(
                        shared.book.resolve(l, node.as_ref()),
                        ClientAuth {
                            secret: shared.secret.clone(),
                            me: shared.id,
                            expect: Some(l),
                        },
                    )
                });
                match conn
                    .call(&remote(), shared.config.rpc_timeout)
                    .await
                    .map(&take)
                {
                    Ok(Ok(Ok(out))) => return Ok(out),
                    Ok(Ok(Err(ProposeError::NotLeader(hint)))) => Error::consensus(
                        ErrorKind::Unavailable,
                        op,
                        format!("node {l} is not the leader: leader={hint:?}"),
                    ),
                    Ok(Ok(Err(ProposeError::Failed(text)))) => {
                        Error::consensus(ErrorKind::Unavailable, op, RemoteFailure(text))
                    }
                    Ok(Err(other)) => Error::consensus(
                        ErrorKind::Internal,
                        op,
                        format!("unexpected reply from node {l}: {other:?}"),
                    ),
                    // Whatever the cause, the leader may be reachable later.
                    Err(CallError::Unreachable(e)) => {
                        Error::consensus(ErrorKind::Unavailable, op, e)
                    }
                    Err(CallError::Failed(e)) => Error::consensus(e.kind(), op, e),
                }
            }
            None => Error::consensus(ErrorKind::Unavailable, op, "no leader is known"),
        };
        if !failure.is_transient() {
            return Err(failure);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::consensus(
                ErrorKind::Unavailable,
                format!("{op} (gave up after the checkpoint timeout of {timeout:?})"),
                failure,
            ));
        }
        tokio::time::sleep(shared.config.heartbeat_interval).await;
    }
}

/// Updates the leader's view of which followers keep up: a follower is live
/// while its matched index equals the leader's last index or advanced within
/// the last election timeout.
fn observe_liveness(shared: &Shared) {
    let m = shared.raft.metrics().borrow().clone();
    let now = tokio::time::Instant::now();
    let mut live = shared.liveness.lock().unwrap_or_else(|p| p.into_inner());
    let Some(replication) = m.replication.as_ref() else {
        live.clear();
        return;
    };
    let last = m.last_log_index;
    for (id, matched) in replication.iter() {
        let matched = matched.map(|l| l.index);
        match live.get_mut(id) {
            Some((seen, at)) => {
                if *seen != matched || matched == last {
                    *seen = matched;
                    *at = now;
                }
            }
            None => {
                live.insert(*id, (matched, now));
            }
        }
    }
}

/// The voters the leader currently considers live (itself always).
fn live_voters(shared: &Shared) -> BTreeSet<NodeId> {
    let voters = health(shared).voters;
    let window = shared.config.election_timeout;
    let live = shared.liveness.lock().unwrap_or_else(|p| p.into_inner());
    voters
        .into_iter()
        .filter(|v| *v == shared.id || live.get(v).is_none_or(|(_, at)| at.elapsed() < window))
        .collect()
}

async fn trigger(shared: &Shared) -> Result<CheckpointId> {
    let _guard = shared.propose_lock.lock().await;
    if !is_leader(shared) {
        let leader = shared.raft.metrics().borrow().current_leader;
        return Err(Error::consensus(
            ErrorKind::Unavailable,
            "trigger a checkpoint",
            format!("this node is not the leader: leader={leader:?}"),
        ));
    }
    let participants = match shared.config.participants {
        Participants::AllVoters => health(shared).voters,
        Participants::LiveVoters => live_voters(shared),
    };
    let checkpoint = shared.sm.ledger().next_id();
    let command = Command::Trigger {
        checkpoint,
        time_ms: shared.config.clock.now_ms(),
        participants,
    };
    let op = command_op(&command);
    match propose_local(shared, command).await {
        Ok(Outcome::Triggered(id)) => Ok(id),
        // The ledger moved on (another trigger won): a new trigger gets a
        // new id.
        Ok(other) => Err(Error::consensus(
            ErrorKind::Unavailable,
            op,
            format!("not accepted: {other:?}"),
        )),
        Err(e) => Err(e.into_error(&op)),
    }
}

/// The leader's background work: periodic triggers, completing fully
/// acknowledged checkpoints, aborting stale ones.
async fn drive(shared: Arc<Shared>) {
    let mut applied = shared.sm.applied_index();
    let poll = shared.config.heartbeat_interval;
    let mut last_trigger = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = applied.changed() => {}
            _ = shared.trigger_now.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        if !is_leader(&shared) {
            shared
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            continue;
        }
        observe_liveness(&shared);
        let ledger = shared.sm.ledger();
        let voters = health(&shared).voters;
        let live = live_voters(&shared);
        let now = shared.config.clock.now_ms();
        let timeout = shared.config.checkpoint_timeout.as_millis() as u64;
        let every_voter = shared.config.participants == Participants::AllVoters;
        for d in decide(&ledger, &voters, &live, every_voter, now, timeout) {
            if let (Command::Complete { checkpoint }, Some(code)) =
                (&d, shared.config.exit_before_complete)
            {
                eprintln!(
                    "exiting before the completion of checkpoint {checkpoint} (fault injection)"
                );
                std::process::exit(code);
            }
            let _guard = shared.propose_lock.lock().await;
            if let Err(e) = propose_local(&shared, d).await {
                tracing::debug!(node = shared.id, error = ?e, "ledger decision not committed");
                break;
            }
        }
        // With every voter taking part, a trigger while one is
        // unreachable would only be aborted.
        let all_live = shared.config.participants == Participants::LiveVoters || live == voters;
        if let Some(every) = shared.config.checkpoint_interval
            && last_trigger.elapsed() >= every
            && ledger.pending().next().is_none()
            && all_live
        {
            last_trigger = tokio::time::Instant::now();
            if let Err(e) = trigger(&shared).await {
                tracing::debug!(node = shared.id, error = %e, "periodic trigger failed");
            }
        }
    }
}

/// How long a new connection has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may wait between requests before it is closed
/// (clients re-dial after [`CLIENT_IDLE`], half of it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(2 * CLIENT_IDLE.as_secs());
/// How long the rest of a frame may take to arrive once its length has.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest term or log index accepted from a peer. openraft computes
/// `term + 1` (and index + 1) with checked arithmetic that panics on
/// overflow, and persists a vote it accepted, so one frame carrying
/// `u64::MAX` would disable a node for good; no real cluster gets near
/// half of `u64`.
pub const MAX_PEER_TERM_OR_INDEX: u64 = u64::MAX / 2;

fn log_id_ok(l: Option<&openraft::LogId<NodeId>>) -> bool {
    l.is_none_or(|l| {
        l.leader_id.term <= MAX_PEER_TERM_OR_INDEX && l.index <= MAX_PEER_TERM_OR_INDEX
    })
}

fn vote_ok(v: &openraft::Vote<NodeId>) -> bool {
    v.leader_id.term <= MAX_PEER_TERM_OR_INDEX
}

/// Why a request from `peer` is refused before openraft or the ledger sees
/// it (`None`: accepted): every term and log index within
/// [`MAX_PEER_TERM_OR_INDEX`]; Raft RPCs only from nodes (not tools), each
/// speaking for itself (the vote it carries names the authenticated node);
/// acknowledgements only by the participant itself; other proposals only
/// from nodes.
pub(crate) fn refusal(peer: NodeId, request: &Request) -> Option<String> {
    let rpc_sender = |v: &openraft::Vote<NodeId>| -> Option<String> {
        if peer == TOOL_IDENTITY {
            Some("a tool may not send raft rpcs".into())
        } else if v.leader_id.node_id != peer {
            Some(format!(
                "node {peer} sent a raft rpc as node {}",
                v.leader_id.node_id
            ))
        } else if !vote_ok(v) {
            Some(format!("term out of range: term={}", v.leader_id.term))
        } else {
            None
        }
    };
    match request {
        Request::Append(r) => rpc_sender(&r.vote).or_else(|| {
            let ok = log_id_ok(r.prev_log_id.as_ref())
                && log_id_ok(r.leader_commit.as_ref())
                && r.entries.iter().all(|e| log_id_ok(Some(&e.log_id)));
            (!ok).then(|| "append entries: term or index out of range".into())
        }),
        Request::Vote(r) => rpc_sender(&r.vote).or_else(|| {
            (!log_id_ok(r.last_log_id.as_ref())).then(|| "vote: last log id out of range".into())
        }),
        Request::Snapshot(r) => rpc_sender(&r.vote).or_else(|| {
            let ok = log_id_ok(r.meta.last_log_id.as_ref())
                && log_id_ok(r.meta.last_membership.log_id().as_ref());
            (!ok).then(|| "install snapshot: term or index out of range".into())
        }),
        Request::Propose(Command::Ack { node, .. }) if *node != peer => Some(format!(
            "{} may not acknowledge for node {node}",
            if peer == TOOL_IDENTITY {
                "a tool".to_string()
            } else {
                format!("node {peer}")
            }
        )),
        Request::Propose(_) if peer == TOOL_IDENTITY => {
            Some("a tool may not propose ledger commands".into())
        }
        Request::Propose(_) | Request::Status | Request::Trigger | Request::ReadIndex => None,
    }
}

/// The snapshot a node is receiving, as far as the network layer has
/// checked it.
#[derive(Debug, Default)]
pub(crate) struct SnapshotReceipt {
    /// The snapshot being received.
    id: Option<String>,
    /// Bytes received from offset 0 on without a gap.
    received: u64,
}

impl SnapshotReceipt {
    /// Checks a chunk before openraft writes it into its buffer (which it
    /// would zero-fill up to any offset): within
    /// [`MAX_SNAPSHOT_BYTES`](crate::MAX_SNAPSHOT_BYTES) in total, and
    /// starting a snapshot at offset 0 or continuing the current one
    /// without skipping ahead. `Ok` is the end of the chunk; `Err` the
    /// offset a real leader should resume from ([`snapshot_mismatch`]).
    pub(crate) fn check(
        &self,
        r: &openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> std::result::Result<u64, u64> {
        let current = self.id.as_deref() == Some(r.meta.snapshot_id.as_str());
        let resume = if current { self.received } else { 0 };
        let end = r
            .offset
            .checked_add(r.data.len() as u64)
            .filter(|e| *e <= crate::MAX_SNAPSHOT_BYTES as u64)
            .ok_or(resume)?;
        if r.offset != 0 && r.offset > resume {
            return Err(resume);
        }
        Ok(end)
    }

    /// Records a chunk openraft accepted.
    fn record(&mut self, offset: u64, id: String, end: u64) {
        if offset == 0 {
            self.id = Some(id);
            self.received = end;
        } else {
            self.received = self.received.max(end);
        }
    }
}

/// openraft's answer to a chunk that does not continue the snapshot:
/// resume `r`'s snapshot at `expect`.
fn snapshot_mismatch(r: &openraft::raft::InstallSnapshotRequest<TypeConfig>, expect: u64) -> Reply {
    Reply::Snapshot(Err(RaftError::APIError(
        openraft::error::InstallSnapshotError::SnapshotMismatch(
            openraft::error::SnapshotMismatch {
                expect: openraft::SnapshotSegmentId {
                    id: r.meta.snapshot_id.clone(),
                    offset: expect,
                },
                got: openraft::SnapshotSegmentId {
                    id: r.meta.snapshot_id.clone(),
                    offset: r.offset,
                },
            },
        ),
    )))
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(shared.config.max_connections));
    // Owned here: when the node shuts down (this task is aborted), its
    // connections end with it instead of answering for a stopped node.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(node = shared.id, %from, max = shared.config.max_connections,
                "closing a raft connection: connection limit reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            connection(stream, shared).await;
            drop(permit);
        });
    }
}

async fn connection(mut stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut session: Session = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server_handshake(&mut stream, &shared.secret, shared.id),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(node = shared.id, error = %e, "refused a raft connection");
            return;
        }
        Err(_) => {
            tracing::debug!(node = shared.id, "raft handshake timed out");
            return;
        }
    };
    let peer = session.peer;
    loop {
        let len = match tokio::time::timeout(IDLE_TIMEOUT, read_frame_len(&mut stream)).await {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::debug!(node = shared.id, peer, error = %e, "dropping a raft connection");
                return;
            }
        };
        let request: Request = match tokio::time::timeout(
            FRAME_TIMEOUT,
            read_frame_body(&mut stream, &mut session, len),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(node = shared.id, peer, error = %e, "dropping a raft connection");
                return;
            }
            Err(_) => {
                tracing::debug!(node = shared.id, peer, len, "raft frame timed out");
                return;
            }
        };
        if let Some(why) = refusal(peer, &request) {
            tracing::warn!(
                node = shared.id,
                peer,
                why,
                "refused a raft request; closing"
            );
            return;
        }
        let reply = match request {
            Request::Append(r) => Reply::Append(shared.raft.append_entries(r).await),
            Request::Snapshot(r) => {
                let mut receipt = shared.snapshot_rx.lock().await;
                match receipt.check(&r) {
                    Ok(end) => {
                        let (offset, id) = (r.offset, r.meta.snapshot_id.clone());
                        let reply = shared.raft.install_snapshot(r).await;
                        if reply.is_ok() {
                            receipt.record(offset, id, end);
                        }
                        Reply::Snapshot(reply)
                    }
                    Err(resume) => snapshot_mismatch(&r, resume),
                }
            }
            Request::Vote(r) => Reply::Vote(shared.raft.vote(r).await),
            Request::Propose(c) => {
                if is_leader(&shared) {
                    Reply::Proposed(
                        propose_local(&shared, c)
                            .await
                            .map_err(LocalProposeError::into_wire),
                    )
                } else {
                    Reply::Proposed(Err(ProposeError::NotLeader(
                        shared.raft.metrics().borrow().current_leader,
                    )))
                }
            }
            Request::Trigger => {
                if is_leader(&shared) {
                    Reply::Proposed(match trigger(&shared).await {
                        Ok(id) => Ok(Outcome::Triggered(id)),
                        Err(e) => Err(ProposeError::Failed(e.to_string())),
                    })
                } else {
                    Reply::Proposed(Err(ProposeError::NotLeader(
                        shared.raft.metrics().borrow().current_leader,
                    )))
                }
            }
            Request::ReadIndex => Reply::ReadIndex(
                read_index_local(&shared)
                    .await
                    .map_err(LocalProposeError::into_wire),
            ),
            Request::Status => Reply::Status(Box::new(NodeStatus {
                health: health(&shared),
                ledger: shared.sm.ledger(),
            })),
        };
        if write_frame(&mut stream, &mut session, &reply)
            .await
            .is_err()
        {
            return;
        }
    }
}
