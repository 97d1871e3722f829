//! The checkpointer: the one checkpoint pipeline.
//!
//! ```text
//!  processing thread            checkpoint worker (one at a time)
//!  ─────────────────            ──────────────────────────────────────────────
//!  trigger ── snapshot ──┐
//!   (µs; WAL position)   └──► producer ──► Uploader ──► WAL sync ──► commit ──► retention ──► log release
//!                              encoded: encode_snapshot on the encode pool       (pinned)
//!                              native:  the backend's files, read in order
//!                                                          │
//!                                                          └──► merge scheduling (merge pool)
//! ```
//!
//! A checkpoint takes a snapshot on the caller's thread (a native one when
//! the backend writes them, [`StateBackend::native`]), then a worker thread
//! hands the producer's artifacts to the [`Uploader`] (each pinned first),
//! makes the write-ahead log durable up to the snapshot's position, commits
//! the manifest, applies retention with the pins of other in-flight work,
//! and releases the log before the oldest retained checkpoint. With
//! background merging on, a chain that is due is folded on the merge pool
//! and the next checkpoint builds on the merged base.
//!
//! Invariants:
//! - at most one checkpoint is in flight; its outcome is published to its
//!   [`CheckpointHandle`] before the next one can start;
//! - an incremental checkpoint's parent is exactly the checkpoint whose
//!   snapshot started the backend's change-tracking epoch (a failed
//!   checkpoint or a partial restore makes the next one full);
//! - every artifact a checkpoint or a merge writes or reuses is pinned until
//!   a committed manifest references it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_core::{
    ArtifactId, ArtifactRef, CheckpointId, CheckpointKind, CheckpointStore, Clock, Codec, Error,
    KeyGroupRange, Layer, LayerKind, Manifest, NativeCheckpoint, NativeFile, NativeFileRef, Result,
    SchemaRegistry, SnapshotKind, StateBackend, StateSnapshot, load_manifest,
};
use highwater_wal::LoggedBackend;
use tokio::runtime::Handle;

use crate::chain::{needs_merge, substitute};
use crate::config::{BackgroundPriority, CheckpointConfig, Compression, MergerConfig};
use crate::encode::{EncodeParams, EncodeTotals, Produced, encode_snapshot};
use crate::gc::{PinGuard, Pins, RetentionReport, collect_garbage};
use crate::io::{NATIVE_BYTES_IN_FLIGHT, UploadTotals, Uploader, run_io};
use crate::merge::{MergeParams, MergeStats};
use crate::store::merge_into_store;

/// Native files are large (RocksDB writes SST files of up to 64 MiB), so at
/// most this many wait in memory or upload at once, holding at most
/// [`NATIVE_BYTES_IN_FLIGHT`] between them.
const NATIVE_FILES_IN_FLIGHT: usize = 4;

/// Statistics of one completed checkpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The checkpoint's id.
    pub id: CheckpointId,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// Layers a restore of this checkpoint applies.
    pub chain_length: usize,
    /// Records this checkpoint wrote (its own layer); for a native
    /// checkpoint, the entries its files hold as the backend counted them.
    pub entries: u64,
    /// Expired entries dropped (full) or written as deletes (incremental).
    pub expired_dropped: u64,
    /// Record bytes of its own layer before compression (native: the
    /// files' bytes).
    pub logical_bytes: u64,
    /// Encoded bytes of its own layer.
    pub encoded_bytes: u64,
    /// Bytes actually written to the store (artifacts already stored are
    /// not written again).
    pub bytes_written: u64,
    /// Artifacts of its own layer.
    pub artifacts: usize,
    /// Artifacts that were already stored and were reused.
    pub artifacts_reused: usize,
    /// Of those, a native checkpoint's files known from the previous
    /// checkpoint by their identity, so neither read nor hashed
    /// ([`NativeFile::identity`](highwater_core::NativeFile::identity)).
    pub native_files_known: usize,
    /// How long the processing thread was held for the snapshot.
    pub snapshot_pause: Duration,
    /// From trigger to committed manifest.
    pub duration: Duration,
    /// What retention did after the commit; `None` if it failed (the failure
    /// is logged; the checkpoint itself is committed and valid).
    pub retention: Option<RetentionReport>,
    /// When the chain starts with a merged base instead of its parent's
    /// layers: the last checkpoint the merged base absorbed.
    pub merged_base: Option<CheckpointId>,
    /// The zstd level this checkpoint's artifacts were compressed at
    /// (under [`Compression::Adaptive`], the level it had reached); `None`
    /// when they are stored raw or are a backend's native files.
    pub compression_level: Option<i32>,
}

/// A checkpoint running in the background.
#[derive(Debug)]
pub struct CheckpointHandle {
    id: CheckpointId,
    done: crossbeam_channel::Receiver<Result<CheckpointInfo>>,
}

impl CheckpointHandle {
    /// The id the checkpoint will have once committed.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// Blocks until the checkpoint is committed or has failed.
    pub fn wait(self) -> Result<CheckpointInfo> {
        self.done
            .recv()
            .map_err(|_| Error::Internal("checkpoint worker vanished".into()))?
    }

    /// The outcome if the checkpoint has finished. It is there before the
    /// next checkpoint can start.
    pub fn try_result(&self) -> Option<Result<CheckpointInfo>> {
        self.done.try_recv().ok()
    }
}

/// Where a checkpointer's work runs: the I/O runtime (store requests), the
/// encode pool and the merge pool. One per checkpointer; the recovery
/// engine borrows its I/O handle.
#[derive(Debug)]
pub struct Exec {
    io: Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    encode: Arc<rayon::ThreadPool>,
    merge: rayon::ThreadPool,
}

