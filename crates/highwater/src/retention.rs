//! Retention: keep the newest completed checkpoints, delete the rest and
//! every artifact that no retained manifest references. The algorithm lives
//! in `highwater-merge` ([`highwater_merge::collect_garbage`]); the manager
//! passes its pins so in-flight checkpoints and merges are protected.

use highwater_core::{CheckpointStore, Result};

pub use highwater_merge::RetentionReport;

/// Keeps the `max_retained` newest readable checkpoints of `store` and
/// deletes older manifests and unreferenced artifacts.
///
/// Without pins this is safe only while nothing writes to the store (the
/// [`StateManager`](crate::StateManager) runs retention with its pins, so
/// its own checkpoints and merges may be in flight). It must never run
/// while another process writes to the same store.
pub async fn apply_retention(
    store: &dyn CheckpointStore,
    max_retained: usize,
) -> Result<RetentionReport> {
    highwater_merge::collect_garbage(store, max_retained, None, &|_, _| {}).await
}
