//! The write-ahead-logged backend: every state change goes to the live
//! backend and to a pending batch that [`commit`](LoggedBackend::commit)
//! appends to the WAL as one atomic frame.
//!
//! Writes hold the pending batch's lock while they apply, so the order of
//! changes in the log is the order they were applied: replaying the log
//! over a checkpoint rebuilds exactly the live state. (With the log on,
//! writers are serialised through that lock; the log is one sequence.)

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use highwater_core::{
    BackendStats, Error, Mutation, Result, SnapshotKind, StateBackend, StateSnapshot, WriteBatch,
};
use highwater_wal::{Lsn, SyncPolicy, Wal, WalBatch};

/// A [`StateBackend`] whose changes are logged to a [`Wal`].
pub(crate) struct LoggedBackend {
    inner: Arc<dyn StateBackend>,
    wal: Arc<Wal>,
    pending: Mutex<WalBatch>,
}

impl LoggedBackend {
    pub(crate) fn new(inner: Arc<dyn StateBackend>, wal: Arc<Wal>) -> Self {
        LoggedBackend {
            inner,
            wal,
            pending: Mutex::new(WalBatch::new()),
        }
    }

    pub(crate) fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    fn pending(&self) -> MutexGuard<'_, WalBatch> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the changes since the last commit as one atomic batch. Under
    /// `SyncPolicy::Always` it returns once the batch is durable; otherwise
    /// once it is queued (a failed write poisons the log, and the next call
    /// reports it).
    pub(crate) fn commit(&self) -> Result<()> {
        let mut pending = self.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let ticket = self.wal.submit(&pending)?;
        pending.clear();
        drop(pending);
        // Waiting outside the lock lets other threads' commits join the
        // same group commit.
        if self.wal.config().sync_policy == SyncPolicy::Always {
            ticket.wait()?;
        }
        Ok(())
    }

    /// Commits pending changes and takes a snapshot of exactly the state
    /// the log holds up to the returned LSN.
    pub(crate) fn snapshot_at(&self, kind: SnapshotKind) -> Result<(Arc<dyn StateSnapshot>, Lsn)> {
        let mut pending = self.pending();
        if !pending.is_empty() {
            // The snapshot itself holds these changes, so the checkpoint
            // does not wait for them to be durable.
            drop(self.wal.submit(&pending)?);
            pending.clear();
        }
        let lsn = self.wal.last_lsn();
        let snapshot = self.inner.snapshot(kind)?;
        Ok((snapshot, lsn))
    }

    /// Applies the log from `from` to the live backend (not logging it
    /// again), one logged batch at a time. Returns the records applied.
    pub(crate) fn replay_from(&self, from: Lsn) -> Result<u64> {
        let _pending = self.pending();
        let mut batch = WriteBatch::new();
        let mut applied = 0u64;
        for entry in self.wal.replay(from)? {
            let entry = entry?;
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
            if entry.batch_end {
                self.inner.write_batch(std::mem::take(&mut batch))?;
            }
        }
        // The log only ever holds whole batches, so nothing is left over.
        if !batch.is_empty() {
            return Err(Error::Internal("wal replay ended inside a batch".into()));
        }
        Ok(applied)
    }
}

impl StateBackend for LoggedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut pending = self.pending();
        self.inner.put(key, value)?;
        pending.put(key, value, None);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        let mut pending = self.pending();
        self.inner.delete(key)?;
        pending.delete(key, None);
        Ok(())
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        let mut pending = self.pending();
        // Logged only once applied: a batch that failed must not replay.
        let logged = batch.clone();
        self.inner.write_batch(batch)?;
        for m in logged.mutations() {
            pending.push_mutation(m, None);
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(prefix)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_range(start, end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        self.snapshot_at(kind).map(|(s, _)| s)
    }

    fn restore(&self, entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Result<()> {
        let mut pending = self.pending();
        self.inner.restore(entries)?;
        // Uncommitted changes belonged to the state just replaced.
        pending.clear();
        Ok(())
    }

    /// Clears the state by logging a delete of every key (O(state)), so a
    /// replay after a crash reproduces the clear.
    fn clear(&self) -> Result<()> {
        let mut pending = self.pending();
        let keys = self.inner.scan_prefix(&[])?;
        self.inner.clear()?;
        for (k, _) in keys {
            pending.delete(&k, None);
        }
        Ok(())
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}
