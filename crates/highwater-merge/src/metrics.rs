//! Metrics of the checkpoint pipeline, through the `metrics` crate's facade:
//! one function per event, called from the point where its numbers exist.
//!
//! Nothing is exported unless the application installs a recorder (for
//! example `metrics-exporter-prometheus`); without one every call is a
//! no-op. Names, units and meanings are listed in `docs/metrics.md`.

use highwater_core::{CheckpointKind, CheckpointStore, Manifest, Result};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::{CheckpointInfo, MergeStats};

/// Checkpoints committed (label `kind`: `full` or `incremental`).
pub const CHECKPOINTS_COMPLETED: &str = "highwater_checkpoints_completed_total";
/// Checkpoints that failed.
pub const CHECKPOINTS_FAILED: &str = "highwater_checkpoints_failed_total";
/// Trigger-to-commit time of each checkpoint.
pub const CHECKPOINT_DURATION: &str = "highwater_checkpoint_duration_seconds";
/// Time the processing thread was held for each snapshot.
pub const SNAPSHOT_PAUSE: &str = "highwater_checkpoint_snapshot_pause_seconds";
/// Duration of the newest checkpoint.
pub const LAST_DURATION: &str = "highwater_last_checkpoint_duration_seconds";
/// Stored bytes of the newest checkpoint's own layer (incremental size).
pub const LAST_SIZE: &str = "highwater_last_checkpoint_size_bytes";
/// Stored bytes of every layer a restore of the newest checkpoint reads.
pub const LAST_FULL_SIZE: &str = "highwater_last_checkpoint_full_size_bytes";
/// Uncompressed record bytes of the newest checkpoint's own layer.
pub const LAST_LOGICAL_SIZE: &str = "highwater_last_checkpoint_logical_bytes";
/// Id of the newest committed checkpoint.
pub const LAST_ID: &str = "highwater_last_checkpoint_id";
/// Layers of the newest checkpoint's chain.
pub const LAST_CHAIN_LENGTH: &str = "highwater_last_checkpoint_chain_length";
/// Bytes checkpoints wrote to the store.
pub const BYTES_WRITTEN: &str = "highwater_checkpoint_bytes_written_total";
/// Artifacts checkpoints uploaded.
pub const ARTIFACTS_WRITTEN: &str = "highwater_checkpoint_artifacts_written_total";
/// Artifacts checkpoints found already stored and did not upload again.
pub const ARTIFACTS_SKIPPED: &str = "highwater_checkpoint_artifacts_skipped_total";
/// Records checkpoints wrote.
pub const ENTRIES: &str = "highwater_checkpoint_entries_total";
/// Manifests deleted by retention.
pub const RETENTION_MANIFESTS_DELETED: &str = "highwater_retention_manifests_deleted_total";
/// Artifacts deleted by retention.
pub const RETENTION_ARTIFACTS_DELETED: &str = "highwater_retention_artifacts_deleted_total";
/// Chain merges the checkpointer completed.
pub const MERGES: &str = "highwater_merges_completed_total";
/// Layers folded by merges.
pub const MERGE_LAYERS: &str = "highwater_merge_layers_total";
/// Records written by merges.
pub const MERGE_RECORDS: &str = "highwater_merge_records_total";
/// Stored bytes of the bases merges wrote.
pub const MERGE_BYTES: &str = "highwater_merge_stored_bytes_total";
/// Requests a checkpoint store made since it was created (labels `store`, `op`).
pub const STORE_REQUESTS: &str = "highwater_store_requests_total";
/// Bytes a checkpoint store wrote since it was created (label `store`).
pub const STORE_BYTES_WRITTEN: &str = "highwater_store_bytes_written_total";
/// Bytes a checkpoint store read since it was created (label `store`).
pub const STORE_BYTES_READ: &str = "highwater_store_bytes_read_total";