impl Exec {
    /// Starts a 2-thread I/O runtime, an encode pool of `encode_threads`
    /// and a merge pool of `merge_threads` (0 = number of cores), the two
    /// pools' threads at `priority`.
    pub fn start(
        encode_threads: usize,
        merge_threads: usize,
        priority: BackgroundPriority,
    ) -> Result<Exec> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("highwater-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the i/o runtime", e))?;
        let pool = |threads: usize, name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("highwater-{name}-{i}"))
                .start_handler(move |_| {
                    if let Err(e) = priority.apply_to_current_thread() {
                        tracing::warn!(pool = name, ?priority, error = %e,
                            "could not lower a background thread's priority");
                    }
                })
                .build()
                .map_err(|e| Error::unexpected(format!("start the {name} pool"), e))
        };
        Ok(Exec {
            io: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            encode: Arc::new(pool(encode_threads, "encode")?),
            merge: pool(merge_threads, "merge")?,
        })
    }

    /// The I/O runtime's handle.
    pub fn io(&self) -> &Handle {
        &self.io
    }

    /// The CPU pool: it encodes checkpoints, and a restore through the
    /// manager decodes on it too (`Recovery::with_pool`), since the two
    /// never run at once.
    pub fn cpu(&self) -> &Arc<rayon::ThreadPool> {
        &self.encode
    }

    /// Runs `fut` on the I/O runtime and waits for it ([`run_io`]).
    pub fn run_io<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        run_io(&self.io, fut)
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // Never block here: the last reference may be dropped on a thread
        // of the caller's own async runtime.
        if let Some(rt) = self
            .runtime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}

/// What a [`Checkpointer`] is made of.
pub struct CheckpointerParts {
    /// The backend checkpoints snapshot (the logged one when `logged` is
    /// set).
    pub backend: Arc<dyn StateBackend>,
    /// The write-ahead-logged wrapper of `backend`, when the log is on.
    pub logged: Option<Arc<LoggedBackend>>,
    /// Where checkpoints go.
    pub store: Arc<dyn CheckpointStore>,
    /// How checkpoints are taken.
    pub config: CheckpointConfig,
    /// Time for TTL and manifests.
    pub clock: Arc<dyn Clock>,
    /// Written into every manifest.
    pub properties: BTreeMap<String, String>,
}

struct Tracking {
    next_id: CheckpointId,
    /// The committed checkpoint whose snapshot started the backend's current
    /// change-tracking epoch: the only valid parent of an incremental.
    base: Option<Arc<Manifest>>,
    in_flight: bool,
    last_trigger: Instant,
    /// A merged base stored but not yet used by a committed manifest; its
    /// pins keep its artifacts from retention until then.
    merged: Option<PendingMerge>,
    /// A background merge is running.
    merging: bool,
    /// What the next encoded checkpoint compresses with: the configured
    /// setting, or under [`Compression::Adaptive`] the level it is at.
    compression: Compression,
}

/// A merged base waiting for the next checkpoint to build on it.
struct PendingMerge {
    layer: Layer,
    /// Held for its `Drop`: unpins the merged artifacts.
    _pins: PinGuard,
}

struct Inner {
    parts: CheckpointerParts,
    exec: Exec,
    /// Artifacts of in-flight checkpoints and merges.
    pins: Arc<Pins>,
    tracking: Mutex<Tracking>,
    idle: Condvar,
    /// Signalled when a background merge ends.
    merge_done: Condvar,
    /// The schemas of the job's states, written into every manifest.
    schemas: Arc<SchemaRegistry>,
    /// The files of the last committed native checkpoint by identity (see
    /// [`NativeIndex`]).
    native_index: Mutex<Option<NativeIndex>>,
    /// The checkpoint threads that may not have ended, so that
    /// [`Checkpointer::join_worker`] can wait until they have let go of the
    /// parts (the backend above all).
    workers: Threads,
    /// Likewise the background merges' threads, for
    /// [`Checkpointer::join_merge`].
    merge_workers: Threads,
    /// Set by [`Checkpointer::stop_merges`]: a merge under way gives up
    /// at its next group of artifacts, and none starts any more.
    stop_merges: AtomicBool,
}

/// Threads that hold the parts and may not have ended yet. A thread is
/// added as it starts; the ones that have ended are let go as the next is
/// added, without waiting on any.
#[derive(Default)]
struct Threads(Mutex<Vec<std::thread::JoinHandle<()>>>);

impl Threads {
    fn add(&self, handle: std::thread::JoinHandle<()>) {
        let mut threads = lock(&self.0);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }

    /// Waits for every thread added so far to end, except this one. A
    /// thread that panicked has already failed its checkpoint or merge, so
    /// its panic is not passed on.
    fn join(&self) {
        for handle in std::mem::take(&mut *lock(&self.0)) {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// The artifacts of a committed native checkpoint's immutable files, by
/// [`NativeFile::identity`](highwater_core::NativeFile::identity): the next
/// native checkpoint references these instead of reading and hashing the
/// same files again. Used only by the checkpoint right after the one it
/// describes (its base: the newest committed manifest, which retention
/// keeps, and which names every one of these artifacts).
struct NativeIndex {
    checkpoint: CheckpointId,
    by_identity: HashMap<String, ArtifactRef>,
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> &CheckpointConfig {
        &self.parts.config
    }
}

/// The checkpoint pipeline of one job's state: see the module docs.
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("backend", &self.inner.parts.backend.name())
            .field("store", &self.inner.parts.store.name())
            .field("config", &self.inner.parts.config)
            .finish()
    }
}

/// The checkpointer held with no checkpoint in flight and none able to
/// start: for restores, which rebase the chain.
pub struct Idle<'a> {
    checkpointer: &'a Checkpointer,
    t: MutexGuard<'a, Tracking>,
}

impl std::fmt::Debug for Idle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("next_id", &self.t.next_id)
            .finish_non_exhaustive()
    }
}

