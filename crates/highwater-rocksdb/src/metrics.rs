//! Operation counters and RocksDB properties of a backend.

use std::sync::atomic::{AtomicU64, Ordering};

/// Operation counters, updated without locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) gets: AtomicU64,
    pub(crate) puts: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_mutations: AtomicU64,
    pub(crate) scans: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) native_checkpoints: AtomicU64,
    pub(crate) local_files_hashed: AtomicU64,
    pub(crate) local_files_recorded: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> OpCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpCounters {
            gets: l(&self.gets),
            puts: l(&self.puts),
            deletes: l(&self.deletes),
            batches: l(&self.batches),
            batch_mutations: l(&self.batch_mutations),
            scans: l(&self.scans),
            snapshots: l(&self.snapshots),
            native_checkpoints: l(&self.native_checkpoints),
            local_files_hashed: l(&self.local_files_hashed),
            local_files_recorded: l(&self.local_files_recorded),
        }
    }
}

/// Operations served since the backend was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// Point reads.
    pub gets: u64,
    /// Single puts.
    pub puts: u64,
    /// Single deletes.
    pub deletes: u64,
    /// Write batches.
    pub batches: u64,
    /// Mutations inside write batches.
    pub batch_mutations: u64,
    /// Prefix and range scans.
    pub scans: u64,
    /// Snapshots (full and changes).
    pub snapshots: u64,
    /// Native checkpoints.
    pub native_checkpoints: u64,
    /// Local files restores took after reading and hashing them (no
    /// recorded content address, or the file changed since).
    pub local_files_hashed: u64,
    /// Local files restores took by their recorded content address and
    /// unchanged `stat` identity, without reading them.
    pub local_files_recorded: u64,
}

/// What [`RocksDbBackend::metrics`](crate::RocksDbBackend::metrics) reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RocksDbMetrics {
    /// Operation counters.
    pub counters: OpCounters,
    /// RocksDB's estimate of the number of keys (`rocksdb.estimate-num-keys`;
    /// counts overwritten and deleted keys until compaction).
    pub estimate_num_keys: u64,
    /// Bytes of the active memtable.
    pub active_memtable_bytes: u64,
    /// Bytes of all memtables, including those being flushed and those
    /// pinned by snapshots or iterators.
    pub all_memtables_bytes: u64,
    /// Bytes held by the block cache.
    pub block_cache_usage: u64,
    /// Bytes of the block cache pinned by readers.
    pub block_cache_pinned_usage: u64,
    /// Bytes of table readers outside the block cache
    /// (`rocksdb.estimate-table-readers-mem`; index and filter blocks are
    /// in the cache, so this is small).
    pub table_readers_bytes: u64,
    /// RocksDB's memory in all: the block cache, table readers outside it
    /// and the memtables (charged to the cache, so counted once, when
    /// [`RocksDbConfig::memory_budget`](crate::RocksDbConfig::memory_budget)
    /// is set). Allocator overhead and the process's other memory are not
    /// included.
    pub memory_bytes: u64,
    /// Bytes of the SST files the current version uses.
    pub live_sst_bytes: u64,
    /// Estimated bytes of live data.
    pub estimate_live_data_bytes: u64,
    /// Estimated bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Compactions running now.
    pub running_compactions: u64,
    /// RocksDB snapshots held (by highwater snapshots being read).
    pub snapshots: u64,
}
