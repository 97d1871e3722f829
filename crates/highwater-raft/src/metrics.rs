//! Metrics of the checkpoint ledger, through the `metrics` crate's facade:
//! one function per event, called where the ledger applies a command, and
//! the leader changes each node sees (a task watching openraft's metrics).
//!
//! Every node applies every committed command, so each node counts every
//! checkpoint once. Without an installed recorder every call is a no-op.
//! Names, units and meanings are listed in `docs/metrics.md`.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use openraft::BasicNode;
use openraft::RaftMetrics;
use tokio::sync::watch;

use crate::{NodeId, Outcome};

/// Checkpoints the ledger completed (every participant acknowledged).
pub const COMPLETED: &str = "highwater_raft_checkpoints_completed_total";
/// Checkpoints the ledger aborted.
pub const ABORTED: &str = "highwater_raft_checkpoints_aborted_total";
/// Checkpoints the ledger triggered.
pub const TRIGGERED: &str = "highwater_raft_checkpoints_triggered_total";
/// Commands the ledger rejected.
pub const REJECTED: &str = "highwater_raft_commands_rejected_total";

/// Times this node saw the cluster's leader change (a new leader became
/// known, or the known one was lost).
pub const LEADER_CHANGES: &str = "highwater_raft_leader_changes_total";
/// 1 while this node is the leader, else 0.
pub const IS_LEADER: &str = "highwater_raft_is_leader";
/// The Raft term this node is in.
pub const TERM: &str = "highwater_raft_term";

/// Registers the unit and description of every metric above.
pub fn describe() {
    describe_counter!(
        LEADER_CHANGES,
        Unit::Count,
        "times this node saw the Raft leader change (a new leader known, or the known one lost)"
    );
    describe_gauge!(
        IS_LEADER,
        Unit::Count,
        "1 while this node is the Raft leader"
    );
    describe_gauge!(TERM, Unit::Count, "the Raft term this node is in");
    describe_counter!(
        COMPLETED,
        Unit::Count,
        "checkpoints the Raft ledger completed"
    );
    describe_counter!(ABORTED, Unit::Count, "checkpoints the Raft ledger aborted");
    describe_counter!(
        TRIGGERED,
        Unit::Count,
        "checkpoints the Raft ledger triggered"
    );
    describe_counter!(REJECTED, Unit::Count, "commands the Raft ledger rejected");
}

/// The ledger applied a committed command with this outcome.
pub(crate) fn ledger_applied(outcome: &Outcome) {
    match outcome {
        Outcome::Completed(_) => counter!(COMPLETED).increment(1),
        Outcome::Aborted(_) => counter!(ABORTED).increment(1),
        Outcome::Triggered(_) => counter!(TRIGGERED).increment(1),
        Outcome::Rejected(_) => counter!(REJECTED).increment(1),
        _ => {}
    }
}

/// The leader a node knows of changed from `before` to `now`: counted
/// whenever they differ (losing a leader counts, and so does learning of
/// a new one).
fn leader_changed(before: Option<NodeId>, now: Option<NodeId>) -> bool {
    before != now
}

/// Counts leader changes and keeps the leader and term gauges from
/// openraft's metrics until the node shuts down (its metrics channel
/// closes).
pub(crate) async fn count_leader_changes(mut rx: watch::Receiver<RaftMetrics<NodeId, BasicNode>>) {
    let mut known: Option<NodeId> = None;
    loop {
        {
            let m = rx.borrow_and_update();
            if leader_changed(known, m.current_leader) {
                counter!(LEADER_CHANGES).increment(1);
                known = m.current_leader;
            }
            gauge!(IS_LEADER).set(if m.current_leader == Some(m.id) {
                1.0
            } else {
                0.0
            });
            gauge!(TERM).set(m.current_term as f64);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::leader_changed;

    #[test]
    fn gaining_losing_and_replacing_a_leader_are_changes() {
        assert!(leader_changed(None, Some(1)));
        assert!(leader_changed(Some(1), None));
        assert!(leader_changed(Some(1), Some(2)));
        assert!(!leader_changed(Some(2), Some(2)));
        assert!(!leader_changed(None, None));
    }
}
