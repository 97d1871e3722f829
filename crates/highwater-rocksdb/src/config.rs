//! Configuration of a [`RocksDbBackend`](crate::RocksDbBackend).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use highwater_core::{Clock, DEFAULT_MAX_PARALLELISM, Error, Result, SystemClock};

/// Block compression of SST files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: fast, moderate ratio (the default, as in Flink's RocksDB backend).
    #[default]
    Lz4,
    /// Zstandard: better ratio, more CPU.
    Zstd,
}

/// The share of [`RocksDbConfig::memory_budget`] given to the block cache
/// (memtables charged to it), as a fraction: two thirds. The rest is
/// headroom for the allocator's retained memory, which RocksDB does not
/// account for: at 32 GiB of state under random gets, malloc held 1.8 GiB
/// of freed blocks beside the cache, whether the cache had 4 GiB or
/// 2.7 GiB (the raw `rocksdb` crate with the same options as much, glibc's
/// malloc or jemalloc alike); with the whole 4 GiB budget as cache the
/// process peaked at 6.0 GiB, with two thirds at 4.6 GiB (`docs/rocksdb.md`).
pub const BUDGET_CACHE_SHARE: (usize, usize) = (2, 3);

/// Key-value separation (RocksDB's integrated BlobDB): values stored apart
/// from their keys, in blob files written once at flush, so compactions
/// rewrite keys and small references instead of whole values. What it
/// buys is fewer bytes rewritten per byte written — smaller native
/// incremental checkpoints and less compaction I/O under random updates —
/// for a second read per get (the value's blob) and the space of
/// overwritten values until garbage collection relocates what is live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlobValues {
    /// Values of at least this many bytes (TTL envelope included) go to
    /// blob files; smaller ones stay in the SST files (`min_blob_size`).
    pub min_value_size: u64,
    /// Size RocksDB aims at for one blob file (`blob_file_size`).
    pub file_size: u64,
    /// Garbage collection: a compaction moves the live values it meets in
    /// the oldest `gc_age_cutoff` share of the blob files (0.0–1.0) into new
    /// ones, so that the old files empty and are deleted
    /// (`blob_garbage_collection_age_cutoff`). 0 turns it off: the space of
    /// overwritten and deleted values is then never reclaimed.
    pub gc_age_cutoff: f64,
}

impl Default for BlobValues {
    /// Values of 64 bytes or more in 256 MiB blob files, garbage collection
    /// over the oldest quarter (RocksDB's own cutoff).
    fn default() -> Self {
        BlobValues {
            min_value_size: 64,
            file_size: 256 << 20,
            gc_age_cutoff: 0.25,
        }
    }
}

/// Time-to-live handling inside RocksDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TtlOptions {
    /// Run the compaction filter that physically drops entries whose value
    /// envelope ([`highwater_core::ttl`]) has expired. Reads never return
    /// expired entries through the typed handles either way; the filter is
    /// what reclaims their space.
    pub compaction_filter: bool,
    /// Expiry stamped on values written with a plain envelope (no TTL of
    /// their own), counted from the write. `None` (the default) leaves such
    /// values without expiry. Values that already carry an expiry keep it.
    pub default_ttl: Option<Duration>,
}

