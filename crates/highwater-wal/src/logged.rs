//! The write-ahead-logged backend: every state change goes to the live
//! backend and to a pending batch that [`commit`](LoggedBackend::commit)
//! appends to the WAL as one atomic frame.
//!
//! Writes hold the pending batch's lock while they apply, so the order of
//! changes in the log is the order they were applied: replaying the log
//! over a checkpoint rebuilds exactly the live state. (With the log on,
//! writers are serialised through that lock; the log is one sequence.)
//!
//! Every batch is dated once, when it is committed: its last record carries
//! the clock's time as its event time ([`WalBatch::set_last_event_time`]),
//! which no change in the batch was made after. So a replay can stop at a
//! point in time: the recovery engine replays up to the last batch committed
//! at or before it (`Replay::until_event_time`), a state the writer really
//! had. (One clock read per batch, not one per change.)
//!
//! The wrapper forwards every capability of the backend it wraps, native
//! checkpoints included ([`StateBackend::native`]): a native checkpoint
//! taken through it records the log position it covers exactly like an
//! ordinary snapshot, so a restore opens the backend's files and replays
//! the log after that position.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use highwater_core::{
    BackendStats, BulkRestore, BulkThrough, Clock, Error, KeyGroupRange, NativeCheckpoints,
    NativeSource, RecordBlock, Result, SnapshotKind, StateBackend, StateSnapshot, WriteBatch,
};

use crate::{Lsn, SyncPolicy, Wal, WalBatch};

/// A [`StateBackend`] whose changes are logged to a [`Wal`].
pub struct LoggedBackend {
    inner: Arc<dyn StateBackend>,
    wal: Arc<Wal>,
    clock: Arc<dyn Clock>,
    pending: Mutex<WalBatch>,
}

impl LoggedBackend {
    /// Wraps `inner`; its changes go to `wal`, stamped with `clock`'s time.
    pub fn new(inner: Arc<dyn StateBackend>, wal: Arc<Wal>, clock: Arc<dyn Clock>) -> Self {
        LoggedBackend {
            inner,
            wal,
            clock,
            pending: Mutex::new(WalBatch::new()),
        }
    }

    /// Dates `pending` with the clock's time and appends it to the log.
    fn submit(&self, pending: &mut WalBatch) -> Result<crate::AppendTicket> {
        pending.set_last_event_time(Some(self.clock.now_ms()));
        let ticket = self.wal.submit(pending)?;
        pending.clear();
        Ok(ticket)
    }

    /// The log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    fn pending(&self) -> MutexGuard<'_, WalBatch> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the changes since the last commit as one atomic batch and
    /// returns once it is acknowledged under the log's sync policy:
    ///
    /// - `SyncPolicy::Always`: durable (`fdatasync`ed);
    /// - `SyncPolicy::Interval(d)`: written to the operating system, so it
    ///   survives a crash of the process; the log's sync thread makes it
    ///   durable within `d` plus the time of the `fdatasync`s (see the
    ///   crate documentation for the exact bound);
    /// - `SyncPolicy::Never`: queued in this process (the fastest; a crash
    ///   of the process can lose it, and a failed write poisons the log,
    ///   which the next call reports).
    pub fn commit(&self) -> Result<()> {
        let mut pending = self.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let ticket = self.submit(&mut pending)?;
        drop(pending);
        // Waiting outside the lock lets other threads' commits join the
        // same group commit.
        if self.wal.config().sync_policy != SyncPolicy::Never {
            ticket.wait()?;
        }
        Ok(())
    }

    /// Commits pending changes and takes a snapshot of exactly the state
    /// the log holds up to the returned LSN.
    pub fn snapshot_at(&self, kind: SnapshotKind) -> Result<(Arc<dyn StateSnapshot>, Lsn)> {
        self.cut(|inner| inner.snapshot(kind))
    }

    /// Like [`snapshot_at`](Self::snapshot_at), a native checkpoint of the
    /// wrapped backend; `None` if it does not write them.
    pub fn native_snapshot_at(&self) -> Result<Option<(Arc<dyn StateSnapshot>, Lsn)>> {
        match self.inner.native() {
            Some(native) => self.cut(|_| native.native_snapshot()).map(Some),
            None => Ok(None),
        }
    }

    /// Commits pending changes and runs `take` with writers held off, so
    /// the snapshot it takes holds exactly the log up to the returned LSN.
    fn cut(
        &self,
        take: impl FnOnce(&dyn StateBackend) -> Result<Arc<dyn StateSnapshot>>,
    ) -> Result<(Arc<dyn StateSnapshot>, Lsn)> {
        let mut pending = self.pending();
        if !pending.is_empty() {
            // The snapshot itself holds these changes, so the checkpoint
            // does not wait for them to be durable.
            drop(self.submit(&mut pending)?);
        }
        let lsn = self.wal.last_lsn();
        let snapshot = take(&*self.inner)?;
        Ok((snapshot, lsn))
    }

    /// Runs a recovery `f` against the unlogged backend and the log, with
    /// writers held off: what `f` loads (a checkpoint, a replay of the log)
    /// must not be logged again. Pending changes belong to the state being
    /// replaced and are dropped once `f` succeeds.
    pub fn recover_with<R>(
        &self,
        f: impl FnOnce(&dyn StateBackend, &Wal) -> Result<R>,
    ) -> Result<R> {
        let mut pending = self.pending();
        let r = f(&*self.inner, &self.wal)?;
        pending.clear();
        Ok(r)
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

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        let mut pending = self.pending();
        self.inner.restore(blocks)?;
        // Uncommitted changes belonged to the state just replaced.
        pending.clear();
        Ok(())
    }

    /// The inner backend's: a failed restore keeps the pending changes,
    /// which still belong to the live state.
    fn restore_is_atomic(&self) -> bool {
        self.inner.restore_is_atomic()
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

    /// The wrapped backend's, through this wrapper: a committed restore
    /// drops the pending changes, as [`restore`](StateBackend::restore)
    /// does.
    fn bulk_restore(&self) -> Option<Box<dyn BulkRestore + '_>> {
        let inner = self.inner.bulk_restore()?;
        Some(Box::new(BulkThrough::new(
            inner,
            Box::new(move |inner| {
                let mut pending = self.pending();
                inner.commit()?;
                // Uncommitted changes belonged to the state just replaced.
                pending.clear();
                Ok(())
            }),
        )))
    }

    fn native(&self) -> Option<&dyn NativeCheckpoints> {
        // Forwarded whenever the wrapped backend has it, through this
        // wrapper so the log position and the pending batch stay right.
        self.inner.native().map(|_| self as &dyn NativeCheckpoints)
    }
}

impl NativeCheckpoints for LoggedBackend {
    fn format(&self) -> &'static str {
        self.inner.native().map_or("", |n| n.format())
    }

    fn native_snapshot(&self) -> Result<Arc<dyn StateSnapshot>> {
        self.native_snapshot_at()?
            .map(|(s, _)| s)
            .ok_or_else(|| self.no_native())
    }

    fn restore_native(
        &self,
        files: &mut dyn NativeSource,
        keep: Option<KeyGroupRange>,
    ) -> Result<()> {
        let mut pending = self.pending();
        let native = self.inner.native().ok_or_else(|| self.no_native())?;
        native.restore_native(files, keep)?;
        // Uncommitted changes belonged to the state just replaced.
        pending.clear();
        Ok(())
    }
}

impl LoggedBackend {
    fn no_native(&self) -> Error {
        Error::InvalidArgument(format!(
            "backend {} does not write native checkpoints",
            self.inner.name()
        ))
    }
}
