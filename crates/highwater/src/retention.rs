//! Retention: keep the newest completed checkpoints, delete the rest and
//! every artifact that no retained manifest references.

use std::collections::HashSet;

use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Result};

use highwater_core::load_manifest;

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Checkpoints kept, newest first.
    pub retained: Vec<CheckpointId>,
    /// Manifests deleted.
    pub manifests_deleted: Vec<CheckpointId>,
    /// Artifacts deleted.
    pub artifacts_deleted: usize,
    /// Manifests that could not be read; they are kept for inspection and
    /// do not count towards `max_retained`.
    pub unreadable: Vec<CheckpointId>,
    /// The lowest write-ahead-log position of the retained checkpoints, if
    /// every one records a position: the log before it is no longer needed.
    pub oldest_wal_position: Option<u64>,
}

/// Keeps the `max_retained` newest readable checkpoints of `store` and
/// deletes older manifests and unreferenced artifacts.
///
/// Safe against a checkpoint being written by the same process only when it
/// runs between checkpoints (the [`StateManager`](crate::StateManager) runs
/// it on its checkpoint worker after each commit). It must not run while
/// another process writes to the same store.
pub async fn apply_retention(
    store: &dyn CheckpointStore,
    max_retained: usize,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let mut ids = store.list_manifests().await?;
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut referenced: HashSet<ArtifactId> = HashSet::new();
    let mut positions: Vec<Option<u64>> = Vec::new();
    for id in ids {
        if report.retained.len() >= max_retained {
            store.delete_manifest(id).await?;
            report.manifests_deleted.push(id);
            continue;
        }
        match load_manifest(store, id).await {
            Ok(m) => {
                referenced.extend(m.artifacts().map(|a| a.id));
                positions.push(m.wal_position);
                report.retained.push(id);
            }
            Err(e) if e.is_corruption() => {
                tracing::warn!(checkpoint = %id, error = %e, "unreadable manifest kept out of retention");
                report.unreadable.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    report.oldest_wal_position = positions
        .iter()
        .copied()
        .collect::<Option<Vec<u64>>>()
        .and_then(|p| p.into_iter().min());
    for id in store.list_artifacts().await? {
        if !referenced.contains(&id) {
            store.delete_artifact(id).await?;
            report.artifacts_deleted += 1;
        }
    }
    Ok(report)
}
