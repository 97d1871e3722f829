//! Replaying the write-ahead log over a recovered checkpoint.

use highwater_core::key::{key_group_of, operator_of};
use highwater_core::{Error, Mutation, Result, StateBackend, WriteBatch};
use highwater_wal::Wal;

use crate::plan::{RecoveryScope, WalRange};

/// Records between progress reports.
const REPORT_EVERY: u64 = 4096;

/// Applies the records of `range` to `backend`, one logged batch per
/// `write_batch` (so the backend only ever holds states the writer had),
/// keeping only records in `scope`. Stops at the end of the log or, with
/// `range.until_ms`, before the first batch holding a change made after it.
/// `covered` is the position the recovered checkpoint covers: a log that
/// ends before it has lost records the checkpoint was built on and is
/// refused as corrupt. Returns the number of records applied.
pub(crate) fn replay_wal(
    wal: &Wal,
    range: WalRange,
    covered: Option<u64>,
    scope: &RecoveryScope,
    backend: &dyn StateBackend,
    report: &dyn Fn(u64, u64),
) -> Result<u64> {
    let last = wal.written_lsn();
    if let Some(p) = covered
        && last < p
    {
        return Err(Error::corrupt(
            "wal",
            format!(
                "the log ends before the checkpoint's position: last_lsn={last} checkpoint_position={p} dir={}",
                wal.dir().display()
            ),
        ));
    }
    let total = (last + 1).saturating_sub(range.from_lsn);
    let mut replay = wal.replay(range.from_lsn)?;
    if let Some(t) = range.until_ms {
        replay = replay.until_event_time(t);
    }
    let mut batch = WriteBatch::new();
    let mut applied = 0u64;
    let mut seen = 0u64;
    report(0, total);
    for entry in replay {
        let entry = entry?;
        seen += 1;
        if in_scope(scope, &entry.record.key) {
            let m = entry.record.to_mutation().ok_or_else(|| {
                Error::corrupt(
                    "wal",
                    format!("merge record the backend cannot apply: lsn={}", entry.lsn),
                )
            })?;
            match m {
                Mutation::Put { key, value } => batch.put(key, value),
                Mutation::Delete { key } => batch.delete(key),
            };
            applied += 1;
        }
        if entry.batch_end && !batch.is_empty() {
            backend.write_batch(std::mem::take(&mut batch))?;
        }
        if seen.is_multiple_of(REPORT_EVERY) {
            report(seen, total);
        }
    }
    // The log only ever holds whole batches, so nothing is left over.
    if !batch.is_empty() {
        return Err(Error::Internal("wal replay ended inside a batch".into()));
    }
    report(seen, total);
    Ok(applied)
}

fn in_scope(scope: &RecoveryScope, key: &[u8]) -> bool {
    if let Some(kg) = scope.key_groups {
        match key_group_of(key) {
            Ok(g) if kg.contains(g) => {}
            _ => return false,
        }
    }
    if let Some(ops) = &scope.operators {
        match operator_of(key) {
            Ok(op) if ops.contains(op) => {}
            _ => return false,
        }
    }
    true
}
