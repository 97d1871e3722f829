//! Metrics of the write-ahead log, through the `metrics` crate's facade: one
//! function per event, called by the writer where its numbers exist.
//!
//! Without an installed recorder every call is a no-op. Names, units and
//! meanings are listed in `docs/metrics.md`.

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

/// Latency of each `fdatasync` of the log (under `Interval`, one pass of
/// the sync thread over the segments it syncs).
pub const FSYNC_DURATION: &str = "highwater_wal_fsync_duration_seconds";
/// Frames (one atomic batch each) per write of a group commit.
pub const GROUP_FRAMES: &str = "highwater_wal_group_frames";
/// Bytes written to the log.
pub const BYTES_WRITTEN: &str = "highwater_wal_bytes_written_total";

/// Registers the unit and description of every metric above.
pub fn describe() {
    describe_histogram!(
        FSYNC_DURATION,
        Unit::Seconds,
        "latency of each fdatasync of the active write-ahead-log segment"
    );
    describe_histogram!(
        GROUP_FRAMES,
        Unit::Count,
        "frames (atomic batches) per write of a group commit"
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "bytes written to the write-ahead log"
    );
}

/// The log was `fdatasync`ed in `nanos` nanoseconds.
pub(crate) fn fsynced(nanos: u64) {
    histogram!(FSYNC_DURATION).record(nanos as f64 / 1e9);
}

/// A group commit wrote `frames` frames of `bytes` bytes in one write.
pub(crate) fn group_written(frames: u64, bytes: u64) {
    histogram!(GROUP_FRAMES).record(frames as f64);
    counter!(BYTES_WRITTEN).increment(bytes);
}
