//! The live backend as the manager hands it out: every write fails once
//! the manager is closed, and every operation is counted (published as
//! `highwater_backend_operations_total` by
//! `StateManager::record_backend_metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use highwater_core::{
    BackendStats, BulkRestore, BulkThrough, Error, NativeCheckpoints, RecordBlock, Result,
    SnapshotKind, StateBackend, StateSnapshot, WriteBatch,
};

/// The error of every state change and checkpoint after `close()`.
pub(crate) fn closed_error() -> Error {
    Error::Closed(
        "the state manager is closed: state changes, checkpoints and restores fail".into(),
    )
}

/// Operations served through the handed-out backend since the manager was
/// built (one relaxed increment each; the checkpoint pipeline's own reads
/// of the backend are not counted).
#[derive(Debug, Default)]
pub(crate) struct OpCounts {
    get: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    batch: AtomicU64,
    scan: AtomicU64,
}

impl OpCounts {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by operation name, as `docs/metrics.md` labels them.
    pub(crate) fn by_op(&self) -> [(&'static str, u64); 5] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("get", l(&self.get)),
            ("put", l(&self.put)),
            ("delete", l(&self.delete)),
            ("batch", l(&self.batch)),
            ("scan", l(&self.scan)),
        ]
    }
}

/// The live backend as the manager hands it out (to state handles and
/// through [`StateManager::backend`]): reads pass through, and every write
/// fails with [`Error::Closed`] once the manager is closed. The checkpoint
/// pipeline keeps the backend itself.
pub(crate) struct Guarded {
    pub(crate) inner: Arc<dyn StateBackend>,
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) ops: Arc<OpCounts>,
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
        OpCounts::bump(&self.ops.get);
        self.inner.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.open()?;
        OpCounts::bump(&self.ops.put);
        self.inner.put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.open()?;
        OpCounts::bump(&self.ops.delete);
        self.inner.delete(key)
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.open()?;
        OpCounts::bump(&self.ops.batch);
        self.inner.write_batch(batch)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        OpCounts::bump(&self.ops.scan);
        self.inner.scan_prefix(prefix)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        OpCounts::bump(&self.ops.scan);
        self.inner.scan_range(start, end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        self.inner.snapshot(kind)
    }

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        self.open()?;
        self.inner.restore(blocks)
    }

    fn restore_is_atomic(&self) -> bool {
        self.inner.restore_is_atomic()
    }

    fn clear(&self) -> Result<()> {
        self.open()?;
        self.inner.clear()
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }

    /// The wrapped backend's; committing it fails once the manager closed.
    fn bulk_restore(&self) -> Option<Box<dyn BulkRestore + '_>> {
        let inner = self.inner.bulk_restore()?;
        Some(Box::new(BulkThrough::new(
            inner,
            Box::new(move |inner| {
                self.open()?;
                inner.commit()
            }),
        )))
    }

    fn native(&self) -> Option<&dyn NativeCheckpoints> {
        self.inner.native()
    }
}