impl Idle<'_> {
    /// Records a restore of `manifest` (`None`: state rebuilt without a
    /// checkpoint): new ids continue after it, and when `whole` (the
    /// backend holds all of it) the next incremental builds on it;
    /// otherwise the next checkpoint is full.
    pub fn restored(&mut self, manifest: Option<Arc<Manifest>>, whole: bool) {
        if let Some(m) = &manifest
            && self.t.next_id <= m.checkpoint_id
        {
            // A manifest decodes only with an id below u64::MAX
            // (`Manifest::validate`), so this always has a successor.
            self.t.next_id = m.checkpoint_id.next().unwrap_or(m.checkpoint_id);
        }
        self.t.base = manifest.filter(|_| whole);
    }

    /// The checkpoint the next incremental one builds on, if any.
    pub fn base(&self) -> Option<CheckpointId> {
        self.t.base.as_ref().map(|m| m.checkpoint_id)
    }

    /// Makes the next checkpoint full (the chain it would build on may be
    /// damaged, or the backend no longer holds it).
    pub fn forget_base(&mut self) {
        self.t.base = None;
    }

    /// Takes a checkpoint now, as [`Checkpointer::checkpoint`] does.
    pub fn trigger(self) -> Result<CheckpointHandle> {
        self.checkpointer.trigger(self.t, None)
    }

    /// Makes the next checkpoint take id `id` (a coordinator's global
    /// checkpoint id) instead of the next one in sequence; later ones
    /// continue after it. An id already committed in the store makes that
    /// checkpoint fail with `AlreadyExists`.
    pub fn assign_next_id(&mut self, id: CheckpointId) {
        self.t.next_id = id;
    }

    /// Takes a checkpoint now, like [`trigger`](Self::trigger), and runs
    /// `then` on the checkpoint's worker thread once the checkpoint is
    /// committed or has failed, before the handle sees the outcome and
    /// before the next checkpoint can start. An error `then` returns
    /// becomes the handle's outcome (the committed checkpoint stays the
    /// base of the next incremental). A cluster job acknowledges its part
    /// of a global checkpoint here.
    pub fn trigger_then(self, then: AfterCheckpoint) -> Result<CheckpointHandle> {
        self.checkpointer.trigger(self.t, Some(then))
    }
}

/// Work run on a checkpoint's worker thread after its outcome is known (see
/// [`Idle::trigger_then`]).
pub type AfterCheckpoint =
    Box<dyn FnOnce(std::result::Result<&CheckpointInfo, &Error>) -> Result<()> + Send>;

/// Everything the background worker needs for one checkpoint.
struct Job {
    id: CheckpointId,
    kind: CheckpointKind,
    parent: Option<Arc<Manifest>>,
    /// The layers this checkpoint's own layer goes on top of: the parent's,
    /// or a merged base and the parent's layers after it.
    parent_layers: Vec<Layer>,
    /// Set when `parent_layers` starts with a merged base: the last
    /// checkpoint it absorbed.
    merged_base: Option<CheckpointId>,
    snapshot: Arc<dyn StateSnapshot>,
    started: Instant,
    snapshot_pause: Duration,
    created_at_ms: u64,
    wal_position: Option<u64>,
    then: Option<AfterCheckpoint>,
    /// The base's native files by identity, when the base is native.
    known_files: Option<NativeIndex>,
    /// What an encoded checkpoint compresses with (never `Adaptive`).
    compression: Compression,
}

/// What a producer made of a snapshot: the artifacts of the checkpoint's
/// own layer and its totals.
struct Produce {
    layer_kind: LayerKind,
    refs: Vec<ArtifactRef>,
    totals: EncodeTotals,
    /// Native: the files with an identity, for the next checkpoint.
    by_identity: HashMap<String, ArtifactRef>,
    /// Native: files taken from the base by identity, not read.
    files_known: usize,
}

