//! Retention and garbage collection: keep the newest completed checkpoints,
//! delete older manifests and every artifact that no retained manifest
//! references and no in-flight work has pinned.
//!
//! In-flight work (a checkpoint being encoded and uploaded, a merge whose
//! output is not yet in a committed manifest) *pins* every artifact it
//! writes or reuses before it writes or reuses it. The collector deletes an
//! artifact only after marking it as "being deleted" under the same lock,
//! and a pin waits for such a deletion to finish. Either the pin comes first
//! (the artifact is kept) or the deletion does (the pinner's put then finds
//! the artifact absent and writes it again). Work that crashed leaves
//! unreferenced, unpinned artifacts, which the next collection deletes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use highwater_core::{
    ArtifactId, CheckpointId, CheckpointStore, Result, SavepointManifest, load_manifest,
};
use serde::Serialize;

/// Artifacts in use by work not yet committed.
#[derive(Debug, Default)]
pub struct Pins {
    state: Mutex<PinState>,
    deleted: Condvar,
}

#[derive(Debug, Default)]
struct PinState {
    counts: HashMap<ArtifactId, usize>,
    deleting: HashSet<ArtifactId>,
}

impl Pins {
    /// An empty pin set.
    pub fn new() -> Arc<Pins> {
        Arc::new(Pins::default())
    }

    fn lock(&self) -> MutexGuard<'_, PinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A guard that pins the artifacts added to it until it is dropped.
    pub fn guard(self: &Arc<Self>) -> PinGuard {
        PinGuard {
            pins: self.clone(),
            ids: Mutex::new(Vec::new()),
        }
    }

    /// True when some in-flight work pins `id`.
    pub fn is_pinned(&self, id: ArtifactId) -> bool {
        self.lock().counts.contains_key(&id)
    }

    /// Number of distinct pinned artifacts.
    pub fn len(&self) -> usize {
        self.lock().counts.len()
    }

    /// True when nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pins `id`, waiting while a collector deletes it. Blocks the calling
    /// thread for at most one delete request; call it from a worker thread,
    /// never from an async task.
    fn pin(&self, id: ArtifactId) {
        let mut s = self.lock();
        while s.deleting.contains(&id) {
            s = self.deleted.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        *s.counts.entry(id).or_insert(0) += 1;
    }

    fn unpin(&self, id: ArtifactId) {
        let mut s = self.lock();
        if let Some(n) = s.counts.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                s.counts.remove(&id);
            }
        }
    }

    /// Marks `id` as being deleted unless it is pinned.
    fn begin_delete(&self, id: ArtifactId) -> bool {
        let mut s = self.lock();
        if s.counts.contains_key(&id) {
            return false;
        }
        s.deleting.insert(id)
    }

    fn end_delete(&self, id: ArtifactId) {
        self.lock().deleting.remove(&id);
        self.deleted.notify_all();
    }
}

/// Pins artifacts for one piece of in-flight work; dropping it unpins them.
#[derive(Debug)]
pub struct PinGuard {
    pins: Arc<Pins>,
    ids: Mutex<Vec<ArtifactId>>,
}

impl PinGuard {
    /// Pins `id` (before the work writes or reuses it).
    pub fn add(&self, id: ArtifactId) {
        self.pins.pin(id);
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
    }

    /// Pins every id of `ids`.
    pub fn add_all(&self, ids: impl IntoIterator<Item = ArtifactId>) {
        for id in ids {
            self.add(id);
        }
    }

    /// Moves the pins of `other` into this guard.
    pub fn absorb(&self, other: PinGuard) {
        let moved = std::mem::take(&mut *other.ids.lock().unwrap_or_else(PoisonError::into_inner));
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(moved);
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let ids = std::mem::take(self.ids.get_mut().unwrap_or_else(PoisonError::into_inner));
        for id in ids {
            self.pins.unpin(id);
        }
    }
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Checkpoints kept, newest first.
    pub retained: Vec<CheckpointId>,
    /// Manifests deleted.
    pub manifests_deleted: Vec<CheckpointId>,
    /// Artifacts deleted.
    pub artifacts_deleted: usize,
    /// Unreferenced artifacts kept because in-flight work pins them.
    pub artifacts_kept_pinned: usize,
    /// Manifests that could not be read; they are kept for inspection and
    /// do not count towards `max_retained`.
    pub unreadable: Vec<CheckpointId>,
    /// Savepoint manifests found: never deleted, do not count towards
    /// `max_retained`, and protect every artifact they reference.
    pub savepoints: Vec<CheckpointId>,
    /// The lowest write-ahead-log position of the retained checkpoints, if
    /// every one records a position: the log before it is no longer needed.
    pub oldest_wal_position: Option<u64>,
}

