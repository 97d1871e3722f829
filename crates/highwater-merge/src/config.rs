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

/// How the checkpoint's CPU-heavy background threads (the encode pool
/// and the merge pool) share the processor with the threads of the job.
///
/// A full checkpoint keeps every core busy encoding and compressing for a
/// while; at the same scheduling priority a processing thread that shares
/// a core with an encode thread is descheduled for whole timer ticks (the
/// state suite's `checkpoint_writer_pause_max_ms` read 8–9 ms, with a few
/// hundred puts above 1 ms per checkpoint, on 2 cores at 250 Hz). With the
/// pools lowered the job's threads win their core back at once, and the
/// checkpoint takes the CPU the job leaves (with `Low`, the same
/// checkpoint took 4.1–5.0 s instead of 2.9–3.1 s beside a writer that
/// never sleeps, and ran as fast as before on an otherwise idle machine;
/// `docs/architecture.md`, "Background priority").
///
/// On Linux this sets the pool threads' nice value (per thread), never
/// below the process's own; elsewhere it is not applied. A restore through
/// the manager decodes on the encode pool too: nothing else of the job
/// runs then, but other processes of the same scheduling group (the same
/// container or session) at the default priority take the CPU first —
/// choose `Normal` where restore time matters more than pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundPriority {
    /// The same priority as the job's threads.
    Normal,
    /// Nice 10: the job's threads get about nine tenths of a core the two
    /// share.
    Low,
    /// Nice 19: background work runs only on what the job leaves idle.
    Idle,
}

impl BackgroundPriority {
    /// The nice value the pool threads take (0 = unchanged).
    pub fn nice(self) -> i32 {
        match self {
            BackgroundPriority::Normal => 0,
            BackgroundPriority::Low => 10,
            BackgroundPriority::Idle => 19,
        }
    }

    /// Applies this priority to the calling thread: raises its nice value
    /// to [`nice`](Self::nice) unless it is already at least that high.
    /// Does nothing for `Normal` or off Linux.
    pub fn apply_to_current_thread(self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        if self != BackgroundPriority::Normal {
            let me = Some(rustix::thread::gettid());
            let now = rustix::process::getpriority_process(me)?;
            if now < self.nice() {
                rustix::process::setpriority_process(me, self.nice())?;
            }
        }
        Ok(())
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
/// `Adaptive` lets the checkpointer trade the two against the checkpoint
/// interval.
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
    /// zstd at a level the checkpointer moves along a ladder of levels
    /// (`strongest`, then those of 12, 9, 6, 3, 1, -1, -3, -5 between the
    /// two bounds, then `fastest`) so that a checkpoint takes at most
    /// `budget_percent` of [`CheckpointConfig::interval`]: one rung faster
    /// after any checkpoint that took longer, one rung stronger after a
    /// full checkpoint that took less than a third of it (the third leaves
    /// room for the stronger level's cost, so the level does not swing
    /// back at once). It starts at `strongest`; the level each checkpoint
    /// used is [`CheckpointInfo::compression_level`](crate::CheckpointInfo::compression_level).
    ///
    /// Artifacts are addressed by their compressed bytes, so a checkpoint
    /// after a change of level stores its chunks anew instead of reusing
    /// those of the previous full checkpoint; the ladder's few rungs and
    /// the third keep changes rare. Merges and savepoints, which run off
    /// the checkpoint's clock, use `strongest`. Needs an interval.
    Adaptive {
        /// The share of the interval, in percent (1..=100), a checkpoint
        /// may take.
        budget_percent: u8,
        /// The fastest level it goes down to (-7..=22).
        fastest: i32,
        /// The level it starts at and the strongest it goes back up to
        /// (`fastest..=22`).
        strongest: i32,
    },
}

/// The zstd levels a setting may name (negative ones are zstd's fast modes).
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// The levels between an adaptive setting's bounds, strongest first.
const ADAPTIVE_LADDER: [i32; 8] = [12, 9, 6, 3, 1, -1, -3, -5];

impl Compression {
    /// The default zstd level.
    pub const DEFAULT_LEVEL: i32 = 1;