impl Checkpointer {
    /// Starts the pipeline: its runtime and pools, and the store's existing
    /// checkpoint ids (new ids continue after them).
    pub fn start(parts: CheckpointerParts) -> Result<Checkpointer> {
        parts.config.validate()?;
        // An adaptive setting starts at its strongest level.
        let compression = match parts.config.merger.compression {
            Compression::Adaptive { strongest, .. } => Compression::Zstd { level: strongest },
            fixed => fixed,
        };
        let exec = Exec::start(
            parts.config.encode_threads,
            parts.config.merger.parallel_threads,
            parts.config.background_priority,
        )?;
        let store = parts.store.clone();
        let ids = exec.run_io(async move { store.list_manifests().await })?;
        let next_id = match ids.iter().max() {
            Some(newest) => newest.next()?,
            None => CheckpointId(1),
        };
        Ok(Checkpointer {
            inner: Arc::new(Inner {
                parts,
                exec,
                schemas: SchemaRegistry::new(),
                pins: Pins::new(),
                tracking: Mutex::new(Tracking {
                    next_id,
                    base: None,
                    in_flight: false,
                    last_trigger: Instant::now(),
                    merged: None,
                    merging: false,
                    compression,
                }),
                idle: Condvar::new(),
                merge_done: Condvar::new(),
                native_index: Mutex::new(None),
                workers: Threads::default(),
                merge_workers: Threads::default(),
                stop_merges: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        self.inner.config()
    }

    /// The backend checkpoints snapshot.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.inner.parts.backend
    }

    /// Waits until the threads of finished checkpoints have ended. A
    /// checkpoint's result is published before its thread lets go of the
    /// backend, so without this a caller that waited for the result, closed
    /// and dropped everything could still find the backend open for a
    /// moment (a RocksDB directory still locked when it is reopened). Call
    /// it when no checkpoint is in flight ([`idle`](Checkpointer::idle)):
    /// it does not wait for a checkpoint, only for a finished one's thread.
    /// A background merge may still hold the parts
    /// ([`join_merge`](Checkpointer::join_merge)); on the worker's own
    /// thread this returns at once.
    pub fn join_worker(&self) {
        self.inner.workers.join();
    }

    /// Waits until no background merge runs and the merges' threads have
    /// ended: a merge's thread holds the parts (the backend among them)
    /// until it returns, after it has published its result. Call it when
    /// no checkpoint can start any more (a checkpoint may start a merge);
    /// it must not be called with the checkpointer held
    /// [`idle`](Checkpointer::idle) by this thread.
    pub fn join_merge(&self) {
        self.wait_merges();
        self.inner.merge_workers.join();
    }

    /// Stops merging for good: a merge under way (in the background or in
    /// [`compact`](Checkpointer::compact)) gives up before it fetches its
    /// next group of artifacts or uploads its next output, failing with
    /// [`Error::Closed`]; its uploads are left to garbage collection and
    /// the chain stays as it was. No background merge starts any more,
    /// and a later `compact` gives up the same way. For a shutdown:
    /// [`join_merge`](Checkpointer::join_merge) then waits only for the
    /// merge to notice, not for it to finish.
    pub fn stop_merges(&self) {
        self.inner.stop_merges.store(true, Ordering::Release);
    }

    /// The logged wrapper of the backend, when the write-ahead log is on.
    pub fn logged(&self) -> Option<&Arc<LoggedBackend>> {
        self.inner.parts.logged.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner.parts.store
    }

    /// The schemas of the job's states: every manifest records them, and a
    /// state manager's handles register with them.
    pub fn schemas(&self) -> &Arc<SchemaRegistry> {
        &self.inner.schemas
    }

    /// The clock of TTL and manifest times.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.parts.clock
    }

    /// The properties written into every manifest.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.inner.parts.properties
    }

    /// Where the work runs.
    pub fn exec(&self) -> &Exec {
        &self.inner.exec
    }

    /// Waits for the checkpoint in flight and holds the checkpointer idle.
    pub fn idle(&self) -> Idle<'_> {
        let mut t = self.inner.lock();
        while t.in_flight {
            t = self
                .inner
                .idle
                .wait(t)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Idle {
            checkpointer: self,
            t,
        }
    }

    /// Takes a checkpoint now, after waiting for any checkpoint in flight.
    pub fn checkpoint(&self) -> Result<CheckpointHandle> {
        self.idle().trigger()
    }

    /// Deletes every committed manifest `keep` rejects, then, as retention
    /// after a checkpoint does, every artifact no remaining manifest
    /// references (artifacts pinned by work in flight are kept) and the
    /// write-ahead log before the oldest remaining checkpoint. A cluster
    /// job retains this way by its coordinator's completed checkpoints
    /// (its checkpointer's own retention then keeps every manifest).
    pub fn retain_only(
        &self,
        keep: impl Fn(CheckpointId) -> bool + Send + 'static,
    ) -> Result<RetentionReport> {
        let store = self.store().clone();
        let pins = self.inner.pins.clone();
        let report = self.inner.exec.run_io(async move {
            let mut deleted = Vec::new();
            for id in store.list_manifests().await? {
                if !keep(id) {
                    store.delete_manifest(id).await?;
                    deleted.push(id);
                }
            }
            let mut report = collect_garbage(&*store, usize::MAX, Some(&pins), &|_, _| {}).await?;
            report.manifests_deleted = deleted;
            Ok(report)
        })?;
        if let (Some(logged), Some(pos)) = (&self.inner.parts.logged, report.oldest_wal_position) {
            logged.wal().truncate_before(pos + 1)?;
        }
        Ok(report)
    }

    /// Takes a checkpoint if the configured interval has passed since the
    /// last one and none is in flight.
    ///
    /// Without an interval ([`CheckpointConfig::interval`] is `None`) it
    /// fails with [`Error::InvalidArgument`] rather than never checkpoint
    /// in silence: set an interval, or call [`checkpoint`](Self::checkpoint).
    pub fn maybe_checkpoint(&self) -> Result<Option<CheckpointHandle>> {
        let Some(interval) = self.inner.config().interval else {
            return Err(Error::InvalidArgument(
                "maybe_checkpoint needs a checkpoint interval (none is configured, so it would never checkpoint): set one with CheckpointConfig::with_interval or the StateManager builder's interval, or call checkpoint()".into(),
            ));
        };
        let t = self.inner.lock();
        if t.in_flight || t.last_trigger.elapsed() < interval {
            return Ok(None);
        }
        self.trigger(t, None).map(Some)
    }

    /// The newest committed checkpoint the backend's changes are tracked
    /// relative to, if any.
    pub fn last_checkpoint(&self) -> Option<CheckpointId> {
        self.inner.lock().base.as_ref().map(|m| m.checkpoint_id)
    }

    /// The checkpoint id up to which a merged base is waiting to be used by
    /// the next checkpoint, if any.
    pub fn pending_merge(&self) -> Option<CheckpointId> {
        self.inner
            .lock()
            .merged
            .as_ref()
            .map(|m| m.layer.checkpoint_id)
    }

    /// Applies retention now, with the pins of in-flight work.
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        let _idle = self.idle();
        let store = self.store().clone();
        let keep = self.config().max_retained;
        let pins = self.inner.pins.clone();
        self.inner
            .exec
            .run_io(async move { collect_garbage(&*store, keep, Some(&pins), &|_, _| {}).await })
    }

    /// Merges the chain of the newest checkpoint now, on the calling thread
    /// (using the merge pool), after any background merge finishes. `None`
    /// when there is nothing to merge.
    pub fn compact(&self) -> Result<Option<MergeStats>> {
        let base = {
            let mut t = self.merges_done();
            match t.base.clone() {
                Some(b) if b.layers.len() > 1 && !b.is_native() => {
                    t.merging = true;
                    b
                }
                _ => return Ok(None),
            }
        };
        let result = merge_manifest(&self.inner, &base);
        let mut t = self.inner.lock();
        t.merging = false;
        let out = result.map(|(merged, stats)| {
            t.merged = Some(merged);
            Some(stats)
        });
        drop(t);
        self.inner.merge_done.notify_all();
        out
    }

