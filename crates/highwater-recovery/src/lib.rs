//! # highwater-recovery
//!
//! The recovery engine: turns stored checkpoints (and the write-ahead log
//! after them) back into live state, as fast as the store and the cores
//! allow, without ever loading wrong data.
//!
//! ```no_run
//! use std::sync::Arc;
//! use highwater_core::{CheckpointStore, StateBackend};
//! use highwater_recovery::{Recovery, RecoveryConfig, RecoveryScope, RecoveryTarget};
//!
//! /// Recovers subtask 2 of 8 after rescaling: only its key groups are fetched.
//! fn recover_subtask(
//!     store: Arc<dyn CheckpointStore>,
//!     backend: &dyn StateBackend,
//! ) -> highwater_core::Result<()> {
//!     let runtime = tokio::runtime::Runtime::new().expect("runtime");
//!     let engine = Recovery::new(store, RecoveryConfig::default(), runtime.handle().clone())?;
//!     let scope = RecoveryScope::subtask(128, 8, 2)?;
//!     let plan = engine.plan(RecoveryTarget::Latest, &scope, None)?;
//!     println!("{plan}");
//!     let outcome = engine.execute(plan, backend, None, None)?;
//!     println!(
//!         "{} entries, {:.0} MB/s",
//!         outcome.stats.entries_loaded,
//!         outcome.stats.throughput_mb_s()
//!     );
//!     Ok(())
//! }
//! ```
//!
//! ## How a recovery runs
//!
//! 1. **Plan** ([`Recovery::plan`], [`RecoveryPlan`]). The target
//!    ([`RecoveryTarget`]: the newest checkpoint, a checkpoint id, or a point
//!    in time) selects a checkpoint; its manifest lists the chain (base +
//!    deltas). The artifacts in scope ([`RecoveryScope`]: a key-group range
//!    for a rescaled subtask, a set of operators for partial recovery) are
//!    grouped into disjoint *ranges*: for one operator, the artifacts of
//!    every layer over overlapping key groups. The plan also names the log
//!    range to replay. Manifests are read with
//!    [`load_manifest`](highwater_core::load_manifest).
//! 2. **Fetch.** Every distinct artifact in scope is fetched on the tokio
//!    runtime, a bounded number at a time ([`PrefetchStrategy`]), and, at
//!    [`VerificationLevel::Checksum`] and above, checked against its
//!    content address. Artifacts outside the scope are never fetched.
//! 3. **Decode and fold**, in parallel across ranges on a rayon pool of
//!    [`RecoveryConfig::max_parallel_threads`]. Within a range the layers
//!    are folded in order (newest record of a key wins, deletes remove),
//!    so ranges are independent. Every artifact is decoded by
//!    [`visit_checked`](highwater_core::visit_checked), the one decoding
//!    path of the project. Expired entries and records outside the scope's
//!    key groups are dropped.
//! 4. **Load**. A backend with a bulk restore
//!    ([`bulk_restore`](highwater_core::StateBackend::bulk_restore), the
//!    memory backend) is loaded by every decode thread as it decodes: the
//!    first layer of a range goes from the decompressed artifacts straight
//!    into a loader, past the keys its later layers hold (those are folded
//!    in blocks and follow), and the new state is swapped in once every
//!    range loaded.
//!    Otherwise ([`LoadStrategy`]) folded ranges stream, as they
//!    finish, into the backend's
//!    [`restore`](highwater_core::StateBackend::restore), which replaces all
//!    live state and starts a new change-tracking epoch (the memory backend
//!    builds the new state aside and swaps it in, so a recovery that fails
//!    part-way leaves live state untouched). `LoadStrategy::Parallel` folds
//!    every range first and then clears the backend and loads it from all
//!    threads at once (a damaged artifact is still found before live state
//!    is touched).
//! 5. **Replay** the write-ahead log from the checkpoint's position + 1, one
//!    logged batch per `write_batch`, up to the end of the log or the point
//!    in time.
//!
//! A corrupt or missing manifest or artifact disqualifies a checkpoint:
//! with [`RecoveryConfig::optimistic_recovery`] the engine falls back to the
//! previous qualifying checkpoint (a `tracing` warning and an entry in
//! [`RecoveryStats::fallbacks`]); without it, the typed error names the
//! checkpoint and the artifact. [`RecoveryStats`] reports what was done and
//! a [`ProgressFn`] is told as it happens.

#![deny(missing_docs)]

mod config;
mod engine;
pub mod metrics;
mod plan;
mod replay;
mod stats;
mod verify;

pub use config::{LoadStrategy, PrefetchStrategy, RecoveryConfig, VerificationLevel};
pub use engine::{Recovery, RecoveryOutcome};
pub use plan::{
    PlannedArtifact, PlannedLayer, RangePlan, RecoveryPlan, RecoveryScope, RecoveryTarget,
    WalRange, verify_manifest,
};
pub use stats::{Fallback, Phase, Progress, ProgressFn, RecoveryStats};
pub use verify::{CheckpointVerification, VerifyProblem, verify_store, verify_store_with};
