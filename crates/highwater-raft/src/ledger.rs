//! The replicated state machine's data: the checkpoint ledger.
//!
//! Every node applies the same committed commands in the same order, so every
//! node holds the same ledger. The rules below are what make a checkpoint
//! complete exactly once: a [`Command::Complete`] is accepted only for a
//! pending checkpoint whose every participant's acknowledgement was applied
//! before it, and a checkpoint leaves the pending state once, by completion
//! or by abort. A command that breaks a rule is recorded as rejected and
//! changes nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use highwater_core::CheckpointId;
use serde::{Deserialize, Serialize};

/// A Raft node id.
pub type NodeId = u64;

/// The longest [`ManifestRef`] a participant may report, in bytes.
pub const MAX_MANIFEST_REF_LEN: usize = 4096;

/// How many finished (completed or aborted) checkpoints the ledger keeps;
/// older ones are dropped (pending checkpoints are always kept).
pub const FINISHED_HISTORY: usize = 1024;

/// Where a participant's part of a checkpoint is durable: typically the
/// checkpoint store URL and the manifest id the participant committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ManifestRef(pub String);

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a checkpoint was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// Not every participant acknowledged within the checkpoint timeout.
    Timeout,
    /// A participant left the cluster before acknowledging.
    ParticipantLost(NodeId),
    /// An operator or the engine asked for the abort.
    Requested(String),
    /// With every voter taking part
    /// ([`Participants::AllVoters`](crate::Participants::AllVoters)), this
    /// voter joined after the trigger: the checkpoint does not name it, so
    /// it is not a cut of the job's current subtasks.
    VoterAdded(NodeId),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Timeout => f.write_str("timeout"),
            AbortReason::ParticipantLost(n) => write!(f, "participant {n} lost"),
            AbortReason::Requested(why) => write!(f, "requested: {why}"),
            AbortReason::VoterAdded(n) => write!(f, "voter {n} joined after the trigger"),
        }
    }
}

/// A command replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Start checkpoint `checkpoint` (which must be the ledger's next id)
    /// with these participants; `time_ms` is the leader's wall clock.
    Trigger {
        /// The new checkpoint's id.
        checkpoint: CheckpointId,
        /// Unix time in milliseconds when the leader triggered it.
        time_ms: u64,
        /// The nodes that must acknowledge it.
        participants: BTreeSet<NodeId>,
    },
    /// `node` made its part of `checkpoint` durable at `manifest`.
    Ack {
        /// The checkpoint acknowledged.
        checkpoint: CheckpointId,
        /// The acknowledging participant.
        node: NodeId,
        /// Where its part is.
        manifest: ManifestRef,
    },
    /// Mark `checkpoint` completed (accepted only when fully acknowledged).
    Complete {
        /// The checkpoint to complete.
        checkpoint: CheckpointId,
    },
    /// Abort `checkpoint` (accepted only while it is pending).
    Abort {
        /// The checkpoint to abort.
        checkpoint: CheckpointId,
        /// Why.
        reason: AbortReason,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A checkpoint was triggered.
    Triggered(CheckpointId),
    /// An acknowledgement was recorded; `complete` is true when it was the
    /// last one missing.
    Acked {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Every participant has now acknowledged.
        complete: bool,
    },
    /// The checkpoint became completed.
    Completed(CheckpointId),
    /// The checkpoint became aborted.
    Aborted(CheckpointId),
    /// The command broke a ledger rule and changed nothing.
    Rejected(String),
    /// A blank or membership entry (no ledger change).
    Noop,
}

/// Where a checkpoint is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointState {
    /// Triggered, waiting for acknowledgements.
    Pending,
    /// Completed by the entry at this log index.
    Completed {
        /// Raft log index of the accepted `Complete`.
        log_index: u64,
    },
    /// Aborted by the entry at this log index.
    Aborted {
        /// Raft log index of the accepted `Abort`.
        log_index: u64,
        /// Why.
        reason: AbortReason,
    },
}

/// One checkpoint's ledger record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The checkpoint id.
    pub id: CheckpointId,
    /// Unix time in milliseconds of the trigger.
    pub triggered_ms: u64,
    /// Raft log index of the trigger.
    pub triggered_index: u64,
    /// The nodes that must acknowledge.
    pub participants: BTreeSet<NodeId>,
    /// The acknowledgements applied so far.
    pub acks: BTreeMap<NodeId, ManifestRef>,
    /// Pending, completed or aborted.
    pub state: CheckpointState,
}

