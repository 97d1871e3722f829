//! Metrics of restores, through the `metrics` crate's facade: one function
//! per event, called where the numbers exist ([`RecoveryStats`]).
//!
//! Without an installed recorder every call is a no-op. Names, units and
//! meanings are listed in `docs/metrics.md`.

use highwater_core::Result;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::{RecoveryOutcome, RecoveryStats};

/// Restores that finished (label `source`: `checkpoint` or `wal`).
pub const RESTORES_COMPLETED: &str = "highwater_restores_completed_total";
/// Restores that failed.
pub const RESTORES_FAILED: &str = "highwater_restores_failed_total";
/// Wall time of each restore, fallbacks included.
pub const RESTORE_DURATION: &str = "highwater_restore_duration_seconds";
/// Wall time of the newest restore.
pub const LAST_RESTORE_DURATION: &str = "highwater_last_restore_duration_seconds";
/// Checkpoint id the newest restore loaded (0: the log alone).
pub const LAST_RESTORE_CHECKPOINT: &str = "highwater_last_restore_checkpoint_id";
/// Checkpoints skipped as unusable by restores.
pub const RESTORE_FALLBACKS: &str = "highwater_restore_fallbacks_total";
/// Bytes restores fetched from the store.
pub const RESTORE_BYTES_FETCHED: &str = "highwater_restore_bytes_fetched_total";
/// Entries restores loaded into the backend.
pub const RESTORE_ENTRIES: &str = "highwater_restore_entries_total";
/// Write-ahead-log records restores replayed.
pub const RESTORE_WAL_RECORDS: &str = "highwater_restore_wal_records_total";

/// Registers the unit and description of every metric above.
pub fn describe() {
    describe_counter!(
        RESTORES_COMPLETED,
        Unit::Count,
        "restores that finished, by source"
    );
    describe_counter!(RESTORES_FAILED, Unit::Count, "restores that failed");
    describe_histogram!(
        RESTORE_DURATION,
        Unit::Seconds,
        "wall time of a restore, fallbacks included"
    );
    describe_gauge!(
        LAST_RESTORE_DURATION,
        Unit::Seconds,
        "wall time of the newest restore"
    );
    describe_gauge!(
        LAST_RESTORE_CHECKPOINT,
        Unit::Count,
        "checkpoint id the newest restore loaded (0: the write-ahead log alone)"
    );
    describe_counter!(
        RESTORE_FALLBACKS,
        Unit::Count,
        "checkpoints skipped as unusable by restores"
    );
    describe_counter!(
        RESTORE_BYTES_FETCHED,
        Unit::Bytes,
        "bytes restores fetched from the store"
    );
    describe_counter!(
        RESTORE_ENTRIES,
        Unit::Count,
        "entries restores loaded into the backend"
    );
    describe_counter!(
        RESTORE_WAL_RECORDS,
        Unit::Count,
        "write-ahead-log records restores replayed"
    );
}

/// A restore ended, with its statistics or its error.
pub(crate) fn recovery_finished(result: &Result<RecoveryOutcome>) {
    match result {
        Ok(outcome) => recovery_completed(&outcome.stats),
        Err(_) => counter!(RESTORES_FAILED).increment(1),
    }
}

fn recovery_completed(s: &RecoveryStats) {
    let source = if s.checkpoint.is_some() {
        "checkpoint"
    } else {
        "wal"
    };
    counter!(RESTORES_COMPLETED, "source" => source).increment(1);
    histogram!(RESTORE_DURATION).record(s.duration.as_secs_f64());
    gauge!(LAST_RESTORE_DURATION).set(s.duration.as_secs_f64());
    gauge!(LAST_RESTORE_CHECKPOINT).set(s.checkpoint.map_or(0, |c| c.0) as f64);
    counter!(RESTORE_FALLBACKS).increment(s.fallbacks.len() as u64);
    counter!(RESTORE_BYTES_FETCHED).increment(s.bytes_fetched);
    counter!(RESTORE_ENTRIES).increment(s.entries_loaded);
    counter!(RESTORE_WAL_RECORDS).increment(s.wal_records_replayed);
}