    /// Blocks until no background merge is running.
    pub fn wait_merges(&self) {
        drop(self.merges_done());
    }

    fn merges_done(&self) -> MutexGuard<'_, Tracking> {
        let mut t = self.inner.lock();
        while t.merging {
            t = self
                .inner
                .merge_done
                .wait(t)
                .unwrap_or_else(PoisonError::into_inner);
        }
        t
    }

    /// Every committed checkpoint id with its manifest or why it cannot be
    /// read, oldest first.
    pub fn history(&self) -> Result<Vec<(CheckpointId, Result<Manifest>)>> {
        let store = self.store().clone();
        self.inner.exec.run_io(async move {
            let mut out = Vec::new();
            for id in store.list_manifests().await? {
                out.push((id, load_manifest(&*store, id).await));
            }
            Ok(out)
        })
    }

    /// Decides the checkpoint's kind and parent, takes the snapshot on this
    /// thread and starts the worker.
    fn trigger(
        &self,
        mut t: MutexGuard<'_, Tracking>,
        then: Option<AfterCheckpoint>,
    ) -> Result<CheckpointHandle> {
        let inner = &self.inner;
        let cfg = inner.config();
        // A merged base replaces the head of the parent's chain when it
        // absorbed a layer of it; a stale one (another chain) is dropped.
        let mut merged_base = None;
        let mut parent_layers = Vec::new();
        if let Some(b) = &t.base {
            match t
                .merged
                .as_ref()
                .and_then(|m| substitute(&b.layers, &m.layer).map(|l| (l, m.layer.checkpoint_id)))
            {
                Some((layers, through)) => {
                    parent_layers = layers;
                    merged_base = Some(through);
                }
                None => parent_layers = b.layers.clone(),
            }
        }
        if merged_base.is_none() {
            t.merged = None;
        }
        // A backend with native checkpoints hands over its own files, which
        // make a full checkpoint (unchanged files are not uploaded again).
        let native = inner.parts.backend.native().is_some();
        let mut parent = t.base.clone().filter(|b| {
            cfg.incremental
                && !native
                && !b.is_native()
                && parent_layers.len() < cfg.max_chain_before_full
        });
        if parent.is_none() {
            t.merged = None;
            merged_base = None;
            parent_layers.clear();
        }
        let (mut kind, snapshot_kind) = match parent {
            Some(_) => (CheckpointKind::Incremental, SnapshotKind::Changes),
            None => (CheckpointKind::Full, SnapshotKind::Full),
        };
        // Before anything changes: an id without a successor (only a
        // forged store listing can hold one) fails this checkpoint.
        let following = t.next_id.next()?;
        // The backend's change epoch starts at this snapshot (even if taking
        // it fails part-way): until this checkpoint commits there is no valid
        // parent for an incremental.
        let base_id = t
            .base
            .as_ref()
            .filter(|b| b.is_native())
            .map(|b| b.checkpoint_id);
        let known_files = lock(&inner.native_index)
            .take()
            .filter(|n| native && Some(n.checkpoint) == base_id);
        t.base = None;
        let started = Instant::now();
        let (snapshot, wal_position) = take_snapshot(&inner.parts, snapshot_kind)?;
        let snapshot_pause = started.elapsed();
        if kind == CheckpointKind::Incremental && snapshot.kind() == SnapshotKind::Full {
            // The backend lost track of what changed (bounded change
            // tracking) and answered with every entry: a full checkpoint.
            tracing::info!(checkpoint = %t.next_id, "the backend answered a changes snapshot with a full one; the checkpoint is full");
            kind = CheckpointKind::Full;
            parent = None;
            parent_layers.clear();
            merged_base = None;
            t.merged = None;
        }
        let id = t.next_id;
        let compression = t.compression;
        t.next_id = following;
        t.in_flight = true;
        t.last_trigger = started;
        drop(t);

        let job = Job {
            id,
            kind,
            parent,
            parent_layers,
            merged_base,
            snapshot,
            started,
            snapshot_pause,
            created_at_ms: inner.parts.clock.now_ms(),
            wal_position,
            then,
            known_files,
            compression,
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let worker = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("highwater-checkpoint-{id}"))
            .spawn(move || finish_checkpoint(&worker, job, &tx));
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                inner.lock().in_flight = false;
                inner.idle.notify_all();
                return Err(Error::io("spawn the checkpoint worker", e));
            }
        };
        // The previous worker published its checkpoint before this one
        // could start, so it has ended or is returning; the caller's
        // thread, which is starting a checkpoint, does not wait for it,
        // but `join_worker` will if it is still there.
        inner.workers.add(handle);
        Ok(CheckpointHandle { id, done: rx })
    }
}

/// The snapshot a checkpoint starts from, and the log position it covers:
/// a native one when the backend writes them, through the log's wrapper
/// when the log is on.
fn take_snapshot(
    parts: &CheckpointerParts,
    kind: SnapshotKind,
) -> Result<(Arc<dyn StateSnapshot>, Option<u64>)> {
    match &parts.logged {
        Some(logged) => {
            let (s, lsn) = match logged.native_snapshot_at()? {
                Some(cut) => cut,
                None => logged.snapshot_at(kind)?,
            };
            Ok((s, Some(lsn)))
        }
        None => match parts.backend.native() {
            Some(native) => Ok((native.native_snapshot()?, None)),
            None => Ok((parts.backend.snapshot(kind)?, None)),
        },
    }
}

