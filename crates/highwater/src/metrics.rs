//! Metrics: every crate emits through the [`metrics`](https://docs.rs/metrics)
//! crate's facade, so an application sees them in whatever recorder it
//! installs (Prometheus, StatsD, OpenTelemetry, …) and pays nothing when it
//! installs none. highwater installs no recorder itself (the CLI's
//! `--metrics-addr` does, for its own process).
//!
//! Checkpoints, merges, retention and store requests are emitted by
//! [`merge::metrics`](crate::merge::metrics), restores by
//! [`recovery::metrics`](crate::recovery::metrics), the write-ahead log by
//! [`wal::metrics`](crate::wal::metrics) and the Raft ledger by
//! `raft::metrics` (feature `raft`). Backend size gauges are emitted when
//! the application asks, by [`StateManager::record_backend_metrics`]
//! (counting a Redis backend costs a scan). `docs/metrics.md` lists every
//! name with its unit, type, meaning and the Flink metric it matches.
//!
//! [`StateManager::record_backend_metrics`]: crate::StateManager::record_backend_metrics

use ::metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use highwater_core::BackendStats;

/// Live entries of the backend (label `backend`).
pub const BACKEND_ENTRIES: &str = "highwater_backend_entries";
/// Bytes of keys and values the backend holds (label `backend`).
pub const BACKEND_BYTES: &str = "highwater_backend_bytes";
/// Bytes of the backend's storage areas in use, dead records included.
pub const BACKEND_ARENA_BYTES: &str = "highwater_backend_arena_bytes";
/// Bytes of the storage areas that hold live records.
pub const BACKEND_LIVE_BYTES: &str = "highwater_backend_live_bytes";
/// Bytes of the backend's in-memory indexes.
pub const BACKEND_INDEX_BYTES: &str = "highwater_backend_index_bytes";
/// Operations served through the manager's backend (labels `backend`,
/// `op` = `get` | `put` | `delete` | `batch` | `scan`).
pub const BACKEND_OPERATIONS: &str = "highwater_backend_operations_total";

/// Registers the unit and description of every metric of every crate in
/// this build with the installed recorder (exporters print them as
/// `# HELP` lines). Call it once after installing a recorder.
pub fn describe() {
    crate::merge::metrics::describe();
    crate::recovery::metrics::describe();
    crate::wal::metrics::describe();
    #[cfg(feature = "raft")]
    crate::raft::metrics::describe();
    describe_gauge!(
        BACKEND_ENTRIES,
        Unit::Count,
        "live entries of the state backend"
    );
    describe_gauge!(
        BACKEND_BYTES,
        Unit::Bytes,
        "bytes of keys and values the state backend holds"
    );
    describe_gauge!(
        BACKEND_ARENA_BYTES,
        Unit::Bytes,
        "bytes of the backend's storage areas in use, dead records included"
    );
    describe_gauge!(
        BACKEND_LIVE_BYTES,
        Unit::Bytes,
        "bytes of the storage areas holding live records"
    );
    describe_counter!(
        BACKEND_OPERATIONS,
        Unit::Count,
        "operations served through the state manager's backend, by op"
    );
    describe_gauge!(
        BACKEND_INDEX_BYTES,
        Unit::Bytes,
        "bytes of the backend's in-memory indexes"
    );
}

/// Sets the backend size gauges from `stats`, labelled with the backend's
/// `name`.
pub fn backend_stats(name: &'static str, stats: &BackendStats) {
    gauge!(BACKEND_ENTRIES, "backend" => name).set(stats.entries as f64);
    gauge!(BACKEND_BYTES, "backend" => name).set(stats.bytes as f64);
    gauge!(BACKEND_ARENA_BYTES, "backend" => name).set(stats.arena_bytes as f64);
    gauge!(BACKEND_LIVE_BYTES, "backend" => name).set(stats.live_bytes as f64);
    gauge!(BACKEND_INDEX_BYTES, "backend" => name).set(stats.index_bytes as f64);
}

/// Sets the backend operation counters (absolute: the counts since the
/// manager was built), labelled with the backend's `name` and the op.
pub fn backend_operations(name: &'static str, by_op: &[(&'static str, u64)]) {
    for &(op, n) in by_op {
        counter!(BACKEND_OPERATIONS, "backend" => name, "op" => op).absolute(n);
    }
}
