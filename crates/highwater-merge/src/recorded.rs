//! What a checkpoint records about its own run in its manifest.
//!
//! The manifest format has no fields for how a checkpoint went (its
//! duration, the pause it caused, what it uploaded), and changing the
//! format for figures that only reports read is not worth a format
//! version. So the checkpointer writes them into the manifest's free-form
//! properties, under the reserved `highwater.` prefix (an embedding
//! engine's own properties with that prefix are overwritten):
//!
//! | property | value |
//! | --- | --- |
//! | `highwater.duration_us` | trigger to every artifact stored and the log synced, in µs (the manifest commit and retention come after and are not included) |
//! | `highwater.snapshot_pause_us` | how long the processing thread was held for the snapshot, in µs |
//! | `highwater.bytes_written` | bytes uploaded (artifacts already stored are not uploaded again) |
//! | `highwater.artifacts_reused` | artifacts of its own layer that were already stored |
//! | `highwater.zstd_level` | the zstd level of its own layer's artifacts (under `Compression::Adaptive`, the level it had reached); absent when they are stored raw or are native files, and in manifests written before it existed |
//!
//! Manifests written before this existed, and compacted checkpoints (a
//! compaction is not a checkpoint run; it drops these properties of its
//! source), have none: [`RunRecord::of`] returns `None`.

use std::collections::BTreeMap;
use std::time::Duration;

use highwater_core::Manifest;

/// Property: the checkpoint's duration in microseconds.
pub const DURATION_US: &str = "highwater.duration_us";
/// Property: the snapshot pause in microseconds.
pub const SNAPSHOT_PAUSE_US: &str = "highwater.snapshot_pause_us";
/// Property: bytes uploaded.
pub const BYTES_WRITTEN: &str = "highwater.bytes_written";
/// Property: artifacts already stored and reused.
pub const ARTIFACTS_REUSED: &str = "highwater.artifacts_reused";
/// Property: the zstd level of the checkpoint's own artifacts.
pub const ZSTD_LEVEL: &str = "highwater.zstd_level";
/// The prefix of every property highwater itself writes.
pub const RESERVED_PREFIX: &str = "highwater.";

/// How one checkpoint run went, as its manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRecord {
    /// Trigger to every artifact stored (before the manifest commit).
    pub duration: Duration,
    /// How long the processing thread was held for the snapshot.
    pub snapshot_pause: Duration,
    /// Bytes uploaded.
    pub bytes_written: u64,
    /// Artifacts that were already stored and were reused.
    pub artifacts_reused: u64,
    /// The zstd level of its own artifacts; `None` when they are stored
    /// raw or are native files (or the manifest predates the property).
    pub zstd_level: Option<i32>,
}

impl RunRecord {
    /// The record in `manifest`'s properties; `None` when any of the first
    /// four is missing or is not a number (the zstd level is optional).
    pub fn of(manifest: &Manifest) -> Option<RunRecord> {
        let get = |k: &str| manifest.properties.get(k)?.parse::<u64>().ok();
        Some(RunRecord {
            duration: Duration::from_micros(get(DURATION_US)?),
            snapshot_pause: Duration::from_micros(get(SNAPSHOT_PAUSE_US)?),
            bytes_written: get(BYTES_WRITTEN)?,
            artifacts_reused: get(ARTIFACTS_REUSED)?,
            zstd_level: manifest
                .properties
                .get(ZSTD_LEVEL)
                .and_then(|v| v.parse().ok()),
        })
    }

    /// Writes the record into `properties`.
    pub(crate) fn write(&self, properties: &mut BTreeMap<String, String>) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        properties.insert(DURATION_US.into(), us(self.duration).to_string());
        properties.insert(
            SNAPSHOT_PAUSE_US.into(),
            us(self.snapshot_pause).to_string(),
        );
        properties.insert(BYTES_WRITTEN.into(), self.bytes_written.to_string());
        properties.insert(ARTIFACTS_REUSED.into(), self.artifacts_reused.to_string());
        match self.zstd_level {
            Some(level) => properties.insert(ZSTD_LEVEL.into(), level.to_string()),
            None => properties.remove(ZSTD_LEVEL),
        };
    }

    /// Removes every property highwater itself wrote (what a compaction
    /// must not copy from its source).
    pub(crate) fn strip(properties: &mut BTreeMap<String, String>) {
        properties.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_none() {
        let r = RunRecord {
            duration: Duration::from_micros(12_345),
            snapshot_pause: Duration::from_micros(67),
            bytes_written: 1 << 20,
            artifacts_reused: 3,
            zstd_level: Some(-3),
        };
        let mut props = BTreeMap::from([("job".to_string(), "x".to_string())]);
        r.write(&mut props);
        let m = |props: BTreeMap<String, String>| Manifest {
            checkpoint_id: highwater_core::CheckpointId(1),
            parent: None,
            kind: highwater_core::CheckpointKind::Full,
            created_at_ms: 0,
            wal_position: None,
            max_parallelism: 1,
            layers: vec![],
            properties: props,
            schemas: Vec::new(),
        };
        assert_eq!(RunRecord::of(&m(props.clone())), Some(r));
        // Raw artifacts: no level, and a level an engine's own property
        // left under the reserved name is not kept.
        let raw = RunRecord {
            zstd_level: None,
            ..r
        };
        let mut raw_props = props.clone();
        raw.write(&mut raw_props);
        assert!(!raw_props.contains_key(ZSTD_LEVEL));
        assert_eq!(RunRecord::of(&m(raw_props)), Some(raw));
        let mut bad = props.clone();
        bad.insert(DURATION_US.into(), "soon".into());
        assert_eq!(RunRecord::of(&m(bad)), None);
        let mut stripped = props;
        RunRecord::strip(&mut stripped);
        assert_eq!(
            stripped,
            BTreeMap::from([("job".to_string(), "x".to_string())])
        );
        assert_eq!(RunRecord::of(&m(stripped)), None);
    }
}