/// The worker: runs the checkpoint, records the outcome in the tracking
/// state, publishes it to the handle, and only then becomes idle.
fn finish_checkpoint(
    inner: &Arc<Inner>,
    job: Job,
    tx: &crossbeam_channel::Sender<Result<CheckpointInfo>>,
) {
    let id = job.id;
    let mut job = job;
    let then = job.then.take();
    let result = run_checkpoint(inner, job);
    crate::metrics::checkpoint_finished(&result, &*inner.parts.store);
    let mut after_failed = None;
    if let Some(then) = then
        && let Err(e) = then(result.as_ref().map(|(_, info)| info))
        && result.is_ok()
    {
        tracing::warn!(checkpoint = %id, error = %e, "work after a committed checkpoint failed");
        after_failed = Some(e);
    }
    // Another writer committed this id: continue after the newest id in
    // the store instead of colliding again.
    let newest = match &result {
        Err(Error::AlreadyExists(_)) => {
            let store = inner.parts.store.clone();
            inner
                .exec
                .run_io(async move { store.list_manifests().await })
                .ok()
                .and_then(|ids| ids.into_iter().max())
        }
        _ => None,
    };
    let mut t = inner.lock();
    if let Some(newest) = newest
        && t.next_id <= newest
    {
        // An id with no successor stays where it is: the next checkpoint
        // fails with `AlreadyExists` again rather than wrapping below it.
        t.next_id = newest.next().unwrap_or(t.next_id);
    }
    match &result {
        Ok((manifest, info)) => {
            t.base = Some(manifest.clone());
            adapt_compression(inner.config(), &mut t, info);
            // The committed manifest references the merged base it used:
            // the pins can go (a newer merge that finished meanwhile
            // absorbed more and stays).
            if info.merged_base.is_some()
                && t.merged.as_ref().map(|m| m.layer.checkpoint_id) == info.merged_base
            {
                t.merged = None;
            }
            if inner.config().background_merge
                && !t.merging
                && !inner.stop_merges.load(Ordering::Acquire)
                && !manifest.is_native()
                && needs_merge(&manifest.layers, &inner.config().merger)
            {
                t.merging = true;
                spawn_merge(inner, &mut t, manifest.clone());
            }
        }
        Err(e) => {
            tracing::warn!(checkpoint = %id, error = %e, "checkpoint failed; the next one will be full");
            t.base = None;
        }
    }
    // Published before the worker is idle: a checkpoint that can start
    // after this one must never see this one's handle still empty. The
    // channel has room for the one result, so this never blocks.
    let _ = tx.send(match after_failed {
        Some(e) => Err(e),
        None => result.map(|(_, info)| info),
    });
    t.in_flight = false;
    drop(t);
    inner.idle.notify_all();
}

/// Under [`Compression::Adaptive`], moves the level the next checkpoint
/// uses after `info`'s (encoded) checkpoint.
fn adapt_compression(cfg: &CheckpointConfig, t: &mut Tracking, info: &CheckpointInfo) {
    let (Some(interval), Some(level)) = (cfg.interval, info.compression_level) else {
        return;
    };
    let full = info.kind == CheckpointKind::Full;
    let next = cfg
        .merger
        .compression
        .next_adaptive_level(level, full, info.duration, interval);
    if next != level {
        tracing::info!(
            checkpoint = %info.id,
            took_ms = info.duration.as_millis() as u64,
            interval_ms = interval.as_millis() as u64,
            from = level,
            to = next,
            "adaptive compression: the next checkpoints use another zstd level"
        );
        t.compression = Compression::Zstd { level: next };
    }
}

