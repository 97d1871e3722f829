//! Configuration of chunking, merging, compression and deduplication.

use std::time::Duration;

use highwater_core::{DEFAULT_MAX_PARALLELISM, EncodeOptions, Error, Result};
use serde::{Deserialize, Serialize};

/// When a chain (base + deltas) is folded into a new base.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MergeStrategy {
    /// When the chain has `merge_at_chain_length` layers or more.
    ChainLength,
    /// When the deltas' stored bytes reach this fraction of the base's
    /// stored bytes (or the chain reaches `merge_at_chain_length`, whichever is
    /// first; the chain bound always holds).
    DeltaRatio(f64),
}

/// What a merge keeps when several deltas of a chain write the same key.
///
/// Conflicts are between deltas only: the base is the state before the
/// first delta, and every delta write replaces it. Only
/// [`LastWriteWins`](ConflictResolution::LastWriteWins) reproduces the
/// checkpoint's exact state (it is how restore applies a chain); the other
/// two make a merged base that differs from the chain it replaces and
/// exist for engines that want that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConflictResolution {
    /// The write of the latest delta (highest layer sequence) wins.
    #[default]
    LastWriteWins,
    /// The write of the earliest delta that wrote the key wins; later
    /// deltas' writes to it (puts and deletes) are ignored.
    FirstWriteWins,
    /// The write with the greatest timestamp wins. A put's timestamp is the
    /// expiry in its TTL envelope; plain puts and deletes have none and rank
    /// below every timestamped write. Ties (including "none" against
    /// "none") go to the later delta.
    TimestampPriority,
}

/// How records are cut into content-defined chunks.
///
/// After each record (in key order) the chunk is cut when it holds
/// `max_bytes`, or when it holds at least `min_bytes` and
/// `xxh3(key) mod target_bytes < record_len` — a decision that depends only
/// on the record itself, so inserting or deleting a record moves at most the
/// boundaries next to it and every other chunk keeps its bytes and its
/// content address. Expected chunk size is about `min_bytes + target_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// No cut before a chunk holds this many record bytes.
    pub min_bytes: usize,
    /// The average distance between content-defined cuts.
    pub target_bytes: usize,
    /// A cut is forced at this many record bytes.
    pub max_bytes: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            min_bytes: 1 << 20,
            target_bytes: 3 << 20,
            max_bytes: 16 << 20,
        }
    }
}

/// How checkpoint artifacts are compressed.
///
/// Measured by the state suite (`checkpoint_full_throughput` and
/// `checkpoint_full_throughput_fast`): on state-like records level 1
/// compresses about 2.5x, and zstd's fast level -5 writes checkpoints about
/// 1.7x faster for about 1.9x; higher levels cost much more time for little
/// more. `None` writes the most bytes and spends no CPU on compression: for
/// stores on a fast local disk, or state that does not compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Artifacts are stored raw.
    None,
    /// zstd at `level`: -7..=22, negative levels being zstd's fast modes.
    /// An artifact is stored raw when it is shorter than
    /// [`MergerConfig::compression_threshold`] or compression would not
    /// make it smaller.
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

impl Compression {
    /// The default zstd level.
    pub const DEFAULT_LEVEL: i32 = 1;

    /// The zstd level, if artifacts are compressed.
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd { level } => Some(level),
        }
    }
}

impl Default for Compression {
    /// zstd at level 1.
    fn default() -> Self {
        Compression::Zstd {
            level: Compression::DEFAULT_LEVEL,
        }
    }
}

/// Settings of the merger and of the artifacts it and the checkpointer write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MergerConfig {
    /// A chain of this many layers (base + deltas) is merged. (Called
    /// `max_chain_length` before; the old name is still read.)
    #[serde(alias = "max_chain_length")]
    pub merge_at_chain_length: usize,
    /// Compress delta artifacts (base artifacts are always compressed when
    /// at least `compression_threshold` bytes and compression saves space).
    pub enable_delta_compression: bool,
    /// Record streams shorter than this are stored raw.
    pub compression_threshold: usize,
    /// How artifacts are compressed: zstd at a level (default 1), or not
    /// at all.
    pub compression: Compression,
    /// When to merge.
    pub merge_strategy: MergeStrategy,
    /// Store keys operator-relative, so identical state of several
    /// operators is stored once (format version 2 artifacts).
    pub enable_deduplication: bool,
    /// What a merge keeps when deltas overlap.
    pub conflict_resolution: ConflictResolution,
    /// Threads of the merge pool (0 = number of cores).
    pub parallel_threads: usize,
    /// Content-defined chunking of artifacts.
    pub chunking: ChunkConfig,
}

impl Default for MergerConfig {
    fn default() -> Self {
        MergerConfig {
            merge_at_chain_length: 4,
            enable_delta_compression: true,
            compression_threshold: 512,
            compression: Compression::default(),
            merge_strategy: MergeStrategy::ChainLength,
            enable_deduplication: true,
            conflict_resolution: ConflictResolution::LastWriteWins,
            parallel_threads: 0,
            chunking: ChunkConfig::default(),
        }
    }
}

