//! Metrics of the checkpoint ledger, through the `metrics` crate's facade:
//! one function per event, called where the ledger applies a command.
//!
//! Every node applies every committed command, so each node counts every
//! checkpoint once. Without an installed recorder every call is a no-op.
//! Names, units and meanings are listed in `docs/metrics.md`.

use metrics::{Unit, counter, describe_counter};

use crate::Outcome;

/// Checkpoints the ledger completed (every participant acknowledged).
pub const COMPLETED: &str = "highwater_raft_checkpoints_completed_total";
/// Checkpoints the ledger aborted.
pub const ABORTED: &str = "highwater_raft_checkpoints_aborted_total";
/// Checkpoints the ledger triggered.
pub const TRIGGERED: &str = "highwater_raft_checkpoints_triggered_total";
/// Commands the ledger rejected.
pub const REJECTED: &str = "highwater_raft_commands_rejected_total";

/// Registers the unit and description of every metric above.
pub fn describe() {
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