impl CheckpointRecord {
    /// True when every participant has acknowledged.
    pub fn fully_acked(&self) -> bool {
        self.participants.iter().all(|p| self.acks.contains_key(p))
    }

    /// True while pending.
    pub fn is_pending(&self) -> bool {
        self.state == CheckpointState::Pending
    }
}

/// A completed checkpoint, as [`crate::CheckpointCoordinator::latest_completed`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedCheckpoint {
    /// The checkpoint id.
    pub id: CheckpointId,
    /// Each participant's manifest.
    pub manifests: BTreeMap<NodeId, ManifestRef>,
    /// Raft log index of the completion.
    pub log_index: u64,
}

/// The checkpoint ledger: every node's copy is identical at equal applied
/// log indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The id the next trigger must carry (ids start at 1).
    next_id: u64,
    /// Pending checkpoints and the most recent finished ones.
    checkpoints: BTreeMap<u64, CheckpointRecord>,
    /// The newest completed checkpoint (kept even when pruned from history).
    latest_completed: Option<CompletedCheckpoint>,
    /// Totals since the ledger began.
    completed_total: u64,
    aborted_total: u64,
    rejected_total: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger {
            next_id: 1,
            ..Ledger::default()
        }
    }

    /// The id the next trigger must carry.
    pub fn next_id(&self) -> CheckpointId {
        CheckpointId(self.next_id.max(1))
    }

    /// A checkpoint's record, if still in the ledger's history.
    pub fn get(&self, id: CheckpointId) -> Option<&CheckpointRecord> {
        self.checkpoints.get(&id.0)
    }

    /// Every checkpoint still in the history, ascending.
    pub fn checkpoints(&self) -> impl Iterator<Item = &CheckpointRecord> {
        self.checkpoints.values()
    }

    /// The pending checkpoints, ascending.
    pub fn pending(&self) -> impl Iterator<Item = &CheckpointRecord> {
        self.checkpoints.values().filter(|c| c.is_pending())
    }

    /// The newest completed checkpoint.
    pub fn latest_completed(&self) -> Option<&CompletedCheckpoint> {
        self.latest_completed.as_ref()
    }

    /// Checkpoints completed since the ledger began.
    pub fn completed_total(&self) -> u64 {
        self.completed_total
    }

    /// Checkpoints aborted since the ledger began.
    pub fn aborted_total(&self) -> u64 {
        self.aborted_total
    }

    /// Commands rejected since the ledger began.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total
    }

    /// Applies one committed command found at `log_index`.
    pub fn apply(&mut self, log_index: u64, command: &Command) -> Outcome {
        let outcome = self.apply_inner(log_index, command);
        crate::metrics::ledger_applied(&outcome);
        if let Outcome::Rejected(_) = outcome {
            self.rejected_total += 1;
        }
        outcome
    }

    fn apply_inner(&mut self, log_index: u64, command: &Command) -> Outcome {
        match command {
            Command::Trigger {
                checkpoint,
                time_ms,
                participants,
            } => {
                if *checkpoint != self.next_id() {
                    return Outcome::Rejected(format!(
                        "trigger out of order: checkpoint={} expected={}",
                        checkpoint.0,
                        self.next_id().0
                    ));
                }
                if participants.is_empty() {
                    return Outcome::Rejected(format!(
                        "trigger without participants: checkpoint={}",
                        checkpoint.0
                    ));
                }
                self.next_id = checkpoint.0 + 1;
                self.checkpoints.insert(
                    checkpoint.0,
                    CheckpointRecord {
                        id: *checkpoint,
                        triggered_ms: *time_ms,
                        triggered_index: log_index,
                        participants: participants.clone(),
                        acks: BTreeMap::new(),
                        state: CheckpointState::Pending,
                    },
                );
                Outcome::Triggered(*checkpoint)
            }
            Command::Ack {
                checkpoint,
                node,
                manifest,
            } => {
                let Some(record) = self.checkpoints.get_mut(&checkpoint.0) else {
                    return Outcome::Rejected(format!(
                        "ack for unknown checkpoint: checkpoint={} node={node}",
                        checkpoint.0
                    ));
                };
                if !record.is_pending() {
                    return Outcome::Rejected(format!(
                        "ack for finished checkpoint: checkpoint={} node={node}",
                        checkpoint.0
                    ));
                }
                if !record.participants.contains(node) {
                    return Outcome::Rejected(format!(
                        "ack from a non-participant: checkpoint={} node={node}",
                        checkpoint.0
                    ));
                }
                if manifest.0.len() > MAX_MANIFEST_REF_LEN {
                    return Outcome::Rejected(format!(
                        "manifest reference too long: checkpoint={} node={node} len={}",
                        checkpoint.0,
                        manifest.0.len()
                    ));
                }
                match record.acks.get(node) {
                    Some(existing) if existing != manifest => {
                        return Outcome::Rejected(format!(
                            "conflicting second ack: checkpoint={} node={node} first={existing} second={manifest}",
                            checkpoint.0
                        ));
                    }
                    Some(_) => {}
                    None => {
                        record.acks.insert(*node, manifest.clone());
                    }
                }
                Outcome::Acked {
                    checkpoint: *checkpoint,
                    complete: record.fully_acked(),
                }
            }
            Command::Complete { checkpoint } => {
                let Some(record) = self.checkpoints.get_mut(&checkpoint.0) else {
                    return Outcome::Rejected(format!(
                        "complete for unknown checkpoint: checkpoint={}",
                        checkpoint.0
                    ));
                };
                if !record.is_pending() {
                    return Outcome::Rejected(format!(
                        "complete for finished checkpoint: checkpoint={} state={:?}",
                        checkpoint.0, record.state
                    ));
                }
                if !record.fully_acked() {
                    let missing: Vec<_> = record
                        .participants
                        .iter()
                        .filter(|p| !record.acks.contains_key(p))
                        .collect();
                    return Outcome::Rejected(format!(
                        "complete before every ack: checkpoint={} missing={missing:?}",
                        checkpoint.0
                    ));
                }
                record.state = CheckpointState::Completed { log_index };
                let done = CompletedCheckpoint {
                    id: *checkpoint,
                    manifests: record.acks.clone(),
                    log_index,
                };
                if self
                    .latest_completed
                    .as_ref()
                    .is_none_or(|l| l.id < *checkpoint)
                {
                    self.latest_completed = Some(done);
                }
                self.completed_total += 1;
                self.prune();
                Outcome::Completed(*checkpoint)
            }
            Command::Abort { checkpoint, reason } => {
                let Some(record) = self.checkpoints.get_mut(&checkpoint.0) else {
                    return Outcome::Rejected(format!(
                        "abort for unknown checkpoint: checkpoint={}",
                        checkpoint.0
                    ));
                };
                if !record.is_pending() {
                    return Outcome::Rejected(format!(
                        "abort for finished checkpoint: checkpoint={} state={:?}",
                        checkpoint.0, record.state
                    ));
                }
                record.state = CheckpointState::Aborted {
                    log_index,
                    reason: reason.clone(),
                };
                self.aborted_total += 1;
                self.prune();
                Outcome::Aborted(*checkpoint)
            }
        }
    }

    /// Drops the oldest finished checkpoints beyond [`FINISHED_HISTORY`].
    fn prune(&mut self) {
        let finished = self
            .checkpoints
            .values()
            .filter(|c| !c.is_pending())
            .count();
        if finished <= FINISHED_HISTORY {
            return;
        }
        let victims: Vec<u64> = self
            .checkpoints
            .values()
            .filter(|c| !c.is_pending())
            .take(finished - FINISHED_HISTORY)
            .map(|c| c.id.0)
            .collect();
        for id in victims {
            self.checkpoints.remove(&id);
        }
    }
}

