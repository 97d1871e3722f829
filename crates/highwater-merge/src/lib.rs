//! # highwater-merge
//!
//! Incremental checkpoint chains: how a checkpoint's state (or its changes)
//! becomes content-addressed artifacts, how a chain of a base and deltas is
//! merged into a new base, and how retention deletes what no retained
//! checkpoint needs.
//!
//! - [`encode_snapshot`] writes a backend snapshot as artifacts per
//!   (operator, key-group range), cut into content-defined chunks of a few
//!   MiB ([`ChunkConfig`]), with operator-relative keys so identical state
//!   of several operators is stored once. Unchanged chunks get the same
//!   content address and are not uploaded again.
//! - [`merge_layers`] folds a chain into one full layer, per key-group
//!   cluster in parallel on rayon, with a [`ConflictResolution`];
//!   [`needs_merge`] decides when ([`MergeStrategy`]);
//!   [`merge_into_store`] and [`compact_newest`] run it against a store.
//! - [`collect_garbage`] applies retention; [`Pins`] protect the artifacts of
//!   in-flight checkpoints and merges from it.
//!
//! Guarantees: a merge with the default [`ConflictResolution::LastWriteWins`]
//! yields exactly the state a restore of the chain yields (minus entries
//! expired at merge time, which a restore drops too); an artifact is deleted
//! only when no retained manifest references it and no pin
//! holds it.
//!
//! - [`Checkpointer`] is the checkpoint pipeline: snapshot → producer
//!   (encoded entries, or a backend's native files) → [`io::Uploader`]
//!   (pinned, create-only) → write-ahead-log sync → manifest commit →
//!   retention → log release, plus merge scheduling.
//! - [`savepoint`] writes a job's state as a canonical savepoint and reads
//!   one back, verified, for any backend and number of key groups.
//! - [`io`] is the artifact I/O layer the checkpointer, the merger and the
//!   recovery engine share: bounded pinned upload, verified fetch that
//!   repairs a damaged stored artifact.
//!
//! Depends on `highwater-core` and `highwater-wal` (the logged backend whose
//! position a checkpoint records) among highwater crates: no backend, no
//! concrete store; store I/O goes through `dyn CheckpointStore` on the
//! checkpointer's runtime ([`Exec`]) or a handle the caller owns.

#![deny(missing_docs)]

mod chain;
mod checkpointer;
pub mod cluster;
mod config;
mod encode;
mod gc;
pub mod io;
mod merge;
pub mod metrics;
pub mod recorded;
pub mod savepoint;
mod store;

pub use chain::{ChainSummary, StoreSummary, needs_merge, substitute, summarize};
pub use checkpointer::{
    AfterCheckpoint, CheckpointHandle, CheckpointInfo, Checkpointer, CheckpointerParts, Exec, Idle,
};
pub use config::{
    BackgroundPriority, CheckpointConfig, ChunkConfig, Compression, ConflictResolution,
    MergeStrategy, MergerConfig,
};
pub use encode::{
    EncodeParams, EncodeTotals, Produced, RAW_OPERATOR, chunk_ends, encode_group, encode_snapshot,
    key_form_for,
};
pub use gc::{PinGuard, Pins, RetentionReport, apply_retention, collect_garbage};
pub use merge::{Fetch, MergeOutcome, MergeParams, MergeStats, check_chain, merge_layers};
pub use store::{CompactReport, StoredMerge, compact_newest, merge_into_store};