impl MergerConfig {
    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.merge_at_chain_length < 2 {
            return bad(format!(
                "merger merge_at_chain_length must be at least 2: got={}",
                self.merge_at_chain_length
            ));
        }
        if let Compression::Zstd { level } = self.compression
            && !(-7..=22).contains(&level)
        {
            return bad(format!("zstd level must be in -7..=22: got={level}"));
        }
        if let MergeStrategy::DeltaRatio(f) = self.merge_strategy
            && !(f.is_finite() && f > 0.0)
        {
            return bad(format!(
                "delta ratio must be a positive finite number: got={f}"
            ));
        }
        let c = &self.chunking;
        if c.min_bytes == 0 || c.target_bytes == 0 || c.max_bytes < c.min_bytes {
            return bad(format!(
                "chunking needs 0 < min_bytes <= max_bytes and target_bytes > 0: min={} target={} max={}",
                c.min_bytes, c.target_bytes, c.max_bytes
            ));
        }
        if c.max_bytes > (512 << 20) {
            return bad(format!(
                "chunk max_bytes above 512 MiB: got={}",
                c.max_bytes
            ));
        }
        Ok(())
    }

    /// Encoder options of base (entries) artifacts.
    pub fn base_options(&self) -> EncodeOptions {
        match self.compression {
            Compression::Zstd { level } => EncodeOptions {
                zstd_level: level,
                compression_threshold: self.compression_threshold,
            },
            Compression::None => EncodeOptions {
                zstd_level: Compression::DEFAULT_LEVEL,
                compression_threshold: usize::MAX,
            },
        }
    }

    /// Encoder options of delta artifacts.
    pub fn delta_options(&self) -> EncodeOptions {
        let base = self.base_options();
        EncodeOptions {
            compression_threshold: if self.enable_delta_compression {
                base.compression_threshold
            } else {
                usize::MAX
            },
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        MergerConfig::default().validate().unwrap();
        let d = MergerConfig::default;
        let bad = [
            MergerConfig {
                merge_at_chain_length: 1,
                ..d()
            },
            MergerConfig {
                merge_strategy: MergeStrategy::DeltaRatio(f64::NAN),
                ..d()
            },
            MergerConfig {
                chunking: ChunkConfig {
                    max_bytes: 10,
                    ..ChunkConfig::default()
                },
                ..d()
            },
            MergerConfig {
                compression: Compression::Zstd { level: 40 },
                ..d()
            },
            MergerConfig {
                compression: Compression::Zstd { level: -8 },
                ..d()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn disabling_delta_compression_stores_deltas_raw() {
        let c = MergerConfig {
            enable_delta_compression: false,
            ..MergerConfig::default()
        };
        assert_eq!(c.delta_options().compression_threshold, usize::MAX);
        assert_eq!(c.base_options().compression_threshold, 512);
    }
}

/// How checkpoints are taken, encoded, uploaded and retained.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// Number of key groups (the upper bound of parallelism). Fixed for the
    /// life of a job: checkpoints record it and restores check it.
    pub max_parallelism: u16,
    /// Take a checkpoint when `maybe_checkpoint` ([`Checkpointer::maybe_checkpoint`](crate::Checkpointer::maybe_checkpoint))
    /// is called and this much time has passed since the last one.
    pub interval: Option<Duration>,
    /// Completed checkpoints to keep; older manifests and every artifact no
    /// retained manifest references are deleted after each checkpoint.
    pub max_retained: usize,
    /// Write incremental checkpoints (only changes since the previous one).
    pub incremental: bool,
    /// Longest chain of layers (base + deltas) before a full checkpoint is
    /// taken instead of another incremental, which bounds restore work even
    /// when merges lag behind.
    pub max_chain_before_full: usize,
    /// Merge chains in the background: after a checkpoint whose chain is
    /// due under `merger.merge_strategy`, its layers are folded into a new
    /// base on a pool of `merger.parallel_threads`, and the next checkpoint
    /// builds on that base instead of the long chain. Off by default: chains
    /// are then bounded by `max_chain_before_full` (a full checkpoint) alone.
    pub background_merge: bool,
    /// Chunking, compression, deduplication and merge settings.
    pub merger: MergerConfig,
    /// Key groups per artifact: state of one operator is split into
    /// artifacts of this many key groups, so unchanged chunks dedup.
    pub key_groups_per_artifact: u16,
    /// Threads that encode and compress artifacts (0 = number of cores).
    pub encode_threads: usize,
    /// Artifacts uploaded or fetched at the same time.
    pub io_concurrency: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            interval: None,
            max_retained: 3,
            incremental: true,
            max_chain_before_full: 8,
            background_merge: false,
            merger: MergerConfig::default(),
            key_groups_per_artifact: 8,
            encode_threads: 0,
            io_concurrency: 16,
        }
    }
}