/// Produce, upload, sync the log, commit, apply retention, release the log.
/// Runs on the checkpoint worker thread.
fn run_checkpoint(inner: &Inner, job: Job) -> Result<(Arc<Manifest>, CheckpointInfo)> {
    let cfg = inner.config();
    // Every artifact this checkpoint writes or reuses is pinned before it
    // is queued, so a concurrent retention pass cannot delete it before the
    // manifest commits.
    let pins = inner.pins.guard();
    let native = job.snapshot.native().is_some();
    let (queue, concurrency) = if native {
        (NATIVE_FILES_IN_FLIGHT, NATIVE_FILES_IN_FLIGHT)
    } else {
        (cfg.io_concurrency * 2, cfg.io_concurrency)
    };
    let mut uploader = Uploader::start(
        inner.exec.io(),
        inner.parts.store.clone(),
        queue,
        concurrency,
    );
    if native {
        uploader = uploader.with_bytes_in_flight(NATIVE_BYTES_IN_FLIGHT);
    }
    let produced = match job.snapshot.native() {
        Some(files) => produce_native(
            files,
            cfg.max_parallelism,
            job.known_files
                .as_ref()
                .map(|k| (k, &inner.parts.store, inner.exec.io())),
            &uploader,
            &pins,
        ),
        None => produce_encoded(inner, &*job.snapshot, job.compression, &uploader, &pins),
    };
    // A native snapshot's hard links go as soon as the files are stored.
    drop(job.snapshot);
    let (produced, uploaded): (Produce, UploadTotals) = uploader.finish(produced)?;

    let own = Layer {
        checkpoint_id: job.id,
        kind: produced.layer_kind,
        artifacts: produced.refs,
    };
    let mut layers = job.parent_layers;
    layers.push(own);
    // The log first (under Interval and Never part of it may not be
    // durable yet): the manifest claims the state up to its position, and
    // a crash must not lose records it says come before the tail to replay.
    // Under Always this finds nothing to do.
    if let Some(logged) = &inner.parts.logged {
        logged.wal().sync()?;
    }
    // How the run went, for reports (crate::recorded).
    let compression_level = if native {
        None
    } else {
        job.compression.zstd_level()
    };
    let mut properties = inner.parts.properties.clone();
    crate::recorded::RunRecord {
        duration: job.started.elapsed(),
        snapshot_pause: job.snapshot_pause,
        bytes_written: uploaded.bytes_written,
        artifacts_reused: uploaded.already_present as u64,
        zstd_level: compression_level,
    }
    .write(&mut properties);
    let manifest = Manifest {
        checkpoint_id: job.id,
        parent: job.parent.as_ref().map(|p| p.checkpoint_id),
        kind: job.kind,
        created_at_ms: job.created_at_ms,
        wal_position: job.wal_position,
        max_parallelism: cfg.max_parallelism,
        layers,
        properties,
        schemas: inner.schemas.schemas(),
    };
    manifest.validate()?;
    let encoded_manifest = Bytes::from(manifest.encode()?);
    let store = inner.parts.store.clone();
    let keep = cfg.max_retained;
    let id = job.id;
    let all_pins = inner.pins.clone();
    let retention = inner.exec.run_io(async move {
        store.commit_manifest(id, encoded_manifest).await?;
        // The committed manifest references everything this checkpoint
        // wrote: its pins can go. Pins of other work (a merged base, which
        // the worker releases once it sees this commit, or a background
        // merge) stay and protect it from this pass.
        drop(pins);
        Ok::<_, Error>(
            match collect_garbage(&*store, keep, Some(&all_pins), &|_, _| {}).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(checkpoint = %id, error = %e, "retention failed after a committed checkpoint");
                    None
                }
            },
        )
    })?;
    // The log before the oldest retained checkpoint is no longer needed by
    // any restore (restore_latest may fall back to any retained one).
    if let (Some(logged), Some(pos)) = (
        &inner.parts.logged,
        retention.as_ref().and_then(|r| r.oldest_wal_position),
    ) && let Err(e) = logged.wal().truncate_before(pos + 1)
    {
        tracing::warn!(checkpoint = %id, error = %e, "could not release write-ahead-log segments");
    }
    if native {
        if let (Some(backend), Some(layer)) = (inner.parts.backend.native(), manifest.layers.last())
        {
            let files: Vec<NativeFileRef> = layer
                .artifacts
                .iter()
                .map(NativeFileRef::of_artifact)
                .collect();
            backend.native_stored(&files);
        }
        *lock(&inner.native_index) = Some(NativeIndex {
            checkpoint: job.id,
            by_identity: produced.by_identity,
        });
    }
    let own: &[ArtifactRef] = manifest.own_artifacts();
    let info = CheckpointInfo {
        id: job.id,
        kind: job.kind,
        chain_length: manifest.chain_length(),
        entries: produced.totals.entries,
        expired_dropped: produced.totals.expired_dropped,
        logical_bytes: own.iter().map(|a| a.logical_bytes).sum(),
        encoded_bytes: own.iter().map(|a| a.stored_bytes).sum(),
        bytes_written: uploaded.bytes_written,
        artifacts: own.len(),
        artifacts_reused: uploaded.already_present + produced.files_known,
        native_files_known: produced.files_known,
        snapshot_pause: job.snapshot_pause,
        duration: job.started.elapsed(),
        retention,
        merged_base: job.merged_base,
        compression_level,
    };
    tracing::debug!(
        checkpoint = %info.id,
        kind = %info.kind,
        native,
        entries = info.entries,
        bytes_written = info.bytes_written,
        "checkpoint committed"
    );
    Ok((Arc::new(manifest), info))
}

/// The encoded producer: entries encoded into content-addressed chunks on
/// the encode pool.
fn produce_encoded(
    inner: &Inner,
    snapshot: &dyn StateSnapshot,
    compression: Compression,
    uploader: &Uploader,
    pins: &PinGuard,
) -> Result<Produce> {
    let cfg = inner.config();
    let params = EncodeParams {
        max_parallelism: cfg.max_parallelism,
        key_groups_per_artifact: cfg.key_groups_per_artifact,
        merger: MergerConfig {
            compression,
            ..cfg.merger.clone()
        },
        now_ms: inner.parts.clock.now_ms(),
    };
    let layer_kind = match snapshot.kind() {
        SnapshotKind::Full => LayerKind::Full,
        SnapshotKind::Changes => LayerKind::Delta,
    };
    let (refs, totals) = inner
        .exec
        .encode
        .install(|| encode_snapshot(snapshot, &params, &|p| uploader.send(p, pins)))?;
    Ok(Produce {
        layer_kind,
        refs,
        totals,
        by_identity: HashMap::new(),
        files_known: 0,
    })
}