/// How a [`RocksDbBackend`](crate::RocksDbBackend) opens and tunes RocksDB.
///
/// The defaults suit a stream-processing subtask holding a few GiB on a
/// machine shared with other subtasks: 64 MiB memtables (three of them),
/// a 256 MiB block cache, 16 KiB blocks, 10-bit bloom filters and LZ4.
#[derive(Debug, Clone)]
pub struct RocksDbConfig {
    /// Working directory. The backend owns it: it holds one database
    /// directory per generation plus temporary checkpoint directories, and
    /// is emptied on open (live state is restored from checkpoints, not
    /// from a previous process's files), except for what
    /// [`local_recovery`](Self::local_recovery) keeps.
    pub path: PathBuf,
    /// Local recovery: on open, the previous process's database files are
    /// set aside (in `local-recovery/` under [`path`](Self::path)) instead
    /// of deleted, and a restore of a native checkpoint takes each SST or
    /// blob file it needs from there when one has the same name, length
    /// and content address (read and hashed, so a damaged or partial file
    /// is fetched instead), fetching only the rest. The live database's
    /// directory also stays when the backend is dropped. What is set aside
    /// is deleted by the first restore or [`clear`](highwater_core::StateBackend::clear)
    /// (or the next open). On by default; off, every file is fetched and
    /// the directory is wiped on open and drop.
    pub local_recovery: bool,
    /// Native checkpoints (on by default): the checkpointer uploads the
    /// database's own SST files, sharing unchanged ones between
    /// checkpoints. Off, checkpoints are highwater's encoded records (full,
    /// then incremental from the changed keys, see
    /// [`change_tracking_bytes`](Self::change_tracking_bytes)) — slower to
    /// write and restore at scale, but readable by every backend — and a
    /// native checkpoint cannot be restored.
    pub native_checkpoints: bool,
    /// Size of one memtable, in bytes.
    pub write_buffer_size: usize,
    /// Memtables kept in memory (one active, the others being flushed).
    pub max_write_buffer_number: i32,
    /// Open SST files RocksDB keeps (-1 = unlimited).
    pub max_open_files: i32,
    /// Uncompressed size of a data block, in bytes.
    pub block_size: usize,
    /// Capacity of the LRU block cache, in bytes (index and filter blocks
    /// included). Ignored when [`memory_budget`](Self::memory_budget) is set.
    pub block_cache_size: usize,
    /// One bound for RocksDB's memory, in bytes, with headroom for the
    /// allocator: the process's resident memory stays near it (measured:
    /// 4.6 GiB at the peak for a 4 GiB budget and 32 GiB of state under
    /// random gets, the process's own memory included). When set, the
    /// block cache gets [`BUDGET_CACHE_SHARE`] of it and the memtables are charged to the
    /// cache through a write-buffer manager (which flushes once they use a
    /// third of the cache), so data blocks, index and filter blocks and
    /// memtables together stay within the cache's capacity as RocksDB
    /// accounts for them (it lets the cache run over briefly rather than
    /// fail a write). The rest of the budget is headroom for what RocksDB's
    /// accounting does not see (see [`BUDGET_CACHE_SHARE`]). `None` (the
    /// default) sizes the cache by
    /// [`block_cache_size`](Self::block_cache_size) and the memtables by
    /// [`write_buffer_size`](Self::write_buffer_size) ×
    /// [`max_write_buffer_number`](Self::max_write_buffer_number), apart,
    /// with no headroom.
    pub memory_budget: Option<usize>,
    /// Size RocksDB aims at for the SST files compactions write
    /// (`target_file_size_base`; the same on every level). Smaller files
    /// make a compaction rewrite a narrower key range, and so smaller
    /// native incremental checkpoints after it.
    pub target_file_size: u64,
    /// Bytes the first non-empty level below level 0 may hold before it is
    /// compacted down (`max_bytes_for_level_base`; levels are sized
    /// dynamically from the last one up).
    pub level_base_size: u64,
    /// Level-0 files that trigger a compaction into the level below
    /// (`level0_file_num_compaction_trigger`). 8 rather than RocksDB's 4:
    /// measured with the `large` suite (1 GiB, ten rounds of 1 % random
    /// changes), the worst native incremental fell from 41.9 % to 19.0 %
    /// of the full checkpoint and the mean from 9.0 % to 2.8 %, with
    /// random gets unchanged (bloom filters keep the extra level-0 files
    /// cheap to skip).
    pub level0_compaction_trigger: i32,
    /// The most bytes of keys (plus 8 each) the backend keeps to know what
    /// changed since the last snapshot, for
    /// [`SnapshotKind::Changes`](highwater_core::SnapshotKind::Changes)
    /// snapshots. When the keys written in one interval need more, the
    /// backend stops tracking them and answers the next changes snapshot
    /// with a full one (whose `kind()` says so). Native checkpoints (what
    /// the checkpointer takes of this backend) never read it, so a bulk
    /// load of millions of keys costs no memory here. 64 MiB by default:
    /// about 1.4 M distinct 40-byte keys between two snapshots.
    pub change_tracking_bytes: usize,
    /// Bloom filter bits per key (0 disables the filter). Ten bits give a
    /// false-positive rate of about 1 %.
    pub bloom_bits_per_key: f64,
    /// Block compression (of blob files too).
    pub compression: Compression,
    /// Key-value separation ([`BlobValues`]); `None` (the default) keeps
    /// values in the SST files. Needs the TTL compaction filter off
    /// ([`TtlOptions::compaction_filter`]): the filter reads every value a
    /// compaction meets, which with blob files is a random read each.
    pub blob_values: Option<BlobValues>,
    /// Collect RocksDB's internal statistics (tickers and histograms, a few
    /// percent of CPU); reported by [`RocksDbBackend::metrics`](crate::RocksDbBackend::metrics).
    pub statistics: bool,
    /// Write RocksDB's own write-ahead log. Off by default: durability comes
    /// from highwater's checkpoints (and its write-ahead log, if used), and
    /// the backend starts from a checkpoint after a crash anyway.
    pub rocksdb_wal: bool,
    /// Time-to-live handling.
    pub ttl: TtlOptions,
    /// Clock of the TTL compaction filter and of the default TTL.
    pub clock: Arc<dyn Clock>,
    /// Background threads for flushes and compactions.
    pub background_threads: i32,
    /// Number of key groups of the job; full snapshots are split into
    /// partitions along key-group boundaries.
    pub max_parallelism: u16,
}

