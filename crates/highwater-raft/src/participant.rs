//! [`RaftParticipant`]: a node's ledger as the [`Coordinator`] of its
//! state manager's global checkpoints.

use std::future::Future;
use std::sync::Arc;

use highwater_core::{
    CheckpointId, Coordinator, Error, GlobalCheckpoint, GlobalStatus, PartRef, ParticipantId,
    Result,
};
use tokio::runtime::Handle;

use crate::coordinator::{CheckpointCoordinator, Participants};
use crate::ledger::{CheckpointRecord, CheckpointState, Ledger, ManifestRef, Outcome};

/// The [`Coordinator`] of a cluster job's global checkpoints on one node:
/// barriers are the triggers this node takes part in (the leader triggers
/// them, every `checkpoint_interval` or on request), acknowledgements are
/// ledger `Ack`s naming the part (`<scope>@<id>`), and a checkpoint is
/// complete when the replicated ledger says so: the same answer on every
/// node, across crashes and partitions.
///
/// Its blocking methods run the node's requests on `io` (the runtime the
/// coordinator runs on) and wait for them; call them from threads that
/// are not that runtime's workers (a processing thread, a checkpoint
/// worker).
pub struct RaftParticipant {
    node: Arc<CheckpointCoordinator>,
    io: Handle,
    timeout: std::time::Duration,
}

/// How long a request of a [`RaftParticipant`] (an acknowledgement, a
/// decline) may take by default before it fails with
/// [`ErrorKind::Unavailable`](highwater_core::ErrorKind::Unavailable): a
/// node cut off from a majority never gets an answer.
pub const PARTICIPANT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for RaftParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftParticipant")
            .field("node", &self.node.node_id())
            .field("addr", &self.node.local_addr())
            .finish()
    }
}

impl RaftParticipant {
    /// The participant of `node`, whose runtime is `io`. The node must
    /// name every voter as a participant of its checkpoints
    /// ([`Participants::AllVoters`], the default): a cut without some
    /// node's part is not the job's state ([`ErrorKind::Invalid`]
    /// otherwise).
    ///
    /// [`ErrorKind::Invalid`]: highwater_core::ErrorKind::Invalid
    pub fn new(node: Arc<CheckpointCoordinator>, io: Handle) -> Result<RaftParticipant> {
        if node.participants() != Participants::AllVoters {
            return Err(Error::InvalidArgument(format!(
                "node {} triggers checkpoints for {:?}; a job's global checkpoints need every node's part: start it with Participants::AllVoters",
                node.node_id(),
                node.participants()
            )));
        }
        Ok(RaftParticipant {
            node,
            io,
            timeout: PARTICIPANT_REQUEST_TIMEOUT,
        })
    }

    /// Sets how long a request may take (default
    /// [`PARTICIPANT_REQUEST_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> RaftParticipant {
        self.timeout = timeout;
        self
    }

    /// Runs `fut` (operation `op`) on the node's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        op: String,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.io.spawn(async move {
            let out = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::consensus(
                        highwater_core::ErrorKind::Unavailable,
                        op,
                        format!("no answer from a majority within {timeout:?}"),
                    ))
                });
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| Error::Closed("the raft node's runtime stopped".into()))?
    }
}

/// A completed ledger record as a global checkpoint; a part reference a
/// peer wrote that does not parse is a corruption error.
fn global(
    id: CheckpointId,
    acks: &std::collections::BTreeMap<u64, ManifestRef>,
) -> Result<GlobalCheckpoint> {
    let parts = acks
        .iter()
        .map(|(node, r)| Ok((*node, PartRef::parse(&r.0)?)))
        .collect::<Result<_>>()?;
    Ok(GlobalCheckpoint { id, parts })
}

/// The completed checkpoints of the ledger's history, newest first.
fn completed_records(ledger: &Ledger) -> Vec<&CheckpointRecord> {
    let mut out: Vec<&CheckpointRecord> = ledger
        .checkpoints()
        .filter(|c| matches!(c.state, CheckpointState::Completed { .. }))
        .collect();
    out.reverse();
    out
}

