//! The asynchronous checkpoint store trait: where durable checkpoint
//! artifacts and manifests go.

use std::future::Future;
use std::pin::Pin;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::Result;
use crate::manifest::{ArtifactId, CheckpointId};

/// A boxed, sendable future; the store trait returns these so that it can be
/// used as `dyn CheckpointStore` without a runtime-specific crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether [`CheckpointStore::put_artifact`] wrote bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The artifact was written.
    Written,
    /// An artifact with this id was already stored; nothing was written.
    AlreadyPresent,
}

/// Request counters of a store, for cost accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Write requests (puts, manifest commits).
    pub puts: u64,
    /// Read requests.
    pub gets: u64,
    /// Existence checks.
    pub heads: u64,
    /// Listing requests.
    pub lists: u64,
    /// Deletes.
    pub deletes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

/// The counters a store implementation keeps while it works: one atomic per
/// field of [`StoreCounters`], updated without locks from any task.
#[derive(Debug, Default)]
pub struct AtomicStoreCounters {
    /// Write requests.
    pub puts: AtomicU64,
    /// Read requests.
    pub gets: AtomicU64,
    /// Existence checks.
    pub heads: AtomicU64,
    /// Listing requests.
    pub lists: AtomicU64,
    /// Deletes.
    pub deletes: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
}

impl AtomicStoreCounters {
    /// Adds `by` to `counter` (one of this struct's fields).
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StoreCounters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreCounters {
            puts: load(&self.puts),
            gets: load(&self.gets),
            heads: load(&self.heads),
            lists: load(&self.lists),
            deletes: load(&self.deletes),
            bytes_written: load(&self.bytes_written),
            bytes_read: load(&self.bytes_read),
        }
    }
}

/// Durable storage for checkpoint artifacts and manifests.
///
/// Artifacts are content addressed: the id is the xxh3-128 of the bytes, so
/// putting an id that is already stored writes nothing. A manifest becomes
/// visible only through [`commit_manifest`](CheckpointStore::commit_manifest),
/// which is atomic and create-only: a half-written manifest is never listed
/// and an id is never committed twice.
pub trait CheckpointStore: Send + Sync + 'static {
    /// A short name for errors and metrics (`local`, `memory`, `s3`, …).
    fn name(&self) -> &'static str;

    /// Stores an artifact unless one with the same id exists. The store
    /// checks that `id` is the xxh3-128 of `data` and refuses otherwise.
    fn put_artifact(&self, id: ArtifactId, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>>;

    /// Reads an artifact; [`Error::NotFound`](crate::Error::NotFound) if absent.
    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<Bytes>>;

    /// True when the artifact is stored.
    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>>;

    /// Every stored artifact id, in unspecified order.
    fn list_artifacts(&self) -> BoxFuture<'_, Result<Vec<ArtifactId>>>;

    /// Deletes an artifact; deleting a missing artifact is not an error.
    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<()>>;

    /// Atomically publishes an encoded manifest under `id`. Fails with
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) if `id` is
    /// already committed. Durable when the future resolves.
    fn commit_manifest(&self, id: CheckpointId, data: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Reads an encoded manifest.
    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<Bytes>>;

    /// Ids of all committed manifests, ascending.
    fn list_manifests(&self) -> BoxFuture<'_, Result<Vec<CheckpointId>>>;

    /// Deletes a manifest; deleting a missing manifest is not an error.
    fn delete_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<()>>;

    /// Request counters since the store was created.
    fn counters(&self) -> StoreCounters;

    /// A store of the same kind and place whose artifacts and manifests
    /// live apart from this one's, under `scope` (a sub-directory, key
    /// prefix or namespace; `scope` must pass
    /// [`valid_scope`](crate::cluster::valid_scope)). Participants of a
    /// global checkpoint each write their own scope of one shared store, so
    /// one participant's retention never sees another's artifacts.
    ///
    /// The default refuses: a store that cannot be divided cannot be shared.
    fn scoped(&self, scope: &str) -> Result<std::sync::Arc<dyn CheckpointStore>> {
        Err(crate::Error::InvalidArgument(format!(
            "the {} checkpoint store cannot be divided into scopes (asked for {scope:?})",
            self.name()
        )))
    }
}
