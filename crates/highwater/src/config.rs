//! Configuration of a [`StateManager`](crate::StateManager).

use std::time::Duration;

use highwater_core::{DEFAULT_MAX_PARALLELISM, Error, Result};
use highwater_merge::MergerConfig;

/// How checkpoints are taken, encoded, uploaded and retained.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// Number of key groups (the upper bound of parallelism). Fixed for the
    /// life of a job: checkpoints record it and restores check it.
    pub max_parallelism: u16,
    /// Take a checkpoint when [`StateManager::maybe_checkpoint`](crate::StateManager::maybe_checkpoint)
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
    pub max_chain_length: usize,
    /// Merge chains in the background: after a checkpoint whose chain is
    /// due under `merger.merge_strategy`, its layers are folded into a new
    /// base on a pool of `merger.parallel_threads`, and the next checkpoint
    /// builds on that base instead of the long chain. Off by default: chains
    /// are then bounded by `max_chain_length` (a full checkpoint) alone.
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
            max_chain_length: 8,
            background_merge: false,
            merger: MergerConfig::default(),
            key_groups_per_artifact: 8,
            encode_threads: 0,
            io_concurrency: 16,
        }
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
        if self.max_chain_length == 0 {
            return bad("max_chain_length must be at least 1");
        }
        if self.key_groups_per_artifact == 0 {
            return bad("key_groups_per_artifact must be at least 1");
        }
        if self.io_concurrency == 0 {
            return bad("io_concurrency must be at least 1");
        }
        if self.background_merge && self.merger.max_chain_length > self.max_chain_length {
            return Err(Error::InvalidArgument(format!(
                "merger.max_chain_length ({}) above max_chain_length ({}): chains would be cut by full checkpoints before any merge",
                self.merger.max_chain_length, self.max_chain_length
            )));
        }
        self.merger.validate()
    }
}