/// Registers the unit and description of every metric above with the
/// installed recorder (exporters print them as `# HELP`).
pub fn describe() {
    let c = |name: &'static str, unit: Unit, help: &'static str| {
        describe_counter!(name, unit, help);
    };
    let g = |name: &'static str, unit: Unit, help: &'static str| {
        describe_gauge!(name, unit, help);
    };
    c(
        CHECKPOINTS_COMPLETED,
        Unit::Count,
        "checkpoints committed, by kind",
    );
    c(CHECKPOINTS_FAILED, Unit::Count, "checkpoints that failed");
    describe_histogram!(
        CHECKPOINT_DURATION,
        Unit::Seconds,
        "time from trigger to committed manifest"
    );
    describe_histogram!(
        SNAPSHOT_PAUSE,
        Unit::Seconds,
        "time the processing thread was held for the snapshot"
    );
    g(
        LAST_DURATION,
        Unit::Seconds,
        "duration of the newest checkpoint",
    );
    g(
        LAST_SIZE,
        Unit::Bytes,
        "stored bytes of the newest checkpoint's own layer",
    );
    g(
        LAST_FULL_SIZE,
        Unit::Bytes,
        "stored bytes of the newest checkpoint's whole chain",
    );
    g(
        LAST_LOGICAL_SIZE,
        Unit::Bytes,
        "record bytes of the newest checkpoint's own layer before compression",
    );
    g(
        LAST_ID,
        Unit::Count,
        "id of the newest committed checkpoint",
    );
    g(
        LAST_CHAIN_LENGTH,
        Unit::Count,
        "layers of the newest checkpoint's chain",
    );
    c(
        BYTES_WRITTEN,
        Unit::Bytes,
        "bytes checkpoints wrote to the store",
    );
    c(
        ARTIFACTS_WRITTEN,
        Unit::Count,
        "artifacts checkpoints uploaded",
    );
    c(
        ARTIFACTS_SKIPPED,
        Unit::Count,
        "artifacts already stored, not uploaded again",
    );
    c(ENTRIES, Unit::Count, "records checkpoints wrote");
    c(
        RETENTION_MANIFESTS_DELETED,
        Unit::Count,
        "manifests deleted by retention",
    );
    c(
        RETENTION_ARTIFACTS_DELETED,
        Unit::Count,
        "artifacts deleted by retention",
    );
    c(
        MERGES,
        Unit::Count,
        "chain merges completed by the checkpointer",
    );
    c(MERGE_LAYERS, Unit::Count, "layers folded by merges");
    c(MERGE_RECORDS, Unit::Count, "records written by merges");
    c(MERGE_BYTES, Unit::Bytes, "stored bytes of merged bases");
    c(
        STORE_REQUESTS,
        Unit::Count,
        "requests of the checkpoint store, by store and operation",
    );
    c(
        STORE_BYTES_WRITTEN,
        Unit::Bytes,
        "bytes the checkpoint store wrote",
    );
    c(
        STORE_BYTES_READ,
        Unit::Bytes,
        "bytes the checkpoint store read",
    );
}

/// A checkpoint ended: its statistics, or its failure; then the store's
/// request counters.
pub(crate) fn checkpoint_finished(
    result: &Result<(std::sync::Arc<Manifest>, CheckpointInfo)>,
    store: &dyn CheckpointStore,
) {
    match result {
        Ok((manifest, info)) => checkpoint_completed(manifest, info),
        Err(_) => counter!(CHECKPOINTS_FAILED).increment(1),
    }
    store_counters(store);
}

fn checkpoint_completed(manifest: &Manifest, info: &CheckpointInfo) {
    let kind = match info.kind {
        CheckpointKind::Full => "full",
        CheckpointKind::Incremental => "incremental",
    };
    counter!(CHECKPOINTS_COMPLETED, "kind" => kind).increment(1);
    histogram!(CHECKPOINT_DURATION).record(info.duration.as_secs_f64());
    histogram!(SNAPSHOT_PAUSE).record(info.snapshot_pause.as_secs_f64());
    gauge!(LAST_DURATION).set(info.duration.as_secs_f64());
    gauge!(LAST_SIZE).set(info.encoded_bytes as f64);
    gauge!(LAST_FULL_SIZE).set(manifest.stored_bytes() as f64);
    gauge!(LAST_LOGICAL_SIZE).set(info.logical_bytes as f64);
    gauge!(LAST_ID).set(info.id.0 as f64);
    gauge!(LAST_CHAIN_LENGTH).set(info.chain_length as f64);
    counter!(BYTES_WRITTEN).increment(info.bytes_written);
    let skipped = info.artifacts_reused.min(info.artifacts);
    counter!(ARTIFACTS_WRITTEN).increment((info.artifacts - skipped) as u64);
    counter!(ARTIFACTS_SKIPPED).increment(skipped as u64);
    counter!(ENTRIES).increment(info.entries);
    if let Some(r) = &info.retention {
        counter!(RETENTION_MANIFESTS_DELETED).increment(r.manifests_deleted.len() as u64);
        counter!(RETENTION_ARTIFACTS_DELETED).increment(r.artifacts_deleted as u64);
    }
}

/// A merge of a chain into a new base finished.
pub(crate) fn merge_completed(stats: &MergeStats) {
    counter!(MERGES).increment(1);
    counter!(MERGE_LAYERS).increment(stats.layers_in as u64);
    counter!(MERGE_RECORDS).increment(stats.records_out);
    counter!(MERGE_BYTES).increment(stats.stored_bytes_out);
}

/// The store's own request counters (cumulative since it was created), as
/// absolute values labelled with its name.
pub fn store_counters(store: &dyn CheckpointStore) {
    let name = store.name();
    let c = store.counters();
    for (op, n) in [
        ("put", c.puts),
        ("get", c.gets),
        ("head", c.heads),
        ("list", c.lists),
        ("delete", c.deletes),
    ] {
        counter!(STORE_REQUESTS, "store" => name, "op" => op).absolute(n);
    }
    counter!(STORE_BYTES_WRITTEN, "store" => name).absolute(c.bytes_written);
    counter!(STORE_BYTES_READ, "store" => name).absolute(c.bytes_read);
}