impl RocksDbConfig {
    /// The defaults, with the working directory `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RocksDbConfig {
            path: path.into(),
            local_recovery: true,
            native_checkpoints: true,
            write_buffer_size: 64 << 20,
            max_write_buffer_number: 3,
            max_open_files: -1,
            block_size: 16 << 10,
            block_cache_size: 256 << 20,
            memory_budget: None,
            target_file_size: 64 << 20,
            level_base_size: 256 << 20,
            level0_compaction_trigger: 8,
            change_tracking_bytes: 64 << 20,
            bloom_bits_per_key: 10.0,
            compression: Compression::default(),
            blob_values: None,
            statistics: false,
            rocksdb_wal: false,
            ttl: TtlOptions {
                compaction_filter: true,
                default_ttl: None,
            },
            clock: Arc::new(SystemClock),
            background_threads: 2,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
        }
    }

    /// The block cache's capacity: [`BUDGET_CACHE_SHARE`] of the memory
    /// budget if one is set, else [`block_cache_size`](Self::block_cache_size).
    pub fn block_cache_capacity(&self) -> usize {
        match self.memory_budget {
            Some(budget) => {
                let (num, den) = BUDGET_CACHE_SHARE;
                budget / den * num
            }
            None => self.block_cache_size,
        }
    }

    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("rocksdb config: {m}")));
        if self.path.as_os_str().is_empty() {
            return bad("path is empty".into());
        }
        if self.write_buffer_size < 64 << 10 {
            return bad(format!(
                "write_buffer_size must be at least 64 KiB: got={}",
                self.write_buffer_size
            ));
        }
        if self.max_write_buffer_number < 2 {
            return bad(format!(
                "max_write_buffer_number must be at least 2: got={}",
                self.max_write_buffer_number
            ));
        }
        if self.max_open_files != -1 && self.max_open_files < 16 {
            return bad(format!(
                "max_open_files must be -1 or at least 16: got={}",
                self.max_open_files
            ));
        }
        if !(1 << 10..=1 << 24).contains(&self.block_size) {
            return bad(format!(
                "block_size must be in 1 KiB..=16 MiB: got={}",
                self.block_size
            ));
        }
        if !(0.0..=64.0).contains(&self.bloom_bits_per_key) {
            return bad(format!(
                "bloom_bits_per_key must be in 0..=64: got={}",
                self.bloom_bits_per_key
            ));
        }
        if let Some(budget) = self.memory_budget
            && self.block_cache_capacity() / 3 < self.write_buffer_size
        {
            return bad(format!(
                "memory_budget must hold at least 4.5 memtables (its block cache, two thirds of \
                 it, three; the memtables' third of the cache at least one): \
                 memory_budget={budget} write_buffer_size={}",
                self.write_buffer_size
            ));
        }
        if self.target_file_size < 1 << 20 || self.level_base_size < self.target_file_size {
            return bad(format!(
                "target_file_size must be at least 1 MiB and level_base_size at least as large: \
                 target_file_size={} level_base_size={}",
                self.target_file_size, self.level_base_size
            ));
        }
        if !(1..=16).contains(&self.level0_compaction_trigger) {
            return bad(format!(
                "level0_compaction_trigger must be in 1..=16 (RocksDB slows writes at 20 level-0 files): got={}",
                self.level0_compaction_trigger
            ));
        }
        if let Some(b) = self.blob_values {
            if b.file_size < 1 << 20 || !(0.0..=1.0).contains(&b.gc_age_cutoff) {
                return bad(format!(
                    "blob_values: file_size must be at least 1 MiB and gc_age_cutoff in 0..=1: \
                     file_size={} gc_age_cutoff={}",
                    b.file_size, b.gc_age_cutoff
                ));
            }
            if self.ttl.compaction_filter {
                return bad(
                    "blob_values needs ttl.compaction_filter off: the filter would read every \
                     value a compaction meets back from its blob file"
                        .into(),
                );
            }
        }
        if self.background_threads < 1 {
            return bad("background_threads must be at least 1".into());
        }
        if self.max_parallelism == 0 {
            return bad("max_parallelism must be at least 1".into());
        }
        if self.ttl.default_ttl.is_some_and(|d| d.is_zero()) {
            return bad("default_ttl must be positive".into());
        }
        Ok(())
    }
}
