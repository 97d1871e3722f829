//! The live backend as the manager hands it out: every write fails once
//! the manager is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use highwater_core::{
    BackendStats, Error, NativeCheckpoints, RecordBlock, Result, SnapshotKind, StateBackend,
    StateSnapshot, WriteBatch,
};

/// The error of every state change and checkpoint after `close()`.
pub(crate) fn closed_error() -> Error {
    Error::Closed(
        "the state manager is closed: state changes, checkpoints and restores fail".into(),
    )
}

/// The live backend as the manager hands it out (to state handles and
/// through [`StateManager::backend`]): reads pass through, and every write
/// fails with [`Error::Closed`] once the manager is closed. The checkpoint
/// pipeline keeps the backend itself.
pub(crate) struct Guarded {
    pub(crate) inner: Arc<dyn StateBackend>,
    pub(crate) closed: Arc<AtomicBool>,
}

impl Guarded {
    fn open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }
}

impl StateBackend for Guarded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.open()?;
        self.inner.put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.open()?;
        self.inner.delete(key)
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.open()?;
        self.inner.write_batch(batch)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(prefix)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_range(start, end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        self.inner.snapshot(kind)
    }

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        self.open()?;
        self.inner.restore(blocks)
    }

    fn clear(&self) -> Result<()> {
        self.open()?;
        self.inner.clear()
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }

    fn native(&self) -> Option<&dyn NativeCheckpoints> {
        self.inner.native()
    }
}