/// Keeps the `max_retained` newest readable checkpoints of `store` and
/// deletes older manifests and every artifact that no retained manifest
/// references and `pins` does not hold. An unreadable manifest is kept (for
/// inspection) but protects nothing: what it references cannot be known.
/// Savepoint manifests are never deleted, and protect what they reference.
///
/// Safe while the same process writes checkpoints and merges, provided they
/// pin what they write or reuse in `pins` before writing or reusing it. It
/// must not run while another process writes to the same store (that
/// process's pins are not visible here). `progress` is called with
/// (done, total) artifacts examined.
pub async fn collect_garbage(
    store: &dyn CheckpointStore,
    max_retained: usize,
    pins: Option<&Pins>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let mut ids = store.list_manifests().await?;
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut referenced: HashSet<ArtifactId> = HashSet::new();
    let mut positions: Vec<Option<u64>> = Vec::new();
    for id in ids {
        // A savepoint is the user's: whatever its position, it is kept and
        // so is everything it references. (One read per manifest; a
        // manifest that cannot be read is not deleted on that account.)
        match store.get_manifest(id).await {
            Ok(bytes) if SavepointManifest::is_savepoint(&bytes) => {
                match SavepointManifest::decode(&bytes) {
                    Ok(sp) => {
                        referenced.extend(sp.artifacts().map(|a| a.id));
                        report.savepoints.push(id);
                    }
                    Err(e) => {
                        tracing::warn!(savepoint = %id, error = %e, "unreadable savepoint manifest kept");
                        report.unreadable.push(id);
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == highwater_core::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if report.retained.len() >= max_retained.max(1) {
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
    let all = store.list_artifacts().await?;
    let total = all.len() as u64;
    for (i, id) in all.into_iter().enumerate() {
        if !referenced.contains(&id) {
            match pins {
                Some(p) => {
                    if !p.begin_delete(id) {
                        report.artifacts_kept_pinned += 1;
                        continue;
                    }
                    let r = store.delete_artifact(id).await;
                    p.end_delete(id);
                    r?;
                }
                None => store.delete_artifact(id).await?,
            }
            report.artifacts_deleted += 1;
        }
        progress(i as u64 + 1, total);
    }
    Ok(report)
}

/// Keeps the `max_retained` newest readable checkpoints of `store` and
/// deletes older manifests and unreferenced artifacts.
///
/// Without pins this is safe only while nothing writes to the store (a
/// [`Checkpointer`](crate::Checkpointer) runs retention with its pins, so
/// its own checkpoints and merges may be in flight). It must never run
/// while another process writes to the same store.
pub async fn apply_retention(
    store: &dyn CheckpointStore,
    max_retained: usize,
) -> Result<RetentionReport> {
    collect_garbage(store, max_retained, None, &|_, _| {}).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pin_waits_for_a_deletion_in_progress() {
        let pins = Pins::new();
        let id = ArtifactId(7);
        assert!(pins.begin_delete(id));
        let p2 = pins.clone();
        let t = std::thread::spawn(move || {
            let g = p2.guard();
            g.add(id);
            assert!(p2.is_pinned(id));
            g
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pins.is_pinned(id), "the pin must wait for the deletion");
        pins.end_delete(id);
        let g = t.join().unwrap();
        assert!(pins.is_pinned(id));
        assert!(!pins.begin_delete(id), "a pinned artifact is never deleted");
        drop(g);
        assert!(!pins.is_pinned(id));
        assert!(pins.begin_delete(id));
    }

    #[test]
    fn pins_count_per_guard() {
        let pins = Pins::new();
        let a = pins.guard();
        let b = pins.guard();
        a.add(ArtifactId(1));
        b.add(ArtifactId(1));
        drop(a);
        assert!(pins.is_pinned(ArtifactId(1)));
        let c = pins.guard();
        c.absorb(b);
        assert!(pins.is_pinned(ArtifactId(1)));
        drop(c);
        assert!(pins.is_empty());
    }
}
