//! How a recovery runs: [`RecoveryConfig`] and its parts.

use std::time::Duration;

use highwater_core::{Error, Result};
use serde::Serialize;

/// How thoroughly fetched checkpoint data is checked before it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum VerificationLevel {
    /// No content-address check. Artifacts are still decoded through
    /// [`decode_checked`](highwater_core::decode_checked), whose header,
    /// payload checksum and bounds checks cannot be turned off, so damaged
    /// bytes are still refused; only the whole-artifact xxh3-128 check (and
    /// the deletion of a damaged stored copy it triggers) is skipped.
    ///
    /// What this level cannot catch: a store that returns *another valid
    /// artifact* under an id. The decoder binds bytes to their manifest
    /// reference only by kind, entry count, key-group range of every
    /// record, stored size and codec, so two artifacts that agree in all of
    /// these (same range and entry count, equal compressed size), swapped,
    /// restore a wrong state without an error. `Checksum` catches every
    /// such swap at the cost of one xxh3-128 pass over the fetched bytes.
    None,
    /// Every fetched artifact's xxh3-128 must equal its content address
    /// (the id the manifest names it by). A mismatch is read a second time;
    /// if the stored copy itself is damaged it is deleted, so the next
    /// checkpoint holding that data writes it afresh. That check covers
    /// the payload, so the decoder does not compute the payload's own
    /// checksum again
    /// ([`DecodeLimits::content_address_checked`](highwater_core::DecodeLimits::content_address_checked)).
    #[default]
    Checksum,
    /// `Checksum`, plus cross-checks of the manifest against its chain: the
    /// parent manifest (if still stored) must hold exactly the layers this
    /// one builds on, every artifact reference must lie inside the job's key
    /// groups and be named once per layer and range, and every record of
    /// every fetched artifact is decoded, including records a rescaled or
    /// partial recovery then filters out.
    Full,
}

/// How artifacts are fetched from the checkpoint store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum PrefetchStrategy {
    /// One artifact at a time (stores that throttle concurrent requests).
    Sequential,
    /// At most this many requests in flight.
    Concurrent(usize),
    /// Four requests per decode thread, at least 8 and at most 64: enough
    /// to hide object-store latency behind decoding without queueing more
    /// compressed bytes than the decoders can take.
    #[default]
    Adaptive,
}

impl PrefetchStrategy {
    /// Requests in flight for `threads` decode threads.
    pub fn concurrency(self, threads: usize) -> usize {
        match self {
            PrefetchStrategy::Sequential => 1,
            PrefetchStrategy::Concurrent(n) => n.max(1),
            PrefetchStrategy::Adaptive => (threads * 4).clamp(8, 64),
        }
    }
}

/// How folded state is loaded into a backend without a bulk restore
/// (RocksDB, Redis). A backend with one
/// ([`StateBackend::bulk_restore`](highwater_core::StateBackend::bulk_restore),
/// the memory backend) is loaded by every decode thread as it decodes,
/// atomically, whatever the strategy.
///
/// Measured at 1 GiB into the memory backend on 2 shared cores, before it
/// had a bulk restore (`cargo xtask bench recovery`, two runs): `Restore`
/// 56 and 134 MB/s, `Parallel` 33 and 105 MB/s (at 32 MiB the order was
/// the other way round: 61 against 105 MB/s). `Parallel` holds the whole
/// folded state in memory before loading, which costs more than it gains
/// at that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum LoadStrategy {
    /// Stream folded ranges, as they finish, into the backend's `restore`
    /// on the recovering thread: decoding runs in parallel with one
    /// loading thread. Fails atomically where the backend's `restore` does
    /// (the memory backend builds the new state aside).
    #[default]
    Restore,
    /// Decode and fold every range first (in parallel, holding the folded
    /// state in memory), then `clear` the backend and load the ranges from
    /// all decode threads at once with concurrent single-key writes, then
    /// start a new change-tracking epoch (a full snapshot, dropped). A
    /// damaged artifact is found before the backend is touched; a backend
    /// error while loading leaves it partly loaded.
    Parallel,
}

