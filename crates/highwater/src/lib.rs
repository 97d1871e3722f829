//! # highwater
//!
//! State management for stream processors, as a library: keyed operator
//! state behind a [`StateBackend`], full and incremental checkpoints into a
//! [`CheckpointStore`], retention, and restore — composed by a
//! [`StateManager`].
//!
//! This facade re-exports the member crates (each optional one behind a
//! feature of the same name) and holds only the wiring: the
//! [`StateManager`] builds a [`merge::Checkpointer`] (the checkpoint
//! pipeline) and a [`recovery::Recovery`] engine around a backend, a store
//! and an optional write-ahead log, and hands out typed state. Algorithms
//! live in their crates:
//!
//! | feature | crate | what |
//! | --- | --- | --- |
//! | (always) | [`core`] | traits, key groups, typed state, manifest and codec |
//! | `memory` | [`memory`] | in-memory backend |
//! | `cloud` | [`cloud`] | object_store checkpoint store: local directory, in-memory |
//! | `s3`, `azure`, `gcs` | [`cloud`] | the same store on S3, Azure Blob and GCS (`ObjectCheckpointStore::from_url`) |
//! | (always) | [`merge`] | chunked content-addressed encoding, chain merging, dedup, retention |
//! | (always) | [`wal`] | write-ahead log of state changes (replayed on restore) |
//! | (always) | [`recovery`] | recovery engine: plans, parallel verified restore, point in time, rescaling |
//! | `redis` | `redis` | Redis state backend and checkpoint store, standalone and cluster |
//! | `raft` | `raft` | Raft-coordinated distributed checkpoints (openraft): ledger, coordinator |
//! | `rocksdb` | `rocksdb` | RocksDB state backend with native checkpoints ([`core::NativeCheckpoints`]) |
//!
//! Metrics go through the `metrics` crate's facade (see [`metrics`]).
//!
//! See [`StateManager`] for an example.

#![deny(missing_docs)]

mod guard;
mod manager;
pub mod metrics;
mod savepoint;

#[cfg(feature = "cloud")]
pub use highwater_cloud as cloud;
pub use highwater_core as core;
#[cfg(feature = "memory")]
pub use highwater_memory as memory;
pub use highwater_merge as merge;
#[cfg(feature = "raft")]
pub use highwater_raft as raft;
pub use highwater_recovery as recovery;
#[cfg(feature = "redis")]
pub use highwater_redis as redis;
#[cfg(feature = "rocksdb")]
pub use highwater_rocksdb as rocksdb;
pub use highwater_wal as wal;

pub use highwater_core::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, CheckpointId, CheckpointKind,
    CheckpointStore, Clock, Coordinator, Error, ErrorKind, GlobalCheckpoint, GlobalStatus,
    KeyGroup, KeyGroupRange, KeyedStateContext, ListState, ListStateDescriptor, Manifest,
    ManualClock, MapState, MapStateDescriptor, PartRef, ParticipantId, ReducingState,
    ReducingStateDescriptor, Result, StateBackend, SystemClock, TtlConfig, ValueState,
    ValueStateDescriptor,
};
pub use highwater_core::{DataKey, EncryptedStore, KeyId, KeyProvider, Keyring};
pub use highwater_merge::cluster;
pub use highwater_merge::cluster::LocalCoordinator;
pub use highwater_merge::savepoint::SavepointInfo;
pub use highwater_merge::{
    BackgroundPriority, CheckpointConfig, CheckpointHandle, CheckpointInfo, ChunkConfig,
    Compression, ConflictResolution, MergeStats, MergeStrategy, MergerConfig, RetentionReport,
    apply_retention,
};
pub use highwater_recovery::{
    CheckpointVerification, RecoveryConfig, RecoveryPlan, RecoveryScope, RecoveryStats,
    RecoveryTarget, VerificationLevel, VerifyProblem, verify_store, verify_store_with,
};
pub use manager::{HistoryEntry, RestoreInfo, StateManager, StateManagerBuilder};
pub use savepoint::{SavepointHandle, SavepointRestoreInfo, SavepointRestoreOptions};

/// Reads a key file in the [`Keyring`] text form (one `<id> <64 hex
/// digits>` line per key; the highest id is current).
///
/// The file must not be readable by the group or by others (like an SSH
/// private key): `chmod 600` it. Errors name the path, never key material.
pub fn read_key_file(path: impl AsRef<std::path::Path>) -> Result<Keyring> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("read key file {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::InvalidArgument(format!(
            "key file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read key file {}", path.display()), e))?,
    );
    Keyring::parse(&text, &path.display().to_string())
}

/// What an embedding engine uses, in one import: `use highwater::prelude::*;`.
///
/// The manager and its configuration, the typed state handles and their
/// descriptors, TTL and clocks, key groups, errors, and the backend and
/// store traits (every item is also at the crate root).
pub mod prelude {
    pub use crate::{
        AggregateFunction, AggregatingState, AggregatingStateDescriptor, CheckpointConfig,
        CheckpointHandle, CheckpointId, CheckpointInfo, CheckpointKind, CheckpointStore, Clock,
        Compression, Error, ErrorKind, KeyGroup, KeyGroupRange, KeyedStateContext, ListState,
        ListStateDescriptor, ManualClock, MapState, MapStateDescriptor, MergerConfig,
        RecoveryConfig, ReducingState, ReducingStateDescriptor, RestoreInfo, Result, StateBackend,
        StateManager, SystemClock, TtlConfig, ValueState, ValueStateDescriptor,
    };
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