/// Builder-style setters, so that a configuration can be written in one
/// expression although the struct is `#[non_exhaustive]`:
/// `CheckpointConfig::default().with_interval(d).with_background_merge(true)`.
impl CheckpointConfig {
    /// Sets [`max_parallelism`](Self::max_parallelism).
    pub fn with_max_parallelism(mut self, n: u16) -> Self {
        self.max_parallelism = n;
        self
    }

    /// Sets [`interval`](Self::interval).
    pub fn with_interval(mut self, every: Duration) -> Self {
        self.interval = Some(every);
        self
    }

    /// Sets [`max_retained`](Self::max_retained).
    pub fn with_max_retained(mut self, n: usize) -> Self {
        self.max_retained = n;
        self
    }

    /// Sets [`incremental`](Self::incremental).
    pub fn with_incremental(mut self, on: bool) -> Self {
        self.incremental = on;
        self
    }

    /// Sets [`max_chain_before_full`](Self::max_chain_before_full).
    pub fn with_max_chain_before_full(mut self, n: usize) -> Self {
        self.max_chain_before_full = n;
        self
    }

    /// Sets [`background_merge`](Self::background_merge).
    pub fn with_background_merge(mut self, on: bool) -> Self {
        self.background_merge = on;
        self
    }

    /// Sets [`merger`](Self::merger).
    pub fn with_merger(mut self, merger: MergerConfig) -> Self {
        self.merger = merger;
        self
    }

    /// Sets [`key_groups_per_artifact`](Self::key_groups_per_artifact).
    pub fn with_key_groups_per_artifact(mut self, n: u16) -> Self {
        self.key_groups_per_artifact = n;
        self
    }

    /// Sets [`encode_threads`](Self::encode_threads).
    pub fn with_encode_threads(mut self, n: usize) -> Self {
        self.encode_threads = n;
        self
    }

    /// Sets [`io_concurrency`](Self::io_concurrency).
    pub fn with_io_concurrency(mut self, n: usize) -> Self {
        self.io_concurrency = n;
        self
    }
}

/// Builder-style setters of the `#[non_exhaustive]` merger settings.
impl MergerConfig {
    /// Sets [`merge_at_chain_length`](Self::merge_at_chain_length).
    pub fn with_merge_at_chain_length(mut self, n: usize) -> Self {
        self.merge_at_chain_length = n;
        self
    }

    /// Sets [`enable_delta_compression`](Self::enable_delta_compression).
    pub fn with_delta_compression(mut self, on: bool) -> Self {
        self.enable_delta_compression = on;
        self
    }

    /// Sets [`compression_threshold`](Self::compression_threshold).
    pub fn with_compression_threshold(mut self, bytes: usize) -> Self {
        self.compression_threshold = bytes;
        self
    }

    /// Sets [`compression`](Self::compression).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`merge_strategy`](Self::merge_strategy).
    pub fn with_merge_strategy(mut self, strategy: MergeStrategy) -> Self {
        self.merge_strategy = strategy;
        self
    }

    /// Sets [`enable_deduplication`](Self::enable_deduplication).
    pub fn with_deduplication(mut self, on: bool) -> Self {
        self.enable_deduplication = on;
        self
    }

    /// Sets [`conflict_resolution`](Self::conflict_resolution).
    pub fn with_conflict_resolution(mut self, rule: ConflictResolution) -> Self {
        self.conflict_resolution = rule;
        self
    }

    /// Sets [`parallel_threads`](Self::parallel_threads).
    pub fn with_parallel_threads(mut self, n: usize) -> Self {
        self.parallel_threads = n;
        self
    }

    /// Sets [`chunking`](Self::chunking).
    pub fn with_chunking(mut self, chunking: ChunkConfig) -> Self {
        self.chunking = chunking;
        self
    }
}

impl CheckpointConfig {
    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.max_parallelism == 0 {
            return bad("max_parallelism must be at least 1");
        }
        if self.max_retained == 0 {
            return bad("max_retained must be at least 1");
        }
        if self.max_chain_before_full == 0 {
            return bad("max_chain_before_full must be at least 1");
        }
        if self.key_groups_per_artifact == 0 {
            return bad("key_groups_per_artifact must be at least 1");
        }
        if self.io_concurrency == 0 {
            return bad("io_concurrency must be at least 1");
        }
        if self.background_merge && self.merger.merge_at_chain_length > self.max_chain_before_full {
            return Err(Error::InvalidArgument(format!(
                "merger.merge_at_chain_length ({}) above max_chain_before_full ({}): chains would be cut by full checkpoints before any merge",
                self.merger.merge_at_chain_length, self.max_chain_before_full
            )));
        }
        self.merger.validate()
    }
}