    /// The zstd level, if artifacts are compressed (an adaptive setting's
    /// strongest).
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd { level } => Some(level),
            Compression::Adaptive { strongest, .. } => Some(strongest),
        }
    }

    /// The rungs of an adaptive setting, strongest first (empty otherwise).
    fn rungs(self) -> Vec<i32> {
        let Compression::Adaptive {
            fastest, strongest, ..
        } = self
        else {
            return Vec::new();
        };
        let mut rungs = vec![strongest];
        rungs.extend(
            ADAPTIVE_LADDER
                .iter()
                .copied()
                .filter(|l| *l < strongest && *l > fastest),
        );
        if fastest < strongest {
            rungs.push(fastest);
        }
        rungs
    }

    /// The level an adaptive setting uses after a checkpoint at `level`
    /// (full or not) took `took`, with checkpoints due every `interval`
    /// (see [`Compression::Adaptive`]); `level` itself for any other
    /// setting, or when `level` is not one of the setting's rungs.
    pub fn next_adaptive_level(
        self,
        level: i32,
        full: bool,
        took: Duration,
        interval: Duration,
    ) -> i32 {
        let Compression::Adaptive { budget_percent, .. } = self else {
            return level;
        };
        let rungs = self.rungs();
        let Some(at) = rungs.iter().position(|l| *l == level) else {
            return level;
        };
        let budget = interval.mul_f64(f64::from(budget_percent) / 100.0);
        if took > budget {
            rungs.get(at + 1).copied().unwrap_or(level)
        } else if full && took.saturating_mul(3) < budget && at > 0 {
            rungs[at - 1]
        } else {
            level
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
        match self.compression {
            Compression::None => {}
            Compression::Zstd { level } => {
                if !ZSTD_LEVELS.contains(&level) {
                    return bad(format!("zstd level must be in -7..=22: got={level}"));
                }
            }
            Compression::Adaptive {
                budget_percent,
                fastest,
                strongest,
            } => {
                if !(1..=100).contains(&budget_percent) {
                    return bad(format!(
                        "adaptive compression budget_percent must be in 1..=100: got={budget_percent}"
                    ));
                }
                if !ZSTD_LEVELS.contains(&fastest)
                    || !ZSTD_LEVELS.contains(&strongest)
                    || fastest > strongest
                {
                    return bad(format!(
                        "adaptive compression needs -7 <= fastest <= strongest <= 22: fastest={fastest} strongest={strongest}"
                    ));
                }
            }
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

    /// Encoder options of base (entries) artifacts (under
    /// [`Compression::Adaptive`], its strongest level: what merges and
    /// savepoints write).
    pub fn base_options(&self) -> EncodeOptions {
        match self.compression {
            Compression::Zstd { level }
            | Compression::Adaptive {
                strongest: level, ..
            } => EncodeOptions {
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
    fn adaptive_compression_steps_along_its_ladder_within_its_bounds() {
        let c = Compression::Adaptive {
            budget_percent: 50,
            fastest: -5,
            strongest: 6,
        };
        assert_eq!(c.rungs(), vec![6, 3, 1, -1, -3, -5]);
        let interval = Duration::from_secs(10);
        let ms = Duration::from_millis;
        // Over budget (5 s): one rung faster each time, down to `fastest`.
        let mut level = 6;
        let mut seen = vec![level];
        for _ in 0..7 {
            level = c.next_adaptive_level(level, false, ms(5_001), interval);
            seen.push(level);
        }
        assert_eq!(seen, vec![6, 3, 1, -1, -3, -5, -5, -5]);
        // Within budget but above a third of it: stays, full or not.
        assert_eq!(c.next_adaptive_level(1, true, ms(5_000), interval), 1);
        assert_eq!(c.next_adaptive_level(1, true, ms(1_667), interval), 1);
        // Under a third: a full checkpoint steps back up, to `strongest`
        // at most; an incremental one says nothing about a full one's cost.
        assert_eq!(c.next_adaptive_level(1, true, ms(1_666), interval), 3);
        assert_eq!(c.next_adaptive_level(6, true, ms(1), interval), 6);
        assert_eq!(c.next_adaptive_level(1, false, ms(1), interval), 1);
        // A level off the ladder, or another setting, is left as it is.
        assert_eq!(c.next_adaptive_level(2, true, ms(9_000), interval), 2);
        let fixed = Compression::Zstd { level: 1 };
        assert_eq!(fixed.next_adaptive_level(1, true, ms(9_000), interval), 1);
        // Equal bounds: one rung.
        let one = Compression::Adaptive {
            budget_percent: 100,
            fastest: -7,
            strongest: -7,
        };
        assert_eq!(one.rungs(), vec![-7]);
        assert_eq!(one.next_adaptive_level(-7, true, ms(20_000), interval), -7);
        // Merges and savepoints write at the strongest level.
        let merger = MergerConfig::default().with_compression(c);
        assert_eq!(merger.base_options().zstd_level, 6);
    }

    #[test]
    fn adaptive_compression_is_checked() {
        let adaptive = |budget_percent, fastest, strongest| {
            CheckpointConfig::default()
                .with_interval(Duration::from_secs(1))
                .with_merger(
                    MergerConfig::default().with_compression(Compression::Adaptive {
                        budget_percent,
                        fastest,
                        strongest,
                    }),
                )
        };
        assert!(adaptive(50, -5, 3).validate().is_ok());
        for (b, f, s) in [
            (0, -5, 3),
            (101, -5, 3),
            (50, 3, -5),
            (50, -8, 3),
            (50, -5, 23),
        ] {
            assert!(adaptive(b, f, s).validate().is_err(), "{b} {f} {s}");
        }
        let no_interval = CheckpointConfig {
            interval: None,
            ..adaptive(50, -5, 3)
        };
        let e = no_interval.validate().unwrap_err().to_string();
        assert!(e.contains("needs an interval"), "{e}");
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
    /// Scheduling priority of the encode and merge pools.
    pub background_priority: BackgroundPriority,
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
            background_priority: BackgroundPriority::Low,
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

    /// Sets [`background_priority`](Self::background_priority).
    pub fn with_background_priority(mut self, p: BackgroundPriority) -> Self {
        self.background_priority = p;
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
        if matches!(self.merger.compression, Compression::Adaptive { .. })
            && self.interval.is_none()
        {
            return bad(
                "adaptive compression needs an interval: it keeps a checkpoint within a share of it",
            );
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