/// The leader's decisions on the pending checkpoints of `ledger`: a pure
/// function of the ledger, the voters of the current membership, the
/// voters the leader heard from recently (`live`), the time and the
/// checkpoint timeout, so it is tested like [`Ledger::apply`].
///
/// For each pending checkpoint, at most one command, in this order of
/// precedence:
/// - `Complete` when every participant has acknowledged;
/// - `Abort` with [`AbortReason::ParticipantLost`] naming the first
///   participant that left the membership, or that is not live and has not
///   acknowledged (it cannot acknowledge any more);
/// - with `every_voter` (every voter takes part in every checkpoint),
///   `Abort` with [`AbortReason::VoterAdded`] naming the first voter the
///   checkpoint does not name (it joined after the trigger);
/// - `Abort` with [`AbortReason::Timeout`] once more than `timeout_ms` has
///   passed since the trigger.
pub fn decide(
    ledger: &Ledger,
    voters: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    every_voter: bool,
    now_ms: u64,
    timeout_ms: u64,
) -> Vec<Command> {
    let mut decisions = Vec::new();
    for c in ledger.pending() {
        if c.fully_acked() {
            decisions.push(Command::Complete { checkpoint: c.id });
        } else if let Some(lost) = c
            .participants
            .iter()
            .find(|p| !voters.contains(p) || (!live.contains(p) && !c.acks.contains_key(p)))
        {
            decisions.push(Command::Abort {
                checkpoint: c.id,
                reason: AbortReason::ParticipantLost(*lost),
            });
        } else if let Some(added) = voters
            .iter()
            .find(|v| every_voter && !c.participants.contains(v))
        {
            decisions.push(Command::Abort {
                checkpoint: c.id,
                reason: AbortReason::VoterAdded(*added),
            });
        } else if now_ms.saturating_sub(c.triggered_ms) > timeout_ms {
            decisions.push(Command::Abort {
                checkpoint: c.id,
                reason: AbortReason::Timeout,
            });
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trigger(id: u64, participants: &[NodeId]) -> Command {
        Command::Trigger {
            checkpoint: CheckpointId(id),
            time_ms: 0,
            participants: participants.iter().copied().collect(),
        }
    }

    fn ack(id: u64, node: NodeId) -> Command {
        Command::Ack {
            checkpoint: CheckpointId(id),
            node,
            manifest: ManifestRef(format!("m-{id}-{node}")),
        }
    }

    #[test]
    fn a_checkpoint_completes_only_after_every_ack() {
        let mut l = Ledger::new();
        assert_eq!(
            l.apply(1, &trigger(1, &[1, 2])),
            Outcome::Triggered(CheckpointId(1))
        );
        l.apply(2, &ack(1, 1));
        let early = l.apply(
            3,
            &Command::Complete {
                checkpoint: CheckpointId(1),
            },
        );
        assert!(matches!(early, Outcome::Rejected(_)), "{early:?}");
        assert!(l.latest_completed().is_none());
        l.apply(4, &ack(1, 2));
        let done = l.apply(
            5,
            &Command::Complete {
                checkpoint: CheckpointId(1),
            },
        );
        assert_eq!(done, Outcome::Completed(CheckpointId(1)));
        let again = l.apply(
            6,
            &Command::Complete {
                checkpoint: CheckpointId(1),
            },
        );
        assert!(matches!(again, Outcome::Rejected(_)));
        assert_eq!(l.completed_total(), 1);
        assert_eq!(l.latest_completed().map(|c| c.log_index), Some(5));
        assert_eq!(l.rejected_total(), 2);
    }

    #[test]
    fn aborted_checkpoints_never_complete_and_triggers_must_be_in_order() {
        let mut l = Ledger::new();
        assert!(matches!(
            l.apply(1, &trigger(2, &[1])),
            Outcome::Rejected(_)
        ));
        l.apply(2, &trigger(1, &[1]));
        l.apply(
            3,
            &Command::Abort {
                checkpoint: CheckpointId(1),
                reason: AbortReason::Timeout,
            },
        );
        assert!(matches!(l.apply(4, &ack(1, 1)), Outcome::Rejected(_)));
        assert!(matches!(
            l.apply(
                5,
                &Command::Complete {
                    checkpoint: CheckpointId(1)
                }
            ),
            Outcome::Rejected(_)
        ));
        assert!(matches!(l.apply(6, &ack(1, 9)), Outcome::Rejected(_)));
        assert_eq!(l.next_id(), CheckpointId(2));
        assert_eq!(l.aborted_total(), 1);
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (1u64..6, proptest::collection::btree_set(1u64..4, 0..3)).prop_map(|(id, p)| {
                Command::Trigger {
                    checkpoint: CheckpointId(id),
                    time_ms: 0,
                    participants: p,
                }
            }),
            (1u64..6, 1u64..5).prop_map(|(id, n)| ack(id, n)),
            (1u64..6).prop_map(|id| Command::Complete {
                checkpoint: CheckpointId(id)
            }),
            (1u64..6).prop_map(|id| Command::Abort {
                checkpoint: CheckpointId(id),
                reason: AbortReason::Timeout
            }),
        ]
    }

    proptest! {
        /// Whatever the command sequence, each checkpoint completes at most
        /// once, only with every participant's ack, never after an abort, and
        /// replaying the same sequence gives the same ledger.
        #[test]
        fn any_command_sequence_keeps_the_ledger_invariants(cmds in proptest::collection::vec(any_command(), 0..60)) {
            let mut l = Ledger::new();
            let mut completions: BTreeMap<u64, u32> = BTreeMap::new();
            let mut aborted: BTreeSet<u64> = BTreeSet::new();
            for (i, c) in cmds.iter().enumerate() {
                let before = l.get(match c {
                    Command::Trigger { checkpoint, .. } | Command::Ack { checkpoint, .. }
                    | Command::Complete { checkpoint } | Command::Abort { checkpoint, .. } => *checkpoint,
                }).cloned();
                match l.apply(i as u64 + 1, c) {
                    Outcome::Completed(id) => {
                        let rec = before.expect("completed a known checkpoint");
                        prop_assert!(rec.fully_acked());
                        prop_assert!(!aborted.contains(&id.0));
                        *completions.entry(id.0).or_default() += 1;
                    }
                    Outcome::Aborted(id) => {
                        prop_assert!(!completions.contains_key(&id.0));
                        aborted.insert(id.0);
                    }
                    _ => {}
                }
            }
            prop_assert!(completions.values().all(|&n| n == 1));
            let mut replay = Ledger::new();
            for (i, c) in cmds.iter().enumerate() {
                replay.apply(i as u64 + 1, c);
            }
            prop_assert_eq!(replay, l);
        }
    }

    fn command_id(c: &Command) -> CheckpointId {
        match c {
            Command::Trigger { checkpoint, .. }
            | Command::Ack { checkpoint, .. }
            | Command::Complete { checkpoint }
            | Command::Abort { checkpoint, .. } => *checkpoint,
        }
    }

    proptest! {
        /// The leader's decisions, against the rules they implement: one
        /// command per pending checkpoint at most; `Complete` exactly for
        /// the fully acknowledged; a lost participant really is gone or
        /// silent without an ack; a timeout only after the timeout; every
        /// decision is accepted by the ledger; and once applied, nothing is
        /// left to decide at the same moment.
        #[test]
        fn leader_decisions_follow_the_rules_and_settle_the_ledger(
            cmds in proptest::collection::vec(any_command(), 0..40),
            voters in proptest::collection::btree_set(1u64..5, 0..4),
            live in proptest::collection::btree_set(1u64..5, 0..4),
            every_voter in any::<bool>(),
            now in 0u64..20,
            timeout in 0u64..10,
        ) {
            let mut l = Ledger::new();
            for (i, c) in cmds.iter().enumerate() {
                // Triggers at varied times so some are past the timeout.
                let c = match c {
                    Command::Trigger { checkpoint, participants, .. } => Command::Trigger {
                        checkpoint: *checkpoint,
                        time_ms: i as u64 % 20,
                        participants: participants.clone(),
                    },
                    other => other.clone(),
                };
                l.apply(i as u64 + 1, &c);
            }
            let decisions = decide(&l, &voters, &live, every_voter, now, timeout);
            let ids: BTreeSet<CheckpointId> = decisions.iter().map(command_id).collect();
            prop_assert_eq!(ids.len(), decisions.len(), "one decision per checkpoint");
            for d in &decisions {
                let rec = l.get(command_id(d)).expect("decided on a known checkpoint");
                prop_assert!(rec.is_pending());
                match d {
                    Command::Complete { .. } => prop_assert!(rec.fully_acked()),
                    Command::Abort { reason: AbortReason::ParticipantLost(p), .. } => {
                        prop_assert!(!rec.fully_acked());
                        prop_assert!(rec.participants.contains(p));
                        prop_assert!(!voters.contains(p) || (!live.contains(p) && !rec.acks.contains_key(p)));
                    }
                    Command::Abort { reason: AbortReason::VoterAdded(v), .. } => {
                        prop_assert!(every_voter && !rec.fully_acked());
                        prop_assert!(voters.contains(v) && !rec.participants.contains(v));
                    }
                    Command::Abort { reason: AbortReason::Timeout, .. } => {
                        prop_assert!(!rec.fully_acked());
                        prop_assert!(now.saturating_sub(rec.triggered_ms) > timeout);
                    }
                    other => prop_assert!(false, "unexpected decision {:?}", other),
                }
            }
            for rec in l.pending() {
                let undecided = !ids.contains(&rec.id);
                if rec.fully_acked() {
                    prop_assert!(!undecided, "a fully acknowledged checkpoint is completed");
                }
                if undecided {
                    prop_assert!(now.saturating_sub(rec.triggered_ms) <= timeout);
                }
            }
            let mut index = cmds.len() as u64;
            for d in &decisions {
                index += 1;
                let out = l.apply(index, d);
                prop_assert!(!matches!(out, Outcome::Rejected(_)), "{:?} rejected: {:?}", d, out);
            }
            prop_assert!(decide(&l, &voters, &live, every_voter, now, timeout).is_empty());
        }
    }
}
