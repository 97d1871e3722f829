//! What a recovery reports: [`RecoveryStats`] at the end and [`Progress`]
//! while it runs.

use std::time::Duration;

use highwater_core::CheckpointId;
use serde::Serialize;

/// A checkpoint recovery skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fallback {
    /// The checkpoint that could not be used.
    pub checkpoint: CheckpointId,
    /// The error that disqualified it (names the artifact when one was at
    /// fault).
    pub reason: String,
}

/// Statistics of one recovery.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[non_exhaustive]
pub struct RecoveryStats {
    /// The checkpoint the state was recovered from; `None` when the state
    /// was rebuilt from the write-ahead log alone.
    pub checkpoint: Option<CheckpointId>,
    /// Layers (base + deltas) of that checkpoint's chain.
    pub chain_length: usize,
    /// Key-group ranges decoded and folded.
    pub ranges: usize,
    /// Distinct artifacts fetched.
    pub artifacts_fetched: usize,
    /// Bytes fetched from the checkpoint store (each artifact counted once
    /// per successful read).
    pub bytes_fetched: u64,
    /// Native files (RocksDB SST files) the backend still held locally,
    /// verified by length and content address, and so did not fetch
    /// (local recovery).
    pub artifacts_local: usize,
    /// Bytes of those files.
    pub bytes_local: u64,
    /// Bytes of keys and values loaded into the backend.
    pub logical_bytes: u64,
    /// Entries loaded into the backend from the checkpoint.
    pub entries_loaded: u64,
    /// Records decoded from artifacts (all layers, before folding).
    pub records_decoded: u64,
    /// Records outside the recovered key groups or operators that were
    /// decoded and dropped (rescaling, partial recovery).
    pub records_filtered: u64,
    /// The write-ahead-log position the checkpoint covers, if recorded.
    pub wal_position: Option<u64>,
    /// Write-ahead-log records applied after the checkpoint.
    pub wal_records_replayed: u64,
    /// Checkpoints skipped because they were unusable, newest first.
    pub fallbacks: Vec<Fallback>,
    /// The most stored bytes held at once by a restore that overlaps
    /// fetching with decoding (being fetched, waiting for the rest of
    /// their range, or being decoded; see
    /// [`RecoveryConfig::fetch_ahead_bytes`](crate::RecoveryConfig::fetch_ahead_bytes));
    /// 0 when the recovery fetched every artifact before decoding.
    pub fetch_ahead_peak_bytes: u64,
    /// Time spent fetching artifacts. When a restore into a backend whose
    /// restore is atomic overlaps fetching with loading, the time until
    /// the last artifact arrived, which overlaps `load_duration`.
    pub fetch_duration: Duration,
    /// Time spent decoding, folding and loading.
    pub load_duration: Duration,
    /// Time spent replaying the write-ahead log.
    pub wal_duration: Duration,
    /// Wall time of the whole recovery, fallbacks included.
    pub duration: Duration,
}

impl RecoveryStats {
    /// Logical bytes loaded per second of wall time, in MB/s (10^6 bytes).
    pub fn throughput_mb_s(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.logical_bytes as f64 / 1e6 / secs
    }

    /// True when the recovery fell back from the checkpoint it aimed at.
    pub fn fell_back(&self) -> bool {
        !self.fallbacks.is_empty()
    }
}

/// A phase of a recovery, as reported to a progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Artifacts are being fetched; units are artifacts.
    Fetching,
    /// Key-group ranges are being decoded, folded and loaded; units are
    /// ranges.
    Loading,
    /// The write-ahead log is being replayed; units are records (the total
    /// is the log's length to replay, an upper bound when replay stops at a
    /// point in time).
    ReplayingWal,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The checkpoint being recovered (`None`: the log alone).
    pub checkpoint: Option<CheckpointId>,
    /// The current phase.
    pub phase: Phase,
    /// Units done in this phase.
    pub done: u64,
    /// Units in this phase.
    pub total: u64,
    /// Bytes fetched so far (all phases).
    pub bytes: u64,
}

/// A progress callback. It is called from the recovering thread and from
/// the fetch and decode workers, so it must be cheap and thread-safe.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);