impl Coordinator for RaftParticipant {
    fn participant(&self) -> ParticipantId {
        self.node.node_id()
    }

    fn next_barrier(&self, after: Option<CheckpointId>) -> Result<Option<CheckpointId>> {
        Ok(self
            .node
            .pending_barriers()
            .into_iter()
            .filter_map(|e| match e {
                crate::LedgerEvent::Barrier { checkpoint, .. } => Some(checkpoint),
                _ => None,
            })
            .filter(|id| after.is_none_or(|a| *id > a))
            .min())
    }

    fn acknowledge(&self, checkpoint: CheckpointId, part: &PartRef) -> Result<()> {
        let node = self.node.clone();
        let me = node.node_id();
        let reference = ManifestRef(part.to_string());
        let op = format!("acknowledge checkpoint {checkpoint} for node {me}");
        let sent = reference.clone();
        match self.run(op, async move {
            node.report_completion(checkpoint, me, sent).await
        })? {
            Outcome::Rejected(why) => {
                // A retried acknowledgement whose first attempt was
                // recorded (its answer lost with a leader that died) is
                // refused as finished: it is acknowledged all the same
                // (found by the cluster demo's node kills).
                self.sync()?;
                let ledger = self.node.ledger();
                let recorded = ledger
                    .get(checkpoint)
                    .is_some_and(|r| r.acks.get(&me) == Some(&reference))
                    || ledger.latest_completed().is_some_and(|c| {
                        c.id == checkpoint && c.manifests.get(&me) == Some(&reference)
                    });
                if recorded {
                    return Ok(());
                }
                Err(Error::InvalidArgument(format!(
                    "the ledger refused the acknowledgement of checkpoint {checkpoint}: {why}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn decline(&self, checkpoint: CheckpointId, reason: &str) -> Result<()> {
        let node = self.node.clone();
        let why = format!("node {}: {reason}", node.node_id());
        // Rejected when it is no longer pending: nothing to abort then.
        let op = format!("decline checkpoint {checkpoint}");
        self.run(
            op,
            async move { node.abort_checkpoint(checkpoint, why).await },
        )?;
        Ok(())
    }

    /// A read index from the leader, applied here
    /// ([`CheckpointCoordinator::sync_ledger`]).
    fn sync(&self) -> Result<()> {
        let node = self.node.clone();
        self.run("sync the ledger view".into(), async move {
            node.sync_ledger().await
        })
    }

    fn completed(&self, limit: usize) -> Result<Vec<GlobalCheckpoint>> {
        let ledger = self.node.ledger();
        let mut out: Vec<GlobalCheckpoint> = completed_records(&ledger)
            .into_iter()
            .take(limit)
            .map(|c| global(c.id, &c.acks))
            .collect::<Result<_>>()?;
        // The newest completion is kept even when pruned from the history.
        if let Some(latest) = ledger.latest_completed()
            && limit > 0
            && out.first().is_none_or(|g| g.id < latest.id)
        {
            out.insert(0, global(latest.id, &latest.manifests)?);
            out.truncate(limit);
        }
        Ok(out)
    }

    fn status(&self, checkpoint: CheckpointId) -> Result<GlobalStatus> {
        let ledger = self.node.ledger();
        Ok(match ledger.get(checkpoint).map(|c| &c.state) {
            Some(CheckpointState::Pending) => GlobalStatus::Pending,
            Some(CheckpointState::Completed { .. }) => GlobalStatus::Completed,
            Some(CheckpointState::Aborted { .. }) => GlobalStatus::Aborted,
            None if ledger
                .latest_completed()
                .is_some_and(|l| l.id == checkpoint) =>
            {
                GlobalStatus::Completed
            }
            None => GlobalStatus::Unknown,
        })
    }
}