/// The native producer: the backend's files, read in name order, each one
/// artifact addressed by its content (a file already stored is not written
/// again, and retention's reference counting keeps it while any retained
/// manifest names it). A file whose identity the base's index holds (same
/// name and size) is that artifact, neither read nor hashed again, once
/// the store says it still holds it (a restore elsewhere deletes a damaged
/// copy, which the next checkpoint must write again): with RocksDB's
/// immutable SST files an unchanged state costs a listing and an existence
/// check per file, not a read of every file.
fn produce_native(
    native: &NativeCheckpoint,
    max_parallelism: u16,
    known: Option<(&NativeIndex, &Arc<dyn CheckpointStore>, &Handle)>,
    uploader: &Uploader,
    pins: &PinGuard,
) -> Result<Produce> {
    let mut refs = Vec::with_capacity(native.files.len());
    let mut by_identity = HashMap::new();
    let mut entries = 0;
    let mut files_known = 0;
    /// The base's artifact for `file`, by identity, name and size.
    fn candidate<'a>(
        index: Option<&'a NativeIndex>,
        file: &'a NativeFile,
    ) -> Option<(&'a String, &'a ArtifactRef)> {
        let identity = file.identity.as_ref()?;
        index?
            .by_identity
            .get(identity)
            .filter(|r| r.operator == file.name && r.stored_bytes == file.len)
            .map(|r| (identity, r))
    }
    let index = known.map(|(index, _, _)| index);
    let candidates: Vec<ArtifactId> = native
        .files
        .iter()
        .filter_map(|f| candidate(index, f).map(|(_, r)| r.id))
        .collect();
    // Pinned first, so that this job's retention cannot delete one between
    // the check and the commit of the manifest naming it.
    pins.add_all(candidates.iter().copied());
    let present = match known {
        Some((_, store, io)) if !candidates.is_empty() => stored_among(store, io, candidates)?,
        _ => HashSet::new(),
    };
    for file in &native.files {
        let cached = candidate(index, file).filter(|(_, r)| present.contains(&r.id));
        if let Some((identity, reference)) = cached {
            entries += reference.entries;
            files_known += 1;
            refs.push(reference.clone());
            by_identity.insert(identity.clone(), reference.clone());
            continue;
        }
        let path = native.dir.join(&file.name);
        let reservation = uploader.reserve(file.len)?;
        let bytes = highwater_core::filebuf::read_file(&path)
            .map_err(|e| Error::io(format!("read native file {}", path.display()), e))?;
        let len = bytes.len() as u64;
        let reference = ArtifactRef {
            operator: file.name.clone(),
            key_groups: KeyGroupRange::all(max_parallelism),
            id: ArtifactId::of(&bytes),
            entries: file.entries,
            logical_bytes: len,
            stored_bytes: len,
            codec: Codec::Raw,
        };
        entries += file.entries;
        refs.push(reference.clone());
        if let Some(identity) = &file.identity {
            by_identity.insert(identity.clone(), reference.clone());
        }
        uploader.send_reserved(Produced { reference, bytes }, reservation, pins)?;
    }
    Ok(Produce {
        layer_kind: LayerKind::Native,
        refs,
        totals: EncodeTotals {
            entries,
            expired_dropped: 0,
        },
        by_identity,
        files_known,
    })
}

/// Which of `ids` `store` holds, asked a few at a time.
fn stored_among(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    ids: Vec<ArtifactId>,
) -> Result<HashSet<ArtifactId>> {
    const CHECKS_IN_FLIGHT: usize = 16;
    let store = store.clone();
    run_io(io, async move {
        let mut present = HashSet::with_capacity(ids.len());
        let mut set = tokio::task::JoinSet::new();
        let mut ids = ids.into_iter();
        loop {
            while set.len() < CHECKS_IN_FLIGHT
                && let Some(id) = ids.next()
            {
                let s = store.clone();
                set.spawn(async move { s.has_artifact(id).await.map(|held| (id, held)) });
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let (id, held) =
                done.map_err(|e| Error::unexpected("an artifact existence check", e))??;
            if held {
                present.insert(id);
            }
        }
        Ok(present)
    })
}

/// Folds the chain of `base` into a new base in the store (pinned).
fn merge_manifest(inner: &Inner, base: &Manifest) -> Result<(PendingMerge, MergeStats)> {
    let params = MergeParams {
        merger: inner.config().merger.clone(),
        now_ms: inner.parts.clock.now_ms(),
        limits: highwater_core::DecodeLimits::default(),
    };
    let stored = inner.exec.merge.install(|| {
        merge_into_store(
            &inner.parts.store,
            inner.exec.io(),
            &base.layers,
            &params,
            inner.pins.guard(),
            &|_| {},
            &inner.stop_merges,
        )
    })?;
    tracing::debug!(
        through = %stored.outcome.layer.checkpoint_id,
        bytes_written = stored.bytes_written,
        "chain merged"
    );
    let stats = stored.outcome.stats.clone();
    crate::metrics::merge_completed(&stats);
    Ok((
        PendingMerge {
            layer: stored.outcome.layer,
            _pins: stored.pins,
        },
        stats,
    ))
}

/// Runs a merge of `base`'s chain on its own thread; the result waits in
/// `Tracking::merged` for the next checkpoint. New checkpoints continue
/// meanwhile. Called with the tracking state locked (`t`), `merging` set.
fn spawn_merge(inner: &Arc<Inner>, t: &mut Tracking, base: Arc<Manifest>) {
    let worker = inner.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("highwater-merge-{}", base.checkpoint_id))
        .spawn(move || {
            let result = merge_manifest(&worker, &base);
            let mut t = worker.lock();
            t.merging = false;
            match result {
                Ok((pending, _)) => t.merged = Some(pending),
                Err(Error::Closed(_)) if worker.stop_merges.load(Ordering::Acquire) => {
                    tracing::debug!(checkpoint = %base.checkpoint_id, "background merge stopped: the checkpointer is closing");
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %base.checkpoint_id, error = %e, "background merge failed; the chain stays as it is");
                }
            }
            drop(t);
            worker.merge_done.notify_all();
        });
    match spawned {
        // The tracking state is locked, so the handle is in place before
        // anyone can see this merge end.
        Ok(handle) => inner.merge_workers.add(handle),
        Err(e) => {
            // Not `inner.lock()`: the caller holds that lock already.
            tracing::warn!(error = %e, "could not start a background merge");
            t.merging = false;
            inner.merge_done.notify_all();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread.
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("getpriority of this thread")
    }

    #[test]
    fn background_pools_run_at_the_configured_priority_and_the_caller_keeps_its_own() {
        let own = own_nice();
        for priority in [
            BackgroundPriority::Normal,
            BackgroundPriority::Low,
            BackgroundPriority::Idle,
        ] {
            let exec = Exec::start(2, 3, priority).expect("start the pools");
            let want = own.max(priority.nice());
            let encode = exec.cpu().broadcast(|_| own_nice());
            let merge = exec.merge.broadcast(|_| own_nice());
            assert_eq!(encode, vec![want; 2], "{priority:?} encode pool");
            assert_eq!(merge, vec![want; 3], "{priority:?} merge pool");
        }
        assert_eq!(own_nice(), own, "the caller's thread was reniced");
    }
}