/// Configuration of a recovery (names after the reference documents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RecoveryConfig {
    /// Threads that decode, decompress and fold key-group ranges in
    /// parallel; 0 means one per core.
    pub max_parallel_threads: usize,
    /// Give up (with an `Unavailable` I/O error of kind `TimedOut`) when a
    /// recovery takes longer than this; `None` waits indefinitely. Checked
    /// while fetching and between phases.
    pub recovery_timeout: Option<Duration>,
    /// On a corrupt or missing manifest or artifact, fall back to the
    /// previous checkpoint that qualifies for the target (recorded in
    /// [`RecoveryStats::fallbacks`](crate::RecoveryStats::fallbacks) and
    /// logged as a `tracing` warning). When off, such a checkpoint is a
    /// typed error naming the checkpoint and the artifact.
    pub optimistic_recovery: bool,
    /// How artifacts are fetched.
    pub prefetch_strategy: PrefetchStrategy,
    /// How fetched data is checked.
    pub verification_level: VerificationLevel,
    /// How folded state is loaded into the backend.
    pub load_strategy: LoadStrategy,
    /// The most stored bytes of a checkpoint held at once by a restore
    /// that overlaps fetching with decoding ([`LoadStrategy::Restore`]
    /// into a backend whose restore is atomic, such as the memory
    /// backend): artifacts being fetched, fetched and waiting for the rest
    /// of their range, or being decoded. Fetching pauses at the bound
    /// until decoders let go of artifacts, so a restore's peak memory is
    /// the restored state plus about this much, not plus the whole
    /// checkpoint. One artifact is always fetched when nothing else is
    /// under way, so a larger artifact still restores. Default 256 MiB,
    /// about a second of decoding on two cores; reported as
    /// [`RecoveryStats::fetch_ahead_peak_bytes`](crate::RecoveryStats::fetch_ahead_peak_bytes).
    pub fetch_ahead_bytes: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_parallel_threads: 0,
            recovery_timeout: None,
            optimistic_recovery: true,
            prefetch_strategy: PrefetchStrategy::Adaptive,
            verification_level: VerificationLevel::Checksum,
            load_strategy: LoadStrategy::Restore,
            fetch_ahead_bytes: 256 << 20,
        }
    }
}

impl RecoveryConfig {
    /// Sets [`RecoveryConfig::max_parallel_threads`].
    pub fn max_parallel_threads(mut self, n: usize) -> Self {
        self.max_parallel_threads = n;
        self
    }

    /// Sets [`RecoveryConfig::recovery_timeout`].
    pub fn recovery_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.recovery_timeout = timeout;
        self
    }

    /// Sets [`RecoveryConfig::optimistic_recovery`].
    pub fn optimistic_recovery(mut self, on: bool) -> Self {
        self.optimistic_recovery = on;
        self
    }

    /// Sets [`RecoveryConfig::prefetch_strategy`].
    pub fn prefetch_strategy(mut self, strategy: PrefetchStrategy) -> Self {
        self.prefetch_strategy = strategy;
        self
    }

    /// Sets [`RecoveryConfig::verification_level`].
    pub fn verification_level(mut self, level: VerificationLevel) -> Self {
        self.verification_level = level;
        self
    }

    /// Sets [`RecoveryConfig::load_strategy`].
    pub fn load_strategy(mut self, strategy: LoadStrategy) -> Self {
        self.load_strategy = strategy;
        self
    }

    /// Sets [`RecoveryConfig::fetch_ahead_bytes`].
    pub fn fetch_ahead_bytes(mut self, bytes: u64) -> Self {
        self.fetch_ahead_bytes = bytes;
        self
    }

    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<()> {
        if let PrefetchStrategy::Concurrent(0) = self.prefetch_strategy {
            return Err(Error::InvalidArgument(
                "prefetch_strategy Concurrent(n) needs n >= 1".into(),
            ));
        }
        if self.fetch_ahead_bytes == 0 {
            return Err(Error::InvalidArgument(
                "fetch_ahead_bytes must be positive".into(),
            ));
        }
        if self.recovery_timeout == Some(Duration::ZERO) {
            return Err(Error::InvalidArgument(
                "recovery_timeout must be positive (None waits indefinitely)".into(),
            ));
        }
        Ok(())
    }

    /// The number of decode threads this configuration asks for.
    pub fn threads(&self) -> usize {
        match self.max_parallel_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}
